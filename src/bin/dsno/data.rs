//! `dsno data fetch`: downloads a data set's IDX files from the public mirrors and verifies
//! them.
use anyhow::Result;
use dsno::data::fetch::{cache_dir, fetch, Dataset, FetchOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Download and verify a data set (verified files are kept, not fetched again).
    Fetch {
        /// The data set.
        #[arg(value_enum)]
        dataset: Dataset,
        /// Folder to put the data set's folder in (default: `$DSNO_DATA`, else the user cache
        /// `$XDG_CACHE_HOME/dsno` or `~/.cache/dsno`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Base URL to fetch from instead of the public mirrors (repeatable, tried in order).
        #[arg(long)]
        mirror: Vec<String>,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    let Args::Fetch {
        dataset,
        dir,
        mirror,
    } = a;
    let root = dir.or_else(cache_dir).ok_or_else(|| {
        anyhow::anyhow!("no folder to fetch into: give --dir, or set DSNO_DATA or HOME")
    })?;
    let dir = root.join(dataset.name());
    let o = FetchOptions {
        mirrors: (!mirror.is_empty()).then_some(mirror),
        progress: true,
        ..Default::default()
    };
    let s = fetch(dataset, &dir, &o)?;
    println!(
        "{}: {} files kept, {} downloaded ({} bytes) → {}",
        dataset.name(),
        s.kept(),
        s.downloaded(),
        s.bytes_downloaded(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

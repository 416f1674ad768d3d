//! `dsno checkpoint split|join|info|model`: a checkpoint as parts of bounded size, and back; what
//! a checkpoint is; a training checkpoint's model file.
use crate::common::check_io;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Split a checkpoint into parts of at most --max-mib MiB of tensor data each
    /// (<stem>.part-<k>.safetensors in --out-dir).
    Split {
        /// The checkpoint.
        file: PathBuf,
        /// Folder for the parts.
        #[arg(long)]
        out_dir: PathBuf,
        /// The largest part, in MiB of tensor data.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_mib: u64,
    },
    /// Print what a checkpoint is: its kind, training step and data set (from its header).
    Info {
        /// The checkpoint.
        file: PathBuf,
    },
    /// Join the parts of a split checkpoint (all of them) into one file, byte for byte the
    /// original.
    Join {
        /// The parts.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// The joined checkpoint.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a training checkpoint's model (its EMA weights and metadata): byte for byte the
    /// model.safetensors the run wrote beside it.
    Model {
        /// The training checkpoint (ckpt.safetensors).
        file: PathBuf,
        /// The model file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a {
        Args::Split {
            file,
            out_dir,
            max_mib,
        } => {
            check_io(
                &[("FILE", Some(&file))],
                &[("--out-dir", Some(&out_dir))],
                &["--out-dir"],
            )?;
            let parts = dsno::checkpoint::split(&file, &out_dir, max_mib << 20)?;
            println!(
                "{} → {} parts in {}",
                file.display(),
                parts.len(),
                out_dir.display()
            );
        }
        Args::Info { file } => {
            let m = dsno::model::peek(&file)?;
            println!("kind {} step {} dataset {}", m.kind, m.step, m.dataset);
        }
        Args::Join { parts, out } => {
            let inputs: Vec<_> = parts.iter().map(|p| ("PARTS", Some(p.as_path()))).collect();
            check_io(&inputs, &[("--out", Some(&out))], &[])?;
            dsno::checkpoint::join(&parts, &out)?;
            println!("{} parts → {}", parts.len(), out.display());
        }
        Args::Model { file, out } => {
            check_io(&[("FILE", Some(&file))], &[("--out", Some(&out))], &[])?;
            let n = dsno::checkpoint::load(&file)?.write_model(&file, &out)?;
            println!("{} → {} ({n} tensors)", file.display(), out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

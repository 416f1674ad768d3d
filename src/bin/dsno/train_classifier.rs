//! `dsno train-classifier`: the feature classifier of the sample-quality metrics.
use crate::common::{check_out, data_dir, describe};
use anyhow::Result;
use dsno::checkpoint::ClassifierInfo;
use dsno::train::classifier::{fit, save, Schedule};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tch::Device;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Name of the data set (mnist, fashion-mnist, …), stored in the file.
    #[arg(long, default_value = "mnist")]
    name: String,
    /// Folder with its IDX files (default: `$DSNO_DATA/<name>`, then the user cache).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output file (safetensors; the description is in its metadata).
    #[arg(long)]
    out: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 6000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    batch: u64,
    /// Peak learning rate (Adam, decayed to 0 by a half cosine), in (0, 1].
    #[arg(long, default_value_t = 2e-3, value_parser = parse_lr)]
    lr: f64,
    /// Seed of the initialisation and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: Args, device: Device) -> Result<ExitCode> {
    let dir = data_dir(a.data.as_deref(), &a.name)?;
    check_out(("the data folder", &dir), &a.out, false)?;
    println!(
        "classifier on {} ({}): {} steps of {} on {}",
        a.name,
        dir.display(),
        a.steps,
        a.batch,
        describe(device)
    );
    let (steps, batch, lr, seed) = (a.steps, a.batch as usize, a.lr, a.seed);
    let start = Instant::now();
    let schedule = Schedule {
        steps,
        batch,
        lr,
        seed,
        progress: true,
    };
    let t = fit(&dir, schedule, device)?;
    let info = ClassifierInfo {
        dataset: a.name.clone(),
        test_accuracy: t.test_accuracy,
        steps,
        batch,
        lr,
        seed,
    };
    save(&a.out, &t.vs, &info)?;
    println!(
        "{} training and {} test images; trained in {:.1} s, last loss {:.4}, test accuracy {:.2} % → {}",
        t.train_images,
        t.test_images,
        start.elapsed().as_secs_f64(),
        t.last_loss,
        100.0 * t.test_accuracy,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_lr(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("`{s}`: expected a learning rate in (0, 1]")),
    }
}

//! `dsno train-teacher`: a diffusion teacher from a TOML config.
use crate::common::{data_dir, describe_place, RunArgs};
use anyhow::Result;
use dsno::comm::Comm;
use dsno::train::teacher::{train_labeled, DataConfig, TeacherConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config (presets in configs/: toy2d, mnist, fashion-mnist).
    #[arg(long)]
    config: PathBuf,
    /// Folder with the IDX files of an image data set (default: `$DSNO_DATA/<name>`, then the
    /// user cache; see `dsno data fetch`).
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Start a fresh run from this teacher checkpoint's weights (same [model]; new optimiser,
    /// step 0, warm-up again). Ignored with --resume, whose checkpoint holds the weights.
    #[arg(long)]
    init: Option<PathBuf>,
}

pub fn run(a: Args, device: Device, comm: &Comm) -> Result<ExitCode> {
    let mut cfg = TeacherConfig::load(&a.config)?;
    cfg.train.steps = a.run.steps.unwrap_or(cfg.train.steps);
    let dir = match &cfg.data {
        DataConfig::Idx { name } => Some(data_dir(a.data.as_deref(), name)?),
        DataConfig::Toy2d { .. } => None,
    };
    a.run.check_io(&[
        ("--config", Some(&a.config)),
        ("the data folder", dir.as_deref()),
        ("--init", a.init.as_deref()),
    ])?;
    let data = cfg.data.load(dir.as_deref())?;
    let labels = match cfg.model.num_classes() {
        Some(_) => Some(cfg.data.load_labels(dir.as_deref())?),
        None => None,
    };
    if comm.is_main() {
        println!(
            "teacher: {} parameters, {} samples of {}, {} steps of {} on {}",
            cfg.model.num_params(),
            data.size()[0],
            cfg.data.name(),
            cfg.train.steps,
            cfg.train.batch_size,
            describe_place(device, comm)
        );
    }
    let s = train_labeled(
        &cfg,
        data,
        labels,
        &a.run.options(device, comm),
        a.init.as_deref(),
    )?;
    Ok(a.run.report(&s, comm))
}

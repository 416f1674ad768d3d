//! `dsno distill`: a DSNO operator or the KD baseline from a trajectory store.
use crate::common::{describe_place, RunArgs};
use anyhow::Result;
use dsno::comm::Comm;
use dsno::operator::Method;
use dsno::train::distill::{distill, DistillConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Teacher checkpoint (initialises the student; must be the store's teacher).
    #[arg(long)]
    teacher: PathBuf,
    /// Trajectory store made by `dsno trajectories`.
    #[arg(long)]
    trajectories: PathBuf,
    /// TOML config (configs/distill-*.toml).
    #[arg(long)]
    config: PathBuf,
    /// Overrides the config's method (the methods registered in `train::objective`).
    #[arg(long, value_parser = method_parser())]
    method: Option<Method>,
    /// Start from this DSNO or KD model's weights instead of the teacher's (same method, times
    /// and backbone, or the backbone's unconditional version: e.g. the unconditional DSNO for a
    /// class-conditional one, whose class embedding then starts as the teacher's). Ignored with
    /// --resume.
    #[arg(long)]
    init: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(a: Args, device: Device, comm: &Comm) -> Result<ExitCode> {
    a.run.check_io(&[
        ("--teacher", Some(&a.teacher)),
        ("--trajectories", Some(&a.trajectories)),
        ("--config", Some(&a.config)),
        ("--init", a.init.as_deref()),
    ])?;
    let mut cfg = DistillConfig::load(&a.config)?;
    cfg.method = a.method.unwrap_or(cfg.method);
    cfg.train.steps = a.run.steps.unwrap_or(cfg.train.steps);
    if comm.is_main() {
        println!(
            "distill ({}): {} steps of {} on {}",
            cfg.method,
            cfg.train.steps,
            cfg.train.batch_size,
            describe_place(device, comm)
        );
    }
    let s = distill(
        &cfg,
        &a.teacher,
        &a.trajectories,
        a.init.as_deref(),
        &a.run.options(device, comm),
    )?;
    Ok(a.run.report(&s, comm))
}

/// The registered methods' names, for `--method`.
fn method_parser() -> impl clap::builder::TypedValueParser<Value = Method> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(dsno::train::objective::names())
        .try_map(|s| Method::new(&s))
}

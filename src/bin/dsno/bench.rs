//! `dsno bench engine`: U-Net and operator timings, optionally against plain PyTorch.
use crate::common::describe;
use anyhow::Result;
use dsno::train::teacher::TeacherConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum What {
    /// The U-Net and the DSNO operator: forward and training-step time.
    Engine,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to benchmark.
    #[arg(value_enum)]
    what: What,
    /// Model config (a teacher TOML preset); its [model] section is measured.
    #[arg(long, default_value = "configs/mnist.toml")]
    config: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(i64).range(1..=4096))]
    batch: i64,
    /// Operator time slots M.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i64).range(1..=64))]
    slots: i64,
    /// TimeConv Fourier modes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(1..=33))]
    modes: i64,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    iters: u64,
    /// Also run bench/reference.py (plain PyTorch) on the same configuration and print ratios.
    #[arg(long)]
    vs_pytorch: bool,
    /// Python with torch for --vs-pytorch.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// The PyTorch reference script.
    #[arg(long, default_value = "bench/reference.py")]
    script: PathBuf,
}

pub fn run(a: Args, device: Device) -> Result<ExitCode> {
    let What::Engine = a.what;
    let cfg = TeacherConfig::load(&a.config)?;
    println!(
        "dsno bench engine: {} ({} parameters), batch {}, M = {}, modes {}, {} iterations (median), device {}",
        a.config.display(),
        cfg.model.num_params(),
        a.batch,
        a.slots,
        a.modes,
        a.iters,
        describe(device)
    );
    let spec = dsno::bench::Spec {
        batch: a.batch,
        slots: a.slots,
        modes: a.modes,
        iters: a.iters as usize,
        device,
    };
    let rows = dsno::bench::engine(&cfg.model, spec)?;
    print!("{}", dsno::bench::table(&rows));
    if a.vs_pytorch {
        let py = dsno::bench::pytorch_reference(&a.python, &a.script, &cfg.model, spec)?;
        print!("\n{}", dsno::bench::comparison_table(&rows, &py));
    }
    Ok(ExitCode::SUCCESS)
}

//! The `dsno` command line. Each subcommand is a module of its own that parses its arguments,
//! calls the library and prints; the numerics live in the library (docs/ARCHITECTURE.md).
//!
//! Exit status: 0 success, 1 error, 2 usage error (clap), 130 / 143 a training run stopped by
//! SIGINT (Ctrl-C) / SIGTERM after saving its checkpoint.
mod bench;
mod ckpt;
mod common;
mod data;
mod distill;
mod eval;
mod export;
mod fid;
mod import;
mod sample;
mod train_classifier;
mod train_teacher;
mod trajectories;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Fast sampling of diffusion models by operator learning (DSNO).
#[derive(Parser, Debug)]
#[command(name = "dsno", version, about, long_about, after_help = EXIT_STATUS)]
struct Cli {
    /// Where to compute: auto (CUDA when libtorch sees a GPU, else CPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto", value_parser = common::parse_device)]
    device: common::DeviceArg,
    /// Seconds that the processes of a data-parallel run (torchrun, srun) wait for each other,
    /// at the start and in every collective, before a rank that died or hangs fails the run.
    #[arg(long, global = true, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    dist_timeout: u64,
    /// CPU threads for libtorch (default: libtorch's choice, all cores).
    #[arg(long, global = true, value_parser = clap::value_parser!(i32).range(1..=4096))]
    threads: Option<i32>,
    /// Let the C allocator return freed host memory to the kernel after every large tensor
    /// (glibc's default). By default dsno keeps it for reuse: on the CPU a DSNO pass runs 1.5 ×
    /// faster and the process keeps its peak heap (docs/RESULTS.md §2).
    #[arg(long, global = true)]
    release_host_memory: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Draw samples and write them as a PNG.
    Sample(sample::Args),
    /// Train a diffusion teacher (x-prediction) from a TOML config.
    TrainTeacher(train_teacher::Args),
    /// Solve the teacher's ODE and store trajectories for distillation (sharded, resumable).
    Trajectories(trajectories::Args),
    /// Distil the teacher into a one-step DSNO operator (or the KD baseline).
    Distill(distill::Args),
    /// Evaluate DSNO, KD and few-step solvers against the teacher from the same noise: FD, KID,
    /// precision/recall, PSNR vs the teacher, wall time; writes report.md/json, plots, grids.
    Eval(eval::Args),
    /// Inception FID statistics (μ, Σ) of a set of real images, written as pytorch-fid's `.npz`.
    FidRef(fid::RefArgs),
    /// Inception FID of samples (PNGs, raw samples, or drawn from a model) against reference
    /// statistics (`dsno fid-ref`, pytorch-fid, EDM, …).
    Fid(fid::Args),
    /// Train the LeNet-style feature classifier used by the sample-quality metrics.
    TrainClassifier(train_classifier::Args),
    /// Benchmark the engine: U-Net and operator forward/train-step time, images/s, GFLOP/s.
    Bench(bench::Args),
    /// Copy a checkpoint's model weights (no optimiser state) to a new file, optionally as
    /// float16 (how the bundled models in models/ are made).
    Export(export::Args),
    /// Data sets and the FID network: `dsno data fetch mnist|fashion-mnist|inception`
    /// downloads and verifies one.
    #[command(subcommand)]
    Data(data::Args),
    /// Import a model from another library as a dsno teacher: `dsno import diffusers DIR
    /// --out teacher.safetensors`.
    #[command(subcommand)]
    Import(import::Args),
    /// Checkpoints as parts of bounded size (`split`), and back (`join`); `info` prints the kind
    /// and step.
    #[command(subcommand)]
    Checkpoint(ckpt::Args),
}

const EXIT_STATUS: &str = "Exit status: 0 success, 1 error, 2 usage error, 130 a training run \
stopped by Ctrl-C (SIGINT), 143 by SIGTERM (its checkpoint saved; continue with --resume).";

fn main() -> ExitCode {
    // a panic is a bug of dsno: say so in one line, exit with status 1 like any error
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        let at = info
            .location()
            .map(|l| format!(" ({}:{})", l.file(), l.line()));
        eprintln!("error: internal error{}: {msg}", at.unwrap_or_default());
    }));
    match std::panic::catch_unwind(run) {
        Ok(code) => code,
        Err(_) => ExitCode::FAILURE,
    }
}

fn run() -> ExitCode {
    let cli = Cli::parse();
    if !cli.release_host_memory {
        dsno::device::keep_freed_host_memory();
    }
    if let Some(n) = cli.threads {
        tch::set_num_threads(n);
    }
    let device = cli.device.device;
    // the training commands join the data-parallel group a launcher describes, if any
    let timeout = std::time::Duration::from_secs(cli.dist_timeout);
    let group = || {
        // a SIGTERM from here on (a scheduler's, `timeout`'s) stops the run after a saved step
        dsno::train::install_stop_handler();
        common::join_group(&cli.device, timeout)
    };
    let result = match cli.command {
        Command::Sample(a) => sample::run(a, device),
        Command::TrainTeacher(a) => group().and_then(|(d, c)| train_teacher::run(a, d, &c)),
        Command::Trajectories(a) => group().and_then(|(d, c)| trajectories::run(a, d, &c)),
        Command::Distill(a) => group().and_then(|(d, c)| distill::run(a, d, &c)),
        Command::Eval(a) => eval::run(a, device),
        Command::FidRef(a) => fid::run_ref(a, device),
        Command::Fid(a) => fid::run(a, device),
        Command::Bench(a) => bench::run(a, &cli.device, timeout),
        Command::Export(a) => export::run(a),
        Command::TrainClassifier(a) => train_classifier::run(a, device),
        Command::Data(a) => data::run(a),
        Command::Import(a) => import::run(a),
        Command::Checkpoint(a) => ckpt::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

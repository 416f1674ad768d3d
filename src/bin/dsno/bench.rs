//! `dsno bench engine`: U-Net and operator timings, optionally against plain PyTorch.
//! `dsno bench comm`: the gradient all-reduce of data-parallel training (under torchrun or srun
//! for a world of several processes; alone, a group of one).
use crate::common::{describe, describe_place, DeviceArg};
use anyhow::Result;
use dsno::comm::{Comm, Launch};
use dsno::train::teacher::TeacherConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tch::Device;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum What {
    /// The U-Net and the DSNO operator: forward and training-step time.
    Engine,
    /// The all-reduce of the operator's gradient over the process group, and the training step
    /// it serves (`--batch` images per rank).
    Comm,
    /// The streaming store reader: training batches of `--batch` read from `--trajectories`
    /// (`--iters` of them), samples/s and MB/s.
    Store,
    /// The training commands themselves (teacher, DSNO and KD distillation on random data and a
    /// small store the teacher makes): samples/s over `--iters` steps after as many warm-up
    /// steps, at each of `--precisions`.
    Train,
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
    /// `store`: the trajectory store to read.
    #[arg(long)]
    trajectories: Option<PathBuf>,
    /// `train`: the precisions to compare, the first being the reference of the ratios.
    #[arg(long, value_delimiter = ',', default_value = "fp32,bf16", value_parser = crate::common::parse_precision)]
    precisions: Vec<dsno::device::Precision>,
    /// `store`: shards per shuffle buffer.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    shuffle_shards: u64,
}

pub fn run(a: Args, device: &DeviceArg, timeout: Duration) -> Result<ExitCode> {
    match a.what {
        What::Engine => engine(a, device.device),
        What::Comm => comm(a, device, timeout),
        What::Store => store(a),
        What::Train => train(a, device.device),
    }
}

fn train(a: Args, device: Device) -> Result<ExitCode> {
    let cfg = TeacherConfig::load(&a.config)?;
    let spec = dsno::bench::TrainSpec {
        batch: a.batch as usize,
        steps: a.iters,
        precisions: a.precisions.clone(),
        times: dsno::schedule::parse_output_times(&format!("quad:{}", a.slots))?,
        device,
    };
    println!(
        "dsno bench train: {}, {} timed steps after as many warm-up steps, {}\n",
        what_is_measured(&a, &cfg),
        a.iters,
        describe(device)
    );
    let dir = std::env::temp_dir().join(format!("dsno-bench-train-{}", std::process::id()));
    // a SIGTERM or Ctrl-C stops the run in progress, and the folder is removed below
    dsno::train::install_stop_handler();
    let rows = dsno::bench::training(&cfg, &spec, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", dsno::bench::training_table(&rows?));
    Ok(ExitCode::SUCCESS)
}

fn store(a: Args) -> Result<ExitCode> {
    let dir = a
        .trajectories
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("bench store needs --trajectories <store folder>"))?;
    let (batch, buffer) = (a.batch as usize, a.shuffle_shards as usize);
    let r = dsno::bench::store_read(dir, buffer, batch, a.iters, 0)?;
    println!(
        "dsno bench store: {} batches of {batch} from {} ({buffer} shards per buffer): {:.2} s, {:.0} samples/s, {:.1} MB/s; {} shard reads, peak {:.1} MB of shards held",
        r.batches,
        dir.display(),
        r.seconds,
        r.samples_per_s(),
        r.bytes / 1e6 / r.seconds.max(1e-9),
        r.shard_loads,
        r.peak_bytes as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

fn spec(a: &Args, device: Device) -> dsno::bench::Spec {
    dsno::bench::Spec {
        batch: a.batch,
        slots: a.slots,
        modes: a.modes,
        iters: a.iters as usize,
        device,
    }
}

fn comm(a: Args, device: &DeviceArg, timeout: Duration) -> Result<ExitCode> {
    let cfg = TeacherConfig::load(&a.config)?;
    let (device, comm) = match Launch::from_vars(|k| std::env::var(k).ok())? {
        Some(_) => crate::common::join_group(device, timeout)?,
        None => {
            // alone: a group of one on this machine (the backend's own cost, NCCL's included)
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let one = Launch {
                rank: 0,
                local_rank: 0,
                world_size: 1,
                master_addr: "127.0.0.1".into(),
                master_port: port,
                agent_store: false,
                restart: 0,
                launcher: "none",
                gloo_interfaces: None,
            };
            let d = device.device;
            (d, Comm::connect(&one, d, timeout)?)
        }
    };
    let t = dsno::bench::comm(&comm, &cfg.model, spec(&a, device))?;
    if comm.is_main() {
        println!(
            "dsno bench comm: the DSNO operator of {} (M = {}, modes {}), {} iterations (median), {}\n",
            a.config.display(),
            a.slots,
            a.modes,
            a.iters,
            describe_place(device, &comm)
        );
        print!("{}", t.table());
    }
    Ok(ExitCode::SUCCESS)
}

/// The model, its size, the batch and the operator's slots, for the first line of a table.
fn what_is_measured(a: &Args, cfg: &TeacherConfig) -> String {
    format!(
        "{} ({} parameters), batch {}, M = {}",
        a.config.display(),
        cfg.model.num_params(),
        a.batch,
        a.slots
    )
}

fn engine(a: Args, device: Device) -> Result<ExitCode> {
    let cfg = TeacherConfig::load(&a.config)?;
    println!(
        "dsno bench engine: {}, modes {}, {} iterations (median), device {}",
        what_is_measured(&a, &cfg),
        a.modes,
        a.iters,
        describe(device)
    );
    let spec = spec(&a, device);
    let rows = dsno::bench::engine(&cfg.model, spec)?;
    print!("{}", dsno::bench::table(&rows));
    if a.vs_pytorch {
        let py = dsno::bench::pytorch_reference(&a.python, &a.script, &cfg.model, spec)?;
        print!("\n{}", dsno::bench::comparison_table(&rows, &py));
    }
    Ok(ExitCode::SUCCESS)
}

//! What several subcommands share: the device flag, a training run's arguments and summary,
//! where data sets are found, raw sample output.
use anyhow::Result;
use dsno::comm::{Comm, Launch};
use dsno::device::Precision;
use dsno::train::{RunOptions, Summary};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tch::{Device, Tensor};

/// `--device`: auto, cpu, cuda or cuda:N, checked when parsed; the name is kept, so that a
/// process of a data-parallel group can put `auto` and `cuda` on its own GPU.
#[derive(Debug, Clone)]
pub struct DeviceArg {
    pub name: String,
    pub device: Device,
}

pub fn parse_device(s: &str) -> Result<DeviceArg, String> {
    let device = dsno::device::parse_device(s).map_err(|e| e.to_string())?;
    Ok(DeviceArg {
        name: s.to_string(),
        device,
    })
}

/// The device and the data-parallel group of a training command. Without a launcher (or with a
/// world size of 1) a single process on `--device`. Under `torchrun` or `srun` (docs: README
/// "Running on many GPUs"), the process joins the group the environment describes, over NCCL on
/// `cuda:LOCAL_RANK` (for `--device auto` with a GPU, `cuda` or `gpu`; an explicit `cuda:N`
/// stays) or over Gloo on the CPU; `timeout` bounds the rendezvous and every collective.
pub fn join_group(arg: &DeviceArg, timeout: Duration) -> Result<(Device, Comm)> {
    let Some(launch) = Launch::from_vars(|k| std::env::var(k).ok())? else {
        return Ok((arg.device, Comm::single()));
    };
    let device = match (arg.name.as_str(), arg.device) {
        ("auto" | "cuda" | "gpu", Device::Cuda(_)) => {
            dsno::device::parse_device(&format!("cuda:{}", launch.local_rank))?
        }
        (_, d) => d,
    };
    let comm = Comm::connect(&launch, device, timeout)?;
    Ok((device, comm))
}

/// `device`, and the process's rank in a group of more than one.
pub fn describe_place(device: Device, comm: &Comm) -> String {
    match comm.world_size() {
        1 => describe(device),
        w => format!(
            "{} · rank {} of {} ({})",
            describe(device),
            comm.rank(),
            w,
            comm.backend().name()
        ),
    }
}

pub fn describe(device: Device) -> String {
    dsno::device::describe(device)
}

/// Where a training run writes, whether it continues, and for how long.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Output folder: ckpt.safetensors (training state), model.safetensors (EMA), log.csv.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from <out>/ckpt.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Replace a run already in <out> (without it, a fresh run into a folder that holds one is
    /// refused).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Override the number of training steps of the config.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub steps: Option<u64>,
    /// fp32; tf32 (CUDA matmuls and convolutions in TensorFloat-32); bf16 (tf32, plus the
    /// network's forward pass under bfloat16 autocast, TimeConv, losses and optimiser float32).
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub precision: Precision,
}

pub fn parse_precision(s: &str) -> Result<Precision, String> {
    Precision::parse(s).map_err(|e| e.to_string())
}

/// Refuses a command whose outputs would destroy one of its inputs or each other, or replace
/// what is not a regular file (`dsno::util::fsio::check_io`); absent optional paths are skipped.
pub fn check_io(
    inputs: &[(&str, Option<&Path>)],
    outputs: &[(&str, Option<&Path>)],
    folders: &[&str],
) -> Result<()> {
    fn given<'a>(v: &[(&'a str, Option<&'a Path>)]) -> Vec<(&'a str, &'a Path)> {
        v.iter().filter_map(|&(w, p)| p.map(|p| (w, p))).collect()
    }
    dsno::util::fsio::check_io(&given(inputs), &given(outputs), folders)?;
    Ok(())
}

/// [`check_io`] of a command with one input and one output, `--out` (a folder when `folder`).
pub fn check_out(input: (&str, &Path), out: &Path, folder: bool) -> Result<()> {
    let folders: &[&str] = if folder { &["--out"] } else { &[] };
    check_io(
        &[(input.0, Some(input.1))],
        &[("--out", Some(out))],
        folders,
    )
}

impl RunArgs {
    /// Refuses a run whose folder or files would destroy one of `inputs` (the config, the
    /// teacher, the store, the data, an --init model).
    pub fn check_io(&self, inputs: &[(&str, Option<&Path>)]) -> Result<()> {
        let files = dsno::train::RunFiles {
            dir: self.out.clone(),
        };
        let [ck, model, log] = files.all();
        check_io(
            inputs,
            &[
                ("--out", Some(&self.out)),
                ("--out's checkpoint", Some(&ck)),
                ("--out's model", Some(&model)),
                ("--out's log", Some(&log)),
            ],
            &["--out"],
        )
    }

    pub fn options(&self, device: Device, comm: &Comm) -> RunOptions {
        RunOptions {
            out: self.out.clone(),
            resume: self.resume,
            overwrite: self.overwrite,
            device,
            progress: true,
            comm: comm.clone(),
            precision: self.precision,
        }
    }

    /// Prints how the run went (rank 0 of a group); a run stopped by a signal exits with
    /// status 128 + the signal (130 for SIGINT, 143 for SIGTERM).
    pub fn report(&self, s: &Summary, comm: &Comm) -> ExitCode {
        if comm.is_main() {
            println!(
                "trained steps {}..{} in {:.1} s, last loss {:.5} → {}",
                s.start_step,
                s.end_step,
                s.seconds,
                s.last_loss,
                self.out.join("model.safetensors").display()
            );
        }
        if s.plateaued && comm.is_main() {
            println!(
                "the validation loss stopped improving (train.patience): ended at step {}",
                s.end_step
            );
        }
        if let (Some(sig), true) = (s.stopped, comm.is_main()) {
            eprintln!("stopped by signal {sig}; checkpoint saved (continue with --resume)");
        }
        match s.stopped {
            Some(sig) => ExitCode::from((128 + sig) as u8),
            None => ExitCode::SUCCESS,
        }
    }
}

/// The folder of the data set `name`: `--data` if given, else `$DSNO_DATA/<name>`, else the
/// user cache (see `dsno data fetch`).
pub fn data_dir(explicit: Option<&Path>, name: &str) -> Result<PathBuf> {
    Ok(dsno::data::fetch::locate(name, explicit)?)
}

/// Writes raw samples as safetensors (tensor `samples`), atomically.
pub fn save_raw(samples: &Tensor, path: &Path) -> Result<()> {
    dsno::checkpoint::save_tensors(path, &[("samples".to_string(), samples.shallow_clone())])?;
    Ok(())
}

/// The noise and the ODE solve of a teacher's samples, as `sample` and `fid` take them.
#[derive(clap::Args, Debug)]
pub struct OdeArgs {
    /// Seed of the noise: sample i's noise depends on (seed, i) only.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// ODE solver for a teacher (required) or the toy model (default dpmpp2m).
    #[arg(long, value_enum)]
    pub solver: Option<dsno::solver::Solver>,
    /// Solver steps (at most 100,000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=dsno::solver::MAX_STEPS as u64))]
    pub steps: u64,
    /// Step grid: default (the solver's recommended one), uniform, quadratic, logsnr.
    #[arg(long, value_enum, default_value = "default")]
    pub grid: dsno::solver::Grid,
}

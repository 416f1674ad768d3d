//! The `dsno` command line: a thin layer over the library.
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use dsno::denoiser::MixtureDenoiser;
use dsno::schedule::Schedule;
use dsno::solver::Solver;
use std::path::PathBuf;
use std::time::Instant;
use tch::Kind;

/// Fast sampling of diffusion models by operator learning (DSNO).
#[derive(Parser, Debug)]
#[command(name = "dsno", version, about, long_about = None)]
struct Cli {
    /// Where to compute: auto (CUDA when libtorch sees a GPU, else CPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// CPU threads for libtorch (default: libtorch's choice, all cores).
    #[arg(long, global = true)]
    threads: Option<i32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Draw samples and write them as a PNG.
    Sample(SampleArgs),
    /// Train a diffusion teacher (x-prediction) from a TOML config.
    TrainTeacher(TrainTeacherArgs),
    /// Solve the teacher's ODE and store trajectories for distillation (not implemented yet).
    Trajectories(Pending),
    /// Distil the teacher into a one-step DSNO operator (not implemented yet).
    Distill(Pending),
    /// Evaluate samplers against the teacher and write a report (not implemented yet).
    Eval(Pending),
    /// Benchmark the engine and the samplers (not implemented yet).
    Bench(Pending),
}

/// Arguments of a command that is not implemented yet (accepted, then refused).
#[derive(Args, Debug)]
struct Pending {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

#[derive(Args, Debug)]
struct TrainTeacherArgs {
    /// TOML config (presets in configs/: toy2d, mnist, fashion-mnist).
    #[arg(long)]
    config: PathBuf,
    /// Folder with the IDX files (train-images-idx3-ubyte[.gz], …) for image data sets.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder: ckpt.safetensors (training state), model.safetensors (EMA), log.csv.
    #[arg(long)]
    out: PathBuf,
    /// Continue from <out>/ckpt.safetensors.
    #[arg(long)]
    resume: bool,
    /// Override the number of training steps of the config.
    #[arg(long)]
    steps: Option<u64>,
}

#[derive(Args, Debug)]
struct SampleArgs {
    /// A trained model checkpoint. Without it, samples come from the built-in toy model: the
    /// exact denoiser of a 2-D mixture of eight Gaussians, solved with --solver.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Number of samples.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Seed of the noise: sample i's noise depends on (seed, i) only.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// ODE solver for the toy model or a teacher: ddim, euler, heun, dpmpp2m.
    #[arg(long, default_value = "dpmpp2m")]
    solver: String,
    /// Solver steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Noise schedule of the toy model: vp-cosine, vp-linear, edm.
    #[arg(long, default_value = "vp-cosine")]
    schedule: String,
    /// Output PNG.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n < 1 {
            bail!("--threads must be at least 1, got {n}");
        }
        tch::set_num_threads(n);
    }
    let device = dsno::device::parse_device(&cli.device)?;
    match cli.command {
        Command::Sample(a) => sample(a, device),
        Command::TrainTeacher(a) => train_teacher(a, device),
        Command::Trajectories(_) => pending("trajectories"),
        Command::Distill(_) => pending("distill"),
        Command::Eval(_) => pending("eval"),
        Command::Bench(_) => pending("bench"),
    }
}

fn train_teacher(a: TrainTeacherArgs, device: tch::Device) -> Result<()> {
    use dsno::train::teacher::{train, TeacherConfig};
    let mut cfg = TeacherConfig::load(&a.config)?;
    if let Some(s) = a.steps {
        cfg.train.steps = s;
    }
    let data = cfg.data.load(a.data.as_deref())?;
    println!(
        "teacher: {} parameters, {} samples of {}, {} steps of {} on {}",
        cfg.model.num_params(),
        data.size()[0],
        cfg.data.name(),
        cfg.train.steps,
        cfg.train.batch_size,
        dsno::device::describe(device)
    );
    let s = train(&cfg, data, &a.out, a.resume, device, true)?;
    println!(
        "trained steps {}..{} in {:.1} s, last loss {:.5} → {}",
        s.start_step,
        s.end_step,
        s.seconds,
        s.last_loss,
        a.out.join("model.safetensors").display()
    );
    Ok(())
}

/// Samples a teacher checkpoint with an ODE solver.
fn sample_checkpoint(a: &SampleArgs, path: &std::path::Path, device: tch::Device) -> Result<()> {
    let teacher = dsno::model::Teacher::load(path, device)?;
    let solver = Solver::from_name(&a.solver)?;
    let schedule = teacher.schedule();
    let grid = solver.default_grid(&schedule, a.steps);
    let shape = teacher.meta.model.sample_shape();
    let x_t = dsno::rng::noise(a.seed, 0..a.count as u64, &shape, Kind::Float, device)
        * schedule.sigma(grid[0]);
    let start = Instant::now();
    let traj = solver.solve(&teacher, &schedule, &x_t, &grid, &[])?;
    let secs = start.elapsed().as_secs_f64();
    let out = traj.end.to_device(tch::Device::Cpu);
    if let Some(name) = teacher.meta.dataset.strip_prefix("toy2d:") {
        // toy data: report the sliced Wasserstein-2 distance to fresh data points
        let data = dsno::data::toy2d::sample(name, a.count, a.seed ^ 0x5eed)?;
        let noise = x_t.to_device(tch::Device::Cpu);
        println!(
            "sliced W2 to {} fresh {name} points: samples {:.4}, initial noise {:.4}",
            a.count,
            dsno::metrics::sliced_wasserstein(&out, &data, 64, 0)?,
            dsno::metrics::sliced_wasserstein(&noise, &data, 64, 0)?
        );
    }
    let img = if shape.len() == 1 {
        dsno::image::scatter(&out, 3.0, 512)?
    } else {
        let cols = (a.count as f64).sqrt().ceil() as usize;
        dsno::image::grid(&out, cols, 2)?
    };
    img.save_png(&a.out)?;
    println!(
        "teacher {} ({}), {} × {} steps, {} samples on {}: NFE {}, {:.3} s → {}",
        path.display(),
        teacher.meta.dataset,
        solver.name(),
        a.steps,
        a.count,
        dsno::device::describe(device),
        traj.nfe,
        secs,
        a.out.display()
    );
    Ok(())
}

fn pending(name: &str) -> Result<()> {
    bail!("`dsno {name}` is not implemented yet")
}

fn sample(a: SampleArgs, device: tch::Device) -> Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    if let Some(model) = &a.model {
        return sample_checkpoint(&a, model, device);
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let solver = Solver::from_name(&a.solver)?;
    let schedule = Schedule::from_name(&a.schedule)?;
    let den = MixtureDenoiser::eight_gaussians(2.0, 0.05, schedule);
    let den = MixtureDenoiser {
        means: den.means.to_device(device),
        stds: den.stds.to_device(device),
        weights: den.weights.to_device(device),
        schedule,
    };
    let grid = solver.default_grid(&schedule, a.steps);
    let x_t = dsno::rng::noise(a.seed, 0..a.count as u64, &[2], Kind::Double, device)
        * schedule.sigma(grid[0]);
    let start = Instant::now();
    let traj = solver.solve(&den, &schedule, &x_t, &grid, &[])?;
    let secs = start.elapsed().as_secs_f64();
    let img = dsno::image::scatter(&traj.end.to_device(tch::Device::Cpu), 3.0, 512)?;
    img.save_png(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "toy model (8 Gaussians, exact denoiser), {} × {} steps, {} samples on {}: NFE {}, {:.3} s → {}",
        solver.name(),
        a.steps,
        a.count,
        dsno::device::describe(device),
        traj.nfe,
        secs,
        a.out.display()
    );
    Ok(())
}

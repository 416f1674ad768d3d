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
    Sample(SampleArgs),
    /// Train a diffusion teacher (x-prediction) from a TOML config.
    TrainTeacher(TrainTeacherArgs),
    /// Solve the teacher's ODE and store trajectories for distillation (sharded, resumable).
    Trajectories(TrajectoriesArgs),
    /// Distil the teacher into a one-step DSNO operator (or the KD baseline).
    Distill(DistillArgs),
    /// Evaluate DSNO, KD and few-step solvers against the teacher from the same noise: FD, KID,
    /// precision/recall, PSNR vs the teacher, wall time; writes report.md/json, plots, grids.
    Eval(EvalArgs),
    /// Train the LeNet-style feature classifier used by the sample-quality metrics.
    TrainClassifier(TrainClassifierArgs),
    /// Benchmark the engine: U-Net and operator forward/train-step time, images/s, GFLOP/s.
    Bench(BenchArgs),
    /// Copy a checkpoint's model weights (no optimiser state) to a new file, optionally as
    /// float16 (how the bundled models in models/ are made).
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Folder with the data set's IDX files (training images: the reference; test images: the
    /// floor row).
    #[arg(long)]
    data: PathBuf,
    /// Teacher checkpoint.
    #[arg(long)]
    teacher: PathBuf,
    /// DSNO checkpoint.
    #[arg(long)]
    dsno: Option<PathBuf>,
    /// KD checkpoint.
    #[arg(long)]
    kd: Option<PathBuf>,
    /// Feature classifier (`dsno train-classifier`); default models/<data set>-classifier.safetensors.
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Samples per method.
    #[arg(long, default_value_t = 10000)]
    count: usize,
    /// Samples per forward pass, the same for every method.
    #[arg(long, default_value_t = 250)]
    batch: usize,
    /// Noise seed (the trajectory store's default is 0: keep this different).
    #[arg(long, default_value_t = 1000)]
    seed: u64,
    /// Steps of the reference DPM-Solver++(2M) solve.
    #[arg(long, default_value_t = 50)]
    reference_steps: usize,
    /// DDIM step counts, comma-separated.
    #[arg(long, default_value = "1,2,4,10,20")]
    ddim: String,
    /// DPM-Solver++(2M) step counts, comma-separated.
    #[arg(long, default_value = "2,4,10,20")]
    dpm: String,
    /// Step grid of the DDIM rows: default, uniform, quadratic, logsnr.
    #[arg(long, default_value = "default")]
    ddim_grid: String,
    /// Step grid of the DPM-Solver++ rows: default, uniform, quadratic, logsnr (uniform: the
    /// best of the four at 2–20 steps on the MNIST teacher, docs/RESULTS.md §8).
    #[arg(long, default_value = "uniform")]
    dpm_grid: String,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct TrajectoriesArgs {
    /// Teacher checkpoint.
    #[arg(long)]
    teacher: PathBuf,
    /// ODE solver: ddim, euler, heun, dpmpp2m.
    #[arg(long, default_value = "dpmpp2m")]
    solver: String,
    /// Solver steps (the grid passes through every output time).
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Output times: quad:M, uniform:M or a list like 0.75,0.5,0.25,0.
    #[arg(long, default_value = "quad:4")]
    times: String,
    /// Number of trajectories.
    #[arg(long)]
    count: usize,
    /// Seed: sample i's noise depends on (seed, i) only.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (the store).
    #[arg(long)]
    out: PathBuf,
    /// Make only part k of n (0 ≤ k < n): the shards j with j mod n = k.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Trajectories per shard file.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    /// Samples per solver batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Store x_T and targets as float16.
    #[arg(long)]
    fp16: bool,
}

#[derive(Args, Debug)]
struct DistillArgs {
    /// Teacher checkpoint (initialises the student; must be the store's teacher).
    #[arg(long)]
    teacher: PathBuf,
    /// Trajectory store made by `dsno trajectories`.
    #[arg(long)]
    trajectories: PathBuf,
    /// TOML config (configs/distill-*.toml).
    #[arg(long)]
    config: PathBuf,
    /// dsno or kd (overrides the config's method).
    #[arg(long)]
    method: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

/// Where a training run writes, whether it continues, and for how long.
#[derive(Args, Debug)]
struct RunArgs {
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

impl RunArgs {
    /// Prints how the run went; a run stopped on request exits with status 130.
    fn report(&self, s: &dsno::train::Summary) {
        println!(
            "trained steps {}..{} in {:.1} s, last loss {:.5} → {}",
            s.start_step,
            s.end_step,
            s.seconds,
            s.last_loss,
            self.out.join("model.safetensors").display()
        );
        if s.stopped {
            std::process::exit(130);
        }
    }
}

#[derive(Args, Debug)]
struct TrainClassifierArgs {
    /// Folder with the IDX files (train-images-idx3-ubyte[.gz], train-labels-…, t10k-…).
    #[arg(long)]
    data: PathBuf,
    /// Name of the data set, stored in the file (default: the folder's name).
    #[arg(long)]
    name: Option<String>,
    /// Output file (safetensors; the description is in its metadata).
    #[arg(long)]
    out: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 6000)]
    steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Peak learning rate (Adam, decayed to 0 by a half cosine).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Seed of the initialisation and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Input checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Store floating-point tensors as float16.
    #[arg(long)]
    fp16: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// What to benchmark: `engine`.
    what: String,
    /// Model config (a teacher TOML preset); its [model] section is measured.
    #[arg(long, default_value = "configs/mnist.toml")]
    config: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch: i64,
    /// Operator time slots M.
    #[arg(long, default_value_t = 4)]
    slots: i64,
    /// TimeConv Fourier modes.
    #[arg(long, default_value_t = 2)]
    modes: i64,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
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

#[derive(Args, Debug)]
struct TrainTeacherArgs {
    /// TOML config (presets in configs/: toy2d, mnist, fashion-mnist).
    #[arg(long)]
    config: PathBuf,
    /// Folder with the IDX files (train-images-idx3-ubyte[.gz], …) for image data sets.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Start a fresh run from this teacher checkpoint's weights (same [model]; new optimiser,
    /// step 0, warm-up again). Ignored with --resume, whose checkpoint holds the weights.
    #[arg(long)]
    init: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct SampleArgs {
    /// A trained checkpoint: a DSNO or KD model (one step) or a teacher (needs --solver).
    /// Default: the bundled MNIST DSNO model (models/mnist-dsno.safetensors, built in).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sample the built-in toy model instead: the exact denoiser of a 2-D mixture of eight
    /// Gaussians, solved with --solver.
    #[arg(long, conflicts_with = "model")]
    toy: bool,
    /// Number of samples (default: 2000 for the toy model, 64 otherwise).
    #[arg(long)]
    count: Option<usize>,
    /// Seed of the noise: sample i's noise depends on (seed, i) only.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// ODE solver for a teacher (required) or the toy model (default dpmpp2m): ddim, euler,
    /// heun, dpmpp2m.
    #[arg(long)]
    solver: Option<String>,
    /// Solver steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Step grid: default (the solver's recommended one), uniform, quadratic, logsnr.
    #[arg(long, default_value = "default")]
    grid: String,
    /// Noise schedule of the toy model: vp-cosine, vp-linear, edm.
    #[arg(long, default_value = "vp-cosine")]
    schedule: String,
    /// Output PNG.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write every output time of a one-step model, one row per sample (PNG).
    #[arg(long)]
    trajectory: Option<PathBuf>,
    /// Also write the raw samples (float, [-1, 1]) as a safetensors file (tensor `samples`).
    #[arg(long)]
    safetensors: Option<PathBuf>,
    /// Samples per forward pass of a one-step model.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

fn main() {
    let cli = Cli::parse();
    if !cli.release_host_memory {
        dsno::device::keep_freed_host_memory();
    }
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
        Command::Trajectories(a) => trajectories(a, device),
        Command::Distill(a) => distill(a, device),
        Command::Eval(a) => eval(a, device),
        Command::Bench(a) => bench(a, device),
        Command::Export(a) => export(a),
        Command::TrainClassifier(a) => train_classifier(a, device),
    }
}

fn train_classifier(a: TrainClassifierArgs, device: tch::Device) -> Result<()> {
    use dsno::data::{idx, to_unit_range};
    use dsno::nn::classifier;
    let load = |split| -> Result<(tch::Tensor, tch::Tensor)> {
        Ok((
            to_unit_range(&idx::load_images(&a.data, split)?),
            idx::load_labels(&a.data, split)?,
        ))
    };
    let (train_x, train_y) = load(idx::Split::Train)?;
    let (test_x, test_y) = load(idx::Split::Test)?;
    let name = a.name.clone().unwrap_or_else(|| {
        a.data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into())
    });
    println!(
        "classifier on {name}: {} training and {} test images, {} steps of {} on {}",
        train_x.size()[0],
        test_x.size()[0],
        a.steps,
        a.batch,
        dsno::device::describe(device)
    );
    tch::manual_seed(a.seed as i64);
    let vs = tch::nn::VarStore::new(device);
    let net = classifier::Classifier::new(&vs.root());
    let start = Instant::now();
    let schedule = classifier::Schedule {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
    };
    let last = classifier::train(&vs, &net, &train_x, &train_y, schedule)?;
    let acc = classifier::accuracy(&net, &test_x.to_device(device), &test_y);
    let info = classifier::ClassifierInfo {
        dataset: name,
        test_accuracy: acc,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
    };
    classifier::save(&a.out, &vs, &info)?;
    println!(
        "trained in {:.1} s, last loss {last:.4}, test accuracy {:.2} % → {}",
        start.elapsed().as_secs_f64(),
        100.0 * acc,
        a.out.display()
    );
    Ok(())
}

fn train_teacher(a: TrainTeacherArgs, device: tch::Device) -> Result<()> {
    use dsno::train::teacher::{train, TeacherConfig};
    let mut cfg = TeacherConfig::load(&a.config)?;
    cfg.train.steps = a.run.steps.unwrap_or(cfg.train.steps);
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
    dsno::train::install_stop_handler();
    let s = train(
        &cfg,
        data,
        &a.run.out,
        a.run.resume,
        a.init.as_deref(),
        device,
        true,
    )?;
    a.run.report(&s);
    Ok(())
}

/// Samples a teacher checkpoint with an ODE solver.
fn sample_checkpoint(a: &SampleArgs, path: &std::path::Path, device: tch::Device) -> Result<()> {
    let Some(solver) = a.solver.as_deref() else {
        bail!(
            "{} is a teacher (a diffusion model): sample it with --solver ddim|euler|heun|dpmpp2m and --steps N",
            path.display()
        );
    };
    let solver = Solver::from_name(solver)?;
    let teacher = dsno::model::Teacher::load(path, device)?;
    let count = a.count.unwrap_or(64);
    let schedule = teacher.schedule();
    let grid = dsno::solver::Grid::from_name(&a.grid)?.make(solver, &schedule, a.steps);
    let shape = teacher.meta.model.sample_shape();
    let x_t = dsno::rng::noise(a.seed, 0..count as u64, &shape, Kind::Float, device)
        * schedule.sigma(grid[0]);
    let start = Instant::now();
    let traj = solver.solve(&teacher, &schedule, &x_t, &grid, &[])?;
    let secs = start.elapsed().as_secs_f64();
    let out = traj.end.to_device(tch::Device::Cpu);
    if let Some(name) = teacher.meta.dataset.strip_prefix("toy2d:") {
        // toy data: report the sliced Wasserstein-2 distance to fresh data points
        let data = dsno::data::toy2d::sample(name, count, a.seed ^ 0x5eed)?;
        let noise = x_t.to_device(tch::Device::Cpu);
        println!(
            "sliced W2 to {} fresh {name} points: samples {:.4}, initial noise {:.4}",
            count,
            dsno::metrics::sliced_wasserstein(&out, &data, 64, 0)?,
            dsno::metrics::sliced_wasserstein(&noise, &data, 64, 0)?
        );
    }
    save_samples(&out, &a.out)?;
    if let Some(p) = &a.safetensors {
        save_raw(&out, p)?;
    }
    println!(
        "teacher {} ({}), {} × {} steps, {} samples on {}: NFE {}, {:.3} s → {}",
        path.display(),
        teacher.meta.dataset,
        solver.name(),
        a.steps,
        count,
        dsno::device::describe(device),
        traj.nfe,
        secs,
        a.out.display()
    );
    Ok(())
}

fn bench(a: BenchArgs, device: tch::Device) -> Result<()> {
    if a.what != "engine" {
        bail!("unknown benchmark `{}`: expected `engine`", a.what);
    }
    let cfg = dsno::train::teacher::TeacherConfig::load(&a.config)?;
    println!(
        "dsno bench engine: {} ({} parameters), batch {}, M = {}, modes {}, {} iterations (median), device {}",
        a.config.display(),
        cfg.model.num_params(),
        a.batch,
        a.slots,
        a.modes,
        a.iters,
        dsno::device::describe(device)
    );
    let spec = dsno::bench::Spec {
        batch: a.batch,
        slots: a.slots,
        modes: a.modes,
        iters: a.iters,
        device,
    };
    let rows = dsno::bench::engine(&cfg.model, spec)?;
    println!("| model | forward ms | train step ms | images/s forward | images/s train | GFLOP/s forward | GFLOP/s train |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{}", r.row());
    }
    if a.vs_pytorch {
        let py = dsno::bench::pytorch_reference(&a.python, &a.script, &cfg.model, spec)?;
        let get = |k: &str| py.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        println!(
            "\nPyTorch {} reference ({} threads), same batch, in this run:",
            py["torch"].as_str().unwrap_or("?"),
            py["threads"]
        );
        println!("| model | PyTorch forward ms | PyTorch train ms | ratio forward (ours / PyTorch) | ratio train |");
        println!("|---|---|---|---|---|");
        let best_op = rows[1..]
            .iter()
            .min_by(|x, y| x.forward_ms.total_cmp(&y.forward_ms))
            .expect("operator rows");
        for (r, key) in [(&rows[0], "unet"), (best_op, "operator")] {
            let (f, t) = (
                get(&format!("{key}_forward_ms")),
                get(&format!("{key}_train_ms")),
            );
            println!(
                "| {} | {:.1} | {:.1} | {:.3} | {:.3} |",
                r.name,
                f,
                t,
                r.forward_ms / f,
                r.train_ms / t
            );
        }
    }
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    let ck = dsno::checkpoint::load(&a.model)?;
    let tensors: Vec<(String, tch::Tensor)> = ck
        .tensors
        .iter()
        .filter(|(n, _)| !n.starts_with("train/"))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut meta = ck.meta.clone();
    meta.train = None;
    let store = a.fp16.then_some(Kind::Half);
    dsno::checkpoint::save(&a.out, &meta, &tensors, store)?;
    println!("{} tensors → {}", tensors.len(), a.out.display());
    Ok(())
}

/// A run stopped on request exits with status 130 (as after Ctrl-C), so that scripts can tell
/// it from a finished one.
fn parse_steps(s: &str, what: &str) -> Result<Vec<usize>> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| match x.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{what} `{s}`: expected positive step counts separated by commas"),
        })
        .collect()
}

fn eval(a: EvalArgs, device: tch::Device) -> Result<()> {
    use dsno::data::{idx, to_unit_range};
    let teacher = dsno::model::Teacher::load(&a.teacher, device)?;
    let dsno_m = a
        .dsno
        .as_ref()
        .map(|p| dsno::model::OneStep::load(p, device))
        .transpose()?;
    let kd_m =
        a.kd.as_ref()
            .map(|p| dsno::model::OneStep::load(p, device))
            .transpose()?;
    for (m, p, want) in [
        (&dsno_m, &a.dsno, dsno::checkpoint::ModelKind::Dsno),
        (&kd_m, &a.kd, dsno::checkpoint::ModelKind::Kd),
    ] {
        if let (Some(m), Some(p)) = (m, p) {
            if m.meta.kind != want {
                bail!(
                    "{}: a {:?} checkpoint where a {want:?} one was asked for",
                    p.display(),
                    m.meta.kind
                );
            }
        }
    }
    let cls_path = a.classifier.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "models/{}-classifier.safetensors",
            teacher.meta.dataset
        ))
    });
    let cls = dsno::nn::classifier::load(&cls_path, device)?;
    if cls.info.dataset != teacher.meta.dataset {
        eprintln!(
            "warning: the classifier {} was trained on {}, the teacher on {}",
            cls_path.display(),
            cls.info.dataset,
            teacher.meta.dataset
        );
    }
    let train_images = to_unit_range(&idx::load_images(&a.data, idx::Split::Train)?);
    let test_images = to_unit_range(&idx::load_images(&a.data, idx::Split::Test)?);
    let o = dsno::eval::EvalOptions {
        count: a.count,
        batch: a.batch,
        seed: a.seed,
        reference_steps: a.reference_steps,
        ddim_steps: parse_steps(&a.ddim, "--ddim")?,
        dpm_steps: parse_steps(&a.dpm, "--dpm")?,
        ddim_grid: dsno::solver::Grid::from_name(&a.ddim_grid)?,
        dpm_grid: dsno::solver::Grid::from_name(&a.dpm_grid)?,
        ..Default::default()
    };
    if a.batch == 0 || a.reference_steps == 0 {
        bail!("--batch and --reference-steps must be at least 1");
    }
    let name = |p: &PathBuf| p.display().to_string();
    let inputs = dsno::eval::EvalInputs {
        teacher: &teacher,
        teacher_name: name(&a.teacher),
        dsno: dsno_m.as_ref().zip(a.dsno.as_ref().map(name)),
        kd: kd_m.as_ref().zip(a.kd.as_ref().map(name)),
        classifier: &cls.net,
        classifier_name: format!(
            "{} ({}, test accuracy {:.2} %)",
            cls_path.display(),
            cls.info.dataset,
            100.0 * cls.info.test_accuracy
        ),
        train_images,
        test_images,
    };
    println!(
        "eval: {} samples per method, batch {}, on {}",
        a.count,
        a.batch,
        dsno::device::describe(device)
    );
    let start = Instant::now();
    let (report, samples) = dsno::eval::evaluate(&inputs, &o)?;
    dsno::eval::write_report(&a.out, &report, &samples)?;
    println!("| method | NFE | FD | KID | precision | recall | PSNR dB | wall ms/image |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &report.rows {
        println!(
            "| {} | {} | {:.3} | {:.4} | {:.3} | {:.3} | {} | {} |",
            r.method,
            r.nfe.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
            r.fd,
            r.kid,
            r.precision,
            r.recall,
            r.psnr
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "–".into()),
            r.wall_ms
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "–".into()),
        );
    }
    for t in report.targets() {
        println!("{t}");
    }
    println!(
        "{:.1} s → {}",
        start.elapsed().as_secs_f64(),
        a.out.join("report.md").display()
    );
    Ok(())
}

fn sample(a: SampleArgs, device: tch::Device) -> Result<()> {
    if a.count == Some(0) {
        bail!("--count must be at least 1");
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if !a.toy && a.model.is_none() {
        return sample_bundled(&a, device);
    }
    if let Some(model) = &a.model {
        let meta = dsno::model::peek(model)?;
        return match meta.kind {
            dsno::checkpoint::ModelKind::Teacher => sample_checkpoint(&a, model, device),
            _ => sample_one_step(&a, model, device),
        };
    }
    let count = a.count.unwrap_or(2000);
    let solver = Solver::from_name(a.solver.as_deref().unwrap_or("dpmpp2m"))?;
    let schedule = Schedule::from_name(&a.schedule)?;
    let den = MixtureDenoiser::eight_gaussians(2.0, 0.05, schedule);
    let den = MixtureDenoiser {
        means: den.means.to_device(device),
        stds: den.stds.to_device(device),
        weights: den.weights.to_device(device),
        schedule,
    };
    let grid = dsno::solver::Grid::from_name(&a.grid)?.make(solver, &schedule, a.steps);
    let x_t = dsno::rng::noise(a.seed, 0..count as u64, &[2], Kind::Double, device)
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
        count,
        dsno::device::describe(device),
        traj.nfe,
        secs,
        a.out.display()
    );
    Ok(())
}

/// Writes samples `[N, …]` as a PNG grid (images) or scatter plot (2-D points).
fn save_samples(samples: &tch::Tensor, path: &std::path::Path) -> Result<()> {
    let s = samples.to_device(tch::Device::Cpu);
    let img = if s.dim() == 2 {
        dsno::image::scatter(&s, 3.0, 512)?
    } else {
        let cols = (s.size()[0] as f64).sqrt().ceil() as usize;
        dsno::image::grid(&s, cols, 2)?
    };
    img.save_png(path)?;
    Ok(())
}

/// Writes raw samples as safetensors (tensor `samples`), atomically.
fn save_raw(samples: &tch::Tensor, path: &std::path::Path) -> Result<()> {
    let tmp = dsno::fsio::temp_path(path);
    tch::Tensor::write_safetensors(
        &[("samples", &samples.to_device(tch::Device::Cpu).contiguous())],
        &tmp,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The bundled MNIST DSNO model (float16 weights, built into the binary).
const BUNDLED_DSNO: &[u8] = include_bytes!("../models/mnist-dsno.safetensors");

fn sample_bundled(a: &SampleArgs, device: tch::Device) -> Result<()> {
    let name = std::path::Path::new("models/mnist-dsno.safetensors (built in)");
    let ck = dsno::checkpoint::load_bytes(BUNDLED_DSNO, name)?;
    let model = dsno::model::OneStep::from_checkpoint(ck, name, device)?;
    sample_model(a, model, name, device)
}

/// Samples a DSNO or KD checkpoint: one forward pass per batch.
fn sample_one_step(a: &SampleArgs, path: &std::path::Path, device: tch::Device) -> Result<()> {
    let model = dsno::model::OneStep::load(path, device)?;
    sample_model(a, model, path, device)
}

fn sample_model(
    a: &SampleArgs,
    model: dsno::model::OneStep,
    path: &std::path::Path,
    device: tch::Device,
) -> Result<()> {
    if a.solver.is_some() {
        bail!(
            "{} is a one-step model: --solver does not apply",
            path.display()
        );
    }
    let count = a.count.unwrap_or(64);
    let shape = model.meta.model.sample_shape();
    let sigma = model.meta.schedule.sigma(model.meta.schedule.t_range().1);
    let start = Instant::now();
    let mut outs = vec![];
    for b0 in (0..count).step_by(a.batch.max(1)) {
        let b1 = (b0 + a.batch.max(1)).min(count);
        let x_t =
            dsno::rng::noise(a.seed, b0 as u64..b1 as u64, &shape, Kind::Float, device) * sigma;
        outs.push(model.trajectory(&x_t).to_device(tch::Device::Cpu));
    }
    let traj = tch::Tensor::cat(&outs, 0);
    let secs = start.elapsed().as_secs_f64();
    let m = model.slots();
    let samples = traj.select(1, m - 1);
    save_samples(&samples, &a.out)?;
    if let Some(p) = &a.trajectory {
        if shape.len() == 1 {
            bail!(
                "--trajectory draws image rows; this model makes {}-D points",
                shape[0]
            );
        }
        dsno::image::grid(&traj.flatten(0, 1), m as usize, 2)?.save_png(p)?;
    }
    if let Some(p) = &a.safetensors {
        save_raw(&samples, p)?;
    }
    println!(
        "{:?} model {} ({}), {} samples on {}: NFE 1 (one forward pass over {m} time slots), {:.3} s → {}",
        model.meta.kind,
        path.display(),
        model.meta.dataset,
        count,
        dsno::device::describe(device),
        secs,
        a.out.display()
    );
    Ok(())
}

fn trajectories(a: TrajectoriesArgs, device: tch::Device) -> Result<()> {
    use dsno::data::trajectories::{generate, GenerateOptions};
    let (k, n) = a
        .shard
        .split_once('/')
        .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)))
        .with_context(|| format!("--shard `{}`: expected k/n, e.g. 0/3", a.shard))?;
    let teacher = dsno::model::Teacher::load(&a.teacher, device)?;
    let o = GenerateOptions {
        solver: Solver::from_name(&a.solver)?,
        steps: a.steps,
        times: dsno::schedule::parse_output_times(&a.times)?,
        count: a.count,
        seed: a.seed,
        shard_size: a.shard_size,
        batch: a.batch,
        fp16: a.fp16,
        part: (k, n),
        progress: true,
    };
    let s = generate(&teacher, &a.teacher, &a.out, &o)?;
    println!(
        "trajectories → {}: {} shards made ({} samples, {} NFE each, {:.1} s, {:.1} samples/s), {} kept, {} regenerated",
        a.out.display(),
        s.made,
        s.samples,
        s.nfe_per_sample,
        s.seconds,
        s.samples as f64 / s.seconds.max(1e-9),
        s.kept,
        s.regenerated.len()
    );
    Ok(())
}

fn distill(a: DistillArgs, device: tch::Device) -> Result<()> {
    use dsno::train::distill::{distill, DistillConfig, Method};
    let mut cfg = DistillConfig::load(&a.config)?;
    if let Some(m) = &a.method {
        cfg.method = match m.as_str() {
            "dsno" => Method::Dsno,
            "kd" => Method::Kd,
            _ => bail!("--method `{m}`: expected dsno or kd"),
        };
    }
    cfg.train.steps = a.run.steps.unwrap_or(cfg.train.steps);
    println!(
        "distill ({:?}): {} steps of {} on {}",
        cfg.method,
        cfg.train.steps,
        cfg.train.batch_size,
        dsno::device::describe(device)
    );
    dsno::train::install_stop_handler();
    let s = distill(
        &cfg,
        &a.teacher,
        &a.trajectories,
        &a.run.out,
        a.run.resume,
        device,
        true,
    )?;
    a.run.report(&s);
    Ok(())
}

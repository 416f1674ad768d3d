//! `dsno sample`: one-step models, teachers with a solver, or the exact toy denoiser.
use crate::common::{describe, save_raw};
use anyhow::{bail, Context, Result};
use dsno::checkpoint::{self, ModelKind};
use dsno::denoiser::{Guidance, MixtureDenoiser};
use dsno::eval::sampling::{draw, DrawOptions, Sampler};
use dsno::model::{OneStep, Teacher};
use dsno::sampling::Noise;
use dsno::schedule::{Preset, Schedule};
use dsno::solver::Solver;
use dsno::util::fsio::Outputs;
use dsno::util::image;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{Device, Kind};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A trained checkpoint: a DSNO or KD model (one step) or a teacher (needs --solver).
    /// Default: the bundled MNIST DSNO model (models/mnist-dsno.safetensors, built in; with
    /// --class or --classes the class-conditional one, models/mnist-cond-dsno.safetensors).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sample the built-in toy model instead: the exact denoiser of a 2-D mixture of eight
    /// Gaussians, solved with --solver.
    #[arg(long, conflicts_with = "model")]
    toy: bool,
    /// Number of samples (default: 2000 for the toy model, 64 otherwise; with --classes, samples
    /// per class, default 10).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    #[command(flatten)]
    ode: crate::common::OdeArgs,
    /// Noise schedule of the toy model.
    #[arg(long, value_enum, default_value = "vp-cosine")]
    schedule: Preset,
    /// Output PNG.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write every output time of a one-step model, one row per sample (PNG).
    #[arg(long)]
    trajectory: Option<PathBuf>,
    /// Also write the raw samples (float, [-1, 1]) as a safetensors file (tensor `samples`).
    #[arg(long)]
    safetensors: Option<PathBuf>,
    /// Samples per forward pass or solve (default: 64 for one-step models; all of them at once
    /// for teachers and the toy model).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    /// A class-conditional model: draw every sample of this class (without --model: the
    /// bundled class-conditional MNIST DSNO).
    #[arg(long, conflicts_with = "classes")]
    class: Option<i64>,
    /// A class-conditional model: a grid with one row per class (--count samples per class,
    /// default 10; without --model: the bundled class-conditional MNIST DSNO).
    #[arg(long)]
    classes: bool,
    /// The noise x_T to start from instead of the seeded stream: a safetensors file with the
    /// tensor `x_T` [N, C, H, W] (float; the model's sample shape, at the schedule's noise
    /// level) and, for a class-conditional model, `labels` [N] (int64; else --class for all).
    /// One sample per row, the same images as any other runtime given the same x_T.
    #[arg(long, conflicts_with_all = ["toy", "count", "classes"])]
    noise: Option<PathBuf>,
    /// Classifier-free guidance scale w for a class-conditional teacher (1: the conditional
    /// model, 0: the unconditional one; two network evaluations per step otherwise).
    #[arg(long, default_value = "1", allow_negative_numbers = true)]
    guidance: Guidance,
}

/// The labels of a conditional model's samples (`None` for an unconditional model), and the
/// sample count they imply; checks that labels are asked of conditional models only.
fn labels(
    a: &Args,
    classes: Option<i64>,
    sample: &[i64],
    path: &Path,
) -> Result<(Option<tch::Tensor>, u64)> {
    let asked = a.class.is_some() || a.classes || a.guidance != Guidance::CONDITIONAL;
    let count = a.count.unwrap_or(if a.classes { 10 } else { 64 });
    match (classes, asked) {
        (None, false) => Ok((None, count)),
        (None, true) => bail!(
            "{} is not class-conditional: --class, --classes and --guidance do not apply",
            path.display()
        ),
        (Some(k), _) => {
            // the samples and their labels must fit before the label list is made
            let n = count as f64 * if a.classes { k as f64 } else { 1.0 };
            let per = 8.0 + 4.0 * sample.iter().product::<i64>() as f64;
            dsno::util::memory::check_memory(&format!("{n} samples"), n * per)?;
            let labels: Vec<i64> = match (a.class, a.classes) {
                (Some(c), _) if !(0..k).contains(&c) => {
                    bail!(
                        "--class {c}: {} has the classes 0..{}",
                        path.display(),
                        k - 1
                    )
                }
                (Some(c), _) => vec![c; count as usize],
                (None, true) => (0..k * count as i64).map(|i| i / count as i64).collect(),
                (None, false) => bail!(
                    "{} is class-conditional: give --class N or --classes",
                    path.display()
                ),
            };
            let n = labels.len() as u64;
            Ok((Some(tch::Tensor::from_slice(&labels)), n))
        }
    }
}

/// The noise and labels of `--noise`, checked against the model at `path` (its sample shape and
/// classes): x_T `[N, …]` float32 and the labels `[N]` for a class-conditional model.
fn given_noise(
    a: &Args,
    file: &Path,
    classes: Option<i64>,
    sample: &[i64],
    path: &Path,
) -> Result<(tch::Tensor, Option<tch::Tensor>)> {
    let mut t = checkpoint::read_plain_tensors(file)?;
    let Some(x) = t.remove("x_T") else {
        bail!(
            "{}: no tensor `x_T` (the noise, [N, {sample:?}…])",
            file.display()
        );
    };
    let s = x.size();
    if s.len() != sample.len() + 1 || s[1..] != *sample || s[0] < 1 || !x.is_floating_point() {
        bail!(
            "{}: tensor `x_T` is {:?} of shape {s:?}; {} takes float noise of shape [N, {}]",
            file.display(),
            x.kind(),
            path.display(),
            sample
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let labels = given_labels(a.class, t.remove("labels"), s[0], classes, file, path)?;
    Ok((x.to_kind(Kind::Float), labels))
}

/// The labels of `--noise`'s `n` samples: its tensor `labels`, or `--class` for all; none for
/// an unconditional model.
fn given_labels(
    class: Option<i64>,
    stored: Option<tch::Tensor>,
    n: i64,
    classes: Option<i64>,
    file: &Path,
    path: &Path,
) -> Result<Option<tch::Tensor>> {
    let (k, y) = match (classes, stored, class) {
        (None, None, None) => return Ok(None),
        (None, _, _) => bail!(
            "{} is not class-conditional: the labels of {} (or --class) do not apply",
            path.display(),
            file.display()
        ),
        (Some(_), Some(_), Some(_)) => {
            bail!("{} holds labels: --class does not apply", file.display())
        }
        (Some(_), None, None) => bail!(
            "{} is class-conditional: {} needs a tensor `labels` [{n}], or give --class N",
            path.display(),
            file.display()
        ),
        (Some(k), None, Some(c)) => (k, tch::Tensor::full([n], c, (Kind::Int64, Device::Cpu))),
        (Some(k), Some(y), None) => (k, y),
    };
    check_labels(&y, n, k, file, path)?;
    Ok(Some(y))
}

/// Checks `--noise`'s labels: int64 `[n]` in the model's classes `0..k`.
fn check_labels(y: &tch::Tensor, n: i64, k: i64, file: &Path, path: &Path) -> Result<()> {
    if y.size() != [n] || y.kind() != Kind::Int64 {
        bail!(
            "{}: tensor `labels` is {:?} of shape {:?}, want int64 of shape [{n}]",
            file.display(),
            y.kind(),
            y.size()
        );
    }
    let (lo, hi) = (y.min().int64_value(&[]), y.max().int64_value(&[]));
    if lo < 0 || hi >= k {
        bail!(
            "{}: label {} outside {}'s classes 0..{} (--class or the file's `labels`)",
            file.display(),
            if lo < 0 { lo } else { hi },
            path.display(),
            k - 1
        );
    }
    Ok(())
}

/// The noise, labels and count of a draw: `--noise`'s, or the seeded stream's `seeded` with the
/// labels and count of [`labels`].
fn noise_of(
    a: &Args,
    classes: Option<i64>,
    seeded: Noise,
    path: &Path,
) -> Result<(Noise, Option<tch::Tensor>, u64)> {
    let Some(file) = &a.noise else {
        let (labels, count) = labels(a, classes, &seeded.shape, path)?;
        return Ok((seeded, labels, count));
    };
    let (x, labels) = given_noise(a, file, classes, &seeded.shape, path)?;
    let n = x.size()[0] as u64;
    Ok((Noise::given(&x, seeded.device), labels, n))
}

/// The bundled MNIST DSNO model (float16 weights, built into the binary).
const BUNDLED_DSNO: &[u8] = include_bytes!("../../../models/mnist-dsno.safetensors");
/// The bundled class-conditional MNIST DSNO model (float16, built in): `--class`/`--classes`
/// without `--model`.
const BUNDLED_COND_DSNO: &[u8] = include_bytes!("../../../models/mnist-cond-dsno.safetensors");

pub fn run(a: Args, device: Device) -> Result<ExitCode> {
    check_io(&a)?;
    match &a.model {
        _ if a.toy => toy(&a, device)?,
        None => {
            let (bytes, name) = match a.class.is_some() || a.classes {
                true => (
                    BUNDLED_COND_DSNO,
                    "models/mnist-cond-dsno.safetensors (built in)",
                ),
                false => (BUNDLED_DSNO, "models/mnist-dsno.safetensors (built in)"),
            };
            let name = Path::new(name);
            let ck = checkpoint::load_bytes(bytes, name)?;
            one_step(&a, &OneStep::from_checkpoint(ck, name, device)?, name)?
        }
        Some(p) if dsno::model::peek(p)?.kind == ModelKind::Teacher => teacher(&a, p, device)?,
        Some(p) => one_step(&a, &OneStep::load(p, device)?, p)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// How to draw: `default_count` samples unless --count, in batches of --batch or `batch`
/// (None: all at once).
fn options(a: &Args, default_count: u64, batch: Option<u64>) -> DrawOptions {
    let count = a.count.unwrap_or(default_count);
    DrawOptions {
        labels: None,
        count: count as usize,
        batch: a.batch.or(batch).unwrap_or(count) as usize,
        warm_up: false,
        keep_outputs: a.trajectory.is_some(),
        progress: Some("sample".into()),
    }
}

fn teacher(a: &Args, path: &Path, device: Device) -> Result<()> {
    let Some(solver) = a.ode.solver else {
        bail!(
            "{} is a teacher (a diffusion model): sample it with --solver and --steps",
            path.display()
        );
    };
    let teacher = Teacher::load(path, device)?;
    let shape = teacher.meta.model.sample_shape();
    let schedule = teacher.schedule();
    let grid = a.ode.grid.make(solver, &schedule, a.ode.steps as usize);
    let seeded = Noise::at(a.ode.seed, shape, &schedule, grid[0], device);
    let (noise, labels, count) = noise_of(a, teacher.num_classes(), seeded, path)?;
    let sampler = Sampler::teacher(&teacher, a.guidance, solver, grid)?;
    let o = DrawOptions {
        count: count as usize,
        batch: a.batch.unwrap_or(count) as usize,
        labels,
        ..options(a, count, None)
    };
    let d = draw(&sampler, &noise, &o)?;
    report_teacher(a, path, &teacher, &noise, &d, solver, device)
}

fn report_teacher(
    a: &Args,
    path: &Path,
    teacher: &Teacher,
    noise: &Noise,
    d: &dsno::eval::sampling::Drawn,
    solver: Solver,
    device: Device,
) -> Result<()> {
    if let Some(name) = teacher.meta.dataset.strip_prefix("toy2d:") {
        let x_t = noise.of(0..d.samples.size()[0] as u64);
        let (w2, w2_noise) =
            dsno::eval::score::toy_w2(&d.samples, &x_t, name, a.ode.seed ^ 0x5eed)?;
        println!("sliced W2 to fresh {name} points: samples {w2:.4}, initial noise {w2_noise:.4}");
    }
    write(a, &d.samples, None)?;
    println!(
        "teacher {} ({}), {} × {} steps, {} samples on {}: NFE {}, {:.3} s → {}",
        path.display(),
        teacher.meta.dataset,
        solver.name(),
        a.ode.steps,
        d.samples.size()[0],
        describe(device),
        d.nfe,
        d.seconds,
        a.out.display()
    );
    Ok(())
}

fn one_step(a: &Args, model: &OneStep, path: &Path) -> Result<()> {
    if a.ode.solver.is_some() {
        bail!(
            "{} is a one-step model: --solver does not apply",
            path.display()
        );
    }
    if a.guidance != Guidance::CONDITIONAL && model.num_classes().is_some() {
        bail!(
            "{} is a one-step model: its guidance was fixed when it was distilled (the store's `guidance`); --guidance applies to teachers",
            path.display()
        );
    }
    let shape = model.meta.model.sample_shape();
    let device = model.device();
    let seeded = Noise::at_t_max(a.ode.seed, shape, &model.meta.schedule, device);
    let (noise, labels, count) = noise_of(a, model.num_classes(), seeded, path)?;
    let o = DrawOptions {
        count: count as usize,
        labels,
        ..options(a, count, Some(64))
    };
    let d = draw(&Sampler::OneStep(model), &noise, &o)?;
    write(
        a,
        &d.samples,
        d.outputs.as_ref().map(|o| (o, model.slots())),
    )?;
    println!(
        "{} model {} ({}), {} samples on {}: NFE 1 (one forward pass over {} time slots), {:.3} s → {}",
        model.net.method(), path.display(), model.meta.dataset, d.samples.size()[0],
        describe(device), model.slots(), d.seconds, a.out.display()
    );
    Ok(())
}

fn toy(a: &Args, device: Device) -> Result<()> {
    let solver = a.ode.solver.unwrap_or(Solver::DpmSolver2M);
    let schedule = Schedule::preset(a.schedule);
    let den = MixtureDenoiser::eight_gaussians(2.0, 0.05, schedule).to_device(device);
    let grid = a.ode.grid.make(solver, &schedule, a.ode.steps as usize);
    let noise = Noise {
        kind: Kind::Double,
        ..Noise::at(a.ode.seed, vec![2], &schedule, grid[0], device)
    };
    let sampler = Sampler::Ode {
        denoiser: &den,
        schedule,
        solver,
        grid,
    };
    let d = draw(&sampler, &noise, &options(a, 2000, None))?;
    write(a, &d.samples, None)?;
    println!(
        "toy model (8 Gaussians, exact denoiser), {} × {} steps, {} samples on {}: NFE {}, {:.3} s → {}",
        solver.name(), a.ode.steps, d.samples.size()[0], describe(device), d.nfe, d.seconds, a.out.display()
    );
    Ok(())
}

/// Writes the PNG (with --classes, one row per class), and the trajectory strip and raw samples
/// when asked for: all of them or none.
fn write(a: &Args, samples: &tch::Tensor, outputs: Option<(&tch::Tensor, i64)>) -> Result<()> {
    let mut files = Outputs::new();
    let png = match a.classes {
        true => image::grid(samples, a.count.unwrap_or(10) as usize, 2)?,
        false => image::preview(samples)?,
    };
    png.save_png(&files.stage(&a.out)?)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(p) = &a.trajectory {
        let Some((traj, m)) = outputs.filter(|_| samples.dim() > 2) else {
            bail!("--trajectory draws one row of images per sample from a one-step image model");
        };
        image::grid(&traj.flatten(0, 1), m as usize, 2)?.save_png(&files.stage(p)?)?;
    }
    if let Some(p) = &a.safetensors {
        save_raw(samples, &files.stage(p)?)?;
    }
    Ok(files.commit()?)
}

/// Refuses outputs that would destroy the model or each other, before anything is computed.
fn check_io(a: &Args) -> Result<()> {
    crate::common::check_io(
        &[
            ("--model", a.model.as_deref()),
            ("--noise", a.noise.as_deref()),
        ],
        &[
            ("--out", Some(&a.out)),
            ("--trajectory", a.trajectory.as_deref()),
            ("--safetensors", a.safetensors.as_deref()),
        ],
        &[],
    )
}

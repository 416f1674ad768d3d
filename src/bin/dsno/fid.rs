//! `dsno fid-ref` and `dsno fid`: Inception FID against reference statistics kept in
//! pytorch-fid's `.npz` format (`mu`, `sigma`).
use crate::common::describe;
use anyhow::{bail, Result};
use dsno::checkpoint::ModelKind;
use dsno::data::fetch::{locate_weights, INCEPTION};
use dsno::data::idx::Split;
use dsno::data::{images::read_images, spread};
use dsno::eval::sampling::{class_cycle, draw, DrawOptions, Sampler};
use dsno::eval::score::inception_stats;
use dsno::metrics::fid::FidStats;
use dsno::model::{load_inception, OneStep, Teacher};
use dsno::nn::inception::Inception;
use dsno::sampling::Noise;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{Device, Tensor};

/// Options shared by both commands: the network and its batch size.
#[derive(clap::Args, Debug)]
pub struct NetArgs {
    /// The Inception weights (default: where `dsno data fetch inception` put them).
    #[arg(long)]
    inception_weights: Option<PathBuf>,
    /// Images per Inception forward pass.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub inception_batch: u64,
}

impl NetArgs {
    pub fn load(&self, device: Device) -> Result<Inception> {
        let path = locate_weights(&INCEPTION, self.inception_weights.as_deref())?;
        Ok(load_inception(&path, device)?)
    }
}

#[derive(clap::Args, Debug)]
pub struct RefArgs {
    /// The real images: a folder of MNIST-style IDX files, an IDX images file, a folder of
    /// PNGs, or a safetensors file of images in [−1, 1].
    #[arg(long)]
    data: PathBuf,
    /// Which images of an IDX folder.
    #[arg(long, value_enum, default_value = "train")]
    split: SplitArg,
    /// Use this many images, spread evenly over the set (default: all).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    count: Option<u64>,
    /// The statistics file to write (`.npz`, arrays `mu` and `sigma`, float64).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SplitArg {
    Train,
    Test,
}

pub fn run_ref(a: RefArgs, device: Device) -> Result<ExitCode> {
    let split = match a.split {
        SplitArg::Train => Split::Train,
        SplitArg::Test => Split::Test,
    };
    let weights = a.net.inception_weights.as_deref();
    crate::common::check_io(
        &[("--data", Some(&a.data)), ("--inception-weights", weights)],
        &[("--out", Some(&a.out))],
        &[],
    )?;
    let mut images = read_images(&a.data, split)?;
    dsno::eval::score::check_image_range(&images).map_err(|e| e.in_file(&a.data))?;
    if let Some(n) = a.count {
        let have = images.size()[0] as u64;
        if n > have {
            bail!(
                "--count {n}: {} holds {have} images; ask for at most that many (or leave --count out for all)",
                a.data.display()
            );
        }
        images = spread(&images, n as usize);
    }
    let net = a.net.load(device)?;
    let n = images.size()[0];
    let stats = stats_of(&net, &images, a.net.inception_batch)?;
    stats.write(&a.out)?;
    println!(
        "{n} images of {} → {} (Inception pool features, 2048-D, on {})",
        a.data.display(),
        a.out.display(),
        describe(device)
    );
    Ok(ExitCode::SUCCESS)
}

fn stats_of(net: &Inception, images: &Tensor, batch: u64) -> Result<FidStats> {
    if images.size()[0] < 2 {
        bail!(
            "FID statistics need at least 2 images, got {}",
            images.size()[0]
        );
    }
    Ok(inception_stats(
        net,
        images,
        batch as usize,
        Some("inception"),
    )?)
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The samples: a folder of PNGs, a safetensors file from `dsno sample --safetensors`, an
    /// IDX images file or folder (its test images) — or, with --count, a model checkpoint to
    /// draw them from.
    samples: PathBuf,
    /// Reference statistics (`.npz` with `mu` and `sigma`: from `dsno fid-ref`, pytorch-fid,
    /// EDM, …).
    #[arg(long = "ref")]
    reference: PathBuf,
    /// Draw this many samples from the model `SAMPLES` (noise by (seed, i)).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    count: Option<u64>,
    #[command(flatten)]
    ode: crate::common::OdeArgs,
    /// Samples per generator pass.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    #[command(flatten)]
    net: NetArgs,
}

pub fn run(a: Args, device: Device) -> Result<ExitCode> {
    let reference = FidStats::read(&a.reference)?;
    let images = match a.count {
        Some(n) => draw_from(&a, n, device)?,
        None => {
            let images = read_images(&a.samples, Split::Test)?;
            dsno::eval::score::check_image_range(&images).map_err(|e| e.in_file(&a.samples))?;
            images
        }
    };
    let net = a.net.load(device)?;
    let stats = stats_of(&net, &images, a.net.inception_batch)?;
    let fid = stats.frechet_distance(&reference)?;
    println!(
        "FID {fid:.4}: {} samples of {} vs {} (TF-Inception 2015-12-05 pool features; grey \
         images repeated to 3 channels)",
        images.size()[0],
        a.samples.display(),
        a.reference.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `count` samples of the model at `a.samples` (a teacher needs --solver); a class-conditional
/// model draws sample i for class i mod K.
fn draw_from(a: &Args, count: u64, device: Device) -> Result<Tensor> {
    let path: &Path = &a.samples;
    let meta = dsno::model::peek(path)?;
    let o = DrawOptions {
        count: count as usize,
        batch: a.batch as usize,
        warm_up: false,
        keep_outputs: false,
        progress: Some("sample".into()),
        labels: meta
            .model
            .num_classes()
            .map(|k| class_cycle(count as usize, k)),
    };
    if meta.kind != ModelKind::Teacher {
        let m = OneStep::load(path, device)?;
        let shape = m.meta.model.sample_shape();
        let noise = Noise::at_t_max(a.ode.seed, shape, &m.meta.schedule, device);
        return Ok(draw(&Sampler::OneStep(&m), &noise, &o)?.samples);
    }
    let Some(solver) = a.ode.solver else {
        bail!(
            "{} is a teacher: give --solver (and --steps)",
            path.display()
        );
    };
    let teacher = Teacher::load(path, device)?;
    let schedule = teacher.schedule();
    let grid = a.ode.grid.make(solver, &schedule, a.ode.steps as usize);
    let shape = teacher.meta.model.sample_shape();
    let noise = Noise::at(a.ode.seed, shape, &schedule, grid[0], device);
    let sampler = Sampler::teacher(&teacher, Default::default(), solver, grid)?;
    Ok(draw(&sampler, &noise, &o)?.samples)
}

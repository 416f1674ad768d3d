//! `dsno eval`: every method from the same noise, scored; writes the report.
use crate::common::{data_dir, describe};
use anyhow::{bail, Context, Result};
use dsno::data::{idx, to_unit_range};
use dsno::eval::{evaluate, write_report, EvalInputs, EvalOptions, InceptionInputs, Targets};
use dsno::metrics::fid::FidStats;
use dsno::model::{self, OneStep, Teacher};
use dsno::nn::inception::Inception;
use dsno::solver::Grid;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use tch::Device;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder with the data set's IDX files (training images: the reference; test images: the
    /// floor row). Default: `$DSNO_DATA/<teacher's data set>`, then the user cache.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Teacher checkpoint.
    #[arg(long)]
    teacher: PathBuf,
    /// DSNO checkpoint.
    #[arg(long)]
    dsno: Option<PathBuf>,
    /// KD checkpoint.
    #[arg(long)]
    kd: Option<PathBuf>,
    /// Feature classifier (`dsno train-classifier`); default: the bundled one of the teacher's
    /// data set.
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Samples per method.
    #[arg(long, default_value_t = 10000)]
    count: usize,
    /// Samples per forward pass, the same for every method.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Noise seed (the trajectory store's default is 0: keep this different).
    #[arg(long, default_value_t = 1000)]
    seed: u64,
    /// Steps of the reference DPM-Solver++(2M) solve.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    reference_steps: u64,
    /// DDIM step counts, comma-separated ("" for none).
    #[arg(long, default_value = "1,2,4,10,20", value_parser = parse_steps)]
    ddim: Steps,
    /// DPM-Solver++(2M) step counts, comma-separated ("" for none).
    #[arg(long, default_value = "2,4,10,20", value_parser = parse_steps)]
    dpm: Steps,
    /// Step grid of the DDIM rows.
    #[arg(long, value_enum, default_value = "default")]
    ddim_grid: Grid,
    /// Step grid of the DPM-Solver++ rows (uniform: the best of the four at 2–20 steps on the
    /// MNIST teacher, docs/RESULTS.md §8).
    #[arg(long, value_enum, default_value = "uniform")]
    dpm_grid: Grid,
    /// Target: the largest acceptable DSNO@1 FD / teacher FD.
    #[arg(long, default_value_t = 1.3)]
    target_fd_ratio: f64,
    /// Target: the largest acceptable DSNO@1 / DPM-Solver++(2M)@10 wall time.
    #[arg(long, default_value_t = 0.5)]
    target_wall_ratio: f64,
    /// Add an Inception FID column (`dsno data fetch inception` first): against --inception-ref,
    /// else against the statistics of --count training images spread over the set.
    #[arg(long)]
    inception: bool,
    /// Reference statistics for the Inception FID column (`.npz`: `dsno fid-ref`, pytorch-fid).
    #[arg(long, requires = "inception")]
    inception_ref: Option<PathBuf>,
    #[command(flatten)]
    net: crate::fid::NetArgs,
    /// Classifier-free guidance scale w of the teacher's rows, for a class-conditional teacher
    /// (1: the conditional model; 0: the unconditional one).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    guidance: f64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

/// The Inception network and reference statistics of `--inception`, with a description.
fn inception(
    a: &Args,
    train: &tch::Tensor,
    device: Device,
) -> Result<Option<(Inception, FidStats, String)>> {
    if !a.inception {
        return Ok(None);
    }
    let net = a.net.load(device)?;
    let (stats, name) = match &a.inception_ref {
        Some(p) => (FidStats::read(p)?, format!("`{}`", p.display())),
        None => {
            let real = dsno::data::spread(train, a.count);
            let n = real.size()[0];
            let label = Some("inception reference");
            let batch = a.net.inception_batch as usize;
            let s = dsno::eval::inception_stats(&net, &real, batch, label)?;
            (
                s,
                format!("the statistics of {n} training images spread evenly over the set"),
            )
        }
    };
    Ok(Some((net, stats, name)))
}

fn one_step(path: &Option<PathBuf>, device: Device) -> Result<Option<(OneStep, String)>> {
    let load = |p: &PathBuf| Ok((OneStep::load(p, device)?, p.display().to_string()));
    path.as_ref().map(load).transpose()
}

fn classifier(
    a: &Args,
    dataset: &str,
    device: Device,
) -> Result<(model::LoadedClassifier, String)> {
    let c = match &a.classifier {
        Some(p) => (model::load_classifier(p, device)?, p.display().to_string()),
        None => {
            let bytes = model::bundled_classifier(dataset).with_context(|| {
                format!("no bundled classifier for `{dataset}`: give --classifier")
            })?;
            let name = format!("bundled {dataset} classifier");
            (
                model::load_classifier_bytes(bytes, Path::new(&name), device)?,
                name,
            )
        }
    };
    if c.0.info.dataset != dataset {
        bail!(
            "the classifier {} was trained on {}, the teacher on {dataset}: its features would not score these samples (give --classifier for {dataset})",
            c.1,
            c.0.info.dataset
        );
    }
    let (acc, set) = (100.0 * c.0.info.test_accuracy, c.0.info.dataset.clone());
    Ok((c.0, format!("{} ({set}, test accuracy {acc:.2} %)", c.1)))
}

/// The real images of `split` in [-1, 1], and their labels when `labels`.
fn real(dir: &Path, split: idx::Split, labels: bool) -> Result<(tch::Tensor, Option<tch::Tensor>)> {
    let images = to_unit_range(&idx::load_images(dir, split)?);
    let labels = labels.then(|| idx::load_labels(dir, split)).transpose()?;
    Ok((images, labels))
}

/// Refuses an output folder that would destroy an input, before anything is loaded.
fn check_io(a: &Args) -> Result<()> {
    crate::common::check_io(
        &[
            ("--teacher", Some(&a.teacher)),
            ("--dsno", a.dsno.as_deref()),
            ("--kd", a.kd.as_deref()),
            ("--classifier", a.classifier.as_deref()),
            ("--data", a.data.as_deref()),
            ("--inception-ref", a.inception_ref.as_deref()),
        ],
        &[("--out", Some(&a.out))],
        &["--out"],
    )
}

/// Evaluates into `--out`, held against other runs for the whole evaluation; a folder the
/// evaluation created is removed again when it fails.
pub fn run(a: Args, device: Device) -> Result<ExitCode> {
    check_io(&a)?;
    let existed = a.out.exists();
    let lock = dsno::util::fsio::FolderLock::acquire(&a.out)?;
    let result = evaluate_into(&a, device);
    drop(lock);
    if result.is_err() && !existed {
        let _ = std::fs::remove_dir(&a.out);
    }
    result
}

fn evaluate_into(a: &Args, device: Device) -> Result<ExitCode> {
    let teacher = Teacher::load(&a.teacher, device)?;
    let (dsno_m, kd_m) = (one_step(&a.dsno, device)?, one_step(&a.kd, device)?);
    let (cls, cls_name) = classifier(a, &teacher.meta.dataset, device)?;
    let dir = data_dir(a.data.as_deref(), &teacher.meta.dataset)?;
    let [train, test] = [idx::Split::Train, idx::Split::Test]
        .map(|split| real(&dir, split, teacher.num_classes().is_some()));
    let ((train_images, train_labels), (test_images, test_labels)) = (train?, test?);
    let inc = inception(a, &train_images, device)?;
    let inputs = EvalInputs {
        teacher: &teacher,
        teacher_name: a.teacher.display().to_string(),
        dsno: dsno_m.as_ref().map(|(m, n)| (m, n.clone())),
        kd: kd_m.as_ref().map(|(m, n)| (m, n.clone())),
        classifier: &cls.net,
        classifier_name: cls_name,
        train_images,
        test_images,
        train_labels,
        test_labels,
        inception: inc.as_ref().map(|(net, reference, name)| InceptionInputs {
            net,
            reference,
            reference_name: name.clone(),
            batch: a.net.inception_batch as usize,
        }),
    };
    let n = (a.count, a.batch, describe(device));
    println!(
        "eval: {} samples per method, batch {}, on {}",
        n.0, n.1, n.2
    );
    let start = Instant::now();
    let (report, samples) = evaluate(&inputs, &options(a))?;
    write_report(&a.out, &report, &samples)?;
    print!("{}", report.table());
    report.targets().iter().for_each(|t| println!("{t}"));
    let secs = start.elapsed().as_secs_f64();
    println!("{secs:.1} s → {}", a.out.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}

fn options(a: &Args) -> EvalOptions {
    EvalOptions {
        count: a.count,
        batch: a.batch as usize,
        seed: a.seed,
        reference_steps: a.reference_steps as usize,
        ddim_steps: a.ddim.0.clone(),
        dpm_steps: a.dpm.0.clone(),
        ddim_grid: a.ddim_grid,
        dpm_grid: a.dpm_grid,
        targets: Some(Targets {
            fd_ratio: a.target_fd_ratio,
            wall_ratio: a.target_wall_ratio,
        }),
        guidance: a.guidance,
        ..Default::default()
    }
}

/// Step counts separated by commas; empty for none.
#[derive(Debug, Clone)]
struct Steps(Vec<usize>);

fn parse_steps(s: &str) -> Result<Steps, String> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| match x.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "`{x}`: expected positive step counts separated by commas"
            )),
        })
        .collect::<Result<_, _>>()
        .map(Steps)
}

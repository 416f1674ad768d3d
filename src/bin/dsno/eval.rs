//! `dsno eval`: every method from the same noise, scored; writes the report.
use crate::common::{data_dir, describe};
use anyhow::{bail, Context, Result};
use dsno::data::{idx, to_unit_range};
use dsno::eval::{
    evaluate, write_report, Baseline, EvalInputs, EvalOptions, InceptionInputs, Student, Targets,
};
use dsno::metrics::fid::FidStats;
use dsno::model::{self, OneStep, Teacher};
use dsno::nn::inception::Inception;
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
    /// A DSNO model (a student named DSNO; its row follows --kd's).
    #[arg(long)]
    dsno: Option<PathBuf>,
    /// A KD model (a student named KD).
    #[arg(long)]
    kd: Option<PathBuf>,
    /// A one-step model of any method, `[NAME=]FILE`, repeatable: one row each, after --kd and
    /// --dsno, named NAME (default: its method, e.g. DSNO, else the file's stem).
    #[arg(long, value_name = "[NAME=]FILE")]
    student: Vec<String>,
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
    /// The teacher's few-step rows, `SOLVER[:GRID]@STEPS[,STEPS…]`, repeatable, in order (e.g.
    /// `--baseline heun:logsnr@5,10`); `none` for none. Default: `ddim@1,2,4,10,20` and
    /// `dpmpp2m:uniform@2,4,10,20` (each solver's best grid on the MNIST teacher,
    /// docs/RESULTS.md §8).
    #[arg(long, value_name = "SOLVER[:GRID]@STEPS", value_parser = parse_baseline)]
    baseline: Vec<Baselines>,
    /// Target: the largest acceptable one-step FD / teacher FD.
    #[arg(long, default_value_t = 1.3)]
    target_fd_ratio: f64,
    /// Target: the largest acceptable one-step / DPM-Solver++(2M)@10 wall time.
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
    #[arg(long, default_value = "1", allow_negative_numbers = true)]
    guidance: dsno::denoiser::Guidance,
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

/// The one-step models of --kd, --dsno and --student, in that order: (model, name, file).
fn students(a: &Args, device: Device) -> Result<Vec<(OneStep, String, String)>> {
    let mut given: Vec<(Option<String>, PathBuf)> = vec![];
    given.extend(a.kd.iter().map(|p| (Some("KD".into()), p.clone())));
    given.extend(a.dsno.iter().map(|p| (Some("DSNO".into()), p.clone())));
    for s in &a.student {
        given.push(match s.split_once('=') {
            Some((n, f)) if !n.is_empty() && !n.contains('/') => (Some(n.into()), f.into()),
            _ => (None, s.into()),
        });
    }
    let mut out: Vec<(OneStep, String, String)> = vec![];
    for (name, p) in given {
        let m = OneStep::load(&p, device)?;
        let taken = |n: &str| out.iter().any(|(_, o, _)| o == n);
        let name = match name {
            Some(n) => n,
            None if !taken(&m.net.method().to_string()) => m.net.method().to_string(),
            None => p
                .file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into()),
        };
        if taken(&name) {
            bail!("two students are named {name}: name them with --student NAME=FILE");
        }
        out.push((m, name, p.display().to_string()));
    }
    Ok(out)
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

fn as_students(v: &[(OneStep, String, String)]) -> Vec<Student<'_>> {
    v.iter()
        .map(|(model, name, file)| Student {
            model,
            name: name.clone(),
            file: file.clone(),
        })
        .collect()
}

/// Refuses an output folder that would destroy an input, before anything is loaded.
fn check_io(a: &Args) -> Result<()> {
    crate::common::check_io(
        &[
            ("--teacher", Some(a.teacher.as_path())),
            ("--dsno", a.dsno.as_deref()),
            ("--kd", a.kd.as_deref()),
        ]
        .into_iter()
        .chain(a.student.iter().map(|s| {
            let f = s.split_once('=').map_or(s.as_str(), |(_, f)| f);
            ("--student", Some(Path::new(f)))
        }))
        .chain([
            ("--classifier", a.classifier.as_deref()),
            ("--data", a.data.as_deref()),
            ("--inception-ref", a.inception_ref.as_deref()),
        ])
        .collect::<Vec<_>>(),
        &[("--out", Some(a.out.as_path()))],
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
    let students = students(a, device)?;
    let (cls, cls_name) = classifier(a, &teacher.meta.dataset, device)?;
    let dir = data_dir(a.data.as_deref(), &teacher.meta.dataset)?;
    let [train, test] = [idx::Split::Train, idx::Split::Test]
        .map(|split| real(&dir, split, teacher.num_classes().is_some()));
    let ((train_images, train_labels), (test_images, test_labels)) = (train?, test?);
    let inc = inception(a, &train_images, device)?;
    let inputs = EvalInputs {
        teacher: &teacher,
        teacher_name: a.teacher.display().to_string(),
        students: as_students(&students),
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
        baselines: match a.baseline.is_empty() {
            true => Baseline::defaults(),
            false => a.baseline.iter().flat_map(|b| b.0.clone()).collect(),
        },
        targets: Some(Targets {
            fd_ratio: a.target_fd_ratio,
            wall_ratio: a.target_wall_ratio,
        }),
        guidance: a.guidance,
        ..Default::default()
    }
}

/// The rows of one `--baseline`.
#[derive(Debug, Clone)]
struct Baselines(Vec<Baseline>);

fn parse_baseline(s: &str) -> Result<Baselines, String> {
    match s.trim() {
        "none" | "" => Ok(Baselines(vec![])),
        s => Baseline::parse(s).map(Baselines).map_err(|e| e.to_string()),
    }
}

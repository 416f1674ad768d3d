//! Evaluation: every sampler draws from the same noise, and each set of samples is scored on a
//! feature classifier's penultimate features against real data (Fréchet distance, KID,
//! precision/recall) and, pixel by pixel, against the teacher's converged ODE solution from the
//! same x_T (MSE, PSNR). Wall time per image is measured at one batch size for all methods.
//! [`write_report`] writes `report.md`, `report.json`, plots and sample grids.
use crate::denoiser::Denoiser;
use crate::metrics;
use crate::model::{OneStep, Teacher};
use crate::nn::classifier::Classifier;
use crate::plot::{Plot, Series};
use crate::rng::noise;
use crate::solver::{Grid, Solver};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Samples per method.
    pub count: usize,
    /// Samples per forward pass (the same for every method).
    pub batch: usize,
    /// Noise stream: sample i's x_T depends on (seed, i) only.
    pub seed: u64,
    /// Steps of the reference solve (DPM-Solver++(2M)).
    pub reference_steps: usize,
    /// DDIM step counts.
    pub ddim_steps: Vec<usize>,
    /// DPM-Solver++(2M) step counts.
    pub dpm_steps: Vec<usize>,
    /// Step grids of the DDIM and DPM-Solver++ rows (the reference keeps the solver's
    /// default, chosen for accuracy at 50 steps). The baselines default to their best grid on
    /// the MNIST teacher (docs/RESULTS.md §8): DDIM its default (uniform in t), DPM-Solver++(2M)
    /// uniform in t (FD 117 at 4 steps and 44.8 at 10, against 225 and 65.2 on its default
    /// quadratic grid and 229 and 67.0 on the log-SNR grid).
    pub ddim_grid: Grid,
    pub dpm_grid: Grid,
    /// KID: number of subsets and their size.
    pub kid_subsets: usize,
    pub kid_subset_size: usize,
    /// k of the k-NN manifolds of precision/recall.
    pub knn: i64,
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
            ddim_steps: vec![1, 2, 4, 10, 20],
            dpm_steps: vec![2, 4, 10, 20],
            ddim_grid: Grid::Default,
            dpm_grid: Grid::Uniform,
            kid_subsets: 100,
            kid_subset_size: 1000,
            knn: 3,
            progress: true,
        }
    }
}

/// The models and data of an evaluation.
pub struct EvalInputs<'a> {
    pub teacher: &'a Teacher,
    pub teacher_name: String,
    /// `(model, name)` of the DSNO operator, if any.
    pub dsno: Option<(&'a OneStep, String)>,
    /// `(model, name)` of the KD student, if any.
    pub kd: Option<(&'a OneStep, String)>,
    pub classifier: &'a Classifier,
    pub classifier_name: String,
    /// Real training images `[N, 1, H, W]` in [-1, 1]: the reference distribution.
    pub train_images: Tensor,
    /// Real held-out images: the floor row (real vs real).
    pub test_images: Tensor,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Display name, e.g. `DDIM @ 10`.
    pub method: String,
    /// `reference`, `solver`, `one-step` or `floor`.
    pub kind: String,
    /// Network evaluations per sample (a DSNO pass counts 1).
    pub nfe: Option<usize>,
    /// Backbone passes per sample (DSNO runs its backbone over M time slots in one pass).
    pub backbone_passes: Option<usize>,
    pub fd: f64,
    pub kid: f64,
    pub kid_se: f64,
    pub precision: f64,
    pub recall: f64,
    /// Mean squared error against the reference samples from the same noise (pixels in [-1, 1]).
    pub mse: Option<f64>,
    /// PSNR against the reference samples, peak-to-peak range 2 (i.e. images in [0, 1]).
    pub psnr: Option<f64>,
    /// Wall time per image in milliseconds (sampling only, after one untimed warm-up batch).
    pub wall_ms: Option<f64>,
    /// Fraction of samples the classifier labels with probability > [`CONFIDENT`].
    #[serde(default)]
    pub confident: Option<f64>,
    /// Samples scored.
    pub samples: usize,
}

/// How the evaluation was run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    pub count: usize,
    pub batch: usize,
    pub seed: u64,
    pub reference: String,
    pub device: String,
    pub threads: i32,
    pub teacher: String,
    pub dsno: Option<String>,
    pub kd: Option<String>,
    pub classifier: String,
    pub real_reference_images: usize,
    pub floor_images: usize,
    pub kid: String,
    pub knn: i64,
    /// Step grids of the DDIM and DPM-Solver++ rows.
    #[serde(default)]
    pub grids: String,
}

/// The result of an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub setup: Setup,
    pub rows: Vec<Row>,
}

/// A method's samples (CPU) and its wall time.
struct Drawn {
    samples: Tensor,
    seconds: f64,
    nfe: usize,
    passes: usize,
}

fn bar(show: bool, total: usize, name: &str) -> indicatif::ProgressBar {
    crate::train::samples_bar(show, total as u64, &format!("{name:24}"))
}

/// One batch of a method: its samples, the network evaluations and the backbone passes per
/// sample.
type Sampled = Result<(Tensor, usize, usize)>;

/// Runs `f` on every batch of the noise (after one untimed warm-up batch) and collects the
/// samples on the CPU; the time covers sampling and the copy back.
fn draw(
    x_t: &Tensor,
    batch: usize,
    name: &str,
    show: bool,
    f: &dyn Fn(&Tensor) -> Sampled,
) -> Result<Drawn> {
    let n = x_t.size()[0];
    let b = batch.max(1) as i64;
    let _ = f(&x_t.narrow(0, 0, b.min(n)))?.0.to_device(Device::Cpu);
    let pb = bar(show, n as usize, name);
    let start = Instant::now();
    let mut outs = vec![];
    let (mut nfe, mut passes) = (0, 0);
    for i in (0..n).step_by(b as usize) {
        let (s, k, p) = f(&x_t.narrow(0, i, b.min(n - i)))?;
        outs.push(s.to_device(Device::Cpu).to_kind(Kind::Float));
        (nfe, passes) = (k, p);
        pb.inc(b.min(n - i) as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok(Drawn {
        samples: Tensor::cat(&outs, 0),
        seconds,
        nfe,
        passes,
    })
}

/// The class probability above which a sample counts as confidently labelled.
pub const CONFIDENT: f64 = 0.9;

/// Feature-space scores of `feats` against the real reference.
struct Scorer<'a> {
    real: Tensor,
    real_subset: Tensor,
    o: &'a EvalOptions,
}

impl Scorer<'_> {
    fn score(&self, feats: &Tensor) -> Result<(f64, f64, f64, f64, f64)> {
        let fd = metrics::frechet_distance_of(feats, &self.real)?;
        let (kid, se) = metrics::kid(
            feats,
            &self.real,
            self.o.kid_subsets,
            self.o.kid_subset_size,
            0,
        )?;
        let (p, r) = metrics::precision_recall(&self.real_subset, feats, self.o.knn)?;
        Ok((fd, kid, se, p, r))
    }
}

/// Runs the evaluation: draws every method's samples from the same noise, scores them, and
/// returns the report with each method's samples (for the grids).
pub fn evaluate(inp: &EvalInputs, o: &EvalOptions) -> Result<(Report, Vec<(String, Tensor)>)> {
    if o.count < 2 || o.count <= o.knn as usize {
        return Err(Error::invalid(format!(
            "--count must be at least {} (k-NN and covariances need several samples), got {}",
            (o.knn + 1).max(2),
            o.count
        )));
    }
    let teacher = inp.teacher;
    let device = teacher.device();
    let schedule = teacher.schedule();
    let shape = teacher.meta.model.sample_shape();
    if shape.len() != 3 || shape[0] != 1 || shape[1] != 28 || shape[2] != 28 {
        return Err(Error::invalid(format!(
            "{}: the feature classifier scores 28×28 grey images, this teacher makes {shape:?}",
            inp.teacher_name
        )));
    }
    let t_max = schedule.t_range().1;
    let x_t = noise(o.seed, 0..o.count as u64, &shape, Kind::Float, device) * schedule.sigma(t_max);
    let cls = inp.classifier;
    let feat = |x: &Tensor| -> Tensor {
        cls.features_batched(&x.clamp(-1.0, 1.0).to_device(cls.device()), 1000)
            .to_device(Device::Cpu)
            .to_kind(Kind::Double)
    };
    let confident = |x: &Tensor| -> f64 {
        cls.confident_fraction(&x.clamp(-1.0, 1.0).to_device(cls.device()), CONFIDENT, 1000)
    };
    let real = feat(&inp.train_images);
    let n_real_pr = (o.count as i64).min(inp.train_images.size()[0]);
    let scorer = Scorer {
        real_subset: real.narrow(0, 0, n_real_pr),
        real,
        o,
    };
    let solve = |solver: Solver, steps: usize, grid: Grid| {
        let grid = grid.make(solver, &schedule, steps);
        move |x: &Tensor| -> Sampled {
            let tr = solver.solve(teacher as &dyn Denoiser, &schedule, x, &grid, &[])?;
            Ok((tr.end, tr.nfe, tr.nfe))
        }
    };
    if Solver::DpmSolver2M.default_grid(&schedule, 2)[0] != t_max {
        return Err(Error::invalid(
            "solver grids must start at the schedule's t_max",
        ));
    }
    // (name, kind, drawn)
    let mut methods: Vec<(String, &str, Drawn)> = vec![];
    let reference_name = format!("teacher DPM-Solver++(2M) @ {}", o.reference_steps);
    let reference = draw(
        &x_t,
        o.batch,
        &reference_name,
        o.progress,
        &solve(Solver::DpmSolver2M, o.reference_steps, Grid::Default),
    )?;
    methods.push((reference_name.clone(), "reference", reference));
    for (solver, label, steps, grid) in [
        (Solver::Ddim, "DDIM", &o.ddim_steps, o.ddim_grid),
        (
            Solver::DpmSolver2M,
            "DPM-Solver++(2M)",
            &o.dpm_steps,
            o.dpm_grid,
        ),
    ] {
        for &s in steps {
            let name = format!("{label} @ {s}");
            let d = draw(&x_t, o.batch, &name, o.progress, &solve(solver, s, grid))?;
            methods.push((name, "solver", d));
        }
    }
    for (label, m) in [("KD @ 1", &inp.kd), ("DSNO @ 1", &inp.dsno)] {
        if let Some((model, name)) = m {
            if model.meta.model.sample_shape() != shape {
                return Err(Error::file(
                    name,
                    "this model's sample shape differs from the teacher's",
                ));
            }
            let passes = model.slots() as usize;
            let f =
                |x: &Tensor| -> Result<(Tensor, usize, usize)> { Ok((model.sample(x), 1, passes)) };
            let d = draw(&x_t, o.batch, label, o.progress, &f)?;
            methods.push((label.to_string(), "one-step", d));
        }
    }
    let ref_samples = methods[0].2.samples.shallow_clone();
    let mut rows = vec![];
    let pb = bar(o.progress, methods.len() + 1, "scoring");
    for (name, kind, d) in &methods {
        let (fd, kid, kid_se, precision, recall) = scorer.score(&feat(&d.samples))?;
        let mse = (&d.samples - &ref_samples)
            .square()
            .mean(Kind::Double)
            .double_value(&[]);
        rows.push(Row {
            method: name.clone(),
            kind: kind.to_string(),
            nfe: Some(d.nfe),
            backbone_passes: Some(d.passes),
            fd,
            kid,
            kid_se,
            precision,
            recall,
            mse: (*kind != "reference").then_some(mse),
            psnr: (*kind != "reference").then(|| 10.0 * (4.0 / mse).log10()),
            wall_ms: Some(1e3 * d.seconds / o.count as f64),
            confident: Some(confident(&d.samples)),
            samples: o.count,
        });
        pb.inc(1);
    }
    // evenly spaced over the whole test set: MNIST's test set is ordered (its first 5,000
    // images come from one NIST source, the last 5,000 from another), so its first n are not a
    // sample of it
    let n_test = inp.test_images.size()[0];
    let n_floor = (o.count as i64).min(n_test);
    let spaced: Vec<i64> = (0..n_floor).map(|i| i * n_test / n_floor).collect();
    let floor_images = inp.test_images.index_select(
        0,
        &Tensor::from_slice(&spaced).to_device(inp.test_images.device()),
    );
    let (fd, kid, kid_se, precision, recall) = scorer.score(&feat(&floor_images))?;
    pb.finish_and_clear();
    rows.push(Row {
        method: "real test images (floor)".into(),
        kind: "floor".into(),
        nfe: None,
        backbone_passes: None,
        fd,
        kid,
        kid_se,
        precision,
        recall,
        mse: None,
        psnr: None,
        wall_ms: None,
        confident: Some(confident(&floor_images)),
        samples: n_floor as usize,
    });
    let setup = Setup {
        count: o.count,
        batch: o.batch,
        seed: o.seed,
        reference: reference_name,
        device: crate::device::describe(device),
        threads: tch::get_num_threads(),
        teacher: inp.teacher_name.clone(),
        dsno: inp.dsno.as_ref().map(|d| d.1.clone()),
        kd: inp.kd.as_ref().map(|d| d.1.clone()),
        classifier: inp.classifier_name.clone(),
        real_reference_images: inp.train_images.size()[0] as usize,
        floor_images: n_floor as usize,
        kid: format!(
            "polynomial kernel (xᵀy/d + 1)³, {} subsets of {}",
            o.kid_subsets,
            o.kid_subset_size.min(o.count)
        ),
        knn: o.knn,
        grids: format!(
            "DDIM {}, DPM-Solver++(2M) {} (reference: default)",
            o.ddim_grid.name(),
            o.dpm_grid.name()
        ),
    };
    let samples = methods
        .into_iter()
        .map(|(n, _, d)| (n, d.samples))
        .collect();
    Ok((Report { setup, rows }, samples))
}

/// A file-name slug of a method name: `DPM-Solver++(2M) @ 10` → `dpm-solver-2m-10`.
pub fn slug(name: &str) -> String {
    let mut s = String::new();
    for ch in name.to_lowercase().chars() {
        if ch.is_ascii_alphanumeric() {
            s.push(ch);
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    s.trim_end_matches('-').to_string()
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

impl Report {
    fn row(&self, method: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.method == method)
    }

    /// The report as Markdown: set-up, table, targets, plots and grids (relative links).
    pub fn markdown(&self, plots: &[(&str, &str)], grids: &[(String, String)]) -> String {
        let s = &self.setup;
        let mut md = String::from("# dsno evaluation report\n\n");
        md += &format!(
            "- teacher: `{}`; DSNO: `{}`; KD: `{}`\n",
            s.teacher,
            s.dsno.as_deref().unwrap_or("–"),
            s.kd.as_deref().unwrap_or("–")
        );
        md += &format!(
            "- {} samples per method from the same noise (seed {}), batch {} for every method, device {}, {} libtorch threads\n",
            s.count, s.seed, s.batch, s.device, s.threads
        );
        md += &format!(
            "- features: `{}` (penultimate layer, 64-D); real reference: {} training images; floor: {} test images vs the training images\n",
            s.classifier, s.real_reference_images, s.floor_images
        );
        md += &format!(
            "- FD: Fréchet distance of the features; KID: {} (± its standard error); precision/recall: k-NN manifolds, k = {}, against {} training images\n",
            s.kid, s.knn, s.count.min(s.real_reference_images)
        );
        md += &format!(
            "- PSNR / MSE: pixel error against the reference ({}) from the same x_T, images in [-1, 1], PSNR peak-to-peak 2\n",
            s.reference
        );
        md += &format!("- solver step grids: {}\n", s.grids);
        md += "- wall time: sampling only, per image, after one untimed warm-up batch; NFE: network evaluations (a DSNO pass counts 1 and runs its backbone over M time slots: the passes column)\n";
        md += &format!("- confident: fraction of samples the classifier labels with probability > {CONFIDENT}\n\n");
        md += "| method | NFE | backbone passes | FD | KID | precision | recall | confident | PSNR vs teacher (dB) | MSE vs teacher | wall ms / image |\n";
        md += "|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            md += &format!(
                "| {} | {} | {} | {:.3} | {:.4} ± {:.4} | {:.3} | {:.3} | {} | {} | {} | {} |\n",
                r.method,
                r.nfe.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
                r.backbone_passes
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "–".into()),
                r.fd,
                r.kid,
                r.kid_se,
                r.precision,
                r.recall,
                fmt_opt(r.confident, 3),
                fmt_opt(r.psnr, 2),
                fmt_opt(r.mse, 5),
                fmt_opt(r.wall_ms, 3),
            );
        }
        md += "\n## Targets\n\n";
        for line in self.targets() {
            md += &format!("- {line}\n");
        }
        md += "\n## Plots\n\n";
        for (file, caption) in plots {
            md += &format!("![{caption}]({file})\n\n");
        }
        md += "## Samples (the first 64 of each method, same noise)\n\n";
        for (name, file) in grids {
            md += &format!("**{name}**\n\n![{name}]({file})\n\n");
        }
        md
    }

    /// The targets, each as a sentence with the measured ratio.
    pub fn targets(&self) -> Vec<String> {
        let mut out = vec![];
        let (Some(reference), Some(dsno)) = (self.row(&self.setup.reference), self.row("DSNO @ 1"))
        else {
            out.push("no DSNO model evaluated".into());
            return out;
        };
        let verdict = |ok: bool| if ok { "met" } else { "missed" };
        let r = dsno.fd / reference.fd;
        out.push(format!(
            "DSNO@1 FD / teacher FD = {:.3} / {:.3} = {r:.2} (target ≤ 1.3): {}",
            dsno.fd,
            reference.fd,
            verdict(r <= 1.3)
        ));
        for other in ["KD @ 1", "DDIM @ 10", "DPM-Solver++(2M) @ 4"] {
            if let Some(o) = self.row(other) {
                out.push(format!(
                    "DSNO@1 FD {:.3} vs {other} {:.3}: {}",
                    dsno.fd,
                    o.fd,
                    verdict(dsno.fd < o.fd)
                ));
            }
        }
        if let (Some(d), Some(w)) = (
            dsno.wall_ms,
            self.row("DPM-Solver++(2M) @ 10").and_then(|r| r.wall_ms),
        ) {
            out.push(format!(
                "DSNO wall time / DPM-Solver++(2M)@10 wall time = {d:.3} / {w:.3} ms = {:.2} (target ≤ 0.5): {}",
                d / w,
                verdict(d / w <= 0.5)
            ));
        }
        out
    }

    /// FD against NFE and against wall time, one line per solver and one point per one-step
    /// model, the floor dashed.
    pub fn plots(&self) -> (Plot, Plot) {
        let series = |x: &dyn Fn(&Row) -> Option<f64>| -> Vec<Series> {
            let mut out = vec![];
            let mut add = |label: &str, pred: &dyn Fn(&Row) -> bool, line: bool| {
                let points: Vec<(f64, f64)> = self
                    .rows
                    .iter()
                    .filter(|r| pred(r))
                    .filter_map(|r| Some((x(r)?, r.fd)))
                    .collect();
                if !points.is_empty() {
                    out.push(Series {
                        label: label.into(),
                        points,
                        line,
                    });
                }
            };
            add("DDIM", &|r| r.method.starts_with("DDIM"), true);
            add(
                "DPM-Solver++(2M)",
                &|r| r.kind == "solver" && r.method.starts_with("DPM"),
                true,
            );
            add("teacher (reference)", &|r| r.kind == "reference", false);
            add("KD @ 1", &|r| r.method == "KD @ 1", false);
            add("DSNO @ 1", &|r| r.method == "DSNO @ 1", false);
            out
        };
        let floor: Vec<(String, f64)> = self
            .rows
            .iter()
            .filter(|r| r.kind == "floor")
            .map(|r| ("real test set".to_string(), r.fd))
            .collect();
        let nfe = Plot {
            title: "FD vs NFE".into(),
            x_label: "network evaluations per sample".into(),
            y_label: "FD".into(),
            log_x: true,
            log_y: true,
            series: series(&|r| r.nfe.map(|n| n as f64)),
            hlines: floor.clone(),
        };
        let wall = Plot {
            title: "FD vs wall time".into(),
            x_label: "wall time per image (ms)".into(),
            y_label: "FD".into(),
            log_x: true,
            log_y: true,
            series: series(&|r| r.wall_ms),
            hlines: floor,
        };
        (nfe, wall)
    }
}

/// Writes `report.json`, `report.md`, `fd-vs-nfe.png`, `fd-vs-wall.png` and one sample grid per
/// method (`samples-<slug>.png`, the first 64 samples) into `dir`.
pub fn write_report(dir: &Path, report: &Report, samples: &[(String, Tensor)]) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create the report folder: {e}")))?;
    let (p_nfe, p_wall) = report.plots();
    p_nfe
        .render(960, 600)?
        .save_png(&dir.join("fd-vs-nfe.png"))?;
    p_wall
        .render(960, 600)?
        .save_png(&dir.join("fd-vs-wall.png"))?;
    let mut grids = vec![];
    for (name, s) in samples {
        let file = format!("samples-{}.png", slug(name));
        let n = s.size()[0].min(64);
        crate::image::grid(&s.narrow(0, 0, n), 8, 2)?.save_png(&dir.join(&file))?;
        grids.push((name.clone(), file));
    }
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::invalid(format!("report JSON: {e}")))?;
    crate::fsio::write_atomic(&dir.join("report.json"), json.as_bytes())?;
    let md = report.markdown(
        &[
            ("fd-vs-nfe.png", "FD vs NFE"),
            ("fd-vs-wall.png", "FD vs wall time"),
        ],
        &grids,
    );
    crate::fsio::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(())
}

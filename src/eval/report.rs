//! The evaluation report: rows as typed methods, the Markdown and JSON files, the plots and the
//! sample grids.
use super::score::CONFIDENT;
use crate::operator::Method;
use crate::solver::{Grid, Solver};
use crate::util::image;
use crate::util::plot::{Plot, Series};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

/// What a row measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RowMethod {
    /// The teacher's converged solve that the pixel errors are measured against.
    Reference { solver: Solver, steps: usize },
    /// The teacher with a few-step solver on a step grid.
    Solver {
        solver: Solver,
        grid: Grid,
        steps: usize,
    },
    /// A one-step generator of method `generator`, named `name` in the report.
    OneStep { generator: Method, name: String },
    /// Real held-out images against the reference images: the floor of every score.
    Floor,
}

impl RowMethod {
    /// The display name, e.g. `DDIM @ 10`, `DSNO @ 1`.
    pub fn label(&self) -> String {
        match self {
            RowMethod::Reference { solver, steps } => {
                format!("teacher {} @ {steps}", solver.label())
            }
            RowMethod::Solver { solver, steps, .. } => format!("{} @ {steps}", solver.label()),
            RowMethod::OneStep { name, .. } => format!("{name} @ 1"),
            RowMethod::Floor => "real test images (floor)".into(),
        }
    }
}

/// Acceptance targets every one-step model is checked against (none in the library: the
/// caller's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// The largest acceptable one-step FD / reference FD.
    pub fd_ratio: f64,
    /// The largest acceptable one-step wall time / DPM-Solver++(2M)@10 wall time.
    pub wall_ratio: f64,
}

/// A one-step model of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudentInfo {
    /// The name of its row.
    pub name: String,
    pub method: Method,
    /// Its file.
    pub file: String,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Display name, e.g. `DDIM @ 10` ([`RowMethod::label`]).
    #[serde(rename = "method")]
    pub label: String,
    /// What the row measures.
    #[serde(flatten)]
    pub what: RowMethod,
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
    /// Inception FID against the report's Inception reference statistics (`--inception`).
    #[serde(default)]
    pub inception_fid: Option<f64>,
    /// Class-conditional models: the fraction of samples the classifier labels as the class
    /// they were drawn for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_accuracy: Option<f64>,
    /// Class-conditional models: the FD per class, averaged over the classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_fd: Option<f64>,
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
    /// The one-step models, in the order of their rows.
    #[serde(default)]
    pub students: Vec<StudentInfo>,
    pub classifier: String,
    pub real_reference_images: usize,
    pub floor_images: usize,
    pub kid: String,
    pub knn: i64,
    /// Step grids of the solver rows.
    #[serde(default)]
    pub grids: String,
    /// The targets the report is checked against, if any.
    #[serde(default)]
    pub targets: Option<Targets>,
    /// How the Inception FID column was computed, when there is one.
    #[serde(default)]
    pub inception: Option<String>,
    /// How the class columns were computed, for a class-conditional teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditional: Option<String>,
}

/// The result of an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub setup: Setup,
    pub rows: Vec<Row>,
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
    /// The row of `what`, if evaluated.
    pub fn row(&self, what: &RowMethod) -> Option<&Row> {
        self.rows.iter().find(|r| r.what == *what)
    }

    /// The reference row.
    pub fn reference(&self) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| matches!(r.what, RowMethod::Reference { .. }))
    }

    /// The results table (Markdown); an Inception FID column follows FD when the rows have it.
    pub fn table(&self) -> String {
        let inception = self.rows.iter().any(|r| r.inception_fid.is_some());
        let classes = self.rows.iter().any(|r| r.class_accuracy.is_some());
        let (mut head, mut rule) = (String::new(), String::new());
        if inception {
            head += " Inception FID |";
            rule += "---|";
        }
        if classes {
            head += " class accuracy | per-class FD |";
            rule += "---|---|";
        }
        let mut md = String::new();
        md += &format!("| method | NFE | backbone passes | FD |{head} KID | precision | recall | confident | PSNR vs teacher (dB) | MSE vs teacher | wall ms / image |\n");
        md += &format!("|---|---|---|---|{rule}---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let mut fid = String::new();
            if inception {
                fid += &format!(" {} |", fmt_opt(r.inception_fid, 2));
            }
            if classes {
                fid += &format!(
                    " {} | {} |",
                    fmt_opt(r.class_accuracy.map(|a| 100.0 * a), 2),
                    fmt_opt(r.class_fd, 2)
                );
            }
            md += &format!(
                "| {} | {} | {} | {:.3} |{fid} {:.4} ± {:.4} | {:.3} | {:.3} | {} | {} | {} | {} |\n",
                r.label,
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
        md
    }

    /// The report as Markdown: set-up, table, targets, plots and grids (relative links).
    pub fn markdown(&self, plots: &[(&str, &str)], grids: &[(String, String)]) -> String {
        let s = &self.setup;
        let mut md = String::from("# dsno evaluation report\n\n");
        md += &format!("- teacher: `{}`", s.teacher);
        for st in &s.students {
            md += &format!("; {}: `{}`", st.name, st.file);
        }
        md += "\n";
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
        if let Some(i) = &s.inception {
            md += &format!("- Inception FID: {i}\n");
        }
        if let Some(c) = &s.conditional {
            md += &format!("- {c}; class accuracy in %\n");
        }
        md += "- wall time: sampling only, per image, after one untimed warm-up batch; NFE: network evaluations (a DSNO pass counts 1 and runs its backbone over M time slots: the passes column)\n";
        md += &format!("- confident: fraction of samples the classifier labels with probability > {CONFIDENT}\n\n");
        md += &self.table();
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

    /// The comparisons of every one-step model with the reference, the other one-step models and
    /// each solver's rows, each a sentence with the measured numbers and, when the report has
    /// [`Targets`], whether they are met.
    pub fn targets(&self) -> Vec<String> {
        let students: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| matches!(r.what, RowMethod::OneStep { .. }))
            .collect();
        let Some(reference) = self.reference() else {
            return vec!["no reference row".into()];
        };
        if students.is_empty() {
            return vec!["no one-step model evaluated".into()];
        }
        let mut out = vec![];
        for s in &students {
            out.extend(self.student_targets(s, reference, &students));
        }
        out
    }

    /// The sentences of [`Report::targets`] for one one-step model `s`.
    fn student_targets(&self, s: &Row, reference: &Row, students: &[&Row]) -> Vec<String> {
        let verdict = |ok: bool| if ok { "met" } else { "missed" };
        let t = self.setup.targets;
        let against = |limit: Option<f64>, ok: bool| match limit {
            Some(l) => format!(" (target ≤ {l}): {}", verdict(ok)),
            None => String::new(),
        };
        let name = s.label.replace(" @ 1", "@1");
        let r = s.fd / reference.fd;
        let mut out = vec![format!(
            "{name} FD / teacher FD = {:.3} / {:.3} = {r:.2}{}",
            s.fd,
            reference.fd,
            against(t.map(|t| t.fd_ratio), t.is_some_and(|t| r <= t.fd_ratio))
        )];
        for o in students.iter().filter(|o| o.label != s.label) {
            out.push(format!(
                "{name} FD {:.3} vs {} {:.3}: {}",
                s.fd,
                o.label,
                o.fd,
                verdict(s.fd < o.fd)
            ));
        }
        for &solver in Solver::ALL {
            let rows: Vec<&Row> = self
                .rows
                .iter()
                .filter(|r| matches!(r.what, RowMethod::Solver { solver: x, .. } if x == solver))
                .collect();
            let Some(most) = rows.iter().filter_map(|r| r.nfe).max() else {
                continue;
            };
            let first = rows
                .iter()
                .filter(|r| r.fd <= s.fd)
                .min_by_key(|r| r.nfe.unwrap_or(usize::MAX));
            out.push(match first {
                Some(r) => format!(
                    "{name} FD {:.3}: {} needs {} to match it (FD {:.3})",
                    s.fd,
                    solver.label(),
                    r.label,
                    r.fd
                ),
                None => format!(
                    "{name} FD {:.3}: better than every {} row (up to {most} steps)",
                    s.fd,
                    solver.label()
                ),
            });
        }
        let dpm10 = self.rows.iter().find(|r| {
            matches!(
                r.what,
                RowMethod::Solver {
                    solver: Solver::DpmSolver2M,
                    steps: 10,
                    ..
                }
            )
        });
        if let (Some(d), Some(w)) = (s.wall_ms, dpm10.and_then(|r| r.wall_ms)) {
            let q = d / w;
            out.push(format!(
                "{name} wall time / DPM-Solver++(2M)@10 wall time = {d:.3} / {w:.3} ms = {q:.2}{}",
                against(
                    t.map(|t| t.wall_ratio),
                    t.is_some_and(|t| q <= t.wall_ratio)
                )
            ));
        }
        out
    }

    /// The (solver, grid) lines of the plots in the order of [`Solver::ALL`], and whether the
    /// solver has several grids (then the legend names them).
    fn solver_lines(&self) -> Vec<(Solver, Grid, bool)> {
        let mut lines = vec![];
        for &solver in Solver::ALL {
            let mut grids: Vec<Grid> = vec![];
            for r in &self.rows {
                if let RowMethod::Solver {
                    solver: s, grid, ..
                } = r.what
                {
                    if s == solver && !grids.contains(&grid) {
                        grids.push(grid);
                    }
                }
            }
            let several = grids.len() > 1;
            lines.extend(grids.into_iter().map(|g| (solver, g, several)));
        }
        lines
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
            for (solver, grid, several) in self.solver_lines() {
                let of = move |r: &Row| matches!(r.what, RowMethod::Solver { solver: s, grid: g, .. } if s == solver && g == grid);
                let label = match several {
                    true => format!("{} ({})", solver.label(), grid.name()),
                    false => solver.label().to_string(),
                };
                add(&label, &of, true);
            }
            let reference = |r: &Row| matches!(r.what, RowMethod::Reference { .. });
            add("teacher (reference)", &reference, false);
            for r in &self.rows {
                if let RowMethod::OneStep { .. } = r.what {
                    add(&r.label, &|x| x.what == r.what, false);
                }
            }
            out
        };
        let floor: Vec<(String, f64)> = self
            .rows
            .iter()
            .filter(|r| r.what == RowMethod::Floor)
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
///
/// All of them or none: a failure part-way (a full disk) leaves the folder as it was.
pub fn write_report(dir: &Path, report: &Report, samples: &[(String, Tensor)]) -> Result<()> {
    let mut out = crate::util::fsio::Outputs::new();
    out.folder(dir)?;
    let (p_nfe, p_wall) = report.plots();
    p_nfe
        .render(960, 600)?
        .save_png(&out.stage(&dir.join("fd-vs-nfe.png"))?)?;
    p_wall
        .render(960, 600)?
        .save_png(&out.stage(&dir.join("fd-vs-wall.png"))?)?;
    let mut grids = vec![];
    for (name, s) in samples {
        let file = format!("samples-{}.png", slug(name));
        let n = s.size()[0].min(64);
        image::grid(&s.narrow(0, 0, n), 8, 2)?.save_png(&out.stage(&dir.join(&file))?)?;
        grids.push((name.clone(), file));
    }
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::invalid(format!("report JSON: {e}")))?;
    crate::util::fsio::write_atomic(&out.stage(&dir.join("report.json"))?, json.as_bytes())?;
    let md = report.markdown(
        &[
            ("fd-vs-nfe.png", "FD vs NFE"),
            ("fd-vs-wall.png", "FD vs wall time"),
        ],
        &grids,
    );
    crate::util::fsio::write_atomic(&out.stage(&dir.join("report.md"))?, md.as_bytes())?;
    out.commit()
}

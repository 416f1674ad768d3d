//! Drawing samples for evaluation and for `dsno sample`: a [`Sampler`] is a teacher with an ODE
//! solver and its step grid, a class-conditional model with guidance, a one-step generator, or an
//! exact toy denoiser with a solver; [`draw`] runs it on every batch of the seeded noise (with
//! each sample's class label, for conditional models) and times it.
use crate::denoiser::{Denoiser, Guidance, Guided};
use crate::model::{OneStep, Teacher};
use crate::sampling::{self, Noise};
use crate::schedule::Schedule;
use crate::solver::Solver;
use crate::util::progress;
use crate::{Error, Result};
use std::time::Instant;
use tch::Tensor;

/// Something that turns x_T into samples.
pub enum Sampler<'a> {
    /// A denoiser (a teacher, an exact toy denoiser) solved with `solver` on `grid`.
    Ode {
        denoiser: &'a dyn Denoiser,
        schedule: Schedule,
        solver: Solver,
        grid: Vec<f64>,
    },
    /// A class-conditional denoiser solved with `solver` on `grid`, with classifier-free
    /// guidance of scale `guidance` towards each sample's label (1: the conditional model).
    Guided {
        model: &'a dyn Denoiser,
        guidance: Guidance,
        schedule: Schedule,
        solver: Solver,
        grid: Vec<f64>,
    },
    /// A DSNO operator or KD student: one forward pass (with labels if class-conditional).
    OneStep(&'a OneStep),
}

/// A batch of samples with their cost.
pub struct Batch {
    /// The samples `[B, …]`.
    pub samples: Tensor,
    /// Every output of a one-step model `[B, M, …]` (None for solvers).
    pub outputs: Option<Tensor>,
    /// Network evaluations per sample (a DSNO pass counts 1).
    pub nfe: usize,
    /// Backbone passes per sample (DSNO runs its backbone over M time slots in one pass).
    pub passes: usize,
}

impl<'a> Sampler<'a> {
    /// A teacher solved with `solver` on `grid`: a class-conditional one with classifier-free
    /// guidance of scale `guidance` towards each sample's label, an unconditional one plainly.
    pub fn teacher(
        teacher: &'a Teacher,
        guidance: Guidance,
        solver: Solver,
        grid: Vec<f64>,
    ) -> Result<Self> {
        let schedule = teacher.schedule();
        Ok(match teacher.num_classes() {
            Some(_) => Sampler::Guided {
                model: teacher,
                guidance,
                schedule,
                solver,
                grid,
            },
            None => Sampler::Ode {
                denoiser: teacher,
                schedule,
                solver,
                grid,
            },
        })
    }

    /// The samples of `x_t` with class `labels` `[B]` (conditional models only).
    pub fn run(&self, x_t: &Tensor, labels: Option<&Tensor>) -> Result<Batch> {
        let solve = |denoiser: &dyn Denoiser, schedule, solver: &Solver, grid| -> Result<Batch> {
            let tr = solver.solve(denoiser, schedule, x_t, grid, &[])?;
            Ok(Batch {
                samples: tr.end,
                outputs: None,
                nfe: tr.nfe,
                passes: tr.nfe,
            })
        };
        Ok(match self {
            Sampler::Ode { .. } if labels.is_some() => {
                return Err(Error::invalid(
                    "this model is not class-conditional: it takes no labels",
                ))
            }
            Sampler::Ode {
                denoiser,
                schedule,
                solver,
                grid,
            } => solve(*denoiser, schedule, solver, grid)?,
            Sampler::Guided {
                model,
                guidance,
                schedule,
                solver,
                grid,
            } => {
                let y = labels.ok_or_else(|| {
                    Error::invalid("a class-conditional model samples with labels")
                })?;
                let g = Guided::new(*model, y.to_device(x_t.device()), *guidance);
                solve(&g, schedule, solver, grid)?
            }
            Sampler::OneStep(model) => {
                let outputs = model.trajectory(x_t, labels)?;
                Batch {
                    samples: outputs.select(1, model.slots() - 1),
                    outputs: Some(outputs),
                    nfe: 1,
                    passes: model.slots() as usize,
                }
            }
        })
    }
}

/// The labels `[count]` of a class-conditional draw with every class in turn: sample i is
/// drawn for class i mod `classes` (so each class has ⌊N/K⌋ or ⌈N/K⌉ samples).
pub fn class_cycle(count: usize, classes: i64) -> Tensor {
    Tensor::arange(count as i64, (tch::Kind::Int64, tch::Device::Cpu)).remainder(classes.max(1))
}

/// A method's samples (CPU) and its cost.
pub struct Drawn {
    /// The samples `[N, …]`.
    pub samples: Tensor,
    /// Every output of a one-step model `[N, M, …]`.
    pub outputs: Option<Tensor>,
    /// Seconds of sampling (and the copy to the CPU), after the warm-up batch.
    pub seconds: f64,
    pub nfe: usize,
    pub passes: usize,
}

/// How [`draw`] runs.
#[derive(Debug)]
pub struct DrawOptions {
    /// Items `0..count` of the noise stream.
    pub count: usize,
    /// Samples per batch.
    pub batch: usize,
    /// Run one untimed batch first (so that the time excludes one-off set-up costs).
    pub warm_up: bool,
    /// Keep every output of one-step models, not only the samples.
    pub keep_outputs: bool,
    /// A progress bar with this label, if any.
    pub progress: Option<String>,
    /// The class label of each sample `[count]` (int64), for class-conditional models.
    pub labels: Option<Tensor>,
}

/// Draws `o.count` samples from the seeded `noise` with `sampler`.
pub fn draw(sampler: &Sampler, noise: &Noise, o: &DrawOptions) -> Result<Drawn> {
    let slots = match sampler {
        Sampler::OneStep(m) if o.keep_outputs => m.slots() as f64,
        _ => 0.0,
    };
    let sample: f64 = noise.shape.iter().product::<i64>() as f64;
    let bytes = o.count as f64 * sample * (1.0 + slots) * noise.kind.elt_size_in_bytes() as f64;
    crate::util::memory::check_memory(&format!("{} samples", o.count), bytes)?;
    if let Some(x) = &noise.given {
        if o.count as i64 > x.size()[0] {
            return Err(Error::invalid(format!(
                "{} samples asked of the {} given noise samples",
                o.count,
                x.size()[0]
            )));
        }
    }
    if let Some(y) = &o.labels {
        if y.size() != [o.count as i64] {
            return Err(Error::invalid(format!(
                "{} labels for {} samples",
                y.size().first().copied().unwrap_or(0),
                o.count
            )));
        }
    }
    let labels_of = |items: std::ops::Range<u64>| {
        o.labels
            .as_ref()
            .map(|y| y.narrow(0, items.start as i64, (items.end - items.start) as i64))
    };
    if o.warm_up {
        let n = o.batch.max(1).min(o.count) as u64;
        let _ = sampler
            .run(&noise.of(0..n), labels_of(0..n).as_ref())?
            .samples
            .to_device(tch::Device::Cpu);
    }
    let bar = progress::samples(
        o.progress.is_some(),
        o.count as u64,
        &format!("{:24}", o.progress.as_deref().unwrap_or("")),
    );
    let start = Instant::now();
    let (mut nfe, mut passes) = (0, 0);
    let out = sampling::batched(
        noise,
        0..o.count as u64,
        o.batch,
        |n| bar.inc(n),
        |x, items| {
            let b = sampler.run(x, labels_of(items).as_ref())?;
            (nfe, passes) = (b.nfe, b.passes);
            let mut v = vec![b.samples];
            if o.keep_outputs {
                v.extend(b.outputs);
            }
            Ok(v)
        },
    )?;
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut out = out.into_iter();
    Ok(Drawn {
        samples: out.next().expect("samples"),
        outputs: out.next(),
        seconds,
        nfe,
        passes,
    })
}

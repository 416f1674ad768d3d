//! Drawing samples for evaluation and for `dsno sample`: a [`Sampler`] is a teacher with an ODE
//! solver and its step grid, a one-step generator, or an exact toy denoiser with a solver;
//! [`draw`] runs it on every batch of the seeded noise and times it.
use crate::denoiser::Denoiser;
use crate::model::OneStep;
use crate::sampling::{self, Noise};
use crate::schedule::Schedule;
use crate::solver::Solver;
use crate::util::progress;
use crate::Result;
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
    /// A DSNO operator or KD student: one forward pass.
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

impl Sampler<'_> {
    /// The samples of `x_t`.
    pub fn run(&self, x_t: &Tensor) -> Result<Batch> {
        Ok(match self {
            Sampler::Ode {
                denoiser,
                schedule,
                solver,
                grid,
            } => {
                let tr = solver.solve(*denoiser, schedule, x_t, grid, &[])?;
                Batch {
                    samples: tr.end,
                    outputs: None,
                    nfe: tr.nfe,
                    passes: tr.nfe,
                }
            }
            Sampler::OneStep(model) => {
                let outputs = model.trajectory(x_t);
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
#[derive(Debug, Clone)]
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
    if o.warm_up {
        let n = o.batch.max(1).min(o.count) as u64;
        let _ = sampler
            .run(&noise.of(0..n))?
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
        |x| {
            let b = sampler.run(x)?;
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

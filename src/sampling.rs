//! The one batched "seeded noise → generator → samples" routine, shared by sampling, trajectory
//! generation and evaluation. Item i's noise depends on (seed, i) only ([`crate::rng::noise`]),
//! so the result does not depend on the batch size or on which items a call covers.
use crate::rng::noise;
use crate::schedule::Schedule;
use crate::{Error, Result};
use std::ops::Range;
use tch::{Device, Kind, Tensor};

/// The initial noise x_T: standard normal per item, scaled by the schedule's σ at the start time.
#[derive(Debug, Clone)]
pub struct Noise {
    pub seed: u64,
    /// Shape of one sample, e.g. `[1, 28, 28]`.
    pub shape: Vec<i64>,
    /// σ(t_max): the standard deviation of x_T.
    pub scale: f64,
    /// Float kind of the noise (float32 for networks, float64 for exact toy denoisers).
    pub kind: Kind,
    pub device: Device,
    /// Noise given as it is (`dsno sample --noise`): x_T of items `0..N` `[N, shape…]`, used
    /// instead of the seeded stream (and not scaled).
    pub given: Option<std::rc::Rc<Tensor>>,
}

impl Noise {
    /// Float32 noise of samples of `shape`, scaled to the schedule's σ at time `t` (where a
    /// solver's grid starts).
    pub fn at(seed: u64, shape: Vec<i64>, schedule: &Schedule, t: f64, device: Device) -> Self {
        Noise {
            seed,
            shape,
            scale: schedule.sigma(t),
            kind: Kind::Float,
            device,
            given: None,
        }
    }

    /// The noise `x_t` `[N, shape…]` as given: item i is `x_t[i]` (float32, on `device`).
    pub fn given(x_t: &Tensor, device: Device) -> Self {
        Noise {
            seed: 0,
            shape: x_t.size()[1..].to_vec(),
            scale: 1.0,
            kind: Kind::Float,
            device,
            given: Some(std::rc::Rc::new(x_t.to_kind(Kind::Float))),
        }
    }

    /// [`Noise::at`] the schedule's noise end t_max (where a one-step generator starts).
    pub fn at_t_max(seed: u64, shape: Vec<i64>, schedule: &Schedule, device: Device) -> Self {
        Self::at(seed, shape, schedule, schedule.t_range().1, device)
    }

    /// x_T of the items `range`, `[len, shape…]` (given noise: its rows `range`, which must
    /// exist).
    pub fn of(&self, range: Range<u64>) -> Tensor {
        if let Some(x) = &self.given {
            let (lo, n) = (range.start as i64, (range.end - range.start) as i64);
            return x.narrow(0, lo, n).to_device(self.device).to_kind(self.kind);
        }
        noise(self.seed, range, &self.shape, self.kind, self.device) * self.scale
    }
}

/// A generated batch must be finite: a model with broken weights or an unstable solve gives
/// NaN or Inf, which would become black images or poisoned training targets.
fn check_finite(t: &Tensor, items: Range<u64>) -> Result<()> {
    if !t.is_floating_point() {
        return Ok(());
    }
    let bad = t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
    if bad > 0 {
        return Err(Error::invalid(format!(
            "the model produced {bad} non-finite values (NaN or Inf) for samples {}..{}: nothing was written for them",
            items.start, items.end
        )));
    }
    Ok(())
}

/// Runs `f(x_T, items)` on the noise of the items `range`, `batch` items at a time, and returns each of
/// `f`'s outputs concatenated along the first dimension, on the CPU. A non-finite output is an
/// error. `on_batch(n)` is called
/// after each batch of n items (for progress bars).
pub fn batched(
    noise: &Noise,
    range: Range<u64>,
    batch: usize,
    mut on_batch: impl FnMut(u64),
    mut f: impl FnMut(&Tensor, Range<u64>) -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    let batch = batch.max(1) as u64;
    let mut parts: Vec<Vec<Tensor>> = vec![];
    let mut b0 = range.start;
    while b0 < range.end {
        let b1 = b0.saturating_add(batch).min(range.end);
        let outs = f(&noise.of(b0..b1), b0..b1)?;
        for o in &outs {
            check_finite(o, b0..b1)?;
        }
        if parts.is_empty() {
            parts = outs.iter().map(|_| vec![]).collect();
        }
        for (p, o) in parts.iter_mut().zip(outs) {
            p.push(o.to_device(Device::Cpu));
        }
        on_batch(b1 - b0);
        b0 = b1;
    }
    Ok(parts.iter().map(|p| Tensor::cat(p, 0)).collect())
}

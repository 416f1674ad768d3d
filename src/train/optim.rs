//! Adam with linear warm-up and step decay, gradient-norm clipping, and an EMA of the weights.
//!
//! Written out (instead of libtorch's optimiser) so that its state — moments and step — is saved
//! in checkpoints and a resumed run continues bit for bit. The moments and the EMA live in flat
//! buffers, so an update costs a handful of tensor operations over all parameters at once,
//! not a dozen per parameter tensor (which dominated the step time of small models).
use crate::comm::{Comm, BUCKET_ELEMS};
use crate::Result;
use tch::{Kind, Tensor};

/// Adam (Kingma & Ba 2015) over a fixed list of parameters, with an EMA of them.
#[derive(Debug)]
pub struct Adam {
    pub params: Vec<(String, Tensor)>,
    /// First and second moments, flat.
    pub m: Tensor,
    pub v: Tensor,
    /// EMA of the parameters, flat.
    pub ema: Tensor,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

fn flat(ts: impl Iterator<Item = Tensor>) -> Tensor {
    let v: Vec<Tensor> = ts.map(|t| t.reshape([-1])).collect();
    Tensor::cat(&v, 0)
}

impl Adam {
    pub fn new(params: Vec<(String, Tensor)>, beta1: f64, beta2: f64, eps: f64) -> Self {
        let _g = tch::no_grad_guard();
        let ema = flat(params.iter().map(|(_, p)| p.detach())).to_kind(Kind::Float);
        Adam {
            m: ema.zeros_like(),
            v: ema.zeros_like(),
            ema,
            params,
            beta1,
            beta2,
            eps,
        }
    }

    /// Splits a flat buffer into per-parameter views, in parameter order.
    pub fn split(&self, buf: &Tensor) -> Vec<Tensor> {
        let mut out = Vec::with_capacity(self.params.len());
        let mut off = 0i64;
        for (_, p) in &self.params {
            let n = p.numel() as i64;
            out.push(buf.narrow(0, off, n).view(p.size().as_slice()));
            off += n;
        }
        out
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    fn grads(&self) -> Tensor {
        flat(self.params.iter().map(|(_, p)| {
            let g = p.grad();
            if g.defined() {
                g
            } else {
                p.zeros_like()
            }
        }))
        .to_kind(Kind::Float)
    }

    /// Averages the gradients over the ranks of `comm` (in buckets), clips the global gradient
    /// norm to `max_norm` (0: no clipping), takes one Adam step with learning rate `lr` (`t` is
    /// the 1-based step, for bias correction) and updates the EMA with `decay`. Returns the
    /// gradient norm before clipping, a float64 scalar on the parameters' device: the step never
    /// waits for the device (the clipping factor is computed there).
    pub fn step(
        &mut self,
        lr: f64,
        t: u64,
        max_norm: f64,
        decay: f64,
        comm: &Comm,
    ) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let mut g = self.grads();
        comm.all_reduce_mean_flat(&g, BUCKET_ELEMS)?;
        let norm = g.norm().to_kind(Kind::Double);
        if max_norm > 0.0 {
            // g · max_norm / (‖g‖ + 1e-6) where ‖g‖ > max_norm, in float64 and then rounded to
            // float32, as a host-side scalar factor would be; ×1 (exact) elsewhere
            let factor = (norm.full_like(max_norm) / (&norm + 1e-6))
                .where_scalarother(&norm.gt(max_norm), 1.0)
                .to_kind(Kind::Float);
            g *= factor;
        }
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        let m = &self.m * b1 + &g * (1.0 - b1);
        let v = &self.v * b2 + g.square() * (1.0 - b2);
        let upd = (&m / c1) / ((&v / c2).sqrt() + self.eps) * lr;
        self.m.copy_(&m);
        self.v.copy_(&v);
        let new = flat(self.params.iter().map(|(_, p)| p.detach())).to_kind(Kind::Float) - upd;
        let parts = self.split(&new);
        for ((_, p), src) in self.params.iter_mut().zip(parts) {
            p.copy_(&src);
        }
        let ema = &self.ema * decay + new * (1.0 - decay);
        self.ema.copy_(&ema);
        Ok(norm)
    }

    /// Makes the parameters, moments and EMA rank `root`'s (after a resume, in case the ranks
    /// read different copies of the checkpoint).
    pub fn broadcast(&mut self, comm: &Comm, root: usize) -> Result<()> {
        if comm.world_size() == 1 {
            return Ok(());
        }
        let _g = tch::no_grad_guard();
        for (_, p) in &mut self.params {
            comm.broadcast_(p, root)?;
        }
        for buf in [&mut self.m, &mut self.v, &mut self.ema] {
            comm.broadcast_(buf, root)?;
        }
        Ok(())
    }
}

/// Learning rate at 0-based `step`: linear warm-up over `warmup` steps, then ×0.5 at each
/// milestone passed.
pub fn learning_rate(base: f64, warmup: u64, milestones: &[u64], step: u64) -> f64 {
    let w = if warmup == 0 {
        1.0
    } else {
        ((step + 1) as f64 / warmup as f64).min(1.0)
    };
    let halvings = milestones.iter().filter(|&&m| step >= m).count() as i32;
    base * w * 0.5f64.powi(halvings)
}

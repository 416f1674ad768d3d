//! Loading trained models from checkpoints: a [`Teacher`] is a [`Denoiser`]; an operator
//! (DSNO) or a KD student maps noise to samples in one pass.
use crate::checkpoint::{self, CheckpointMeta, ModelKind};
use crate::denoiser::Denoiser;
use crate::nn::Backbone;
use crate::schedule::Schedule;
use crate::{Error, Result};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// A diffusion model predicting x: `D(z_t, t) = f(z_t, t_in(t))`.
pub struct Teacher {
    pub vs: nn::VarStore,
    pub net: Box<dyn Backbone>,
    pub meta: CheckpointMeta,
}

impl Teacher {
    /// Loads a teacher checkpoint (the EMA weights) onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let ck = checkpoint::load(path)?;
        if ck.meta.kind != ModelKind::Teacher {
            return Err(Error::file(
                path,
                format!("this is a {:?} checkpoint, not a teacher", ck.meta.kind),
            ));
        }
        let mut vs = nn::VarStore::new(device);
        let net = ck.meta.model.build(&vs.root())?;
        ck.load_into(&vs, "", path)?;
        vs.freeze();
        Ok(Teacher {
            vs,
            net,
            meta: ck.meta,
        })
    }

    pub fn schedule(&self) -> Schedule {
        self.meta.schedule
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

impl Denoiser for Teacher {
    fn denoise(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let n = z.size()[0];
        let t_in = Tensor::full(
            [n],
            self.meta.schedule.t_input(t),
            (Kind::Float, z.device()),
        );
        let x = self.net.forward_t(&z.to_kind(Kind::Float), &t_in, false);
        Ok(x.to_kind(z.kind()))
    }
}

/// A one-step generator: a DSNO operator or a KD student.
pub struct OneStep {
    pub vs: nn::VarStore,
    pub meta: CheckpointMeta,
    net: OneStepNet,
}

enum OneStepNet {
    Dsno(crate::operator::Operator),
    Kd(Box<dyn Backbone>),
}

impl OneStep {
    /// Loads a DSNO or KD checkpoint onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        Self::from_checkpoint(checkpoint::load(path)?, path, device)
    }

    /// The model of a checkpoint already read (`path` names it in errors).
    pub fn from_checkpoint(
        ck: checkpoint::Checkpoint,
        path: &Path,
        device: Device,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let net = match ck.meta.kind {
            ModelKind::Dsno => {
                let times = ck.meta.times.clone().ok_or_else(|| Error::file(path, "DSNO checkpoint without output times"))?;
                let modes = ck.meta.modes.ok_or_else(|| Error::file(path, "DSNO checkpoint without TimeConv modes"))?;
                let cfg = crate::operator::OperatorConfig { backbone: ck.meta.model.clone(), times, modes };
                OneStepNet::Dsno(crate::operator::Operator::new(&vs.root(), &cfg, ck.meta.schedule)?)
            }
            ModelKind::Kd => OneStepNet::Kd(ck.meta.model.build(&vs.root())?),
            ModelKind::Teacher => {
                return Err(Error::file(
                    path,
                    "this is a teacher (a diffusion model), not a one-step generator: sample it with --solver ddim|euler|heun|dpmpp2m and --steps N",
                ))
            }
        };
        ck.load_into(&vs, "", path)?;
        vs.freeze();
        Ok(OneStep {
            vs,
            meta: ck.meta,
            net,
        })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Number of outputs per sample (M for DSNO, 1 for KD).
    pub fn slots(&self) -> i64 {
        match &self.net {
            OneStepNet::Dsno(op) => op.slots(),
            OneStepNet::Kd(_) => 1,
        }
    }

    /// All outputs `[B, M, …]` for noise `x_t` `[B, …]` (KD: M = 1), in one forward pass.
    pub fn trajectory(&self, x_t: &Tensor) -> Tensor {
        let _g = tch::no_grad_guard();
        let x = x_t.to_kind(Kind::Float);
        match &self.net {
            OneStepNet::Dsno(op) => op.forward(&x, false),
            OneStepNet::Kd(net) => {
                let t0 = *self
                    .meta
                    .times
                    .as_ref()
                    .and_then(|t| t.last())
                    .unwrap_or(&0.0);
                let t = Tensor::full(
                    [x.size()[0]],
                    self.meta.schedule.t_input(t0),
                    (Kind::Float, x.device()),
                );
                net.forward_t(&x, &t, false).unsqueeze(1)
            }
        }
    }

    /// The samples `[B, …]`: the last output.
    pub fn sample(&self, x_t: &Tensor) -> Tensor {
        self.trajectory(x_t).select(1, self.slots() - 1)
    }
}

/// Reads a checkpoint's metadata only (to dispatch on its kind).
pub fn peek(path: &Path) -> Result<CheckpointMeta> {
    Ok(checkpoint::load(path)?.meta)
}

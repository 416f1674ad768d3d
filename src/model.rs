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

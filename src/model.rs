//! Loading trained models from checkpoints: a [`Teacher`] is a [`Denoiser`]; a [`OneStep`]
//! (DSNO operator or KD student) maps noise to samples in one pass; [`load_classifier`] reads
//! the metrics' feature classifier.
use crate::checkpoint::{self, CheckpointMeta, ClassifierInfo, ModelKind};
use crate::denoiser::Denoiser;
use crate::nn::classifier::Classifier;
use crate::nn::inception::Inception;
use crate::nn::lpips::Lpips;
use crate::nn::Backbone;
use crate::operator::{Generator, Method, OperatorConfig};
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
        let net = ck
            .meta
            .model
            .build(&vs.root())
            .map_err(|e| e.in_file(path))?;
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

/// A trained one-step generator (DSNO or KD) with its metadata.
pub struct OneStep {
    pub vs: nn::VarStore,
    pub meta: CheckpointMeta,
    pub net: Generator,
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
        let method = match ck.meta.kind {
            ModelKind::Dsno => Method::Dsno,
            ModelKind::Kd => Method::Kd,
            ModelKind::Teacher => {
                return Err(Error::file(
                    path,
                    "this is a teacher (a diffusion model), not a one-step generator: it samples with an ODE solver",
                ))
            }
        };
        let times = match (&ck.meta.times, method) {
            (Some(t), _) => t.clone(),
            (None, Method::Kd) => vec![0.0],
            (None, Method::Dsno) => {
                return Err(Error::file(path, "DSNO checkpoint without output times"))
            }
        };
        let modes = match (ck.meta.modes, method) {
            (Some(m), _) => m,
            (None, Method::Kd) => 0,
            (None, Method::Dsno) => {
                return Err(Error::file(path, "DSNO checkpoint without TimeConv modes"))
            }
        };
        let cfg = OperatorConfig {
            backbone: ck.meta.model.clone(),
            times,
            modes,
        };
        let mut vs = nn::VarStore::new(device);
        let net = Generator::new(&vs.root(), method, &cfg, ck.meta.schedule)
            .map_err(|e| e.in_file(path))?;
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
        self.net.slots()
    }

    /// All outputs `[B, M, …]` for noise `x_t` `[B, …]` (KD: M = 1), in one forward pass.
    pub fn trajectory(&self, x_t: &Tensor) -> Tensor {
        let _g = tch::no_grad_guard();
        self.net.forward(&x_t.to_kind(Kind::Float), false)
    }

    /// The samples `[B, …]`: the last output.
    pub fn sample(&self, x_t: &Tensor) -> Tensor {
        self.trajectory(x_t).select(1, self.slots() - 1)
    }
}

/// Reads a checkpoint's metadata only: the safetensors header, not the tensors (to dispatch on
/// its kind).
pub fn peek(path: &Path) -> Result<CheckpointMeta> {
    checkpoint::read_meta(path)
}

/// A feature classifier loaded from a file written by `train::classifier::save`, with its
/// variables and description.
pub struct LoadedClassifier {
    pub vs: nn::VarStore,
    pub net: Classifier,
    pub info: ClassifierInfo,
}

/// Loads a feature classifier onto `device`.
pub fn load_classifier(path: &Path, device: Device) -> Result<LoadedClassifier> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::file(path, format!("cannot read classifier: {e}")))?;
    load_classifier_bytes(&bytes, path, device)
}

/// Loads a feature classifier held in memory; `path` names it in errors.
pub fn load_classifier_bytes(
    bytes: &[u8],
    path: &Path,
    device: Device,
) -> Result<LoadedClassifier> {
    let info = checkpoint::classifier_info(bytes, path)?;
    let tensors = checkpoint::read_tensors(bytes, path)?;
    let mut vs = nn::VarStore::new(device);
    let net = Classifier::new(&vs.root());
    checkpoint::copy_into(&tensors, &vs, "", path, |_| true)?;
    vs.freeze();
    Ok(LoadedClassifier { vs, net, info })
}

/// The bundled feature classifier of a data set (`mnist`, `fashion-mnist`), built into the
/// library; `models/<name>-classifier.safetensors` in the repository, made by
/// `dsno train-classifier`.
pub fn bundled_classifier(dataset: &str) -> Option<&'static [u8]> {
    match dataset {
        "mnist" => Some(include_bytes!("../models/mnist-classifier.safetensors")),
        "fashion-mnist" => Some(include_bytes!(
            "../models/fashion-mnist-classifier.safetensors"
        )),
        _ => None,
    }
}

/// The LPIPS network with its (frozen) VGG-16 weights.
pub struct LoadedLpips {
    pub vs: nn::VarStore,
    pub net: Lpips,
}

/// Loads LPIPS's VGG-16 trunk from a safetensors file with torchvision's names
/// (`features.{i}.weight`, `features.{i}.bias`; other tensors are ignored) onto `device`.
pub fn load_lpips(path: &Path, device: Device) -> Result<LoadedLpips> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::file(
            path,
            format!("cannot read the VGG-16 weights for LPIPS: {e}"),
        )
    })?;
    let tensors = checkpoint::read_tensors(&bytes, path)?;
    let mut vs = nn::VarStore::new(device);
    let net = Lpips::new(&vs.root());
    checkpoint::copy_into(&tensors, &vs, "", path, |_| true)?;
    vs.freeze();
    Ok(LoadedLpips { vs, net })
}

/// Loads the FID Inception network (`dsno data fetch inception`; see [`crate::nn::inception`])
/// from `path` onto `device`, after checking the file's size and SHA-256 against the pinned
/// ones, so a corrupt or different file is refused by name instead of giving other numbers.
pub fn load_inception(path: &Path, device: Device) -> Result<Inception> {
    crate::data::fetch::verify_weights(path, &crate::data::fetch::INCEPTION)?;
    let module = tch::CModule::load_on_device(path, device).map_err(|e| {
        Error::file(
            path,
            format!("cannot load the Inception TorchScript module: {e}"),
        )
    })?;
    Ok(Inception::new(module, device))
}

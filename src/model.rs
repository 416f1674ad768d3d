//! Loading trained models from checkpoints: a [`Teacher`] is a [`Denoiser`]; a [`OneStep`]
//! (DSNO operator or KD student) maps noise to samples in one pass; [`load_classifier`] reads
//! the metrics' feature classifier.
use crate::checkpoint::{self, CheckpointMeta, ClassifierInfo, ModelKind};
use crate::denoiser::{Denoiser, Prediction};
use crate::nn::classifier::Classifier;
use crate::nn::inception::Inception;
use crate::nn::lpips::Lpips;
use crate::nn::Backbone;
use crate::operator::{Architecture, Generator, OperatorConfig};
use crate::schedule::{OutputTimes, Schedule};
use crate::{Error, Result};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// A diffusion model: `D(z_t, t)` is its network `f(z_t, t_in(t))` read as x̂ through the
/// checkpoint's `prediction` (x as it is; ε and v through [`crate::denoiser::x_from_eps`] and
/// [`crate::denoiser::x_from_v`]).
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
                format!("this is a {} checkpoint, not a teacher", ck.meta.kind),
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

impl Teacher {
    /// Class labels the teacher takes: `Some(K)` for a class-conditional teacher.
    pub fn num_classes(&self) -> Option<i64> {
        self.net.num_classes()
    }
}

impl Denoiser for Teacher {
    /// `D(z, t, y)`; `None` is the null class (for an unconditional teacher, its only mode).
    fn denoise(&self, z: &Tensor, t: f64, labels: Option<&Tensor>) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let n = z.size()[0];
        let t_in = Tensor::full(
            [n],
            self.meta.schedule.t_input(t),
            (Kind::Float, z.device()),
        );
        let zf = z.to_kind(Kind::Float);
        let y = labels.map(|y| y.to_device(z.device()));
        let out = self.net.forward(&zf, &t_in, y.as_ref(), false)?;
        let (a, s) = self.meta.schedule.alpha_sigma(t);
        let x = match self.meta.prediction {
            Prediction::X => out,
            Prediction::Eps => crate::denoiser::x_from_eps(&zf, &out, a, s),
            Prediction::V => crate::denoiser::x_from_v(&zf, &out, a, s),
            Prediction::Both => crate::denoiser::x_from_both(&zf, &out, a, s),
        };
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
        let ModelKind::Student(method) = ck.meta.kind.clone() else {
            return Err(Error::file(
                path,
                "this is a teacher (a diffusion model), not a one-step generator: it samples with an ODE solver",
            ));
        };
        // an operator has TimeConv modes; a bare backbone runs at the last output time
        let architecture = ck.meta.architecture();
        let times = match &ck.meta.times {
            Some(t) => t.clone(),
            None if architecture == Architecture::Backbone => OutputTimes::new(vec![0.0])?,
            None => {
                return Err(Error::file(
                    path,
                    "an operator checkpoint without output times",
                ))
            }
        };
        let modes = ck.meta.modes.unwrap_or(0);
        let cfg = OperatorConfig {
            backbone: ck.meta.model.clone(),
            times,
            modes,
        };
        let mut vs = nn::VarStore::new(device);
        let net = Generator::new(&vs.root(), method, architecture, &cfg, ck.meta.schedule)
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

    /// Class labels the generator takes: `Some(K)` for a class-conditional one.
    pub fn num_classes(&self) -> Option<i64> {
        self.meta.model.num_classes()
    }

    /// All outputs `[B, M, …]` for noise `x_t` `[B, …]` (a bare backbone: M = 1) in one forward
    /// pass, for class `labels` `[B]` of a class-conditional generator (`None`: the null class);
    /// labels given to an unconditional generator are an error.
    pub fn trajectory(&self, x_t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        self.net.forward(&x_t.to_kind(Kind::Float), labels, false)
    }

    /// The samples `[B, …]`: the last output.
    pub fn sample(&self, x_t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.trajectory(x_t, labels)?.select(1, self.slots() - 1))
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
    let bytes = crate::util::fsio::read(path)?;
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
    let bytes = crate::util::fsio::read(path)?;
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

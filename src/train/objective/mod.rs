//! Distillation objectives: what a method trains its student on. A method is a name
//! ([`Method`]), the network its student runs ([`Architecture`]), what a batch needs
//! ([`Needs`]) and its loss ([`Objective`]); [`METHODS`] registers them, and `distill`,
//! checkpoints, `sample` and `eval` take every registered method alike.
//!
//! A new method is one file here with its `pub const SPEC: Spec` and its name in the
//! `register!` list below (docs/ARCHITECTURE.md, "Where new things go").

use crate::model::{LoadedLpips, Teacher};
pub use crate::operator::{Architecture, Method};
use crate::schedule::Schedule;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Declares each method's module and lists its [`Spec`] in [`METHODS`].
macro_rules! register {
    ($($method:ident),+ $(,)?) => {
        $(pub mod $method;)+

        /// Every distillation method this build trains, by name.
        pub static METHODS: &[Spec] = &[$($method::SPEC),+];
    };
}

register! {
    dsno,
    kd,
}

/// A registered method.
pub struct Spec {
    pub method: Method,
    /// One line for `--help` and the docs.
    pub summary: &'static str,
    /// The network its student runs.
    pub architecture: Architecture,
    /// What each training batch needs.
    pub needs: Needs,
    /// Builds the objective of a run.
    pub build: fn(&Context) -> Result<Box<dyn Objective>>,
}

/// What a method's batches need beyond the student.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The trajectory store's x_T and targets at its output times (every method today: the
    /// store is what `distill` reads).
    pub trajectories: bool,
    /// The teacher's denoiser at training time, on the run's device ([`Context::teacher`]).
    pub teacher: bool,
}

/// The registered method `method`, or an error naming the registered ones.
pub fn spec(method: &Method) -> Result<&'static Spec> {
    METHODS.iter().find(|s| s.method == *method).ok_or_else(|| {
        Error::invalid(format!(
            "unknown distillation method `{}` (known: {})",
            method.name(),
            names().join(", ")
        ))
    })
}

/// The names of the registered methods.
pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|s| s.method.name()).collect()
}

/// The loss between a prediction and its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Regression {
    /// Mean absolute error over pixels.
    L1,
    /// Mean squared error over pixels.
    #[default]
    L2,
    /// LPIPS with a VGG-16 trunk and no linear layers ([`crate::nn::lpips`]), the DSNO
    /// authors' CIFAR-10 loss; needs `lpips_weights`.
    Lpips,
}

/// What an objective is built from.
pub struct Context<'a> {
    /// The distance of outputs and targets.
    pub loss: Regression,
    /// VGG-16 weights for [`Regression::Lpips`].
    pub lpips_weights: Option<&'a Path>,
    pub schedule: &'a Schedule,
    /// The store's output times t_1 > … > t_M.
    pub times: &'a [f64],
    pub device: Device,
    /// The teacher on `device`, for a method that [`Needs::teacher`].
    pub teacher: Option<&'a Teacher>,
}

/// One batch of this rank's rows, on the device, float32.
pub struct Batch {
    /// Noise x_T `[B, …]`.
    pub x_t: Tensor,
    /// The teacher's x̂ at the store's output times `[B, M, …]`.
    pub targets: Tensor,
    /// Class labels `[B]` of a class-conditional store.
    pub labels: Option<Tensor>,
}

/// A distillation loss: per-output losses of the student's outputs, and their weights.
///
/// The training loss is `mean_b mean_m w_m · per_output[b, m]`; the validation loss the same
/// summed over the held-out rows.
pub trait Objective {
    /// Per-output losses `[B, M']` of the student's outputs `out` `[B, M', …]` on `batch`.
    fn per_output(&self, out: &Tensor, batch: &Batch) -> Result<Tensor>;
    /// The weights w_m of the outputs `[M']`, on the device.
    fn weights(&self) -> &Tensor;
    /// The log column of each output (`loss_t<time>`).
    fn columns(&self) -> Vec<String>;
}

/// The weighted loss of a batch.
pub fn total(obj: &dyn Objective, per_output: &Tensor) -> Tensor {
    (per_output * obj.weights().unsqueeze(0))
        .mean_dim(1, false, Kind::Float)
        .mean(Kind::Float)
}

/// The weighted loss summed over a batch (for the validation mean).
pub fn sum(obj: &dyn Objective, per_output: &Tensor) -> f64 {
    let w = obj.weights();
    (per_output * w.unsqueeze(0))
        .sum(Kind::Double)
        .double_value(&[])
        / w.size()[0] as f64
}

/// The distance between outputs and targets of the config's `loss`: L1, L2 or LPIPS.
pub struct Distance {
    loss: Regression,
    /// The LPIPS network (frozen) for `Regression::Lpips`.
    lpips: Option<LoadedLpips>,
}

impl Distance {
    /// The distance of the context's `loss` (loading LPIPS's network onto its device).
    pub fn new(c: &Context) -> Result<Self> {
        let lpips = match (c.loss, c.lpips_weights) {
            (Regression::Lpips, Some(p)) => Some(crate::model::load_lpips(p, c.device)?),
            _ => None,
        };
        Ok(Distance {
            loss: c.loss,
            lpips,
        })
    }

    /// Per-output mean distances `[B, M']` of `pred` and `target` `[B, M', …]`.
    pub fn per_output(&self, pred: &Tensor, target: &Tensor) -> Tensor {
        if let Some(l) = &self.lpips {
            let (b, m) = (pred.size()[0], pred.size()[1]);
            let d = l.net.distance(&pred.flatten(0, 1), &target.flatten(0, 1));
            return d.to_kind(Kind::Float).view([b, m]);
        }
        let d = pred - target;
        let e = match self.loss {
            Regression::L2 => d.square(),
            Regression::L1 | Regression::Lpips => d.abs(),
        };
        let dims: Vec<i64> = (2..e.dim() as i64).collect();
        e.mean_dim(dims.as_slice(), false, Kind::Float)
    }
}

/// `w_m` `[M]` as float32 on `device`.
pub fn weights_on(w: &[f64], device: Device) -> Tensor {
    Tensor::from_slice(&w.iter().map(|&x| x as f32).collect::<Vec<_>>()).to_device(device)
}

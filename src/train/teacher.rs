//! The teacher's objective: denoising with x-prediction under the noise schedule.
//!
//! For data x, `t ~ U[0, 1)`, `ε ~ N(0, I)`: `z_t = α_t x + σ_t ε`, `x̂ = f(z_t, t_in)`, loss
//! `w(λ_t)·‖x̂ − x‖²` (mean over pixels and batch). The weight is the "truncated SNR"
//! `max(SNR, 1)` of progressive distillation by default.
use super::{Run, RunOptions, StepLoss, Summary, TrainConfig};
use crate::checkpoint::{self, CheckpointMeta, ModelKind};
use crate::data::{idx, to_unit_range, toy2d, Batches};
use crate::denoiser::Prediction;
use crate::error::{check_field, check_range};
use crate::nn::ModelConfig;
use crate::schedule::Schedule;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Weighting of the denoising loss as a function of the log-SNR λ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossWeight {
    /// `max(SNR, 1)` (Salimans & Ho 2022).
    #[default]
    TruncatedSnr,
    /// `SNR + 1` (the v-prediction loss written in x).
    SnrPlusOne,
    /// `1`.
    Uniform,
    /// `min(SNR, 5)`: Min-SNR-γ with γ = 5 (Hang et al. 2023).
    MinSnr5,
    /// `clamp(SNR, 1, 5)`: uniform at low SNR, capped at high SNR.
    ClampedSnr,
}

impl LossWeight {
    pub fn weight(&self, lambda: f64) -> f64 {
        match self {
            LossWeight::TruncatedSnr => lambda.exp().max(1.0),
            LossWeight::SnrPlusOne => lambda.exp() + 1.0,
            LossWeight::Uniform => 1.0,
            LossWeight::MinSnr5 => lambda.exp().min(5.0),
            LossWeight::ClampedSnr => lambda.exp().clamp(1.0, 5.0),
        }
    }
}

/// How training times are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeSampling {
    /// `t ~ U[0, 1)`.
    #[default]
    Uniform,
    /// `t = u²`, `u ~ U[0, 1)`: denser near the data, where the quadratic sampling grids (and
    /// DSNO's `quad` output times) evaluate the teacher most.
    Quadratic,
}

/// Where the training data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataConfig {
    /// MNIST-layout IDX files of the data set `name` (`mnist`, `fashion-mnist`, …).
    Idx { name: String },
    /// A 2-D toy distribution ([`toy2d::NAMES`]), `points` samples drawn with `seed`.
    Toy2d {
        name: String,
        points: usize,
        seed: u64,
    },
}

impl DataConfig {
    /// The data set's name for checkpoints.
    pub fn name(&self) -> String {
        match self {
            DataConfig::Idx { name } => name.clone(),
            DataConfig::Toy2d { name, .. } => format!("toy2d:{name}"),
        }
    }

    /// Loads the training labels `[N]` (int64) of an IDX data set (a toy set has none).
    pub fn load_labels(&self, dir: Option<&Path>) -> Result<Tensor> {
        match (self, dir) {
            (DataConfig::Idx { .. }, Some(dir)) => idx::load_labels(dir, idx::Split::Train),
            _ => Err(Error::invalid(format!(
                "data set `{}` has no class labels to condition on",
                self.name()
            ))),
        }
    }

    /// Loads the training data as float `[N, …]` (images in [-1, 1]).
    pub fn load(&self, dir: Option<&Path>) -> Result<Tensor> {
        match self {
            DataConfig::Idx { name } => {
                let dir = dir.ok_or_else(|| {
                    Error::invalid(format!(
                        "data set `{name}`: no folder with its IDX files was given"
                    ))
                })?;
                Ok(to_unit_range(&idx::load_images(dir, idx::Split::Train)?))
            }
            DataConfig::Toy2d { name, points, seed } => toy2d::sample(name, *points, *seed),
        }
    }
}

/// A teacher training configuration (a TOML preset in `configs/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    pub model: ModelConfig,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub loss_weight: LossWeight,
    #[serde(default)]
    pub time_sampling: TimeSampling,
    pub data: DataConfig,
    #[serde(default)]
    pub train: TrainConfig,
    /// Class-conditional models: the fraction of training labels replaced by the null class,
    /// so that the one network is also the unconditional model of classifier-free guidance.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_dropout: f64,
    /// What the network predicts (x by default; `both` needs twice the output channels). The
    /// loss is on x̂ whatever the parameterisation.
    #[serde(default, skip_serializing_if = "is_x")]
    pub prediction: Prediction,
}

fn is_x(p: &Prediction) -> bool {
    *p == Prediction::X
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl TeacherConfig {
    /// Parses a TOML config and checks every field (docs/FORMATS.md §10); errors name the
    /// file and the field.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| Error::file(path, format!("bad teacher config: {e}")))?;
        cfg.validate().map_err(|e| e.in_file(path))?;
        Ok(cfg)
    }

    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.schedule.validate()?;
        self.train.validate("train")?;
        check_range("label_dropout", self.label_dropout, 0.0, 1.0)?;
        if let ModelConfig::Unet(u) = &self.model {
            let want = match self.prediction {
                Prediction::Both => 2 * u.in_channels,
                _ => u.in_channels,
            };
            check_field(
                "model.out_channels",
                u.out_channels,
                u.out_channels == want,
                &format!("{want} for {:?} prediction", self.prediction),
            )?;
        }
        check_field(
            "label_dropout",
            self.label_dropout,
            self.label_dropout == 0.0 || self.model.num_classes().is_some(),
            "0 for an unconditional model (model.num_classes unset)",
        )?;
        match &self.data {
            DataConfig::Idx { name } => check_field(
                "data.name",
                name,
                !name.trim().is_empty(),
                "a data set name",
            ),
            DataConfig::Toy2d { name, points, .. } => {
                check_field(
                    "data.name",
                    name,
                    toy2d::NAMES.contains(&name.as_str()),
                    &format!("one of {:?}", toy2d::NAMES),
                )?;
                check_range("data.points", *points, 1, 10_000_000)
            }
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        Self::from_toml(&crate::util::fsio::read_text(path)?, path)
    }
}

/// Per-sample `(α, σ, t_in, w)` of times `t`, as tensors shaped to broadcast against `like`.
fn coefficients(
    schedule: &Schedule,
    weight: LossWeight,
    t: &[f64],
    like: &Tensor,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let mut shape = vec![t.len() as i64];
    shape.extend(std::iter::repeat_n(1, like.dim() - 1));
    let dev = like.device();
    // computed on the host (the schedules are f64 functions there), sent in one asynchronous copy
    let fs: [&dyn Fn(f64) -> f64; 4] = [
        &|x| schedule.alpha(x),
        &|x| schedule.sigma(x),
        &|x| schedule.t_input(x),
        &|x| weight.weight(schedule.lambda(x)),
    ];
    let v: Vec<f32> = fs
        .iter()
        .flat_map(|f| t.iter().map(move |&x| f(x) as f32))
        .collect();
    let all = crate::device::upload_slice(&v, dev).view([4, t.len() as i64]);
    let a = all.get(0).reshape(shape.as_slice());
    let s = all.get(1).reshape(shape.as_slice());
    (a, s, all.get(2), all.get(3))
}

/// Trains a teacher on `data` (float `[N, …]`) into `out`; `resume` continues from
/// `out/ckpt.safetensors`. A fresh run (not `resume`) starts from the weights of the teacher
/// checkpoint `init` when given (same model config, or its unconditional version for a
/// class-conditional model, whose class embedding then starts at zero; fresh optimiser and
/// step count, the warm-up included): how a trained teacher is trained further when its
/// optimiser state is not at hand, e.g. from a bundled float16 export.
pub fn train(
    cfg: &TeacherConfig,
    data: Tensor,
    run: &RunOptions,
    init: Option<&Path>,
) -> Result<Summary> {
    train_labeled(cfg, data, None, run, init)
}

/// [`train`] with class labels `[N]` for a class-conditional model (required by one, refused by
/// an unconditional one); each step replaces a `label_dropout` fraction of them by the null class.
pub fn train_labeled(
    cfg: &TeacherConfig,
    data: Tensor,
    labels: Option<Tensor>,
    run: &RunOptions,
    init: Option<&Path>,
) -> Result<Summary> {
    let (device, resume) = (run.device, run.resume);
    let want = cfg.model.sample_shape();
    if data.size()[1..] != want[..] {
        return Err(Error::invalid(format!(
            "data samples have shape {:?}, the model expects {:?}",
            &data.size()[1..],
            want
        )));
    }
    let labels = match (cfg.model.num_classes(), labels) {
        (Some(k), Some(y)) => Some(crate::nn::check_labels(&y, data.size()[0], k, false)?),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::invalid(
                "a class-conditional model (model.num_classes) needs the training labels",
            ))
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "labels given for an unconditional model (model.num_classes unset)",
            ))
        }
    };
    let vs = nn::VarStore::new(device);
    tch::manual_seed(super::step_seed(cfg.train.seed, u64::MAX));
    let net = cfg.model.build(&vs.root())?;
    if let (Some(path), false) = (init, resume) {
        init_from(cfg, &vs, path)?;
    }
    let n = data.size()[0];
    let batches = match &labels {
        // batches of indices: the same permutation picks the images and their labels
        Some(_) => Batches::new(
            Tensor::arange(n, (Kind::Int64, device)),
            cfg.train.batch_size,
            cfg.train.seed,
        )?,
        None => Batches::new(data.to_device(device), cfg.train.batch_size, cfg.train.seed)?,
    };
    let (data, labels) = (
        labels.as_ref().map(|_| data.to_device(device)),
        labels.map(|y| y.to_device(device)),
    );
    let meta = CheckpointMeta {
        kind: ModelKind::Teacher,
        model: cfg.model.clone(),
        schedule: cfg.schedule,
        step: 0,
        dataset: cfg.data.name(),
        times: None,
        modes: None,
        train: Some(serde_json::to_value(cfg).map_err(|e| Error::invalid(e.to_string()))?),
        prediction: cfg.prediction,
        source: None,
    };
    let b = cfg.train.batch_size as i64;
    let null = cfg.model.num_classes().unwrap_or(0);
    // every rank draws the whole global batch from the step's seed and trains on its rows
    let part = run.comm.part(cfg.train.batch_size)?;
    let (lo, len) = (part.start as i64, part.len() as i64);
    Run::new(&vs, &cfg.train, run, meta, vec![]).run(resume, |step| {
        let (x, y) = match (&data, &labels) {
            (Some(d), Some(l)) => {
                let ix = batches.get(step);
                (d.index_select(0, &ix), Some(l.index_select(0, &ix)))
            }
            _ => (batches.get(step), None),
        };
        let mut t: Vec<f64> =
            Vec::<f64>::try_from(&Tensor::rand([b], (Kind::Double, Device::Cpu)))?;
        if cfg.time_sampling == TimeSampling::Quadratic {
            t.iter_mut().for_each(|u| *u *= *u);
        }
        let (a, s, t_in, w) = coefficients(&cfg.schedule, cfg.loss_weight, &t, &x);
        let eps = x.randn_like();
        let z = &x * &a + &eps * &s;
        let y = y.map(|y| {
            let drop = Tensor::rand([b], (Kind::Float, y.device())).lt(cfg.label_dropout);
            y.where_self(&drop.logical_not(), &Tensor::full_like(&y, null))
        });
        let mine = |t: &Tensor| t.narrow(0, lo, len);
        let (x, z, a, s, t_in, w) = (
            mine(&x),
            mine(&z),
            mine(&a),
            mine(&s),
            mine(&t_in),
            mine(&w),
        );
        let y = y.as_ref().map(mine);
        let out = net.forward(&z, &t_in, y.as_ref(), true)?;
        let x_hat = x_hat_of(cfg.prediction, out, &z, &a, &s);
        let dims: Vec<i64> = (1..x.dim() as i64).collect();
        let mse = (x_hat - &x)
            .square()
            .mean_dim(dims.as_slice(), false, Kind::Float);
        Ok(StepLoss {
            loss: (mse * w).mean(Kind::Float),
            extra: vec![],
        })
    })
}

/// The network output read as x̂ with per-sample `a`, `s` (shaped to broadcast), as
/// [`crate::denoiser`]'s adapters do with scalars.
fn x_hat_of(p: Prediction, out: Tensor, z: &Tensor, a: &Tensor, s: &Tensor) -> Tensor {
    match p {
        Prediction::X => out,
        Prediction::Eps => (z - out * s) / a,
        Prediction::V => (z * a - out * s) / (a.square() + s.square()),
        Prediction::Both => {
            let c = out.size()[1] / 2;
            let w = s.square() / (a.square() + s.square());
            let from_eps = (z - out.narrow(1, c, c) * s) / a;
            out.narrow(1, 0, c) * &w + from_eps * (1.0 - w)
        }
    }
}

/// Loads a teacher checkpoint's weights into `vs` for a fresh run of `cfg`: the same model (its
/// dropout aside), or the unconditional version of `cfg`'s class-conditional one (its class
/// embedding stays zero).
fn init_from(cfg: &TeacherConfig, vs: &nn::VarStore, path: &Path) -> Result<()> {
    let ck = checkpoint::load(path)?;
    if ck.meta.kind != ModelKind::Teacher {
        return Err(Error::file(
            path,
            format!(
                "initial weights must come from a teacher, this is a {} checkpoint",
                ck.meta.kind
            ),
        ));
    }
    // dropout is a training setting, not part of the weights
    let (mut theirs, mut mine) = (ck.meta.model.clone(), cfg.model.clone());
    theirs.set_dropout(0.0);
    mine.set_dropout(0.0);
    if theirs == mine {
        return ck.load_into(vs, "", path);
    }
    if theirs.num_classes().is_none() && mine.unconditional() == theirs {
        return ck.load_into_filtered(vs, "", path, |n| {
            cfg.model.role(n) != crate::nn::Role::ClassEmbedding
        });
    }
    Err(Error::file(
        path,
        "the initial weights' model differs from the config's [model]",
    ))
}

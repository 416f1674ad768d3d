//! Distillation of a teacher into a one-step generator, from a trajectory store.
//!
//! - DSNO (Zheng et al. 2023): the operator (teacher backbone + TimeConv, initialised from the
//!   teacher) regresses the teacher's x̂ at all M output times:
//!   `Σ_m w_m · L(pred_m, target_m) / M`, `w_m = clamp(exp(λ_m/2), 1, 1e4)`.
//! - KD (Luhman & Luhman 2021): the same backbone without TimeConv, one output at t = 0,
//!   regressing the final target only — same data, same budget, same initialisation, so the
//!   comparison isolates what the trajectory and the temporal layers buy.
use super::{Run, RunFiles, StepLoss, Summary, TrainConfig};
use crate::checkpoint::{self, CheckpointMeta, ModelKind};
use crate::data::trajectories::{load_store, Store};
use crate::data::Batches;
use crate::model::Teacher;
use crate::operator::{Operator, OperatorConfig};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// DSNO or the KD baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    Dsno,
    Kd,
}

/// The per-element regression loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Regression {
    L1,
    #[default]
    L2,
}

/// A distillation configuration (`configs/distill-*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    #[serde(default)]
    pub method: Method,
    #[serde(default)]
    pub loss: Regression,
    /// Fourier modes of the TimeConv layers (the authors: 2).
    #[serde(default = "default_modes")]
    pub modes: i64,
    /// Dropout of the student's backbone (the teacher's own if absent).
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Trajectories held out for the validation loss (taken from the end of the store).
    #[serde(default)]
    pub validation: usize,
    /// The output times the store must have (any if absent).
    #[serde(default)]
    pub times: Option<Vec<f64>>,
    #[serde(default)]
    pub train: TrainConfig,
}

fn default_modes() -> i64 {
    2
}

impl DistillConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        toml::from_str(&text)
            .map_err(|e| Error::file(path, format!("bad distillation config: {e}")))
    }
}

/// `w_m = clamp(exp(λ_m/2), 1, 1e4)`.
pub fn time_weights(lambdas: &[f64]) -> Vec<f64> {
    lambdas
        .iter()
        .map(|l| (l / 2.0).exp().clamp(1.0, 1e4))
        .collect()
}

/// Checks that `store` was made by `teacher` (file hash, sample shape) with the wanted times.
pub fn check_store(
    store: &Store,
    store_dir: &Path,
    teacher: &Teacher,
    teacher_path: &Path,
    times: Option<&[f64]>,
) -> Result<()> {
    let m = &store.manifest;
    let mpath = store_dir.join("manifest.json");
    let hash = checkpoint::file_hash(teacher_path)?;
    if m.teacher_hash != hash {
        return Err(Error::file(
            &mpath,
            format!(
                "the store was made by another teacher (hash {}, {} has {hash})",
                m.teacher_hash,
                teacher_path.display()
            ),
        ));
    }
    let shape = teacher.meta.model.sample_shape();
    if m.sample_shape != shape {
        return Err(Error::file(
            &mpath,
            format!(
                "the store holds samples of shape {:?}, the teacher {:?}",
                m.sample_shape, shape
            ),
        ));
    }
    if let Some(t) = times {
        if t.len() != m.times.len() || t.iter().zip(&m.times).any(|(a, b)| (a - b).abs() > 1e-9) {
            return Err(Error::file(
                &mpath,
                format!(
                    "the store has output times {:?}, the config asks for {t:?}",
                    m.times
                ),
            ));
        }
    }
    Ok(())
}

/// The student: an operator, or a bare backbone for KD.
enum Student {
    Dsno(Operator),
    Kd(Box<dyn crate::nn::Backbone>),
}

/// Distils `teacher` (loaded from `teacher_path`) on the store in `store_dir` into `out`.
pub fn distill(
    cfg: &DistillConfig,
    teacher_path: &Path,
    store_dir: &Path,
    out: &Path,
    resume: bool,
    device: Device,
    progress: bool,
) -> Result<Summary> {
    let teacher = Teacher::load(teacher_path, Device::Cpu)?;
    let store = load_store(store_dir)?;
    check_store(
        &store,
        store_dir,
        &teacher,
        teacher_path,
        cfg.times.as_deref(),
    )?;
    let m = &store.manifest;
    let k = m.count;
    if cfg.validation >= k {
        return Err(Error::invalid(format!(
            "validation {} leaves no training trajectories out of {k}",
            cfg.validation
        )));
    }
    let n_train = (k - cfg.validation) as i64;
    let schedule = teacher.schedule();
    let mut model = teacher.meta.model.clone();
    if let Some(p) = cfg.dropout {
        model.set_dropout(p);
    }
    let vs = nn::VarStore::new(device);
    tch::manual_seed(super::step_seed(cfg.train.seed, u64::MAX));
    let student = match cfg.method {
        Method::Dsno => {
            let oc = OperatorConfig {
                backbone: model.clone(),
                times: m.times.clone(),
                modes: cfg.modes,
            };
            Student::Dsno(Operator::new(&vs.root(), &oc, schedule)?)
        }
        Method::Kd => Student::Kd(model.build(&vs.root())?),
    };
    // initialise the backbone from the teacher; TimeConv layers stay as initialised
    let ck = checkpoint::load(teacher_path)?;
    ck.load_into_filtered(&vs, "", teacher_path, |n| !n.starts_with("timeconv."))?;

    let mt = m.times.len() as i64;
    let lambdas: Vec<f64> = m.times.iter().map(|&t| schedule.lambda(t)).collect();
    let w = Tensor::from_slice(
        &time_weights(&lambdas)
            .iter()
            .map(|&x| x as f32)
            .collect::<Vec<_>>(),
    )
    .to_device(device);
    let x_all = store.x_t.to_device(device);
    let y_all = store.targets.to_device(device);
    let (x_train, y_train) = (x_all.narrow(0, 0, n_train), y_all.narrow(0, 0, n_train));
    let (x_val, y_val) = (
        x_all.narrow(0, n_train, k as i64 - n_train),
        y_all.narrow(0, n_train, k as i64 - n_train),
    );
    let idx = Tensor::arange(n_train, (Kind::Int64, device));
    let batches = Batches::new(idx, cfg.train.batch_size, cfg.train.seed)?;
    let t0_in = schedule.t_input(*m.times.last().expect("times"));

    // per-time losses [B, M] → (weighted total, per-time means)
    let per_time = |pred: &Tensor, target: &Tensor| -> Tensor {
        let d = pred - target;
        let e = match cfg.loss {
            Regression::L2 => d.square(),
            Regression::L1 => d.abs(),
        };
        let dims: Vec<i64> = (2..e.dim() as i64).collect();
        e.mean_dim(dims.as_slice(), false, Kind::Float)
    };
    let forward = |x: &Tensor, train: bool| -> Tensor {
        match &student {
            Student::Dsno(op) => op.forward(x, train),
            Student::Kd(net) => {
                let t = Tensor::full([x.size()[0]], t0_in, (Kind::Float, x.device()));
                net.forward_t(x, &t, train).unsqueeze(1)
            }
        }
    };
    let targets_for = |y: &Tensor| -> Tensor {
        match cfg.method {
            Method::Dsno => y.shallow_clone(),
            Method::Kd => y.narrow(1, mt - 1, 1),
        }
    };
    let weights = match cfg.method {
        Method::Dsno => w.shallow_clone(),
        Method::Kd => Tensor::ones([1], (Kind::Float, device)),
    };
    let validate = || -> f64 {
        if cfg.validation == 0 {
            return f64::NAN;
        }
        let _g = tch::no_grad_guard();
        let mut total = 0.0;
        let vb = cfg.train.batch_size.max(1) as i64;
        let nv = x_val.size()[0];
        let mut i = 0;
        while i < nv {
            let n = vb.min(nv - i);
            let pred = forward(&x_val.narrow(0, i, n), false);
            let l = per_time(&pred, &targets_for(&y_val.narrow(0, i, n))) * weights.unsqueeze(0);
            total += l.sum(Kind::Double).double_value(&[]) / weights.size()[0] as f64;
            i += n;
        }
        total / nv as f64
    };

    let meta = CheckpointMeta {
        kind: match cfg.method {
            Method::Dsno => ModelKind::Dsno,
            Method::Kd => ModelKind::Kd,
        },
        model,
        schedule,
        step: 0,
        dataset: teacher.meta.dataset.clone(),
        times: Some(m.times.clone()),
        modes: (cfg.method == Method::Dsno).then_some(cfg.modes),
        train: Some(serde_json::json!({ "distill": cfg, "store": m })),
    };
    let mut extra_columns: Vec<String> = match cfg.method {
        Method::Dsno => m.times.iter().map(|t| format!("loss_t{t}")).collect(),
        Method::Kd => vec![format!("loss_t{}", m.times[m.times.len() - 1])],
    };
    extra_columns.push("val_loss".into());
    let run = Run {
        vs: &vs,
        train: &cfg.train,
        files: RunFiles {
            dir: out.to_path_buf(),
        },
        meta,
        extra_columns,
        samples_per_step: cfg.train.batch_size,
        progress,
    };
    let log_every = cfg.train.log_every.max(1);
    run.run(resume, |step| {
        let ix = batches.get(step);
        let (x, y) = (x_train.index_select(0, &ix), y_train.index_select(0, &ix));
        let pt = per_time(&forward(&x, true), &targets_for(&y)); // [B, M']
        let loss = (&pt * weights.unsqueeze(0))
            .mean_dim(1, false, Kind::Float)
            .mean(Kind::Float);
        let mut extra: Vec<f64> =
            Vec::<f64>::try_from(&pt.mean_dim(0, false, Kind::Float).to_kind(Kind::Double))?;
        extra.push(
            if (step + 1) % log_every == 0 || step + 1 == cfg.train.steps {
                validate()
            } else {
                f64::NAN
            },
        );
        Ok(StepLoss { loss, extra })
    })
}

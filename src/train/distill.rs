//! Distillation of a teacher into a one-step generator, from a trajectory store: the student
//! (the teacher's backbone, as the method's [`Architecture`], initialised from the teacher) is
//! trained on the method's [`objective`](super::objective): DSNO, KD or any other registered one.
use super::objective::{self, Batch, Objective, Spec};
use super::{Run, RunOptions, StepLoss, Summary, TrainConfig};
use crate::checkpoint::{self, CheckpointMeta, ModelKind};
use crate::data::store::{load_store, Manifest, StoreBatch, StoreOrder, StreamingStore};
use crate::device::{upload, upload_slice};
use crate::error::{check_field, check_range};
use crate::model::Teacher;
use crate::nn::Role;
pub use crate::operator::Method;
use crate::operator::{self, Architecture, Generator, OperatorConfig};
use crate::schedule::{OutputTimes, MAX_OUTPUT_TIMES};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

pub use super::objective::Regression;

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
    pub times: Option<OutputTimes>,
    /// Shards per shuffle buffer of the batch order (`data::store::StoreOrder`): each epoch
    /// visits the shards in a seeded order, a buffer of this many at a time, shuffling the
    /// samples within the buffer; 0: one buffer of the whole store (a global shuffle).
    #[serde(default)]
    pub shuffle_shards: usize,
    /// Read the store's shards on demand (host memory: the shards of two buffers, float16 shards
    /// kept float16) instead of loading it whole; the same batches either way.
    #[serde(default)]
    pub stream: bool,
    /// VGG-16 weights for `loss = "lpips"`: a safetensors file with torchvision's
    /// `features.{i}.weight` / `.bias` names (scripts/convert-vgg16.py writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lpips_weights: Option<std::path::PathBuf>,
    #[serde(default)]
    pub train: TrainConfig,
}

fn default_modes() -> i64 {
    2
}

impl DistillConfig {
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_toml(&crate::util::fsio::read_text(path)?, path)
    }

    /// Parses and checks a TOML config; errors name the file.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| Error::file(path, format!("bad distillation config: {e}")))?;
        cfg.validate().map_err(|e| e.in_file(path))?;
        Ok(cfg)
    }

    /// Checks every field against its documented range (docs/FORMATS.md §10).
    pub fn validate(&self) -> Result<()> {
        objective::spec(&self.method)
            .map_err(|e| Error::invalid(format!("field `method`: {e}")))?;
        check_range("modes", self.modes, 1, MAX_OUTPUT_TIMES as i64)?;
        if let Some(p) = self.dropout {
            check_field("dropout", p, (0.0..1.0).contains(&p), "in [0, 1)")?;
        }
        check_range("validation", self.validation, 0, 100_000_000)?;
        check_range("shuffle_shards", self.shuffle_shards, 0, 1_000_000)?;
        if self.stream && self.shuffle_shards == 0 {
            return Err(Error::invalid(
                "field `stream` = true needs `shuffle_shards` ≥ 1 (the shards held in memory at a time)",
            ));
        }
        if self.loss == Regression::Lpips && self.lpips_weights.is_none() {
            return Err(Error::invalid(
                "field `loss` = \"lpips\" needs `lpips_weights`: a VGG-16 safetensors file (scripts/convert-vgg16.py converts torchvision's)",
            ));
        }
        self.train.validate("train")
    }
}

pub use super::objective::dsno::time_weights;

/// Checks that the store `m` was made by `teacher` (file hash, sample shape) with the wanted times.
pub fn check_store(
    m: &Manifest,
    store_dir: &Path,
    teacher: &Teacher,
    teacher_path: &Path,
    times: Option<&[f64]>,
) -> Result<()> {
    let mpath = store_dir.join("manifest.json");
    // stores made before teacher identities were SHA-256 record a 16-digit FNV hash
    let hash = match m.teacher_hash.len() {
        16 => checkpoint::legacy_file_hash(teacher_path)?,
        _ => checkpoint::file_hash(teacher_path)?,
    };
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

/// Where the training batches come from: the whole store in memory on the device, or its shards
/// read on demand; both visit the samples in the same [`StoreOrder`].
enum Source {
    Memory {
        x: Tensor,
        y: Tensor,
        c: Option<Tensor>,
        order: StoreOrder,
    },
    Stream(Box<StreamingStore>),
}

/// The training source and the held-out trajectories (the store's last `validation`) on the
/// device: x_T `[V, …]`, targets `[V, M, …]` and, for a class-conditional store, labels `[V]`.
struct Split {
    source: Source,
    device: Device,
    val: Batch,
}

/// A batch read from disk on the device as float32, copied without waiting for the device.
fn on_device(b: StoreBatch, device: Device) -> Batch {
    Batch {
        x_t: upload(&b.x_t, device).to_kind(Kind::Float),
        targets: upload(&b.targets, device).to_kind(Kind::Float),
        labels: b.labels.map(|c| upload(&c, device)),
    }
}

impl Split {
    fn new(cfg: &DistillConfig, dir: &Path, m: &Manifest, device: Device) -> Result<Self> {
        let (k, validation) = (m.count, cfg.validation);
        if validation >= k {
            return Err(Error::invalid(format!(
                "validation {validation} leaves no training trajectories out of {k}"
            )));
        }
        let n = k - validation;
        let (batch, seed) = (cfg.train.batch_size, cfg.train.seed);
        if cfg.stream {
            let s = StreamingStore::open(dir, n, cfg.shuffle_shards, batch, seed)?;
            let val = on_device(s.range(n, k)?, device);
            return Ok(Split {
                source: Source::Stream(Box::new(s)),
                device,
                val,
            });
        }
        let store = load_store(dir)?;
        let x = store.x_t.to_device(device);
        let y = store.targets.to_device(device);
        let c = store.labels.as_ref().map(|c| c.to_device(device));
        let (n, v) = (n as i64, validation as i64);
        Ok(Split {
            val: Batch {
                x_t: x.narrow(0, n, v),
                targets: y.narrow(0, n, v),
                labels: c.as_ref().map(|c| c.narrow(0, n, v)),
            },
            source: Source::Memory {
                order: StoreOrder::new(n as usize, m.shard_size, cfg.shuffle_shards, batch, seed)?,
                x: x.narrow(0, 0, n),
                y: y.narrow(0, 0, n),
                c: c.map(|c| c.narrow(0, 0, n)),
            },
            device,
        })
    }

    /// This rank's rows `part` of the training batch of step `step` on the device (float32).
    fn batch(&self, step: u64, part: &Range<usize>) -> Result<Batch> {
        match &self.source {
            Source::Memory { x, y, c, order } => {
                let rows: Vec<i64> = order.batch(step).0[part.clone()]
                    .iter()
                    .map(|&i| i as i64)
                    .collect();
                let ix = upload_slice(&rows, self.device);
                Ok(Batch {
                    x_t: x.index_select(0, &ix),
                    targets: y.index_select(0, &ix),
                    labels: c.as_ref().map(|c| c.index_select(0, &ix)),
                })
            }
            Source::Stream(s) => {
                let b = s.batch(step)?;
                let (lo, n) = (part.start as i64, part.len() as i64);
                let b = StoreBatch {
                    x_t: b.x_t.narrow(0, lo, n),
                    targets: b.targets.narrow(0, lo, n),
                    labels: b.labels.map(|c| c.narrow(0, lo, n)),
                };
                Ok(on_device(b, self.device))
            }
        }
    }

    /// The mean weighted validation loss (NaN without validation data), in float32 whatever the
    /// run's precision, so that `train.patience` compares like with like across `--resume`s
    /// at other precisions.
    fn validate(&self, net: &Generator, obj: &dyn Objective, batch: usize) -> Result<f64> {
        let nv = self.val.x_t.size()[0];
        if nv == 0 {
            return Ok(f64::NAN);
        }
        let _g = tch::no_grad_guard();
        let _fp32 = crate::device::full_precision(self.device);
        let vb = batch.max(1) as i64;
        let mut total = 0.0;
        for i in (0..nv).step_by(vb as usize) {
            let n = vb.min(nv - i);
            let b = Batch {
                x_t: self.val.x_t.narrow(0, i, n),
                targets: self.val.targets.narrow(0, i, n),
                labels: self.val.labels.as_ref().map(|c| c.narrow(0, i, n)),
            };
            let pred = net.forward(&b.x_t, b.labels.as_ref(), false)?;
            total += objective::sum(obj, &obj.per_output(&pred, &b)?);
        }
        Ok(total / nv as f64)
    }
}

/// Checks that a class-conditional teacher comes with a labelled store of its classes, and an
/// unconditional one with an unlabelled store.
fn check_labels(m: &Manifest, store_dir: &Path, teacher: &Teacher) -> Result<()> {
    let mpath = store_dir.join("manifest.json");
    let stored = m.num_classes.map(|k| k as i64);
    match (teacher.num_classes(), stored) {
        (Some(k), None) => Err(Error::file(
            &mpath,
            format!(
                "the store holds no labels, the teacher is class-conditional ({k} classes): make the store with `dsno trajectories` from this teacher"
            ),
        )),
        (None, Some(k)) => Err(Error::file(
            &mpath,
            format!("the store holds labels of {k} classes, the teacher is not class-conditional"),
        )),
        (Some(k), Some(s)) if k != s => Err(Error::file(
            &mpath,
            format!("the store holds labels of {s} classes, the teacher has {k}"),
        )),
        _ => Ok(()),
    }
}

/// Starts the student from a one-step generator's weights (`--init`): a checkpoint of the same
/// method, output times and backbone, or of the backbone's unconditional version (its class
/// embedding then stays the teacher's).
fn init_from(vs: &nn::VarStore, path: &Path, spec: &Spec, oc: &OperatorConfig) -> Result<()> {
    let ck = checkpoint::load(path)?;
    let method = &spec.method;
    if ck.meta.kind != ModelKind::Student(method.clone()) {
        return Err(Error::file(
            path,
            format!(
                "initial weights for {method} must come from a {method} model, this is a {} checkpoint",
                ck.meta.kind
            ),
        ));
    }
    if spec.architecture == Architecture::Operator
        && (ck.meta.times.as_deref() != Some(&oc.times[..]) || ck.meta.modes != Some(oc.modes))
    {
        return Err(Error::file(
            path,
            format!(
                "the initial operator has output times {:?} and {:?} modes, the store and config {:?} and {}",
                ck.meta.times, ck.meta.modes, oc.times, oc.modes
            ),
        ));
    }
    let (mut a, mut b) = (ck.meta.model.clone(), oc.backbone.clone());
    a.set_dropout(0.0);
    b.set_dropout(0.0);
    if a == b {
        return ck.load_into(vs, "", path);
    }
    if a.num_classes().is_none() && b.num_classes().is_some() && a == b.unconditional() {
        return ck.load_into_filtered(vs, "", path, |n| b.role(n) != Role::ClassEmbedding);
    }
    Err(Error::file(
        path,
        "the initial model's backbone differs from the teacher's (or its unconditional version)",
    ))
}

/// Distils the teacher at `teacher_path` on the store in `store_dir` into `run.out`; the
/// student starts from the teacher's weights, or from the one-step generator `init` where it has
/// them.
pub fn distill(
    cfg: &DistillConfig,
    teacher_path: &Path,
    store_dir: &Path,
    init: Option<&Path>,
    run: &RunOptions,
) -> Result<Summary> {
    let device = run.device;
    let spec = objective::spec(&cfg.method)?;
    let teacher = Teacher::load(teacher_path, Device::Cpu)?;
    let manifest = Manifest::load(store_dir)?;
    let m = &manifest;
    check_store(m, store_dir, &teacher, teacher_path, cfg.times.as_deref())?;
    check_labels(m, store_dir, &teacher)?;
    let data = Split::new(cfg, store_dir, m, device)?;
    let schedule = teacher.schedule();
    let mut model = teacher.meta.model.clone();
    if let Some(p) = cfg.dropout {
        model.set_dropout(p);
    }
    let vs = nn::VarStore::new(device);
    tch::manual_seed(super::step_seed(cfg.train.seed, u64::MAX));
    let oc = OperatorConfig {
        backbone: model.clone(),
        times: m.times.clone(),
        modes: cfg.modes,
    };
    let student = Generator::new(
        &vs.root(),
        cfg.method.clone(),
        spec.architecture,
        &oc,
        schedule,
    )?;
    // initialise the backbone from the teacher; TimeConv layers stay as initialised
    let ck = checkpoint::load(teacher_path)?;
    ck.load_into_filtered(&vs, "", teacher_path, |n| {
        operator::role(&model, n) != Role::TimeConv
    })?;
    if let (Some(p), false) = (init, run.resume) {
        init_from(&vs, p, spec, &oc)?;
    }

    if cfg.loss == Regression::Lpips {
        let s = &m.sample_shape;
        if s.len() != 3 || s[1] < 16 || s[2] < 16 {
            return Err(Error::invalid(format!(
                "loss \"lpips\" compares images of at least 16×16 pixels; this store holds samples of shape {s:?}"
            )));
        }
    }
    let on_device = match spec.needs.teacher {
        true => Some(Teacher::load(teacher_path, device)?),
        false => None,
    };
    let obj = (spec.build)(&objective::Context {
        loss: cfg.loss,
        lpips_weights: cfg.lpips_weights.as_deref(),
        schedule: &schedule,
        times: &m.times,
        device,
        teacher: on_device.as_ref(),
    })?;
    let meta = CheckpointMeta {
        kind: ModelKind::Student(cfg.method.clone()),
        model,
        schedule,
        step: 0,
        dataset: teacher.meta.dataset.clone(),
        times: Some(m.times.clone()),
        modes: (spec.architecture == Architecture::Operator).then_some(cfg.modes),
        train: Some(serde_json::json!({ "distill": cfg, "store": m })),
        prediction: Default::default(),
        source: None,
    };
    let mut extra_columns = obj.columns();
    extra_columns.push("val_loss".into());
    let mut r = Run::new(&vs, &cfg.train, run, meta, extra_columns);
    r.monitor = Some("val_loss".into());
    let log_every = cfg.train.log_every.max(1);
    let part = run.comm.part(cfg.train.batch_size)?;
    r.run(run.resume, |step| {
        let b = data.batch(step, &part)?;
        let out = student.forward(&b.x_t, b.labels.as_ref(), true)?;
        let pt = obj.per_output(&out, &b)?; // [B, M']
        let log_now = (step + 1) % log_every == 0 || step + 1 == cfg.train.steps;
        let val = if log_now && cfg.validation > 0 {
            data.validate(&student, obj.as_ref(), cfg.train.batch_size)?
        } else {
            f64::NAN
        };
        Ok(StepLoss {
            loss: objective::total(obj.as_ref(), &pt),
            extra: vec![
                pt.mean_dim(0, false, Kind::Float).detach(),
                Tensor::full([1], val, (Kind::Double, device)),
            ],
        })
    })
}

//! Loading trained models from checkpoints: a [`Teacher`] is a [`Denoiser`]; a [`OneStep`]
//! (DSNO operator or KD student) maps noise to samples in one pass; [`load_classifier`] reads
//! the metrics' feature classifier.
use crate::checkpoint::{self, CheckpointMeta, ClassifierInfo, ModelKind};
use crate::denoiser::{ConditionalDenoiser, Denoiser, Prediction};
use crate::nn::classifier::Classifier;
use crate::nn::inception::Inception;
use crate::nn::lpips::Lpips;
use crate::nn::Backbone;
use crate::operator::{Generator, Method, OperatorConfig};
use crate::schedule::Schedule;
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

impl Teacher {
    /// Class labels the teacher takes: `Some(K)` for a class-conditional teacher.
    pub fn num_classes(&self) -> Option<i64> {
        self.net.num_classes()
    }
}

impl ConditionalDenoiser for Teacher {
    /// `D(z, t, y)`; `None` is the null class (for an unconditional teacher, its only mode).
    fn denoise_labels(&self, z: &Tensor, t: f64, labels: Option<&Tensor>) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let n = z.size()[0];
        let t_in = Tensor::full(
            [n],
            self.meta.schedule.t_input(t),
            (Kind::Float, z.device()),
        );
        let zf = z.to_kind(Kind::Float);
        let y = labels.map(|y| y.to_device(z.device()));
        let out = self.net.forward_labels(&zf, &t_in, y.as_ref(), false)?;
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

impl Denoiser for Teacher {
    /// The unconditional denoiser (a class-conditional teacher's null class).
    fn denoise(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        self.denoise_labels(z, t, None)
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

    /// Class labels the generator takes: `Some(K)` for a class-conditional one.
    pub fn num_classes(&self) -> Option<i64> {
        self.meta.model.num_classes()
    }

    /// [`OneStep::trajectory`] of a class-conditional generator for class `labels` `[B]`
    /// (`None`: the null class); labels given to an unconditional generator are an error.
    pub fn trajectory_labels(&self, x_t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        self.net
            .forward_labels(&x_t.to_kind(Kind::Float), labels, false)
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

/// Overrides of [`import_diffusers`] for what `scheduler_config.json` says (or lacks).
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The network's prediction (else `prediction_type`).
    pub prediction: Option<crate::denoiser::Prediction>,
    /// The noise schedule (else `num_train_timesteps`, `beta_schedule`, `beta_start`,
    /// `beta_end`).
    pub schedule: Option<Schedule>,
    /// The data set name recorded in the checkpoint (default `imported`).
    pub dataset: Option<String>,
}

/// The files of a diffusers model folder: `<dir>` itself, or a pipeline folder's `unet/` and
/// `scheduler/`.
fn diffusers_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let unet = if dir.join("unet").join("config.json").is_file() {
        dir.join("unet")
    } else {
        dir.to_path_buf()
    };
    let sched = [dir.join("scheduler"), dir.to_path_buf(), unet.clone()]
        .into_iter()
        .map(|d| d.join("scheduler_config.json"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join("scheduler_config.json"));
    (
        unet.join("config.json"),
        unet.join("diffusion_pytorch_model.safetensors"),
        sched,
    )
}

/// Reads diffusers' `scheduler_config.json`: the discrete schedule and the prediction type.
pub fn read_scheduler_config(path: &Path) -> Result<(Schedule, crate::denoiser::Prediction)> {
    use crate::denoiser::Prediction;
    use crate::schedule::BetaSchedule;
    let text = crate::util::fsio::read_text(path)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not JSON: {e}")))?;
    let num = |k: &str, d: f64| -> Result<f64> {
        match v.get(k) {
            None | Some(serde_json::Value::Null) => Ok(d),
            Some(x) => x
                .as_f64()
                .ok_or_else(|| Error::file(path, format!("key {k:?} = {x} is not a number"))),
        }
    };
    let text_key = |k: &str, d: &str| -> Result<String> {
        match v.get(k) {
            None | Some(serde_json::Value::Null) => Ok(d.to_string()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(x) => Err(Error::file(
                path,
                format!("key {k:?} = {x} is not a string"),
            )),
        }
    };
    for k in ["trained_betas"] {
        if v.get(k).is_some_and(|x| !x.is_null()) {
            return Err(Error::file(
                path,
                format!("key {k:?} is not supported (give the β schedule by name)"),
            ));
        }
    }
    if v.get("rescale_betas_zero_snr") == Some(&serde_json::Value::Bool(true)) {
        return Err(Error::file(
            path,
            "key \"rescale_betas_zero_snr\" = true is not supported",
        ));
    }
    let betas = BetaSchedule::from_name(&text_key("beta_schedule", "linear")?)
        .map_err(|e| Error::file(path, format!("key \"beta_schedule\": {e}")))?;
    let steps = num("num_train_timesteps", 1000.0)?;
    if steps.fract() != 0.0 || !(2.0..=100_000.0).contains(&steps) {
        return Err(Error::file(
            path,
            format!("key \"num_train_timesteps\" = {steps} is not an integer in [2, 100000]"),
        ));
    }
    let schedule = Schedule::Discrete {
        betas,
        beta_start: num("beta_start", 1e-4)?,
        beta_end: num("beta_end", 0.02)?,
        steps: steps as u32,
    };
    schedule.validate().map_err(|e| e.in_file(path))?;
    let prediction = match text_key("prediction_type", "epsilon")?.as_str() {
        "epsilon" => Prediction::Eps,
        "v_prediction" => Prediction::V,
        "sample" => Prediction::X,
        p => {
            return Err(Error::file(
                path,
                format!(
                "key \"prediction_type\" = {p:?} is not supported (epsilon, v_prediction, sample)"
            ),
            ))
        }
    };
    Ok((schedule, prediction))
}

/// Imports a diffusers `UNet2DModel` folder (`config.json`, `diffusion_pytorch_model.safetensors`,
/// `scheduler_config.json`; or a pipeline folder with `unet/` and `scheduler/`) as a dsno
/// teacher checkpoint (weights as float32, the legacy attention names mapped to today's). Every
/// variable of the network must be in the file with its shape, and nothing else may be.
pub fn import_diffusers(dir: &Path, o: &ImportOptions) -> Result<checkpoint::Checkpoint> {
    use crate::nn::diffusers::{legacy_name, DiffusersUNetConfig};
    use crate::nn::ModelConfig;
    let (config, weights, sched) = diffusers_files(dir);
    let cfg_text = crate::util::fsio::read_text(&config)?;
    let cfg = DiffusersUNetConfig::from_json(&cfg_text).map_err(|e| e.in_file(&config))?;
    let model = ModelConfig::Diffusers(Box::new(cfg));
    model.validate().map_err(|e| e.in_file(&config))?;
    let (schedule, prediction) = match (o.schedule, o.prediction) {
        (Some(s), Some(p)) => (s, p),
        (s, p) => {
            let (fs, fp) = read_scheduler_config(&sched)?;
            (s.unwrap_or(fs), p.unwrap_or(fp))
        }
    };
    schedule.validate()?;
    let bytes = crate::util::fsio::read(&weights)?;
    let mut tensors = std::collections::BTreeMap::new();
    for (name, t) in checkpoint::read_tensors(&bytes, &weights)? {
        let name = legacy_name(&name).unwrap_or(name);
        tensors.insert(name, t.to_kind(Kind::Float));
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = model.build(&vs.root()).map_err(|e| e.in_file(&config))?;
    let vars = vs.variables();
    if let Some(extra) = tensors.keys().find(|k| !vars.contains_key(*k)) {
        return Err(Error::file(
            &weights,
            format!(
                "unexpected tensor `{extra}`: not a variable of the UNet2DModel of config.json"
            ),
        ));
    }
    checkpoint::copy_into(&tensors, &vs, "", &weights, |_| true)?;
    let hash = |p: &Path| crate::data::fetch::file_sha256(p).ok();
    let meta = CheckpointMeta {
        kind: ModelKind::Teacher,
        model,
        schedule,
        step: 0,
        dataset: o.dataset.clone().unwrap_or_else(|| "imported".into()),
        times: None,
        modes: None,
        train: None,
        prediction,
        source: Some(serde_json::json!({
            "format": "diffusers UNet2DModel",
            "config_sha256": hash(&config),
            "scheduler_config_sha256": if sched.is_file() { hash(&sched) } else { None },
            "weights_sha256": hash(&weights),
        })),
    };
    Ok(checkpoint::Checkpoint {
        meta,
        tensors: checkpoint::named(&vs, "").into_iter().collect(),
    })
}

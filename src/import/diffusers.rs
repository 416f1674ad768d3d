//! The diffusers importer: a `UNet2DModel` folder (`config.json`,
//! `diffusion_pytorch_model.safetensors`, `scheduler_config.json`; or a pipeline folder with
//! `unet/` and `scheduler/`) as a dsno teacher, its network built by [`crate::nn::diffusers`].
use super::{ImportOptions, Importer};
use crate::checkpoint::{self, CheckpointMeta, ModelKind};
use crate::schedule::Schedule;
use crate::{Error, Result};
use std::path::Path;
use tch::{nn, Device, Kind};

/// diffusers' `UNet2DModel` with a DDPM-family scheduler.
pub struct Diffusers;

impl Importer for Diffusers {
    fn name(&self) -> &'static str {
        "diffusers"
    }

    fn import(&self, source: &Path, o: &ImportOptions) -> Result<checkpoint::Checkpoint> {
        import_diffusers(source, o)
    }
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
    let hash = |p: &Path| crate::util::safetensors::sha256_file(p).ok();
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

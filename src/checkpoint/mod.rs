//! Checkpoints: one `.safetensors` file whose metadata (key `dsno`) holds the JSON of
//! [`CheckpointMeta`]: what the model is (backbone config, schedule, output times), the training
//! step and the data set, so every checkpoint is self-describing and readable from Python
//! (`safetensors.torch.load_file`, `safe_open(...).metadata()`).
//!
//! Tensor names: the model's own variable names hold the weights to sample with (the EMA);
//! training checkpoints add `train/params/<name>`, `train/adam_m/<name>`, `train/adam_v/<name>`.
//! Writes are atomic (temporary name, then rename), through the codec of
//! [`crate::util::safetensors`]; [`parts`] splits a checkpoint into parts of bounded size.
pub mod parts;

use crate::error::check_range;
use crate::nn::ModelConfig;
use crate::operator::{Architecture, Method};
use crate::schedule::OutputTimes;
use crate::schedule::Schedule;
use crate::util::safetensors as codec;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// What a checkpoint holds; written as `"teacher"` or the method's name (`"dsno"`, `"kd"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelKind {
    /// A diffusion model: a denoiser D(z_t, t).
    Teacher,
    /// A one-step generator trained by a distillation method: x_T → outputs, the last the
    /// sample (its [`Architecture`] from the metadata: an operator has TimeConv `modes`).
    Student(Method),
}

impl TryFrom<String> for ModelKind {
    type Error = Error;
    fn try_from(s: String) -> Result<ModelKind> {
        match s.as_str() {
            "teacher" => Ok(ModelKind::Teacher),
            _ => Ok(ModelKind::Student(Method::new(&s)?)),
        }
    }
}

impl From<ModelKind> for String {
    fn from(k: ModelKind) -> String {
        match k {
            ModelKind::Teacher => "teacher".into(),
            ModelKind::Student(m) => m.into(),
        }
    }
}

impl std::fmt::Display for ModelKind {
    /// `teacher`, `DSNO`, `KD`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelKind::Teacher => f.write_str("teacher"),
            ModelKind::Student(m) => write!(f, "{m}"),
        }
    }
}

/// The metadata of a checkpoint. A field this build does not know is refused (an edit, or a
/// file of a newer format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub kind: ModelKind,
    pub model: ModelConfig,
    pub schedule: Schedule,
    /// Training steps taken.
    pub step: u64,
    /// The data set the model was trained on.
    pub dataset: String,
    /// Output times of an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<OutputTimes>,
    /// Fourier modes of an operator's TimeConv layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modes: Option<i64>,
    /// The full training configuration, for resuming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<serde_json::Value>,
    /// What a teacher's network predicts (x, ε or v); x when absent. One-step generators
    /// always predict x.
    #[serde(default, skip_serializing_if = "is_x")]
    pub prediction: crate::denoiser::Prediction,
    /// Where an imported model came from (`dsno import`: the source's files and hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
}

fn is_x(p: &crate::denoiser::Prediction) -> bool {
    *p == crate::denoiser::Prediction::X
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub tensors: BTreeMap<String, Tensor>,
}

/// Serialises `tensors` with `meta` (floating tensors stored as `store` if given, e.g.
/// `Kind::Half` for bundled models) and writes `path` atomically.
pub fn save(
    path: &Path,
    meta: &CheckpointMeta,
    tensors: &[(String, Tensor)],
    store: Option<Kind>,
) -> Result<()> {
    let json = serde_json::to_string(meta)
        .map_err(|e| Error::invalid(format!("checkpoint metadata: {e}")))?;
    let info = BTreeMap::from([
        ("dsno".to_string(), json),
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
    ]);
    codec::write(path, tensors, store, info)
}

pub use crate::util::safetensors::{CHECKSUM_KEY, HEADER_CHECKSUM_KEY};
pub use parts::{join, split, PART_KEY, WHOLE_KEY};

/// The checkpoint format this build writes (its files carry [`HEADER_CHECKSUM_KEY`]).
pub const CHECKPOINT_FORMAT: &str = "dsno-checkpoint-2";

/// The format of checkpoints written before [`HEADER_CHECKSUM_KEY`] (the bundled models among
/// them); still read.
pub const LEGACY_CHECKPOINT_FORMAT: &str = "dsno-checkpoint-1";

/// Reads a checkpoint (tensors on the CPU, in their stored kind).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = crate::util::fsio::read(path)?;
    load_bytes(&bytes, path)
}

/// Parses a checkpoint held in memory; `path` names it in errors.
pub fn load_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
    let json = codec::metadata_value(bytes, path, "dsno", "a dsno checkpoint")?;
    let meta = parse_meta(&json, path)?;
    let tensors = read_tensors(bytes, path)?;
    Ok(Checkpoint { meta, tensors })
}

/// Reads a checkpoint's metadata from the safetensors header alone (8-byte length, then the
/// JSON header), without reading or decoding the tensors.
pub fn read_meta(path: &Path) -> Result<CheckpointMeta> {
    use std::io::Read;
    let bad = |msg: String| Error::file(path, msg);
    let mut f = crate::util::fsio::open_input(path)?;
    let len = f
        .metadata()
        .map_err(|e| bad(format!("cannot read checkpoint: {e}")))?
        .len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| {
        bad("not a safetensors checkpoint (shorter than its 8-byte header length)".into())
    })?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n + 8 > len {
        return Err(bad(format!(
            "not a safetensors checkpoint (header length {n} for a file of {len} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read checkpoint header: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors checkpoint (header: {e})")))?;
    let json = v
        .get("__metadata__")
        .and_then(|m| m.get("dsno"))
        .and_then(|m| m.as_str())
        .ok_or_else(|| bad("no dsno metadata: not a dsno checkpoint".into()))?;
    parse_meta(json, path)
}

/// The largest safetensors header read (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

fn parse_meta(json: &str, path: &Path) -> Result<CheckpointMeta> {
    let meta: CheckpointMeta = serde_json::from_str(json)
        .map_err(|e| Error::file(path, format!("unreadable dsno metadata: {e}")))?;
    meta.validate().map_err(|e| e.in_file(path))?;
    Ok(meta)
}

impl CheckpointMeta {
    /// Checks every field against its documented range (docs/FORMATS.md §10): the model and
    /// schedule; an operator's output times and TimeConv modes.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.schedule.validate()?;
        let m = self.times.as_ref().map_or(0, |t| t.len());
        if let Some(k) = self.modes {
            check_range("modes", k, 1, (m / 2 + 1) as i64)?;
        }
        if self.kind != ModelKind::Teacher && !is_x(&self.prediction) {
            return Err(Error::invalid(
                "field `prediction`: one-step generators predict x",
            ));
        }
        // a distilled model's output times are those of the store it was trained on
        let trained = self.train.as_ref().and_then(|t| t.get("store"));
        if let (Some(t), Some(store)) = (&self.times, trained) {
            let made: Option<Vec<f64>> = store
                .get("times")
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            if made.as_ref().is_some_and(|m| m[..] != t[..]) {
                return Err(Error::invalid(format!(
                    "field `times` = {t:?}: the model was trained on a store with the times {:?} (field `train.store.times`)",
                    made.unwrap_or_default()
                )));
            }
        }
        // what the network outputs must be what the prediction type reads
        let data = self.model.sample_shape()[0];
        let heads = match self.prediction {
            crate::denoiser::Prediction::Both => 2,
            _ => 1,
        };
        let (out, field) = self.model.output_channels();
        if out != heads * data {
            return Err(Error::invalid(format!(
                "field `{field}` = {out}: the prediction `{}` of data with {data} channels needs {} output channels",
                serde_json::to_value(self.prediction).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                heads * data
            )));
        }
        let operator = self.kind == ModelKind::Student(Method::DSNO) || self.modes.is_some();
        if operator && (self.times.is_none() || self.modes.is_none()) {
            return Err(Error::invalid(
                "an operator checkpoint (DSNO) needs the fields `times` and `modes`",
            ));
        }
        Ok(())
    }

    /// What a one-step generator of this checkpoint runs: an operator when it has TimeConv
    /// `modes`, else the bare backbone at its last output time.
    pub fn architecture(&self) -> Architecture {
        match self.modes {
            Some(_) => Architecture::Operator,
            None => Architecture::Backbone,
        }
    }
}

/// The rules of dsno's file formats on a safetensors file's metadata: a checkpoint's `format`
/// is one this build reads; a file of [`CHECKPOINT_FORMAT`], or a shard recording its manifest,
/// carries [`HEADER_CHECKSUM_KEY`] (files written before it have none: their `format` is
/// `dsno-checkpoint-1`, and their shards record no manifest).
fn format_rules(md: &serde_json::Value) -> Result<()> {
    let format = md.get("format").and_then(|v| v.as_str());
    if md.get("dsno").is_some() {
        let f = format.unwrap_or("(none)");
        if f != CHECKPOINT_FORMAT && f != LEGACY_CHECKPOINT_FORMAT {
            return Err(Error::invalid(format!(
                "metadata `format` = {f}: this build reads `{CHECKPOINT_FORMAT}` and `{LEGACY_CHECKPOINT_FORMAT}`"
            )));
        }
    }
    let required = format == Some(CHECKPOINT_FORMAT) || md.get("manifest").is_some();
    if required && md.get(HEADER_CHECKSUM_KEY).is_none() {
        return Err(Error::invalid(format!(
            "no `{HEADER_CHECKSUM_KEY}` in its metadata, which every file of this format carries: the file was edited"
        )));
    }
    Ok(())
}

/// Verifies a dsno safetensors file held in memory: the codec's checks and [`format_rules`].
pub(crate) fn verify_checksum(bytes: &[u8], path: &Path) -> Result<()> {
    codec::verify(bytes, path, &format_rules)
}

/// Every tensor of a dsno safetensors file held in memory (CPU, stored kind), verified;
/// `path` names it in errors.
pub(crate) fn read_tensors(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Tensor>> {
    verify_checksum(bytes, path)?;
    codec::decode(bytes, path)
}

/// The prefix of the training state (raw parameters and Adam moments) in a training checkpoint.
pub const TRAIN_PREFIX: &str = "train/";

impl Checkpoint {
    /// The model's tensors (the EMA weights), without the training state.
    fn model_tensors(&self) -> Vec<(String, Tensor)> {
        self.tensors
            .iter()
            .filter(|(n, _)| !n.starts_with(TRAIN_PREFIX))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    /// Writes the model alone to `path`: its weights (the EMA) and metadata without the training
    /// state, floating tensors stored as `store` if given (e.g. float16 for bundled models).
    /// Returns the number of tensors written.
    pub fn export(&self, path: &Path, store: Option<Kind>) -> Result<usize> {
        let tensors = self.model_tensors();
        let mut meta = self.meta.clone();
        meta.train = None;
        save(path, &meta, &tensors, store)?;
        Ok(tensors.len())
    }

    /// Writes the `model.safetensors` of the training checkpoint read from `from`: the EMA
    /// weights with the checkpoint's metadata (the run's configuration included), byte for byte
    /// the file the run wrote beside it. Returns the number of tensors written.
    pub fn write_model(&self, from: &Path, path: &Path) -> Result<usize> {
        if !self.tensors.keys().any(|n| n.starts_with(TRAIN_PREFIX)) {
            return Err(Error::file(
                from,
                format!("not a training checkpoint: it holds no `{TRAIN_PREFIX}` tensors"),
            ));
        }
        let tensors = self.model_tensors();
        save(path, &self.meta, &tensors, None)?;
        Ok(tensors.len())
    }

    /// Copies the tensors named `prefix + name` into every variable `name` of `vs`; a missing
    /// key or a shape mismatch is an error naming the file and the key.
    pub fn load_into(&self, vs: &nn::VarStore, prefix: &str, path: &Path) -> Result<()> {
        self.load_into_filtered(vs, prefix, path, |_| true)
    }

    /// As [`Checkpoint::load_into`], for the variables whose name passes `filter` only.
    pub fn load_into_filtered(
        &self,
        vs: &nn::VarStore,
        prefix: &str,
        path: &Path,
        filter: impl Fn(&str) -> bool,
    ) -> Result<()> {
        copy_into(&self.tensors, vs, prefix, path, filter)
    }
}

/// Copies `tensors[prefix + name]` into every variable `name` of `vs` that passes `filter`; a
/// missing key or a shape mismatch is an error naming the file and the key.
pub(crate) fn copy_into(
    tensors: &BTreeMap<String, Tensor>,
    vs: &nn::VarStore,
    prefix: &str,
    path: &Path,
    filter: impl Fn(&str) -> bool,
) -> Result<()> {
    let _g = tch::no_grad_guard();
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().filter(|n| filter(n)).collect();
    names.sort();
    for name in names {
        let key = format!("{prefix}{name}");
        let src = tensors.get(&key).ok_or_else(|| {
            Error::file(
                path,
                format!("missing tensor `{key}` (the checkpoint does not match the model)"),
            )
        })?;
        let mut dst = vars[name].shallow_clone();
        if src.size() != dst.size() {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{key}` has shape {:?}, the model expects {:?}",
                    src.size(),
                    dst.size()
                ),
            ));
        }
        if src.is_floating_point() != dst.is_floating_point() {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{key}` is stored as {:?}, the model expects {:?}",
                    src.kind(),
                    dst.kind()
                ),
            ));
        }
        dst.f_copy_(&src.to_kind(dst.kind()).to_device(dst.device()))?;
    }
    Ok(())
}

/// The variables of `vs` as `(prefix + name, tensor)` pairs, sorted by name.
pub fn named(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A teacher's identity, recorded in the trajectory stores made from it: the SHA-256 of its file
/// (hex, 64 digits), streamed.
pub fn file_hash(path: &Path) -> Result<String> {
    codec::sha256_file(path)
}

/// The identity stores recorded before [`file_hash`] (FNV-1a 64 over the file's bytes, hex,
/// 16 digits): a store that holds one is checked with it.
pub fn legacy_file_hash(path: &Path) -> Result<String> {
    let bytes = crate::util::fsio::read(path)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    Ok(format!("{h:016x}"))
}

/// Reads plain tensors (e.g. noise for `dsno sample --noise`) from a safetensors file (CPU, stored
/// kind; floating tensors finite; checksums verified where the file has them).
pub fn read_plain_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    read_tensors(&crate::util::fsio::read(path)?, path)
}

/// Writes plain tensors (e.g. raw samples) as a safetensors file without metadata, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    codec::write(path, tensors, None, BTreeMap::new())
}

/// What a saved feature classifier was trained on and how well it does (safetensors metadata
/// key `dsno-classifier`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    /// The data set (`mnist`, `fashion-mnist`, …).
    pub dataset: String,
    /// Accuracy on the data set's test split.
    pub test_accuracy: f64,
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
}

/// The metadata key of a classifier file.
pub const CLASSIFIER_KEY: &str = "dsno-classifier";

/// Writes a classifier's tensors (float32) with `info`, atomically.
pub fn save_classifier(
    path: &Path,
    tensors: &[(String, Tensor)],
    info: &ClassifierInfo,
) -> Result<()> {
    let json = serde_json::to_string(info).map_err(|e| Error::invalid(e.to_string()))?;
    let meta = BTreeMap::from([(CLASSIFIER_KEY.to_string(), json)]);
    codec::write(path, tensors, Some(Kind::Float), meta)
}

/// The description of a classifier file held in memory; `path` names it in errors.
pub fn classifier_info(bytes: &[u8], path: &Path) -> Result<ClassifierInfo> {
    let json = codec::metadata_value(bytes, path, CLASSIFIER_KEY, "a feature classifier")?;
    serde_json::from_str(&json)
        .map_err(|e| Error::file(path, format!("unreadable classifier metadata: {e}")))
}

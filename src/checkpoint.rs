//! Checkpoints: one `.safetensors` file whose metadata (key `dsno`) holds the JSON of
//! [`CheckpointMeta`]: what the model is (backbone config, schedule, output times), the training
//! step and the data set, so every checkpoint is self-describing and readable from Python
//! (`safetensors.torch.load_file`, `safe_open(...).metadata()`).
//!
//! Tensor names: the model's own variable names hold the weights to sample with (the EMA);
//! training checkpoints add `train/params/<name>`, `train/adam_m/<name>`, `train/adam_v/<name>`.
//! Writes are atomic (temporary name, then rename).
use crate::error::check_range;
use crate::nn::ModelConfig;
use crate::schedule::check_output_times;
use crate::schedule::Schedule;
use crate::util::fsio::write_atomic;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// What a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A diffusion model: a denoiser D(z_t, t).
    Teacher,
    /// A DSNO operator: x_T → trajectory at the output times.
    Dsno,
    /// A one-step knowledge-distillation student: x_T → sample.
    Kd,
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
    pub times: Option<Vec<f64>>,
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

/// A tensor's bytes, ready for safetensors.
pub(crate) struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn dtype_of(kind: Kind) -> Result<safetensors::Dtype> {
    use safetensors::Dtype as D;
    Ok(match kind {
        Kind::Float => D::F32,
        Kind::Double => D::F64,
        Kind::Half => D::F16,
        Kind::BFloat16 => D::BF16,
        Kind::Int64 => D::I64,
        Kind::Int => D::I32,
        Kind::Uint8 => D::U8,
        k => {
            return Err(Error::invalid(format!(
                "cannot store tensors of kind {k:?}"
            )))
        }
    })
}

fn kind_of(d: safetensors::Dtype) -> Option<Kind> {
    use safetensors::Dtype as D;
    Some(match d {
        D::F32 => Kind::Float,
        D::F64 => Kind::Double,
        D::F16 => Kind::Half,
        D::BF16 => Kind::BFloat16,
        D::I64 => Kind::Int64,
        D::I32 => Kind::Int,
        D::U8 => Kind::Uint8,
        _ => return None,
    })
}

/// The bytes of `t` (floating tensors converted to `store` if given).
pub(crate) fn raw(t: &Tensor, store: Option<Kind>) -> Result<Raw> {
    let mut t = t.detach().to_device(Device::Cpu).contiguous();
    if let Some(k) = store {
        if t.is_floating_point() {
            t = t.to_kind(k);
        }
    }
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Raw {
        dtype: dtype_of(t.kind())?,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
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
    write_safetensors(path, tensors, store, info)
}

/// The metadata key of the SHA-256 of a file's tensor data, written into every safetensors file
/// dsno writes and verified on load where present.
pub const CHECKSUM_KEY: &str = "sha256";

/// The metadata key of the SHA-256 of a file's JSON header (every tensor's dtype, shape and
/// offsets, and the metadata, this key left out; keys sorted, no spaces), written into every
/// safetensors file dsno writes since `dsno-checkpoint-2` and verified on load: an edit of the
/// metadata is caught as a flipped data bit is.
pub const HEADER_CHECKSUM_KEY: &str = "sha256_header";

/// The checkpoint format this build writes (its files carry [`HEADER_CHECKSUM_KEY`]).
pub const CHECKPOINT_FORMAT: &str = "dsno-checkpoint-2";

/// The format of checkpoints written before [`HEADER_CHECKSUM_KEY`] (the bundled models among
/// them); still read.
pub const LEGACY_CHECKPOINT_FORMAT: &str = "dsno-checkpoint-1";

/// Serialises `tensors` (floating ones stored as `store` if given) with the metadata `info` and
/// writes `path` atomically.
///
/// The bytes are a function of the content alone: tensors in name order, the header's JSON keys
/// sorted, and the metadata completed with [`CHECKSUM_KEY`], the SHA-256 of the data section.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    store: Option<Kind>,
    info: BTreeMap<String, String>,
) -> Result<()> {
    let mut raws: Vec<(String, Raw)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), raw(t, store)?)))
        .collect::<Result<_>>()?;
    raws.sort_by(|a, b| a.0.cmp(&b.0));
    write_atomic(path, &serialize(&raws, info).map_err(|e| e.in_file(path))?)
}

/// The safetensors bytes of `raws` (in the given order) with metadata `info` and its checksum.
fn serialize(raws: &[(String, Raw)], mut info: BTreeMap<String, String>) -> Result<Vec<u8>> {
    use sha2::Digest;
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::with_capacity(raws.iter().map(|r| r.1.data.len()).sum());
    let mut entries = BTreeMap::new();
    for (name, r) in raws {
        if entries.contains_key(name) {
            return Err(Error::invalid(format!("tensor `{name}` written twice")));
        }
        let begin = data.len();
        data.extend_from_slice(&r.data);
        entries.insert(
            name.clone(),
            serde_json::json!({
                "dtype": r.dtype,
                "shape": r.shape,
                "data_offsets": [begin, data.len()],
            }),
        );
    }
    info.insert(CHECKSUM_KEY.to_string(), hex(&sha2::Sha256::digest(&data)));
    info.remove(HEADER_CHECKSUM_KEY);
    header.insert("__metadata__".to_string(), serde_json::json!(info));
    header.extend(entries);
    let mut header = serde_json::Value::Object(header);
    let digest = header_digest(&header);
    header["__metadata__"][HEADER_CHECKSUM_KEY] = serde_json::Value::String(digest);
    let mut json = serde_json::to_vec(&header).expect("JSON of strings");
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&data);
    Ok(out)
}

/// The SHA-256 (hex) of a header as [`HEADER_CHECKSUM_KEY`] defines it.
fn header_digest(header: &serde_json::Value) -> String {
    use sha2::Digest;
    let mut h = header.clone();
    if let Some(m) = h.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
        m.remove(HEADER_CHECKSUM_KEY);
    }
    hex(&sha2::Sha256::digest(serde_json::to_vec(&h).expect("JSON")))
}

/// The keys of a JSON object, in order and with repeats (a parser keeps the last of two equal
/// keys; a header that names a tensor twice is refused instead); the keys of `__metadata__` too.
#[derive(Default)]
struct HeaderKeys {
    top: Vec<String>,
    metadata: Vec<String>,
}

impl<'de> serde::Deserialize<'de> for HeaderKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = HeaderKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<HeaderKeys, A::Error> {
                let mut out = HeaderKeys::default();
                while let Some(k) = map.next_key::<String>()? {
                    if k == "__metadata__" {
                        out.metadata = map.next_value::<HeaderKeys>()?.top;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                    out.top.push(k);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Keys)
    }
}

/// Checks a safetensors header: no tensor or metadata key named twice, and the header checksum
/// ([`HEADER_CHECKSUM_KEY`]) where the file has one; a file of [`CHECKPOINT_FORMAT`], or a
/// shard recording its manifest, must have one (files written before it have none: their
/// `format` is `dsno-checkpoint-1`, and their shards record no manifest).
fn verify_header(json: &[u8], path: &Path) -> Result<()> {
    let keys: HeaderKeys = serde_json::from_slice(json)
        .map_err(|e| Error::file(path, format!("unreadable safetensors header ({e})")))?;
    for (what, list) in [("tensor", &keys.top), ("metadata key", &keys.metadata)] {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = list.iter().find(|k| !seen.insert(k.as_str())) {
            return Err(Error::file(
                path,
                format!("the header names the {what} `{twice}` twice"),
            ));
        }
    }
    let header: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| Error::file(path, format!("unreadable safetensors header ({e})")))?;
    let md = &header["__metadata__"];
    if md.get("dsno").is_some() {
        let format = md
            .get("format")
            .and_then(|v| v.as_str())
            .unwrap_or("(none)");
        if format != CHECKPOINT_FORMAT && format != LEGACY_CHECKPOINT_FORMAT {
            return Err(Error::file(
                path,
                format!("metadata `format` = {format}: this build reads `{CHECKPOINT_FORMAT}` and `{LEGACY_CHECKPOINT_FORMAT}`"),
            ));
        }
    }
    match md.get(HEADER_CHECKSUM_KEY).and_then(|v| v.as_str()) {
        Some(want) => {
            let got = header_digest(&header);
            if got != want {
                return Err(Error::file(
                    path,
                    format!("header checksum mismatch: the header hashes to {got}, the file records {want} (its metadata or tensor table was changed after it was written)"),
                ));
            }
        }
        None if md.get("format").and_then(|v| v.as_str()) == Some(CHECKPOINT_FORMAT)
            || md.get("manifest").is_some() =>
        {
            return Err(Error::file(
                path,
                format!("no `{HEADER_CHECKSUM_KEY}` in its metadata, which every file of this format carries: the file was edited"),
            ));
        }
        None => {}
    }
    Ok(())
}

/// The SHA-256 (hex) of the data section [`serialize`] writes for `raws` (sorted by name).
fn data_checksum(raws: &[(String, Raw)]) -> String {
    use sha2::Digest;
    let mut sorted: Vec<&(String, Raw)> = raws.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = sha2::Sha256::new();
    for (_, r) in sorted {
        h.update(&r.data);
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies the [`CHECKSUM_KEY`] of a safetensors file held in memory against its data section
/// (files without one, written before dsno recorded checksums, pass).
pub(crate) fn verify_checksum(bytes: &[u8], path: &Path) -> Result<()> {
    use sha2::Digest;
    let (n, md) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("corrupt or not a safetensors file ({e})")))?;
    verify_header(bytes.get(8..8 + n).unwrap_or_default(), path)?;
    let Some(want) = md.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)) else {
        return Ok(());
    };
    let data = bytes.get(8 + n..).unwrap_or_default();
    let got = hex(&sha2::Sha256::digest(data));
    if &got != want {
        return Err(Error::file(
            path,
            format!("checksum mismatch: the tensor data hashes to {got}, the file records {want} (the file is corrupt)"),
        ));
    }
    Ok(())
}

/// The metadata key of a part written by [`split`]: `k/n`.
pub const PART_KEY: &str = "part";

/// The metadata key of a part written by [`split`]: the SHA-256 of the whole checkpoint's
/// tensor data, which [`join`] checks its result against.
pub const WHOLE_KEY: &str = "whole_sha256";

/// Splits the checkpoint at `path` into parts of at most `max_bytes` of tensor data each (whole
/// tensors, in name order), written into `dir` as `<stem>.part-<k>.safetensors`; each part is a
/// checkpoint with the same metadata and `part = "k/n"`. [`join`] puts them back together,
/// byte for byte. For moving training state through channels with a file-size limit.
pub fn split(path: &Path, dir: &Path, max_bytes: u64) -> Result<Vec<std::path::PathBuf>> {
    let ck = load(path)?;
    let mut parts: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut size = 0u64;
    for (name, t) in &ck.tensors {
        let bytes = (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        if bytes > max_bytes {
            return Err(Error::file(
                path,
                format!("tensor `{name}` alone has {bytes} bytes, more than a part's {max_bytes}"),
            ));
        }
        if size + bytes > max_bytes {
            parts.push(vec![]);
            size = 0;
        }
        size += bytes;
        parts
            .last_mut()
            .expect("a part")
            .push((name.clone(), t.shallow_clone()));
    }
    let json = serde_json::to_string(&ck.meta)
        .map_err(|e| Error::invalid(format!("checkpoint metadata: {e}")))?;
    let whole = {
        let all: Vec<(String, Raw)> = ck
            .tensors
            .iter()
            .map(|(n, t)| Ok((n.clone(), raw(t, None)?)))
            .collect::<Result<_>>()?;
        data_checksum(&all)
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let n = parts.len();
    let mut out = vec![];
    // all parts or none
    let mut files = crate::util::fsio::Outputs::new();
    for (k, tensors) in parts.iter().enumerate() {
        let file = dir.join(format!("{stem}.part-{k}.safetensors"));
        let info = BTreeMap::from([
            ("dsno".to_string(), json.clone()),
            ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
            (PART_KEY.to_string(), format!("{k}/{n}")),
            (WHOLE_KEY.to_string(), whole.clone()),
        ]);
        write_safetensors(&files.stage(&file)?, tensors, None, info)?;
        out.push(file);
    }
    files.commit()?;
    Ok(out)
}

/// Joins the parts written by [`split`] (all of them, any order) into the checkpoint `out`.
pub fn join(parts: &[std::path::PathBuf], out: &Path) -> Result<()> {
    let mut meta: Option<CheckpointMeta> = None;
    let mut seen = std::collections::BTreeSet::new();
    let mut total = None;
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut whole = None;
    for p in parts {
        let bytes = crate::util::fsio::read(p)?;
        let ck = load_bytes(&bytes, p)?;
        let part = metadata_value(&bytes, p, PART_KEY, "a part of a split checkpoint")?;
        let (k, n) = part
            .split_once('/')
            .and_then(|(k, n)| Some((k.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
            .filter(|(k, n)| k < n)
            .ok_or_else(|| Error::file(p, format!("bad part `{part}`")))?;
        if *total.get_or_insert(n) != n || !seen.insert(k) {
            return Err(Error::file(
                p,
                format!("part {k}/{n} does not fit the other parts"),
            ));
        }
        let w = metadata_value(&bytes, p, WHOLE_KEY, "a part of a split checkpoint")?;
        if meta.get_or_insert_with(|| ck.meta.clone()) != &ck.meta
            || whole.get_or_insert_with(|| w.clone()) != &w
        {
            return Err(Error::file(p, "a part of another checkpoint"));
        }
        for (name, t) in ck.tensors {
            if tensors.insert(name.clone(), t).is_some() {
                return Err(Error::file(p, format!("tensor `{name}` is in two parts")));
            }
        }
    }
    let (Some(meta), Some(n)) = (meta, total) else {
        return Err(Error::invalid("no parts to join"));
    };
    if seen.len() != n {
        return Err(Error::file(
            out,
            format!("{} of {n} parts given", seen.len()),
        ));
    }
    let tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    let raws: Vec<(String, Raw)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), raw(t, None)?)))
        .collect::<Result<_>>()?;
    if Some(data_checksum(&raws)) != whole {
        return Err(Error::file(
            out,
            "the parts do not make up the checkpoint they were split from (its checksum differs)",
        ));
    }
    save(out, &meta, &tensors, None)
}

/// Reads a checkpoint (tensors on the CPU, in their stored kind).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = crate::util::fsio::read(path)?;
    load_bytes(&bytes, path)
}

/// Parses a checkpoint held in memory; `path` names it in errors.
pub fn load_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
    let json = metadata_value(bytes, path, "dsno", "a dsno checkpoint")?;
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
        if let Some(t) = &self.times {
            check_output_times("field `times`", t)?;
        }
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
            if made.as_ref().is_some_and(|m| m != t) {
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
        if self.kind == ModelKind::Dsno && (self.times.is_none() || self.modes.is_none()) {
            return Err(Error::invalid(
                "a DSNO checkpoint needs the fields `times` and `modes`",
            ));
        }
        Ok(())
    }
}

/// The metadata value `key` of a safetensors file held in memory; `what` names what a file
/// with that key is, for the error when it has none.
fn metadata_value(bytes: &[u8], path: &Path, key: &str, what: &str) -> Result<String> {
    let (_, md) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("not a safetensors file ({e})")))?;
    md.metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .cloned()
        .ok_or_else(|| Error::file(path, format!("no {key} metadata: not {what}")))
}

/// Every tensor of a safetensors file held in memory (CPU, stored kind); `path` names it in
/// errors.
pub(crate) fn read_tensors(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Tensor>> {
    verify_checksum(bytes, path)?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::file(path, format!("corrupt safetensors data ({e})")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = tensor_of(&view, &name, path)?;
        tensors.insert(name, t);
    }
    Ok(tensors)
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

/// A tensor from a safetensors view; `name` and `path` name it in errors. Floating tensors must
/// be finite: a NaN or Inf read from a file is an error naming the tensor.
pub(crate) fn tensor_of_unchecked(
    view: &safetensors::tensor::TensorView<'_>,
    name: &str,
    path: &Path,
) -> Result<Tensor> {
    let kind = kind_of(view.dtype()).ok_or_else(|| {
        Error::file(
            path,
            format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
        )
    })?;
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
}

/// A tensor of a safetensors file (CPU, stored kind); a floating tensor must be finite.
pub(crate) fn tensor_of(
    view: &safetensors::tensor::TensorView<'_>,
    name: &str,
    path: &Path,
) -> Result<Tensor> {
    let t = tensor_of_unchecked(view, name, path)?;
    if t.is_floating_point() {
        let bad = t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
        if bad > 0 {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{name}` holds {bad} non-finite values (NaN or Inf) of {}",
                    t.numel()
                ),
            ));
        }
    }
    Ok(t)
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

/// A short content hash of a file (FNV-1a 64 over its bytes), hex.
pub fn file_hash(path: &Path) -> Result<String> {
    let bytes = crate::util::fsio::read(path)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    Ok(format!("{h:016x}"))
}

/// Writes plain tensors (e.g. raw samples) as a safetensors file without metadata, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_safetensors(path, tensors, None, BTreeMap::new())
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
    write_safetensors(path, tensors, Some(Kind::Float), meta)
}

/// The description of a classifier file held in memory; `path` names it in errors.
pub fn classifier_info(bytes: &[u8], path: &Path) -> Result<ClassifierInfo> {
    let json = metadata_value(bytes, path, CLASSIFIER_KEY, "a feature classifier")?;
    serde_json::from_str(&json)
        .map_err(|e| Error::file(path, format!("unreadable classifier metadata: {e}")))
}

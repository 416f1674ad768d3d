//! The safetensors codec every dsno file goes through: tensors ↔ bytes with a deterministic
//! layout (tensors in name order, header keys sorted, so the bytes are a function of the content)
//! and two SHA-256 checksums in the metadata — of the data section ([`CHECKSUM_KEY`]) and of
//! the header ([`HEADER_CHECKSUM_KEY`]) — verified on read, with finite floating tensors; and
//! the SHA-256 helpers. What a file's metadata means (checkpoints, shards, classifiers) is its
//! format's business (`checkpoint`, `data::store`).
use crate::util::fsio::write_atomic;
use crate::{Error, Result};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A tensor's bytes, ready for safetensors.
pub struct Raw {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
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
pub fn raw(t: &Tensor, store: Option<Kind>) -> Result<Raw> {
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

/// The metadata key of the SHA-256 of a file's tensor data, written into every safetensors file
/// dsno writes and verified on load where present.
pub const CHECKSUM_KEY: &str = "sha256";

/// The metadata key of the SHA-256 of a file's JSON header (every tensor's dtype, shape and
/// offsets, and the metadata, this key left out; keys sorted, no spaces), written into every
/// safetensors file dsno writes (since `dsno-checkpoint-2`) and verified on load: an edit of the
/// metadata is caught as a flipped data bit is.
pub const HEADER_CHECKSUM_KEY: &str = "sha256_header";

/// Serialises `tensors` (floating ones stored as `store` if given) with the metadata `info` and
/// writes `path` atomically.
///
/// The bytes are a function of the content alone: tensors in name order, the header's JSON keys
/// sorted, and the metadata completed with [`CHECKSUM_KEY`], the SHA-256 of the data section.
pub fn write(
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
    write_atomic(path, &encode(&raws, info).map_err(|e| e.in_file(path))?)
}

/// The safetensors bytes of `raws` (in the given order) with metadata `info` and its checksums.
pub fn encode(raws: &[(String, Raw)], mut info: BTreeMap<String, String>) -> Result<Vec<u8>> {
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
    info.insert(CHECKSUM_KEY.to_string(), sha256_hex(&data));
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
/// ([`HEADER_CHECKSUM_KEY`]) where the file has one. Returns the header.
fn verify_header(json: &[u8], path: &Path) -> Result<serde_json::Value> {
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
    if let Some(want) = header["__metadata__"]
        .get(HEADER_CHECKSUM_KEY)
        .and_then(|v| v.as_str())
    {
        let got = header_digest(&header);
        if got != want {
            return Err(Error::file(
                path,
                format!("header checksum mismatch: the header hashes to {got}, the file records {want} (its metadata or tensor table was changed after it was written)"),
            ));
        }
    }
    Ok(header)
}

/// The SHA-256 (hex) of the data section [`encode`] writes for `raws` (sorted by name).
pub fn data_checksum(raws: &[(String, Raw)]) -> String {
    let mut sorted: Vec<&(String, Raw)> = raws.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = sha2::Sha256::new();
    for (_, r) in sorted {
        h.update(&r.data);
    }
    hex(&h.finalize())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies a safetensors file held in memory: its header ([`verify_header`]), the caller's
/// `rules` on the header's `__metadata__` (a format's own requirements), and the
/// [`CHECKSUM_KEY`] against its data section (files without one, written before dsno recorded
/// checksums, pass).
pub fn verify(
    bytes: &[u8],
    path: &Path,
    rules: &dyn Fn(&serde_json::Value) -> Result<()>,
) -> Result<()> {
    let (n, md) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("corrupt or not a safetensors file ({e})")))?;
    let header = verify_header(bytes.get(8..8 + n).unwrap_or_default(), path)?;
    rules(&header["__metadata__"]).map_err(|e| e.in_file(path))?;
    let Some(want) = md.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)) else {
        return Ok(());
    };
    let data = bytes.get(8 + n..).unwrap_or_default();
    let got = sha256_hex(data);
    if &got != want {
        return Err(Error::file(
            path,
            format!("checksum mismatch: the tensor data hashes to {got}, the file records {want} (the file is corrupt)"),
        ));
    }
    Ok(())
}

/// The metadata value `key` of a safetensors file held in memory; `what` names what a file
/// with that key is, for the error when it has none.
pub fn metadata_value(bytes: &[u8], path: &Path, key: &str, what: &str) -> Result<String> {
    let (_, md) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("not a safetensors file ({e})")))?;
    md.metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .cloned()
        .ok_or_else(|| Error::file(path, format!("no {key} metadata: not {what}")))
}

/// A tensor from a safetensors view; `name` and `path` name it in errors. Floating tensors must
/// be finite: a NaN or Inf read from a file is an error naming the tensor.
pub fn tensor_of_unchecked(
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
pub fn tensor_of(
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

/// Every tensor of a safetensors file held in memory (CPU, stored kind; floating tensors
/// finite), without verifying it ([`verify`] first); `path` names it in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::file(path, format!("corrupt safetensors data ({e})")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = tensor_of(&view, &name, path)?;
        tensors.insert(name, t);
    }
    Ok(tensors)
}

/// SHA-256 (lower-case hex) of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// SHA-256 (lower-case hex) of a file's bytes, streamed (the file is never held in memory).
pub fn sha256_file(path: &Path) -> Result<String> {
    let f = crate::util::fsio::open_input(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::io::BufReader::new(f), &mut h)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    Ok(hex(&h.finalize()))
}

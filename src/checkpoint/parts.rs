//! A checkpoint as parts of bounded size, and back ([`split`], [`join`]), byte for byte: for
//! moving training state through channels with a file-size limit.
use super::{load, load_bytes, save, CheckpointMeta, CHECKPOINT_FORMAT};
use crate::util::safetensors::{self as codec, Raw};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

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
            .map(|(n, t)| Ok((n.clone(), codec::raw(t, None)?)))
            .collect::<Result<_>>()?;
        codec::data_checksum(&all)
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
        codec::write(&files.stage(&file)?, tensors, None, info)?;
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
        let part = codec::metadata_value(&bytes, p, PART_KEY, "a part of a split checkpoint")?;
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
        let w = codec::metadata_value(&bytes, p, WHOLE_KEY, "a part of a split checkpoint")?;
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
        .map(|(n, t)| Ok((n.clone(), codec::raw(t, None)?)))
        .collect::<Result<_>>()?;
    if Some(codec::data_checksum(&raws)) != whole {
        return Err(Error::file(
            out,
            "the parts do not make up the checkpoint they were split from (its checksum differs)",
        ));
    }
    save(out, &meta, &tensors, None)
}

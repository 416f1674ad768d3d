//! The trajectory store (docs/FORMATS.md §5): a folder of shards `traj-00000.safetensors`, … each holding
//! `x_T` `[n, …]`, `targets` `[n, M, …]` (the teacher's x̂ at the M output times), `lambdas`
//! `[M]`, `indices` `[n]` and, in a store of a class-conditional teacher, `labels` `[n]`, plus `manifest.json` (teacher hash, solver, steps, seed, times,
//! shard size, count).
//!
//! This module is the format only: reading and checking shards and the manifest, writing a
//! shard. Making a store is `crate::train::trajectories`.
use crate::error::{check_field, check_range};
use crate::schedule::check_output_times;
use crate::solver::{check_steps, Solver};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// FNV-1a 64 hash of the teacher checkpoint file.
    pub teacher_hash: String,
    pub dataset: String,
    pub solver: Solver,
    pub steps: usize,
    pub seed: u64,
    /// Output times t_1 > … > t_M.
    pub times: Vec<f64>,
    pub count: usize,
    pub shard_size: usize,
    /// Shape of one sample.
    pub sample_shape: Vec<i64>,
    /// Storage of x_T and targets: `f32` or `f16`.
    pub dtype: String,
    /// The classes K of a class-conditional teacher; its shards then hold each sample's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Every sample of this one class; without it, sample i's label is drawn from (seed, i)
    /// ([`crate::rng::labels`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<usize>,
    /// The classifier-free guidance scale w of the teacher's solve (1: the conditional model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
}

pub const FORMAT: &str = "dsno-trajectories-1";

impl Manifest {
    pub fn shards(&self) -> usize {
        self.count.div_ceil(self.shard_size)
    }

    pub fn shard_range(&self, j: usize) -> (usize, usize) {
        (
            j * self.shard_size,
            ((j + 1) * self.shard_size).min(self.count),
        )
    }

    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.json");
        Self::parse(&crate::util::fsio::read_text(&path)?, &path)
    }

    /// Parses and checks manifest text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let m: Manifest = serde_json::from_str(text)
            .map_err(|e| Error::file(path, format!("bad trajectory manifest: {e}")))?;
        m.validate().map_err(|e| e.in_file(path))?;
        Ok(m)
    }

    /// Checks every field against its range (docs/FORMATS.md §5, §10).
    pub fn validate(&self) -> Result<()> {
        check_field(
            "format",
            &self.format,
            self.format == FORMAT,
            &format!("`{FORMAT}`"),
        )?;
        if self.count == 0 {
            return Err(Error::invalid("the store is empty (field `count` = 0)"));
        }
        check_range("count", self.count, 1, 1_000_000_000_000)?;
        check_range("shard_size", self.shard_size, 1, 100_000_000)?;
        check_steps("steps", self.steps)?;
        check_output_times("field `times`", &self.times)?;
        check_range("sample_shape (dimensions)", self.sample_shape.len(), 1, 4)?;
        for (i, &d) in self.sample_shape.iter().enumerate() {
            check_range(&format!("sample_shape[{i}]"), d, 1, 4096)?;
        }
        let dtype_ok = self.dtype == "f32" || self.dtype == "f16";
        check_field("dtype", &self.dtype, dtype_ok, "`f32` or `f16`")?;
        match self.num_classes {
            Some(k) => {
                check_range("num_classes", k, 1, 1_000_000)?;
                if let Some(c) = self.class {
                    check_range("class", c, 0, k - 1)?;
                }
                crate::denoiser::check_guidance(self.guidance.unwrap_or(1.0))
                    .map_err(|e| Error::invalid(format!("field `guidance`: {e}")))
            }
            None if self.class.is_some() || self.guidance.is_some() => Err(Error::invalid(
                "fields `class` and `guidance` belong to a class-conditional store (with `num_classes`)",
            )),
            None => Ok(()),
        }
    }

    /// The labels `[hi − lo]` (int64) of the samples `lo..hi` (None for an unconditional store).
    pub fn labels(&self, lo: usize, hi: usize) -> Option<Tensor> {
        let k = self.num_classes?;
        Some(match self.class {
            Some(c) => Tensor::full(
                [(hi - lo) as i64],
                c as i64,
                (Kind::Int64, tch::Device::Cpu),
            ),
            None => crate::rng::labels(self.seed, lo as u64..hi as u64, k as u64),
        })
    }
}

/// The file of shard `j`.
pub fn shard_path(dir: &Path, j: usize) -> PathBuf {
    dir.join(format!("traj-{j:05}.safetensors"))
}

/// One loaded shard.
#[derive(Debug)]
pub struct Shard {
    pub x_t: Tensor,
    pub targets: Tensor,
    pub lambdas: Tensor,
    pub indices: Tensor,
    /// The class labels `[n]` of a class-conditional store.
    pub labels: Option<Tensor>,
}

/// Loads shard `j` and checks it against the manifest.
pub fn load_shard(dir: &Path, m: &Manifest, j: usize) -> Result<Shard> {
    let path = shard_path(dir, j);
    let bytes =
        std::fs::read(&path).map_err(|e| Error::file(&path, format!("cannot read shard: {e}")))?;
    parse_shard(&bytes, &path, m, j)
}

/// Parses the bytes of shard `j` and checks them against the manifest; `path` names it in
/// errors.
pub fn parse_shard(bytes: &[u8], path: &Path, m: &Manifest, j: usize) -> Result<Shard> {
    crate::checkpoint::verify_checksum(bytes, path)?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::file(path, format!("corrupt shard ({e})")))?;
    let get = |name: &str| -> Result<Tensor> {
        let v = st
            .tensor(name)
            .map_err(|_| Error::file(path, format!("shard has no `{name}`")))?;
        crate::checkpoint::tensor_of(&v, name, path)
    };
    let shard = Shard {
        x_t: get("x_T")?,
        targets: get("targets")?,
        lambdas: {
            // λ is +∞ at an output time where σ = 0 (t = 0 of a linear-β or discrete schedule)
            let v = st
                .tensor("lambdas")
                .map_err(|_| Error::file(path, "shard has no `lambdas`"))?;
            let l = crate::checkpoint::tensor_of_unchecked(&v, "lambdas", path)?;
            let bad = l.isnan().logical_or(&l.isneginf()).any();
            if l.is_floating_point() && bool::try_from(bad).unwrap_or(true) {
                return Err(Error::file(path, "tensor `lambdas` holds NaN or −∞"));
            }
            l
        },
        indices: get("indices")?,
        labels: match st.tensor("labels") {
            Ok(_) if m.num_classes.is_none() => {
                return Err(Error::file(
                    path,
                    "shard holds `labels`, the manifest has no `num_classes`",
                ))
            }
            Ok(_) => Some(get("labels")?),
            Err(_) if m.num_classes.is_some() => {
                return Err(Error::file(
                    path,
                    "shard has no `labels` (the manifest says the store is class-conditional)",
                ))
            }
            Err(_) => None,
        },
    };
    let (lo, hi) = m.shard_range(j);
    let n = (hi - lo) as i64;
    let mt = m.times.len() as i64;
    let mut want_x = vec![n];
    want_x.extend(&m.sample_shape);
    let mut want_t = vec![n, mt];
    want_t.extend(&m.sample_shape);
    let stored = if m.dtype == "f16" {
        Kind::Half
    } else {
        Kind::Float
    };
    let mismatch =
        |what: String| Error::file(path, format!("shard does not match the manifest: {what}"));
    for (name, t, shape, kind) in [
        ("x_T", &shard.x_t, &want_x[..], stored),
        ("targets", &shard.targets, &want_t[..], stored),
        ("lambdas", &shard.lambdas, &[mt][..], Kind::Float),
        ("indices", &shard.indices, &[n][..], Kind::Int64),
    ] {
        if t.size() != shape || t.kind() != kind {
            return Err(mismatch(format!(
                "`{name}` is {:?} {:?}, want {kind:?} {shape:?}",
                t.kind(),
                t.size()
            )));
        }
    }
    let expect = Tensor::arange_start(lo as i64, hi as i64, (Kind::Int64, tch::Device::Cpu));
    if !shard.indices.equal(&expect) {
        return Err(mismatch(format!(
            "`indices` are not the samples {lo}..{hi}"
        )));
    }
    if let (Some(y), Some(want)) = (&shard.labels, m.labels(lo, hi)) {
        if y.size() != [n] || y.kind() != Kind::Int64 {
            return Err(mismatch(format!(
                "`labels` is {:?} {:?}, want Int64 [{n}]",
                y.kind(),
                y.size()
            )));
        }
        if !y.equal(&want) {
            return Err(mismatch(format!(
                "`labels` are not the labels of samples {lo}..{hi} under seed {}{}",
                m.seed,
                m.class
                    .map(|c| format!(" and class {c}"))
                    .unwrap_or_default()
            )));
        }
    }
    Ok(shard)
}

/// Writes a shard atomically (with the checksum of its data in its metadata).
pub fn save_shard(path: &Path, s: &Shard) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = [
        ("indices", &s.indices),
        ("lambdas", &s.lambdas),
        ("targets", &s.targets),
        ("x_T", &s.x_t),
    ]
    .map(|(n, t)| (n.to_string(), t.shallow_clone()))
    .into();
    if let Some(y) = &s.labels {
        tensors.insert(1, ("labels".into(), y.shallow_clone()));
    }
    crate::checkpoint::write_safetensors(path, &tensors, None, Default::default())
}

/// A whole store in memory: `x_T` `[K, …]`, `targets` `[K, M, …]` (float32, CPU).
#[derive(Debug)]
pub struct Store {
    pub manifest: Manifest,
    pub x_t: Tensor,
    pub targets: Tensor,
    /// The class labels `[K]` (int64) of a class-conditional store.
    pub labels: Option<Tensor>,
}

/// Loads every shard of the store in `dir`; a missing or invalid shard is an error naming it.
pub fn load_store(dir: &Path) -> Result<Store> {
    let manifest = Manifest::load(dir)?;
    let sample: f64 = manifest.sample_shape.iter().product::<i64>() as f64;
    let floats = manifest.count as f64 * (manifest.times.len() + 1) as f64 * sample;
    crate::util::memory::check_memory(
        "loading the trajectory store (float32, twice while joined)",
        8.0 * floats,
    )
    .map_err(|e| e.in_file(&dir.join("manifest.json")))?;
    let mut xs = vec![];
    let mut ts = vec![];
    let mut ys = vec![];
    for j in 0..manifest.shards() {
        let s = load_shard(dir, &manifest, j)?;
        xs.push(s.x_t.to_kind(Kind::Float));
        ts.push(s.targets.to_kind(Kind::Float));
        ys.extend(s.labels);
    }
    Ok(Store {
        x_t: Tensor::cat(&xs, 0),
        targets: Tensor::cat(&ts, 0),
        labels: manifest.num_classes.map(|_| Tensor::cat(&ys, 0)),
        manifest,
    })
}

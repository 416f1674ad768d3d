//! The trajectory store (docs/FORMATS.md §5): a folder of shards `traj-00000.safetensors`, … each holding
//! `x_T` `[n, …]`, `targets` `[n, M, …]` (the teacher's x̂ at the M output times), `lambdas`
//! `[M]`, `indices` `[n]` and, in a store of a class-conditional teacher, `labels` `[n]`, plus `manifest.json` (teacher hash, solver, steps, seed, times,
//! shard size, count).
//!
//! This module is the format only: reading and checking shards and the manifest, writing a
//! shard. Making a store is `crate::train::trajectories`.
use crate::error::{check_field, check_range};
use crate::schedule::OutputTimes;
use crate::solver::{check_steps, Solver};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// `manifest.json`. A field this build does not know is refused (an edit or another version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// The teacher checkpoint file's SHA-256 (64 hex digits; stores made before hold an FNV-1a
    /// 64 hash, 16 hex digits).
    pub teacher_hash: String,
    pub dataset: String,
    pub solver: Solver,
    pub steps: usize,
    pub seed: u64,
    /// Output times t_1 > … > t_M.
    pub times: OutputTimes,
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
    pub guidance: Option<crate::denoiser::Guidance>,
}

/// The store format this build writes: every shard carries the manifest it was made under
/// (metadata key [`MANIFEST_KEY`]), so that a manifest edited afterwards is caught.
pub const FORMAT: &str = "dsno-trajectories-2";

/// The format of stores made before shards carried their manifest; still read.
pub const LEGACY_FORMAT: &str = "dsno-trajectories-1";

/// The shard metadata key holding the manifest (its JSON) the shard was made under.
pub const MANIFEST_KEY: &str = "manifest";

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
            self.format == FORMAT || self.format == LEGACY_FORMAT,
            &format!("`{FORMAT}` (or `{LEGACY_FORMAT}`)"),
        )?;
        if self.count == 0 {
            return Err(Error::invalid("the store is empty (field `count` = 0)"));
        }
        check_range("count", self.count, 1, 1_000_000_000_000)?;
        check_range("shard_size", self.shard_size, 1, 100_000_000)?;
        check_steps("steps", self.steps)?;
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
                Ok(())
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
    let bytes = crate::util::fsio::read(&path)?;
    parse_shard(&bytes, &path, m, j)
}

/// Parses the bytes of shard `j` and checks them against the manifest; `path` names it in
/// errors.
pub fn parse_shard(bytes: &[u8], path: &Path, m: &Manifest, j: usize) -> Result<Shard> {
    crate::checkpoint::verify_checksum(bytes, path)?;
    check_made_under(bytes, path, m)?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::file(path, format!("corrupt shard ({e})")))?;
    let get = |name: &str| -> Result<Tensor> {
        let v = st
            .tensor(name)
            .map_err(|_| Error::file(path, format!("shard has no `{name}`")))?;
        crate::util::safetensors::tensor_of(&v, name, path)
    };
    let shard = Shard {
        x_t: get("x_T")?,
        targets: get("targets")?,
        lambdas: {
            // λ is +∞ at an output time where σ = 0 (t = 0 of a linear-β or discrete schedule)
            let v = st
                .tensor("lambdas")
                .map_err(|_| Error::file(path, "shard has no `lambdas`"))?;
            let l = crate::util::safetensors::tensor_of_unchecked(&v, "lambdas", path)?;
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

/// Checks that the shard was made under the manifest `m`: the manifest recorded in the shard
/// must equal it field for field (a store of [`LEGACY_FORMAT`] has none to compare).
fn check_made_under(bytes: &[u8], path: &Path, m: &Manifest) -> Result<()> {
    let (_, md) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("corrupt shard ({e})")))?;
    let recorded = md.metadata().as_ref().and_then(|d| d.get(MANIFEST_KEY));
    let Some(text) = recorded else {
        return match m.format == LEGACY_FORMAT {
            true => Ok(()),
            false => Err(Error::file(
                path,
                format!("the shard does not record the manifest it was made under (a `{FORMAT}` store's shards do)"),
            )),
        };
    };
    let fields = |v: serde_json::Value| match v {
        serde_json::Value::Object(o) => o,
        _ => Default::default(),
    };
    let made = fields(
        serde_json::from_str(text)
            .map_err(|e| Error::file(path, format!("the shard's recorded manifest: {e}")))?,
    );
    let now = fields(serde_json::to_value(m).map_err(|e| Error::invalid(e.to_string()))?);
    let keys: std::collections::BTreeSet<&String> = made.keys().chain(now.keys()).collect();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| made.get(*k) != now.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("(none)".into(), |v| v.to_string());
            format!(
                "`{k}` is {} in manifest.json, {} when the shard was made",
                show(now.get(k)),
                show(made.get(k))
            )
        })
        .collect();
    if !differ.is_empty() {
        return Err(Error::file(
            path,
            format!(
                "the store's manifest.json was changed after this shard was made: {}",
                differ.join("; ")
            ),
        ));
    }
    Ok(())
}

/// Writes shard `s` of the store with manifest `m` atomically (with the checksum of its data
/// and the manifest in its metadata).
pub fn save_shard(path: &Path, s: &Shard, m: &Manifest) -> Result<()> {
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
    let json = serde_json::to_string(m).map_err(|e| Error::invalid(e.to_string()))?;
    let info = std::collections::BTreeMap::from([(MANIFEST_KEY.to_string(), json)]);
    crate::util::safetensors::write(path, &tensors, None, info)
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

/// The order in which distillation visits the training samples `0..n` of a store, a pure
/// function of the seed (and of `n`, the shard size, the buffer and the batch), shared by the
/// in-memory and the streaming readers so that both train on the same batches.
///
/// Epoch e permutes the shards holding training samples with the stream of (seed, e) and cuts
/// that order into buffers of `buffer` shards (0: one buffer of all of them); each buffer's
/// samples are permuted with the stream of (seed′, e·2³² + g) for buffer g; the epoch is the
/// buffers in turn. Batch s is slice s mod E of epoch ⌊s/E⌋, E = ⌊n/batch⌋ (the last partial
/// batch of an epoch is dropped, as [`crate::data::Batches`] does). A reader therefore needs at
/// most the shards of two buffers at a time.
#[derive(Debug)]
pub struct StoreOrder {
    n: usize,
    shard_size: usize,
    buffer: usize,
    batch: usize,
    seed: u64,
    cache: std::cell::RefCell<Option<(u64, EpochOrder)>>,
}

/// One epoch's sequence of sample indices and where each buffer ends in it.
#[derive(Debug, Clone)]
struct EpochOrder {
    sequence: Vec<usize>,
    /// The shards of each buffer, and the position in `sequence` where the buffer ends.
    buffers: Vec<(Vec<usize>, usize)>,
}

impl StoreOrder {
    /// The order of the first `n` samples of a store of shards of `shard_size`, batches of
    /// `batch` (1 ≤ batch ≤ n), shuffled in buffers of `buffer` shards (0: all shards).
    pub fn new(
        n: usize,
        shard_size: usize,
        buffer: usize,
        batch: usize,
        seed: u64,
    ) -> Result<Self> {
        if batch == 0 || batch > n {
            return Err(Error::invalid(format!(
                "batch size {batch} must be in 1..={n} (the training trajectories)"
            )));
        }
        if shard_size == 0 {
            return Err(Error::invalid("shard size 0"));
        }
        Ok(StoreOrder {
            n,
            shard_size,
            buffer,
            batch,
            seed,
            cache: Default::default(),
        })
    }

    /// Batches per epoch.
    pub fn per_epoch(&self) -> usize {
        self.n / self.batch
    }

    fn epoch(&self, e: u64) -> EpochOrder {
        let shards = self.n.div_ceil(self.shard_size);
        let perm = crate::rng::Rng::for_item(self.seed, e).permutation(shards);
        let per = if self.buffer == 0 {
            shards
        } else {
            self.buffer
        };
        let mut x = self.seed ^ 0xB0FF_E125_8D1C_E5EE;
        let buffer_seed = crate::rng::splitmix64(&mut x);
        let mut sequence = Vec::with_capacity(self.n);
        let mut buffers = vec![];
        for (g, group) in perm.chunks(per).enumerate() {
            let items: Vec<usize> = group
                .iter()
                .flat_map(|&j| j * self.shard_size..((j + 1) * self.shard_size).min(self.n))
                .collect();
            let index = (e << 32).wrapping_add(g as u64);
            let p = crate::rng::Rng::for_item(buffer_seed, index).permutation(items.len());
            sequence.extend(p.into_iter().map(|k| items[k]));
            buffers.push((group.to_vec(), sequence.len()));
        }
        EpochOrder { sequence, buffers }
    }

    /// The sample indices of batch `step`, and the shards (of at most two buffers) a reader
    /// needs for it.
    pub fn batch(&self, step: u64) -> (Vec<usize>, Vec<usize>) {
        let per = self.per_epoch().max(1) as u64;
        let (e, k) = (step / per, (step % per) as usize);
        let mut cache = self.cache.borrow_mut();
        if cache.as_ref().map(|c| c.0) != Some(e) {
            *cache = Some((e, self.epoch(e)));
        }
        let order = &cache.as_ref().expect("cached").1;
        let (lo, hi) = (k * self.batch, (k + 1) * self.batch);
        let mut shards = vec![];
        let mut start = 0;
        for (group, end) in &order.buffers {
            if start < hi && lo < *end {
                shards.extend(group.iter().copied());
            }
            start = *end;
        }
        shards.sort_unstable();
        (order.sequence[lo..hi].to_vec(), shards)
    }
}

/// A batch read from a store: x_T `[B, …]`, targets `[B, M, …]` (the stored dtype, CPU) and
/// the labels `[B]` of a class-conditional store.
#[derive(Debug)]
pub struct StoreBatch {
    pub x_t: Tensor,
    pub targets: Tensor,
    pub labels: Option<Tensor>,
}

/// The bytes of a shard's sample data.
fn shard_bytes(s: &Shard) -> usize {
    let b = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
    b(&s.x_t) + b(&s.targets) + s.labels.as_ref().map_or(0, b)
}

/// A trajectory store read on demand: the shards of the buffers the current batch comes from
/// ([`StoreOrder`]) stay in memory in their stored dtype (float16 shards stay float16), every
/// other shard on disk, so host memory is bounded by two buffers of shards, not by the store.
pub struct StreamingStore {
    pub manifest: Manifest,
    dir: PathBuf,
    order: StoreOrder,
    resident: std::cell::RefCell<std::collections::BTreeMap<usize, Shard>>,
    peak: std::cell::Cell<usize>,
    loads: std::cell::Cell<usize>,
}

impl StreamingStore {
    /// Opens the store in `dir` for batches of `batch` from its first `n` samples, shuffled in
    /// buffers of `buffer` shards (≥ 1) with `seed`.
    pub fn open(dir: &Path, n: usize, buffer: usize, batch: usize, seed: u64) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        if buffer == 0 {
            return Err(Error::invalid(
                "streaming needs a shuffle buffer of at least one shard",
            ));
        }
        if n > manifest.count {
            return Err(Error::invalid(format!(
                "{n} training samples of a store of {}",
                manifest.count
            )));
        }
        let order = StoreOrder::new(n, manifest.shard_size, buffer, batch, seed)?;
        Ok(StreamingStore {
            manifest,
            dir: dir.to_path_buf(),
            order,
            resident: Default::default(),
            peak: Default::default(),
            loads: Default::default(),
        })
    }

    /// The most bytes of shard data held at once so far.
    pub fn peak_bytes(&self) -> usize {
        self.peak.get()
    }

    /// Shard files read so far.
    pub fn shard_loads(&self) -> usize {
        self.loads.get()
    }

    /// Makes exactly `shards` resident: drops the others first, then reads the missing ones.
    fn hold(&self, shards: &[usize]) -> Result<()> {
        let mut resident = self.resident.borrow_mut();
        resident.retain(|j, _| shards.contains(j));
        for &j in shards {
            if let std::collections::btree_map::Entry::Vacant(slot) = resident.entry(j) {
                slot.insert(load_shard(&self.dir, &self.manifest, j)?);
                self.loads.set(self.loads.get() + 1);
                let held = resident.values().map(shard_bytes).sum::<usize>();
                self.peak.set(self.peak.get().max(held));
            }
        }
        Ok(())
    }

    /// The samples `items` (in that order) from the resident shards.
    fn gather(&self, items: &[usize]) -> StoreBatch {
        let resident = self.resident.borrow();
        let s = self.manifest.shard_size;
        let (mut xs, mut ts, mut ys, mut placed) = (vec![], vec![], vec![], vec![]);
        for (&j, sh) in resident.iter() {
            let (pos, rows): (Vec<i64>, Vec<i64>) = items
                .iter()
                .enumerate()
                .filter(|(_, &i)| i / s == j)
                .map(|(p, &i)| (p as i64, (i - j * s) as i64))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let idx = Tensor::from_slice(&rows);
            xs.push(sh.x_t.index_select(0, &idx));
            ts.push(sh.targets.index_select(0, &idx));
            ys.extend(sh.labels.as_ref().map(|y| y.index_select(0, &idx)));
            placed.extend(pos);
        }
        // row k of the joined pieces is item placed[k]: put each back in its place
        let mut inverse = vec![0i64; placed.len()];
        for (k, &p) in placed.iter().enumerate() {
            inverse[p as usize] = k as i64;
        }
        let back = Tensor::from_slice(&inverse);
        let join = |v: &[Tensor]| Tensor::cat(v, 0).index_select(0, &back);
        StoreBatch {
            x_t: join(&xs),
            targets: join(&ts),
            labels: self.manifest.num_classes.map(|_| join(&ys)),
        }
    }

    /// The samples `lo..hi` (e.g. the held-out tail), read from their shards.
    pub fn range(&self, lo: usize, hi: usize) -> Result<StoreBatch> {
        let s = self.manifest.shard_size;
        let shards: Vec<usize> = (lo / s..hi.div_ceil(s)).collect();
        self.hold(&shards)?;
        let items: Vec<usize> = (lo..hi).collect();
        Ok(self.gather(&items))
    }

    /// The batch of training step `step` ([`StoreOrder::batch`]).
    pub fn batch(&self, step: u64) -> Result<StoreBatch> {
        let (items, shards) = self.order.batch(step);
        self.hold(&shards)?;
        Ok(self.gather(&items))
    }
}

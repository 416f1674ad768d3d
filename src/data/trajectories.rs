//! The trajectory store (DESIGN.md): a folder of shards `traj-00000.safetensors`, … each holding
//! `x_T` `[n, …]`, `targets` `[n, M, …]` (the teacher's x̂ at the M output times), `lambdas`
//! `[M]` and `indices` `[n]`, plus `manifest.json` (teacher hash, solver, steps, seed, times,
//! shard size, count).
//!
//! Sample i's noise is a pure function of (seed, i) and shard j holds samples
//! `j·S .. min((j+1)·S, K)`, so shards can be made in any order, on any machine (`--shard k/n`
//! makes the shards j ≡ k mod n), and merged by copying files. A run that was killed resumes by
//! keeping every complete, valid shard: a shard that does not load or does not hold what the
//! manifest says is reported by name and regenerated; stray temporary files are overwritten.
use crate::checkpoint::file_hash;
use crate::denoiser::Denoiser;
use crate::fsio::write_atomic;
use crate::model::Teacher;
use crate::rng::noise;
use crate::schedule::{grid_through, Schedule};
use crate::solver::Solver;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

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
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::file(&path, format!("cannot read the trajectory manifest: {e}")))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("bad trajectory manifest: {e}")))
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
}

/// Loads shard `j` and checks it against the manifest.
pub fn load_shard(dir: &Path, m: &Manifest, j: usize) -> Result<Shard> {
    let path = shard_path(dir, j);
    let bytes =
        std::fs::read(&path).map_err(|e| Error::file(&path, format!("cannot read shard: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(&path, format!("corrupt shard ({e})")))?;
    let get = |name: &str| -> Result<Tensor> {
        let v = st
            .tensor(name)
            .map_err(|_| Error::file(&path, format!("shard has no `{name}`")))?;
        crate::checkpoint::tensor_of(&v, name, &path)
    };
    let shard = Shard {
        x_t: get("x_T")?,
        targets: get("targets")?,
        lambdas: get("lambdas")?,
        indices: get("indices")?,
    };
    let (lo, hi) = m.shard_range(j);
    let n = (hi - lo) as i64;
    let mt = m.times.len() as i64;
    let mut want_x = vec![n];
    want_x.extend(&m.sample_shape);
    let mut want_t = vec![n, mt];
    want_t.extend(&m.sample_shape);
    let expect: Vec<i64> = (lo as i64..hi as i64).collect();
    if shard.x_t.size() != want_x
        || shard.targets.size() != want_t
        || shard.lambdas.size() != [mt]
        || Vec::<i64>::try_from(&shard.indices).ok() != Some(expect)
    {
        return Err(Error::file(
            &path,
            format!(
                "shard does not match the manifest: x_T {:?} (want {want_x:?}), targets {:?} (want {want_t:?}), indices of samples {lo}..{hi}",
                shard.x_t.size(),
                shard.targets.size()
            ),
        ));
    }
    Ok(shard)
}

fn save_shard(path: &Path, s: &Shard) -> Result<()> {
    use crate::checkpoint::raw;
    let raws = [
        ("indices", raw(&s.indices, None)?),
        ("lambdas", raw(&s.lambdas, None)?),
        ("targets", raw(&s.targets, None)?),
        ("x_T", raw(&s.x_t, None)?),
    ];
    let bytes = safetensors::serialize(
        raws.iter().map(|(n, r)| (*n, r)),
        None::<HashMap<String, String>>,
    )
    .map_err(|e| Error::file(path, format!("cannot serialise shard: {e}")))?;
    write_atomic(path, &bytes)
}

/// What `dsno trajectories` is asked to do.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub solver: Solver,
    pub steps: usize,
    pub times: Vec<f64>,
    pub count: usize,
    pub seed: u64,
    pub shard_size: usize,
    pub batch: usize,
    pub fp16: bool,
    /// `(k, n)`: make the shards j ≡ k (mod n) only.
    pub part: (usize, usize),
    pub progress: bool,
}

/// The step grid of the trajectory solve: `steps` steps from the schedule's t_max through every
/// output time. DPM-Solver++ on the VP schedules steps uniformly in √t (its time-quadratic
/// spacing, which holds the `quad:M` times exactly when M divides the steps); the others step
/// uniformly in t (the DSNO authors' DDIM).
pub fn trajectory_grid(
    schedule: &Schedule,
    solver: Solver,
    times: &[f64],
    steps: usize,
) -> Result<Vec<f64>> {
    let t_max = schedule.t_range().1;
    if solver == Solver::DpmSolver2M && schedule.is_variance_preserving() {
        let u: Vec<f64> = times.iter().map(|t| t.sqrt()).collect();
        Ok(grid_through(t_max.sqrt(), &u, steps)?
            .into_iter()
            .map(|u| u * u)
            .collect())
    } else {
        grid_through(t_max, times, steps)
    }
}

/// Summary of a generation run.
#[derive(Debug, Clone, Default)]
pub struct GenerateSummary {
    pub made: usize,
    pub kept: usize,
    pub regenerated: Vec<String>,
    pub samples: usize,
    pub nfe_per_sample: usize,
    pub seconds: f64,
}

/// Generates (or completes) the store in `dir` with `teacher` loaded from `teacher_path`.
pub fn generate(
    teacher: &Teacher,
    teacher_path: &Path,
    dir: &Path,
    o: &GenerateOptions,
) -> Result<GenerateSummary> {
    if o.count == 0 {
        return Err(Error::invalid("--count must be at least 1"));
    }
    if o.shard_size == 0 || o.batch == 0 {
        return Err(Error::invalid("shard size and batch must be at least 1"));
    }
    let (k, n) = o.part;
    if n == 0 || k >= n {
        return Err(Error::invalid(format!(
            "--shard {k}/{n}: expected k/n with 0 ≤ k < n"
        )));
    }
    let schedule = teacher.schedule();
    let grid = trajectory_grid(&schedule, o.solver, &o.times, o.steps)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        teacher_hash: file_hash(teacher_path)?,
        dataset: teacher.meta.dataset.clone(),
        solver: o.solver,
        steps: o.steps,
        seed: o.seed,
        times: o.times.clone(),
        count: o.count,
        shard_size: o.shard_size,
        sample_shape: teacher.meta.model.sample_shape(),
        dtype: if o.fp16 { "f16".into() } else { "f32".into() },
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create folder: {e}")))?;
    let mpath = dir.join("manifest.json");
    if mpath.exists() {
        let old = Manifest::load(dir)?;
        if old != manifest {
            return Err(Error::file(
                &mpath,
                format!(
                    "this store was made with other settings; use another --out or the same arguments\n  store:     {}\n  requested: {}",
                    serde_json::to_string(&old).unwrap_or_default(),
                    serde_json::to_string(&manifest).unwrap_or_default()
                ),
            ));
        }
    } else {
        let text =
            serde_json::to_string_pretty(&manifest).map_err(|e| Error::invalid(e.to_string()))?;
        write_atomic(&mpath, text.as_bytes())?;
    }
    let mine: Vec<usize> = (0..manifest.shards()).filter(|j| j % n == k).collect();
    let mut summary = GenerateSummary::default();
    let mut todo = vec![];
    for &j in &mine {
        if shard_path(dir, j).exists() {
            match load_shard(dir, &manifest, j) {
                Ok(_) => {
                    summary.kept += 1;
                    continue;
                }
                Err(e) => {
                    eprintln!("regenerating {}: {e}", shard_path(dir, j).display());
                    summary
                        .regenerated
                        .push(shard_path(dir, j).display().to_string());
                }
            }
        }
        todo.push(j);
    }
    let total: usize = todo
        .iter()
        .map(|&j| manifest.shard_range(j).1 - manifest.shard_range(j).0)
        .sum();
    let bar = crate::train::samples_bar(o.progress, total as u64, "trajectories");
    let t0 = std::time::Instant::now();
    let lambdas = Tensor::from_slice(
        &o.times
            .iter()
            .map(|&t| schedule.lambda(t) as f32)
            .collect::<Vec<_>>(),
    );
    let device = teacher.device();
    let store_kind = if o.fp16 { Kind::Half } else { Kind::Float };
    for j in todo {
        let (lo, hi) = manifest.shard_range(j);
        let mut xs = vec![];
        let mut ts = vec![];
        for b0 in (lo..hi).step_by(o.batch) {
            let b1 = (b0 + o.batch).min(hi);
            let x_t = noise(
                o.seed,
                b0 as u64..b1 as u64,
                &manifest.sample_shape,
                Kind::Float,
                device,
            ) * schedule.sigma(grid[0]);
            let traj =
                o.solver
                    .solve(teacher as &dyn Denoiser, &schedule, &x_t, &grid, &o.times)?;
            summary.nfe_per_sample = traj.nfe;
            xs.push(x_t.to_device(Device::Cpu).to_kind(store_kind));
            ts.push(
                Tensor::stack(&traj.x_hat, 1)
                    .to_device(Device::Cpu)
                    .to_kind(store_kind),
            );
            bar.inc((b1 - b0) as u64);
        }
        let shard = Shard {
            x_t: Tensor::cat(&xs, 0),
            targets: Tensor::cat(&ts, 0),
            lambdas: lambdas.shallow_clone(),
            indices: Tensor::arange_start(lo as i64, hi as i64, (Kind::Int64, Device::Cpu)),
        };
        save_shard(&shard_path(dir, j), &shard)?;
        summary.made += 1;
        summary.samples += hi - lo;
    }
    bar.finish_and_clear();
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// A whole store in memory: `x_T` `[K, …]`, `targets` `[K, M, …]` (float32, CPU).
#[derive(Debug)]
pub struct Store {
    pub manifest: Manifest,
    pub x_t: Tensor,
    pub targets: Tensor,
}

/// Loads every shard of the store in `dir`; a missing or invalid shard is an error naming it.
pub fn load_store(dir: &Path) -> Result<Store> {
    let manifest = Manifest::load(dir)?;
    if manifest.format != FORMAT {
        return Err(Error::file(
            dir.join("manifest.json"),
            format!("unknown store format `{}`", manifest.format),
        ));
    }
    if manifest.count == 0 {
        return Err(Error::file(dir.join("manifest.json"), "the store is empty"));
    }
    let mut xs = vec![];
    let mut ts = vec![];
    for j in 0..manifest.shards() {
        let s = load_shard(dir, &manifest, j)?;
        xs.push(s.x_t.to_kind(Kind::Float));
        ts.push(s.targets.to_kind(Kind::Float));
    }
    Ok(Store {
        x_t: Tensor::cat(&xs, 0),
        targets: Tensor::cat(&ts, 0),
        manifest,
    })
}

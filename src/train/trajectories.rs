//! Trajectory generation: the teacher's ODE solved from seeded noise, written as a store
//! ([`crate::data::store`]). Sample i's noise is a pure function of (seed, i) and shard j holds
//! samples `j·S .. min((j+1)·S, K)`, so shards can be made in any order, on any machine
//! (`part = (k, n)` makes the shards j ≡ k mod n), and merged by copying files. A run that was
//! killed resumes by keeping every complete, valid shard; a shard that does not load or does not
//! hold what the manifest says is reported by name and regenerated.
use crate::checkpoint::file_hash;
use crate::comm::Comm;
use crate::data::store::{load_shard, save_shard, shard_path, Manifest, Shard, FORMAT};
use crate::denoiser::{Denoiser, Guided};
use crate::model::Teacher;
use crate::sampling::{self, Noise};
use crate::schedule::{check_output_times, OutputTimes};
use crate::schedule::{grid_through, Schedule};
use crate::solver::{check_steps, Solver};
use crate::util::fsio::{write_atomic, FolderLock};
use crate::util::progress;
use crate::{Error, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// What `dsno trajectories` is asked to do.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The ODE solver of the teacher's trajectories.
    pub solver: Solver,
    /// Solver steps from t_max to 0, through every output time.
    pub steps: usize,
    /// Output times t_1 > … > t_M.
    pub times: OutputTimes,
    /// Number of trajectories K.
    pub count: usize,
    /// Noise seed: sample i's x_T depends on (seed, i) only.
    pub seed: u64,
    /// Trajectories per shard file.
    pub shard_size: usize,
    /// Samples per solver batch.
    pub batch: usize,
    /// Store x_T and targets as float16.
    pub fp16: bool,
    /// `(k, n)`: make the shards j ≡ k (mod n) only.
    pub part: (usize, usize),
    /// A class-conditional teacher: every sample of this class (else each sample's label is
    /// drawn from (seed, i)).
    pub class: Option<usize>,
    /// A class-conditional teacher: the classifier-free guidance scale w (None: 1, the
    /// conditional model).
    pub guidance: Option<crate::denoiser::Guidance>,
    pub progress: bool,
    /// A data-parallel group: rank r of W makes the shards j ≡ k + n·r (mod n·W) of its `part`
    /// (k, n); rank 0 writes the manifest, the others wait for it, and every rank returns the
    /// whole group's counts.
    pub comm: Comm,
}

impl Default for GenerateOptions {
    /// The defaults of `dsno trajectories` (DPM-Solver++(2M), 32 steps, `quad:4`), with
    /// 1,000 trajectories.
    fn default() -> Self {
        GenerateOptions {
            solver: Solver::DpmSolver2M,
            steps: 32,
            times: OutputTimes::default(),
            count: 1000,
            seed: 0,
            shard_size: 1000,
            batch: 256,
            fp16: false,
            part: (0, 1),
            class: None,
            guidance: None,
            progress: false,
            comm: Comm::single(),
        }
    }
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
    /// Why each regenerated shard was not kept (the error naming its file).
    pub regenerated: Vec<String>,
    pub samples: usize,
    pub nfe_per_sample: usize,
    pub seconds: f64,
    /// The signal that stopped the run after a complete shard (see
    /// [`crate::train::stop_requested`]), if any: the store is valid and a later call
    /// completes it.
    pub stopped: Option<i32>,
}

/// Generates (or completes) the store in `dir` with `teacher` loaded from `teacher_path`.
///
/// A call that fails before the store has a shard leaves `dir` as it found it: the manifest it
/// wrote is removed, and the folder too when the call created it.
pub fn generate(
    teacher: &Teacher,
    teacher_path: &Path,
    dir: &Path,
    o: &GenerateOptions,
) -> Result<GenerateSummary> {
    let existed = dir.exists();
    let comm = &o.comm;
    // one run at a time in a store (the group's rank 0 holds it for the group)
    let lock = match comm.is_main() {
        true => Some(FolderLock::acquire(dir)?),
        false => None,
    };
    let manifest = dir.join("manifest.json");
    let had_manifest = manifest.exists();
    let result = generate_into(teacher, teacher_path, dir, o).and_then(|mut s| {
        // the store is complete when every rank is done; the counts are the group's
        comm.barrier()?;
        let n = comm.sum_u64(&[s.made as u64, s.samples as u64, s.kept as u64])?;
        (s.made, s.samples, s.kept) = (n[0] as usize, n[1] as usize, n[2] as usize);
        Ok(s)
    });
    drop(lock);
    if result.is_err() && !had_manifest && !has_shards(dir) && comm.is_main() {
        let _ = std::fs::remove_file(&manifest);
        if !existed {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

fn has_shards(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("traj-"))
    })
}

fn generate_into(
    teacher: &Teacher,
    teacher_path: &Path,
    dir: &Path,
    o: &GenerateOptions,
) -> Result<GenerateSummary> {
    if o.count == 0 {
        return Err(Error::invalid(
            "the number of trajectories must be at least 1",
        ));
    }
    if o.shard_size == 0 || o.batch == 0 {
        return Err(Error::invalid("shard size and batch must be at least 1"));
    }
    let (k, n) = o.part;
    if n == 0 || k >= n {
        return Err(Error::invalid(format!(
            "part {k} of {n}: expected 0 ≤ k < n"
        )));
    }
    let comm = &o.comm;
    let (k, n) = (k + n * comm.rank(), n * comm.world_size());
    check_steps("steps", o.steps)?;
    check_output_times("output times", &o.times)?;
    let classes = teacher.num_classes().map(|k| k as usize);
    if classes.is_none() && (o.class.is_some() || o.guidance.is_some()) {
        return Err(Error::file(
            teacher_path,
            "this teacher is not class-conditional: a class and a guidance scale do not apply",
        ));
    }
    let schedule = teacher.schedule();
    let grid = trajectory_grid(&schedule, o.solver, &o.times, o.steps)?;
    let sample: f64 = teacher.meta.model.sample_shape().iter().product::<i64>() as f64;
    let bytes =
        o.count as f64 * (o.times.len() + 1) as f64 * sample * if o.fp16 { 2.0 } else { 4.0 };
    crate::util::memory::check_disk("the trajectory store", bytes, dir)?;
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
        num_classes: classes,
        class: o.class,
        guidance: classes.map(|_| o.guidance.unwrap_or_default()),
    };
    manifest.validate()?;
    if comm.is_main() {
        write_manifest(dir, &manifest)?;
    }
    // the other ranks read the manifest that rank 0 wrote (or found)
    comm.barrier()?;
    if !comm.is_main() {
        let old = Manifest::load(dir)?;
        if old != manifest {
            return Err(Error::file(
                dir.join("manifest.json"),
                format!(
                    "rank {}: the store's manifest differs from this rank's settings",
                    comm.rank()
                ),
            ));
        }
    }
    let bar = o.progress && comm.is_main();
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
                Err(e) => summary.regenerated.push(e.to_string()),
            }
        }
        todo.push(j);
    }
    let total: usize = todo
        .iter()
        .map(|&j| manifest.shard_range(j).1 - manifest.shard_range(j).0)
        .sum();
    let bar = progress::samples(bar, total as u64, "trajectories");
    let t0 = std::time::Instant::now();
    let lambdas = Tensor::from_slice(
        &o.times
            .iter()
            .map(|&t| schedule.lambda(t) as f32)
            .collect::<Vec<_>>(),
    );
    let store_kind = if o.fp16 { Kind::Half } else { Kind::Float };
    let noise = Noise {
        seed: o.seed,
        shape: manifest.sample_shape.clone(),
        scale: schedule.sigma(grid[0]),
        kind: Kind::Float,
        device: teacher.device(),
        given: None,
    };
    for j in todo {
        if let Some(sig) = super::stop_requested() {
            summary.stopped = Some(sig);
            break;
        }
        let (lo, hi) = manifest.shard_range(j);
        let labels = manifest.labels(lo, hi);
        let out = sampling::batched(
            &noise,
            lo as u64..hi as u64,
            o.batch,
            |n| bar.inc(n),
            |x_t, items| {
                let guided = match &labels {
                    Some(y) => {
                        let y = y.narrow(0, (items.start as usize - lo) as i64, x_t.size()[0]);
                        let w = manifest.guidance.unwrap_or_default();
                        Some(Guided::new(teacher, y.to_device(x_t.device()), w))
                    }
                    None => None,
                };
                let denoiser: &dyn Denoiser = match &guided {
                    Some(g) => g,
                    None => teacher,
                };
                let traj = o.solver.solve(denoiser, &schedule, x_t, &grid, &o.times)?;
                summary.nfe_per_sample = traj.nfe;
                Ok(vec![x_t.shallow_clone(), Tensor::stack(&traj.x_hat, 1)])
            },
        )?;
        let shard = Shard {
            x_t: out[0].to_kind(store_kind),
            targets: out[1].to_kind(store_kind),
            lambdas: lambdas.shallow_clone(),
            indices: Tensor::arange_start(lo as i64, hi as i64, (Kind::Int64, Device::Cpu)),
            labels,
        };
        save_shard(&shard_path(dir, j), &shard, &manifest)?;
        summary.made += 1;
        summary.samples += hi - lo;
    }
    bar.finish_and_clear();
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// Writes the store's manifest, or checks the one already in `dir` against it.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create folder: {e}")))?;
    let mpath = dir.join("manifest.json");
    if mpath.exists() {
        let old = Manifest::load(dir)?;
        if old != *manifest {
            return Err(Error::file(
                &mpath,
                format!(
                    "this store was made with other settings; use another folder or the same settings\n  store:     {}\n  requested: {}",
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
    Ok(())
}

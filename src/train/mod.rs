//! Training and generation: the shared loop ([`Run`]: seeded steps, Adam with warm-up,
//! clipping, EMA, checkpoints, exact resume, progress bar and CSV log), the teacher's objective
//! ([`teacher`]), distillation into DSNO or KD ([`distill`]), the trajectory store's
//! generation ([`trajectories`]) and the metrics' feature classifier ([`classifier`]).
pub mod classifier;
pub mod distill;
pub mod objective;
pub mod optim;
pub mod teacher;
pub mod trajectories;

use crate::checkpoint::{self, CheckpointMeta, TRAIN_PREFIX};
use crate::comm::Comm;
use crate::device::Precision;
use crate::error::{check_field, check_range};
use crate::rng::splitmix64;
use crate::util::progress;
use crate::{Error, Result};
use optim::{learning_rate, Adam};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Optimisation settings (the `[train]` section of a config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Steps at which the learning rate halves.
    pub lr_halve_at: Vec<u64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub ema_decay: f64,
    /// Maximum global gradient norm (0: no clipping).
    pub grad_clip: f64,
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub seed: u64,
    /// Early stopping (0: off): end the run when this many validations in a row have not
    /// improved the best validation loss by more than `min_delta` (relative). Runs without a
    /// validation loss (teachers) ignore it.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub patience: u64,
    /// The relative improvement that counts for `patience` (0.001: 0.1 %).
    #[serde(
        default = "default_min_delta",
        skip_serializing_if = "is_default_min_delta"
    )]
    pub min_delta: f64,
}

fn is_zero_u64(x: &u64) -> bool {
    *x == 0
}

fn default_min_delta() -> f64 {
    1e-3
}

fn is_default_min_delta(x: &f64) -> bool {
    *x == default_min_delta()
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 64,
            lr: 2e-4,
            warmup: 100,
            lr_halve_at: vec![],
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            ema_decay: 0.999,
            grad_clip: 1.0,
            checkpoint_every: 500,
            log_every: 50,
            seed: 0,
            patience: 0,
            min_delta: default_min_delta(),
        }
    }
}

impl TrainConfig {
    /// Checks every field against its documented range (docs/FORMATS.md §10); `section` is the
    /// TOML table the fields live in, for the error.
    pub fn validate(&self, section: &str) -> Result<()> {
        let f = |name: &str| format!("{section}.{name}");
        check_range(&f("steps"), self.steps, 1, 1_000_000_000)?;
        check_range(&f("batch_size"), self.batch_size, 1, 65_536)?;
        // 0 keeps the weights where they start (a check of an initialisation)
        check_range(&f("lr"), self.lr, 0.0, 1.0)?;
        check_range(&f("warmup"), self.warmup, 0, 1_000_000_000)?;
        for (i, &s) in self.lr_halve_at.iter().enumerate() {
            check_range(&f(&format!("lr_halve_at[{i}]")), s, 1, 1_000_000_000)?;
        }
        let unit = |v: f64| (0.0..1.0).contains(&v);
        check_field(&f("beta1"), self.beta1, unit(self.beta1), "in [0, 1)")?;
        check_field(&f("beta2"), self.beta2, unit(self.beta2), "in [0, 1)")?;
        check_field(
            &f("eps"),
            self.eps,
            self.eps > 0.0 && self.eps <= 1.0,
            "in (0, 1]",
        )?;
        check_field(
            &f("ema_decay"),
            self.ema_decay,
            unit(self.ema_decay),
            "in [0, 1)",
        )?;
        check_range(&f("grad_clip"), self.grad_clip, 0.0, 1e6)?;
        check_range(
            &f("checkpoint_every"),
            self.checkpoint_every,
            1,
            1_000_000_000,
        )?;
        check_range(&f("log_every"), self.log_every, 1, 1_000_000_000)?;
        check_range(&f("patience"), self.patience, 0, 1_000_000_000)?;
        check_field(
            &f("min_delta"),
            self.min_delta,
            (0.0..1.0).contains(&self.min_delta),
            "in [0, 1)",
        )
    }
}

pub use crate::util::signal::{install_stop_handler, stop_requested};

/// The EMA decay at 0-based `step`: `min(decay, (1 + step)/(10 + step))`, so that the average
/// forgets the random initialisation quickly in short runs (the warm-up of TensorFlow's
/// `ExponentialMovingAverage` with `num_updates`).
pub fn ema_decay(decay: f64, step: u64) -> f64 {
    decay.min((1 + step) as f64 / (10 + step) as f64)
}

/// The seed of training step `step`: every random draw of a step (noise, times, dropout) comes
/// from `tch::manual_seed(step_seed(seed, step))`, so a resumed run repeats them exactly.
pub fn step_seed(seed: u64, step: u64) -> i64 {
    let mut x = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (splitmix64(&mut x) >> 1) as i64
}

/// The files of a training run in its output folder.
#[derive(Debug, Clone)]
pub struct RunFiles {
    pub dir: PathBuf,
}

impl RunFiles {
    /// The training checkpoint (weights, EMA, optimiser state).
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("ckpt.safetensors")
    }
    /// The model to use: EMA weights only.
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.csv")
    }
    /// The run's files: checkpoint, model, log.
    pub fn all(&self) -> [PathBuf; 3] {
        [self.checkpoint(), self.model(), self.log()]
    }
    /// Where a file of a run being overwritten waits (`.<name>.old`) until the new run has its
    /// first checkpoint.
    pub fn aside(file: &Path) -> PathBuf {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        file.with_file_name(format!(".{name}.old"))
    }

    /// Moves the run in the folder aside (an overwrite starts).
    fn move_aside(&self) -> Result<()> {
        for f in self.all().iter().filter(|f| f.exists()) {
            let a = Self::aside(f);
            std::fs::rename(f, &a)
                .map_err(|e| Error::file(f, format!("cannot move the old run aside: {e}")))?;
        }
        Ok(())
    }

    /// Puts a run that was moved aside back in place of what a failed overwrite left.
    fn put_back(&self) {
        for f in self.all() {
            let a = Self::aside(&f);
            if a.exists() {
                let _ = std::fs::rename(&a, &f);
            } else {
                let _ = std::fs::remove_file(&f);
            }
        }
    }

    /// Deletes the run that was moved aside (the new one has a checkpoint).
    fn drop_aside(&self) {
        for f in self.all() {
            let _ = std::fs::remove_file(Self::aside(&f));
        }
    }

    /// Settles what an overwrite that was killed left: the old run comes back when the new
    /// one had no checkpoint yet, and goes when it had.
    fn settle_aside(&self) {
        if Self::aside(&self.checkpoint()).exists() || Self::aside(&self.model()).exists() {
            match self.checkpoint().exists() {
                true => self.drop_aside(),
                false => self.put_back(),
            }
        }
    }
}

/// Where a training run writes, whether it continues, where it computes and whether it draws
/// a progress bar.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output folder: `ckpt.safetensors` (training state), `model.safetensors` (EMA weights),
    /// `log.csv`.
    pub out: PathBuf,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Replace a run already in `out` (without it, a fresh run there is refused).
    pub overwrite: bool,
    pub device: Device,
    pub progress: bool,
    /// The data-parallel group (a single process by default): each rank computes its part of
    /// every global batch, gradients are averaged before the update, rank 0 alone writes.
    pub comm: Comm,
    /// fp32, tf32 or bf16 autocast ([`Precision`]).
    pub precision: Precision,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            out: PathBuf::from("runs/run"),
            resume: false,
            overwrite: false,
            device: Device::Cpu,
            progress: false,
            comm: Comm::single(),
            precision: Precision::Fp32,
        }
    }
}

/// What one step's objective returns: the loss to minimise and extra columns for the log, as
/// tensors on the training device (scalars or 1-D, one value per column, concatenated in
/// order); the run reads them on the host only when it logs.
pub struct StepLoss {
    pub loss: Tensor,
    pub extra: Vec<Tensor>,
}

/// A training run over the trainable variables of `vs`.
pub struct Run<'a> {
    pub vs: &'a nn::VarStore,
    pub train: &'a TrainConfig,
    pub files: RunFiles,
    /// Template of the checkpoint metadata (its `step` is filled in); its `train` field holds
    /// the full run configuration, compared on resume.
    pub meta: CheckpointMeta,
    /// Names of the extra log columns.
    pub extra_columns: Vec<String>,
    /// Samples per step (for the images/s readout).
    pub samples_per_step: usize,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Replace a run already in the folder (when not resuming).
    pub overwrite: bool,
    /// The data-parallel group: the objective returns the loss of this rank's part of the
    /// batch ([`Comm::part`]); the run averages gradients and logged values over the ranks.
    pub comm: Comm,
    /// The extra column that holds the validation loss, for `train.patience`.
    pub monitor: Option<String>,
    /// How the objective computes: it runs inside [`Precision::autocast`]; TF32 is set for the
    /// run (and put back after it).
    pub precision: Precision,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub start_step: u64,
    pub end_step: u64,
    pub last_loss: f64,
    pub seconds: f64,
    /// The signal (SIGINT 2, SIGTERM 15) that stopped the run before its last step, if any.
    pub stopped: Option<i32>,
    /// The run ended before `train.steps` because its validation loss stopped improving
    /// (`train.patience`); `end_step` is where.
    pub plateaued: bool,
}

/// Early stopping on a validation loss ([`TrainConfig::patience`]).
#[derive(Debug, Clone)]
pub struct Plateau {
    patience: u64,
    min_delta: f64,
    best: f64,
    /// Validations in a row without an improvement.
    pub waited: u64,
}

impl Plateau {
    pub fn new(patience: u64, min_delta: f64) -> Self {
        Plateau {
            patience,
            min_delta,
            best: f64::INFINITY,
            waited: 0,
        }
    }

    /// Records a validation loss (non-finite values are not validations); true when the run
    /// should stop.
    pub fn observe(&mut self, loss: f64) -> bool {
        if !loss.is_finite() {
            return false;
        }
        if self.best.is_infinite() || loss < self.best - self.min_delta * self.best.abs() {
            self.best = loss;
            self.waited = 0;
        } else {
            self.waited += 1;
        }
        self.patience > 0 && self.waited >= self.patience
    }

    pub fn best(&self) -> f64 {
        self.best
    }
}

impl<'a> Run<'a> {
    /// A run over `vs` with the optimisation settings `train`, writing where `opts` says.
    pub fn new(
        vs: &'a nn::VarStore,
        train: &'a TrainConfig,
        opts: &RunOptions,
        meta: CheckpointMeta,
        extra_columns: Vec<String>,
    ) -> Self {
        Run {
            vs,
            train,
            files: RunFiles {
                dir: opts.out.clone(),
            },
            meta,
            extra_columns,
            samples_per_step: train.batch_size,
            progress: opts.progress && opts.comm.is_main(),
            overwrite: opts.overwrite,
            comm: opts.comm.clone(),
            monitor: None,
            precision: opts.precision,
        }
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Writes the checkpoint and the model (rank 0 only; the others hold the same state).
    fn save(&self, step: u64, adam: &Adam) -> Result<()> {
        if !self.comm.is_main() {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.step = step;
        let mut tensors: Vec<(String, Tensor)> = vec![];
        let mut model: Vec<(String, Tensor)> = vec![];
        let (m, v, ema) = (
            adam.split(&adam.m),
            adam.split(&adam.v),
            adam.split(&adam.ema),
        );
        for (i, (name, p)) in adam.params.iter().enumerate() {
            model.push((name.clone(), ema[i].shallow_clone()));
            tensors.push((format!("{TRAIN_PREFIX}params/{name}"), p.shallow_clone()));
            tensors.push((format!("{TRAIN_PREFIX}adam_m/{name}"), m[i].shallow_clone()));
            tensors.push((format!("{TRAIN_PREFIX}adam_v/{name}"), v[i].shallow_clone()));
        }
        // non-trainable variables (none today) travel as they are
        for (name, t) in checkpoint::named(self.vs, "") {
            if !t.requires_grad() {
                model.push((name, t));
            }
        }
        tensors.extend(model.iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
        checkpoint::save(&self.files.checkpoint(), &meta, &tensors, None)?;
        checkpoint::save(&self.files.model(), &meta, &model, None)?;
        // an overwritten run is gone once the new one has its checkpoint
        self.files.drop_aside();
        Ok(())
    }

    /// Restores parameters, optimiser state and EMA from the run's checkpoint; returns its step.
    fn restore(&self, adam: &mut Adam) -> Result<u64> {
        let path = self.files.checkpoint();
        let ck = checkpoint::load(&path)?;
        let mine = self.meta.train.clone().map(|v| strip_unresumable(&v));
        let theirs = ck.meta.train.clone().map(|v| strip_unresumable(&v));
        if ck.meta.model != self.meta.model || ck.meta.kind != self.meta.kind || mine != theirs {
            return Err(Error::file(
                &path,
                format!(
                    "cannot resume: the checkpoint was trained with a different configuration\n  checkpoint: {}\n  requested:  {}",
                    serde_json::to_string(&(&ck.meta.model, &theirs)).unwrap_or_default(),
                    serde_json::to_string(&(&self.meta.model, &mine)).unwrap_or_default()
                ),
            ));
        }
        let _g = tch::no_grad_guard();
        let get = |key: String| -> Result<&Tensor> {
            ck.tensors
                .get(&key)
                .ok_or_else(|| Error::file(&path, format!("missing tensor `{key}`")))
        };
        let (m, v, ema) = (
            adam.split(&adam.m),
            adam.split(&adam.v),
            adam.split(&adam.ema),
        );
        for (i, (name, p)) in adam.params.iter_mut().enumerate() {
            let sources = [
                (format!("{TRAIN_PREFIX}params/{name}"), p.shallow_clone()),
                (format!("{TRAIN_PREFIX}adam_m/{name}"), m[i].shallow_clone()),
                (format!("{TRAIN_PREFIX}adam_v/{name}"), v[i].shallow_clone()),
                (name.clone(), ema[i].shallow_clone()),
            ];
            for (key, mut dst) in sources {
                let src = get(key.clone())?;
                if src.size() != dst.size() || !src.is_floating_point() {
                    return Err(Error::file(
                        &path,
                        format!(
                            "tensor `{key}`: {:?} {:?}, the model has {:?} {:?}",
                            src.kind(),
                            src.size(),
                            dst.kind(),
                            dst.size()
                        ),
                    ));
                }
                dst.f_copy_(&src.to_kind(dst.kind()).to_device(dst.device()))?;
            }
        }
        Ok(ck.meta.step)
    }

    /// The error of a run whose loss was not finite at `step`.
    fn non_finite(&self, loss: f64, step: u64, saved: Option<u64>) -> Error {
        let last = match saved {
            Some(s) => format!(
                "the last good checkpoint is {} (step {s})",
                self.files.checkpoint().display()
            ),
            None => "no checkpoint was written".into(),
        };
        Error::invalid(format!(
            "loss is {loss} at step {step}: training stopped; {last}"
        ))
    }

    /// Trains from step 0 (or, with `resume`, from the run's checkpoint) to `train.steps`,
    /// calling `objective(step)` for each step's loss.
    ///
    /// A non-finite loss stops the run with an error at the next log row, checkpoint or stop
    /// (the host does not wait for every step's loss), before anything is written: the last
    /// checkpoint on disk stays the last good one, and the error names the first bad step.
    ///
    /// A fresh run (not `resume`) refuses a folder that already holds a run unless the options
    /// said `overwrite`; a fresh run that fails before its first checkpoint removes what it
    /// wrote, leaving the folder as it found it.
    pub fn run(
        &self,
        resume: bool,
        objective: impl FnMut(u64) -> Result<StepLoss>,
    ) -> Result<Summary> {
        self.train.validate("train")?;
        let dir = &self.files.dir;
        let existed = dir.exists();
        // the first folder of `dir`'s path that this run creates, if any
        let first_new = (!existed).then(|| {
            let mut d = dir.as_path();
            while let Some(p) = d
                .parent()
                .filter(|p| !p.as_os_str().is_empty() && !p.exists())
            {
                d = p;
            }
            d.to_path_buf()
        });
        // one run at a time in a folder (the group's rank 0 holds it for the group)
        let lock = match self.comm.is_main() {
            true => Some(crate::util::fsio::FolderLock::acquire(dir)?),
            false => None,
        };
        if self.comm.is_main() {
            self.files.settle_aside();
        }
        if !resume && !self.overwrite {
            for f in [self.files.model(), self.files.checkpoint()] {
                if f.exists() {
                    return Err(Error::file(
                        dir,
                        format!(
                            "already holds a run ({}): resume it, or ask to overwrite it",
                            f.display()
                        ),
                    ));
                }
            }
        }
        // what a fresh run that fails before its first checkpoint puts back: the run it
        // overwrites is moved aside until its first checkpoint, a log alone is kept in memory
        let overwriting = !resume
            && self.comm.is_main()
            && (self.files.checkpoint().exists() || self.files.model().exists());
        if overwriting {
            self.files.move_aside()?;
        }
        let old_log = std::fs::read(self.files.log()).ok();
        let mut saved = None;
        let tf32 = crate::device::tf32();
        self.precision.apply();
        let result = self.steps(resume, objective, &mut saved);
        crate::device::set_tf32(tf32);
        drop(lock);
        if result.is_err() && !resume && saved.is_none() && self.comm.is_main() {
            match old_log {
                _ if overwriting => self.files.put_back(),
                Some(bytes) => {
                    let _ = crate::util::fsio::write_atomic(&self.files.log(), &bytes);
                }
                None => {
                    let _ = std::fs::remove_file(self.files.log());
                }
            }
            if let Some(d) = first_new {
                // only folders this run created, and only while empty
                let mut p = dir.as_path();
                while std::fs::remove_dir(p).is_ok() && p != d {
                    match p.parent() {
                        Some(q) => p = q,
                        None => break,
                    }
                }
            }
        }
        result
    }

    /// The steps of [`Run::run`]; `saved` is the step of the last checkpoint on disk.
    ///
    /// Each step runs the objective and the optimiser without reading the device
    /// ([`Tally`]); the host reads it only at a boundary ([`Run::boundary`]: a log row, a
    /// checkpoint or a stop).
    fn steps(
        &self,
        resume: bool,
        mut objective: impl FnMut(u64) -> Result<StepLoss>,
        saved: &mut Option<u64>,
    ) -> Result<Summary> {
        let cfg = self.train;
        let comm = &self.comm;
        if comm.is_main() {
            std::fs::create_dir_all(&self.files.dir).map_err(|e| {
                Error::file(&self.files.dir, format!("cannot create output folder: {e}"))
            })?;
        }
        let params = self.params();
        if params.is_empty() {
            return Err(Error::invalid("no trainable parameters"));
        }
        // every rank starts from rank 0's weights
        comm.broadcast_vars(self.vs, 0)?;
        let mut adam = Adam::new(params, cfg.beta1, cfg.beta2, cfg.eps);
        let start = self.start(resume, &mut adam, saved)?;
        let mut at = Boundary {
            log: match comm.is_main() {
                true => Some(CsvLog::open(
                    &self.files.log(),
                    &self.extra_columns,
                    start,
                    resume,
                )?),
                false => None,
            },
            monitor: self
                .monitor
                .as_ref()
                .and_then(|m| self.extra_columns.iter().position(|c| c == m)),
            plateau: Plateau::new(cfg.patience, cfg.min_delta),
            bar: progress::steps(self.progress, start, cfg.steps),
            window: (Instant::now(), 0),
            last_loss: f64::NAN,
            start,
            t0: Instant::now(),
        };
        if resume && self.replay_validations(&mut at) {
            // it had stopped improving before: nothing more to train
            at.bar.finish_and_clear();
            comm.barrier()?;
            return Ok(at.summary(start, None, true));
        }
        let device = self.vs.device();
        let mut tally = Tally::new(device);
        for step in start..cfg.steps {
            tch::manual_seed(step_seed(cfg.seed, step));
            let StepLoss { loss, extra } = {
                let _amp = self.precision.autocast(device);
                objective(step)?
            };
            // the loss, a stop request and the log columns, averaged over the ranks: every rank
            // stops (or fails) at the same step
            let stop_here = stop_requested().map_or(0.0, f64::from);
            let mut row = vec![
                loss.detach().reshape([1]).to_kind(Kind::Double),
                Tensor::full([1], stop_here, (Kind::Double, device)),
            ];
            row.extend(extra.iter().map(|e| e.reshape([-1]).to_kind(Kind::Double)));
            let mut row = Tensor::cat(&row, 0);
            comm.all_reduce_mean_(&mut row)?;
            tally.record(&row, step);
            adam.zero_grad();
            loss.backward();
            let lr = learning_rate(cfg.lr, cfg.warmup, &cfg.lr_halve_at, step);
            let decay = ema_decay(cfg.ema_decay, step);
            let gnorm = adam.step(lr, step + 1, cfg.grad_clip, decay, comm)?;
            at.window.1 += self.samples_per_step;
            let stop = match comm.world_size() {
                1 => stop_requested(),
                // one read per step, for the ranks to agree on stopping
                _ => (row.double_value(&[1]) > 0.0).then(|| stop_requested().unwrap_or(15)),
            };
            let reached = Reached {
                done: step + 1,
                row: &row,
                lr,
                gnorm: &gnorm,
                stop,
            };
            if let Some(end) = self.boundary(&mut at, &reached, &tally, &adam, saved)? {
                return Ok(end);
            }
        }
        at.bar.finish();
        if start >= cfg.steps {
            // nothing to do, but make sure the model file exists
            self.save(start, &adam)?;
            *saved = Some(start);
        }
        // the ranks leave together, after rank 0's last checkpoint
        comm.barrier()?;
        Ok(at.summary(cfg.steps.max(start), None, false))
    }

    /// The step to start from: 0, or the checkpoint's step on resume (the optimiser's state
    /// restored and given to every rank).
    fn start(&self, resume: bool, adam: &mut Adam, saved: &mut Option<u64>) -> Result<u64> {
        if !resume {
            return Ok(0);
        }
        if !self.files.checkpoint().exists() {
            return Err(Error::file(
                self.files.checkpoint(),
                "resuming was asked for, but there is no checkpoint to resume",
            ));
        }
        let step = self.restore(adam)?;
        adam.broadcast(&self.comm, 0)?;
        *saved = Some(step);
        Ok(step)
    }

    /// Early stopping on resume: the monitored validations before the checkpoint, as the log
    /// holds them, fed to the plateau; true when it had stopped improving before.
    fn replay_validations(&self, at: &mut Boundary) -> bool {
        let Some(i) = at.monitor else {
            return false;
        };
        let mut done = false;
        for v in log_column(&self.files.log(), CsvLog::COLUMNS.len() + i, at.start) {
            done = at.plateau.observe(v);
        }
        done
    }

    /// What happens after a step: at a log row, a checkpoint or a stop, the host reads the
    /// device (a non-finite loss since the last boundary fails the run before anything is
    /// written), logs, watches the plateau, saves; `Some` when the run ends here.
    fn boundary(
        &self,
        at: &mut Boundary,
        r: &Reached,
        tally: &Tally,
        adam: &Adam,
        saved: &mut Option<u64>,
    ) -> Result<Option<Summary>> {
        let cfg = self.train;
        let done = r.done;
        let log_now = done.is_multiple_of(cfg.log_every.max(1)) || done == cfg.steps;
        let save_now = done.is_multiple_of(cfg.checkpoint_every.max(1)) || done == cfg.steps;
        if !(log_now || save_now || r.stop.is_some()) {
            at.bar.inc(1);
            return Ok(None);
        }
        if let Some((step, v)) = tally.first_non_finite() {
            at.bar.abandon();
            return Err(self.non_finite(v, step, *saved));
        }
        let host = Vec::<f64>::try_from(&r.row.to_device(tch::Device::Cpu))?;
        let (lv, extra) = (host[0], &host[2..]);
        at.last_loss = lv;
        let mut plateaued = false;
        if log_now {
            let gnorm = r.gnorm.double_value(&[]);
            let rate = at.window.1 as f64 / at.window.0.elapsed().as_secs_f64().max(1e-9);
            at.window = (Instant::now(), 0);
            if let Some(log) = &mut at.log {
                log.row(done, lv, r.lr, gnorm, rate, extra)?;
            }
            at.bar
                .set_message(format!("loss {lv:.4} | {rate:.0} samples/s"));
            plateaued = at.monitor.is_some_and(|i| at.plateau.observe(extra[i]));
        }
        if plateaued {
            at.bar.set_message(format!(
                "validation loss {:.4e} not improved in {} validations",
                at.plateau.best(),
                at.plateau.waited
            ));
        }
        let stop_now = r.stop.is_some() || plateaued;
        if save_now || stop_now {
            self.save(done, adam)?;
            *saved = Some(done);
        }
        at.bar.inc(1);
        if !stop_now {
            return Ok(None);
        }
        at.bar.abandon();
        self.comm.barrier()?;
        Ok(Some(at.summary(done, r.stop, plateaued)))
    }
}

/// The state of a run's boundaries (log, plateau, progress, throughput window).
struct Boundary {
    log: Option<CsvLog>,
    /// The extra column the plateau watches.
    monitor: Option<usize>,
    plateau: Plateau,
    bar: indicatif::ProgressBar,
    /// Since the last log row: (its time, samples trained).
    window: (Instant, usize),
    last_loss: f64,
    start: u64,
    t0: Instant,
}

impl Boundary {
    fn summary(&self, end_step: u64, stopped: Option<i32>, plateaued: bool) -> Summary {
        Summary {
            start_step: self.start,
            end_step,
            last_loss: self.last_loss,
            seconds: self.t0.elapsed().as_secs_f64(),
            stopped,
            plateaued,
        }
    }
}

/// What a step left for its boundary.
struct Reached<'a> {
    /// Steps done.
    done: u64,
    /// The rank-averaged row: loss, stop request, extra columns (on the device).
    row: &'a Tensor,
    lr: f64,
    gnorm: &'a Tensor,
    stop: Option<i32>,
}

/// A non-finite loss remembered on the device without reading it: the first step that had one
/// and its value.
struct Tally {
    first_bad: Tensor,
    bad_loss: Tensor,
}

impl Tally {
    fn new(device: tch::Device) -> Self {
        Tally {
            first_bad: Tensor::full([1], -1i64, (Kind::Int64, device)),
            bad_loss: Tensor::zeros([1], (Kind::Double, device)),
        }
    }

    /// Notes the loss (the row's first value) of `step`, on the device.
    fn record(&mut self, row: &Tensor, step: u64) {
        let bad = row
            .narrow(0, 0, 1)
            .isfinite()
            .logical_not()
            .logical_and(&self.first_bad.lt(0));
        let good = bad.logical_not();
        self.first_bad = self
            .first_bad
            .where_self(&good, &self.first_bad.full_like(step as i64));
        self.bad_loss = self.bad_loss.where_self(&good, &row.narrow(0, 0, 1));
    }

    /// The first step with a non-finite loss and that loss (reads the device).
    fn first_non_finite(&self) -> Option<(u64, f64)> {
        let bad = self.first_bad.int64_value(&[0]);
        (bad >= 0).then(|| (bad as u64, self.bad_loss.double_value(&[0])))
    }
}

/// The run configuration without the settings that may change on resume (the length of the
/// run, when it stops early, how often it logs or saves): those keys of every `train` table, at
/// any depth.
fn strip_unresumable(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    fn strip(v: &mut serde_json::Value) {
        if let Some(o) = v.as_object_mut() {
            if let Some(t) = o.get_mut("train").and_then(|t| t.as_object_mut()) {
                for k in [
                    "steps",
                    "checkpoint_every",
                    "log_every",
                    "patience",
                    "min_delta",
                ] {
                    t.remove(k);
                }
            }
            o.values_mut().for_each(strip);
        }
    }
    strip(&mut v);
    v
}

/// The finite values of column `col` (0-based) of the log's rows up to step `upto`.
fn log_column(path: &Path, col: usize, upto: u64) -> Vec<f64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let step = f.first()?.parse::<u64>().ok()?;
            let v = f.get(col)?.parse::<f64>().ok()?;
            (step <= upto && v.is_finite()).then_some(v)
        })
        .collect()
}

/// The CSV log: `step,loss,lr,grad_norm,samples_per_s,<extra…>`. On resume, rows past the
/// checkpoint's step are dropped first, so the log matches an uninterrupted run.
struct CsvLog {
    file: std::fs::File,
}

impl CsvLog {
    /// The columns of every row before the objective's own (those of [`CsvLog::row`]).
    const COLUMNS: [&'static str; 5] = ["step", "loss", "lr", "grad_norm", "samples_per_s"];

    fn open(path: &Path, extra: &[String], start: u64, resume: bool) -> Result<Self> {
        let header = Self::COLUMNS
            .iter()
            .map(|c| c.to_string())
            .chain(extra.iter().cloned())
            .collect::<Vec<_>>()
            .join(",");
        let mut lines = vec![header];
        if resume {
            if let Ok(text) = std::fs::read_to_string(path) {
                lines.extend(
                    text.lines()
                        .skip(1)
                        .filter(|l| {
                            l.split(',')
                                .next()
                                .and_then(|s| s.parse::<u64>().ok())
                                .is_some_and(|s| s <= start)
                        })
                        .map(String::from),
                );
            }
        }
        let mut body = lines.join("\n");
        body.push('\n');
        crate::util::fsio::write_atomic(path, body.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::file(path, format!("cannot open log: {e}")))?;
        Ok(CsvLog { file })
    }

    fn row(
        &mut self,
        step: u64,
        loss: f64,
        lr: f64,
        gnorm: f64,
        rate: f64,
        extra: &[f64],
    ) -> Result<()> {
        let extra: String = extra.iter().map(|v| format!(",{v:.6e}")).collect();
        writeln!(
            self.file,
            "{step},{loss:.6e},{lr:.3e},{gnorm:.4e},{rate:.1}{extra}"
        )
        .map_err(|e| Error::invalid(format!("cannot write the training log: {e}")))
    }
}

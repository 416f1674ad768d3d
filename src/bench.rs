//! `dsno bench engine`: forward and training-step time of the U-Net and of the DSNO operator,
//! with images/s and achieved GFLOP/s, optionally against the plain PyTorch reference
//! (`bench/reference.py`) measured in the same run. `dsno bench comm`: the data-parallel
//! step's gradient all-reduce over the c10d group, against the step it serves.
use crate::nn::timeconv::DftPath;
use crate::nn::ModelConfig;
use crate::operator::{Operator, OperatorConfig};
use crate::schedule::Schedule;
use crate::train::optim::Adam;
use crate::{Error, Result};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct Timing {
    pub name: String,
    pub forward_ms: f64,
    pub train_ms: f64,
    /// Images per forward pass (for the operator: each image yields M outputs).
    pub batch: i64,
    /// FLOPs of one forward pass of the whole batch.
    pub flops: f64,
}

impl Timing {
    pub fn row(&self) -> String {
        let fwd_gflops = self.flops / (self.forward_ms * 1e6);
        let train_gflops = 3.0 * self.flops / (self.train_ms * 1e6);
        format!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} |",
            self.name,
            self.forward_ms,
            self.train_ms,
            self.batch as f64 / (self.forward_ms / 1e3),
            self.batch as f64 / (self.train_ms / 1e3),
            fwd_gflops,
            train_gflops
        )
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median wall time in milliseconds of `iters` calls after one warm-up call.
pub fn median_ms(iters: usize, device: Device, mut f: impl FnMut()) -> f64 {
    f();
    sync(device);
    let mut v: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            sync(device);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn measure(
    vs: &nn::VarStore,
    iters: usize,
    device: Device,
    mut run: impl FnMut(bool) -> Result<Tensor>,
) -> Result<(f64, f64)> {
    // one untimed pass: its error, if any, is the benchmark's (the timed ones repeat it)
    drop(run(false)?);
    let forward_ms = median_ms(iters, device, || {
        let _g = tch::no_grad_guard();
        let _ = run(false);
    });
    let params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let mut adam = Adam::new(params, 0.9, 0.999, 1e-8);
    let mut t = 0u64;
    let train_ms = median_ms(iters, device, || {
        adam.zero_grad();
        if let Ok(y) = run(true) {
            y.square().mean(Kind::Float).backward();
        }
        t += 1;
        let _ = adam.step(1e-4, t, 1.0, 0.999, &crate::comm::Comm::single());
    });
    Ok((forward_ms, train_ms))
}

/// What to measure: batch size, operator slots M, TimeConv modes, timed iterations, device.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub batch: i64,
    pub slots: i64,
    pub modes: i64,
    pub iters: usize,
    pub device: Device,
}

/// Times the backbone `model` and the operator over it.
pub fn engine(model: &ModelConfig, spec: Spec) -> Result<Vec<Timing>> {
    let Spec {
        batch,
        slots,
        modes,
        iters,
        device,
    } = spec;
    if batch < 1 || slots < 1 {
        return Err(Error::invalid("bench: batch and slots must be at least 1"));
    }
    let mut shape = vec![batch];
    shape.extend(model.sample_shape());
    tch::manual_seed(0);
    let x = Tensor::randn(shape.as_slice(), (Kind::Float, device));
    let t_in = Tensor::rand([batch], (Kind::Float, device));
    let mut out = vec![];

    let vs = nn::VarStore::new(device);
    let net = model.build(&vs.root())?;
    let (f, tr) = measure(&vs, iters, device, |train| {
        net.forward(&x, &t_in, None, train)
    })?;
    out.push(Timing {
        name: "backbone".into(),
        forward_ms: f,
        train_ms: tr,
        batch,
        flops: batch as f64 * net.flops_per_sample(),
    });

    let vs = nn::VarStore::new(device);
    let mut op = operator(&vs, model, slots, modes)?;
    for (path, name) in [
        (DftPath::Matmul, "matmul DFT"),
        (DftPath::Fft, "rfft"),
        (DftPath::Dense, "dense map"),
    ] {
        op.set_dft_path(path);
        let (f, tr) = measure(&vs, iters, device, |train| op.forward(&x, None, train))?;
        out.push(Timing {
            name: format!("operator M={slots} ({name})"),
            forward_ms: f,
            train_ms: tr,
            batch,
            flops: batch as f64 * op.flops_per_sample(),
        });
    }
    Ok(out)
}

/// The DSNO operator over `model` with `slots` output times (uniform in t) and `modes`.
fn operator(vs: &nn::VarStore, model: &ModelConfig, slots: i64, modes: i64) -> Result<Operator> {
    let times: Vec<f64> = (0..slots)
        .map(|m| (slots - 1 - m) as f64 / slots as f64)
        .collect();
    let cfg = OperatorConfig {
        backbone: model.clone(),
        times: crate::schedule::OutputTimes::new(times)?,
        modes,
    };
    Operator::new(&vs.root(), &cfg, Schedule::vp_cosine())
}

/// What `dsno bench comm` measured on one rank.
#[derive(Debug, Clone)]
pub struct CommTiming {
    pub world: usize,
    pub backend: &'static str,
    /// Gradient elements (float32) averaged per step: the operator's trainable parameters.
    pub elems: i64,
    /// Median time of the gradient all-reduce (in buckets, as training does it).
    pub all_reduce_ms: f64,
    /// Median time of one operator training step on this rank's part of the batch (forward,
    /// backward, Adam), without the all-reduce.
    pub step_ms: f64,
    /// Images per rank per step.
    pub batch: i64,
}

impl CommTiming {
    /// The gradient's bytes.
    pub fn bytes(&self) -> f64 {
        self.elems as f64 * 4.0
    }
    /// Algorithm bandwidth: bytes / time, GB/s.
    pub fn algbw(&self) -> f64 {
        self.bytes() / (self.all_reduce_ms * 1e6)
    }
    /// Bus bandwidth (nccl-tests' definition for all-reduce): algbw · 2(W − 1)/W, the rate each
    /// link carries in a ring; 0 for one rank.
    pub fn busbw(&self) -> f64 {
        let w = self.world as f64;
        self.algbw() * 2.0 * (w - 1.0) / w
    }

    /// A markdown table of the measurement.
    pub fn table(&self) -> String {
        let step = self.step_ms + self.all_reduce_ms;
        format!(
            "| world | backend | gradient | all-reduce ms | algbw GB/s | busbw GB/s | step ms (batch {b}/rank) | step + all-reduce ms | all-reduce share |\n|---|---|---|---|---|---|---|---|---|\n| {} | {} | {:.2} MB ({} floats) | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} % |\n",
            self.world,
            self.backend,
            self.bytes() / 1e6,
            self.elems,
            self.all_reduce_ms,
            self.algbw(),
            self.busbw(),
            self.step_ms,
            step,
            100.0 * self.all_reduce_ms / step,
            b = self.batch,
        )
    }
}

/// Times the data-parallel step's communication on `comm`: the all-reduce of the gradient of the
/// DSNO operator over `model` (float32, in [`crate::comm::BUCKET_ELEMS`] buckets) and, for
/// comparison, the operator's training step on `spec.batch` images. Every rank of the group
/// must call it with the same arguments.
pub fn comm(comm: &crate::comm::Comm, model: &ModelConfig, spec: Spec) -> Result<CommTiming> {
    let device = comm.device();
    let vs = nn::VarStore::new(spec.device);
    let op = operator(&vs, model, spec.slots, spec.modes)?;
    let elems: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let grad = Tensor::randn([elems], (Kind::Float, device));
    let mut failed = None;
    let all_reduce_ms = median_ms(spec.iters, device, || {
        if let Err(e) = comm.all_reduce_mean_flat(&grad, crate::comm::BUCKET_ELEMS) {
            failed.get_or_insert(e);
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    comm.barrier()?;
    let mut shape = vec![spec.batch];
    shape.extend(model.sample_shape());
    let x = Tensor::randn(shape.as_slice(), (Kind::Float, spec.device));
    let (_, step_ms) = measure(&vs, spec.iters, spec.device, |train| {
        op.forward(&x, None, train)
    })?;
    Ok(CommTiming {
        world: comm.world_size(),
        backend: comm.backend().name(),
        elems,
        all_reduce_ms,
        step_ms,
        batch: spec.batch,
    })
}

/// What `dsno bench store` measured: the streaming reader's batches.
#[derive(Debug, Clone)]
pub struct StoreRead {
    pub batches: u64,
    pub samples: usize,
    /// Bytes of x_T and targets handed to the trainer (as stored: float16 or float32).
    pub bytes: f64,
    pub seconds: f64,
    /// Shard files read.
    pub shard_loads: usize,
    /// The reader's peak of shard bytes held.
    pub peak_bytes: usize,
}

impl StoreRead {
    pub fn samples_per_s(&self) -> f64 {
        self.samples as f64 / self.seconds.max(1e-9)
    }
}

/// Reads `steps` training batches of `batch` from the store in `dir` through the streaming
/// reader of distillation (`shuffle_shards` shards per buffer, order of `seed`), on the host: the
/// input pipeline's rate, to set against the trainer's samples/s (`dsno bench engine`).
pub fn store_read(
    dir: &std::path::Path,
    shuffle_shards: usize,
    batch: usize,
    steps: u64,
    seed: u64,
) -> Result<StoreRead> {
    let m = crate::data::store::Manifest::load(dir)?;
    let s = crate::data::store::StreamingStore::open(dir, m.count, shuffle_shards, batch, seed)?;
    let t = Instant::now();
    let (mut samples, mut bytes) = (0usize, 0f64);
    for step in 0..steps {
        let b = s.batch(step)?;
        samples += b.x_t.size()[0] as usize;
        for x in [&b.x_t, &b.targets] {
            bytes += (x.numel() * x.kind().elt_size_in_bytes()) as f64;
        }
    }
    Ok(StoreRead {
        batches: steps,
        samples,
        bytes,
        seconds: t.elapsed().as_secs_f64(),
        shard_loads: s.shard_loads(),
        peak_bytes: s.peak_bytes(),
    })
}

/// Runs `bench/reference.py` with `python` on the same configuration; returns its JSON.
pub fn pytorch_reference(
    python: &std::path::Path,
    script: &std::path::Path,
    model: &ModelConfig,
    spec: Spec,
) -> Result<serde_json::Value> {
    let ModelConfig::Unet(cfg) = model else {
        return Err(Error::invalid("the PyTorch reference has the U-Net only"));
    };
    let dev = match spec.device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    };
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--config", &serde_json::to_string(cfg).unwrap_or_default()])
        .args([
            "--batch",
            &spec.batch.to_string(),
            "--slots",
            &spec.slots.to_string(),
            "--modes",
            &spec.modes.to_string(),
        ])
        .args([
            "--iters",
            &spec.iters.to_string(),
            "--threads",
            &tch::get_num_threads().to_string(),
            "--device",
            &dev,
        ])
        .output()
        .map_err(|e| Error::file(python, format!("cannot run the PyTorch reference: {e}")))?;
    if !out.status.success() {
        return Err(Error::file(
            script,
            format!(
                "PyTorch reference failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line)
        .map_err(|e| Error::file(script, format!("unreadable output ({e}): {text}")))
}

/// The timings as a Markdown table.
pub fn table(rows: &[Timing]) -> String {
    let mut t = String::from("| model | forward ms | train step ms | images/s forward | images/s train | GFLOP/s forward | GFLOP/s train |\n|---|---|---|---|---|---|---|\n");
    for r in rows {
        t += &r.row();
        t.push('\n');
    }
    t
}

/// Our timings against the PyTorch reference's ([`pytorch_reference`]) as a Markdown table of
/// ratios: the U-Net, and the fastest operator row against PyTorch's operator.
pub fn comparison_table(rows: &[Timing], py: &serde_json::Value) -> String {
    let get = |k: &str| py.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut t = format!(
        "PyTorch {} reference ({} threads), same batch, in this run:\n",
        py["torch"].as_str().unwrap_or("?"),
        py["threads"]
    );
    t += "| model | PyTorch forward ms | PyTorch train ms | ratio forward (ours / PyTorch) | ratio train |\n|---|---|---|---|---|\n";
    let best_op = rows
        .iter()
        .skip(1)
        .min_by(|x, y| x.forward_ms.total_cmp(&y.forward_ms));
    let pairs = rows
        .first()
        .map(|r| (r, "unet"))
        .into_iter()
        .chain(best_op.map(|r| (r, "operator")));
    for (r, key) in pairs {
        let (f, tr) = (
            get(&format!("{key}_forward_ms")),
            get(&format!("{key}_train_ms")),
        );
        t += &format!(
            "| {} | {:.1} | {:.1} | {:.3} | {:.3} |\n",
            r.name,
            f,
            tr,
            r.forward_ms / f,
            r.train_ms / tr
        );
    }
    t
}

/// What `dsno bench train` measures: `steps` training steps of `batch` samples after as many
/// warm-up steps, for every precision, of the teacher and of DSNO and KD distillation.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    pub batch: usize,
    pub steps: u64,
    pub precisions: Vec<crate::device::Precision>,
    /// Output times of the operator (the store's).
    pub times: crate::schedule::OutputTimes,
    pub device: Device,
}

/// One measured training run of [`training`].
#[derive(Debug, Clone)]
pub struct TrainTiming {
    /// `teacher`, `DSNO` or `KD`.
    pub what: String,
    pub precision: crate::device::Precision,
    pub batch: usize,
    /// Samples per second over the timed steps (the training log's `samples_per_s`).
    pub samples_per_s: f64,
    /// The loss at the last step.
    pub loss: f64,
}

/// Times the real training commands — [`crate::train::teacher::train`] and
/// [`crate::train::distill::distill`] with their `Run` loop, on random data and a store of a
/// few batches made by the teacher — at each precision, writing its runs under `dir`. The rate
/// is the log row's over the last `steps` steps, so start-up and the first steps (allocations,
/// cuDNN's choices) stay out of it. A run stopped by a signal ([`crate::train::stop_requested`])
/// ends the measurement with an error.
pub fn training(
    teacher: &crate::train::teacher::TeacherConfig,
    spec: &TrainSpec,
    dir: &std::path::Path,
) -> Result<Vec<TrainTiming>> {
    use crate::operator::Method;
    use crate::train::{distill, teacher as tt, trajectories, RunOptions};
    if spec.batch == 0 || spec.steps == 0 || spec.precisions.is_empty() {
        return Err(Error::invalid(
            "bench train: batch, steps and precisions must not be empty",
        ));
    }
    let train = |cfg: &crate::train::TrainConfig| crate::train::TrainConfig {
        steps: 2 * spec.steps,
        batch_size: spec.batch,
        log_every: spec.steps,
        checkpoint_every: 2 * spec.steps,
        patience: 0,
        ..cfg.clone()
    };
    let opts = |out: std::path::PathBuf, precision| RunOptions {
        out,
        overwrite: true,
        device: spec.device,
        precision,
        ..Default::default()
    };
    let mut cfg = teacher.clone();
    cfg.train = train(&cfg.train);
    let mut shape = vec![4 * spec.batch as i64];
    shape.extend(cfg.model.sample_shape());
    tch::manual_seed(0);
    let data = Tensor::rand(shape.as_slice(), (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let mut rows = vec![];
    let mut row = |what: &str, p, out: &std::path::Path, s: crate::train::Summary| -> Result<()> {
        if let Some(sig) = s.stopped {
            return Err(Error::invalid(format!(
                "bench train: stopped by signal {sig}"
            )));
        }
        let loss = s.last_loss;
        rows.push(TrainTiming {
            what: what.into(),
            precision: p,
            batch: spec.batch,
            samples_per_s: last_rate(&out.join("log.csv"))?,
            loss,
        });
        Ok(())
    };
    for &p in &spec.precisions {
        let out = dir.join(format!("teacher-{}", p.name()));
        let s = tt::train(&cfg, data.shallow_clone(), &opts(out.clone(), p), None)?;
        row("teacher", p, &out, s)?;
    }
    // a store of 2 batches (+ none held out) from the first teacher, in a few solver steps
    let teacher_path = dir
        .join(format!("teacher-{}", spec.precisions[0].name()))
        .join("model.safetensors");
    let store = dir.join("store");
    let t = crate::model::Teacher::load(&teacher_path, spec.device)?;
    let g = trajectories::GenerateOptions {
        steps: spec.times.len(),
        times: spec.times.clone(),
        count: 2 * spec.batch,
        shard_size: spec.batch,
        batch: spec.batch,
        solver: crate::solver::Solver::Ddim,
        ..Default::default()
    };
    trajectories::generate(&t, &teacher_path, &store, &g)?;
    for method in [Method::DSNO, Method::KD] {
        for &p in &spec.precisions {
            let dc = distill::DistillConfig {
                method: method.clone(),
                loss: distill::Regression::L2,
                modes: 2.min(spec.times.len() as i64 / 2 + 1),
                dropout: None,
                validation: 0,
                times: None,
                shuffle_shards: 0,
                stream: false,
                lpips_weights: None,
                train: train(&cfg.train),
            };
            let out = dir.join(format!("{method}-{}", p.name()));
            let s = distill::distill(&dc, &teacher_path, &store, None, &opts(out.clone(), p))?;
            row(&method.to_string(), p, &out, s)?;
        }
    }
    Ok(rows)
}

/// The `samples_per_s` of a training log's last row.
fn last_rate(log: &std::path::Path) -> Result<f64> {
    let text = crate::util::fsio::read_text(log)?;
    text.lines()
        .last()
        .and_then(|l| l.split(',').nth(4))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| Error::file(log, "no samples_per_s in the last row"))
}

/// The table of [`training`]'s rows, with each row's speed-up over the first precision's row of
/// the same training.
pub fn training_table(rows: &[TrainTiming]) -> String {
    let mut s = String::from(
        "| training | precision | batch | samples/s | × first | last loss |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.what == r.what)
            .map_or(f64::NAN, |b| b.samples_per_s);
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.4e} |\n",
            r.what,
            r.precision.name(),
            r.batch,
            r.samples_per_s,
            r.samples_per_s / base,
            r.loss
        ));
    }
    s
}

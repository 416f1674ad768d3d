//! Data parallelism end to end: `dsno` started as two processes on 127.0.0.1 (ranks of a Gloo
//! group, as torchrun starts them: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each with half
//! of every global batch, ends with the weights of one process with the whole batch — for
//! `train-teacher` and `distill`, on the 2-D toy and on a tiny U-Net — and makes the same
//! trajectory store, byte for byte.
use crate::common;

use common::{dsno, tempdir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The training states (weights, Adam moments, EMA) agree to these: elementwise
/// |a − b| ≤ TOL · (1 + |a|), and all tensors together ‖a − b‖ ≤ NORM_TOL · ‖a‖. The ranks' mean
/// of half-batch mean gradients equals the whole batch's mean gradient up to float32 rounding
/// (another summation order). 20 Adam steps carry that into the weights at the 1e-7 level, except
/// where the exact gradient is zero and Adam normalises rounding noise into a step: the key bias
/// of attention, which softmax ignores (2e-5 measured, the elementwise bound's reason).
const TOL: f64 = 1e-4;
const NORM_TOL: f64 = 1e-5;

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `dsno` as `world` ranks of one group (each on one CPU thread).
fn spawn_ranks(world: usize, args: &[&str]) -> Vec<std::process::Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            Command::new(env!("CARGO_BIN_EXE_dsno"))
                .args(["--device", "cpu", "--threads", "1", "--dist-timeout", "60"])
                .args(args)
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Runs `dsno` as `world` ranks of one group; returns their outputs.
fn ranks(world: usize, args: &[&str]) -> Vec<Output> {
    let children = spawn_ranks(world, args);
    let deadline = Instant::now() + Duration::from_secs(300);
    children
        .into_iter()
        .map(|mut c| {
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            c.wait_with_output().unwrap()
        })
        .collect()
}

fn ok(o: &Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{what} failed:\n{text}");
    text
}

/// One process, then two ranks, of the same command (`{out}` in `args` is the output folder);
/// returns both output folders.
fn single_and_pair(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, PathBuf) {
    let (one, two) = (dir.join(format!("{name}-1")), dir.join(format!("{name}-2")));
    let with = |out: &Path| -> Vec<String> {
        args.iter()
            .map(|a| a.replace("{out}", out.to_str().unwrap()))
            .collect()
    };
    let a1 = with(&one);
    let mut single = vec!["--device", "cpu", "--threads", "1"];
    single.extend(a1.iter().map(String::as_str));
    ok(&dsno(&single), &format!("{name}, one process"));
    let a2 = with(&two);
    let a2: Vec<&str> = a2.iter().map(String::as_str).collect();
    let outs = ranks(2, &a2);
    let main = ok(&outs[0], &format!("{name}, rank 0"));
    let other = ok(&outs[1], &format!("{name}, rank 1"));
    assert!(main.contains("rank 0 of 2 (gloo)"), "{main}");
    // rank 1 neither reports nor logs
    assert!(!other.contains("trained steps"), "rank 1 printed:\n{other}");
    (one, two)
}

/// The largest elementwise difference of the same-named tensors of two checkpoints, relative
/// to 1 + |a|; panics when their names or shapes differ.
fn max_rel_diff(a: &Path, b: &Path) -> (f64, String, f64) {
    let (a, b) = (
        dsno::checkpoint::load(a).unwrap(),
        dsno::checkpoint::load(b).unwrap(),
    );
    let mut names: Vec<&String> = a.tensors.keys().collect();
    names.sort();
    let mut other: Vec<&String> = b.tensors.keys().collect();
    other.sort();
    assert_eq!(names, other);
    assert_eq!(a.meta.step, b.meta.step);
    let mut worst = (0f64, String::new());
    let (mut dd, mut aa) = (0f64, 0f64);
    for n in names {
        let (x, y) = (&a.tensors[n], &b.tensors[n]);
        assert_eq!(x.size(), y.size(), "{n}");
        let x = x.to_kind(tch::Kind::Double);
        let diff = &x - y.to_kind(tch::Kind::Double);
        dd += diff.square().sum(tch::Kind::Double).double_value(&[]);
        aa += x.square().sum(tch::Kind::Double).double_value(&[]);
        let d = (diff.abs() / (x.abs() + 1.0)).max().double_value(&[]);
        assert!(d.is_finite(), "{n}");
        if d >= worst.0 {
            worst = (d, n.clone());
        }
    }
    (worst.0, worst.1, (dd / aa.max(1e-300)).sqrt())
}

/// Both runs' training state (weights, Adam moments, EMA) agrees to [`TOL`] and [`NORM_TOL`],
/// and the logged losses too.
fn assert_equivalent(one: &Path, two: &Path, what: &str) {
    let (d, at, norm) = max_rel_diff(&one.join("ckpt.safetensors"), &two.join("ckpt.safetensors"));
    println!(
        "{what}: training state differs by {norm:.3e} of its norm, elementwise ≤ {d:.3e} ({at})"
    );
    assert!(d <= TOL, "{what}: {d:e} > {TOL:e} at {at}");
    assert!(norm <= NORM_TOL, "{what}: {norm:e} > {NORM_TOL:e}");
    let loss = |p: &Path| -> Vec<f64> {
        std::fs::read_to_string(p.join("log.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
            .collect()
    };
    let (l1, l2) = (loss(one), loss(two));
    assert_eq!(l1.len(), l2.len(), "{what}: log rows");
    for (a, b) in l1.iter().zip(&l2) {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1e-3),
            "{what}: loss {a} vs {b}"
        );
    }
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

const TOY_TEACHER: &str = r#"
loss_weight = "clamped_snr"
time_sampling = "quadratic"
[model]
kind = "mlp"
dim = 2
hidden = 32
blocks = 2
dropout = 0.0
[data]
source = "toy2d"
name = "8gaussians"
points = 2000
seed = 0
[train]
steps = 20
batch_size = 64
lr = 1e-3
warmup = 5
ema_decay = 0.9
checkpoint_every = 10
log_every = 5
seed = 3
"#;

const UNET_TEACHER: &str = r#"
[model]
kind = "unet"
in_channels = 1
out_channels = 1
image_size = 28
channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = []
num_heads = 1
groups = 4
dropout = 0.0
[data]
source = "idx"
name = "mnist"
[train]
steps = 20
batch_size = 8
lr = 1e-3
warmup = 5
ema_decay = 0.9
checkpoint_every = 10
log_every = 5
seed = 4
"#;

fn distill_config(batch: usize, validation: usize, stream: bool) -> String {
    format!(
        r#"
method = "dsno"
validation = {validation}
shuffle_shards = {shards}
stream = {stream}
[train]
steps = 20
batch_size = {batch}
lr = 1e-3
warmup = 5
ema_decay = 0.9
checkpoint_every = 10
log_every = 5
seed = 5
"#,
        shards = if stream { 2 } else { 0 }
    )
}

/// Distils `teacher` on `store` with the distillation config `config` in one process and in two
/// ranks, and checks that both end with the same training state.
fn distil_both_ways(dir: &Path, teacher: &str, store: &Path, config: &str, what: &str) {
    let cfg = write(&dir.join("distill.toml"), config);
    let store = store.to_str().unwrap();
    let args = [
        "distill",
        "--teacher",
        teacher,
        "--trajectories",
        store,
        "--config",
        &cfg,
        "--out",
        "{out}",
    ];
    let (one, two) = single_and_pair(dir, "dsno", &args);
    assert_equivalent(&one, &two, what);
}

/// The store made by two ranks is the store made by one process, file for file.
fn assert_same_store(a: &Path, b: &Path) {
    let mut files: Vec<String> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        assert_eq!(
            common::file_sha256(&a.join(f)),
            common::file_sha256(&b.join(f)),
            "{f}"
        );
    }
    assert_eq!(std::fs::read_dir(b).unwrap().count(), files.len());
}

#[test]
fn two_ranks_train_the_toy_teacher_and_distil_it_like_one_process() {
    let _g = common::serial();
    let dir = tempdir("dp-toy");
    let cfg = write(&dir.join("teacher.toml"), TOY_TEACHER);
    let (t1, t2) = single_and_pair(
        &dir,
        "teacher",
        &["train-teacher", "--config", &cfg, "--out", "{out}"],
    );
    assert_equivalent(&t1, &t2, "toy teacher");
    // two ranks that stop after 10 steps and resume end where two ranks that ran through end
    let half = dir.join("teacher-2-resumed");
    let half_s = half.to_str().unwrap();
    for args in [
        vec![
            "train-teacher",
            "--config",
            &cfg,
            "--out",
            half_s,
            "--steps",
            "10",
        ],
        vec![
            "train-teacher",
            "--config",
            &cfg,
            "--out",
            half_s,
            "--resume",
        ],
    ] {
        for (r, o) in ranks(2, &args).iter().enumerate() {
            ok(o, &format!("resumed teacher, rank {r}"));
        }
    }
    common::assert_same_run_files(&t2, &half);
    // torchrun (its agent hosts the store: TORCHELASTIC_USE_AGENT_STORE) gives the same bits
    let tr = dir.join("teacher-torchrun");
    let torchrun = common::root().join(".venv/bin/torchrun");
    let o = Command::new(&torchrun)
        .args(["--nproc-per-node", "2", "--master-port"])
        .arg(free_port().to_string())
        .args([
            "--no-python",
            env!("CARGO_BIN_EXE_dsno"),
            "--device",
            "cpu",
            "--threads",
            "1",
        ])
        .args([
            "train-teacher",
            "--config",
            &cfg,
            "--out",
            tr.to_str().unwrap(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh installs it)", torchrun.display()));
    ok(&o, "torchrun");
    common::assert_same_run_files(&t2, &tr);
    let teacher = t1.join("model.safetensors");
    let teacher = teacher.to_str().unwrap();
    let (s1, s2) = single_and_pair(
        &dir,
        "store",
        &[
            "trajectories",
            "--teacher",
            teacher,
            "--count",
            "300",
            "--steps",
            "6",
            "--shard-size",
            "100",
            "--times",
            "quad:4",
            "--out",
            "{out}",
        ],
    );
    assert_same_store(&s1, &s2);
    distil_both_ways(
        &dir,
        teacher,
        &s1,
        &distill_config(32, 44, false),
        "toy DSNO",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_ranks_train_a_unet_teacher_and_distil_it_streaming_like_one_process() {
    let _g = common::serial();
    let dir = tempdir("dp-unet");
    let cfg = write(&dir.join("teacher.toml"), UNET_TEACHER);
    let data = common::data_dir("mnist");
    let (t1, t2) = single_and_pair(
        &dir,
        "teacher",
        &[
            "train-teacher",
            "--config",
            &cfg,
            "--data",
            data.to_str().unwrap(),
            "--out",
            "{out}",
        ],
    );
    assert_equivalent(&t1, &t2, "U-Net teacher");
    let teacher = t1.join("model.safetensors");
    let teacher = teacher.to_str().unwrap();
    let store = dir.join("store");
    ok(
        &dsno(&[
            "--device",
            "cpu",
            "trajectories",
            "--teacher",
            teacher,
            "--count",
            "64",
            "--steps",
            "4",
            "--shard-size",
            "16",
            "--fp16",
            "--out",
            store.to_str().unwrap(),
        ]),
        "store",
    );
    let config = distill_config(8, 8, true);
    distil_both_ways(
        &dir,
        teacher,
        &store,
        &config,
        "U-Net DSNO (streaming store)",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rank_that_dies_makes_the_other_exit_with_an_error() {
    let _g = common::serial();
    let dir = tempdir("dp-dead");
    let cfg = write(
        &dir.join("teacher.toml"),
        &TOY_TEACHER.replace("steps = 20", "steps = 1000000"),
    );
    let out = dir.join("run");
    let mut cs = spawn_ranks(
        2,
        &[
            "train-teacher",
            "--config",
            &cfg,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    // rank 0 writes its first checkpoint after 10 steps: training is under way
    let t0 = Instant::now();
    while !out.join("ckpt.safetensors").exists() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        out.join("ckpt.safetensors").exists(),
        "training did not start"
    );
    cs[1].kill().unwrap();
    let killed = Instant::now();
    let mut zero = cs.remove(0);
    while zero.try_wait().unwrap().is_none() && killed.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = killed.elapsed();
    let _ = zero.kill();
    let o = zero.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("rank 0 after {waited:?}: {err}");
    assert!(!o.status.success(), "rank 0 went on without rank 1");
    assert!(
        waited < Duration::from_secs(60),
        "rank 0 hung for {waited:?}"
    );
    assert!(
        err.contains("error: distributed:") && err.contains("rank 0"),
        "rank 0's error:\n{err}"
    );
    let _ = cs[0].wait();
    let _ = std::fs::remove_dir_all(&dir);
}

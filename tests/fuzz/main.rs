//! Fuzzing of the file loaders with proptest (stable Rust).
//!
//! One target per loader, each a `#[test]`:
//! - `idx`: [`dsno::data::idx::parse`] on arbitrary bytes and on mutated IDX files, and
//!   [`dsno::data::idx::read`] on gzipped (and corrupted gzip) files;
//! - `checkpoint`: [`dsno::checkpoint::load_bytes`] and [`dsno::checkpoint::read_meta`] on
//!   mutated checkpoints (the bundled MNIST models and small ones written here), above all
//!   mutations of the `dsno` metadata JSON; an accepted checkpoint is then built into its model
//!   as the CLI does ([`Teacher::load`], [`OneStep::from_checkpoint`]) and run once;
//! - `store`: [`Manifest::parse`], [`parse_shard`] and [`load_store`] on mutated manifests and
//!   shards of a real (tiny) trajectory store made by [`generate`];
//! - `config`: [`TeacherConfig::from_toml`] and [`DistillConfig::from_toml`] on mutated
//!   `configs/*.toml`; an accepted teacher config's model is built (unless it is huge);
//! - `diffusers`: [`dsno::import::import_diffusers`] on the tiny UNet2DModel fixtures with
//!   mutated `config.json` and `scheduler_config.json`; an accepted import is run once;
//! - `npz`: [`FidStats::read`] (the `.npz` FID statistics) on arbitrary bytes and on mutated
//!   `.npz` files written by numpy (stored, compressed, Fortran order) and by dsno.
//!
//! Every call is made under `catch_unwind`. A case fails when a loader panics, returns an error
//! whose message is empty or does not name the path it was given, or accepts its input and
//! returns something invalid (an IDX whose data does not fill its dimensions, a model whose
//! output is not finite, a shard whose shapes are not the manifest's, …).
//!
//! ## Harness
//! A test process (the supervisor) runs each target in a child process (the same test binary,
//! `DSNO_FUZZ_WORKER_DIR` set) under `ulimit -v`, so that what `catch_unwind` cannot catch (an
//! abort on a failed allocation, a stack overflow, a libtorch crash) and hangs (no new case for
//! `DSNO_FUZZ_HANG_SECONDS`) are recorded too, with the input being run, and the run goes on in
//! a fresh child. The worker first replays every file of `tests/fuzz-corpus/<target>/` (the
//! regression set), then generates cases with a `proptest` [`TestRunner`]; the first failure of
//! each kind is shrunk with proptest's value trees and saved as `<hash>.bin` (the input) and
//! `<hash>.txt` (what went wrong).
//!
//! Budget (environment): `DSNO_FUZZ_CASES` cases per target (default 64), or
//! `DSNO_FUZZ_SECONDS` seconds per target (then cases are unbounded unless `DSNO_FUZZ_CASES`
//! is given too); `DSNO_FUZZ_SEED` (decimal or 0x-hex u64; a fixed seed by default, so
//! `cargo test` is deterministic); `DSNO_FUZZ_HANG_SECONDS` (default 30) and
//! `DSNO_FUZZ_MEM_MB` (the worker's address-space limit, default 6144). `scripts/fuzz.sh` runs
//! the long budget with a random seed.
//!
//! ## Findings
//! The first long runs (commit 3197dd5, before the validation of docs/FORMATS.md §10) found
//! panics, aborts and accepted garbage in the checkpoint, store and config targets: unbounded
//! `num_res_blocks` / `blocks` / `channels`, `channel_mult` with 0 or negative entries,
//! `image_size = 0`, NaN weights, invalid output times and schedules, `shard_size = 0`,
//! count-sized allocations before the shape check, shards of the wrong dtype, errors without
//! the file's name; the config target also saw `lr ≤ 0`, `steps = 0`, `batch_size = 0`,
//! `ema_decay` outside [0, 1), negative `grad_clip`, inverted schedules and unknown data set
//! names accepted. Their minimal inputs are the corpus, replayed first by every run; all are
//! now refused with an error naming the file and the field.
use dsno::checkpoint::{self, CheckpointMeta, ModelKind};
use dsno::data::idx;
use dsno::data::store::{load_store, parse_shard, shard_path, Manifest, Shard, FORMAT};
use dsno::denoiser::Denoiser;
use dsno::metrics::fid::FidStats;
use dsno::model::{OneStep, Teacher};
use dsno::nn::mlp::MlpConfig;
use dsno::nn::unet::UNetConfig;
use dsno::nn::ModelConfig;
use dsno::operator::{Architecture, Generator, Method, OperatorConfig};
use dsno::schedule::{OutputTimes, Schedule};
use dsno::solver::Solver;
use dsno::train::distill::DistillConfig;
use dsno::train::teacher::TeacherConfig;
use dsno::train::trajectories::{generate, GenerateOptions};
use dsno::train::TrainConfig;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::{BoxedStrategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tch::{nn, Device, Kind, Tensor};

mod checkpoints;
mod configs;
mod diffusers;
mod idx_files;
mod npz;
mod stores;

#[test]
fn fuzz_idx() {
    fuzz("idx", "fuzz_idx");
}

#[test]
fn fuzz_checkpoint() {
    fuzz("checkpoint", "fuzz_checkpoint");
}

#[test]
fn fuzz_store() {
    fuzz("store", "fuzz_store");
}

#[test]
fn fuzz_config() {
    fuzz("config", "fuzz_config");
}

#[test]
fn fuzz_diffusers() {
    fuzz("diffusers", "fuzz_diffusers");
}

#[test]
fn fuzz_npz() {
    fuzz("npz", "fuzz_npz");
}

// ---------------------------------------------------------------------------------------------
// Budget and seeds

/// The models built from accepted inputs are skipped above this many parameters.
const MAX_PARAMS: u64 = 5_000_000;
/// Forward passes are skipped for samples of more elements than this.
const MAX_SAMPLE: i64 = 1 << 16;

struct Budget {
    cases: u64,
    seconds: Option<f64>,
    hang: f64,
    mem_mb: u64,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

fn budget() -> Budget {
    let seconds: Option<f64> = env_num("DSNO_FUZZ_SECONDS");
    let cases = env_num("DSNO_FUZZ_CASES").unwrap_or(if seconds.is_some() { u64::MAX } else { 64 });
    Budget {
        cases,
        seconds,
        hang: env_num("DSNO_FUZZ_HANG_SECONDS").unwrap_or(30.0),
        mem_mb: env_num("DSNO_FUZZ_MEM_MB").unwrap_or(6144),
    }
}

/// `DSNO_FUZZ_SEED` (decimal or 0x-hex), or the fixed seed of `cargo test`.
fn seed() -> u64 {
    let s = std::env::var("DSNO_FUZZ_SEED").unwrap_or_default();
    let s = s.trim();
    let parsed = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    };
    parsed.unwrap_or(0x00d5_0f12_2e5e_ed00)
}

/// 32 seed bytes of the worker's ChaCha generator for `(seed, restart)` (splitmix64).
fn seed_bytes(seed: u64, restart: u64) -> [u8; 32] {
    let mut x = seed ^ restart.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target)
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "bin"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// FNV-1a 64 of `b`, hex.
fn hash(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Saves a failing input to the corpus; returns its file. An input of more than 256 KiB is
/// stored as a patch against one of [`PATCH_BASES`] (see [`read_corpus`]).
fn save_corpus(target: &str, input: &[u8], what: &str) -> PathBuf {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("create the corpus folder");
    let h = hash(input);
    let bin = dir.join(format!("{h}.bin"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stored = input.to_vec();
    if input.len() > 256 << 10 {
        for name in PATCH_BASES {
            if let Ok(base) = std::fs::read(root.join(name)) {
                let mut p = PATCH_MAGIC.to_vec();
                p.extend_from_slice(name.as_bytes());
                p.push(b'\n');
                p.extend(encode_patch(input, &base));
                if p.len() < stored.len() {
                    stored = p;
                }
            }
        }
    }
    std::fs::write(&bin, stored).expect("write a corpus file");
    std::fs::write(dir.join(format!("{h}.txt")), format!("{what}\n")).expect("write a note");
    bin
}

/// The first line of a patch file, then the name of its base (relative to the repository).
const PATCH_MAGIC: &[u8] = b"dsno-fuzz-patch-1\n";
/// The files a large corpus input may be stored against.
const PATCH_BASES: &[&str] = &[
    "models/mnist-teacher.safetensors",
    "models/mnist-kd.safetensors",
];

/// `input` as copies of `base` and literals: `C` offset length, `L` length bytes (u64 LE).
fn encode_patch(input: &[u8], base: &[u8]) -> Vec<u8> {
    const B: usize = 32;
    let mut index: std::collections::HashMap<&[u8], usize> = Default::default();
    for o in (0..base.len().saturating_sub(B - 1)).step_by(B) {
        index.entry(&base[o..o + B]).or_insert(o);
    }
    let mut out = vec![];
    let mut lit: Vec<u8> = vec![];
    let flush = |out: &mut Vec<u8>, lit: &mut Vec<u8>| {
        if !lit.is_empty() {
            out.push(b'L');
            out.extend((lit.len() as u64).to_le_bytes());
            out.append(lit);
        }
    };
    let mut i = 0;
    while i < input.len() {
        match input.get(i..i + B).and_then(|w| index.get(w)) {
            Some(&o) => {
                let mut l = B;
                while i + l < input.len() && o + l < base.len() && input[i + l] == base[o + l] {
                    l += 1;
                }
                flush(&mut out, &mut lit);
                out.push(b'C');
                out.extend((o as u64).to_le_bytes());
                out.extend((l as u64).to_le_bytes());
                i += l;
            }
            None => {
                lit.push(input[i]);
                i += 1;
            }
        }
    }
    flush(&mut out, &mut lit);
    out
}

fn decode_patch(ops: &[u8], base: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![];
    let mut i = 0;
    let u64_at = |i: usize| -> Option<usize> {
        Some(u64::from_le_bytes(ops.get(i..i + 8)?.try_into().ok()?) as usize)
    };
    while i < ops.len() {
        match ops[i] {
            b'C' => {
                let (o, l) = (u64_at(i + 1)?, u64_at(i + 9)?);
                out.extend_from_slice(base.get(o..o.checked_add(l)?)?);
                i += 17;
            }
            b'L' => {
                let l = u64_at(i + 1)?;
                out.extend_from_slice(ops.get(i + 9..(i + 9).checked_add(l)?)?);
                i += 9 + l;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The input of a corpus file (a patch is applied to its base), or `None` for a patch that no
/// longer gives the input it was made from (its base changed).
fn read_corpus(file: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(file).expect("read a corpus file");
    let Some(rest) = bytes.strip_prefix(PATCH_MAGIC) else {
        return Some(bytes);
    };
    let nl = rest.iter().position(|&c| c == b'\n')?;
    let name = std::str::from_utf8(&rest[..nl]).ok()?;
    let base = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).ok()?;
    let input = decode_patch(&rest[nl + 1..], &base)?;
    let stem = file.file_stem()?.to_string_lossy();
    (hash(&input) == stem).then_some(input)
}

/// The first line of a failure, digits collapsed: failures with the same signature are one
/// finding.
fn signature(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or("");
    let mut s = String::new();
    let mut digit = false;
    for c in first.chars() {
        if c.is_ascii_digit() {
            if !digit {
                s.push('#');
            }
            digit = true;
        } else {
            s.push(c);
            digit = false;
        }
    }
    s.chars().take(200).collect()
}

fn one_line(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\t', "\\t")
}

// ---------------------------------------------------------------------------------------------
// The supervisor

/// The state a worker shares with its supervisor, in files of `dir`:
/// - `cur`: the case being run: phase (`S` set-up, `R` replay, `F` fuzzing), its index (u64 LE)
///   and the input;
/// - `failures`: one line per failing case: phase, signature, corpus file, message;
/// - `notes-<restart>`: what worker `restart` counted ([`note`]), `note<TAB>count` lines;
/// - `done`: written at the end: the executions.
struct State {
    dir: PathBuf,
}

impl State {
    fn cur(&self) -> PathBuf {
        self.dir.join("cur")
    }
    fn write_cur(&self, phase: u8, index: u64, input: &[u8]) {
        let mut b = Vec::with_capacity(9 + input.len());
        b.push(phase);
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(input);
        std::fs::write(self.cur(), b).expect("write the current case");
    }
    fn read_cur(&self) -> Option<(u8, u64, Vec<u8>)> {
        let b = std::fs::read(self.cur()).ok()?;
        (b.len() >= 9).then(|| {
            (
                b[0],
                u64::from_le_bytes(b[1..9].try_into().unwrap()),
                b[9..].to_vec(),
            )
        })
    }
    fn record(&self, phase: char, sig: &str, file: Option<&Path>, msg: &str) {
        let file = file.map_or("-".into(), |f| f.display().to_string());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("failures"))
            .expect("open the failure log");
        writeln!(f, "{phase}\t{}\t{file}\t{}", one_line(sig), one_line(msg))
            .expect("write the failure log");
    }
    /// `(phase, signature, file, message)` of every failure so far.
    fn failures(&self) -> Vec<(String, String, String, String)> {
        std::fs::read_to_string(self.dir.join("failures"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(4, '\t');
                Some((
                    it.next()?.into(),
                    it.next()?.into(),
                    it.next()?.into(),
                    it.next()?.into(),
                ))
            })
            .collect()
    }
    /// Writes the notes of worker `restart` so far (`notes-<restart>`: `note<TAB>count` lines).
    fn write_notes(&self, restart: u64) {
        let notes: String = NOTES
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{}\t{v}\n", one_line(k)))
            .collect();
        std::fs::write(self.dir.join(format!("notes-{restart}")), notes).unwrap();
    }
    /// The notes of all workers.
    fn notes(&self) -> BTreeMap<String, u64> {
        let mut notes = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if !e.file_name().to_string_lossy().starts_with("notes-") {
                continue;
            }
            for l in std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
            {
                if let Some((k, n)) = l.rsplit_once('\t') {
                    *notes.entry(k.to_string()).or_default() += n.parse::<u64>().unwrap_or(0);
                }
            }
        }
        notes
    }
    fn known(&self) -> BTreeSet<String> {
        self.failures().into_iter().map(|f| f.1).collect()
    }
}

/// Runs target `name` (the test function `test`): the worker when this process is one,
/// otherwise the supervisor.
fn fuzz(name: &str, test: &str) {
    if let Ok(dir) = std::env::var("DSNO_FUZZ_WORKER_DIR") {
        worker(name, &State { dir: dir.into() });
        return;
    }
    let b = budget();
    let seed = seed();
    let state = State {
        dir: std::env::temp_dir().join(format!("dsno-fuzz-{name}-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&state.dir);
    std::fs::create_dir_all(&state.dir).unwrap();
    let corpus = corpus_files(name).len();
    let start = Instant::now();
    let mut execs = 0u64;
    let mut skip = 0u64;
    let mut restarts = 0u64;
    loop {
        let _ = std::fs::remove_file(state.dir.join("done"));
        state.write_cur(b'S', 0, &[]);
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!(
                "ulimit -v {} && exec \"$0\" \"$@\"",
                b.mem_mb * 1024
            ))
            .arg(exe)
            .args([test, "--exact", "--nocapture", "--include-ignored"])
            .args(["--test-threads=1", "-q"])
            .env("DSNO_FUZZ_WORKER_DIR", &state.dir)
            .env("DSNO_FUZZ_RESTART", restarts.to_string())
            .env("RUST_BACKTRACE", "1")
            .env("DSNO_FUZZ_SEED", seed.to_string())
            .env("DSNO_FUZZ_SKIP_REPLAY", skip.to_string())
            .env("DSNO_FUZZ_CASES", b.cases.saturating_sub(execs).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match b.seconds {
            Some(s) => cmd.env(
                "DSNO_FUZZ_SECONDS",
                (s - start.elapsed().as_secs_f64()).max(0.0).to_string(),
            ),
            None => cmd.env_remove("DSNO_FUZZ_SECONDS"),
        };
        let mut child = cmd.spawn().expect("start a fuzz worker");
        let mut err = child.stderr.take().unwrap();
        let tail = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 16384 {
                    buf.drain(..buf.len() - 8192);
                }
            }
            String::from_utf8_lossy(&buf).into_owned()
        });
        let mut hung = None;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for the worker") {
                break st;
            }
            std::thread::sleep(Duration::from_millis(50));
            let age = std::fs::metadata(state.cur())
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            let setup = state.read_cur().is_some_and(|c| c.0 == b'S');
            let limit = if setup { b.hang.max(300.0) } else { b.hang };
            if age > limit {
                hung = Some(age);
                let _ = child.kill();
                break child.wait().expect("wait for the worker");
            }
        };
        let stderr = tail.join().unwrap_or_default();
        if let Ok(text) = std::fs::read_to_string(state.dir.join("done")) {
            execs += text.trim().parse::<u64>().unwrap_or(0);
            break;
        }
        // the worker died or hung: record the case it was running, go on in a fresh one
        let (phase, index, input) = state.read_cur().unwrap_or((b'S', 0, vec![]));
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| {
                let frame = l.starts_with("at ")
                    || l.starts_with("stack backtrace")
                    || l.split_once(':')
                        .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
                !l.is_empty() && !frame && !l.starts_with("note:") && !l.starts_with("error: test")
            })
            .collect();
        let keys = [
            "memory allocation",
            "stack overflow",
            "terminate",
            "panicked",
            "fatal",
        ];
        let last = lines
            .iter()
            .find(|l| keys.iter().any(|k| l.contains(k)))
            .or(lines.last())
            .copied()
            .unwrap_or("")
            .to_string();
        let msg = match hung {
            Some(age) => format!(
                "hang: no new case for {:.0} s (limit {} s)",
                age.floor(),
                b.hang
            ),
            None => format!(
                "abort: worker exited with {status}: {last} [in {}]",
                dsno_frames(&stderr)
            ),
        };
        if phase == b'S' {
            panic!("fuzz {name}: the worker failed during set-up: {msg}\n{stderr}");
        }
        let sig = signature(&msg);
        let mut file = None;
        if phase == b'R' {
            file = corpus_files(name).get(index as usize).cloned();
            skip = index + 1;
        } else {
            execs += index + 1;
            skip = u64::MAX;
            if !state.known().contains(&sig) {
                file = Some(save_corpus(name, &input, &msg));
            }
        }
        state.record(phase as char, &sig, file.as_deref(), &msg);
        restarts += 1;
        let done_cases = execs >= b.cases;
        let done_time = b
            .seconds
            .is_some_and(|s| start.elapsed().as_secs_f64() >= s);
        if done_cases || done_time || restarts > 200 {
            break;
        }
    }
    let failures = state.failures();
    let notes = state.notes();
    let crashes = failures.iter().filter(|f| f.0 == "F").count();
    let replay_failures = failures.iter().filter(|f| f.0 == "R").count();
    println!(
        "fuzz {name}: {execs} executions, {crashes} crashes ({:.0} s, seed {seed:#x}, {restarts} restarts); corpus: {corpus} replayed, {replay_failures} failing",
        start.elapsed().as_secs_f64()
    );
    let mut distinct: BTreeMap<&str, (usize, &str, &str)> = BTreeMap::new();
    for (_, sig, file, msg) in &failures {
        let e = distinct.entry(sig).or_insert((0, file, msg));
        e.0 += 1;
        if e.1 == "-" {
            e.1 = file;
        }
    }
    for (sig, (n, file, msg)) in &distinct {
        println!("  finding [{n}x] {sig}\n    input: {file}\n    {msg}");
    }
    for (k, n) in &notes {
        println!("  note [{n}x] {k}");
    }
    let _ = std::fs::remove_dir_all(&state.dir);
    assert!(
        failures.is_empty(),
        "fuzz {name}: {crashes} crashes, {replay_failures} failing corpus files, {} distinct findings (above)",
        distinct.len()
    );
}

// ---------------------------------------------------------------------------------------------
// The worker

/// Runs one input: `Err` describes a failure.
type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// A fuzz target: inputs are bytes (the corpus format), and `check` runs one.
struct Target {
    strategy: BoxedStrategy<Vec<u8>>,
    check: Check,
}

static NOTES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts something seen that is not a failure (skips, accepted-but-invalid values).
fn note(what: impl Into<String>) {
    *NOTES.lock().unwrap().entry(what.into()).or_default() += 1;
}

thread_local! {
    static PANIC: RefCell<Option<(String, std::backtrace::Backtrace)>> = const { RefCell::new(None) };
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keeps the location and backtrace of a panic for [`guarded`], printing nothing.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let bt = std::backtrace::Backtrace::force_capture();
        if !GUARDED.with(|g| g.get()) {
            // a panic of the harness itself: say so
            eprintln!(
                "fuzz worker panicked at {loc}: {}\n{bt}",
                info.payload_as_str().unwrap_or("")
            );
        }
        PANIC.with(|p| *p.borrow_mut() = Some((loc, bt)));
    }));
}

/// Runs `f`; a panic becomes an `Err` naming `what`, the panic message, where it was raised and
/// the dsno functions on the stack.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    let was = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(non-string payload)".into());
        let (loc, frames) = PANIC
            .with(|c| c.borrow_mut().take())
            .map(|(loc, bt)| (loc, dsno_frames(&bt.to_string())))
            .unwrap_or_default();
        // the first line, without libtorch's C++ backtrace
        let first: String = msg
            .split(['\n'])
            .next()
            .unwrap_or("")
            .split("\\n")
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        let full: String = msg.chars().take(2000).collect();
        format!("panic in {what}: {first} [at {loc}; in {frames}]\n{full}")
    })
}

/// The library's own functions on a printed backtrace, innermost first.
fn dsno_frames(text: &str) -> String {
    let mut out: Vec<String> = vec![];
    for line in text.lines() {
        let Some((_, sym)) = line.trim().split_once(": ") else {
            continue;
        };
        let sym = sym.trim();
        if sym.contains("dsno::") && !sym.starts_with("fuzz::") && !out.iter().any(|s| s == sym) {
            out.push(sym.to_string());
        }
        if out.len() == 3 {
            break;
        }
    }
    if out.is_empty() {
        "no dsno frame".into()
    } else {
        out.join(" < ")
    }
}

/// A loader's error must have a message that names the path it was given.
fn named(e: &dsno::Error, path: &Path, what: &str) -> Result<(), String> {
    let s = e.to_string();
    if s.trim().is_empty() {
        return Err(format!("bad error: {what} returned an empty message"));
    }
    if !s.contains(&*path.to_string_lossy()) {
        let kind = match e {
            dsno::Error::Invalid(_) => "an invalid-input error",
            dsno::Error::Torch(_) => "a libtorch error",
            dsno::Error::Distributed(_) => "a process-group error",
            dsno::Error::File { .. } => "an error naming another file",
        };
        return Err(format!(
            "bad error: {what} returns {kind} that does not name the file\n{s}"
        ));
    }
    Ok(())
}

fn worker(name: &str, state: &State) {
    install_panic_hook();
    tch::set_num_threads(1);
    let work = state.dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let target = match name {
        "idx" => idx_files::idx_target(&work),
        "checkpoint" => checkpoints::checkpoint_target(&work),
        "store" => stores::store_target(&work),
        "config" => configs::config_target(),
        "npz" => npz::npz_target(&work),
        "diffusers" => diffusers::diffusers_target(&work),
        _ => panic!("unknown fuzz target {name}"),
    };
    let mut known = state.known();
    let skip: u64 = env_num("DSNO_FUZZ_SKIP_REPLAY").unwrap_or(0);
    for (i, file) in corpus_files(name).iter().enumerate() {
        if (i as u64) < skip {
            continue;
        }
        let Some(input) = read_corpus(file) else {
            note(format!(
                "corpus: {} skipped (a patch whose base file changed)",
                file.display()
            ));
            continue;
        };
        state.write_cur(b'R', i as u64, &input);
        if let Err(msg) = (target.check)(&input) {
            let sig = signature(&msg);
            known.insert(sig.clone());
            state.record('R', &sig, Some(file), &msg);
        }
    }
    let b = budget();
    let restart: u64 = env_num("DSNO_FUZZ_RESTART").unwrap_or(0);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed(), restart)),
    );
    let start = Instant::now();
    let mut flushed = Instant::now();
    let mut n = 0u64;
    while n < b.cases && b.seconds.is_none_or(|s| start.elapsed().as_secs_f64() < s) {
        if flushed.elapsed() > Duration::from_secs(1) {
            state.write_notes(restart);
            flushed = Instant::now();
        }
        let mut tree = target
            .strategy
            .new_tree(&mut runner)
            .expect("generate a case");
        let input = tree.current();
        state.write_cur(b'F', n, &input);
        if let Err(msg) = (target.check)(&input) {
            let sig = signature(&msg);
            let mut file = None;
            if known.insert(sig.clone()) {
                let (min, min_msg) = shrink(&mut tree, &*target.check, &sig, state, n);
                file = Some(save_corpus(name, &min, &min_msg));
            }
            state.record('F', &sig, file.as_deref(), &msg);
        }
        n += 1;
    }
    state.write_notes(restart);
    std::fs::write(state.dir.join("done"), format!("{n}\n")).unwrap();
}

/// Proptest's shrinking: simplifies while the case still fails with signature `sig`.
fn shrink(
    tree: &mut impl ValueTree<Value = Vec<u8>>,
    check: &dyn Fn(&[u8]) -> Result<(), String>,
    sig: &str,
    state: &State,
    index: u64,
) -> (Vec<u8>, String) {
    let mut best = tree.current();
    let mut best_msg = check(&best).err().unwrap_or_default();
    let start = Instant::now();
    let mut steps = 0;
    if !tree.simplify() {
        return (best, best_msg);
    }
    while steps < 2000 && start.elapsed() < Duration::from_secs(20) {
        steps += 1;
        let v = tree.current();
        state.write_cur(b'F', index, &v);
        match check(&v) {
            Err(m) if signature(&m) == sig => {
                best = v;
                best_msg = m;
                if !tree.simplify() {
                    break;
                }
            }
            _ => {
                if !tree.complicate() {
                    break;
                }
            }
        }
    }
    (best, best_msg)
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// A byte-level mutation; positions are taken modulo the length.
#[derive(Debug, Clone)]
enum ByteMut {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn byte_mut() -> impl Strategy<Value = ByteMut> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(a, b)| ByteMut::Flip(a, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| ByteMut::Set(a, b)),
        1 => any::<usize>().prop_map(ByteMut::Truncate),
        1 => vec(any::<u8>(), 1..16).prop_map(ByteMut::Extend),
        1 => (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(a, b)| ByteMut::Insert(a, b)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(a, n)| ByteMut::Remove(a, n)),
    ]
}

fn apply_byte(b: &mut Vec<u8>, m: &ByteMut) {
    let len = b.len();
    match m {
        ByteMut::Flip(a, bit) if len > 0 => b[a % len] ^= 1 << bit,
        ByteMut::Set(a, v) if len > 0 => b[a % len] = *v,
        ByteMut::Truncate(a) => b.truncate(a % (len + 1)),
        ByteMut::Extend(x) => b.extend_from_slice(x),
        ByteMut::Insert(a, x) => {
            let at = a % (len + 1);
            b.splice(at..at, x.iter().copied());
        }
        ByteMut::Remove(a, n) if len > 0 => {
            let at = a % len;
            b.drain(at..(at + n).min(len));
        }
        _ => {}
    }
}

/// An edit of one node of a JSON document (nodes in pre-order, the index modulo their number).
#[derive(Debug, Clone)]
enum JsonEdit {
    Set(Value),
    Remove,
    /// `v` → `[v]`.
    Wrap,
    /// A number → its text, a text → its number (or null).
    Retype,
    /// Numbers times the factor.
    Scale(f64),
    /// `[[[…]]]` of this depth.
    Nest(usize),
}

fn json_value() -> impl Strategy<Value = Value> {
    let fixed = vec![
        json!(0),
        json!(-1),
        json!(1),
        json!(2),
        json!(3),
        json!(7),
        json!(1e308),
        json!(-1e308),
        json!(1e-300),
        json!(0.5),
        json!(-0.0),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(1u64 << 32),
        json!(1u64 << 40),
        json!(1_000_000_000u64),
        json!(100_000),
        json!("NaN"),
        json!("inf"),
        json!(""),
        json!("x"),
        json!("teacher"),
        json!("dsno"),
        json!("kd"),
        json!("unet"),
        json!("mlp"),
        json!("vp_cosine"),
        json!("vp_linear"),
        json!("edm"),
        json!("F16"),
        json!("BF16"),
        json!("F32"),
        json!("F64"),
        json!("U8"),
        json!("I32"),
        json!("I64"),
        json!("BOOL"),
        json!("F8_E4M3"),
        json!("f16"),
        json!("f32"),
        json!("ddim"),
        json!("dpmpp2m"),
        json!(FORMAT),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
        json!([0]),
        json!([-1]),
        json!([1, 0]),
        json!([0.0, 1.0]),
        json!([0.5, 0.5]),
        json!([1e308]),
        json!([0, 0]),
        json!([
            1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
            1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
        ]),
    ];
    prop_oneof![
        6 => select(fixed),
        1 => any::<i64>().prop_map(|x| json!(x)),
        1 => (-1e6f64..1e6).prop_map(|x| json!(x)),
        1 => "[a-z_]{0,8}".prop_map(Value::String),
    ]
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        8 => json_value().prop_map(JsonEdit::Set),
        2 => Just(JsonEdit::Remove),
        1 => Just(JsonEdit::Wrap),
        1 => Just(JsonEdit::Retype),
        2 => select(vec![0.0, -1.0, 2.0, 10.0, 1000.0, 1e9, 0.5, 1e300]).prop_map(JsonEdit::Scale),
        1 => select(vec![20usize, 200, 100_000]).prop_map(JsonEdit::Nest),
    ]
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut v = v;
    for s in path {
        v = match s {
            Seg::Key(k) => v.get_mut(k)?,
            Seg::Idx(i) => v.get_mut(*i)?,
        };
    }
    Some(v)
}

const NEST_MARK: &str = "\u{1}nest";

/// Which node of a JSON document an edit applies to: the n-th in pre-order (modulo their
/// number), or the n-th with a given key (then, if `elem` and the node is an array, one of its
/// elements). Keys make a mutation mean the same on every base, so shrinking can move it to a
/// smaller one.
#[derive(Debug, Clone)]
enum Sel {
    Node(usize),
    Key(&'static str, usize, Option<usize>),
}

fn sel(keys: &'static [&'static str]) -> impl Strategy<Value = Sel> {
    prop_oneof![
        1 => any::<usize>().prop_map(Sel::Node),
        3 => (select(keys), any::<usize>(), prop::option::of(any::<usize>()))
            .prop_map(|(k, n, e)| Sel::Key(k, n, e)),
    ]
}

/// The keys of the `dsno` metadata of a checkpoint.
const META_KEYS: &[&str] = &[
    "kind",
    "model",
    "image_size",
    "in_channels",
    "out_channels",
    "channels",
    "channel_mult",
    "num_res_blocks",
    "attn_resolutions",
    "num_heads",
    "dropout",
    "groups",
    "dim",
    "hidden",
    "blocks",
    "schedule",
    "lambda_min",
    "lambda_max",
    "beta_min",
    "beta_max",
    "sigma_min",
    "sigma_max",
    "rho",
    "step",
    "dataset",
    "times",
    "modes",
    "train",
];
/// The keys of a safetensors header.
const HEADER_KEYS: &[&str] = &["dtype", "shape", "data_offsets", "__metadata__"];
/// The keys of a store manifest.
const MANIFEST_KEYS: &[&str] = &[
    "format",
    "teacher_hash",
    "dataset",
    "solver",
    "steps",
    "seed",
    "times",
    "count",
    "shard_size",
    "sample_shape",
    "dtype",
];

/// Applies `e` to the node `at` of `v`. Nesting is left as a mark that [`json_text`] expands
/// (deep values are never built in memory).
fn edit_json(v: &mut Value, at: &Sel, e: &JsonEdit) {
    fn walk(v: &Value, p: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(p.clone());
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    p.push(Seg::Key(k.clone()));
                    walk(c, p, out);
                    p.pop();
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    p.push(Seg::Idx(i));
                    walk(c, p, out);
                    p.pop();
                }
            }
            _ => {}
        }
    }
    let mut paths = vec![];
    walk(v, &mut vec![], &mut paths);
    let path = match at {
        Sel::Node(n) => paths[n % paths.len()].clone(),
        Sel::Key(key, n, elem) => {
            let hits: Vec<&Vec<Seg>> = paths
                .iter()
                .filter(|p| matches!(p.last(), Some(Seg::Key(k)) if k == key))
                .collect();
            if hits.is_empty() {
                return;
            }
            let mut p = hits[n % hits.len()].clone();
            if let (Some(e), Some(Value::Array(a))) = (elem, node_mut(v, &p)) {
                if !a.is_empty() {
                    p.push(Seg::Idx(e % a.len()));
                }
            }
            p
        }
    };
    let path = &path;
    if let JsonEdit::Remove = e {
        if let Some((last, parent)) = path.split_last() {
            match (node_mut(v, parent), last) {
                (Some(Value::Object(m)), Seg::Key(k)) => {
                    m.remove(k);
                }
                (Some(Value::Array(a)), Seg::Idx(i)) if *i < a.len() => {
                    a.remove(*i);
                }
                _ => {}
            }
        }
        return;
    }
    let Some(node) = node_mut(v, path) else {
        return;
    };
    let old = node.take();
    *node = match e {
        JsonEdit::Set(x) => x.clone(),
        JsonEdit::Wrap => json!([old]),
        JsonEdit::Retype => match &old {
            Value::Number(n) => Value::String(n.to_string()),
            Value::String(s) => s
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number),
            Value::Bool(b) => json!(*b as i64),
            _ => Value::String(old.to_string()),
        },
        JsonEdit::Scale(k) => scale(&old, *k),
        JsonEdit::Nest(d) => Value::String(format!("{NEST_MARK}{d}")),
        JsonEdit::Remove => unreachable!(),
    };
}

fn scale(v: &Value, k: f64) -> Value {
    match v {
        Value::Number(n) => {
            if let (Some(i), true) = (n.as_i64(), k.fract() == 0.0 && k.abs() < 9e18) {
                json!(i.saturating_mul(k as i64))
            } else if let (Some(u), true) =
                (n.as_u64(), k.fract() == 0.0 && (0.0..9e18).contains(&k))
            {
                json!(u.saturating_mul(k as u64))
            } else {
                serde_json::Number::from_f64(n.as_f64().unwrap_or(0.0) * k)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| scale(x, k)).collect()),
        other => other.clone(),
    }
}

/// The JSON text of `v`, nesting marks expanded.
fn json_text(v: &Value) -> String {
    let mut s = serde_json::to_string(v).unwrap();
    while let Some(i) = s.find("\"\\u0001nest") {
        let end = i + 1 + s[i + 1..].find('"').unwrap();
        let depth: usize = s[i + 11..end].parse().unwrap_or(1);
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        s.replace_range(i..=end, &deep);
    }
    s
}

/// A safetensors file's header JSON and data, if it has a readable header.
fn st_split(b: &[u8]) -> Option<(Value, &[u8])> {
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    let header = serde_json::from_slice(b.get(8..end)?).ok()?;
    Some((header, &b[end..]))
}

/// A safetensors file of header text and data (the header padded with spaces to 8 bytes).
fn st_join(mut header: String, data: &[u8]) -> Vec<u8> {
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A mutation of a safetensors file.
#[derive(Debug, Clone)]
enum StMut {
    /// Anywhere in the file.
    Byte(ByteMut),
    /// A bit of the length field or of the JSON header.
    HeaderBit(usize, u8),
    /// The header length field: a change by a small amount, or a new value.
    LenDelta(i8),
    LenSet(u64),
    /// An edit of the `dsno` metadata JSON (the string value of `__metadata__.dsno`).
    Meta(Sel, JsonEdit),
    /// An edit of the header JSON (tensor dtypes, shapes, offsets, metadata strings).
    Header(Sel, JsonEdit),
}

fn st_mut(meta: bool) -> BoxedStrategy<StMut> {
    let w_meta = if meta { 8 } else { 0 };
    prop_oneof![
        w_meta => (sel(META_KEYS), json_edit()).prop_map(|(a, e)| StMut::Meta(a, e)),
        3 => (sel(HEADER_KEYS), json_edit()).prop_map(|(a, e)| StMut::Header(a, e)),
        2 => (any::<usize>(), 0u8..8).prop_map(|(a, b)| StMut::HeaderBit(a, b)),
        1 => any::<i8>().prop_map(StMut::LenDelta),
        1 => select(vec![0u64, 1, 2, 8, 100_000_001, 1 << 32, u64::MAX, u64::MAX - 7])
            .prop_map(StMut::LenSet),
        2 => byte_mut().prop_map(StMut::Byte),
    ]
    .boxed()
}

fn apply_st(b: &mut Vec<u8>, m: &StMut) {
    let header_len = || -> usize {
        let n = b
            .get(..8)
            .map_or(0, |x| u64::from_le_bytes(x.try_into().unwrap()));
        (8 + n.min(b.len() as u64) as usize).min(b.len())
    };
    match m {
        StMut::Byte(x) => apply_byte(b, x),
        StMut::HeaderBit(a, bit) => {
            let n = header_len();
            if n > 0 {
                b[a % n] ^= 1 << bit;
            }
        }
        StMut::LenDelta(d) if b.len() >= 8 => {
            let n = u64::from_le_bytes(b[..8].try_into().unwrap());
            b[..8].copy_from_slice(&n.wrapping_add(*d as i64 as u64).to_le_bytes());
        }
        StMut::LenSet(n) if b.len() >= 8 => b[..8].copy_from_slice(&n.to_le_bytes()),
        StMut::Meta(at, e) => {
            let Some((mut h, data)) = st_split(b) else {
                return;
            };
            let Some(text) = h
                .get("__metadata__")
                .and_then(|m| m.get("dsno"))
                .and_then(|m| m.as_str())
            else {
                return;
            };
            let Ok(mut meta) = serde_json::from_str::<Value>(text) else {
                return;
            };
            edit_json(&mut meta, at, e);
            h["__metadata__"]["dsno"] = Value::String(json_text(&meta));
            *b = st_join(json_text(&h), data);
        }
        StMut::Header(at, e) => {
            let Some((mut h, data)) = st_split(b) else {
                return;
            };
            edit_json(&mut h, at, e);
            *b = st_join(json_text(&h), data);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers several targets share

fn tiny_unet() -> UNetConfig {
    UNetConfig {
        image_size: 8,
        in_channels: 1,
        out_channels: 1,
        channels: 4,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        num_heads: 2,
        dropout: 0.0,
        groups: 2,
        num_classes: None,
        head_dim: None,
    }
}

fn tiny_mlp() -> MlpConfig {
    MlpConfig {
        dim: 2,
        hidden: 8,
        blocks: 1,
        dropout: 0.0,
    }
}

/// Writes a freshly initialised checkpoint to `path` and returns its bytes.
fn make_checkpoint(path: &Path, meta: CheckpointMeta, store: Option<Kind>) -> Vec<u8> {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    match meta.kind.clone() {
        ModelKind::Teacher => drop(meta.model.build(&vs.root()).unwrap()),
        ModelKind::Student(method) => {
            let cfg = OperatorConfig {
                backbone: meta.model.clone(),
                times: meta
                    .times
                    .clone()
                    .unwrap_or(OutputTimes::new(vec![0.0]).unwrap()),
                modes: meta.modes.unwrap_or(1),
            };
            let arch = meta.architecture();
            drop(Generator::new(&vs.root(), method, arch, &cfg, meta.schedule).unwrap());
        }
    }
    checkpoint::save(path, &meta, &checkpoint::named(&vs, ""), store).unwrap();
    std::fs::read(path).unwrap()
}

fn meta(kind: ModelKind, model: ModelConfig, schedule: Schedule) -> CheckpointMeta {
    CheckpointMeta {
        kind,
        model,
        schedule,
        step: 7,
        dataset: "toy".into(),
        times: None,
        modes: None,
        train: None,
        prediction: Default::default(),
        source: None,
    }
}

fn all_finite(t: &Tensor) -> bool {
    !t.is_floating_point() || t.isfinite().all().int64_value(&[]) == 1
}

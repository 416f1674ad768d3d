//! Set-up shared by the integration tests: temporary folders, the lock that serialises tests
//! which seed libtorch's global generator, where the data sets are, training options, and the
//! `dsno` binary.
#![allow(dead_code)] // each test file uses part of this module

use dsno::train::RunOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty folder for test `name` (unique per test process).
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dsno-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Training seeds libtorch's global generator at every step; tests that train in one process
/// take turns through this lock so that their random streams do not interleave.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The folder of data set `name` (`mnist`, `fashion-mnist`): `$DSNO_DATA/<name>` or the user
/// cache, as `dsno` resolves it. `scripts/test.sh` sets `DSNO_DATA` or fetches the data first.
/// Without the data a test fails with one line saying how to get it.
pub fn data_dir(name: &str) -> PathBuf {
    dsno::data::fetch::locate(name, None).unwrap_or_else(|e| {
        let e = e.to_string().replace('\n', " ");
        panic!(
            "the tests need the {name} data set: run `./dsno data fetch {name}` (scripts/test.sh \
             fetches every set it needs) or set DSNO_DATA to a folder holding {name}/ — {e}"
        )
    })
}

/// Training options: the CPU, no progress bar, output in `out`.
pub fn run(out: &Path, resume: bool) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume,
        ..Default::default()
    }
}

/// Runs the `dsno` binary.
pub fn dsno(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsno"))
        .args(args)
        .output()
        .expect("run dsno")
}

/// A model file of the repository's `models/`.
pub fn model(name: &str) -> PathBuf {
    root().join("models").join(name)
}

/// The SHA-256 (hex) of a file's bytes.
pub fn file_sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Asserts that the training files of two run folders are byte-identical (checkpoint and model).
pub fn assert_same_run_files(a: &Path, b: &Path) {
    for f in ["ckpt.safetensors", "model.safetensors"] {
        assert_eq!(
            file_sha256(&a.join(f)),
            file_sha256(&b.join(f)),
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The config of a tiny 28×28 U-Net teacher (8 channels, two levels, `num_classes` classes if
/// any) for 2 steps of 4 on images named "random".
pub fn tiny_teacher_config(num_classes: Option<i64>) -> dsno::train::teacher::TeacherConfig {
    use dsno::nn::{unet::UNetConfig, ModelConfig};
    use dsno::train::teacher::{DataConfig, TeacherConfig};
    let mut cfg = TeacherConfig::load(&root().join("configs/mnist.toml")).unwrap();
    cfg.model = ModelConfig::Unet(UNetConfig {
        channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        num_heads: 1,
        groups: 4,
        dropout: 0.0,
        num_classes,
        ..UNetConfig::mnist()
    });
    cfg.data = DataConfig::Idx {
        name: "random".into(),
    };
    cfg.train.steps = 2;
    cfg.train.batch_size = 4;
    cfg
}

/// A tiny 28×28 U-Net teacher ([`tiny_teacher_config`]) trained for 2 steps on random images into
/// `dir/teacher`; returns its model file. Callers training in-process hold [`serial`].
pub fn tiny_image_teacher(dir: &Path) -> PathBuf {
    use dsno::train::teacher::train;
    use tch::{Device, Kind, Tensor};
    let cfg = tiny_teacher_config(None);
    let images = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    train(&cfg, images, &run(&dir.join("teacher"), false), None).unwrap();
    dir.join("teacher/model.safetensors")
}

/// How far a computed tensor is from a stored fixture, measured in float64.
#[derive(Debug, Clone, Copy)]
pub struct FixtureDiff {
    /// max |got − want|
    pub max_abs: f64,
    /// max |want|, the fixture's scale
    pub scale: f64,
    /// max over elements of (|got − want| − atol) / |want|: the least `rtol` that `atol` needs
    /// (0 when `atol` alone covers every element)
    pub rtol_needed: f64,
}

impl FixtureDiff {
    /// max |got − want| / max |want|: the error relative to the tensor's scale, never to an
    /// element that may be near zero.
    pub fn scaled(&self) -> f64 {
        self.max_abs / self.scale.max(f64::MIN_POSITIVE)
    }
}

/// Compares `got` with the fixture tensor `want` as `numpy.allclose` does —
/// |got − want| ≤ atol + rtol·|want| elementwise, shapes equal, no NaN — and prints one line,
/// `fixture-diff WHAT: max|Δ| …, max|Δ|/max|want| …`, which scripts/isa-spread.sh collects under
/// each emulated instruction set (docs/RESULTS.md §18). libtorch chooses its kernels
/// per processor, so a fixture made on one CPU is matched to a measured tolerance, never bit
/// for bit; bit-identity is tested between two runs on one machine instead.
pub fn assert_close(what: &str, got: &tch::Tensor, want: &tch::Tensor, atol: f64, rtol: f64) {
    let d = fixture_diff(what, got, want, atol);
    assert!(
        d.max_abs.is_finite() && d.rtol_needed <= rtol,
        "{what}: differs from its fixture beyond |Δ| ≤ {atol:e} + {rtol:e}·|want| \
         (max |Δ| {:.3e}, max |want| {:.3e}, rtol needed {:.3e})",
        d.max_abs,
        d.scale,
        d.rtol_needed
    );
}

/// The difference of `got` from `want` (see [`FixtureDiff`]), printed as one `fixture-diff` line.
pub fn fixture_diff(what: &str, got: &tch::Tensor, want: &tch::Tensor, atol: f64) -> FixtureDiff {
    use tch::Kind;
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let (a, b) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    let diff = (&a - &b).abs();
    let max_abs = diff.max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]);
    // elements with want = 0 and |Δ| > atol need an infinite rtol: so they fail any tolerance
    let excess = (&diff - atol).clamp_min(0.0);
    let rtol_needed = (&excess / b.abs())
        .nan_to_num(0.0, f64::INFINITY, f64::INFINITY)
        .max()
        .double_value(&[]);
    let d = FixtureDiff {
        max_abs: if max_abs.is_nan() {
            f64::INFINITY
        } else {
            max_abs
        },
        scale,
        rtol_needed,
    };
    println!(
        "fixture-diff {what}: max|Δ| {:.3e}, max|Δ|/max|want| {:.3e}",
        d.max_abs,
        d.scaled()
    );
    d
}

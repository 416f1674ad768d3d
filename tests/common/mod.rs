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
pub fn data_dir(name: &str) -> PathBuf {
    dsno::data::fetch::locate(name, None).unwrap_or_else(|e| {
        panic!("{e}\n(the tests need the data sets: run scripts/test.sh, which fetches them)")
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

//! The command line: every subcommand has help, bad input fails with a message naming it,
//! sample writes a PNG.
use dsno::image::Image;
use std::process::Command;

fn dsno(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dsno"))
        .args(args)
        .output()
        .expect("run dsno")
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dsno-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "sample",
        "train-teacher",
        "trajectories",
        "distill",
        "eval",
        "bench",
        "export",
        "train-classifier",
    ] {
        let out = dsno(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help failed");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{sub}"
        );
    }
}

#[test]
fn toy_sample_writes_a_png_and_reports_nfe() {
    let dir = tempdir("sample");
    let png = dir.join("toy.png");
    let out = dsno(&[
        "sample",
        "--toy",
        "--device",
        "cpu",
        "--count",
        "300",
        "--steps",
        "12",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("NFE 12"));
    let img = Image::load_png(&png).unwrap();
    assert_eq!((img.width, img.height, img.channels), (512, 512, 3));
    // some dark sample dots were drawn on the white canvas
    assert!(img.data.chunks(3).filter(|p| p == &[20, 60, 160]).count() > 300);
    assert!(!dir.join(".toy.png.tmp").exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sample_without_arguments_uses_the_bundled_mnist_model() {
    let dir = tempdir("bundled");
    let out = Command::new(env!("CARGO_BIN_EXE_dsno"))
        .args(["sample", "--device", "cpu"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("NFE 1"));
    // 64 digits: an 8 × 8 grid of 28-pixel tiles with 2-pixel borders, not blank
    let img = Image::load_png(&dir.join("samples.png")).unwrap();
    assert_eq!(
        (img.width, img.height, img.channels),
        (8 * 28 + 9 * 2, 8 * 28 + 9 * 2, 1)
    );
    let bright = img.data.iter().filter(|&&v| v > 128).count() as f64 / img.data.len() as f64;
    assert!(
        (0.05..0.4).contains(&bright),
        "fraction of bright pixels {bright}"
    );
    // the bundled files on disk load as what they claim to be
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    dsno::model::Teacher::load(
        &root.join("models/mnist-teacher.safetensors"),
        tch::Device::Cpu,
    )
    .unwrap();
    for m in ["dsno", "kd"] {
        let model = dsno::model::OneStep::load(
            &root.join(format!("models/mnist-{m}.safetensors")),
            tch::Device::Cpu,
        )
        .unwrap();
        assert_eq!(model.meta.dataset, "mnist");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn keeping_freed_host_memory_changes_no_bits() {
    // the default (freed host memory kept for reuse) and glibc's own policy give the same
    // samples, bit for bit; on glibc the allocator accepts the settings
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    assert!(dsno::device::keep_freed_host_memory());
    let dir = tempdir("host-memory");
    let mut files = vec![];
    for (name, flag) in [("kept", None), ("released", Some("--release-host-memory"))] {
        let raw = dir.join(format!("{name}.safetensors"));
        let png = dir.join(format!("{name}.png"));
        let mut args = vec![
            "sample",
            "--device",
            "cpu",
            "--count",
            "16",
            "--out",
            png.to_str().unwrap(),
            "--safetensors",
            raw.to_str().unwrap(),
        ];
        args.extend(flag);
        let out = dsno(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        files.push(std::fs::read(&raw).unwrap());
    }
    assert!(
        files[0] == files[1],
        "samples differ between allocator policies"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_arguments_fail_clearly() {
    for (args, msg) in [
        (vec!["sample", "--count", "0"], "--count"),
        (vec!["sample", "--toy", "--solver", "rk4"], "unknown solver"),
        (vec!["sample", "--solver", "ddim"], "one-step"),
        (vec!["sample", "--device", "tpu"], "unknown device"),
        (vec!["distill"], "required"),
        (
            vec![
                "trajectories",
                "--teacher",
                "nowhere.safetensors",
                "--count",
                "1",
                "--out",
                "x",
            ],
            "nowhere.safetensors",
        ),
        (vec!["eval", "--data", "x"], "required"),
        (
            vec![
                "eval",
                "--data",
                "x",
                "--teacher",
                "nowhere.safetensors",
                "--out",
                "y",
            ],
            "nowhere.safetensors",
        ),
        (
            vec![
                "eval",
                "--data",
                "x",
                "--teacher",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/models/mnist-teacher.safetensors"
                ),
                "--classifier",
                "no-classifier.safetensors",
                "--out",
                "y",
            ],
            "no-classifier.safetensors",
        ),
        (
            vec![
                "train-classifier",
                "--data",
                "no-such-folder",
                "--out",
                "c.safetensors",
            ],
            "no-such-folder",
        ),
    ] {
        let out = dsno(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

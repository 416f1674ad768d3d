//! Hostile input, one or more cases per class: unbounded sizes are refused before allocating,
//! bad files and values are errors naming the file and field (never a panic), non-finite
//! weights and outputs are errors, failed commands leave no stray files, finished runs are not
//! overwritten, files are byte-reproducible and checksummed, and signals give 130 / 143.
mod common;

use common::{dsno, model, root, tempdir};
use std::path::{Path, PathBuf};
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command fails (status 1 or 2) with a message containing every one of `needles`, and no
/// panic.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let out = dsno(args);
    let err = stderr(&out);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: {:?} {err}",
        out.status
    );
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected `{n}` in: {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{args:?}: {err}"
    );
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Rewrites the `dsno` metadata JSON of a checkpoint with `edit` (tensor data untouched, so its
/// checksum stays valid).
fn edit_meta(src: &Path, dst: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header["__metadata__"]["dsno"].as_str().unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(meta).unwrap();
    edit(&mut meta);
    header["__metadata__"]["dsno"] = serde_json::Value::String(meta.to_string());
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&bytes[8 + n..]);
    std::fs::write(dst, out).unwrap();
}

/// A copy of the toy config with `line` appended to its `[train]` table (the last table).
fn toy_config(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("configs/toy2d.toml")).unwrap();
    let text = text
        .replace("steps = 500", "steps = 20")
        .replace("points = 50000", "points = 2000");
    let p = dir.join(format!("toy-{}.toml", extra.len()));
    std::fs::write(&p, format!("{text}{extra}\n")).unwrap();
    p
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn unbounded_sizes_are_refused_before_allocating() {
    let dir = tempdir("hostile-sizes");
    let out = dir.join("x.png");
    fails_with(
        &["sample", "--toy", "--steps", "4000000000", "--out", s(&out)],
        &["--steps"],
    );
    let store = dir.join("store");
    let teacher = model("mnist-teacher.safetensors");
    let args = [
        "trajectories",
        "--teacher",
        s(&teacher),
        "--count",
        "4",
        "--out",
        s(&store),
    ];
    fails_with(
        &[&args[..], &["--steps", "4000000000"]].concat(),
        &["steps", "100000"],
    );
    fails_with(
        &[&args[..], &["--times", "quad:1000000000"]].concat(),
        &["quad:1000000000"],
    );
    assert!(!store.exists(), "a refused run created {}", store.display());
    // 10¹² samples of 28×28 floats: far more than any machine's memory, refused at once
    let t = std::time::Instant::now();
    fails_with(
        &["sample", "--count", "1000000000000", "--out", s(&out)],
        &["memory"],
    );
    fails_with(
        &["--threads", "100000", "sample", "--out", s(&out)],
        &["--threads"],
    );
    assert!(t.elapsed().as_secs() < 30, "took {:?}", t.elapsed());
    assert!(!out.exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_checkpoint_metadata_is_an_error_naming_the_field() {
    let dir = tempdir("hostile-meta");
    let bad = dir.join("bad.safetensors");
    for (field, value, needle) in [
        ("image_size", serde_json::json!(0), "model.image_size"),
        ("channels", serde_json::json!(-3), "model.channels"),
        ("dropout", serde_json::json!(1.5), "model.dropout"),
        ("channel_mult", serde_json::json!([]), "model.channel_mult"),
    ] {
        edit_meta(&model("mnist-kd.safetensors"), &bad, |m| {
            m["model"][field] = value.clone()
        });
        let out = dir.join("x.png");
        fails_with(
            &["sample", "--model", s(&bad), "--out", s(&out)],
            &["bad.safetensors", needle],
        );
    }
    edit_meta(&model("mnist-dsno.safetensors"), &bad, |m| {
        m["times"] = serde_json::json!([0.5, 0.7, 0.0])
    });
    fails_with(
        &["sample", "--model", s(&bad)],
        &["bad.safetensors", "decreasing"],
    );
    edit_meta(&model("mnist-teacher.safetensors"), &bad, |m| {
        m["schedule"]["lambda_max"] = serde_json::json!(-30.0)
    });
    fails_with(
        &["sample", "--model", s(&bad), "--solver", "ddim"],
        &["schedule.lambda_max"],
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_labels_and_configs_are_errors_not_panics() {
    let dir = tempdir("hostile-labels");
    let data = common::data_dir("mnist");
    // a labels file shorter than the images, then one with a label of 12
    let set = dir.join("mnist");
    std::fs::create_dir_all(&set).unwrap();
    for f in [
        "train-images-idx3-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(data.join(f), set.join(f)).unwrap();
    }
    let labels = |n: u32, value: u8| {
        let mut b = vec![0, 0, 8, 1];
        b.extend(n.to_be_bytes());
        b.extend(std::iter::repeat_n(value, n as usize));
        std::fs::write(set.join("train-labels-idx1-ubyte"), b).unwrap();
    };
    let out = dir.join("c.safetensors");
    let args = [
        "train-classifier",
        "--data",
        s(&set),
        "--out",
        s(&out),
        "--steps",
        "1",
    ];
    labels(100, 3);
    fails_with(&args, &["60000 images but 100 labels"]);
    labels(60000, 12);
    fails_with(&args, &["labels range over 12..=12"]);
    assert!(!out.exists());
    // config values outside their ranges
    for (extra, needle) in [
        ("lr = -1.0", "train.lr"),
        ("grad_clip = -1.0", "train.grad_clip"),
        ("ema_decay = 1.0", "train.ema_decay"),
        ("batch_size = 0", "train.batch_size"),
    ] {
        let text = std::fs::read_to_string(toy_config(&dir, "")).unwrap();
        let key = extra.split(' ').next().unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = dir.join("cfg.toml");
        std::fs::write(&cfg, format!("{text}{extra}\n")).unwrap();
        let run = dir.join("run");
        fails_with(
            &["train-teacher", "--config", s(&cfg), "--out", s(&run)],
            &["cfg.toml", needle],
        );
        assert!(!run.exists());
    }
    let cfg = toy_config(&dir, "");
    fails_with(
        &[
            "train-teacher",
            "--config",
            s(&cfg),
            "--steps",
            "0",
            "--out",
            s(&dir.join("r0")),
        ],
        &["--steps"],
    );
    // and the library refuses it too
    let mut c = dsno::train::teacher::TeacherConfig::load(&cfg).unwrap();
    c.train.steps = 0;
    let data = c.data.load(None).unwrap();
    let e = dsno::train::teacher::train(&c, data, &common::run(&dir.join("r1"), false), None);
    assert!(e.err().unwrap().to_string().contains("train.steps"));
    assert!(!dir.join("r1").exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn non_finite_weights_and_outputs_are_errors() {
    let dir = tempdir("hostile-nan");
    // a NaN in one weight (the file re-written with a fresh, valid checksum)
    let ck = dsno::checkpoint::load(&model("mnist-kd.safetensors")).unwrap();
    let name = "conv_in.weight";
    let _g = tch::no_grad_guard();
    let _ = ck.tensors[name].get(0).get(0).get(0).get(0).fill_(f64::NAN);
    let bad = dir.join("nan.safetensors");
    let tensors: Vec<_> = ck
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    dsno::checkpoint::save(&bad, &ck.meta, &tensors, None).unwrap();
    let png = dir.join("x.png");
    fails_with(
        &["sample", "--model", s(&bad), "--out", s(&png)],
        &["nan.safetensors", name, "non-finite"],
    );
    fails_with(
        &[
            "export",
            "--model",
            s(&bad),
            "--out",
            s(&dir.join("e.safetensors")),
        ],
        &[name],
    );
    assert_eq!(files_in(&dir), ["nan.safetensors"]);
    // a generator whose output is NaN: nothing is returned for the batch
    let noise = dsno::sampling::Noise {
        seed: 0,
        shape: vec![2],
        scale: 1.0,
        kind: tch::Kind::Float,
        device: tch::Device::Cpu,
    };
    let e = dsno::sampling::batched(&noise, 0..8, 4, |_| {}, |x, _| Ok(vec![x.log()]))
        .expect_err("NaN outputs refused")
        .to_string();
    assert!(e.contains("non-finite") && e.contains("0..4"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn failed_commands_leave_no_stray_files() {
    let dir = tempdir("hostile-stray");
    // a rename onto a folder fails and removes its temporary file
    let target = dir.join("taken");
    std::fs::create_dir_all(target.join("inside")).unwrap();
    assert!(dsno::util::fsio::write_atomic(&target, b"data").is_err());
    assert_eq!(files_in(&dir), ["taken"]);
    // output times through t_max: refused, and the store folder is not created
    let store = dir.join("store");
    let teacher = model("mnist-teacher.safetensors");
    let args = [
        "trajectories",
        "--teacher",
        s(&teacher),
        "--count",
        "4",
        "--steps",
        "4",
        "--out",
        s(&store),
    ];
    fails_with(&[&args[..], &["--times", "1,0"]].concat(), &["output time"]);
    assert!(!store.exists(), "{:?}", files_in(&store));
    // the same folder then takes a valid run
    let out = dsno(&[&args[..], &["--times", "0.5,0", "--device", "cpu"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    // a NaN loss at the first step: no checkpoint is claimed, and no run folder is left behind
    let _s = common::serial();
    let cfg = dsno::train::teacher::TeacherConfig::load(&toy_config(&dir, "")).unwrap();
    let data = tch::Tensor::full([512, 2], f64::NAN, (tch::Kind::Float, tch::Device::Cpu));
    let run = dir.join("nan-run");
    let e = dsno::train::teacher::train(&cfg, data, &common::run(&run, false), None)
        .expect_err("NaN loss stops training")
        .to_string();
    assert!(e.contains("no checkpoint was written"), "{e}");
    assert!(!run.exists(), "{:?}", files_in(&run));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_finished_run_is_not_overwritten_and_files_are_reproducible() {
    let dir = tempdir("hostile-overwrite");
    let cfg = toy_config(&dir, "");
    let (a, b) = (dir.join("a"), dir.join("b"));
    for out in [&a, &b] {
        let o = dsno(&[
            "train-teacher",
            "--device",
            "cpu",
            "--config",
            s(&cfg),
            "--out",
            s(out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // identical runs, identical bytes (metadata keys in a fixed order)
    for f in ["model.safetensors", "ckpt.safetensors"] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    let before = std::fs::read(a.join("model.safetensors")).unwrap();
    fails_with(
        &["train-teacher", "--config", s(&cfg), "--out", s(&a)],
        &["already holds a run"],
    );
    assert!(std::fs::read(a.join("model.safetensors")).unwrap() == before);
    let o = dsno(&[
        "train-teacher",
        "--device",
        "cpu",
        "--config",
        s(&cfg),
        "--out",
        s(&a),
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // a flipped bit in the tensor data is caught by the checksum
    let mut bytes = std::fs::read(a.join("model.safetensors")).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    let flipped = dir.join("flipped.safetensors");
    std::fs::write(&flipped, bytes).unwrap();
    fails_with(
        &["sample", "--model", s(&flipped), "--solver", "ddim"],
        &["flipped.safetensors", "checksum"],
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn signals_stop_training_with_130_and_143_after_saving() {
    let dir = tempdir("hostile-signals");
    let cfg = toy_config(&dir, "").to_str().unwrap().to_string();
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let out = dir.join(sig);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dsno"))
            .args([
                "train-teacher",
                "--device",
                "cpu",
                "--config",
                &cfg,
                "--steps",
                "1000000",
            ])
            .args(["--out", s(&out)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // wait until training runs (its log exists), then signal
        let t = std::time::Instant::now();
        while !out.join("log.csv").exists() && t.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let kill = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{sig}");
        assert!(
            out.join("ckpt.safetensors").exists(),
            "SIG{sig}: no checkpoint saved"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

//! Hostile input, one or more cases per class: unbounded sizes are refused before allocating,
//! bad files and values are errors naming the file and field (never a panic), non-finite
//! weights and outputs are errors, failed commands leave no stray files, finished runs are not
//! overwritten, files are byte-reproducible and checksummed, and signals give 130 / 143.
use crate::common;

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

/// Rewrites the JSON header of a safetensors file with `edit` (tensor data untouched, so its
/// data checksum stays valid).
fn edit_header(src: &Path, dst: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&bytes[8 + n..]);
    std::fs::write(dst, out).unwrap();
}

/// Rewrites the `dsno` metadata JSON of a checkpoint with `edit` ([`edit_header`]).
fn edit_meta(src: &Path, dst: &Path, edit: impl Fn(&mut serde_json::Value)) {
    edit_header(src, dst, |header| {
        let meta = header["__metadata__"]["dsno"].as_str().unwrap();
        let mut meta: serde_json::Value = serde_json::from_str(meta).unwrap();
        edit(&mut meta);
        header["__metadata__"]["dsno"] = serde_json::Value::String(meta.to_string());
    });
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
        given: None,
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

/// What a file is now: its kind and, for a regular file, its SHA-256.
fn fingerprint(p: &Path) -> String {
    let m = std::fs::symlink_metadata(p).unwrap();
    match m.file_type().is_file() {
        true => common::file_sha256(p),
        false => format!("{:?}", m.file_type()),
    }
}

/// Runs `args`, which must fail naming `needles`, and checks that every path of `kept` is as it
/// was (kind and bytes).
fn refused_keeping(args: &[&str], needles: &[&str], kept: &[&Path]) {
    let before: Vec<String> = kept.iter().map(|p| fingerprint(p)).collect();
    fails_with(args, needles);
    let after: Vec<String> = kept.iter().map(|p| fingerprint(p)).collect();
    assert_eq!(before, after, "{args:?} changed its input");
}

#[test]
fn outputs_never_replace_devices_fifos_sockets_links_or_inputs() {
    let dir = tempdir("hostile-outputs");
    let m = dir.join("m.safetensors");
    std::fs::copy(model("mnist-dsno.safetensors"), &m).unwrap();
    let ms = s(&m);
    // a FIFO, a socket and (where this user may make one) a device node, in a private folder
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    let sock = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut specials = vec![fifo.clone(), sock.clone()];
    let dev = dir.join("null");
    let mknod = std::process::Command::new("mknod")
        .args([s(&dev), "c", "1", "3"])
        .stderr(std::process::Stdio::null())
        .status();
    match mknod {
        Ok(st) if st.success() => specials.push(dev),
        _ => eprintln!("mknod not permitted here: the device-node case is left out"),
    }
    for p in &specials {
        refused_keeping(
            &["sample", "--device", "cpu", "--count", "2", "--out", s(p)],
            &["not a regular file"],
            &[p],
        );
        refused_keeping(
            &["export", "--model", ms, "--out", s(p)],
            &["not a regular file"],
            &[p],
        );
    }
    // a folder is not replaced either
    refused_keeping(
        &[
            "sample",
            "--device",
            "cpu",
            "--count",
            "2",
            "--out",
            s(&dir),
        ],
        &["a folder"],
        &[&dir],
    );
    // reading a FIFO would block for ever: refused at once
    let t = std::time::Instant::now();
    fails_with(
        &["sample", "--model", s(&fifo)],
        &["fifo", "not a regular file"],
    );
    fails_with(&["checkpoint", "info", s(&fifo)], &["not a regular file"]);
    assert!(t.elapsed().as_secs() < 60);
    // a symbolic link is followed: its target is written, the link stays
    let (link, target) = (dir.join("link.png"), dir.join("sub/target.png"));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("sub/target.png", &link).unwrap();
    let out = dsno(&[
        "sample",
        "--device",
        "cpu",
        "--count",
        "2",
        "--out",
        s(&link),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(dsno::util::image::Image::load_png(&target).is_ok());
    // a link to the input is the input
    let alias = dir.join("alias.safetensors");
    std::os::unix::fs::symlink(&m, &alias).unwrap();
    // output = input, for every command that reads a file and writes one
    let dot = format!("{}/./m.safetensors", s(&dir));
    for args in [
        vec!["sample", "--model", ms, "--out", ms],
        vec!["sample", "--model", ms, "--safetensors", &dot],
        vec!["sample", "--model", ms, "--trajectory", s(&alias)],
        vec!["export", "--model", ms, "--out", s(&alias)],
        vec!["checkpoint", "model", ms, "--out", ms],
        vec!["checkpoint", "join", ms, "--out", ms],
    ] {
        refused_keeping(&args, &["m.safetensors", "it would be destroyed"], &[&m]);
    }
    // an output inside an input folder: the diffusers folder, the data
    let diffusers = dir.join("unet");
    std::fs::create_dir_all(&diffusers).unwrap();
    let weights = diffusers.join("diffusion_pytorch_model.safetensors");
    std::fs::copy(&m, &weights).unwrap();
    refused_keeping(
        &["import", "diffusers", s(&diffusers), "--out", s(&weights)],
        &["lies inside an input, DIR"],
        &[&weights],
    );
    let images = dir.join("images.safetensors");
    std::fs::copy(&m, &images).unwrap();
    refused_keeping(
        &["fid-ref", "--data", s(&images), "--out", s(&images)],
        &["--out is an input, --data"],
        &[&images],
    );
    // a run folder whose model file is the teacher: distilling there would replace it
    let teacher_dir = dir.join("teacher");
    std::fs::create_dir_all(&teacher_dir).unwrap();
    let teacher = teacher_dir.join("model.safetensors");
    std::fs::copy(model("mnist-teacher.safetensors"), &teacher).unwrap();
    let cfg = root().join("configs/distill-mnist.toml");
    refused_keeping(
        &[
            "distill",
            "--teacher",
            s(&teacher),
            "--trajectories",
            s(&dir.join("store")),
            "--config",
            s(&cfg),
            "--out",
            s(&teacher_dir),
        ],
        &["--out's model is an input, --teacher"],
        &[&teacher],
    );
    // two outputs of one command may not name the same file
    let a = dir.join("a.png");
    fails_with(
        &[
            "sample",
            "--device",
            "cpu",
            "--out",
            s(&a),
            "--safetensors",
            s(&a),
        ],
        &["name the same file"],
    );
    assert!(!a.exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_command_that_fails_part_way_leaves_none_of_its_outputs() {
    let dir = tempdir("hostile-all-or-none");
    // the teacher's PNG is drawn, then --trajectory is found not to apply: before, the PNG stayed
    let (png, traj) = (dir.join("new/t.png"), dir.join("new/traj.png"));
    let teacher = model("mnist-teacher.safetensors");
    fails_with(
        &[
            "sample",
            "--device",
            "cpu",
            "--model",
            s(&teacher),
            "--solver",
            "ddim",
            "--steps",
            "2",
            "--count",
            "2",
            "--out",
            s(&png),
            "--trajectory",
            s(&traj),
        ],
        &["--trajectory"],
    );
    assert!(
        !dir.join("new").exists(),
        "{:?}",
        files_in(&dir.join("new"))
    );
    // the mechanism: staged files appear together at the commit, or not at all
    let mut out = dsno::util::fsio::Outputs::new();
    let (a, b) = (dir.join("x/y/a.bin"), dir.join("x/b.bin"));
    for p in [&a, &b] {
        dsno::util::fsio::write_atomic(&out.stage(p).unwrap(), b"part").unwrap();
    }
    assert!(!a.exists() && !b.exists());
    drop(out);
    assert!(!dir.join("x").exists(), "{:?}", files_in(&dir.join("x")));
    let mut out = dsno::util::fsio::Outputs::new();
    for p in [&a, &b] {
        dsno::util::fsio::write_atomic(&out.stage(p).unwrap(), b"part").unwrap();
    }
    out.commit().unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), b"part");
    assert_eq!(files_in(&dir.join("x")), ["b.bin", "y"]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_folder_is_held_by_one_run_at_a_time() {
    let dir = tempdir("hostile-lock");
    // in one process: a second lock on the folder is refused, naming the holder
    let held = dir.join("held");
    let lock = dsno::util::fsio::FolderLock::acquire(&held).unwrap();
    let e = dsno::util::fsio::FolderLock::acquire(&held)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("in use by another dsno run")
            && e.contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
    drop(lock);
    assert_eq!(
        files_in(&held),
        Vec::<String>::new(),
        "the note goes with the lock"
    );
    drop(dsno::util::fsio::FolderLock::acquire(&held).unwrap());
    // between processes: a run in progress holds its folder against a second run of any kind
    let cfg = toy_config(&dir, "");
    let run = dir.join("run");
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_dsno"))
        .args(["train-teacher", "--device", "cpu", "--config", s(&cfg)])
        .args(["--steps", "1000000", "--out", s(&run)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !run.join("log.csv").exists() && t.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = format!("pid {}", first.id());
    for extra in [&["--overwrite"][..], &["--resume"], &[]] {
        let args = [
            &["train-teacher", "--config", s(&cfg), "--out", s(&run)][..],
            extra,
        ]
        .concat();
        fails_with(&args, &["in use by another dsno run", &pid]);
    }
    let teacher = model("mnist-teacher.safetensors");
    fails_with(
        &[
            "trajectories",
            "--teacher",
            s(&teacher),
            "--count",
            "2",
            "--steps",
            "2",
            "--out",
            s(&run),
        ],
        &["in use by another dsno run", &pid],
    );
    // a holder killed outright leaves no stale lock: the kernel drops it with the process
    first.kill().unwrap();
    first.wait().unwrap();
    let o = dsno(&[
        "train-teacher",
        "--device",
        "cpu",
        "--config",
        s(&cfg),
        "--out",
        s(&run),
        "--steps",
        "3",
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!run.join(".dsno-lock").exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_overwrite_keeps_the_old_run_until_its_first_checkpoint() {
    let dir = tempdir("hostile-overwrite-aside");
    let _s = common::serial();
    let cfg = dsno::train::teacher::TeacherConfig::load(&toy_config(&dir, "")).unwrap();
    let run = dir.join("run");
    let data = || tch::Tensor::randn([512, 2], (tch::Kind::Float, tch::Device::Cpu));
    dsno::train::teacher::train(&cfg, data(), &common::run(&run, false), None).unwrap();
    let names = ["ckpt.safetensors", "log.csv", "model.safetensors"];
    let old: Vec<String> = names
        .iter()
        .map(|f| common::file_sha256(&run.join(f)))
        .collect();
    let same_as_old = || {
        assert_eq!(files_in(&run), names);
        let now: Vec<String> = names
            .iter()
            .map(|f| common::file_sha256(&run.join(f)))
            .collect();
        assert_eq!(now, old);
    };
    // an overwrite that fails before its first checkpoint puts the old run back
    let overwrite = dsno::train::RunOptions {
        overwrite: true,
        ..common::run(&run, false)
    };
    let nan = tch::Tensor::full([512, 2], f64::NAN, (tch::Kind::Float, tch::Device::Cpu));
    assert!(dsno::train::teacher::train(&cfg, nan, &overwrite, None).is_err());
    same_as_old();
    // an overwrite killed before its first checkpoint (its new log beside the old run, moved
    // aside): the next run in the folder puts the old run back first, then resumes it
    for f in names {
        let aside = dsno::train::RunFiles::aside(&run.join(f));
        std::fs::rename(run.join(f), aside).unwrap();
    }
    std::fs::write(run.join("log.csv"), "step,new run\n").unwrap();
    let mut more = cfg.clone();
    more.train.steps += 5;
    let s = dsno::train::teacher::train(&more, data(), &common::run(&run, true), None).unwrap();
    assert_eq!(s.start_step, cfg.train.steps);
    assert_eq!(files_in(&run), names);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn statistics_samples_and_launch_variables_that_lie_are_refused() {
    use dsno::metrics::fid::FidStats;
    use tch::{Device, Kind, Tensor};
    let dir = tempdir("hostile-lies");
    let f64s = (Kind::Double, Device::Cpu);
    let write = |name: &str, mu: Tensor, sigma: Tensor| {
        let p = dir.join(name);
        FidStats { mu, sigma }.write(&p).unwrap();
        p
    };
    // a covariance of fewer samples than features is singular, and is a covariance
    let feats = Tensor::randn([5, 8], f64s);
    let ok = FidStats::of_features(&feats).unwrap();
    let p = write("ok.npz", ok.mu.shallow_clone(), ok.sigma.shallow_clone());
    assert!(FidStats::read(&p).is_ok());
    // negative definite (it gave FID 0), asymmetric, non-finite
    let neg = write("neg.npz", Tensor::zeros([8], f64s), -Tensor::eye(8, f64s));
    let e = FidStats::read(&neg).unwrap_err().to_string();
    assert!(
        e.contains("neg.npz") && e.contains("not positive semi-definite"),
        "{e}"
    );
    let a = ok.sigma.copy();
    let _ = a
        .get(0)
        .get(1)
        .fill_(a.get(0).get(1).double_value(&[]) + 1.0);
    let asym = write("asym.npz", ok.mu.shallow_clone(), a);
    let e = FidStats::read(&asym).unwrap_err().to_string();
    assert!(e.contains("not symmetric"), "{e}");
    // samples far outside the data range are not scored as if clamped
    use dsno::eval::score::check_image_range;
    let x = Tensor::rand([4, 1, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    assert!(check_image_range(&(&x * 1.5)).is_ok());
    let e = check_image_range(&(&x * 1000.0)).unwrap_err().to_string();
    assert!(e.contains("far outside the data range"), "{e}");
    assert!(check_image_range(&(&x / 0.0)).is_err());
    let wild = dir.join("wild.safetensors");
    dsno::checkpoint::save_tensors(&wild, &[("samples".into(), &x * 1000.0)]).unwrap();
    fails_with(
        &["fid", s(&wild), "--ref", s(&p)],
        &["wild.safetensors", "far outside the data range"],
    );
    // launch variables past a C int are refused, not cut to 32 bits
    let vars = |world: &'static str| {
        move |k: &str| match k {
            "WORLD_SIZE" => Some(world.to_string()),
            "RANK" => Some("0".to_string()),
            "MASTER_ADDR" => Some("127.0.0.1".to_string()),
            "MASTER_PORT" => Some("29500".to_string()),
            _ => None,
        }
    };
    let e = dsno::comm::Launch::from_vars(vars("4294967298"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("WORLD_SIZE") && e.contains("2147483647"), "{e}");
    assert!(dsno::comm::Launch::from_vars(vars("2")).unwrap().is_some());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_edited_store_manifest_is_caught() {
    use dsno::data::store::{load_shard, Manifest};
    let dir = tempdir("hostile-manifest");
    let store = dir.join("store");
    let teacher = model("mnist-teacher.safetensors");
    let out = dsno(&[
        "trajectories",
        "--device",
        "cpu",
        "--teacher",
        s(&teacher),
        "--count",
        "4",
        "--steps",
        "4",
        "--times",
        "0.5,0",
        "--shard-size",
        "2",
        "--out",
        s(&store),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mpath = store.join("manifest.json");
    let original = std::fs::read_to_string(&mpath).unwrap();
    let m = Manifest::load(&store).unwrap();
    assert!(load_shard(&store, &m, 1).is_ok());
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
        f(&mut v);
        std::fs::write(&mpath, v.to_string()).unwrap();
    };
    // every edit of a field the shards were made under is named
    for (field, value) in [
        ("times", serde_json::json!([0.25, 0.0])),
        ("seed", serde_json::json!(7)),
        ("dataset", serde_json::json!("fashion-mnist")),
        ("solver", serde_json::json!("ddim")),
        ("steps", serde_json::json!(8)),
        ("count", serde_json::json!(3)),
    ] {
        edit(&|v| v[field] = value.clone());
        let m = Manifest::load(&store).unwrap();
        let e = load_shard(&store, &m, 0).unwrap_err().to_string();
        assert!(
            e.contains("manifest.json was changed") && e.contains(&format!("`{field}`")),
            "{field}: {e}"
        );
    }
    // a field this build does not know is refused
    edit(&|v| v["comment"] = serde_json::json!("hello"));
    let e = Manifest::load(&store).unwrap_err().to_string();
    assert!(e.contains("unknown field `comment`"), "{e}");
    std::fs::write(&mpath, &original).unwrap();
    // two identical runs into one store at once: one holds it, the other is refused, and the
    // store keeps its manifest
    let args = |out: &Path| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_dsno"));
        c.args([
            "trajectories",
            "--device",
            "cpu",
            "--teacher",
            s(&teacher),
            "--count",
            "64",
        ])
        .args(["--steps", "8", "--shard-size", "8", "--out", s(out)]);
        c
    };
    let two = dir.join("two");
    let mut first = args(&two)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !two.join("manifest.json").exists() && t.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = args(&two).output().unwrap();
    let first = first.wait().unwrap();
    assert!(first.success());
    if !second.status.success() {
        assert!(
            stderr(&second).contains("in use by another dsno run"),
            "{}",
            stderr(&second)
        );
    }
    assert!(Manifest::load(&two).is_ok());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_model_file_whose_header_was_edited_is_refused() {
    let dir = tempdir("hostile-header");
    // a file of this build (format 2): its header checksum catches an edit of the metadata
    let m = dir.join("m.safetensors");
    let o = dsno(&[
        "export",
        "--model",
        s(&model("mnist-kd.safetensors")),
        "--out",
        s(&m),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sample = |p: &Path| {
        let out = dir.join("x.png");
        dsno(&[
            "sample",
            "--device",
            "cpu",
            "--count",
            "2",
            "--model",
            s(p),
            "--out",
            s(&out),
        ])
    };
    assert!(sample(&m).status.success());
    let bad = dir.join("bad.safetensors");
    edit_meta(&m, &bad, |v| {
        v["dataset"] = serde_json::json!("fashion-mnist")
    });
    fails_with(
        &["sample", "--model", s(&bad)],
        &["bad.safetensors", "header checksum mismatch"],
    );
    // and removing the checksum does not switch the check off
    edit_header(&m, &bad, |h| {
        h["__metadata__"]
            .as_object_mut()
            .unwrap()
            .remove("sha256_header");
    });
    fails_with(
        &["sample", "--model", s(&bad)],
        &["bad.safetensors", "sha256_header", "edited"],
    );
    // a tensor named twice in a header (a JSON parser keeps the last) is refused
    let bytes = std::fs::read(&m).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let names: Vec<String> = {
        let h: serde_json::Value = serde_json::from_str(&text).unwrap();
        h.as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect()
    };
    let a = names[0].clone();
    let h: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = format!("\"{a}\":{}", serde_json::to_string(&h[&a]).unwrap());
    assert!(text.contains(&entry), "{entry}");
    let mut twice = text
        .trim_end()
        .replacen(&entry, &format!("{entry},{entry}"), 1)
        .into_bytes();
    twice.resize(twice.len().div_ceil(8) * 8, b' ');
    let mut out = (twice.len() as u64).to_le_bytes().to_vec();
    out.extend(&twice);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&bad, out).unwrap();
    fails_with(
        &["sample", "--model", s(&bad)],
        &["bad.safetensors", "twice", &a],
    );
    // every field is known, and the format is one this build reads
    edit_meta(&model("mnist-kd.safetensors"), &bad, |v| {
        v["comment"] = serde_json::json!("hello")
    });
    fails_with(
        &["sample", "--model", s(&bad)],
        &["unknown field `comment`"],
    );
    edit_header(&model("mnist-kd.safetensors"), &bad, |h| {
        h["__metadata__"]["format"] = serde_json::json!("dsno-checkpoint-9");
    });
    fails_with(&["sample", "--model", s(&bad)], &["dsno-checkpoint-9"]);
    // metadata against the network: two heads need twice the data's channels
    edit_meta(&model("mnist-teacher.safetensors"), &bad, |v| {
        v["prediction"] = serde_json::json!("both")
    });
    fails_with(
        &["sample", "--model", s(&bad), "--solver", "ddim"],
        &["bad.safetensors", "model.out_channels", "both"],
    );
    // output times against the training record: a DSNO trained on 4 times does not sample 5
    let mut meta = dsno::checkpoint::read_meta(&model("mnist-dsno.safetensors")).unwrap();
    meta.train = Some(serde_json::json!({ "store": { "times": meta.times } }));
    assert!(meta.validate().is_ok());
    meta.times = Some(dsno::schedule::parse_output_times("0.8,0.5625,0.25,0.0625,0").unwrap());
    let e = meta.validate().unwrap_err().to_string();
    assert!(e.contains("train.store.times"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn eval_refuses_models_made_for_another_data_set() {
    let dir = tempdir("hostile-eval");
    let bad = dir.join("fashion-dsno.safetensors");
    edit_meta(&model("mnist-dsno.safetensors"), &bad, |v| {
        v["dataset"] = serde_json::json!("fashion-mnist")
    });
    let out = dir.join("report");
    let teacher = model("mnist-teacher.safetensors");
    fails_with(
        &[
            "eval",
            "--device",
            "cpu",
            "--teacher",
            s(&teacher),
            "--dsno",
            s(&bad),
            "--count",
            "16",
            "--baseline",
            "none",
            "--out",
            s(&out),
        ],
        &["fashion-dsno.safetensors", "`fashion-mnist`", "`mnist`"],
    );
    assert!(!out.exists(), "{:?}", files_in(&out));
    std::fs::remove_dir_all(dir).ok();
}

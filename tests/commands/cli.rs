//! The command line: every subcommand has help, bad input fails with a message naming it,
//! sample writes PNGs, trajectory strips and raw samples.
use crate::common;

use common::dsno;
use dsno::model::Teacher;
use dsno::schedule::parse_output_times;
use dsno::solver::Solver;
use dsno::train::distill::{distill, DistillConfig};
use dsno::train::trajectories::{generate, GenerateOptions};
use dsno::util::image::Image;
use std::path::Path;
use std::process::Command;
use tch::{Device, Tensor};

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
        "data",
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
    let dir = common::tempdir("toy-sample");
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
    let dir = common::tempdir("bundled-default");
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
    let dir = common::tempdir("host-memory");
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
        (vec!["sample", "--toy", "--solver", "rk4"], "rk4"),
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

#[test]
fn sample_writes_grids_and_trajectory_strips() {
    let _s = common::serial();
    let dir = common::tempdir("sample-strips");
    // a tiny image teacher on random images, a store of 12, a DSNO student of 2 steps
    let tpath = common::tiny_image_teacher(&dir);
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    let o = GenerateOptions {
        solver: Solver::DpmSolver2M,
        steps: 4,
        times: parse_output_times("quad:4").unwrap(),
        count: 12,
        seed: 3,
        shard_size: 10,
        batch: 7,
        fp16: false,
        part: (0, 1),
        class: None,
        guidance: None,
        progress: false,
        comm: Default::default(),
    };
    generate(&teacher, &tpath, &dir.join("store"), &o).unwrap();
    let mut dcfg = DistillConfig::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/distill-toy2d.toml"),
    )
    .unwrap();
    dcfg.validation = 2;
    dcfg.train.steps = 2;
    dcfg.train.batch_size = 4;
    distill(
        &dcfg,
        &tpath,
        &dir.join("store"),
        None,
        &common::run(&dir.join("dsno"), false),
    )
    .unwrap();
    drop(_s);

    let bin = env!("CARGO_BIN_EXE_dsno");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .args(["--device", "cpu"])
            .output()
            .unwrap()
    };
    let dsno_model = dir.join("dsno/model.safetensors");
    let (grid, strip, raw) = (
        dir.join("grid.png"),
        dir.join("strip.png"),
        dir.join("raw.safetensors"),
    );
    let out = run(&[
        "sample",
        "--model",
        dsno_model.to_str().unwrap(),
        "--count",
        "10",
        "--out",
        grid.to_str().unwrap(),
        "--trajectory",
        strip.to_str().unwrap(),
        "--safetensors",
        raw.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("NFE 1"));
    // 10 samples → 4 columns × 3 rows of 28 px with 2 px borders
    let g = dsno::util::image::Image::load_png(&grid).unwrap();
    assert_eq!((g.width, g.height), (4 * 28 + 5 * 2, 3 * 28 + 4 * 2));
    // the strip: one row per sample, one column per output time (M = 4)
    let s = dsno::util::image::Image::load_png(&strip).unwrap();
    assert_eq!((s.width, s.height), (4 * 28 + 5 * 2, 10 * 28 + 11 * 2));
    let samples = Tensor::read_safetensors(&raw).unwrap();
    assert_eq!(samples[0].1.size(), vec![10, 1, 28, 28]);

    // a teacher without --solver, --count 0, a one-step model with --solver
    for (args, msg) in [
        (
            vec!["sample", "--model", tpath.to_str().unwrap()],
            "--solver",
        ),
        (
            vec![
                "sample",
                "--model",
                dsno_model.to_str().unwrap(),
                "--count",
                "0",
            ],
            "--count",
        ),
        (
            vec![
                "sample",
                "--model",
                dsno_model.to_str().unwrap(),
                "--solver",
                "ddim",
            ],
            "one-step",
        ),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(msg) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    // the teacher with a solver works and reports its NFE
    let out = run(&[
        "sample",
        "--model",
        tpath.to_str().unwrap(),
        "--solver",
        "ddim",
        "--steps",
        "3",
        "--count",
        "4",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("NFE 3"));
    std::fs::remove_dir_all(dir).ok();
}

/// `timeout` sends its SIGTERM twice, to the command and to its process group: a training
/// command takes a repeat within a second as the same request, finishes its step, saves it and
/// exits with 143. (The MNIST U-Net's steps take over a second on one thread, so the repeat,
/// 100 ms after the first, arrives mid-step.)
#[test]
fn a_repeated_sigterm_stops_training_after_a_saved_step() {
    let dir = common::tempdir("double-term");
    let out = dir.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dsno"))
        .args(["--device", "cpu", "--threads", "1", "train-teacher"])
        .args(["--config", "configs/mnist.toml", "--data"])
        .arg(common::data_dir("mnist"))
        .arg("--out")
        .arg(&out)
        .current_dir(common::root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    for _ in 0..2 {
        // SAFETY: kill(2) on our own child's pid
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}\n{err}");
    assert!(err.contains("stopped by signal 15"), "{err}");
    let step = dsno::model::peek(&out.join("ckpt.safetensors"))
        .unwrap()
        .step;
    assert!(step >= 1, "saved at step {step}");
    std::fs::remove_dir_all(dir).ok();
}

/// `sample --noise`: the seeded noise written to a file gives the seeded samples bit for bit
/// (one-step model and teacher); a class-conditional model takes the file's labels; a wrong
/// shape, labels for an unconditional model, a conditional model without labels, or a label
/// out of range are refused naming the file, and nothing is written.
#[test]
fn sample_from_given_noise_is_the_seeded_draw() {
    use tch::Kind;
    let dir = common::tempdir("given-noise");
    let p = |name: &str| dir.join(name).display().to_string();
    let samples = |f: &str| {
        dsno::checkpoint::read_plain_tensors(&dir.join(f)).unwrap()["samples"].shallow_clone()
    };
    let ok = |args: &[&str]| {
        let o = dsno(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let s = dsno::schedule::Schedule::vp_cosine();
    let x =
        dsno::rng::noise(5, 0..6, &[1, 28, 28], Kind::Float, Device::Cpu) * s.sigma(s.t_range().1);
    let save = |name: &str, t: Vec<(&str, Tensor)>| {
        let t: Vec<(String, Tensor)> = t.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
        dsno::checkpoint::save_tensors(&dir.join(name), &t).unwrap();
    };
    save("x.safetensors", vec![("x_T", x.shallow_clone())]);
    let dev = ["--device", "cpu"];
    // the bundled DSNO: seeded vs given
    ok(&[
        &dev[..],
        &[
            "sample",
            "--seed",
            "5",
            "--count",
            "6",
            "--out",
            &p("a.png"),
            "--safetensors",
            &p("a.st"),
        ],
    ]
    .concat());
    ok(&[
        &dev[..],
        &[
            "sample",
            "--noise",
            &p("x.safetensors"),
            "--out",
            &p("b.png"),
            "--safetensors",
            &p("b.st"),
        ],
    ]
    .concat());
    assert!(samples("a.st").equal(&samples("b.st")));
    // the teacher with a solver starting at t_max: the same
    let t = common::model("mnist-teacher.safetensors")
        .display()
        .to_string();
    let teach = ["--model", t.as_str(), "--solver", "ddim", "--steps", "3"];
    ok(&[
        &dev[..],
        &[
            "sample",
            "--seed",
            "5",
            "--count",
            "6",
            "--out",
            &p("c.png"),
            "--safetensors",
            &p("c.st"),
        ],
        &teach[..],
    ]
    .concat());
    ok(&[
        &dev[..],
        &[
            "sample",
            "--noise",
            &p("x.safetensors"),
            "--out",
            &p("d.png"),
            "--safetensors",
            &p("d.st"),
        ],
        &teach[..],
    ]
    .concat());
    assert!(samples("c.st").equal(&samples("d.st")));
    // the conditional DSNO: the file's labels are the classes drawn, as --class draws them
    let cond = common::model("mnist-cond-dsno.safetensors")
        .display()
        .to_string();
    let y = Tensor::from_slice(&[3i64, 3, 3, 3, 3, 3]);
    save(
        "xy.safetensors",
        vec![("x_T", x.shallow_clone()), ("labels", y)],
    );
    ok(&[
        &dev[..],
        &[
            "sample",
            "--model",
            &cond,
            "--noise",
            &p("xy.safetensors"),
            "--out",
            &p("e.png"),
            "--safetensors",
            &p("e.st"),
        ],
    ]
    .concat());
    ok(&[
        &dev[..],
        &[
            "sample",
            "--model",
            &cond,
            "--noise",
            &p("x.safetensors"),
            "--class",
            "3",
            "--out",
            &p("f.png"),
            "--safetensors",
            &p("f.st"),
        ],
    ]
    .concat());
    assert!(samples("e.st").equal(&samples("f.st")));
    assert!(!samples("e.st").equal(&samples("a.st")));
    // bad files
    save(
        "shape.safetensors",
        vec![(
            "x_T",
            Tensor::zeros([2, 1, 27, 28], (Kind::Float, Device::Cpu)),
        )],
    );
    save(
        "range.safetensors",
        vec![
            ("x_T", x.shallow_clone()),
            ("labels", Tensor::from_slice(&[0i64, 1, 2, 3, 4, 10])),
        ],
    );
    for (args, want) in [
        (vec!["--noise", "shape.safetensors"], "[N, 1, 28, 28]"),
        (vec!["--noise", "xy.safetensors"], "not class-conditional"),
        (
            vec!["--model", cond.as_str(), "--noise", "x.safetensors"],
            "needs a tensor `labels`",
        ),
        (
            vec!["--model", cond.as_str(), "--noise", "range.safetensors"],
            "label 10",
        ),
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.ends_with(".safetensors") && !a.contains('/') {
                    p(a)
                } else {
                    a.to_string()
                }
            })
            .collect();
        let mut full: Vec<&str> = vec!["--device", "cpu", "sample", "--out"];
        let out = p("bad.png");
        full.push(&out);
        full.extend(args.iter().map(|s| s.as_str()));
        let o = dsno(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{full:?}: {err}");
        assert!(!dir.join("bad.png").exists());
    }
    std::fs::remove_dir_all(dir).ok();
}

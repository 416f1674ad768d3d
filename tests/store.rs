//! Trajectory store: resume after a kill gives identical bytes, shards partition the indices,
//! corrupt shards are regenerated, mismatched stores are rejected; distillation resumes exactly;
//! `dsno sample` on one-step models.
use dsno::checkpoint;
use dsno::data::trajectories::{generate, load_store, shard_path, GenerateOptions, Manifest};
use dsno::model::Teacher;
use dsno::nn::unet::UNetConfig;
use dsno::nn::ModelConfig;
use dsno::schedule::parse_output_times;
use dsno::solver::Solver;
use dsno::train::distill::{distill, DistillConfig, Method};
use dsno::train::teacher::{train, DataConfig, TeacherConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dsno-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small toy teacher (40 steps) in `dir/teacher`.
fn toy_teacher(dir: &Path) -> PathBuf {
    let mut cfg =
        TeacherConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/toy2d.toml"))
            .unwrap();
    cfg.train.steps = 40;
    train(
        &cfg,
        cfg.data.load(None).unwrap(),
        &dir.join("teacher"),
        false,
        None,
        Device::Cpu,
        false,
    )
    .unwrap();
    dir.join("teacher/model.safetensors")
}

fn options(count: usize, part: (usize, usize)) -> GenerateOptions {
    GenerateOptions {
        solver: Solver::DpmSolver2M,
        steps: 8,
        times: parse_output_times("quad:4").unwrap(),
        count,
        seed: 3,
        shard_size: 10,
        batch: 7,
        fp16: false,
        part,
        progress: false,
    }
}

fn shard_bytes(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|j| std::fs::read(shard_path(dir, j)).unwrap())
        .collect()
}

#[test]
fn resume_after_a_kill_gives_identical_bytes() {
    let _s = serial();
    let dir = tempdir("resume");
    let tpath = toy_teacher(&dir);
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    let a = dir.join("a");
    generate(&teacher, &tpath, &a, &options(45, (0, 1))).unwrap();
    let want = shard_bytes(&a, 5);
    // a killed run: shards 0 and 1 complete, shard 2 half written under its final name,
    // shard 3 only as a stray temporary file
    let b = dir.join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(a.join("manifest.json"), b.join("manifest.json")).unwrap();
    std::fs::write(shard_path(&b, 0), &want[0]).unwrap();
    std::fs::write(shard_path(&b, 1), &want[1]).unwrap();
    std::fs::write(shard_path(&b, 2), &want[2][..want[2].len() / 2]).unwrap();
    std::fs::write(b.join(".traj-00003.safetensors.tmp"), b"partial").unwrap();
    let s = generate(&teacher, &tpath, &b, &options(45, (0, 1))).unwrap();
    assert_eq!((s.kept, s.made), (2, 3));
    assert_eq!(s.regenerated.len(), 1);
    assert!(
        s.regenerated[0].ends_with("traj-00002.safetensors"),
        "{:?}",
        s.regenerated
    );
    assert_eq!(shard_bytes(&b, 5), want);
    // the whole store loads, and sample i's noise is the same as in a one-sample store
    let store = load_store(&b).unwrap();
    assert_eq!(store.x_t.size(), vec![45, 2]);
    assert_eq!(store.targets.size(), vec![45, 4, 2]);
    let x = dsno::rng::noise(3, [17u64], &[2], Kind::Float, Device::Cpu);
    assert!(store.x_t.get(17).equal(&x.get(0)));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn parts_cover_every_index_once_and_merge_by_copying() {
    let _s = serial();
    let dir = tempdir("parts");
    let tpath = toy_teacher(&dir);
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    let whole = dir.join("whole");
    generate(&teacher, &tpath, &whole, &options(55, (0, 1))).unwrap();
    let merged = dir.join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    let mut seen = vec![0usize; 55];
    for k in 0..3 {
        let part = dir.join(format!("part{k}"));
        let s = generate(&teacher, &tpath, &part, &options(55, (k, 3))).unwrap();
        assert_eq!(s.made, 2); // 6 shards, round-robin over 3 parts
        for e in std::fs::read_dir(&part).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if name.starts_with("traj-") {
                let j: usize = name[5..10].parse().unwrap();
                let m = Manifest::load(&part).unwrap();
                let (lo, hi) = m.shard_range(j);
                seen[lo..hi].iter_mut().for_each(|c| *c += 1);
            }
            std::fs::copy(e.path(), merged.join(&name)).unwrap();
        }
    }
    assert!(seen.iter().all(|&c| c == 1), "{seen:?}");
    assert_eq!(shard_bytes(&merged, 6), shard_bytes(&whole, 6));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn mismatched_and_empty_stores_are_rejected() {
    let _s = serial();
    let dir = tempdir("mismatch");
    let tpath = toy_teacher(&dir);
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    let store = dir.join("store");
    generate(&teacher, &tpath, &store, &options(20, (0, 1))).unwrap();
    // other arguments into the same store
    let mut o = options(20, (0, 1));
    o.steps = 16;
    let e = generate(&teacher, &tpath, &store, &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("manifest.json") && e.contains("other settings"),
        "{e}"
    );
    assert!(generate(&teacher, &tpath, &dir.join("zero"), &options(0, (0, 1))).is_err());
    // another teacher: distillation refuses the store
    let mut cfg =
        TeacherConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/toy2d.toml"))
            .unwrap();
    cfg.train.steps = 3;
    train(
        &cfg,
        cfg.data.load(None).unwrap(),
        &dir.join("other"),
        false,
        None,
        Device::Cpu,
        false,
    )
    .unwrap();
    let mut dcfg = DistillConfig::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/distill-toy2d.toml"),
    )
    .unwrap();
    dcfg.validation = 2;
    dcfg.train.steps = 2;
    let e = distill(
        &dcfg,
        &dir.join("other/model.safetensors"),
        &store,
        &dir.join("d"),
        false,
        Device::Cpu,
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("another teacher"), "{e}");
    dcfg.times = Some(vec![0.75, 0.5, 0.25, 0.0]);
    let e = distill(
        &dcfg,
        &tpath,
        &store,
        &dir.join("d"),
        false,
        Device::Cpu,
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("output times"), "{e}");
    // an empty store (manifest with count 0) and a store with a missing shard
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut m = Manifest::load(&store).unwrap();
    m.count = 0;
    std::fs::write(
        empty.join("manifest.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    let e = load_store(&empty).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    std::fs::remove_file(shard_path(&store, 1)).unwrap();
    let e = load_store(&store).unwrap_err().to_string();
    assert!(e.contains("traj-00001.safetensors"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn distillation_resume_gives_identical_weights() {
    let _s = serial();
    let dir = tempdir("distill-resume");
    let tpath = toy_teacher(&dir);
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    generate(&teacher, &tpath, &dir.join("store"), &options(60, (0, 1))).unwrap();
    let mut dcfg = DistillConfig::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/distill-toy2d.toml"),
    )
    .unwrap();
    dcfg.validation = 10;
    dcfg.dropout = Some(0.1);
    dcfg.train.batch_size = 16;
    dcfg.train.checkpoint_every = 6;
    dcfg.train.log_every = 3;
    for method in [Method::Dsno, Method::Kd] {
        dcfg.method = method;
        dcfg.train.steps = 12;
        let a = dir.join(format!("{method:?}-a"));
        distill(
            &dcfg,
            &tpath,
            &dir.join("store"),
            &a,
            false,
            Device::Cpu,
            false,
        )
        .unwrap();
        let b = dir.join(format!("{method:?}-b"));
        dcfg.train.steps = 6;
        distill(
            &dcfg,
            &tpath,
            &dir.join("store"),
            &b,
            false,
            Device::Cpu,
            false,
        )
        .unwrap();
        dcfg.train.steps = 12;
        distill(
            &dcfg,
            &tpath,
            &dir.join("store"),
            &b,
            true,
            Device::Cpu,
            false,
        )
        .unwrap();
        let (ca, cb) = (
            checkpoint::load(&a.join("ckpt.safetensors")).unwrap(),
            checkpoint::load(&b.join("ckpt.safetensors")).unwrap(),
        );
        assert_eq!(ca.meta.step, 12);
        for (name, t) in &ca.tensors {
            assert!(
                t.equal(&cb.tensors[name]),
                "{method:?}: {name} differs after resume"
            );
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sample_writes_grids_and_trajectory_strips() {
    let _s = serial();
    let dir = tempdir("sample");
    // a tiny image teacher on random images, a store of 12, a DSNO student of 2 steps
    let model = ModelConfig::Unet(UNetConfig {
        channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        num_heads: 1,
        groups: 4,
        dropout: 0.0,
        ..UNetConfig::mnist()
    });
    let mut cfg =
        TeacherConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/mnist.toml"))
            .unwrap();
    cfg.model = model;
    cfg.data = DataConfig::Idx {
        name: "random".into(),
    };
    cfg.train.steps = 2;
    cfg.train.batch_size = 4;
    let images = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    train(
        &cfg,
        images,
        &dir.join("teacher"),
        false,
        None,
        Device::Cpu,
        false,
    )
    .unwrap();
    let tpath = dir.join("teacher/model.safetensors");
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    let mut o = options(12, (0, 1));
    o.steps = 4;
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
        &dir.join("dsno"),
        false,
        Device::Cpu,
        false,
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
    let g = dsno::image::Image::load_png(&grid).unwrap();
    assert_eq!((g.width, g.height), (4 * 28 + 5 * 2, 3 * 28 + 4 * 2));
    // the strip: one row per sample, one column per output time (M = 4)
    let s = dsno::image::Image::load_png(&strip).unwrap();
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

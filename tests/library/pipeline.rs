//! The toy pipeline end to end: teacher → trajectories → DSNO and KD → one-step samples.
use crate::common;

use dsno::metrics::sliced_wasserstein;
use dsno::model::{OneStep, Teacher};
use dsno::rng::noise;
use dsno::schedule::parse_output_times;
use dsno::solver::Solver;
use dsno::train::distill::{distill, DistillConfig, Method};
use dsno::train::teacher::{train, TeacherConfig};
use dsno::train::trajectories::{generate, trajectory_grid, GenerateOptions};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn toy_dsno_matches_the_teacher_and_beats_kd() {
    let _serial = common::serial();
    let dir = std::env::temp_dir().join(format!("dsno-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = TeacherConfig::load(&root().join("configs/toy2d.toml")).unwrap();
    train(
        &cfg,
        cfg.data.load(None).unwrap(),
        &common::run(&dir.join("teacher"), false),
        None,
    )
    .unwrap();
    let tpath = dir.join("teacher/model.safetensors");
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    let times = parse_output_times("quad:4").unwrap();
    let o = GenerateOptions {
        solver: Solver::DpmSolver2M,
        steps: 32,
        times: times.clone(),
        count: 4000,
        seed: 0,
        shard_size: 1000,
        batch: 1000,
        fp16: false,
        part: (0, 1),
        class: None,
        guidance: None,
        progress: false,
        comm: Default::default(),
    };
    generate(&teacher, &tpath, &dir.join("traj"), &o).unwrap();
    let mut dcfg = DistillConfig::load(&root().join("configs/distill-toy2d.toml")).unwrap();
    for method in [Method::DSNO, Method::KD] {
        dcfg.method = method.clone();
        let out = dir.join(format!("{method}"));
        distill(
            &dcfg,
            &tpath,
            &dir.join("traj"),
            None,
            &common::run(&out, false),
        )
        .unwrap();
    }
    // fresh noise (indices past the store), the teacher's own 32-step solve as the reference
    let schedule = teacher.schedule();
    let x_t = noise(0, 100_000..110_000, &[2], Kind::Float, Device::Cpu);
    let grid = trajectory_grid(&schedule, Solver::DpmSolver2M, &times, 32).unwrap();
    let teacher_end = Solver::DpmSolver2M
        .solve(&teacher, &schedule, &x_t, &grid, &times)
        .unwrap()
        .x_hat[3]
        .shallow_clone();
    let grid50 = Solver::DpmSolver2M.default_grid(&schedule, 50);
    let teacher50 = Solver::DpmSolver2M
        .solve(&teacher, &schedule, &x_t, &grid50, &[])
        .unwrap()
        .end;
    let data = dsno::data::toy2d::sample("8gaussians", 10_000, 77).unwrap();
    let dsno_model = OneStep::load(&dir.join("DSNO/model.safetensors"), Device::Cpu).unwrap();
    let kd_model = OneStep::load(&dir.join("KD/model.safetensors"), Device::Cpu).unwrap();
    let (ds, kd) = (
        dsno_model.sample(&x_t, None).unwrap(),
        kd_model.sample(&x_t, None).unwrap(),
    );
    let sw = |s: &tch::Tensor| sliced_wasserstein(s, &data, 64, 0).unwrap();
    let mse = |s: &tch::Tensor| {
        (s - &teacher_end)
            .square()
            .mean(Kind::Float)
            .double_value(&[])
    };
    let (sw_teacher, sw_dsno, sw_kd) = (sw(&teacher50), sw(&ds), sw(&kd));
    let (e_dsno, e_kd) = (mse(&ds), mse(&kd));
    println!("sliced W2: teacher 50-step {sw_teacher:.4}, DSNO {sw_dsno:.4}, KD {sw_kd:.4}; endpoint MSE vs teacher: DSNO {e_dsno:.5}, KD {e_kd:.5}");
    assert!(
        sw_dsno <= 1.5 * sw_teacher,
        "DSNO {sw_dsno} vs teacher {sw_teacher}"
    );
    assert!(e_dsno < e_kd, "endpoint error DSNO {e_dsno} vs KD {e_kd}");
    assert_eq!(
        dsno_model
            .trajectory(&x_t.narrow(0, 0, 3), None)
            .unwrap()
            .size(),
        vec![3, 4, 2]
    );
    std::fs::remove_dir_all(dir).ok();
}

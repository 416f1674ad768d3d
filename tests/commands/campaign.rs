//! The window-by-window campaign (`scripts/campaign.sh`) on the CPU with a toy teacher: runs
//! accumulate across windows on different machines (fresh working folders) through the state
//! each window brings back in parts, and end bit for bit where one uninterrupted run ends; a
//! window whose budget runs out stops its run with SIGTERM and brings back a resumable state.
use crate::common;

use common::{file_sha256, root, tempdir};
use std::path::Path;
use std::process::Command;

fn window(dir: &Path, name: &str, input: Option<&str>, env: &[(&str, &str)]) -> String {
    let out = Command::new("bash")
        .arg(root().join("scripts/campaign.sh"))
        .current_dir(root())
        .env("DSNO", env!("CARGO_BIN_EXE_dsno"))
        .env("DEVICE", "cpu")
        .env("TEACHER_CONFIG", "configs/toy2d.toml")
        .env("DISTILL_CONFIG", "configs/distill-toy2d.toml")
        .env("COUNT", "400")
        .env("SOLVER_STEPS", "8")
        .env("RESERVE", "3")
        .env("PART_MIB", "1")
        .env("W", dir.join(format!("w-{name}")))
        .env("OUT", dir.join(format!("out-{name}")))
        .env(
            "IN",
            input
                .map(|i| dir.join(format!("out-{i}")))
                .unwrap_or_default(),
        )
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "window {name}: {text}");
    std::fs::read_to_string(dir.join(format!("out-{name}/progress.log")))
        .unwrap_or_else(|e| panic!("window {name} left no progress.log ({e}):\n{text}"))
}

#[test]
fn windows_accumulate_and_match_one_uninterrupted_run() {
    let dir = tempdir("campaign");
    // window 1: the teacher (30 steps), its store, DSNO and KD for 10 steps
    let fixed = [("TEACHER_STEPS", "30"), ("BUDGET", "600")];
    let log = window(
        &dir,
        "1",
        None,
        &[&fixed[..], &[("DISTILL_STEPS", "10")]].concat(),
    );
    assert!(
        log.contains("teacher step 30") && log.contains("dsno step 10"),
        "{log}"
    );
    // every part under its size limit (1 MiB of tensor data)
    for e in std::fs::read_dir(dir.join("out-1/dsno")).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().contains(".part-") {
            continue;
        }
        assert!(
            std::fs::metadata(&p).unwrap().len() < (1 << 20) + (64 << 10),
            "{}",
            p.display()
        );
    }
    // window 2, on a fresh machine: DSNO and KD continue to 20 steps
    let log = window(
        &dir,
        "2",
        Some("1"),
        &[&fixed[..], &[("DISTILL_STEPS", "20")]].concat(),
    );
    assert!(
        log.contains("dsno step 20") && log.contains("kd step 20"),
        "{log}"
    );
    // the same 20 steps in one run, from window 1's teacher and store
    let reference = dir.join("reference");
    let o = Command::new(env!("CARGO_BIN_EXE_dsno"))
        .current_dir(root())
        .args([
            "--device",
            "cpu",
            "distill",
            "--config",
            "configs/distill-toy2d.toml",
        ])
        .args(["--method", "dsno", "--steps", "20"])
        .arg("--teacher")
        .arg(dir.join("w-1/teacher/model.safetensors"))
        .arg("--trajectories")
        .arg(dir.join("w-1/traj"))
        .arg("--out")
        .arg(&reference)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    common::assert_same_run_files(&reference, &dir.join("w-2/dsno"));
    assert_eq!(
        file_sha256(&dir.join("w-1/traj/traj-00000.safetensors")),
        file_sha256(&dir.join("w-2/traj/traj-00000.safetensors")),
        "the store is regenerated bit for bit"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_window_that_runs_out_of_time_brings_back_a_resumable_run() {
    let dir = tempdir("campaign-budget");
    // 20 s: enough for the second window to get past its start-up (restoring, loading) and train
    // further even when the other test of this file shares the two cores
    let env = [("TEACHER_STEPS", "1000000"), ("BUDGET", "20")];
    let step = |log: &str| -> u64 {
        log.lines()
            .last()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let first = step(&window(&dir, "a", None, &env));
    let second = step(&window(&dir, "b", Some("a"), &env));
    assert!(
        first > 0 && second > first,
        "teacher steps {first} then {second}"
    );
    std::fs::remove_dir_all(dir).ok();
}

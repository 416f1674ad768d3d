//! The c10d process group (`dsno::comm`): the launch environment of torchrun and Slurm, and the
//! collectives between real processes on 127.0.0.1 (Gloo on the CPU), including a rank that dies
//! and a rank that hangs.
//!
//! The multi-process tests start this test binary again, once per rank, running the ignored test
//! `rank_entry` with the scenario and the rank in the environment.

use dsno::comm::{first_host, Comm, Launch};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[test]
fn torchrun_variables_describe_the_group() {
    let l = Launch::from_vars(vars(&[
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("MASTER_ADDR", "10.0.0.7"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (l.rank, l.local_rank, l.world_size, l.master_port),
        (3, 1, 4, 29500)
    );
    assert_eq!(l.master_addr, "10.0.0.7");
    assert!(l.agent_store);
    assert_eq!((l.restart, l.launcher), (2, "torchrun"));
    // no launcher, or a world of one: a single process
    assert_eq!(Launch::from_vars(vars(&[])).unwrap(), None);
    assert_eq!(
        Launch::from_vars(vars(&[("RANK", "0"), ("WORLD_SIZE", "1")])).unwrap(),
        None
    );
}

#[test]
fn slurm_variables_describe_the_group() {
    let l = Launch::from_vars(vars(&[
        ("SLURM_PROCID", "5"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_STEP_NODELIST", "gpu[07-09,12],cpu3"),
        ("SLURM_JOB_ID", "123456"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!((l.rank, l.local_rank, l.world_size), (5, 1, 8));
    assert_eq!(l.master_addr, "gpu07");
    assert_eq!(l.master_port, 15000 + 3456);
    assert_eq!(l.launcher, "slurm");
    assert_eq!(first_host("node1,node2").as_deref(), Some("node1"));
    assert_eq!(first_host("a[001-004]").as_deref(), Some("a001"));
    assert_eq!(first_host("a[x-y]"), None);
}

#[test]
fn bad_launch_variables_name_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("WORLD_SIZE", "2")], "RANK"),
        (&[("WORLD_SIZE", "2"), ("RANK", "1")], "MASTER_ADDR"),
        (
            &[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h")],
            "MASTER_PORT",
        ),
        (
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "99999"),
            ],
            "MASTER_PORT=`99999`",
        ),
        (&[("WORLD_SIZE", "two"), ("RANK", "1")], "WORLD_SIZE=`two`"),
        (
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "1"),
            ],
            "below the world size",
        ),
        (
            &[("SLURM_NTASKS", "2"), ("SLURM_PROCID", "0")],
            "MASTER_ADDR",
        ),
    ];
    for (v, want) in cases {
        let e = Launch::from_vars(vars(v)).unwrap_err().to_string();
        assert!(e.contains(want), "{v:?}: `{e}` does not mention {want}");
    }
}

#[test]
fn a_world_of_one_needs_no_group() {
    let c = Comm::single();
    let mut t = Tensor::from_slice(&[1.0f32, 2.0]);
    c.all_reduce_mean_(&mut t).unwrap();
    c.broadcast_(&mut t, 0).unwrap();
    c.barrier().unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0]);
    assert_eq!(c.part(6).unwrap(), 0..6);
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `world` copies of this test binary as ranks of `scenario`.
fn ranks(scenario: &str, world: usize) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "comm::rank_entry", "--nocapture"])
                .env("DSNO_COMM_SCENARIO", scenario)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                // the collectives pick their interface by name, the others by the store's address
                .env(
                    "GLOO_SOCKET_IFNAME",
                    if scenario == "collectives" { "lo" } else { "" },
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Waits for a rank with a deadline; kills it past the deadline.
fn finish(mut c: Child, deadline: Instant) -> (bool, String) {
    loop {
        if let Some(status) = c.try_wait().unwrap() {
            let out = c.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            return (status.success(), text);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let out = c.wait_with_output().unwrap();
            return (false, format!("killed at the deadline\n{out:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn collectives_between_two_processes() {
    let deadline = Instant::now() + Duration::from_secs(120);
    for (r, c) in ranks("collectives", 2).into_iter().enumerate() {
        let (ok, out) = finish(c, deadline);
        assert!(ok, "rank {r} failed:\n{out}");
        assert!(out.contains("collectives ok"), "rank {r}:\n{out}");
    }
}

#[test]
fn a_rank_that_dies_or_hangs_fails_the_others_within_the_timeout() {
    for scenario in ["dies", "hangs"] {
        let t0 = Instant::now();
        let mut cs = ranks(scenario, 2);
        let one = cs.pop().unwrap();
        let (ok, out) = finish(cs.pop().unwrap(), t0 + Duration::from_secs(120));
        let waited = t0.elapsed();
        let _ = finish(one, Instant::now());
        assert!(ok, "{scenario}: rank 0 did not report the failure:\n{out}");
        assert!(
            out.contains("failure reported: distributed: all-reduce on rank 0"),
            "{scenario}:\n{out}"
        );
        // the group's timeout is 5 s; start-up and the dead peer's detection fit in 60 s
        assert!(waited < Duration::from_secs(60), "{scenario}: {waited:?}");
    }
}

/// One rank of a multi-process test (started by the tests above, not on its own).
#[test]
#[ignore = "a rank of the multi-process tests; they start it"]
fn rank_entry() {
    let scenario = std::env::var("DSNO_COMM_SCENARIO").expect("started by a test");
    let launch = Launch::from_vars(|k| std::env::var(k).ok())
        .unwrap()
        .unwrap();
    let comm = Comm::connect(&launch, Device::Cpu, Duration::from_secs(5)).unwrap();
    let (r, w) = (comm.rank(), comm.world_size());
    match scenario.as_str() {
        "collectives" => {
            let mut t = Tensor::full([5], (r + 1) as f64, (Kind::Float, Device::Cpu));
            comm.all_reduce_sum_(&mut t).unwrap();
            assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![3.0; 5]);
            // mean in buckets of 3 over 7 elements (three buckets), values distinct per rank
            let flat = Tensor::arange(7, (Kind::Float, Device::Cpu)) * (r as f64 + 1.0);
            comm.all_reduce_mean_flat(&flat, 3).unwrap();
            let want: Vec<f32> = (0..7).map(|i| i as f32 * 1.5).collect();
            assert_eq!(Vec::<f32>::try_from(&flat).unwrap(), want);
            let mut b = Tensor::full([2, 3], r as f64 * 10.0 + 1.0, (Kind::Double, Device::Cpu));
            comm.broadcast_(&mut b, 1).unwrap();
            assert_eq!(
                Vec::<f64>::try_from(&b.flatten(0, 1)).unwrap(),
                vec![11.0; 6]
            );
            comm.barrier().unwrap();
            assert_eq!(comm.mean_f64(&[r as f64, 4.0]).unwrap(), vec![0.5, 4.0]);
            assert_eq!(comm.sum_u64(&[1, r as u64]).unwrap(), vec![2, 1]);
            assert_eq!(comm.part(8).unwrap(), r * 4..(r + 1) * 4);
            assert!(comm.part(7).is_err());
            // a tensor on the wrong side of the group is an error, not a crash
            let mut nc = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)).transpose(0, 1);
            assert!(comm.all_reduce_sum_(&mut nc).is_err());
            println!("rank {r} of {w}: collectives ok");
        }
        "dies" | "hangs" => {
            comm.barrier().unwrap();
            if r == 1 {
                if scenario == "dies" {
                    std::process::exit(3);
                }
                std::thread::sleep(Duration::from_secs(600));
            }
            let mut t = Tensor::ones([4], (Kind::Float, Device::Cpu));
            let e = comm.all_reduce_sum_(&mut t).unwrap_err();
            println!("failure reported: {e}");
        }
        s => panic!("unknown scenario {s}"),
    }
}

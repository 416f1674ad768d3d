//! How training computes (`dsno::device::Precision`): bfloat16 autocast regions that nest and
//! restore, the TensorFloat-32 switch, TimeConv kept float32 inside autocast (bit-equal to its
//! float32 run on the same input), and the bundled DSNO operator's bf16 forward pass and
//! gradients against float32 within bfloat16's precision; a bf16 training run on the CPU.
use crate::common;

use dsno::device::{autocast_enabled, full_precision, set_tf32, tf32, Precision, Tf32};
use dsno::model::OneStep;
use dsno::nn::timeconv::{DftPath, TimeConv};
use tch::{nn, Device, Kind, Tensor};

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[])
}

#[test]
fn autocast_regions_nest_and_restore() {
    let _serial = common::serial();
    let dev = Device::Cpu;
    let a = Tensor::randn([8, 8], (Kind::Float, dev));
    assert!(!autocast_enabled(dev));
    assert_eq!(a.matmul(&a).kind(), Kind::Float);
    {
        let _none = Precision::Fp32.autocast(dev);
        let _tf = Precision::Tf32.autocast(dev);
        assert!(!autocast_enabled(dev));
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }
    {
        let _amp = Precision::Bf16.autocast(dev);
        assert!(autocast_enabled(dev));
        assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
        {
            let _fp = full_precision(dev);
            assert!(!autocast_enabled(dev));
            assert_eq!(a.matmul(&a).kind(), Kind::Float);
            // a region with autocast off inside it leaves autocast off
            let _nested = full_precision(dev);
            assert_eq!(a.matmul(&a).kind(), Kind::Float);
        }
        assert!(autocast_enabled(dev), "the inner region did not restore");
        assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
    }
    assert!(!autocast_enabled(dev), "the outer region did not restore");
    assert_eq!(a.matmul(&a).kind(), Kind::Float);
}

#[test]
fn the_tf32_switch_round_trips() {
    let _serial = common::serial();
    let before = tf32();
    let (off, on) = (
        Tf32 {
            matmul: false,
            conv: false,
        },
        Tf32 {
            matmul: true,
            conv: true,
        },
    );
    for t in [
        off,
        on,
        Tf32 {
            matmul: true,
            conv: false,
        },
        Tf32 {
            matmul: false,
            conv: true,
        },
    ] {
        set_tf32(t);
        assert_eq!(tf32(), t);
        // fp32 leaves the switches as they are; tf32 and bf16 turn both on
        Precision::Fp32.apply();
        assert_eq!(tf32(), t);
        Precision::Bf16.apply();
        assert_eq!(tf32(), on);
        set_tf32(t);
        Precision::Tf32.apply();
        assert_eq!(tf32(), on);
    }
    set_tf32(off);
    assert_eq!(tf32(), off);
    set_tf32(before);
    assert_eq!(tf32(), before);
    for (s, p) in [
        ("fp32", Precision::Fp32),
        ("tf32", Precision::Tf32),
        ("bf16", Precision::Bf16),
    ] {
        assert_eq!(Precision::parse(s).unwrap(), p);
        assert_eq!(p.name(), s);
    }
    let e = Precision::parse("fp8").unwrap_err().to_string();
    assert!(e.contains("fp8") && e.contains("bf16"), "{e}");
}

#[test]
fn timeconv_runs_in_float32_inside_autocast() {
    let _serial = common::serial();
    tch::manual_seed(3);
    for path in [DftPath::Fft, DftPath::Matmul, DftPath::Dense] {
        let vs = nn::VarStore::new(Device::Cpu);
        let tc = TimeConv::new(&vs.root(), 8, 2, 4, path).unwrap();
        let u = Tensor::randn([2, 4, 8, 3, 3], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let reference = tc.forward(&u.to_kind(Kind::Float));
        let out = {
            let _amp = Precision::Bf16.autocast(Device::Cpu);
            tc.forward(&u)
        };
        assert_eq!(out.kind(), Kind::Float, "{path:?}");
        let diff = (&out - &reference).abs().max().double_value(&[]);
        assert_eq!(
            diff, 0.0,
            "{path:?}: TimeConv under autocast differs from float32"
        );
        // its weight's gradient is float32 too
        tc.weight.shallow_clone().zero_grad();
        {
            let _amp = Precision::Bf16.autocast(Device::Cpu);
            tc.forward(&u).square().sum(Kind::Float)
        }
        .backward();
        assert_eq!(tc.weight.grad().kind(), Kind::Float);
    }
}

/// Relative L2 error of the bundled DSNO operator's output, and cosine of its parameter gradient,
/// under bf16 autocast against float32 (`cargo test --release --test library -- --nocapture precision::`
/// prints them).
#[test]
fn the_operator_under_bf16_matches_float32_to_bfloat16_precision() {
    let _serial = common::serial();
    let mut g = OneStep::load(&common::model("mnist-dsno.safetensors"), Device::Cpu).unwrap();
    g.vs.unfreeze();
    tch::manual_seed(0);
    let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let target = Tensor::randn([4, 4, 1, 28, 28], (Kind::Float, Device::Cpu)) * 0.5;
    let run = |p: Precision| -> (Tensor, Tensor) {
        g.vs.variables().values().for_each(|v| {
            let mut v = v.shallow_clone();
            v.zero_grad()
        });
        let y = {
            let _amp = p.autocast(Device::Cpu);
            g.net.forward(&x, None, false).unwrap()
        };
        (&y - &target).square().mean(Kind::Float).backward();
        let mut names: Vec<_> = g.vs.variables().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let grads: Vec<Tensor> = names.iter().map(|(_, v)| v.grad().reshape([-1])).collect();
        (y.detach(), Tensor::cat(&grads, 0))
    };
    let (y32, g32) = run(Precision::Fp32);
    let (y16, g16) = run(Precision::Bf16);
    let err = rel_err(&y16, &y32);
    let (a, b) = (g16.to_kind(Kind::Double), g32.to_kind(Kind::Double));
    let cos = (&a * &b).sum(Kind::Double).double_value(&[])
        / (a.norm().double_value(&[]) * b.norm().double_value(&[]));
    let gerr = rel_err(&g16, &g32);
    println!("bf16 vs fp32: output relative error {err:.3e}, gradient cosine {cos:.6}, gradient relative error {gerr:.3e}");
    // bfloat16 keeps 8 significant bits (unit roundoff 2^-9 = 2e-3); through the U-Net's
    // layers the output's relative error stays within a few times that
    assert!(err < 2e-2, "output relative error {err}");
    assert!(err > 1e-5, "autocast changed nothing ({err})");
    assert!(cos > 0.999, "gradient cosine {cos}");
    assert!(gerr < 3e-2, "gradient relative error {gerr}");
}

/// A training run under bf16 is reproducible bit for bit, differs from the float32 run (the
/// objective really runs under autocast) and stays within bfloat16's error of its loss. On the
/// CPU the bits hold for a process that computes one thing at a time: with another test's
/// computation running beside it, the emulated bfloat16 kernels gave different bits (the tests
/// of this file hold `common::serial()`).
#[test]
fn a_bf16_training_run_is_reproducible_and_close_to_float32() {
    let _serial = common::serial();
    let mut cfg = common::tiny_teacher_config(None);
    cfg.train.steps = 3;
    cfg.train.log_every = 1;
    tch::manual_seed(7);
    let images = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let dir = common::tempdir("bf16-run");
    let fit = |name: &str, p: Precision| {
        let out = dir.join(name);
        let opts = dsno::train::RunOptions {
            precision: p,
            ..common::run(&out, false)
        };
        let s = dsno::train::teacher::train(&cfg, images.shallow_clone(), &opts, None).unwrap();
        (out, s.last_loss)
    };
    let (a, la) = fit("a", Precision::Bf16);
    let (b, lb) = fit("b", Precision::Bf16);
    let (c, lc) = fit("c", Precision::Fp32);
    common::assert_same_run_files(&a, &b);
    assert_eq!(la, lb);
    assert!(la.is_finite(), "bf16 {la}, fp32 {lc}");
    assert!((la - lc).abs() < 2e-2 * lc, "bf16 {la}, fp32 {lc}");
    let bytes = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_ne!(bytes(&a), bytes(&c));
    std::fs::remove_dir_all(dir).ok();
}

/// `dsno bench train`'s measurement: every training at every precision, a rate from the log's
/// timed row, and the table's ratios against the first precision.
#[test]
fn bench_train_times_every_training_at_every_precision() {
    let _serial = common::serial();
    let cfg = dsno::train::teacher::TeacherConfig::load(&common::root().join("configs/toy2d.toml"))
        .unwrap();
    let spec = dsno::bench::TrainSpec {
        batch: 8,
        steps: 2,
        precisions: vec![Precision::Fp32, Precision::Bf16],
        times: dsno::schedule::parse_output_times("quad:4").unwrap(),
        device: Device::Cpu,
    };
    let dir = common::tempdir("bench-train");
    let rows = dsno::bench::training(&cfg, &spec, &dir).unwrap();
    let got: Vec<(String, Precision)> =
        rows.iter().map(|r| (r.what.clone(), r.precision)).collect();
    let want: Vec<(String, Precision)> = ["teacher", "DSNO", "KD"]
        .iter()
        .flat_map(|w| spec.precisions.iter().map(move |&p| (w.to_string(), p)))
        .collect();
    assert_eq!(got, want);
    for r in &rows {
        assert!(
            r.samples_per_s.is_finite() && r.samples_per_s > 0.0,
            "{r:?}"
        );
        assert!(r.loss.is_finite(), "{r:?}");
        // the timed row is the second of its log: steps 2 and 4
        let log = std::fs::read_to_string(
            dir.join(match r.what.as_str() {
                "teacher" => format!("teacher-{}", r.precision.name()),
                w => format!("{w}-{}", r.precision.name()),
            })
            .join("log.csv"),
        )
        .unwrap();
        let steps: Vec<&str> = log
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(steps, ["2", "4"], "{r:?}");
    }
    let table = dsno::bench::training_table(&rows);
    let fp32: Vec<&str> = table.lines().filter(|l| l.contains("| fp32 |")).collect();
    assert_eq!(fp32.len(), 3, "{table}");
    assert!(fp32.iter().all(|l| l.contains("| 1.00 |")), "{table}");
    std::fs::remove_dir_all(dir).ok();
}

/// The validation loss is computed in float32 whatever the run's precision (so that patience
/// compares like with like across resumes at other precisions): with the learning rate 0 the
/// weights never move, and a bf16 run logs the float32 run's validation losses bit for bit while
/// its training losses differ.
#[test]
fn validation_runs_in_float32_under_bf16() {
    use dsno::train::distill::{distill, DistillConfig, Regression};
    use dsno::train::trajectories::{generate, GenerateOptions};
    let _serial = common::serial();
    let dir = common::tempdir("bf16-validation");
    let teacher_path = common::tiny_image_teacher(&dir);
    let teacher = dsno::model::Teacher::load(&teacher_path, Device::Cpu).unwrap();
    let store = dir.join("store");
    let g = GenerateOptions {
        solver: dsno::solver::Solver::Ddim,
        steps: 4,
        count: 24,
        shard_size: 12,
        batch: 12,
        ..Default::default()
    };
    generate(&teacher, &teacher_path, &store, &g).unwrap();
    let mut train = dsno::train::TrainConfig {
        steps: 2,
        batch_size: 8,
        log_every: 1,
        lr: 0.0,
        ..Default::default()
    };
    train.warmup = 0;
    let cfg = DistillConfig {
        method: dsno::operator::Method::DSNO,
        loss: Regression::L2,
        modes: 2,
        dropout: Some(0.0),
        validation: 8,
        times: None,
        shuffle_shards: 0,
        stream: false,
        lpips_weights: None,
        train,
    };
    let columns = |p: Precision| -> (Vec<String>, Vec<String>) {
        let out = dir.join(p.name());
        let opts = dsno::train::RunOptions {
            precision: p,
            ..common::run(&out, false)
        };
        distill(&cfg, &teacher_path, &store, None, &opts).unwrap();
        let log = std::fs::read_to_string(out.join("log.csv")).unwrap();
        let rows: Vec<Vec<String>> = log
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(String::from).collect())
            .collect();
        let col = |i: usize| rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>();
        (col(1), col(rows[0].len() - 1))
    };
    let (loss32, val32) = columns(Precision::Fp32);
    let (loss16, val16) = columns(Precision::Bf16);
    assert_eq!(val32.len(), 2);
    assert!(
        val32.iter().all(|v| v.parse::<f64>().unwrap().is_finite()),
        "{val32:?}"
    );
    assert_eq!(val16, val32, "validation losses");
    assert_ne!(loss16, loss32, "training losses");
    std::fs::remove_dir_all(dir).ok();
}

/// Pinned host memory: a page-locked copy with the same values where libtorch can pin (a CUDA
/// driver), else a clear error; `upload` falls back to a plain copy either way.
#[test]
fn pinning_copies_or_says_why_not() {
    let _serial = common::serial();
    let t = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
    match dsno::device::pin(&t) {
        Ok(p) => {
            assert!(p.is_pinned(Device::Cuda(0)));
            assert_eq!(p.size(), t.size());
            assert_eq!((&p - &t).abs().max().double_value(&[]), 0.0);
        }
        Err(e) => {
            assert!(!tch::Cuda::is_available(), "{e}");
            assert!(e.to_string().contains("cannot pin host memory"), "{e}");
        }
    }
    let u = dsno::device::upload(&t, Device::Cpu);
    assert_eq!((&u - &t).abs().max().double_value(&[]), 0.0);
}

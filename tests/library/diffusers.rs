//! diffusers' UNet2DModel and schedulers against diffusers itself (tests/fixtures/make-diffusers.py):
//! the three tiny random networks' outputs at integer and fractional timesteps to 1e-5; every
//! schedule's `alphas_cumprod`; DDIM and DPM-Solver++(2M) samples at 10 and 50 steps to 1e-4;
//! an imported teacher through trajectories → distillation (DSNO, KD) → sampling; bad folders.
use crate::common;

use dsno::denoiser::Denoiser;
use dsno::import::{import_diffusers, ImportOptions};
use dsno::model::Teacher;
use dsno::nn::diffusers::{legacy_name, DiffusersUNet, DiffusersUNetConfig};
use dsno::nn::Backbone;
use dsno::schedule::Schedule;
use dsno::solver::Solver;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    common::root().join("tests/fixtures/diffusers")
}

fn outputs() -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(fixtures().join("outputs.safetensors")).unwrap()
}

fn get(f: &[(String, Tensor)], name: &str) -> Tensor {
    f.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in the fixture"))
        .1
        .shallow_clone()
}

/// max |a − b| / max |b|: the error relative to the tensor's scale (never to an element near
/// zero), printed as a `fixture-diff WHAT` line for scripts/isa-spread.sh.
fn rel_named(what: &str, a: &Tensor, b: &Tensor) -> f64 {
    common::fixture_diff(what, a, b, 0.0).scaled()
}

/// [`rel_named`] of two tensors computed here (not a fixture).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

/// The network of fixture `name`, built from its config.json and loaded from its weights.
fn network(name: &str) -> (nn::VarStore, DiffusersUNet) {
    let dir = fixtures().join(name);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = DiffusersUNetConfig::from_json(&text).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = DiffusersUNet::new(&vs.root(), &cfg).unwrap();
    let file = Tensor::read_safetensors(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let n_file: i64 = file.iter().map(|(_, t)| t.numel() as i64).sum();
    assert_eq!(cfg.num_params() as i64, n_file, "{name}: parameter count");
    let mut vars = vs.variables();
    let _g = tch::no_grad_guard();
    for (k, t) in file {
        let k = legacy_name(&k).unwrap_or(k);
        let v = vars
            .get_mut(&k)
            .unwrap_or_else(|| panic!("{name}: no variable {k}"));
        v.copy_(&t.to_kind(Kind::Float));
    }
    vs.freeze();
    (vs, net)
}

#[test]
fn networks_match_diffusers_at_integer_and_fractional_timesteps() {
    let f = outputs();
    for name in ["ddpm", "scaleshift", "legacy"] {
        let (_vs, net) = network(name);
        let x = get(&f, &format!("{name}.x"));
        let labels = f
            .iter()
            .find(|(n, _)| n == &format!("{name}.labels"))
            .map(|(_, t)| t.shallow_clone());
        for which in ["int", "frac"] {
            let t = get(&f, &format!("{name}.t_{which}"));
            let y = net.forward(&x, &t, labels.as_ref(), false).unwrap();
            let e = rel_named(
                &format!("diffusers {name} network ({which} t)"),
                &y,
                &get(&f, &format!("{name}.y_{which}")),
            );
            println!("{name} ({which} timesteps): max rel. error {e:.2e}");
            assert!(e < 1e-5, "{name} {which}: {e:.2e}");
        }
    }
}

fn schedule_of(name: &str) -> Schedule {
    let path = fixtures().join(name).join("scheduler_config.json");
    dsno::import::read_scheduler_config(&path).unwrap().0
}

#[test]
fn discrete_schedules_match_alphas_cumprod() {
    let f = outputs();
    for name in ["ddpm", "scaleshift", "legacy"] {
        let s = schedule_of(name);
        let want: Vec<f32> = Vec::try_from(get(&f, &format!("{name}.alphas_cumprod"))).unwrap();
        let n = want.len();
        let mut worst = 0.0f64;
        for (k, &w) in want.iter().enumerate() {
            let t = s.t_of_timestep(k as f64).unwrap();
            let a2 = s.alpha(t).powi(2);
            worst = worst.max((a2 - w as f64).abs() / w as f64);
            // λ ↔ t round trip, and the network is queried at the timestep itself
            assert!((s.t_of_lambda(s.lambda(t)) - t).abs() < 1e-9);
            assert!((s.t_input(t) - k as f64).abs() < 1e-9);
        }
        println!("{name}: ᾱ max rel. error {worst:.2e} over {n} timesteps");
        // diffusers' own table is a float32 running product: rounding differs by ~1e-6
        assert!(worst < 5e-6);
        assert_eq!(
            (s.alpha(0.0), s.sigma(0.0)),
            (1.0, 0.0),
            "t = 0 is the data"
        );
    }
}

/// The solver grid of diffusers' timesteps: t = (τ + 1)/N, then the data (t = 0).
fn grid(s: &Schedule, timesteps: &Tensor) -> Vec<f64> {
    let ts: Vec<f32> = Vec::try_from(timesteps).unwrap();
    let mut g: Vec<f64> = ts
        .iter()
        .map(|&t| s.t_of_timestep(t as f64).unwrap())
        .collect();
    g.push(0.0);
    g
}

#[test]
fn ddim_and_dpm_solver_match_diffusers_schedulers() {
    let f = outputs();
    let dir = common::tempdir("diffusers-samplers");
    let path = dir.join("teacher.safetensors");
    let ck = import_diffusers(&fixtures().join("ddpm"), &ImportOptions::default()).unwrap();
    ck.export(&path, None).unwrap();
    let teacher = Teacher::load(&path, Device::Cpu).unwrap();
    let s = teacher.schedule();
    let x_t = get(&f, "ddpm.x_T");
    for (solver, key) in [(Solver::Ddim, "ddim"), (Solver::DpmSolver2M, "dpm")] {
        for steps in [10, 50] {
            let name = format!("ddpm.{key}{steps}");
            let g = grid(&s, &get(&f, &format!("{name}.timesteps")));
            assert_eq!(g.len(), steps + 1);
            let tr = solver.solve(&teacher, &s, &x_t, &g, &[]).unwrap();
            let e = rel_named(&format!("diffusers {name}"), &tr.end, &get(&f, &name));
            println!("{} @ {steps}: max rel. error {e:.2e}", solver.name());
            assert!(e < 1e-4, "{name}: {e:.2e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The teacher's denoiser is the network read through the prediction type: for ε, x̂ =
/// (z − σ ε̂)/α exactly.
#[test]
fn an_imported_eps_teacher_denoises_through_its_prediction_type() {
    let dir = common::tempdir("diffusers-eps");
    let path = dir.join("t.safetensors");
    import_diffusers(&fixtures().join("ddpm"), &ImportOptions::default())
        .unwrap()
        .export(&path, None)
        .unwrap();
    let teacher = Teacher::load(&path, Device::Cpu).unwrap();
    let (_vs, net) = network("ddpm");
    let z = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let t = 0.4;
    let s = teacher.schedule();
    let (a, sg) = s.alpha_sigma(t);
    let tau = Tensor::from_slice(&[s.t_input(t) as f32; 2]);
    let eps = net.forward(&z, &tau, None, false).unwrap();
    let want = (&z - eps * sg) / a;
    assert!(rel(&teacher.denoise(&z, t, None).unwrap(), &want) < 1e-6);
    let _ = std::fs::remove_dir_all(&dir);
}

fn dsno_ok(args: &[&str]) -> String {
    let o = common::dsno(args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "dsno {args:?}\nstdout: {out}\nstderr: {err}"
    );
    out.into_owned()
}

/// `dsno import diffusers` → `trajectories` → `distill` (DSNO and KD, a few steps) → `sample`;
/// and the operator with zero TimeConv weights reproduces the teacher's network at every slot.
#[test]
fn an_imported_teacher_runs_the_whole_pipeline() {
    let dir = common::tempdir("diffusers-pipeline");
    let s = |p: &Path| p.display().to_string();
    let teacher = dir.join("teacher.safetensors");
    let src = fixtures().join("ddpm");
    dsno_ok(&[
        "import",
        "diffusers",
        &s(&src),
        "--out",
        &s(&teacher),
        "--fp16",
    ]);
    let store = dir.join("store");
    dsno_ok(&[
        "trajectories",
        "--teacher",
        &s(&teacher),
        "--solver",
        "ddim",
        "--steps",
        "8",
        "--times",
        "quad:4",
        "--count",
        "12",
        "--out",
        &s(&store),
        "--device",
        "cpu",
    ]);
    let cfg = dir.join("distill.toml");
    std::fs::write(
        &cfg,
        "method = \"dsno\"\nloss = \"l2\"\nmodes = 2\nvalidation = 2\n\n[train]\nsteps = 3\n\
         batch_size = 4\nlr = 1e-3\nwarmup = 1\nema_decay = 0.9\ngrad_clip = 1.0\n\
         checkpoint_every = 3\nlog_every = 1\nseed = 0\n",
    )
    .unwrap();
    for method in ["dsno", "kd"] {
        let out = dir.join(method);
        dsno_ok(&[
            "distill",
            "--teacher",
            &s(&teacher),
            "--trajectories",
            &s(&store),
            "--config",
            &s(&cfg),
            "--method",
            method,
            "--out",
            &s(&out),
            "--device",
            "cpu",
        ]);
        let raw = dir.join(format!("{method}.safetensors"));
        let model = out.join("model.safetensors");
        let png = dir.join(format!("{method}.png"));
        let said = dsno_ok(&[
            "sample",
            "--model",
            &s(&model),
            "--count",
            "3",
            "--out",
            &s(&png),
            "--safetensors",
            &s(&raw),
            "--device",
            "cpu",
        ]);
        assert!(said.contains("NFE 1"), "{said}");
        let x = Tensor::read_safetensors(&raw).unwrap().remove(0).1;
        assert_eq!(x.size(), [3, 3, 8, 8]);
        assert!(bool::try_from(x.isfinite().all()).unwrap());
    }
    // Zero TimeConv: every slot is the teacher's network at that slot's timestep.
    let times = vec![0.9, 0.5, 0.2, 0.0];
    let (_vs, op, ck) = zero_timeconv_operator(&teacher, &times);
    let _g = tch::no_grad_guard();
    let x_t = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let all = op.forward(&x_t, None, false).unwrap();
    for (m, &t) in times.iter().enumerate() {
        let tau = Tensor::from_slice(&[ck.meta.schedule.t_input(t) as f32; 2]);
        let want = op.backbone.forward(&x_t, &tau, None, false).unwrap();
        assert!(rel(&all.select(1, m as i64), &want) < 1e-5, "slot {m}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The operator of the teacher at `path` over output `times`, its backbone the teacher's and every
/// TimeConv weight zero, so that each slot is the teacher's network at that slot's time.
fn zero_timeconv_operator(
    path: &Path,
    times: &[f64],
) -> (
    nn::VarStore,
    dsno::operator::Operator,
    dsno::checkpoint::Checkpoint,
) {
    let ck = dsno::checkpoint::load(path).unwrap();
    let cfg = dsno::operator::OperatorConfig {
        backbone: ck.meta.model.clone(),
        times: dsno::schedule::OutputTimes::new(times.to_vec()).unwrap(),
        modes: 2,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let op = dsno::operator::Operator::new(&vs.root(), &cfg, ck.meta.schedule).unwrap();
    ck.load_into_filtered(&vs, "", path, |n| !n.starts_with("timeconv"))
        .unwrap();
    let _g = tch::no_grad_guard();
    for (n, mut v) in vs.variables() {
        if n.starts_with("timeconv") {
            let _ = v.zero_();
        }
    }
    (vs, op, ck)
}

/// Copies fixture `name` into a fresh folder, for tests that spoil one file.
fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
    ] {
        std::fs::copy(fixtures().join(name).join(f), to.join(f)).unwrap();
    }
}

fn import_err(dir: &Path) -> String {
    match import_diffusers(dir, &ImportOptions::default()) {
        Ok(_) => panic!("{} imported", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_folders_are_refused_naming_the_file_and_key() {
    let root = common::tempdir("diffusers-bad");
    let edit = |name: &str, file: &str, from: &str, to: &str| -> PathBuf {
        let d = root.join(name);
        copy_fixture("ddpm", &d);
        let p = d.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
        d
    };
    let cases = [
        (
            edit(
                "block",
                "config.json",
                "\"AttnDownBlock2D\"",
                "\"CrossAttnDownBlock2D\"",
            ),
            "config.json",
            "down_block_types",
        ),
        (
            edit("fourier", "config.json", "\"positional\"", "\"fourier\""),
            "config.json",
            "time_embedding_type",
        ),
        (
            edit(
                "cross",
                "config.json",
                "\"act_fn\"",
                "\"cross_attention_dim\": 64, \"act_fn\"",
            ),
            "config.json",
            "cross_attention_dim",
        ),
        (
            edit("beta", "scheduler_config.json", "\"linear\"", "\"sigmoid\""),
            "scheduler_config.json",
            "beta_schedule",
        ),
        (
            edit("pred", "scheduler_config.json", "\"epsilon\"", "\"flow\""),
            "scheduler_config.json",
            "prediction_type",
        ),
    ];
    for (dir, file, key) in cases {
        let e = import_err(&dir);
        assert!(
            e.contains(file) && e.contains(key),
            "{}: {e}",
            dir.display()
        );
    }
    // A missing tensor, and one of the wrong shape.
    type Named = Vec<(String, Tensor)>;
    let weights = |name: &str, f: &dyn Fn(&mut Named)| -> PathBuf {
        let d = root.join(name);
        copy_fixture("ddpm", &d);
        let p = d.join("diffusion_pytorch_model.safetensors");
        let mut t = Tensor::read_safetensors(&p).unwrap();
        f(&mut t);
        Tensor::write_safetensors(&t, &p).unwrap();
        d
    };
    let d = weights("missing", &|t| t.retain(|(n, _)| n != "conv_out.weight"));
    let e = import_err(&d);
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("conv_out.weight"),
        "{e}"
    );
    let d = weights("shape", &|t| {
        for (n, v) in t.iter_mut() {
            if n == "conv_in.bias" {
                *v = Tensor::zeros([15], (Kind::Float, Device::Cpu));
            }
        }
    });
    let e = import_err(&d);
    assert!(e.contains("conv_in.bias") && e.contains("shape"), "{e}");
    let d = weights("extra", &|t| {
        t.push((
            "stray.weight".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ))
    });
    let e = import_err(&d);
    assert!(e.contains("stray.weight"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_backbone_hooks_every_non_resampling_block() {
    let (_vs, net) = network("ddpm");
    // ddpm: 2 levels × 2 layers down, the mid block, 2 levels × 3 layers up
    assert_eq!(
        net.slot_channels(),
        [16, 16, 32, 32, 32, 32, 32, 32, 16, 16, 16]
    );
    let mut seen = vec![];
    let x = Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    let emb = net.time_embedding(&Tensor::from_slice(&[3.0f32]));
    let _ = net.body(net.stem(&x), &emb, false, &mut |i, h| {
        seen.push((i, h.size()[1]));
        h
    });
    let want: Vec<(usize, i64)> = net.slot_channels().into_iter().enumerate().collect();
    assert_eq!(seen, want);
}

/// A class-conditional UNet2DModel (`num_class_embeds`, the `scaleshift` fixture) through the
/// pipeline: labelled trajectories of one class, a conditional DSNO, `sample --class`; with zero
/// TimeConv every slot of sample b is the network with label b's class embedding; diffusers'
/// table has no null class, so guidance other than 1 is refused.
#[test]
fn an_imported_conditional_teacher_distils_with_labels() {
    let dir = common::tempdir("diffusers-cond");
    let s = |p: &Path| p.display().to_string();
    let teacher = dir.join("teacher.safetensors");
    dsno_ok(&[
        "import",
        "diffusers",
        &s(&fixtures().join("scaleshift")),
        "--out",
        &s(&teacher),
    ]);
    let t = Teacher::load(&teacher, Device::Cpu).unwrap();
    assert_eq!(t.num_classes(), Some(10));
    let store = dir.join("store");
    let common_args = ["--steps", "4", "--times", "quad:2", "--device", "cpu"];
    let mut args = vec!["trajectories", "--teacher"];
    let (ts, ss) = (s(&teacher), s(&store));
    args.extend([
        ts.as_str(),
        "--count",
        "6",
        "--class",
        "7",
        "--out",
        ss.as_str(),
    ]);
    args.extend(common_args);
    dsno_ok(&args);
    let m = dsno::data::store::Manifest::load(&store).unwrap();
    assert_eq!((m.num_classes, m.class), (Some(10), Some(7)));
    let mut bad = args.clone();
    bad.extend(["--guidance", "2"]);
    let at = bad.iter().position(|a| *a == ss.as_str()).unwrap();
    let unused = dir.join("unused");
    let us = s(&unused);
    bad[at] = us.as_str();
    let o = common::dsno(&bad);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("null class"), "{err}");
    assert!(!unused.exists(), "nothing left behind");
    let cfg = dir.join("distill.toml");
    std::fs::write(
        &cfg,
        "method = \"dsno\"\nvalidation = 2\n[train]\nsteps = 2\nbatch_size = 2\nlr = 1e-3\n\
         warmup = 1\nema_decay = 0.9\ncheckpoint_every = 2\nlog_every = 1\nseed = 0\n",
    )
    .unwrap();
    let out = dir.join("dsno");
    dsno_ok(&[
        "distill",
        "--teacher",
        &ts,
        "--trajectories",
        &ss,
        "--config",
        &s(&cfg),
        "--out",
        &s(&out),
        "--device",
        "cpu",
    ]);
    let png = dir.join("s.png");
    let said = dsno_ok(&[
        "sample",
        "--model",
        &s(&out.join("model.safetensors")),
        "--class",
        "7",
        "--count",
        "2",
        "--out",
        &s(&png),
        "--device",
        "cpu",
    ]);
    assert!(said.contains("NFE 1"), "{said}");
    // Zero TimeConv: slot m of sample b is the network at t_m with class y_b.
    let times = vec![0.7, 0.3, 0.0];
    let (_vs, op, ck) = zero_timeconv_operator(&teacher, &times);
    let _g = tch::no_grad_guard();
    let x_t = Tensor::randn([3, 1, 8, 8], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[4i64, 0, 9]);
    let all = op.forward(&x_t, Some(&y), false).unwrap();
    for (m, &t) in times.iter().enumerate() {
        let tau = Tensor::from_slice(&[ck.meta.schedule.t_input(t) as f32; 3]);
        let want = op.backbone.forward(&x_t, &tau, Some(&y), false).unwrap();
        assert!(rel(&all.select(1, m as i64), &want) < 1e-5, "slot {m}");
    }
    let e = op
        .forward(&x_t, Some(&Tensor::from_slice(&[10i64, 0, 1])), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the 10 classes"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

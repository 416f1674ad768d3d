//! Class-conditional denoising and classifier-free guidance on the eight-Gaussian toy, whose
//! conditional denoiser (the component as the class) is known exactly: the solvers converge to
//! each class's exact probability-flow map; guidance with w = 1 is the conditional denoiser and
//! w = 0 the unconditional one, exactly; guidance costs two evaluations per step and makes the
//! class more certain; bad labels and scales are errors.
use crate::common;
use dsno::denoiser::{Conditioned, Denoiser, GaussianDenoiser, Guidance, Guided, MixtureDenoiser};
use dsno::schedule::Schedule;
use dsno::solver::{Grid, Solver};
use tch::{Device, Kind, Tensor};

const K: i64 = 8;

fn toy() -> MixtureDenoiser {
    MixtureDenoiser::eight_gaussians(2.0, 0.3, Schedule::vp_cosine())
}

fn labels() -> Tensor {
    Tensor::arange(K, (Kind::Int64, Device::Cpu)).repeat([4])
}

fn noise(n: i64) -> Tensor {
    tch::manual_seed(11);
    Tensor::randn([n, 2], (Kind::Double, Device::Cpu))
}

/// Each sample's exact PF-ODE map from t = 1 to t = 0 under its own component N(μ_k, s² I).
fn exact(m: &MixtureDenoiser, z: &Tensor, y: &Tensor) -> Tensor {
    let rows: Vec<Tensor> = (0..z.size()[0])
        .map(|i| {
            let k = y.int64_value(&[i]);
            let g = GaussianDenoiser {
                mean: m.means.get(k).unsqueeze(0),
                std: 0.3,
                schedule: m.schedule,
            };
            g.exact_flow(&z.narrow(0, i, 1), 1.0, 0.0)
        })
        .collect();
    Tensor::cat(&rows, 0)
}

#[test]
fn conditional_solvers_converge_to_each_class_exact_flow() {
    let m = toy();
    let y = labels();
    let z = noise(y.size()[0]);
    let want = exact(&m, &z, &y);
    let d = Conditioned {
        inner: &m,
        labels: Some(y.shallow_clone()),
    };
    for solver in [Solver::Ddim, Solver::DpmSolver2M] {
        let mut errs = vec![];
        for steps in [10, 40, 160] {
            let grid = Grid::Default.make(solver, &m.schedule, steps);
            let tr = solver.solve(&d, &m.schedule, &z, &grid, &[]).unwrap();
            errs.push((&tr.end - &want).abs().max().double_value(&[]));
        }
        let order = (errs[1] / errs[2]).log2() / 2.0;
        println!(
            "{}: errors {errs:?}, order {order:.2} (40 → 160 steps)",
            solver.name()
        );
        assert!(errs[2] < errs[1] && errs[1] < errs[0], "{errs:?}");
        let tol = if solver == Solver::Ddim { 2e-2 } else { 2e-3 };
        assert!(errs[2] < tol, "{errs:?}");
        let min_order = if solver == Solver::Ddim { 0.8 } else { 1.6 };
        assert!(order > min_order, "{}: order {order}", solver.name());
    }
}

#[test]
fn guidance_one_is_conditional_and_zero_is_unconditional_exactly() {
    let m = toy();
    let y = labels();
    let z = noise(y.size()[0]) * 0.7;
    for t in [0.9, 0.5, 0.1] {
        let cond = m.denoise(&z, t, Some(&y)).unwrap();
        let uncond = m.denoise(&z, t, None).unwrap();
        let g1 = Guided::new(&m, y.shallow_clone(), Guidance::new(1.0).unwrap());
        let g0 = Guided::new(&m, y.shallow_clone(), Guidance::new(0.0).unwrap());
        assert!(g1.denoise(&z, t, None).unwrap().equal(&cond));
        assert!(g0.denoise(&z, t, None).unwrap().equal(&uncond));
        // w = 2: x̂(∅) + 2 (x̂(y) − x̂(∅)), to rounding
        let g2 = Guided::new(&m, y.shallow_clone(), Guidance::new(2.0).unwrap());
        let want = &uncond + (&cond - &uncond) * 2.0;
        assert!(
            (g2.denoise(&z, t, None).unwrap() - want)
                .abs()
                .max()
                .double_value(&[])
                < 1e-12
        );
    }
    // The conditional and unconditional denoisers differ where the classes overlap.
    let gap = (m.denoise(&z, 0.9, Some(&y)).unwrap() - m.denoise(&z, 0.9, None).unwrap())
        .abs()
        .max()
        .double_value(&[]);
    assert!(gap > 0.1, "{gap}");
}

#[test]
fn guided_steps_cost_two_evaluations_and_sharpen_the_classes() {
    let m = toy();
    let y = labels();
    let z = noise(y.size()[0]);
    let grid = Grid::Default.make(Solver::DpmSolver2M, &m.schedule, 20);
    let mut log_post = vec![];
    for w in [1.0, 3.0] {
        let g = Guided::new(&m, y.shallow_clone(), Guidance::new(w).unwrap());
        let tr = Solver::DpmSolver2M
            .solve(&g, &m.schedule, &z, &grid, &[])
            .unwrap();
        assert_eq!(tr.nfe, if w == 1.0 { 20 } else { 40 });
        // log p(y | x) under the mixture (equal weights and stds): a softmax of −‖x − μ_k‖²/2s²
        let d2 = (tr.end.unsqueeze(1) - m.means.unsqueeze(0))
            .square()
            .sum_dim_intlist([-1i64].as_slice(), false, Kind::Double);
        let lp = (d2 / (-2.0 * 0.3 * 0.3)).log_softmax(-1, Kind::Double);
        let mean = lp.gather(1, &y.unsqueeze(1), false).mean(Kind::Double);
        log_post.push(mean.double_value(&[]));
    }
    // Guidance above 1 samples where the class is more certain: p(x | y) p(y | x)^(w − 1).
    println!(
        "mean log p(y | x): w = 1 {:.3e}, w = 3 {:.3e}",
        log_post[0], log_post[1]
    );
    assert!(log_post[1] > log_post[0], "{log_post:?}");
}

#[test]
fn bad_labels_and_scales_are_errors() {
    let m = toy();
    let z = noise(2);
    for bad in [[0i64, 8], [-1, 0]] {
        let y = Tensor::from_slice(&bad);
        let e = m.denoise(&z, 0.5, Some(&y)).unwrap_err().to_string();
        assert!(e.contains("outside the 8 classes"), "{e}");
    }
    let e = m
        .denoise(&z, 0.5, Some(&Tensor::from_slice(&[0i64])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch of 2"), "{e}");
    for w in [-0.5, f64::NAN, f64::INFINITY] {
        let e = dsno::denoiser::Guidance::new(w).err().unwrap().to_string();
        assert!(e.contains("guidance scale"), "{e}");
    }
}

/// The bundled unconditional MNIST teacher's weights in a class-conditional U-Net (the class
/// embedding zero-initialised, as `train-teacher --init` starts one): the same network for every
/// label and the null class.
#[test]
fn a_zero_initialised_class_embedding_changes_nothing() {
    let _serial = common::serial();
    use dsno::nn::ModelConfig;
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist-teacher.safetensors");
    let base = dsno::model::Teacher::load(&path, Device::Cpu).unwrap();
    let mut ck = dsno::checkpoint::load(&path).unwrap();
    let ModelConfig::Unet(c) = &mut ck.meta.model else {
        panic!("a U-Net teacher")
    };
    c.num_classes = Some(10);
    let dir = std::env::temp_dir().join(format!("dsno-cond-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cond_path = dir.join("cond.safetensors");
    // the conditional model's variables: the teacher's plus a zero class embedding
    let e = 64; // 4 × 16 channels
    ck.tensors.insert(
        "class_emb.weight".into(),
        Tensor::zeros([11, e], (Kind::Float, Device::Cpu)),
    );
    ck.export(&cond_path, None).unwrap();
    let cond = dsno::model::Teacher::load(&cond_path, Device::Cpu).unwrap();
    assert_eq!(cond.num_classes(), Some(10));
    tch::manual_seed(3);
    let z = Tensor::randn([11, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::arange(11, (Kind::Int64, Device::Cpu)); // 0..9 and the null class 10
    for t in [0.8, 0.3] {
        let want = base.denoise(&z, t, None).unwrap();
        assert!(
            cond.denoise(&z, t, Some(&y)).unwrap().equal(&want),
            "t = {t}"
        );
        assert!(cond.denoise(&z, t, None).unwrap().equal(&want));
    }
    // Labels: refused by the unconditional teacher, range-checked by the conditional one.
    let e1 = base.denoise(&z, 0.5, Some(&y)).unwrap_err().to_string();
    assert!(e1.contains("not class-conditional"), "{e1}");
    let bad = Tensor::full([11], 11, (Kind::Int64, Device::Cpu));
    let e2 = cond.denoise(&z, 0.5, Some(&bad)).unwrap_err().to_string();
    assert!(e2.contains("outside the 10 classes"), "{e2}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A few steps of conditional teacher training from the unconditional teacher (`--init`):
/// labels are needed, the class embedding learns (it leaves zero) and the rest starts where
/// the teacher was.
#[test]
fn conditional_teacher_training_starts_from_an_unconditional_teacher() {
    let _serial = common::serial();
    use dsno::train::teacher::{train, train_labeled, TeacherConfig};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = TeacherConfig::load(&root.join("configs/mnist-cond.toml")).unwrap();
    cfg.train.steps = 3;
    cfg.train.batch_size = 8;
    cfg.train.warmup = 1;
    cfg.train.lr = 1e-3;
    let dir = std::env::temp_dir().join(format!("dsno-cond-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tch::manual_seed(5);
    let images = Tensor::rand([32, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let labels = Tensor::arange(32, (Kind::Int64, Device::Cpu)).remainder(10);
    let run = |d: &str| dsno::train::RunOptions {
        out: dir.join(d),
        ..Default::default()
    };
    let init = root.join("models/mnist-teacher.safetensors");
    let mut uncond_cfg = cfg.clone();
    uncond_cfg.label_dropout = 0.0;
    // no labels for a conditional model: an error
    let e = train(&cfg, images.shallow_clone(), &run("a"), Some(&init)).unwrap_err();
    assert!(e.to_string().contains("needs the training labels"), "{e}");
    train_labeled(&cfg, images, Some(labels), &run("b"), Some(&init)).unwrap();
    let ck = dsno::checkpoint::load(&dir.join("b/model.safetensors")).unwrap();
    let table = &ck.tensors["class_emb.weight"];
    assert_eq!(table.size(), [11, 64]);
    assert!(
        table.abs().max().double_value(&[]) > 0.0,
        "the class embedding learned"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The "both" parameterisation: x̂ = w x_head + (1 − w) x̂(ε_head) with w = σ²/(α² + σ²).
#[test]
fn both_heads_mix_by_the_noise_level() {
    let _serial = common::serial();
    use dsno::denoiser::{x_from_both, x_from_eps};
    tch::manual_seed(9);
    let z = Tensor::randn([3, 2, 4, 4], (Kind::Double, Device::Cpu));
    let out = Tensor::randn([3, 4, 4, 4], (Kind::Double, Device::Cpu));
    let (x, eps) = (out.narrow(1, 0, 2), out.narrow(1, 2, 2));
    let s = Schedule::vp_cosine();
    for t in [0.05, 0.5, 0.95] {
        let (a, sg) = s.alpha_sigma(t);
        let got = x_from_both(&z, &out, a, sg);
        let lambda = s.lambda(t);
        let w = 1.0 / (1.0 + lambda.exp()); // sigmoid(−λ)
        let want = &x * w + x_from_eps(&z, &eps, a, sg) * (1.0 - w);
        assert!((got - want).abs().max().double_value(&[]) < 1e-9, "t = {t}");
    }
    // high noise: the x head; low noise: the ε head's x̂
    let (a, sg) = s.alpha_sigma(1.0);
    let far = x_from_both(&z, &out, a, sg);
    assert!((far - &x).abs().max().double_value(&[]) < 1e-3);
}

/// `dsno sample` on a class-conditional teacher: `--classes` draws one row per class,
/// `--class` with `--guidance` costs two evaluations per step; labels for an unconditional
/// teacher, none for a conditional one, or out of range are errors.
#[test]
fn sample_draws_classes_with_guidance() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = root.join("models/mnist-teacher.safetensors");
    let mut ck = dsno::checkpoint::load(&base).unwrap();
    let dsno::nn::ModelConfig::Unet(c) = &mut ck.meta.model else {
        panic!()
    };
    c.num_classes = Some(10);
    ck.tensors.insert(
        "class_emb.weight".into(),
        Tensor::zeros([11, 64], (Kind::Float, Device::Cpu)),
    );
    let dir = std::env::temp_dir().join(format!("dsno-cond-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cond = dir.join("cond.safetensors");
    ck.export(&cond, None).unwrap();
    let s = |p: &std::path::Path| p.display().to_string();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dsno"))
            .args(args)
            .args(["--device", "cpu"])
            .output()
            .unwrap()
    };
    let grid = dir.join("grid.png");
    let o = run(&[
        "sample",
        "--model",
        &s(&cond),
        "--solver",
        "ddim",
        "--steps",
        "3",
        "--classes",
        "--count",
        "2",
        "--out",
        &s(&grid),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = dsno::util::image::Image::load_png(&grid).unwrap();
    assert_eq!(
        (img.width, img.height),
        (2 * 28 + 3 * 2, 10 * 28 + 11 * 2),
        "ten rows of two"
    );
    let o = run(&[
        "sample",
        "--model",
        &s(&cond),
        "--solver",
        "ddim",
        "--steps",
        "3",
        "--class",
        "3",
        "--guidance",
        "2",
        "--count",
        "2",
        "--out",
        &s(&grid),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("NFE 6"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for (model, extra, want) in [
        (&base, vec!["--class", "3"], "not class-conditional"),
        (&cond, vec![], "give --class N or --classes"),
        (&cond, vec!["--class", "10"], "classes 0..9"),
        (
            &cond,
            vec!["--class", "1", "--guidance", "-1"],
            "guidance scale",
        ),
    ] {
        let (m, g) = (s(model), s(&grid));
        let mut all = vec![
            "sample", "--model", &m, "--solver", "ddim", "--steps", "2", "--out", &g,
        ];
        all.extend(extra.iter());
        let o = run(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{all:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// configs/imagenet64.toml (PD's ImageNet-64 shape: head_dim 64, 1,000 classes, "both"): dsno's
/// parameter count, computed from the config, equals the plain-PyTorch reference's
/// (bench/reference.py --params-only builds the network and counts).
#[test]
fn the_imagenet64_preset_counts_as_the_pytorch_reference() {
    use dsno::nn::ModelConfig;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg =
        dsno::train::teacher::TeacherConfig::load(&root.join("configs/imagenet64.toml")).unwrap();
    let ModelConfig::Unet(u) = &cfg.model else {
        panic!("a U-Net preset")
    };
    assert_eq!((u.heads(192), u.heads(768)), (3, 12));
    let ours = cfg.model.num_params();
    let py = root.join(".venv/bin/python");
    if !py.is_file() {
        eprintln!(
            "SKIPPED the reference count: no .venv (scripts/setup.sh makes it); dsno counts {ours}"
        );
        return;
    }
    let json = serde_json::to_string(u).unwrap();
    let o = std::process::Command::new(py)
        .arg(root.join("bench/reference.py"))
        .args(["--params-only", "--config", &json])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    println!(
        "imagenet64: dsno {ours}, PyTorch reference {}",
        v["unet_params"]
    );
    assert_eq!(v["unet_params"].as_u64(), Some(ours));
}

/// A tiny "both" teacher trains (finite loss) and samples: twice the output channels, x̂ from
/// the two heads.
#[test]
fn a_both_teacher_trains_and_denoises() {
    let _serial = common::serial();
    use dsno::denoiser::Prediction;
    use dsno::train::teacher::{train, TeacherConfig};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = TeacherConfig::load(&root.join("configs/mnist.toml")).unwrap();
    let dsno::nn::ModelConfig::Unet(u) = &mut cfg.model else {
        panic!()
    };
    u.channels = 8;
    u.groups = 4;
    u.out_channels = 1;
    cfg.prediction = Prediction::Both;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("out_channels"), "{e}");
    let dsno::nn::ModelConfig::Unet(u) = &mut cfg.model else {
        panic!()
    };
    u.out_channels = 2;
    cfg.validate().unwrap();
    cfg.train.steps = 2;
    cfg.train.batch_size = 4;
    let dir = std::env::temp_dir().join(format!("dsno-both-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tch::manual_seed(2);
    let images = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let run = dsno::train::RunOptions {
        out: dir.clone(),
        ..Default::default()
    };
    let s = train(&cfg, images, &run, None).unwrap();
    assert!(s.last_loss.is_finite(), "{s:?}");
    let t = dsno::model::Teacher::load(&dir.join("model.safetensors"), Device::Cpu).unwrap();
    assert_eq!(t.meta.prediction, Prediction::Both);
    let z = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let x = t.denoise(&z, 0.5, None).unwrap();
    assert_eq!(x.size(), [2, 1, 28, 28]);
    let _ = std::fs::remove_dir_all(&dir);
}

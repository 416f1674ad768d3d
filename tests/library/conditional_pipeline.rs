//! Labels through the pipeline: a class-conditional teacher's trajectory store holds each
//! sample's label (seeded, or one fixed class) and its guidance scale, byte for byte the same on
//! resume; DSNO and KD distil conditioned on the stored labels (from the teacher, or from an
//! unconditional DSNO with `init`); the conditional operator treats every sample with its own
//! label; evaluation adds class accuracy and per-class FD; bad input is a clear error.
use crate::common;

use dsno::checkpoint;
use dsno::data::store::{load_shard, load_store, save_shard, shard_path, Manifest, Shard};
use dsno::model::{OneStep, Teacher};
use dsno::schedule::parse_output_times;
use dsno::solver::Solver;
use dsno::train::distill::{distill, DistillConfig, Method};
use dsno::train::teacher::{train, train_labeled, TeacherConfig};
use dsno::train::trajectories::{generate, GenerateOptions};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const K: i64 = 3;

fn tiny_config(classes: Option<i64>) -> TeacherConfig {
    let mut cfg = common::tiny_teacher_config(classes);
    cfg.train.warmup = 1;
    cfg.train.lr = 1e-2;
    cfg
}

/// A tiny unconditional teacher in `dir/uncond` and its class-conditional version (K classes,
/// label dropout 0.2) fine-tuned from it in `dir/cond`; returns both model files.
fn teachers(dir: &Path) -> (PathBuf, PathBuf) {
    tch::manual_seed(1);
    let images = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let labels = Tensor::arange(8, (Kind::Int64, Device::Cpu)).remainder(K);
    let uncond = dir.join("uncond/model.safetensors");
    train(
        &tiny_config(None),
        images.shallow_clone(),
        &common::run(&dir.join("uncond"), false),
        None,
    )
    .unwrap();
    let mut cfg = tiny_config(Some(K));
    cfg.label_dropout = 0.2;
    train_labeled(
        &cfg,
        images,
        Some(labels),
        &common::run(&dir.join("cond"), false),
        Some(&uncond),
    )
    .unwrap();
    (uncond, dir.join("cond/model.safetensors"))
}

fn options(count: usize) -> GenerateOptions {
    GenerateOptions {
        solver: Solver::DpmSolver2M,
        steps: 4,
        times: parse_output_times("quad:2").unwrap(),
        count,
        seed: 7,
        shard_size: 4,
        batch: 3,
        ..Default::default()
    }
}

fn shard_bytes(dir: &Path, shards: usize) -> Vec<Vec<u8>> {
    (0..shards)
        .map(|j| std::fs::read(shard_path(dir, j)).unwrap())
        .collect()
}

fn distill_config(method: Method, steps: u64, lr: f64) -> DistillConfig {
    let text = format!(
        "method = \"{}\"\nvalidation = 2\n[train]\nsteps = {steps}\nbatch_size = 4\nlr = {lr}\nwarmup = 1\nema_decay = 0.5\ncheckpoint_every = 100\nlog_every = 1\nseed = 0\n",
        method.name()
    );
    DistillConfig::from_toml(&text, Path::new("test.toml")).unwrap()
}

/// Labels survive the store: every shard holds the labels of (seed, i), a resumed store (one
/// shard deleted, one corrupted) is the fresh store byte for byte, `class` fixes every label,
/// and the guidance scale is recorded and costs two evaluations per step.
#[test]
fn labels_survive_the_store_byte_for_byte() {
    let _g = common::serial();
    let dir = common::tempdir("cond-store");
    let (uncond_path, path) = teachers(&dir);
    let teacher = Teacher::load(&path, Device::Cpu).unwrap();
    let store = dir.join("store");
    let s = generate(&teacher, &path, &store, &options(10)).unwrap();
    assert_eq!((s.made, s.nfe_per_sample), (3, 4));
    let m = Manifest::load(&store).unwrap();
    assert_eq!(
        (m.num_classes, m.class, m.guidance),
        (Some(3), None, Some(dsno::denoiser::Guidance::CONDITIONAL))
    );
    let loaded = load_store(&store).unwrap();
    let y = loaded.labels.expect("a labelled store");
    let want = dsno::rng::labels(7, 0..10, K as u64);
    assert!(y.equal(&want), "the labels of (seed, i)");
    let counts = y.bincount::<Tensor>(None, K);
    assert!(
        counts.min().int64_value(&[]) > 0,
        "seeded labels cover the classes"
    );
    assert!(
        !dsno::rng::labels(8, 0..10, K as u64).equal(&want),
        "another seed, other labels"
    );
    // the labels of sample i do not depend on the range they are drawn in
    assert!(dsno::rng::labels(7, 4..10, K as u64).equal(&want.narrow(0, 4, 6)));
    let fresh = shard_bytes(&store, 3);
    // resume: a deleted and a corrupted shard are made again, the same bytes
    std::fs::remove_file(shard_path(&store, 1)).unwrap();
    let mut bad = fresh[2].clone();
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    std::fs::write(shard_path(&store, 2), bad).unwrap();
    let s = generate(&teacher, &path, &store, &options(10)).unwrap();
    assert_eq!((s.made, s.kept, s.regenerated.len()), (2, 1, 1));
    assert_eq!(shard_bytes(&store, 3), fresh, "resumed store = fresh store");
    // a shard whose labels were altered (checksum recomputed) is refused, naming the field
    let mut sh = load_shard(&store, &m, 0).unwrap();
    sh.labels = Some(sh.labels.unwrap().remainder(2) + 1);
    save_shard(&shard_path(&store, 0), &sh, &m).unwrap();
    let e = load_shard(&store, &m, 0).unwrap_err().to_string();
    assert!(e.contains("`labels`") && e.contains("traj-00000"), "{e}");
    std::fs::write(shard_path(&store, 0), &fresh[0]).unwrap();

    // one fixed class, with guidance w = 2: recorded, and two evaluations per step
    let fixed = dir.join("fixed");
    let o = GenerateOptions {
        class: Some(2),
        guidance: Some(dsno::denoiser::Guidance::new(2.0).unwrap()),
        ..options(5)
    };
    let s = generate(&teacher, &path, &fixed, &o).unwrap();
    assert_eq!(s.nfe_per_sample, 8);
    let m2 = Manifest::load(&fixed).unwrap();
    assert_eq!(
        (m2.class, m2.guidance),
        (Some(2), Some(dsno::denoiser::Guidance::new(2.0).unwrap()))
    );
    let y2 = load_store(&fixed).unwrap().labels.unwrap();
    assert!(y2.equal(&Tensor::full([5], 2, (Kind::Int64, Device::Cpu))));
    // the guided targets differ from the unguided ones of the same noise and class
    let plain = dir.join("plain");
    generate(
        &teacher,
        &path,
        &plain,
        &GenerateOptions {
            class: Some(2),
            ..options(5)
        },
    )
    .unwrap();
    let (a, b) = (load_store(&fixed).unwrap(), load_store(&plain).unwrap());
    assert!(a.x_t.equal(&b.x_t));
    assert!((a.targets - b.targets).abs().max().double_value(&[]) > 1e-6);

    // bad input: a class out of range, labels for an unconditional teacher (a negative scale
    // cannot be made: `Guidance::new` refuses it)
    let e = dsno::denoiser::Guidance::new(-1.0).unwrap_err().to_string();
    assert!(e.contains("guidance"), "{e}");
    let o = GenerateOptions {
        class: Some(3),
        ..options(4)
    };
    let out = dir.join("bad");
    let e = generate(&teacher, &path, &out, &o).unwrap_err().to_string();
    assert!(e.contains("class"), "{e}");
    assert!(!out.exists(), "nothing left behind");
    let plain_teacher = Teacher::load(&uncond_path, Device::Cpu).unwrap();
    let e = generate(
        &plain_teacher,
        &uncond_path,
        &dir.join("bad"),
        &GenerateOptions {
            class: Some(1),
            ..options(4)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not class-conditional"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// DSNO and KD distil a conditional teacher on its stored labels; the operator gives each
/// sample the output of its own label (a batch equals its samples run alone, and labels change
/// the output); `init` starts a conditional DSNO from an unconditional one with the teacher's
/// class embedding; a store without labels is refused.
#[test]
fn conditional_distillation_uses_the_stored_labels() {
    let _g = common::serial();
    let dir = common::tempdir("cond-distill");
    let (uncond_path, path) = teachers(&dir);
    let teacher = Teacher::load(&path, Device::Cpu).unwrap();
    generate(&teacher, &path, &dir.join("store"), &options(10)).unwrap();
    for method in [Method::DSNO, Method::KD] {
        let out = dir.join(format!("{method}"));
        let cfg = distill_config(method.clone(), 3, 1e-3);
        let s = distill(
            &cfg,
            &path,
            &dir.join("store"),
            None,
            &common::run(&out, false),
        )
        .unwrap();
        assert!(s.last_loss.is_finite());
        let m = OneStep::load(&out.join("model.safetensors"), Device::Cpu).unwrap();
        assert_eq!(m.num_classes(), Some(K));
        tch::manual_seed(2);
        let x = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[2i64, 0, 1]);
        let batch = m.trajectory(&x, Some(&y)).unwrap();
        for i in 0..3 {
            let alone = m
                .trajectory(&x.narrow(0, i, 1), Some(&y.narrow(0, i, 1)))
                .unwrap();
            let d = (batch.narrow(0, i, 1) - alone)
                .abs()
                .max()
                .double_value(&[]);
            assert!(
                d < 1e-5,
                "{method}: sample {i} differs by {d} from its batch"
            );
        }
        let other = m
            .trajectory(&x, Some(&Tensor::from_slice(&[0i64, 1, 2])))
            .unwrap();
        assert!(
            (other - &batch).abs().max().double_value(&[]) > 1e-6,
            "{method}: the label matters"
        );
        let e = m
            .trajectory(&x, Some(&Tensor::from_slice(&[0i64, 1, 4])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the 3 classes"), "{e}");
    }

    // init: an unconditional DSNO of the unconditional teacher starts the conditional one
    let uteacher = Teacher::load(&uncond_path, Device::Cpu).unwrap();
    generate(&uteacher, &uncond_path, &dir.join("ustore"), &options(6)).unwrap();
    let cfg = distill_config(Method::DSNO, 2, 1e-3);
    let udsno = dir.join("udsno");
    distill(
        &cfg,
        &uncond_path,
        &dir.join("ustore"),
        None,
        &common::run(&udsno, false),
    )
    .unwrap();
    let init = udsno.join("model.safetensors");
    let tiny_lr = distill_config(Method::DSNO, 1, 1e-12);
    let out = dir.join("from-init");
    distill(
        &tiny_lr,
        &path,
        &dir.join("store"),
        Some(&init),
        &common::run(&out, false),
    )
    .unwrap();
    let got = checkpoint::load(&out.join("model.safetensors")).unwrap();
    let (from, t) = (
        checkpoint::load(&init).unwrap(),
        checkpoint::load(&path).unwrap(),
    );
    for (name, v) in &got.tensors {
        let src = if name.starts_with("class_emb") {
            &t.tensors[name]
        } else {
            &from.tensors[name]
        };
        let d = (v.to_kind(Kind::Double) - src.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-6, "{name} moved by {d} from its initial value");
    }
    // init from a KD model for DSNO, or from a teacher: refused
    for bad in [dir.join("KD/model.safetensors"), path.clone()] {
        let e = distill(
            &tiny_lr,
            &path,
            &dir.join("store"),
            Some(&bad),
            &common::run(&dir.join("bad-init"), false),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("initial weights for DSNO"), "{e}");
    }

    // a store without labels for the conditional teacher: refused
    let store = dir.join("store");
    let mut m = Manifest::load(&store).unwrap();
    let shards: Vec<Shard> = (0..m.shards())
        .map(|j| load_shard(&store, &m, j).unwrap())
        .collect();
    (m.num_classes, m.class, m.guidance) = (None, None, None);
    std::fs::write(
        store.join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
    for (j, mut s) in shards.into_iter().enumerate() {
        s.labels = None;
        save_shard(&shard_path(&store, j), &s, &m).unwrap();
    }
    let e = distill(
        &cfg,
        &path,
        &store,
        None,
        &common::run(&dir.join("nolabels"), false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("holds no labels") && e.contains("manifest.json"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dsno eval` of a conditional teacher and its DSNO: class accuracy and per-class FD on every
/// row; the floor row's class accuracy is the classifier's accuracy on those test images.
#[test]
fn conditional_evaluation_scores_each_class() {
    use dsno::data::{idx, to_unit_range};
    use dsno::eval::{evaluate, EvalInputs, EvalOptions};
    let _g = common::serial();
    let dir = common::tempdir("cond-eval");
    // a 10-class teacher, so that the MNIST classifier's labels are its classes
    tch::manual_seed(1);
    let data = common::data_dir("mnist");
    let train_images = to_unit_range(&idx::load_images(&data, idx::Split::Train).unwrap());
    let train_labels = idx::load_labels(&data, idx::Split::Train).unwrap();
    let (tri, trl) = (
        train_images.narrow(0, 0, 400),
        train_labels.narrow(0, 0, 400),
    );
    let mut cfg = tiny_config(Some(10));
    cfg.label_dropout = 0.1;
    train_labeled(
        &cfg,
        tri.shallow_clone(),
        Some(trl.shallow_clone()),
        &common::run(&dir.join("t"), false),
        None,
    )
    .unwrap();
    let path = dir.join("t/model.safetensors");
    let teacher = Teacher::load(&path, Device::Cpu).unwrap();
    generate(&teacher, &path, &dir.join("store"), &options(8)).unwrap();
    distill(
        &distill_config(Method::DSNO, 1, 1e-3),
        &path,
        &dir.join("store"),
        None,
        &common::run(&dir.join("d"), false),
    )
    .unwrap();
    let dsno_m = OneStep::load(&dir.join("d/model.safetensors"), Device::Cpu).unwrap();
    let cls = dsno::model::load_classifier(
        &common::root().join("models/mnist-classifier.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let test_images = to_unit_range(&idx::load_images(&data, idx::Split::Test).unwrap());
    let test_labels = idx::load_labels(&data, idx::Split::Test).unwrap();
    let inputs = EvalInputs {
        teacher: &teacher,
        teacher_name: "teacher".into(),
        students: vec![dsno::eval::Student {
            model: &dsno_m,
            name: "DSNO".into(),
            file: "dsno".into(),
        }],
        classifier: &cls.net,
        classifier_name: "classifier".into(),
        train_images: tri,
        test_images: test_images.shallow_clone(),
        train_labels: Some(trl),
        test_labels: Some(test_labels.shallow_clone()),
        inception: None,
    };
    let o = EvalOptions {
        count: 40,
        batch: 20,
        reference_steps: 3,
        baselines: dsno::eval::Baseline::parse("ddim@2").unwrap(),
        guidance: dsno::denoiser::Guidance::new(2.0).unwrap(),
        progress: false,
        ..Default::default()
    };
    let (report, _) = evaluate(&inputs, &o).unwrap();
    for r in &report.rows {
        let (acc, fd) = (r.class_accuracy.unwrap(), r.class_fd.unwrap());
        assert!(
            (0.0..=1.0).contains(&acc) && fd.is_finite() && fd >= 0.0,
            "{r:?}"
        );
    }
    // the floor: 40 test images spread over the set, with their true labels
    let floor = dsno::data::spread(&test_images, 40);
    let floor_y = dsno::data::spread(&test_labels, 40);
    let predicted = cls.net.probabilities(&floor, 100).argmax(1, false);
    let want = predicted
        .eq_tensor(&floor_y)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    let got = report.rows.last().unwrap().class_accuracy.unwrap();
    assert!((got - want).abs() < 1e-12 && got > 0.9, "{got} vs {want}");
    let table = report.table();
    assert!(table.contains("class accuracy") && table.contains("per-class FD"));
    assert!(report.setup.conditional.as_ref().unwrap().contains("w = 2"));
    // labels missing, a negative scale, an unconditional model beside a conditional teacher
    let no_labels = EvalInputs {
        train_labels: None,
        ..inputs
    };
    let e = evaluate(&no_labels, &o).unwrap_err().to_string();
    assert!(e.contains("needs the labels"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! Trajectory store: resume after a kill gives identical bytes, shards partition the indices,
//! corrupt shards are regenerated, mismatched stores are rejected; distillation resumes exactly.
use crate::common;

use dsno::checkpoint;
use dsno::data::store::{load_store, shard_path, Manifest};
use dsno::model::Teacher;
use dsno::schedule::parse_output_times;
use dsno::solver::Solver;
use dsno::train::distill::{distill, DistillConfig, Method};
use dsno::train::teacher::{train, TeacherConfig};
use dsno::train::trajectories::{generate, GenerateOptions};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// A small toy teacher (40 steps) in `dir/teacher`.
fn toy_teacher(dir: &Path) -> PathBuf {
    let mut cfg =
        TeacherConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/toy2d.toml"))
            .unwrap();
    cfg.train.steps = 40;
    train(
        &cfg,
        cfg.data.load(None).unwrap(),
        &common::run(&dir.join("teacher"), false),
        None,
    )
    .unwrap();
    dir.join("teacher/model.safetensors")
}

/// configs/distill-toy2d.toml with 10 trajectories held out, batches of 16 and `dropout`.
fn toy_distill_config(dropout: f64) -> DistillConfig {
    let mut dcfg = DistillConfig::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/distill-toy2d.toml"),
    )
    .unwrap();
    dcfg.validation = 10;
    dcfg.dropout = Some(dropout);
    dcfg.train.batch_size = 16;
    dcfg
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
        class: None,
        guidance: None,
        progress: false,
        comm: Default::default(),
    }
}

fn shard_bytes(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|j| std::fs::read(shard_path(dir, j)).unwrap())
        .collect()
}

#[test]
fn resume_after_a_kill_gives_identical_bytes() {
    let _s = common::serial();
    let dir = common::tempdir("resume");
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
        s.regenerated[0].contains("traj-00002.safetensors: corrupt"),
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
    let _s = common::serial();
    let dir = common::tempdir("parts");
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
    let _s = common::serial();
    let dir = common::tempdir("mismatch");
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
        &common::run(&dir.join("other"), false),
        None,
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
        None,
        &common::run(&dir.join("d"), false),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("another teacher"), "{e}");
    dcfg.times = Some(parse_output_times("uniform:4").unwrap());
    let e = distill(
        &dcfg,
        &tpath,
        &store,
        None,
        &common::run(&dir.join("d"), false),
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
    let _s = common::serial();
    let dir = common::tempdir("distill-resume");
    let tpath = toy_teacher(&dir);
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    generate(&teacher, &tpath, &dir.join("store"), &options(60, (0, 1))).unwrap();
    let mut dcfg = toy_distill_config(0.1);
    dcfg.train.checkpoint_every = 6;
    dcfg.train.log_every = 3;
    for method in [Method::DSNO, Method::KD] {
        dcfg.method = method.clone();
        dcfg.train.steps = 12;
        let a = dir.join(format!("{method}-a"));
        distill(
            &dcfg,
            &tpath,
            &dir.join("store"),
            None,
            &common::run(&a, false),
        )
        .unwrap();
        let b = dir.join(format!("{method}-b"));
        dcfg.train.steps = 6;
        distill(
            &dcfg,
            &tpath,
            &dir.join("store"),
            None,
            &common::run(&b, false),
        )
        .unwrap();
        dcfg.train.steps = 12;
        distill(
            &dcfg,
            &tpath,
            &dir.join("store"),
            None,
            &common::run(&b, true),
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
                "{method}: {name} differs after resume"
            );
        }
        common::assert_same_run_files(&a, &b);
    }
    std::fs::remove_dir_all(dir).ok();
}

/// The batch order: every epoch visits each training sample once, a batch draws from the shards
/// of at most two buffers, and the order depends on the seed.
#[test]
fn the_store_order_is_a_buffered_permutation_of_each_epoch() {
    use dsno::data::store::StoreOrder;
    let (n, s, buffer, batch) = (95, 10, 3, 5); // 10 shards, the last of 5 samples
    let o = StoreOrder::new(n, s, buffer, batch, 4).unwrap();
    assert_eq!(o.per_epoch(), 19);
    for epoch in 0..3u64 {
        let mut seen = vec![];
        for k in 0..19 {
            let (items, shards) = o.batch(epoch * 19 + k);
            assert_eq!(items.len(), batch);
            assert!(shards.len() <= 2 * buffer, "{shards:?}");
            assert!(items.iter().all(|i| shards.contains(&(i / s))));
            seen.extend(items);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "epoch {epoch}");
    }
    // buffers: the first 25 samples of an epoch (at most one buffer) come from at most 3 shards
    let first: Vec<usize> = (0..5).flat_map(|k| o.batch(k).0).collect();
    let mut shards: Vec<usize> = first.iter().map(|i| i / s).collect();
    shards.dedup();
    shards.sort_unstable();
    shards.dedup();
    assert!(shards.len() <= buffer, "{shards:?}");
    let other = StoreOrder::new(n, s, buffer, batch, 5).unwrap();
    assert_ne!(o.batch(0).0, other.batch(0).0);
    assert!(StoreOrder::new(4, s, buffer, 5, 0).is_err());
}

/// Streaming: a float16 store read a buffer at a time holds at most two buffers of shards (a
/// cap below the store's size) and distils to the same weights as the store loaded whole, for
/// DSNO and KD; a stream without a buffer is refused.
#[test]
fn streaming_distillation_equals_the_in_memory_path_under_a_memory_cap() {
    use dsno::data::store::StreamingStore;
    let _s = common::serial();
    let dir = common::tempdir("stream");
    let tpath = toy_teacher(&dir);
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    let store = dir.join("store");
    let o = GenerateOptions {
        fp16: true,
        ..options(100, (0, 1))
    };
    generate(&teacher, &tpath, &store, &o).unwrap();
    let total: u64 = (0..10)
        .map(|j| std::fs::metadata(shard_path(&store, j)).unwrap().len())
        .sum();
    // shard data: x_T [10, 2] and targets [10, 4, 2] in float16 = 200 bytes a shard
    let shard_bytes = 10 * (2 + 8) * 2;
    let cap = 4 * shard_bytes; // two buffers of two shards
    assert!(10 * shard_bytes > cap && total > cap as u64);
    let s = StreamingStore::open(&store, 90, 2, 16, 0).unwrap();
    let mut rows = 0;
    for step in 0..20 {
        let b = s.batch(step).unwrap();
        assert_eq!(
            b.x_t.kind(),
            Kind::Half,
            "float16 stays float16 on the host"
        );
        rows += b.x_t.size()[0];
    }
    assert_eq!(rows, 320);
    assert!(s.peak_bytes() <= cap, "peak {} > cap {cap}", s.peak_bytes());
    assert!(
        s.shard_loads() >= 9,
        "every shard was read: {}",
        s.shard_loads()
    );
    let mut dcfg = toy_distill_config(0.0);
    dcfg.train.steps = 20;
    dcfg.train.checkpoint_every = 10;
    dcfg.shuffle_shards = 2;
    for method in [Method::DSNO, Method::KD] {
        dcfg.method = method.clone();
        let mut out = vec![];
        for stream in [false, true] {
            dcfg.stream = stream;
            let d = dir.join(format!("{method}-{stream}"));
            distill(&dcfg, &tpath, &store, None, &common::run(&d, false)).unwrap();
            out.push(d.join("model.safetensors"));
        }
        // the same weights bit for bit (the metadata differs: it records `stream`)
        let (a, b) = (
            checkpoint::load(&out[0]).unwrap(),
            checkpoint::load(&out[1]).unwrap(),
        );
        assert_eq!(a.tensors.len(), b.tensors.len());
        for (name, t) in &a.tensors {
            assert!(t.equal(&b.tensors[name]), "{method}: `{name}` differs");
        }
    }
    dcfg.shuffle_shards = 0;
    assert!(dcfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("shuffle_shards"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn patience_ends_a_distillation_whose_validation_loss_stopped_improving() {
    // the rule: the best so far must improve by more than min_delta (relative)
    let mut p = dsno::train::Plateau::new(2, 1e-3);
    let seen: Vec<bool> = [5.0, f64::NAN, 4.0, 3.999, 4.1]
        .iter()
        .map(|&v| p.observe(v))
        .collect();
    assert_eq!(seen, [false, false, false, false, true]);
    assert_eq!(p.best(), 4.0);

    let _s = common::serial();
    let dir = common::tempdir("patience");
    let tpath = toy_teacher(&dir);
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    let store = dir.join("store");
    generate(&teacher, &tpath, &store, &options(60, (0, 1))).unwrap();
    // lr 0: the validation loss never improves, so the run ends at its third validation
    let mut dcfg = toy_distill_config(0.0);
    dcfg.train.lr = 0.0;
    dcfg.train.steps = 20;
    dcfg.train.log_every = 2;
    dcfg.train.checkpoint_every = 100;
    dcfg.train.patience = 2;
    let a = dir.join("a");
    let s = distill(&dcfg, &tpath, &store, None, &common::run(&a, false)).unwrap();
    assert!(s.plateaued && s.end_step == 6, "{s:?}");
    // stopped at step 4 and resumed: the validations before the checkpoint count (the log's)
    let b = dir.join("b");
    dcfg.train.steps = 4;
    let s = distill(&dcfg, &tpath, &store, None, &common::run(&b, false)).unwrap();
    assert!(!s.plateaued && s.end_step == 4, "{s:?}");
    dcfg.train.steps = 20;
    let s = distill(&dcfg, &tpath, &store, None, &common::run(&b, true)).unwrap();
    assert!(s.plateaued && s.end_step == 6, "{s:?}");
    common::assert_same_run_files(&a, &b);
    // a run that had stopped improving does not train on when resumed
    let s = distill(&dcfg, &tpath, &store, None, &common::run(&b, true)).unwrap();
    assert!(s.plateaued && s.start_step == 6 && s.end_step == 6, "{s:?}");
    common::assert_same_run_files(&a, &b);
    // without patience the run goes on to its last step
    dcfg.train.patience = 0;
    let c = dir.join("c");
    let s = distill(&dcfg, &tpath, &store, None, &common::run(&c, false)).unwrap();
    assert!(!s.plateaued && s.end_step == 20, "{s:?}");
    std::fs::remove_dir_all(dir).ok();
}

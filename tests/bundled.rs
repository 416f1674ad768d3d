//! The bundled models sample bit for bit as they did when the fixtures were made
//! (`scripts/make-bundled-fixtures.sh`): the built-in DSNO model, the KD model and the teacher
//! with DPM-Solver++(2M), 16 / 16 / 8 samples from seed 0 on the CPU. The fixtures are the raw
//! sample files of `dsno sample --safetensors`; the `samples` tensors are compared bit for bit.
mod common;

use common::{dsno, model, root, tempdir};

#[test]
fn bundled_models_sample_bit_identically_to_their_fixtures() {
    let dir = tempdir("bundled");
    let kd = model("mnist-kd.safetensors");
    let teacher = model("mnist-teacher.safetensors");
    let cases: [(&str, Vec<&str>); 3] = [
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
        assert_eq!(got.size(), want.size(), "{name}");
        assert!(
            got.equal(&want),
            "{name}: the samples differ from {}",
            fixture.display()
        );
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

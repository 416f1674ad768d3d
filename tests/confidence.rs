//! A measurement, not a check (`cargo test --release --test confidence -- --ignored --nocapture`):
//! the fraction of samples that the bundled MNIST classifier labels with confidence > 0.9, for
//! the bundled teacher (DPM-Solver++(2M), 50 steps), DSNO and KD from the same 512 noise samples,
//! and for 512 real test images. docs/RESULTS.md §8 quotes it.
use dsno::model::{OneStep, Teacher};
use dsno::solver::Solver;
use tch::{Device, Kind, Tensor};

#[test]
#[ignore = "a measurement of about a minute; run with --ignored"]
fn confident_fraction_of_each_model() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cls = dsno::nn::classifier::load(
        &root.join("models/mnist-classifier.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let rate = |x: &Tensor| {
        cls.net
            .confident_fraction(&x.clamp(-1.0, 1.0), dsno::eval::CONFIDENT, 256)
    };
    let teacher =
        Teacher::load(&root.join("models/mnist-teacher.safetensors"), Device::Cpu).unwrap();
    let s = teacher.schedule();
    let x_t = dsno::rng::noise(7, 0..512, &[1, 28, 28], Kind::Float, Device::Cpu)
        * s.sigma(s.t_range().1);
    for m in ["dsno", "kd"] {
        let model = OneStep::load(
            &root.join(format!("models/mnist-{m}.safetensors")),
            Device::Cpu,
        )
        .unwrap();
        let x = Tensor::cat(
            &(0..4)
                .map(|i| model.sample(&x_t.narrow(0, 128 * i, 128)))
                .collect::<Vec<_>>(),
            0,
        );
        println!("{m}: {:.3}", rate(&x));
    }
    let grid = Solver::DpmSolver2M.default_grid(&s, 50);
    let x = Solver::DpmSolver2M
        .solve(&teacher, &s, &x_t, &grid, &[])
        .unwrap()
        .end;
    println!("teacher (DPM-Solver++(2M) @ 50): {:.3}", rate(&x));
    let real = dsno::data::to_unit_range(
        &dsno::data::idx::load_images(
            &root.join("../shared/data/mnist"),
            dsno::data::idx::Split::Test,
        )
        .unwrap()
        .narrow(0, 0, 512),
    );
    println!("real test images: {:.3}", rate(&real));
}

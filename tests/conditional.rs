//! Class-conditional denoising and classifier-free guidance on the eight-Gaussian toy, whose
//! conditional denoiser (the component as the class) is known exactly: the solvers converge to
//! each class's exact probability-flow map; guidance with w = 1 is the conditional denoiser and
//! w = 0 the unconditional one, exactly; guidance costs two evaluations per step and makes the
//! class more certain; bad labels and scales are errors.
use dsno::denoiser::{
    ConditionalDenoiser, Conditioned, Denoiser, GaussianDenoiser, Guided, MixtureDenoiser,
};
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
        let cond = m.denoise_labels(&z, t, Some(&y)).unwrap();
        let uncond = m.denoise(&z, t).unwrap();
        let g1 = Guided::new(&m, y.shallow_clone(), 1.0).unwrap();
        let g0 = Guided::new(&m, y.shallow_clone(), 0.0).unwrap();
        assert!(g1.denoise(&z, t).unwrap().equal(&cond));
        assert!(g0.denoise(&z, t).unwrap().equal(&uncond));
        // w = 2: x̂(∅) + 2 (x̂(y) − x̂(∅)), to rounding
        let g2 = Guided::new(&m, y.shallow_clone(), 2.0).unwrap();
        let want = &uncond + (&cond - &uncond) * 2.0;
        assert!(
            (g2.denoise(&z, t).unwrap() - want)
                .abs()
                .max()
                .double_value(&[])
                < 1e-12
        );
    }
    // The conditional and unconditional denoisers differ where the classes overlap.
    let gap = (m.denoise_labels(&z, 0.9, Some(&y)).unwrap() - m.denoise(&z, 0.9).unwrap())
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
        let g = Guided::new(&m, y.shallow_clone(), w).unwrap();
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
        let e = m.denoise_labels(&z, 0.5, Some(&y)).unwrap_err().to_string();
        assert!(e.contains("outside the 8 classes"), "{e}");
    }
    let e = m
        .denoise_labels(&z, 0.5, Some(&Tensor::from_slice(&[0i64])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch of 2"), "{e}");
    for w in [-0.5, f64::NAN, f64::INFINITY] {
        let e = Guided::new(&m, Tensor::from_slice(&[0i64, 1]), w)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("guidance scale"), "{e}");
    }
}

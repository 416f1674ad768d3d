//! TimeConv against a naive complex DFT, gradients against finite differences, identity at
//! zero weights, both DFT paths equal, bad mode counts rejected.
use crate::common;
use dsno::nn::timeconv::{DftPath, TimeConv};
use tch::{nn, Device, Kind, Tensor};

/// The layer written out with explicit complex sums, in float64.
fn naive(u: &[f64], w: &[f64], b: usize, m: usize, c: usize, p: usize, k: usize) -> Vec<f64> {
    use std::f64::consts::PI;
    let at = |bb: usize, mm: usize, cc: usize, pp: usize| u[((bb * m + mm) * c + cc) * p + pp];
    let wr = |i: usize, o: usize, kk: usize, part: usize| w[((i * c + o) * k + kk) * 2 + part];
    let mut out = vec![0.0; u.len()];
    for bb in 0..b {
        for pp in 0..p {
            // rfft bins 0..k of every input channel
            let mut spec = vec![(0.0, 0.0); k * c];
            for kk in 0..k {
                for i in 0..c {
                    let (mut re, mut im) = (0.0, 0.0);
                    for mm in 0..m {
                        let a = -2.0 * PI * (kk * mm) as f64 / m as f64;
                        re += at(bb, mm, i, pp) * a.cos();
                        im += at(bb, mm, i, pp) * a.sin();
                    }
                    spec[kk * c + i] = (re, im);
                }
            }
            // complex mix, then the Hermitian-completed inverse DFT (irfft, n = m)
            for o in 0..c {
                let mut full = vec![(0.0, 0.0); m];
                for kk in 0..k {
                    let (mut re, mut im) = (0.0, 0.0);
                    for i in 0..c {
                        let (ur, ui) = spec[kk * c + i];
                        let (r, s) = (wr(i, o, kk, 0), wr(i, o, kk, 1));
                        re += ur * r - ui * s;
                        im += ur * s + ui * r;
                    }
                    full[kk] = (re, im);
                }
                // irfft: X[j] for j > m/2 is conj(X[m − j]); imaginary parts of DC/Nyquist ignored
                full[0].1 = 0.0;
                if m.is_multiple_of(2) {
                    full[m / 2].1 = 0.0;
                }
                for j in 1..m {
                    if j > m / 2 {
                        full[j] = (full[m - j].0, -full[m - j].1);
                    }
                }
                for mm in 0..m {
                    let mut v = 0.0;
                    for (j, &(re, im)) in full.iter().enumerate() {
                        let a = 2.0 * PI * (j * mm) as f64 / m as f64;
                        v += re * a.cos() - im * a.sin();
                    }
                    v /= m as f64;
                    let x = at(bb, mm, o, pp);
                    let idx = ((bb * m + mm) * c + o) * p + pp;
                    out[idx] = x + if v > 0.0 { v } else { 0.01 * v };
                }
            }
        }
    }
    out
}

#[test]
fn matches_a_naive_complex_dft() {
    let _serial = common::serial();
    for (m, k) in [(4i64, 2i64), (4, 3), (5, 3), (6, 4), (1, 1)] {
        let (b, c, p) = (2i64, 3i64, 5i64);
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut tc = TimeConv::new(&vs.root(), c, k, m, DftPath::Fft).unwrap();
        // weights of both signs, larger than the init, so that LeakyReLU's negative side is hit
        let _g = tch::no_grad_guard();
        tc.weight
            .copy_(&(Tensor::randn([c, c, k, 2], (Kind::Float, Device::Cpu))));
        drop(_g);
        let u = Tensor::randn([b, m, c, p], (Kind::Float, Device::Cpu));
        let uv: Vec<f64> = Vec::try_from(&u.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let wv: Vec<f64> = Vec::try_from(&tc.weight.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let want = naive(
            &uv, &wv, b as usize, m as usize, c as usize, p as usize, k as usize,
        );
        let want = Tensor::from_slice(&want)
            .reshape([b, m, c, p])
            .to_kind(Kind::Float);
        for path in [DftPath::Fft, DftPath::Matmul, DftPath::Dense] {
            tc.set_path(path);
            let got = tc.forward(&u);
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-5, "M={m} modes={k} {path:?}: max error {err}");
        }
    }
}

#[test]
fn zero_weights_are_the_identity() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut tc = TimeConv::new(&vs.root(), 4, 2, 4, DftPath::Matmul).unwrap();
    let _ = tch::no_grad(|| tc.weight.zero_());
    let u = Tensor::randn([3, 4, 4, 2, 2], (Kind::Float, Device::Cpu));
    for path in [DftPath::Fft, DftPath::Matmul, DftPath::Dense] {
        tc.set_path(path);
        assert!(tc.forward(&u).equal(&u), "{path:?}");
    }
}

#[test]
fn gradients_match_finite_differences() {
    let _serial = common::serial();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut tc = TimeConv::new(&vs.root(), 3, 2, 4, DftPath::Fft).unwrap();
    vs.double();
    tc.weight = vs.variables()["weight"].shallow_clone();
    tch::manual_seed(3);
    tch::no_grad(|| {
        tc.weight
            .copy_(&Tensor::randn([3, 3, 2, 2], (Kind::Double, Device::Cpu)))
    });
    let u = Tensor::randn([2, 4, 3, 2], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let target = Tensor::randn([2, 4, 3, 2], (Kind::Double, Device::Cpu));
    for path in [DftPath::Fft, DftPath::Matmul, DftPath::Dense] {
        tc.set_path(path);
        let loss = |tc: &TimeConv, u: &Tensor| (tc.forward(u) * &target).sum(Kind::Double);
        tc.weight.zero_grad();
        let _ = u.grad().defined().then(|| u.grad().zero_());
        let l = loss(&tc, &u);
        l.backward();
        let (gw, gu) = (tc.weight.grad().copy(), u.grad().copy());
        let h = 1e-6;
        for (var, grad) in [(&tc.weight, &gw), (&u, &gu)] {
            let flat = var.view([-1]);
            let gflat = grad.view([-1]);
            for i in [0i64, 5, 11, 17, 23] {
                let _g = tch::no_grad_guard();
                let orig = flat.double_value(&[i]);
                let _ = flat.get(i).fill_(orig + h);
                let lp = loss(&tc, &u).double_value(&[]);
                let _ = flat.get(i).fill_(orig - h);
                let lm = loss(&tc, &u).double_value(&[]);
                let _ = flat.get(i).fill_(orig);
                let fd = (lp - lm) / (2.0 * h);
                let an = gflat.double_value(&[i]);
                assert!(
                    (fd - an).abs() < 1e-6 * an.abs().max(1.0),
                    "{path:?} element {i}: analytic {an}, finite difference {fd}"
                );
            }
        }
        // loss at the restored point is unchanged (restoration worked) and u's grad is reset
        let _ = u.grad().zero_();
    }
}

#[test]
fn too_many_modes_is_a_clear_error() {
    let vs = nn::VarStore::new(Device::Cpu);
    let e = TimeConv::new(&vs.root(), 4, 4, 4, DftPath::Fft)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 Fourier modes") && e.contains("M = 4"), "{e}");
    assert!(TimeConv::new(&vs.root(), 4, 3, 4, DftPath::Fft).is_ok());
    assert!(TimeConv::new(&vs.root().sub("z"), 4, 0, 4, DftPath::Fft).is_err());
}

#[test]
fn init_is_uniform_in_zero_one_over_c_squared() {
    let vs = nn::VarStore::new(Device::Cpu);
    let tc = TimeConv::new(&vs.root(), 16, 2, 4, DftPath::Fft).unwrap();
    let (lo, hi) = (
        tc.weight.min().double_value(&[]),
        tc.weight.max().double_value(&[]),
    );
    assert!(
        lo >= 0.0 && hi < 1.0 / 256.0 && hi > 0.9 / 256.0,
        "[{lo}, {hi}]"
    );
}

//! Fréchet distance and KID against closed forms and their defining properties.
use dsno::metrics::{frechet_distance, frechet_distance_of, kid, moments, sqrtm_psd};
use tch::{Device, Kind, Tensor};

/// Standard normals `[rows, cols]` from the explicit stream `seed` (independent of other tests).
fn randn(shape: &[i64], seed: u64) -> Tensor {
    dsno::rng::noise(
        seed,
        0..shape[0] as u64,
        &shape[1..],
        Kind::Double,
        Device::Cpu,
    )
}

#[test]
fn sqrtm_squares_back() {
    let a = randn(&[6, 6], 1);
    let spd = a.matmul(&a.tr()) + Tensor::eye(6, (Kind::Double, Device::Cpu)) * 0.1;
    let r = sqrtm_psd(&spd);
    assert!((r.matmul(&r) - &spd).abs().max().double_value(&[]) < 1e-10);
}

#[test]
fn frechet_distance_matches_the_diagonal_closed_form_and_is_rotation_invariant() {
    // diagonal covariances: FD = ‖μ1 − μ2‖² + Σ (σ1ᵢ − σ2ᵢ)²
    let s1 = [0.5, 1.0, 2.0, 0.1];
    let s2 = [1.5, 0.3, 2.0, 0.7];
    let mu1 = Tensor::from_slice(&[0.0, 1.0, -1.0, 0.5]);
    let mu2 = Tensor::from_slice(&[0.3, 1.0, 0.0, 0.5]);
    let diag = |s: &[f64]| Tensor::from_slice(&s.iter().map(|x| x * x).collect::<Vec<_>>()).diag(0);
    let want: f64 = 0.09
        + 1.0
        + s1.iter()
            .zip(&s2)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>();
    let got = frechet_distance(&mu1, &diag(&s1), &mu2, &diag(&s2));
    assert!((got - want).abs() < 1e-10, "{got} vs {want}");
    // the same pair in a rotated basis
    let (q, _) = Tensor::linalg_qr(&randn(&[4, 4], 2), "reduced");
    let rot = |c: &Tensor| q.matmul(c).matmul(&q.tr());
    let got = frechet_distance(
        &q.matmul(&mu1),
        &rot(&diag(&s1)),
        &q.matmul(&mu2),
        &rot(&diag(&s2)),
    );
    assert!((got - want).abs() < 1e-9, "rotated: {got} vs {want}");
}

#[test]
fn frechet_distance_of_a_set_with_itself_is_zero_and_a_shift_is_its_square() {
    let x = randn(&[2000, 8], 3);
    assert!(frechet_distance_of(&x, &x).unwrap().abs() < 1e-8);
    let shift = Tensor::from_slice(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]);
    let got = frechet_distance_of(&x, &(&x + &shift)).unwrap();
    assert!((got - 5.0).abs() < 1e-8, "{got}");
    // and for independent samples of N(0, I) vs N(δ, I): ≈ ‖δ‖² with sampling error
    let y = randn(&[20000, 8], 4) + &shift;
    let big = randn(&[20000, 8], 5);
    let fd = frechet_distance_of(&big, &y).unwrap();
    assert!((fd - 5.0).abs() < 0.1, "{fd}");
    let (mu, cov) = moments(&big).unwrap();
    assert!(
        mu.abs().max().double_value(&[]) < 0.05
            && (cov - Tensor::eye(8, (Kind::Double, Device::Cpu)))
                .abs()
                .max()
                .double_value(&[])
                < 0.05
    );
}

#[test]
fn kid_is_unbiased_on_one_distribution_and_positive_between_two() {
    let a = randn(&[4000, 16], 6);
    let b = randn(&[4000, 16], 7);
    let (mean, se) = kid(&a, &b, 50, 500, 0).unwrap();
    assert!(
        mean.abs() <= 3.0 * se,
        "KID {mean} ± {se} on one distribution"
    );
    let c = randn(&[4000, 16], 8) * 1.3 + 0.2;
    let (mean, se) = kid(&a, &c, 50, 500, 0).unwrap();
    assert!(
        mean > 10.0 * se,
        "KID {mean} ± {se} between two distributions"
    );
}

#[test]
fn precision_recall_see_quality_and_coverage_apart() {
    use dsno::metrics::precision_recall;
    // a set against itself: every point is inside its own ball
    let a = randn(&[600, 8], 11);
    let (p, r) = precision_recall(&a, &a, 3).unwrap();
    assert_eq!((p, r), (1.0, 1.0));
    // two samples of one distribution: both high
    let b = randn(&[600, 8], 12);
    let (p, r) = precision_recall(&a, &b, 3).unwrap();
    assert!(
        p > 0.85 && r > 0.85,
        "same distribution: precision {p}, recall {r}"
    );
    // a far-away set: neither
    let far = randn(&[600, 8], 13) + 50.0;
    let (p, r) = precision_recall(&a, &far, 3).unwrap();
    assert_eq!((p, r), (0.0, 0.0));
    // mode dropping: real data is two well-separated clusters, the generator makes only one;
    // every generated point is realistic (precision ≈ 1) but half of the real data is missed
    let shift = Tensor::from_slice(&[20.0f64, 0., 0., 0., 0., 0., 0., 0.]);
    let real = Tensor::cat(&[randn(&[400, 8], 14), randn(&[400, 8], 15) + &shift], 0);
    let gen = randn(&[800, 8], 16);
    let (p, r) = precision_recall(&real, &gen, 3).unwrap();
    // the precision of the same generator against the one cluster it does cover
    let (p_one, r_one) = precision_recall(&real.narrow(0, 0, 400), &gen, 3).unwrap();
    assert!(
        p > 0.8 && (p - p_one).abs() < 0.02,
        "mode dropping keeps precision: {p} vs {p_one}"
    );
    assert!(
        r < 0.55 && (r - r_one / 2.0).abs() < 0.02,
        "mode dropping halves recall: {r} vs {r_one} on the covered cluster"
    );
    assert!(precision_recall(&a, &randn(&[600, 7], 1), 3).is_err());
}

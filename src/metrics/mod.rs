//! Sample-quality metrics.
use crate::rng::Rng;
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// Sliced Wasserstein-2 distance between two point sets `[N, D]` of equal size: the root mean
/// over `projections` random unit directions (drawn from `seed`) of the squared W2 distance of
/// the projected, sorted samples.
pub fn sliced_wasserstein(a: &Tensor, b: &Tensor, projections: usize, seed: u64) -> Result<f64> {
    let (sa, sb) = (a.size(), b.size());
    if sa.len() != 2 || sa != sb {
        return Err(Error::invalid(format!(
            "sliced Wasserstein needs two [N, D] sets of equal shape, got {sa:?} and {sb:?}"
        )));
    }
    let d = sa[1] as usize;
    let mut rng = Rng::new(seed);
    let dirs: Vec<f64> = (0..projections)
        .flat_map(|_| {
            let v = rng.normals(d);
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.into_iter().map(move |x| x / n)
        })
        .collect();
    let dirs = Tensor::from_slice(&dirs)
        .reshape([projections as i64, d as i64])
        .to_device(a.device());
    let pa = a.to_kind(Kind::Double).matmul(&dirs.tr()).sort(0, false).0;
    let pb = b.to_kind(Kind::Double).matmul(&dirs.tr()).sort(0, false).0;
    Ok((pa - pb)
        .square()
        .mean(Kind::Double)
        .sqrt()
        .double_value(&[]))
}

/// Mean `[D]` and covariance `[D, D]` (unbiased, float64) of features `[N, D]`.
pub fn moments(features: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = features.size();
    if s.len() != 2 || s[0] < 2 {
        return Err(Error::invalid(format!(
            "moments need features [N ≥ 2, D], got {s:?}"
        )));
    }
    let f = features.to_kind(Kind::Double);
    let mu = f.mean_dim(0, false, Kind::Double);
    let c = &f - mu.unsqueeze(0);
    let cov = c.tr().matmul(&c) / (s[0] - 1) as f64;
    Ok((mu, cov))
}

/// The symmetric positive semi-definite square root of a symmetric matrix (float64, by its
/// eigendecomposition; eigenvalues below zero from round-off are clipped to 0).
pub fn sqrtm_psd(a: &Tensor) -> Tensor {
    let a = a.to_kind(Kind::Double);
    let sym = (&a + a.tr()) / 2.0;
    let (w, v) = sym.linalg_eigh("L");
    let r = w.clamp_min(0.0).sqrt();
    (&v * r.unsqueeze(0)).matmul(&v.tr())
}

/// Fréchet distance between the Gaussians `N(μ1, Σ1)` and `N(μ2, Σ2)`:
/// `‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2})`.
///
/// The cross term is computed as the sum of square roots of the eigenvalues of the symmetric
/// matrix `Σ1^{1/2} Σ2 Σ1^{1/2}` (float64), which is stable where the non-symmetric product
/// `Σ1 Σ2` of the usual implementation is not.
pub fn frechet_distance(mu1: &Tensor, cov1: &Tensor, mu2: &Tensor, cov2: &Tensor) -> f64 {
    let (mu1, mu2) = (mu1.to_kind(Kind::Double), mu2.to_kind(Kind::Double));
    let (c1, c2) = (cov1.to_kind(Kind::Double), cov2.to_kind(Kind::Double));
    let s1 = sqrtm_psd(&c1);
    let m = s1.matmul(&c2).matmul(&s1);
    let m = (&m + m.tr()) / 2.0;
    let cross = m
        .linalg_eigvalsh("L")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]);
    let d2 = (mu1 - mu2).square().sum(Kind::Double).double_value(&[]);
    let tr = c1.trace().double_value(&[]) + c2.trace().double_value(&[]);
    (d2 + tr - 2.0 * cross).max(0.0)
}

/// Fréchet distance between two feature sets `[N, D]`.
pub fn frechet_distance_of(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (m1, c1) = moments(a)?;
    let (m2, c2) = moments(b)?;
    Ok(frechet_distance(&m1, &c1, &m2, &c2))
}

/// Kernel Inception Distance (Bińkowski et al. 2018): the unbiased estimate of MMD² with the
/// kernel `k(x, y) = (xᵀy/D + 1)³`, averaged over `subsets` random subsets of `subset_size`
/// rows of each set (drawn from `seed`). Returns (mean, standard error of the mean).
pub fn kid(
    a: &Tensor,
    b: &Tensor,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let (na, nb) = (a.size()[0] as usize, b.size()[0] as usize);
    let m = subset_size.min(na).min(nb);
    if m < 2 || subsets == 0 || a.size()[1] != b.size()[1] {
        return Err(Error::invalid(format!(
            "KID needs two [N ≥ 2, D] sets of one width, got {:?} and {:?}",
            a.size(),
            b.size()
        )));
    }
    let d = a.size()[1] as f64;
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let mut rng = Rng::new(seed);
    let mut vals = Vec::with_capacity(subsets);
    let off_diag_mean =
        |k: &Tensor| (k.sum(Kind::Double) - k.trace()).double_value(&[]) / (m * (m - 1)) as f64;
    for _ in 0..subsets {
        let ia: Vec<i64> = rng.permutation(na)[..m].iter().map(|&i| i as i64).collect();
        let ib: Vec<i64> = rng.permutation(nb)[..m].iter().map(|&i| i as i64).collect();
        let x = a.index_select(0, &Tensor::from_slice(&ia).to_device(a.device()));
        let y = b.index_select(0, &Tensor::from_slice(&ib).to_device(b.device()));
        let k = |p: &Tensor, q: &Tensor| (p.matmul(&q.tr()) / d + 1.0).pow_tensor_scalar(3);
        let kxy = k(&x, &y).mean(Kind::Double).double_value(&[]);
        vals.push(off_diag_mean(&k(&x, &x)) + off_diag_mean(&k(&y, &y)) - 2.0 * kxy);
    }
    let n = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / n;
    let var = if vals.len() > 1 {
        vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Ok((mean, (var / n).sqrt()))
}

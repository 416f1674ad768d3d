//! Sample-quality metrics: sliced Wasserstein distance, Fréchet distance, KID, precision and
//! recall; [`fid`] keeps FID statistics in pytorch-fid's `.npz` format.
pub mod fid;

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

/// Squared Euclidean distances `[A, B]` between rows of `a` `[A, D]` and `b` `[B, D]` (float64).
fn sq_dists(a: &Tensor, b: &Tensor) -> Tensor {
    let aa = a
        .square()
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
    let bb = b
        .square()
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
    (aa + bb.tr() - a.matmul(&b.tr()) * 2.0).clamp_min(0.0)
}

/// The squared distance of each row of `x` to its `k`-th nearest other row (the radius of its
/// k-NN ball), computed in blocks of rows.
fn knn_radii(x: &Tensor, k: i64) -> Tensor {
    let n = x.size()[0];
    let parts: Vec<Tensor> = (0..n)
        .step_by(1024)
        .map(|i| {
            let d = sq_dists(&x.narrow(0, i, 1024.min(n - i)), x);
            // the smallest distance is the row to itself (0): take the (k+1)-th smallest
            d.topk(k + 1, 1, false, true).0.select(1, k)
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// The fraction of rows of `query` inside at least one k-NN ball of `support` (centres
/// `support`, squared radii `radii`).
fn coverage(query: &Tensor, support: &Tensor, radii: &Tensor) -> f64 {
    let n = query.size()[0];
    let mut inside = 0i64;
    for i in (0..n).step_by(1024) {
        let d = sq_dists(&query.narrow(0, i, 1024.min(n - i)), support);
        inside += d
            .le_tensor(&radii.unsqueeze(0))
            .any_dim(1, false)
            .to_kind(Kind::Int64)
            .sum(Kind::Int64)
            .int64_value(&[]);
    }
    inside as f64 / n as f64
}

/// Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union
/// of balls around its points reaching their `k`-th nearest neighbour; precision is the
/// fraction of generated points inside the real manifold, recall the fraction of real points
/// inside the generated one. Returns (precision, recall).
pub fn precision_recall(real: &Tensor, generated: &Tensor, k: i64) -> Result<(f64, f64)> {
    let (sr, sg) = (real.size(), generated.size());
    if sr.len() != 2 || sg.len() != 2 || sr[1] != sg[1] || sr[0] <= k || sg[0] <= k || k < 1 {
        return Err(Error::invalid(format!(
            "precision/recall need two [N > k, D] sets of one width and k ≥ 1, got {sr:?}, {sg:?}, k = {k}"
        )));
    }
    let (r, g) = (real.to_kind(Kind::Double), generated.to_kind(Kind::Double));
    let (rr, rg) = (knn_radii(&r, k), knn_radii(&g, k));
    Ok((coverage(&g, &r, &rr), coverage(&r, &g, &rg)))
}

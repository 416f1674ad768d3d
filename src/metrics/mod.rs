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

//! Fréchet Inception Distance statistics: the mean μ and covariance Σ of a set's Inception
//! features, kept in the `.npz` format pytorch-fid, EDM and clean-fid use (arrays `mu` `[D]` and
//! `sigma` `[D, D]`), so reference statistics computed elsewhere can be read and ours used
//! elsewhere.
use crate::util::npz::{self, Array};
use crate::{Error, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// μ `[D]` and Σ `[D, D]` of a feature set (float64, CPU).
#[derive(Debug)]
pub struct FidStats {
    pub mu: Tensor,
    pub sigma: Tensor,
}

impl FidStats {
    /// The statistics of features `[N ≥ 2, D]`: the mean and the unbiased covariance, as
    /// pytorch-fid computes them (`np.mean(axis=0)`, `np.cov(rowvar=False)`).
    pub fn of_features(features: &Tensor) -> Result<FidStats> {
        let (mu, sigma) = super::moments(&features.to_device(Device::Cpu))?;
        let s = FidStats { mu, sigma };
        s.check().map_err(Error::invalid)?;
        Ok(s)
    }

    /// The length D of a feature vector.
    pub fn dim(&self) -> i64 {
        self.mu.size()[0]
    }

    fn check(&self) -> std::result::Result<(), String> {
        let (m, s) = (self.mu.size(), self.sigma.size());
        if m.len() != 1 || s != [m[0], m[0]] {
            return Err(format!(
                "mu {m:?} and sigma {s:?}: expected mu [D] and sigma [D, D]"
            ));
        }
        for (name, t) in [("mu", &self.mu), ("sigma", &self.sigma)] {
            if !bool::try_from(t.isfinite().all()).unwrap_or(false) {
                return Err(format!("{name} holds NaN or infinite values"));
            }
        }
        Ok(())
    }

    /// Reads `mu` and `sigma` from an `.npz` file (other arrays are ignored).
    pub fn read(path: &Path) -> Result<FidStats> {
        let (arrays, names) = npz::read_npz_where(path, |n| n == "mu" || n == "sigma")?;
        let get = |name: &str| -> Result<Tensor> {
            let a = arrays.get(name).ok_or_else(|| {
                Error::file(
                    path,
                    format!("no array {name:?} (has {names:?}); FID statistics need mu and sigma"),
                )
            })?;
            let shape: Vec<i64> = a.shape.iter().map(|&d| d as i64).collect();
            Ok(Tensor::from_slice(&a.data).view(shape.as_slice()))
        };
        let s = FidStats {
            mu: get("mu")?,
            sigma: get("sigma")?,
        };
        s.check().map_err(|m| Error::file(path, m))?;
        s.check_covariance().map_err(|m| Error::file(path, m))?;
        Ok(s)
    }

    /// Relative tolerance of [`FidStats::check_covariance`]: float32 rounding of a covariance
    /// saved in single precision is ~1e-7 of its scale; a Σ that is not a covariance is off by
    /// its own scale.
    pub const COVARIANCE_RTOL: f64 = 1e-6;

    /// Σ must be a covariance: symmetric, max|Σ − Σᵀ| ≤ rtol·max|Σ|, and positive
    /// semi-definite, its least eigenvalue ≥ −rtol·its largest (a covariance of fewer samples
    /// than features is singular, its zero eigenvalues computed as ±rounding). A Σ that is
    /// neither would give a meaningless distance (a negative-definite one gave 0).
    fn check_covariance(&self) -> std::result::Result<(), String> {
        let rtol = Self::COVARIANCE_RTOL;
        let scale = self.sigma.abs().max().double_value(&[]);
        let asym = (&self.sigma - self.sigma.tr())
            .abs()
            .max()
            .double_value(&[]);
        if asym > rtol * scale {
            return Err(format!(
                "sigma is not symmetric: max|Σ − Σᵀ| = {asym:.3e} against max|Σ| = {scale:.3e}"
            ));
        }
        let eig = self.sigma.to_kind(Kind::Double).linalg_eigvalsh("L");
        let (lo, hi) = (eig.min().double_value(&[]), eig.max().double_value(&[]));
        if lo < -rtol * hi.max(0.0) || (hi <= 0.0 && scale > 0.0) {
            return Err(format!(
                "sigma is not positive semi-definite: eigenvalues from {lo:.3e} to {hi:.3e}"
            ));
        }
        Ok(())
    }

    /// Writes `mu` and `sigma` (float64) to an `.npz` file, atomically, as `np.savez` does.
    pub fn write(&self, path: &Path) -> Result<()> {
        let arr = |t: &Tensor| -> Result<Array> {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let data = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1))?;
            Array::new(shape, data).map_err(Error::invalid)
        };
        let (mu, sigma) = (arr(&self.mu)?, arr(&self.sigma)?);
        npz::write_npz(path, &[("mu", &mu), ("sigma", &sigma)])
    }

    /// The Fréchet distance between the two Gaussians ([`super::frechet_distance`]).
    pub fn frechet_distance(&self, other: &FidStats) -> Result<f64> {
        if self.dim() != other.dim() {
            return Err(Error::invalid(format!(
                "FID statistics of {} and {} features cannot be compared",
                self.dim(),
                other.dim()
            )));
        }
        Ok(super::frechet_distance(
            &self.mu,
            &self.sigma,
            &other.mu,
            &other.sigma,
        ))
    }
}

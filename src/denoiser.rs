//! Denoisers: every model is a function `D(z_t, t) → x̂`, the prediction of the clean data.
//!
//! Networks that predict ε or v become denoisers through [`PredictionDenoiser`] (the
//! conversions are [`x_from_eps`] and [`x_from_v`]). [`GaussianDenoiser`] and
//! [`MixtureDenoiser`] are exact posterior means for Gaussian and Gaussian-mixture data: the
//! solvers are tested against them, and the toy sampler uses them.
use crate::schedule::Schedule;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// A denoiser `D(z_t, t, y)`: the prediction of the clean data `x` from the noisy
/// `z_t = α_t x + σ_t ε`, for class labels `y` `[N]` (int64) of a class-conditional model, or
/// unconditionally (the null class of classifier-free guidance) when `labels` is `None`. Labels
/// outside the model's classes, or given to an unconditional model, are an error.
pub trait Denoiser {
    /// `x̂ = D(z_t, t, y)` for a batch `z` at schedule time `t`.
    fn denoise(&self, z: &Tensor, t: f64, labels: Option<&Tensor>) -> Result<Tensor>;

    /// Network evaluations one call of [`Denoiser::denoise`] costs (what solvers count as NFE):
    /// 1, or 2 for classifier-free guidance.
    fn evaluations(&self) -> usize {
        1
    }
}

/// The error of labels given to a denoiser of unconditional data.
pub fn no_labels(labels: Option<&Tensor>) -> Result<()> {
    match labels {
        None => Ok(()),
        Some(_) => Err(Error::invalid(
            "this model is not class-conditional: it takes no labels",
        )),
    }
}

/// Checks class labels `[N]` against `n` rows and `classes` classes (the null class `classes`
/// allowed when `null`).
pub fn check_labels(labels: &Tensor, n: i64, classes: i64, null: bool) -> Result<Tensor> {
    if labels.size() != [n] {
        return Err(Error::invalid(format!(
            "labels of shape {:?} for a batch of {n}",
            labels.size()
        )));
    }
    let y = labels.to_kind(Kind::Int64);
    if n > 0 {
        let (lo, hi) = (y.min().int64_value(&[]), y.max().int64_value(&[]));
        let top = if null { classes } else { classes - 1 };
        if lo < 0 || hi > top {
            return Err(Error::invalid(format!(
                "label {} outside the {classes} classes 0..{}",
                if lo < 0 { lo } else { hi },
                classes - 1
            )));
        }
    }
    Ok(y)
}

/// A denoiser with its labels fixed (`None`: unconditional), for the solvers, which pass none.
pub struct Conditioned<'a> {
    pub inner: &'a dyn Denoiser,
    pub labels: Option<Tensor>,
}

impl Denoiser for Conditioned<'_> {
    fn denoise(&self, z: &Tensor, t: f64, labels: Option<&Tensor>) -> Result<Tensor> {
        self.inner.denoise(z, t, labels.or(self.labels.as_ref()))
    }

    fn evaluations(&self) -> usize {
        self.inner.evaluations()
    }
}

/// Classifier-free guidance (Ho & Salimans 2022) as a [`Denoiser`]:
/// `x̂ = x̂(∅) + w·(x̂(y) − x̂(∅))`, two network evaluations per call. `w = 1` is the conditional
/// denoiser and `w = 0` the unconditional one, each evaluated alone (exactly, in one
/// evaluation); `w > 1` sharpens towards the class.
pub struct Guided<'a> {
    inner: &'a dyn Denoiser,
    labels: Tensor,
    scale: Guidance,
}

/// A classifier-free guidance scale w: finite and at least 0 (1: the conditional model; 0: the
/// unconditional one). Written into files as the plain number.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Guidance(f64);

impl Guidance {
    /// The conditional model, w = 1.
    pub const CONDITIONAL: Guidance = Guidance(1.0);

    /// Checks a scale: finite and at least 0.
    pub fn new(scale: f64) -> Result<Guidance> {
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(Error::invalid(format!(
                "the guidance scale must be finite and at least 0, got {scale}"
            )));
        }
        Ok(Guidance(scale))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Guidance {
    fn default() -> Self {
        Guidance::CONDITIONAL
    }
}

impl TryFrom<f64> for Guidance {
    type Error = Error;
    fn try_from(w: f64) -> Result<Guidance> {
        Guidance::new(w)
    }
}

impl From<Guidance> for f64 {
    fn from(g: Guidance) -> f64 {
        g.0
    }
}

impl std::str::FromStr for Guidance {
    type Err = Error;
    fn from_str(s: &str) -> Result<Guidance> {
        let w: f64 = s
            .trim()
            .parse()
            .map_err(|_| Error::invalid(format!("{s:?} is not a number")))?;
        Guidance::new(w)
    }
}

impl std::fmt::Display for Guidance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'a> Guided<'a> {
    /// Guidance of scale `scale` towards `labels` `[N]`.
    pub fn new(inner: &'a dyn Denoiser, labels: Tensor, scale: Guidance) -> Self {
        Guided {
            inner,
            labels,
            scale,
        }
    }

    /// The guidance scale w.
    pub fn scale(&self) -> Guidance {
        self.scale
    }
}

impl Denoiser for Guided<'_> {
    /// Guidance towards `labels` if given, else towards the labels it was made with.
    fn denoise(&self, z: &Tensor, t: f64, labels: Option<&Tensor>) -> Result<Tensor> {
        let y = labels.unwrap_or(&self.labels);
        let w = self.scale.get();
        if w == 1.0 {
            return self.inner.denoise(z, t, Some(y));
        }
        let uncond = self.inner.denoise(z, t, None)?;
        if w == 0.0 {
            return Ok(uncond);
        }
        let cond = self.inner.denoise(z, t, Some(y))?;
        Ok(&uncond + (cond - &uncond) * w)
    }

    fn evaluations(&self) -> usize {
        let w = self.scale.get();
        if w == 0.0 || w == 1.0 {
            1
        } else {
            2
        }
    }
}

/// A function of (z, t) of unconditional data.
impl<F: Fn(&Tensor, f64) -> Result<Tensor>> Denoiser for F {
    fn denoise(&self, z: &Tensor, t: f64, labels: Option<&Tensor>) -> Result<Tensor> {
        no_labels(labels)?;
        self(z, t)
    }
}

/// What a network's output stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The clean data x (the DSNO teacher).
    #[default]
    X,
    /// The noise ε (DDPM).
    Eps,
    /// The velocity `v = α ε − σ x` (Salimans & Ho 2022).
    V,
    /// Two heads, x and ε (twice the channels, x first), mixed as Progressive Distillation's
    /// ImageNet-64 model does: `x̂ = w·x̂_x + (1 − w)·x̂(ε̂)` with `w = sigmoid(−λ) = σ²/(α² + σ²)`
    /// ([`x_from_both`]).
    Both,
}

/// The "both" parameterisation: `out` `[N, 2C, …]` holds an x head and an ε head;
/// `x̂ = w·x_head + (1 − w)·(z − σ ε_head)/α` with `w = σ²/(α² + σ²)`.
pub fn x_from_both(z: &Tensor, out: &Tensor, alpha: f64, sigma: f64) -> Tensor {
    let c = out.size()[1] / 2;
    let (x, eps) = (out.narrow(1, 0, c), out.narrow(1, c, c));
    let w = sigma * sigma / (alpha * alpha + sigma * sigma);
    x * w + x_from_eps(z, &eps, alpha, sigma) * (1.0 - w)
}

/// `x̂ = (z − σ ε̂) / α`.
pub fn x_from_eps(z: &Tensor, eps: &Tensor, alpha: f64, sigma: f64) -> Tensor {
    (z - eps * sigma) / alpha
}

/// `x̂ = (α z − σ v) / (α² + σ²)` (for VP schedules α² + σ² = 1).
pub fn x_from_v(z: &Tensor, v: &Tensor, alpha: f64, sigma: f64) -> Tensor {
    (z * alpha - v * sigma) / (alpha * alpha + sigma * sigma)
}

/// `ε̂ = (z − α x̂) / σ`.
pub fn eps_from_x(z: &Tensor, x: &Tensor, alpha: f64, sigma: f64) -> Tensor {
    (z - x * alpha) / sigma
}

/// Turns a network `f(z_t, t)` that predicts x, ε or v into a [`Denoiser`].
pub struct PredictionDenoiser<F> {
    pub net: F,
    pub schedule: Schedule,
    pub prediction: Prediction,
}

impl<F: Fn(&Tensor, f64) -> Result<Tensor>> Denoiser for PredictionDenoiser<F> {
    fn denoise(&self, z: &Tensor, t: f64, labels: Option<&Tensor>) -> Result<Tensor> {
        no_labels(labels)?;
        let out = (self.net)(z, t)?;
        let (a, s) = (self.schedule.alpha(t), self.schedule.sigma(t));
        Ok(match self.prediction {
            Prediction::X => out,
            Prediction::Eps => x_from_eps(z, &out, a, s),
            Prediction::V => x_from_v(z, &out, a, s),
            Prediction::Both => x_from_both(z, &out, a, s),
        })
    }
}

/// Exact denoiser for data `N(μ, s² I)`: `D(z, t) = μ + α s²/(α² s² + σ²) · (z − α μ)`.
#[derive(Debug)]
pub struct GaussianDenoiser {
    /// μ, broadcastable against the batch (e.g. shape `[1, D]` or `[]`).
    pub mean: Tensor,
    pub std: f64,
    pub schedule: Schedule,
}

impl GaussianDenoiser {
    /// The exact probability-flow ODE map from `z` at time `t_from` to time `t_to`.
    ///
    /// The marginal of `z_t` is `N(α_t μ, (α_t² s² + σ_t²) I)`, and the PF-ODE keeps the
    /// standardised coordinate `ξ = (z_t − α_t μ)/√(α_t² s² + σ_t²)` constant (the flow of an
    /// isotropic Gaussian is affine), so `z_to = α_to μ + √(α_to² s² + σ_to²) · ξ`. At `t_to = 0`
    /// under VP this is the issue's `x_0 = x_T·s/√(α_T² s² + σ_T²)` for μ = 0.
    pub fn exact_flow(&self, z: &Tensor, t_from: f64, t_to: f64) -> Tensor {
        let sch = &self.schedule;
        let s2 = self.std * self.std;
        let (a0, s0) = (sch.alpha(t_from), sch.sigma(t_from));
        let (a1, s1) = (sch.alpha(t_to), sch.sigma(t_to));
        let scale = ((a1 * a1 * s2 + s1 * s1) / (a0 * a0 * s2 + s0 * s0)).sqrt();
        (z - &self.mean * a0) * scale + &self.mean * a1
    }
}

impl Denoiser for GaussianDenoiser {
    fn denoise(&self, z: &Tensor, t: f64, labels: Option<&Tensor>) -> Result<Tensor> {
        no_labels(labels)?;
        let (a, s) = (self.schedule.alpha(t), self.schedule.sigma(t));
        let s2 = self.std * self.std;
        let gain = a * s2 / (a * a * s2 + s * s);
        Ok((z - &self.mean * a) * gain + &self.mean)
    }
}

/// Exact denoiser for a mixture of isotropic Gaussians `Σ_k π_k N(μ_k, s_k² I)` in `R^D`.
///
/// Given `z`, component k has likelihood `N(z; α μ_k, v_k I)` with `v_k = α² s_k² + σ²`; its
/// responsibility is the softmax over k of `ln π_k − (D/2) ln v_k − ‖z − α μ_k‖²/(2 v_k)`, and
/// `E[x | z, k] = μ_k + (α s_k²/v_k)(z − α μ_k)`. `D(z)` is the responsibility-weighted sum.
#[derive(Debug)]
pub struct MixtureDenoiser {
    /// `[K, D]`.
    pub means: Tensor,
    /// `[K]`: the component standard deviations s_k.
    pub stds: Tensor,
    /// `[K]`: mixture weights (need not be normalised).
    pub weights: Tensor,
    pub schedule: Schedule,
}

impl MixtureDenoiser {
    /// A mixture from plain numbers (float64, CPU).
    pub fn new(
        means: &[Vec<f64>],
        stds: &[f64],
        weights: &[f64],
        schedule: Schedule,
    ) -> Result<Self> {
        let k = means.len();
        if k == 0 || stds.len() != k || weights.len() != k {
            return Err(Error::invalid(format!(
                "mixture: {k} means, {} stds and {} weights (need the same positive count)",
                stds.len(),
                weights.len()
            )));
        }
        let d = means[0].len();
        if means.iter().any(|m| m.len() != d) {
            return Err(Error::invalid("mixture: means of different dimensions"));
        }
        let positive = |v: &f64| v.is_finite() && *v > 0.0;
        if !stds.iter().all(positive) || !weights.iter().all(positive) {
            return Err(Error::invalid("mixture: stds and weights must be positive"));
        }
        let flat: Vec<f64> = means.iter().flatten().copied().collect();
        Ok(MixtureDenoiser {
            means: Tensor::from_slice(&flat).reshape([k as i64, d as i64]),
            stds: Tensor::from_slice(stds),
            weights: Tensor::from_slice(weights),
            schedule,
        })
    }

    /// The classic "8 Gaussians" toy: eight equal components of std `std` evenly spaced on a
    /// circle of radius `radius`.
    pub fn eight_gaussians(radius: f64, std: f64, schedule: Schedule) -> Self {
        let means: Vec<Vec<f64>> = (0..8)
            .map(|i| {
                let a = i as f64 * std::f64::consts::PI / 4.0;
                vec![radius * a.cos(), radius * a.sin()]
            })
            .collect();
        Self::new(&means, &[std; 8], &[1.0; 8], schedule).expect("valid mixture")
    }

    /// Dimension D of the data.
    /// The same mixture with its tensors on `device`.
    pub fn to_device(&self, device: tch::Device) -> Self {
        MixtureDenoiser {
            means: self.means.to_device(device),
            stds: self.stds.to_device(device),
            weights: self.weights.to_device(device),
            schedule: self.schedule,
        }
    }

    pub fn dim(&self) -> i64 {
        self.means.size()[1]
    }

    /// `n` samples of the data distribution, drawn from `rng`.
    pub fn sample(&self, n: usize, rng: &mut crate::rng::Rng) -> Tensor {
        let w: Vec<f64> =
            Vec::<f64>::try_from(&self.weights.to_kind(Kind::Double)).expect("weights");
        let total: f64 = w.iter().sum();
        let d = self.dim() as usize;
        let means: Vec<f64> =
            Vec::<f64>::try_from(&self.means.to_kind(Kind::Double).flatten(0, -1)).expect("means");
        let stds: Vec<f64> = Vec::<f64>::try_from(&self.stds.to_kind(Kind::Double)).expect("stds");
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let mut u = rng.uniform() * total;
            let mut k = 0;
            while k + 1 < w.len() && u >= w[k] {
                u -= w[k];
                k += 1;
            }
            let eps = rng.normals(d);
            out.extend((0..d).map(|j| means[k * d + j] + stds[k] * eps[j]));
        }
        Tensor::from_slice(&out).reshape([n as i64, d as i64])
    }
}

/// The mixture with the component as the class: `D(z, t, k)` is the posterior mean of component
/// k alone (a Gaussian), `D(z, t)` that of the whole mixture.
impl Denoiser for MixtureDenoiser {
    fn denoise(&self, z: &Tensor, t: f64, labels: Option<&Tensor>) -> Result<Tensor> {
        let Some(y) = labels else {
            return self.denoise_mixture(z, t);
        };
        let shape = z.size();
        let n = shape[0];
        let y = check_labels(y, n, self.means.size()[0], false)?;
        let (kind, dev) = (z.kind(), z.device());
        let (a, s) = (self.schedule.alpha(t), self.schedule.sigma(t));
        let y = y.to_device(dev);
        let mu = self.means.to_kind(kind).to_device(dev).index_select(0, &y); // [N, D]
        let s2 = self
            .stds
            .to_kind(kind)
            .to_device(dev)
            .index_select(0, &y)
            .square(); // [N]
        let gain = (&s2 * a / (&s2 * (a * a) + s * s)).unsqueeze(-1);
        let zf = z.reshape([n, -1]);
        let x = &mu + gain * (zf - &mu * a);
        Ok(x.reshape(shape.as_slice()))
    }
}

impl MixtureDenoiser {
    /// The posterior mean of the whole mixture.
    fn denoise_mixture(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        let shape = z.size();
        let n = shape[0];
        let zf = z.reshape([n, -1]);
        let d = zf.size()[1];
        if d != self.dim() {
            return Err(Error::invalid(format!(
                "mixture denoiser of dimension {} got inputs of dimension {d}",
                self.dim()
            )));
        }
        let kind = z.kind();
        let dev = z.device();
        let (a, s) = (self.schedule.alpha(t), self.schedule.sigma(t));
        let means = self.means.to_kind(kind).to_device(dev);
        let s2 = self.stds.to_kind(kind).to_device(dev).square();
        let v = &s2 * (a * a) + s * s; // [K]
        let diff = zf.unsqueeze(1) - (&means * a).unsqueeze(0); // [N, K, D]
        let sq = diff
            .square()
            .sum_dim_intlist([-1i64].as_slice(), false, kind); // [N, K]
        let logits = self.weights.to_kind(kind).to_device(dev).log().unsqueeze(0)
            - (v.log() * (d as f64 / 2.0)).unsqueeze(0)
            - sq / (&v * 2.0).unsqueeze(0);
        let resp = logits.softmax(-1, kind); // [N, K]
        let gain = (&s2 * a / &v).unsqueeze(0).unsqueeze(-1); // [1, K, 1]
        let cond = means.unsqueeze(0) + gain * diff; // [N, K, D]
        let x = (resp.unsqueeze(-1) * cond).sum_dim_intlist([1i64].as_slice(), false, kind);
        Ok(x.reshape(shape.as_slice()))
    }
}

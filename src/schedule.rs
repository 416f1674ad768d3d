//! Noise schedules: the maps between time `t`, log-SNR `λ = ln(α²/σ²)`, `α` and `σ`, for
//! `z_t = α_t·x + σ_t·ε`; time grids for the solvers; and the operator's output-time presets.
//!
//! Three families:
//! - [`Schedule::VpCosine`]: the cosine log-SNR schedule of the DSNO teacher (docs/METHOD.md §2),
//!   `λ(t) = −2 ln tan(a·t + b)`, clipped to `[λ_min, λ_max]` through `a`, `b`. With
//!   `θ = a·t + b` it is exactly `α = cos θ`, `σ = sin θ`.
//! - [`Schedule::VpLinear`]: DDPM's linear β (Ho et al. 2020, β from 1e-4 to 0.02 over 1000
//!   steps) in its continuous-time form `β(t) = β₀ + t(β₁ − β₀)`, β₀ = 0.1, β₁ = 20, t ∈ [0, 1]
//!   (Song et al. 2021): `ln α = −½∫₀ᵗ β`.
//! - [`Schedule::Edm`]: variance-exploding σ of EDM (Karras et al. 2022): `t = σ`, `α = 1`,
//!   with the ρ = 7 step grid.
//! - [`Schedule::Discrete`]: a discrete-time DDPM schedule of diffusers (`num_train_timesteps`
//!   β's, `linear`, `scaled_linear` or `squaredcos_cap_v2`) made continuous: t ∈ [0, 1] maps to
//!   the fractional timestep `τ = N·t − 1`, ln ᾱ is interpolated linearly between the training
//!   timesteps, and τ = −1 (t = 0) is the data itself (ᾱ = 1, as diffusers' `set_alpha_to_one`).
//!   The network is queried at τ (docs/METHOD.md §9).
use crate::error::{check_field, check_range};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// A noise schedule `t ↦ (α_t, σ_t)`. Time runs from the data (`t_min`) to the noise (`t_max`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// Cosine log-SNR: `λ(t) = −2 ln tan(a t + b)`, `b = atan(e^{−λmax/2})`,
    /// `a = atan(e^{−λmin/2}) − b`; t ∈ [0, 1].
    VpCosine { lambda_min: f64, lambda_max: f64 },
    /// Continuous linear β: `β(t) = beta_min + t (beta_max − beta_min)`; t ∈ [0, 1] (λ(0) = +∞).
    VpLinear { beta_min: f64, beta_max: f64 },
    /// EDM: `σ(t) = t`, `α = 1`; t ∈ [0, sigma_max]; `rho` shapes [`Schedule::karras_grid`].
    Edm {
        sigma_min: f64,
        sigma_max: f64,
        rho: f64,
    },
    /// diffusers' discrete schedule of `steps` β's, continuous as described above; t ∈ [0, 1].
    Discrete {
        betas: BetaSchedule,
        beta_start: f64,
        beta_end: f64,
        steps: u32,
    },
}

crate::util::names::named_enum! {
    /// diffusers' `beta_schedule`.
    pub enum BetaSchedule ("beta_schedule") {
        /// β linear from `beta_start` to `beta_end` (DDPM).
        Linear = "linear",
        /// √β linear from √`beta_start` to √`beta_end` (latent diffusion).
        ScaledLinear = "scaled_linear",
        /// β_i = min(1 − ᾱ((i+1)/N)/ᾱ(i/N), 0.999) with ᾱ(s) = cos²((s + 0.008)/1.008 · π/2)
        /// (improved DDPM); `beta_start`, `beta_end` unused.
        SquaredcosCapV2 = "squaredcos_cap_v2",
    }
}

/// diffusers' `torch.linspace(a, b, n, dtype=float32)`.
fn linspace_f32(a: f64, b: f64, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![a as f32];
    }
    let step = (b - a) / (n - 1) as f64;
    (0..n).map(|i| (a + step * i as f64) as f32).collect()
}

/// The β's of a discrete schedule, as diffusers computes them (float32).
pub fn discrete_betas(betas: BetaSchedule, beta_start: f64, beta_end: f64, n: usize) -> Vec<f32> {
    match betas {
        BetaSchedule::Linear => linspace_f32(beta_start, beta_end, n),
        BetaSchedule::ScaledLinear => linspace_f32(beta_start.sqrt(), beta_end.sqrt(), n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        BetaSchedule::SquaredcosCapV2 => {
            let f = |s: f64| {
                ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - f(t2) / f(t1)).min(0.999) as f32
                })
                .collect()
        }
    }
}

/// `ln ᾱ` at the knots τ = −1, 0, …, N − 1 (N + 1 values, the first 0): ᾱ is the running
/// float32 product of `1 − β` as diffusers' `alphas_cumprod`.
pub fn discrete_log_alpha_bars(
    betas: BetaSchedule,
    beta_start: f64,
    beta_end: f64,
    n: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    out.push(0.0);
    let mut acc = 1.0f32;
    for b in discrete_betas(betas, beta_start, beta_end, n) {
        acc *= 1.0 - b;
        out.push((acc as f64).ln());
    }
    out
}

crate::util::names::named_enum! {
    /// The schedules with their default parameters, by name.
    pub enum Preset ("schedule") {
        /// VP, cosine log-SNR in [−20, 20] (the DSNO teacher's).
        VpCosine = "vp-cosine" | "cosine",
        /// VP, linear β (DDPM), continuous.
        VpLinear = "vp-linear" | "linear",
        /// EDM (Karras et al. 2022), σ in [0.002, 80].
        Edm = "edm",
    }
}

impl Default for Schedule {
    /// The DSNO teacher's schedule: cosine log-SNR with λ ∈ [−20, 20].
    fn default() -> Self {
        Schedule::vp_cosine()
    }
}

/// `ln(1 + e^x)` without overflow.
fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x + (-x).exp()
    } else {
        x.exp().ln_1p()
    }
}

impl Schedule {
    /// The DSNO teacher's schedule (docs/METHOD.md §2): λ ∈ [−20, 20].
    pub fn vp_cosine() -> Self {
        Schedule::VpCosine {
            lambda_min: -20.0,
            lambda_max: 20.0,
        }
    }
    /// DDPM's linear β (1e-4 … 0.02 over 1000 steps) in continuous time.
    pub fn vp_linear() -> Self {
        Schedule::VpLinear {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }
    /// EDM's σ ∈ [0.002, 80] with ρ = 7.
    pub fn edm() -> Self {
        Schedule::Edm {
            sigma_min: 0.002,
            sigma_max: 80.0,
            rho: 7.0,
        }
    }

    /// Checks the parameters against their ranges (docs/FORMATS.md §10).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::Discrete {
                betas,
                beta_start,
                beta_end,
                steps,
            } => {
                check_field(
                    "schedule.steps",
                    steps,
                    (2..=100_000).contains(&steps),
                    "in [2, 100000]",
                )?;
                if betas != BetaSchedule::SquaredcosCapV2 {
                    check_field(
                        "schedule.beta_start",
                        beta_start,
                        beta_start > 0.0 && beta_start < 1.0,
                        "in (0, 1)",
                    )?;
                    check_field(
                        "schedule.beta_end",
                        beta_end,
                        beta_end >= beta_start && beta_end < 1.0,
                        "in [beta_start, 1)",
                    )?;
                }
                let l = self.discrete_knots();
                let ok = l.windows(2).all(|w| w[1] < w[0]) && l.iter().all(|v| v.is_finite());
                check_field(
                    "schedule.betas",
                    0,
                    ok,
                    "giving a strictly decreasing ᾱ > 0",
                )
            }
            Schedule::VpCosine {
                lambda_min,
                lambda_max,
            } => {
                check_range("schedule.lambda_min", lambda_min, -50.0, 50.0)?;
                check_range("schedule.lambda_max", lambda_max, -50.0, 50.0)?;
                check_field(
                    "schedule.lambda_max",
                    lambda_max,
                    lambda_max > lambda_min,
                    "above lambda_min",
                )
            }
            Schedule::VpLinear { beta_min, beta_max } => {
                check_field(
                    "schedule.beta_min",
                    beta_min,
                    beta_min > 0.0 && beta_min <= 100.0,
                    "in (0, 100]",
                )?;
                check_field(
                    "schedule.beta_max",
                    beta_max,
                    beta_max > beta_min && beta_max <= 100.0,
                    "in (beta_min, 100]",
                )
            }
            Schedule::Edm {
                sigma_min,
                sigma_max,
                rho,
            } => {
                check_field(
                    "schedule.sigma_min",
                    sigma_min,
                    sigma_min > 0.0 && sigma_min <= 1e4,
                    "in (0, 1e4]",
                )?;
                check_field(
                    "schedule.sigma_max",
                    sigma_max,
                    sigma_max > sigma_min && sigma_max <= 1e4,
                    "in (sigma_min, 1e4]",
                )?;
                check_field(
                    "schedule.rho",
                    rho,
                    rho > 0.0 && rho <= 100.0,
                    "in (0, 100]",
                )
            }
        }
    }

    /// The schedule of a preset.
    pub fn preset(p: Preset) -> Self {
        match p {
            Preset::VpCosine => Self::vp_cosine(),
            Preset::VpLinear => Self::vp_linear(),
            Preset::Edm => Self::edm(),
        }
    }

    /// Parses `vp-cosine`, `vp-linear` or `edm` (default parameters; [`Preset::from_name`]).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(Self::preset(Preset::from_name(name)?))
    }

    /// `ln ᾱ` at the knots of a discrete schedule (empty for the others), computed once per
    /// schedule: the last few schedules' knots are kept (a solve asks for them at every step).
    fn discrete_knots(&self) -> std::sync::Arc<Vec<f64>> {
        use std::sync::{Arc, Mutex};
        type Key = (BetaSchedule, u64, u64, u32);
        static KEPT: Mutex<Vec<(Key, Arc<Vec<f64>>)>> = Mutex::new(Vec::new());
        let Schedule::Discrete {
            betas,
            beta_start,
            beta_end,
            steps,
        } = *self
        else {
            return Arc::new(vec![]);
        };
        let key = (betas, beta_start.to_bits(), beta_end.to_bits(), steps);
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, l)) = kept.iter().find(|(k, _)| *k == key) {
            return l.clone();
        }
        let l = Arc::new(discrete_log_alpha_bars(
            betas,
            beta_start,
            beta_end,
            steps as usize,
        ));
        if kept.len() >= 4 {
            kept.remove(0);
        }
        kept.push((key, l.clone()));
        l
    }

    /// `(ln ᾱ(t), d ln ᾱ/dt)` of a discrete schedule: linear between the knots t_k = k/N.
    fn discrete_log_alpha_bar(&self, t: f64) -> (f64, f64) {
        let l = self.discrete_knots();
        let n = (l.len() - 1) as f64;
        let x = (t * n).clamp(0.0, n);
        let k = (x.floor() as usize).min(l.len() - 2);
        let slope = l[k + 1] - l[k];
        (l[k] + (x - k as f64) * slope, n * slope)
    }

    /// `(a, b)` of this schedule if it is the cosine one (NaN otherwise).
    fn cosine_coefficients(&self) -> (f64, f64) {
        match *self {
            Schedule::VpCosine {
                lambda_min,
                lambda_max,
            } => Self::cosine_ab(lambda_min, lambda_max),
            _ => (f64::NAN, f64::NAN),
        }
    }

    /// `(a, b)` of the cosine schedule: `θ(t) = a t + b`.
    fn cosine_ab(lambda_min: f64, lambda_max: f64) -> (f64, f64) {
        let b = (-lambda_max / 2.0).exp().atan();
        let a = (-lambda_min / 2.0).exp().atan() - b;
        (a, b)
    }

    /// `ln α²` for the linear-β schedule: `−(β₀ t + ½(β₁ − β₀) t²)`.
    fn linear_log_alpha2(beta_min: f64, beta_max: f64, t: f64) -> f64 {
        -(beta_min * t + 0.5 * (beta_max - beta_min) * t * t)
    }

    /// The time interval `(t_min, t_max)`: data at `t_min`, noise at `t_max`.
    pub fn t_range(&self) -> (f64, f64) {
        match *self {
            Schedule::VpCosine { .. } | Schedule::VpLinear { .. } | Schedule::Discrete { .. } => {
                (0.0, 1.0)
            }
            Schedule::Edm { sigma_max, .. } => (0.0, sigma_max),
        }
    }

    /// The smallest time at which λ is finite: 0 for the cosine schedule (λ(0) = λ_max), 1e-3
    /// for the linear one (its usual ODE cut-off), σ_min for EDM.
    pub fn t_min_finite(&self) -> f64 {
        match *self {
            Schedule::VpCosine { .. } => 0.0,
            Schedule::VpLinear { .. } => 1e-3,
            Schedule::Edm { sigma_min, .. } => sigma_min,
            // τ = 0, the first training timestep
            Schedule::Discrete { steps, .. } => 1.0 / steps as f64,
        }
    }

    /// Whether `z_t` keeps unit variance for unit-variance data (α² + σ² = 1).
    pub fn is_variance_preserving(&self) -> bool {
        !matches!(self, Schedule::Edm { .. })
    }

    /// Log-SNR `λ(t) = ln(α²/σ²)`; `+∞` where σ = 0.
    pub fn lambda(&self, t: f64) -> f64 {
        match *self {
            Schedule::VpCosine { .. } => {
                let (a, b) = self.cosine_coefficients();
                -2.0 * (a * t + b).tan().ln()
            }
            Schedule::VpLinear { beta_min, beta_max } => {
                let g = Self::linear_log_alpha2(beta_min, beta_max, t);
                // λ = ln α² − ln σ² = g − ln(1 − e^g)
                g - (-g.exp_m1()).ln()
            }
            Schedule::Edm { .. } => -2.0 * t.ln(),
            Schedule::Discrete { .. } => {
                let g = self.discrete_log_alpha_bar(t).0;
                g - (-g.exp_m1()).ln()
            }
        }
    }

    /// `dλ/dt`.
    pub fn dlambda_dt(&self, t: f64) -> f64 {
        match *self {
            Schedule::VpCosine { .. } => {
                let (a, b) = self.cosine_coefficients();
                let th = a * t + b;
                -2.0 * a / (th.sin() * th.cos())
            }
            Schedule::VpLinear { beta_min, beta_max } => {
                let beta = beta_min + t * (beta_max - beta_min);
                let s2 = -Self::linear_log_alpha2(beta_min, beta_max, t).exp_m1();
                -beta / s2
            }
            Schedule::Edm { .. } => -2.0 / t,
            Schedule::Discrete { .. } => {
                let (g, dg) = self.discrete_log_alpha_bar(t);
                dg / -g.exp_m1()
            }
        }
    }

    /// The time at which the log-SNR is `lambda` (inverse of [`Schedule::lambda`]).
    pub fn t_of_lambda(&self, lambda: f64) -> f64 {
        match *self {
            Schedule::VpCosine { .. } => {
                let (a, b) = self.cosine_coefficients();
                ((-lambda / 2.0).exp().atan() - b) / a
            }
            Schedule::VpLinear { beta_min, beta_max } => {
                // ln α² = ln sigmoid(λ) = −softplus(−λ); solve ½Δ t² + β₀ t + (−g) = 0.
                let g = -softplus(-lambda);
                let d = beta_max - beta_min;
                if d.abs() < 1e-12 {
                    return -g / beta_min;
                }
                let disc = beta_min * beta_min - 2.0 * d * g;
                // (−β₀ + √disc)/Δ, written without cancellation
                (-2.0 * g) / (beta_min + disc.sqrt())
            }
            Schedule::Edm { .. } => (-lambda / 2.0).exp(),
            Schedule::Discrete { .. } => {
                let g = -softplus(-lambda);
                let l = self.discrete_knots();
                let n = (l.len() - 1) as f64;
                // ln ᾱ decreases along the knots: the last knot at or above g
                let k = l.partition_point(|&v| v >= g).clamp(1, l.len() - 1) - 1;
                let frac = ((g - l[k]) / (l[k + 1] - l[k])).clamp(0.0, 1.0);
                (k as f64 + frac) / n
            }
        }
    }

    /// `(α_t, σ_t)`.
    pub fn alpha_sigma(&self, t: f64) -> (f64, f64) {
        match *self {
            Schedule::VpCosine { .. } => {
                let (a, b) = self.cosine_coefficients();
                ((a * t + b).cos(), (a * t + b).sin())
            }
            Schedule::VpLinear { beta_min, beta_max } => {
                let l = Self::linear_log_alpha2(beta_min, beta_max, t);
                ((0.5 * l).exp(), (-l.exp_m1()).sqrt())
            }
            Schedule::Edm { .. } => (1.0, t),
            Schedule::Discrete { .. } => {
                let g = self.discrete_log_alpha_bar(t).0;
                ((0.5 * g).exp(), (-g.exp_m1()).sqrt())
            }
        }
    }

    /// `α_t`.
    pub fn alpha(&self, t: f64) -> f64 {
        self.alpha_sigma(t).0
    }

    /// `σ_t`.
    pub fn sigma(&self, t: f64) -> f64 {
        self.alpha_sigma(t).1
    }

    /// `d ln α / dt` (zero for EDM).
    pub fn dlog_alpha_dt(&self, t: f64) -> f64 {
        match *self {
            // ln α = ½ ln sigmoid(λ) ⇒ d ln α/dλ = ½ σ²
            Schedule::VpCosine { .. } => 0.5 * self.sigma(t).powi(2) * self.dlambda_dt(t),
            Schedule::VpLinear { beta_min, beta_max } => {
                -0.5 * (beta_min + t * (beta_max - beta_min))
            }
            Schedule::Edm { .. } => 0.0,
            Schedule::Discrete { .. } => 0.5 * self.discrete_log_alpha_bar(t).1,
        }
    }

    /// The network's time input: for the continuous schedules docs/METHOD.md §2's
    /// `t_in = atan(e^{−λ/2}) / (π/2)` ∈ [0, 1]; for a discrete one the fractional timestep
    /// `τ = N·t − 1` ∈ [−1, N − 1].
    pub fn t_input(&self, t: f64) -> f64 {
        match *self {
            Schedule::Discrete { steps, .. } => steps as f64 * t - 1.0,
            _ => (-self.lambda(t) / 2.0).exp().atan() / std::f64::consts::FRAC_PI_2,
        }
    }

    /// The time of the discrete schedule's timestep `τ` (`(τ + 1)/N`); `None` for the others.
    pub fn t_of_timestep(&self, tau: f64) -> Option<f64> {
        match *self {
            Schedule::Discrete { steps, .. } => Some((tau + 1.0) / steps as f64),
            _ => None,
        }
    }

    /// `n + 1` times uniform in t from `t_start` down to `t_end` (n steps).
    pub fn uniform_grid(t_start: f64, t_end: f64, n: usize) -> Vec<f64> {
        (0..=n)
            .map(|i| t_start + (t_end - t_start) * i as f64 / n as f64)
            .collect()
    }

    /// `n + 1` times uniform in log-SNR λ from `t_start` to `t_end` (needs finite λ at both ends).
    pub fn lambda_grid(&self, t_start: f64, t_end: f64, n: usize) -> Vec<f64> {
        let (l0, l1) = (self.lambda(t_start), self.lambda(t_end));
        let mut g: Vec<f64> = (0..=n)
            .map(|i| self.t_of_lambda(l0 + (l1 - l0) * i as f64 / n as f64))
            .collect();
        g[0] = t_start;
        g[n] = t_end;
        g
    }

    /// `n + 1` times from `t_start` down to `t_end`, dense near `t_end`: `t_i = t_end + (t_start −
    /// t_end)·((n − i)/n)²` (the "time_quadratic" spacing of DPM-Solver).
    pub fn quadratic_grid(t_start: f64, t_end: f64, n: usize) -> Vec<f64> {
        (0..=n)
            .map(|i| t_end + (t_start - t_end) * ((n - i) as f64 / n as f64).powi(2))
            .collect()
    }

    /// The step grid of EDM (Karras et al. 2022, eq. 5): `n` times from σ_max to σ_min spaced
    /// uniformly in `σ^{1/ρ}`, then `0` appended (n steps in all). Times are σ values, as
    /// [`Schedule::Edm`] uses them.
    pub fn karras_grid(sigma_min: f64, sigma_max: f64, rho: f64, n: usize) -> Vec<f64> {
        assert!(n >= 1);
        let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
        let mut g: Vec<f64> = if n == 1 {
            vec![sigma_max]
        } else {
            (0..n)
                .map(|i| (a + (b - a) * i as f64 / (n - 1) as f64).powf(rho))
                .collect()
        };
        g.push(0.0);
        g
    }

    /// The natural `n`-step grid of this schedule: uniform in t for the VP schedules (as the
    /// DSNO authors' DDIM), the ρ = 7 grid for EDM.
    pub fn default_grid(&self, n: usize) -> Vec<f64> {
        match *self {
            Schedule::VpCosine { .. } | Schedule::VpLinear { .. } | Schedule::Discrete { .. } => {
                Self::uniform_grid(1.0, 0.0, n)
            }
            Schedule::Edm {
                sigma_min,
                sigma_max,
                rho,
            } => Self::karras_grid(sigma_min, sigma_max, rho, n),
        }
    }
}

/// The discrete DDPM schedule: `ᾱ_n = Π_{i≤n}(1 − β_i)`, β linear from `beta_1` to `beta_N`
/// over `steps` steps (Ho et al. 2020: 1e-4, 0.02, 1000). Returns `ᾱ_1 … ᾱ_N`.
pub fn ddpm_alpha_bars(beta_1: f64, beta_n: f64, steps: usize) -> Vec<f64> {
    let mut acc = 1.0;
    (0..steps)
        .map(|i| {
            let beta = beta_1 + (beta_n - beta_1) * i as f64 / (steps - 1) as f64;
            acc *= 1.0 - beta;
            acc
        })
        .collect()
}

/// The most output times an operator may have.
pub const MAX_OUTPUT_TIMES: usize = 64;

/// Checks a list of output times: 1 to [`MAX_OUTPUT_TIMES`] of them, in [0, 1], strictly
/// decreasing; `what` names the list in the error.
pub fn check_output_times(what: &str, times: &[f64]) -> Result<()> {
    let n = times.len();
    if n == 0 || n > MAX_OUTPUT_TIMES {
        return Err(Error::invalid(format!(
            "{what}: {n} times, must be 1 to {MAX_OUTPUT_TIMES}"
        )));
    }
    if let Some(t) = times.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(Error::invalid(format!(
            "{what}: {t} is outside [0, 1]; every time must lie in [0, 1]"
        )));
    }
    if let Some(w) = times.windows(2).find(|w| w[1] >= w[0]) {
        return Err(Error::invalid(format!(
            "{what}: must be strictly decreasing ({} then {})",
            w[0], w[1]
        )));
    }
    Ok(())
}

/// An operator's output times t_1 > … > t_M in [0, 1], 1 ≤ M ≤ [`MAX_OUTPUT_TIMES`]: checked once,
/// where they are made or read (configs, manifests, checkpoints, `--times`), and trusted after.
/// Written into files as the plain list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f64>", into = "Vec<f64>")]
pub struct OutputTimes(Vec<f64>);

impl OutputTimes {
    /// Checks `times` ([`check_output_times`]).
    pub fn new(times: Vec<f64>) -> Result<Self> {
        check_output_times("output times", &times)?;
        Ok(OutputTimes(times))
    }

    /// The sample's time, the last.
    pub fn last_time(&self) -> f64 {
        self.0[self.0.len() - 1]
    }
}

impl std::ops::Deref for OutputTimes {
    type Target = [f64];
    fn deref(&self) -> &[f64] {
        &self.0
    }
}

impl Default for OutputTimes {
    /// `quad:4`: 0.5625, 0.25, 0.0625, 0 (the authors' CIFAR-10 choice).
    fn default() -> Self {
        OutputTimes(vec![0.5625, 0.25, 0.0625, 0.0])
    }
}

impl<'a> IntoIterator for &'a OutputTimes {
    type Item = &'a f64;
    type IntoIter = std::slice::Iter<'a, f64>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl TryFrom<Vec<f64>> for OutputTimes {
    type Error = Error;
    fn try_from(v: Vec<f64>) -> Result<Self> {
        OutputTimes::new(v)
    }
}

impl From<OutputTimes> for Vec<f64> {
    fn from(t: OutputTimes) -> Vec<f64> {
        t.0
    }
}

/// Parses the operator's output times: `quad:M` (`t_m = ((M − m)/M)²`, the authors' CIFAR-10
/// choice: 0.5625, 0.25, 0.0625, 0 for M = 4), `uniform:M` (`t_m = (M − m)/M`, the ImageNet-64
/// choice), or an explicit comma-separated list (strictly decreasing, in [0, 1]).
pub fn parse_output_times(spec: &str) -> Result<OutputTimes> {
    let spec = spec.trim();
    let preset = |name: &str, rest: &str| -> Result<usize> {
        let m: usize = rest.parse().map_err(|_| {
            Error::invalid(format!(
                "output times `{spec}`: `{name}:M` needs an integer M ≥ 1"
            ))
        })?;
        if m == 0 || m > MAX_OUTPUT_TIMES {
            return Err(Error::invalid(format!(
                "output times `{spec}`: M must be in [1, {MAX_OUTPUT_TIMES}]"
            )));
        }
        Ok(m)
    };
    let times: Vec<f64> = if let Some(rest) = spec.strip_prefix("quad:") {
        let m = preset("quad", rest)?;
        (1..=m)
            .map(|i| ((m - i) as f64 / m as f64).powi(2))
            .collect()
    } else if let Some(rest) = spec.strip_prefix("uniform:") {
        let m = preset("uniform", rest)?;
        (1..=m).map(|i| (m - i) as f64 / m as f64).collect()
    } else {
        spec.split(',')
            .map(|s| {
                s.trim().parse::<f64>().map_err(|_| {
                    Error::invalid(format!(
                        "output times `{spec}`: `{s}` is not a number (expected quad:M, uniform:M or a list like 0.75,0.5,0)"
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    check_output_times(&format!("output times `{spec}`"), &times)?;
    Ok(OutputTimes(times))
}

/// A grid of `n_steps` steps from `t_start` down to the last output time that passes through
/// every output time: each segment between consecutive stops gets a number of uniform steps
/// proportional to its length (at least one), so that the output times lie exactly on the grid.
pub fn grid_through(t_start: f64, outputs: &[f64], n_steps: usize) -> Result<Vec<f64>> {
    let mut stops = vec![t_start];
    stops.extend(outputs.iter().copied().filter(|&t| t < t_start));
    let segs = stops.len() - 1;
    if segs == 0 || n_steps < segs {
        return Err(Error::invalid(format!(
            "a grid through {segs} output time(s) needs at least {segs} steps, got {n_steps}"
        )));
    }
    let total = t_start - stops[segs];
    // Largest-remainder apportionment of n_steps over the segments, one step minimum each.
    let exact: Vec<f64> = (0..segs)
        .map(|i| (stops[i] - stops[i + 1]) / total * n_steps as f64)
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| (e.floor() as usize).max(1)).collect();
    while counts.iter().sum::<usize>() > n_steps {
        let i = (0..segs).filter(|&i| counts[i] > 1).max_by(|&a, &b| {
            (counts[a] as f64 - exact[a]).total_cmp(&(counts[b] as f64 - exact[b]))
        });
        counts[i.expect("n_steps >= segs")] -= 1;
    }
    while counts.iter().sum::<usize>() < n_steps {
        let i = (0..segs)
            .max_by(|&a, &b| {
                (exact[a] - counts[a] as f64).total_cmp(&(exact[b] - counts[b] as f64))
            })
            .unwrap();
        counts[i] += 1;
    }
    let mut grid = vec![t_start];
    for i in 0..segs {
        let seg = Schedule::uniform_grid(stops[i], stops[i + 1], counts[i]);
        grid.extend_from_slice(&seg[1..]);
    }
    Ok(grid)
}

//! Deterministic probability-flow ODE solvers.
//!
//! Each solver is a function of (denoiser, schedule, x_T, time grid, output times) that walks
//! the grid `t_0 > t_1 > … > t_N` and returns a [`Trajectory`]: the state `z` and the data
//! prediction `x̂` at every requested output time, plus the number of denoiser evaluations.
//!
//! The x̂ recorded at an output time `s` is the prediction made by the step that lands on `s`
//! (docs/METHOD.md §4: the x̂ of the step that lands on s is the target for s):
//! - DDIM, DPM-Solver++(2M): the data prediction the step used (for 2M, its multistep
//!   combination `D_i`);
//! - Euler, Heun: their steps are not written through one prediction; we record the prediction
//!   that a DDIM step from the same start would need to land on the same point,
//!   `x̂ = (z_s − (σ_s/σ_t) z_t) / (α_s (1 − e^{−h}))`, `h = ln(α_s/σ_s) − ln(α_t/σ_t)`, which is `D(z_t, t)` for
//!   an Euler step as h → 0 and `z_s/α_s` where σ_s = 0.
//!
//! Euler and Heun integrate `dz/dt = (d ln α/dt) z − ½ λ'(t)(z − α D(z, t))` in the schedule's
//! own time t: the general form of EDM's Algorithm 1 (Karras et al. 2022) with `s(t) = α_t`.
//! (Euler in `σ/α` instead would coincide with DDIM; for EDM, where α = 1 and t = σ, it does.)
use crate::denoiser::Denoiser;
use crate::schedule::Schedule;
use crate::{Error, Result};
use std::cell::Cell;
use tch::{Kind, Tensor};

/// The most steps of one solve (a converged solve of a good teacher takes 10–1,000).
pub const MAX_STEPS: usize = 100_000;

/// Checks a number of solver steps against `1..=MAX_STEPS`, before any grid is allocated.
pub fn check_steps(what: &str, steps: usize) -> Result<()> {
    crate::error::check_range(what, steps, 1, MAX_STEPS)
}

crate::util::names::named_enum! {
    /// The ODE solvers.
    pub enum Solver ("solver") {
        /// DDIM (Song et al. 2021), first order: the exponential integrator for x-prediction.
        Ddim = "ddim",
        /// Explicit Euler on the PF-ODE in the schedule's time, first order.
        Euler = "euler",
        /// Heun's method, EDM Algorithm 1 (Karras et al. 2022), second order; Euler for a final
        /// step onto the data end (σ = 0 or t = 0).
        Heun = "heun",
        /// DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), second-order multistep in log-SNR.
        DpmSolver2M = "dpmpp2m" | "dpm-solver++" | "dpmsolver++" | "dpm++2m",
    }
}

impl Solver {
    /// The name in reports: `DDIM`, `Euler`, `Heun`, `DPM-Solver++(2M)`.
    pub fn label(&self) -> &'static str {
        match self {
            Solver::Ddim => "DDIM",
            Solver::Euler => "Euler",
            Solver::Heun => "Heun",
            Solver::DpmSolver2M => "DPM-Solver++(2M)",
        }
    }

    /// The global order of accuracy.
    pub fn order(&self) -> u32 {
        match self {
            Solver::Ddim | Solver::Euler => 1,
            Solver::Heun | Solver::DpmSolver2M => 2,
        }
    }

    /// The recommended `n`-step grid of this solver on `schedule`.
    ///
    /// DPM-Solver++ steps in log-SNR, and its multistep extrapolation suffers where consecutive
    /// steps differ much in λ: a uniform-t grid on the cosine schedule ends with one step from
    /// λ ≈ 7 to 20. It gets the spacings of the DPM-Solver code, from `t_max` to the smallest
    /// time where λ is finite ([`Schedule::t_min_finite`]): quadratic in t ("time_quadratic")
    /// on the cosine schedule, whose λ ∈ [−20, 20] a uniform-λ grid would spend half on
    /// |λ| > 10; uniform in log-SNR ("logSNR") on the others. (Measured on Gaussian data at 50
    /// steps, `tests/library/solvers.rs`: 3e-4 relative endpoint error on the cosine schedule against
    /// 8e-3 uniform in λ and 4e-2 uniform in t.) The others get [`Schedule::default_grid`]:
    /// uniform in t for VP (the DSNO authors' DDIM), the ρ = 7 grid down to σ = 0 for EDM.
    pub fn default_grid(&self, schedule: &Schedule, n: usize) -> Vec<f64> {
        let (t0, t1) = (schedule.t_range().1, schedule.t_min_finite());
        match (self, schedule) {
            (Solver::DpmSolver2M, Schedule::VpCosine { .. }) => Schedule::quadratic_grid(t0, t1, n),
            (Solver::DpmSolver2M, _) => schedule.lambda_grid(t0, t1, n),
            _ => schedule.default_grid(n),
        }
    }
}

crate::util::names::named_enum! {
    /// Step-grid spacings from `t_max` to the schedule's smallest finite time
    /// ([`Schedule::t_min_finite`]), for choosing a solver's grid by hand.
    pub enum Grid ("step grid") {
        /// The solver's recommended grid ([`Solver::default_grid`]).
        Default = "default",
        /// Uniform in t (in σ for EDM).
        Uniform = "uniform",
        /// Quadratic in t, dense at the data end (DPM-Solver's "time_quadratic").
        Quadratic = "quadratic",
        /// Uniform in log-SNR λ (DPM-Solver's "logSNR").
        LogSnr = "logsnr" | "lambda",
    }
}

impl Grid {
    /// The `n`-step grid of `solver` on `schedule` with this spacing.
    pub fn make(&self, solver: Solver, schedule: &Schedule, n: usize) -> Vec<f64> {
        let (t0, t1) = (schedule.t_range().1, schedule.t_min_finite());
        match self {
            Grid::Default => solver.default_grid(schedule, n),
            Grid::Uniform => Schedule::uniform_grid(t0, t1, n),
            Grid::Quadratic => Schedule::quadratic_grid(t0, t1, n),
            Grid::LogSnr => schedule.lambda_grid(t0, t1, n),
        }
    }
}

/// A solved trajectory.
#[derive(Debug)]
pub struct Trajectory {
    /// The output times, as requested.
    pub times: Vec<f64>,
    /// The state `z` at each output time.
    pub z: Vec<Tensor>,
    /// The data prediction `x̂` at each output time (see the module docs).
    pub x_hat: Vec<Tensor>,
    /// The state at the end of the grid.
    pub end: Tensor,
    /// Network evaluations used (a guided denoiser's call counts 2).
    pub nfe: usize,
}

impl Solver {
    /// Solves the PF-ODE from `x_t` (at `grid[0]`) along `grid`, recording the output times `record`.
    ///
    /// Errors (no panic) if the grid is not strictly decreasing and finite inside the schedule's
    /// time range, if an output time is not a grid point after the start, or if `x_t` holds NaN/∞.
    pub fn solve(
        &self,
        denoiser: &dyn Denoiser,
        schedule: &Schedule,
        x_t: &Tensor,
        grid: &[f64],
        record: &[f64],
    ) -> Result<Trajectory> {
        let solver = *self;
        let slots = validate(schedule, x_t, grid, record)?;
        let counting = Counting {
            inner: denoiser,
            calls: Cell::new(0),
        };
        let mut rec = Recorder {
            slots,
            z: (0..record.len()).map(|_| None).collect(),
            x: (0..record.len()).map(|_| None).collect(),
        };
        let c = Solve {
            denoiser: counting,
            schedule,
            grid,
        };
        let end = match solver {
            Solver::Ddim => ddim(&c, x_t, &mut rec)?,
            Solver::Euler => euler_or_heun(&c, x_t, &mut rec, false)?,
            Solver::Heun => euler_or_heun(&c, x_t, &mut rec, true)?,
            Solver::DpmSolver2M => dpm_solver_2m(&c, x_t, &mut rec)?,
        };
        let counting = c.denoiser;
        let z = rec
            .z
            .into_iter()
            .map(|t| t.expect("every slot recorded"))
            .collect();
        let x_hat = rec
            .x
            .into_iter()
            .map(|t| t.expect("every slot recorded"))
            .collect();
        Ok(Trajectory {
            times: record.to_vec(),
            z,
            x_hat,
            end,
            nfe: counting.calls.get(),
        })
    }
}

/// Counts the denoiser calls.
struct Counting<'a> {
    inner: &'a dyn Denoiser,
    calls: Cell<usize>,
}

impl Counting<'_> {
    fn d(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        self.calls.set(self.calls.get() + self.inner.evaluations());
        self.inner.denoise(z, t, None)
    }
}

/// Stores z and x̂ of the steps that land on output times.
struct Recorder {
    /// For each output slot, the index of its grid point.
    slots: Vec<usize>,
    z: Vec<Option<Tensor>>,
    x: Vec<Option<Tensor>>,
}

impl Recorder {
    /// Called by every step that lands on grid point `i` with the new state and its prediction.
    fn land(&mut self, i: usize, z: &Tensor, x_hat: &Tensor) {
        for (k, &slot) in self.slots.iter().enumerate() {
            if slot == i {
                self.z[k] = Some(z.shallow_clone());
                self.x[k] = Some(x_hat.shallow_clone());
            }
        }
    }
}

fn validate(schedule: &Schedule, x_t: &Tensor, grid: &[f64], record: &[f64]) -> Result<Vec<usize>> {
    check_steps("the time grid's steps", grid.len().saturating_sub(1))?;
    if grid.len() < 2 {
        return Err(Error::invalid(format!(
            "time grid needs at least 2 points, got {}",
            grid.len()
        )));
    }
    if let Some(t) = grid.iter().find(|t| !t.is_finite()) {
        return Err(Error::invalid(format!(
            "time grid holds a non-finite time {t}"
        )));
    }
    for (i, w) in grid.windows(2).enumerate() {
        if w[1] >= w[0] {
            return Err(Error::invalid(format!(
                "time grid must be strictly decreasing: t[{i}] = {} is followed by t[{}] = {}",
                w[0],
                i + 1,
                w[1]
            )));
        }
    }
    let (lo, hi) = schedule.t_range();
    let tol = 1e-12 * hi.abs().max(1.0);
    if grid[0] > hi + tol || grid[grid.len() - 1] < lo - tol {
        return Err(Error::invalid(format!(
            "time grid [{}, {}] leaves the schedule's range [{lo}, {hi}]",
            grid[grid.len() - 1],
            grid[0]
        )));
    }
    if schedule.sigma(grid[0]).partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Err(Error::invalid(format!(
            "time grid starts at t = {} where σ = 0",
            grid[0]
        )));
    }
    let mut slots = Vec::with_capacity(record.len());
    for &t in record {
        let tol = 1e-9 * t.abs().max(1.0);
        match grid.iter().position(|&g| (g - t).abs() <= tol) {
            Some(0) => {
                return Err(Error::invalid(format!(
                    "output time {t} is the start of the grid: no step lands there"
                )))
            }
            Some(i) if slots.contains(&i) => {
                return Err(Error::invalid(format!(
                    "output time {t} is requested twice"
                )))
            }
            Some(i) => slots.push(i),
            None => {
                return Err(Error::invalid(format!(
                    "output time {t} is not on the time grid ({} points from {} to {})",
                    grid.len(),
                    grid[0],
                    grid[grid.len() - 1]
                )))
            }
        }
    }
    let finite = x_t.isfinite().all().to_kind(Kind::Int64).int64_value(&[]) != 0;
    if !finite {
        return Err(Error::invalid("x_T holds NaN or infinite values"));
    }
    Ok(slots)
}

/// What every solver loop works with: the counting denoiser, the schedule and the step grid.
struct Solve<'a> {
    denoiser: Counting<'a>,
    schedule: &'a Schedule,
    grid: &'a [f64],
}

/// DDIM step `t → s`: `x̂ = D(z_t, t)`, `ε̂ = (z_t − α_t x̂)/σ_t`, `z_s = α_s x̂ + σ_s ε̂`.
fn ddim(c: &Solve, x_t: &Tensor, rec: &mut Recorder) -> Result<Tensor> {
    let (d, sch, grid) = (&c.denoiser, c.schedule, c.grid);
    let mut z = x_t.shallow_clone();
    for i in 0..grid.len() - 1 {
        let (t, s) = (grid[i], grid[i + 1]);
        let x = d.d(&z, t)?;
        let (a_t, s_t, a_s, s_s) = (sch.alpha(t), sch.sigma(t), sch.alpha(s), sch.sigma(s));
        z = if s_s == 0.0 {
            &x * a_s
        } else {
            &x * a_s + (&z - &x * a_t) * (s_s / s_t)
        };
        rec.land(i + 1, &z, &x);
    }
    Ok(z)
}

/// `dz/dt = (d ln α/dt) z − ½ λ'(t) (z − α D)`.
fn velocity(sch: &Schedule, z: &Tensor, x: &Tensor, t: f64) -> Tensor {
    z * sch.dlog_alpha_dt(t) - (z - x * sch.alpha(t)) * (0.5 * sch.dlambda_dt(t))
}

/// The prediction that a DDIM step `t → s` from `z_t` would need to land on `z_s`.
fn implied_x(sch: &Schedule, z_t: &Tensor, z_s: &Tensor, t: f64, s: f64) -> Tensor {
    let (a_t, s_t, a_s, s_s) = (sch.alpha(t), sch.sigma(t), sch.alpha(s), sch.sigma(s));
    if s_s == 0.0 {
        return z_s / a_s;
    }
    let ratio = (s_s / a_s) / (s_t / a_t); // e^{−h}
    (z_s - z_t * (s_s / s_t)) / (a_s * (1.0 - ratio))
}

/// Explicit Euler in t (`heun` false), or Heun (EDM Algorithm 1: Euler predictor,
/// trapezoidal corrector; plain Euler for the step onto the data end of the schedule (σ = 0,
/// or t = 0 of the cosine schedule, where λ' is ~10⁴ and the corrector would amplify any error
/// of the denoiser there).
fn euler_or_heun(c: &Solve, x_t: &Tensor, rec: &mut Recorder, heun: bool) -> Result<Tensor> {
    let (d, sch, grid) = (&c.denoiser, c.schedule, c.grid);
    let mut z = x_t.shallow_clone();
    for i in 0..grid.len() - 1 {
        let (t, s) = (grid[i], grid[i + 1]);
        let x = d.d(&z, t)?;
        let v1 = velocity(sch, &z, &x, t);
        let onto_data = sch.sigma(s) == 0.0 || s <= sch.t_range().0;
        let z_next = if heun && !onto_data {
            let euler = &z + &v1 * (s - t);
            let x2 = d.d(&euler, s)?;
            let v2 = velocity(sch, &euler, &x2, s);
            &z + (v1 + v2) * (0.5 * (s - t))
        } else {
            &z + v1 * (s - t)
        };
        rec.land(i + 1, &z_next, &implied_x(sch, &z, &z_next, t, s));
        z = z_next;
    }
    Ok(z)
}

/// DPM-Solver++(2M): `z_s = (σ_s/σ_t) z_t + α_s (1 − e^{−h}) D_i` with `h = ½(λ_s − λ_t)` (the
/// step in log(α/σ), DPM-Solver's λ) and
/// `D_i = (1 + 1/(2r)) x̂_i − 1/(2r) x̂_{i−1}`, `r = h_{i−1}/h`; first order on the first step
/// and onto σ = 0.
fn dpm_solver_2m(c: &Solve, x_t: &Tensor, rec: &mut Recorder) -> Result<Tensor> {
    let (d, sch, grid) = (&c.denoiser, c.schedule, c.grid);
    let mut z = x_t.shallow_clone();
    let mut prev: Option<(Tensor, f64)> = None; // (x̂_{i−1}, h_{i−1})
    for i in 0..grid.len() - 1 {
        let (t, s) = (grid[i], grid[i + 1]);
        let x = d.d(&z, t)?;
        let (s_t, a_s, s_s) = (sch.sigma(t), sch.alpha(s), sch.sigma(s));
        if s_s == 0.0 {
            z = &x * a_s;
            rec.land(i + 1, &z, &x);
            prev = None;
            continue;
        }
        // DPM-Solver's λ is log(α/σ), half the log-SNR of `Schedule::lambda`.
        let h = 0.5 * (sch.lambda(s) - sch.lambda(t));
        let dx = match &prev {
            Some((x_prev, h_prev)) => {
                let r = h_prev / h;
                &x * (1.0 + 0.5 / r) - x_prev * (0.5 / r)
            }
            None => x.shallow_clone(),
        };
        z = &z * (s_s / s_t) + &dx * (a_s * -(-h).exp_m1());
        rec.land(i + 1, &z, &dx);
        prev = Some((x, h));
    }
    Ok(z)
}

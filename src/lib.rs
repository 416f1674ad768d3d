//! # dsno — fast sampling of diffusion models by operator learning
//!
//! The pipeline of DSNO (Zheng et al., ICML 2023), each part usable on its own:
//!
//! 1. [`schedule`]: the noise schedule of the teacher (VP cosine log-SNR, VP linear-β, EDM σ),
//!    the maps between time t, log-SNR λ, α and σ, and the output-time presets (`quad:4`, …).
//! 2. [`denoiser`]: every model is a denoiser `D(z_t, t) → x̂`; adapters turn ε- and
//!    v-predicting networks into one; closed-form denoisers (Gaussian, Gaussian mixture) give
//!    exact answers for tests.
//! 3. [`solver`]: deterministic probability-flow ODE solvers (DDIM, Euler, Heun,
//!    DPM-Solver++(2M)) that record the teacher's trajectory at the requested output times.
//! 4. The operator maps x_T to the whole trajectory in one pass; its last output is the sample.
//!
//! Tensors are libtorch's, through `tch`; see `docs/` for the design and the method.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod denoiser;
pub mod device;
pub mod error;
pub mod eval;
pub mod fsio;
pub mod image;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod operator;
pub mod plot;
pub mod rng;
pub mod schedule;
pub mod solver;
pub mod train;

pub use error::{Error, Result};

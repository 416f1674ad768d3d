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
//! Tensors are libtorch's, through `tch`. The layering of the modules is in
//! `docs/ARCHITECTURE.md`; the method in `docs/METHOD.md`; file formats in `docs/FORMATS.md`.

// The modules from the bottom layer up; a module uses only modules above it in this list
// (docs/ARCHITECTURE.md, checked by tests/architecture.rs).
pub mod error;
pub mod util;
pub mod device;
pub mod comm;
pub mod rng;
pub mod schedule;
pub mod denoiser;
pub mod solver;
pub mod metrics;
pub mod nn;
pub mod operator;
pub mod sampling;
pub mod checkpoint;
pub mod data;
pub mod model;
pub mod import;
pub mod export;
pub mod train;
pub mod eval;
pub mod bench;

pub use error::{Error, Result};

//! The library's tests, one module per subject (one test binary, one link of libtorch): the
//! solvers and schedules against closed forms, the networks and TimeConv, parity with diffusers,
//! LPIPS and Inception fixtures, training and resuming, the trajectory store, distillation,
//! evaluation, the bundled models. Tests that seed libtorch's generator or train hold
//! `common::serial()`: the modules share one process.

#[path = "../common/mod.rs"]
mod common;

mod bundled;
mod classifier;
mod conditional;
mod conditional_pipeline;
mod data;
mod diffusers;
mod eval;
mod image;
mod inception;
mod lpips;
mod metrics;
mod networks;
mod pd_flax;
mod pipeline;
mod precision;
mod schedule;
mod solvers;
mod store;
mod timeconv;
mod training;

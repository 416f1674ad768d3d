//! The command line's tests, one module per subject (one test binary, one link of libtorch): the
//! `dsno` binary run as a user runs it — its commands, hostile input, downloads, data-parallel
//! groups of processes, GPU-window campaigns.

#[path = "../common/mod.rs"]
mod common;

mod campaign;
mod cli;
mod comm;
mod data_parallel;
mod fetch;
mod hostile;

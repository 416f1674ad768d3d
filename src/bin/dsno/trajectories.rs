//! `dsno trajectories`: the teacher's ODE solved from seeded noise, stored in shards.
use crate::common::check_out;
use anyhow::{Context, Result};
use dsno::comm::Comm;
use dsno::model::Teacher;
use dsno::solver::Solver;
use dsno::train::trajectories::{generate, GenerateOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Teacher checkpoint.
    #[arg(long)]
    teacher: PathBuf,
    /// ODE solver.
    #[arg(long, value_enum, default_value = "dpmpp2m")]
    solver: Solver,
    /// Solver steps (the grid passes through every output time).
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Output times: quad:M, uniform:M or a list like 0.75,0.5,0.25,0.
    #[arg(long, default_value = "quad:4")]
    times: String,
    /// Number of trajectories.
    #[arg(long)]
    count: usize,
    /// Seed: sample i's noise depends on (seed, i) only.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (the store).
    #[arg(long)]
    out: PathBuf,
    /// Make only part k of n (0 ≤ k < n): the shards j with j mod n = k.
    #[arg(long, default_value = "0/1", value_parser = parse_part)]
    shard: (usize, usize),
    /// Trajectories per shard file.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    /// Samples per solver batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Store x_T and targets as float16.
    #[arg(long)]
    fp16: bool,
    /// A class-conditional teacher: every trajectory of this class (default: each sample's
    /// label drawn from the seed, uniform over the classes).
    #[arg(long)]
    class: Option<usize>,
    /// A class-conditional teacher: classifier-free guidance scale w of the solve (default 1,
    /// the conditional model; recorded in the manifest).
    #[arg(long, allow_negative_numbers = true)]
    guidance: Option<dsno::denoiser::Guidance>,
}

fn parse_part(s: &str) -> Result<(usize, usize)> {
    s.split_once('/')
        .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)))
        .with_context(|| format!("`{s}`: expected k/n, e.g. 0/3"))
}

pub fn run(a: Args, device: Device, comm: &Comm) -> Result<ExitCode> {
    check_out(("--teacher", &a.teacher), &a.out, true)?;
    let teacher = Teacher::load(&a.teacher, device)?;
    let o = GenerateOptions {
        solver: a.solver,
        steps: a.steps,
        times: dsno::schedule::parse_output_times(&a.times)?,
        count: a.count,
        seed: a.seed,
        shard_size: a.shard_size,
        batch: a.batch,
        fp16: a.fp16,
        part: a.shard,
        class: a.class,
        guidance: a.guidance,
        progress: true,
        comm: comm.clone(),
    };
    let s = generate(&teacher, &a.teacher, &a.out, &o)?;
    if !comm.is_main() {
        return Ok(stopped(s.stopped, false));
    }
    for why in &s.regenerated {
        eprintln!("regenerated: {why}");
    }
    println!(
        "trajectories → {} on {}: {} shards made ({} samples, {} NFE each, {:.1} s, {:.1} samples/s), {} kept, {} regenerated",
        a.out.display(),
        crate::common::describe_place(device, comm),
        s.made,
        s.samples,
        s.nfe_per_sample,
        s.seconds,
        s.samples as f64 / s.seconds.max(1e-9),
        s.kept,
        s.regenerated.len()
    );
    Ok(stopped(s.stopped, true))
}

/// The exit status of a run stopped by a signal (said on stderr when `say`), or success.
fn stopped(signal: Option<i32>, say: bool) -> ExitCode {
    match signal {
        Some(sig) => {
            if say {
                eprintln!(
                    "stopped by signal {sig} after a complete shard; run again to complete the store"
                );
            }
            ExitCode::from((128 + sig) as u8)
        }
        None => ExitCode::SUCCESS,
    }
}

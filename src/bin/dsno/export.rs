//! `dsno export`: a checkpoint's model weights without the training state.
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Store floating-point tensors as float16.
    #[arg(long)]
    fp16: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    crate::common::check_out(("--model", &a.model), &a.out, false)?;
    let ck = dsno::checkpoint::load(&a.model)?;
    let n = ck.export(&a.out, a.fp16.then_some(tch::Kind::Half))?;
    println!("{n} tensors → {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

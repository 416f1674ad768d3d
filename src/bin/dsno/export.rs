//! `dsno export`: a model in another format (`--format`, the exporters of `dsno::export`).
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
    /// The format (the exporters registered in `dsno::export`).
    #[arg(long, default_value = "safetensors", value_parser = format_parser())]
    format: String,
}

fn format_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(dsno::export::EXPORTERS.iter().map(|e| e.name()))
}

pub fn run(a: Args) -> Result<ExitCode> {
    crate::common::check_out(("--model", &a.model), &a.out, false)?;
    let ck = dsno::checkpoint::load(&a.model)?;
    let o = dsno::export::ExportOptions {
        store: a.fp16.then_some(tch::Kind::Half),
    };
    let n = dsno::export::exporter(&a.format)?.export(&ck, &a.model, &a.out, &o)?;
    println!("{} tensors ({}) → {}", n.tensors, a.format, a.out.display());
    Ok(ExitCode::SUCCESS)
}

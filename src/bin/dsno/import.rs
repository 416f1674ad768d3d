//! `dsno import diffusers`: a diffusers UNet2DModel folder as a dsno teacher checkpoint.
use anyhow::Result;
use dsno::denoiser::Prediction;
use dsno::import::{importer, ImportOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Kind;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PredictionArg {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// A diffusers UNet2DModel folder (config.json, diffusion_pytorch_model.safetensors,
    /// scheduler_config.json; or a pipeline folder with unet/ and scheduler/).
    Diffusers {
        /// The folder.
        dir: PathBuf,
        /// The teacher checkpoint to write.
        #[arg(long)]
        out: PathBuf,
        /// Store the weights as float16 (half the size; computed in float32).
        #[arg(long)]
        fp16: bool,
        /// The prediction type, instead of scheduler_config.json's `prediction_type`.
        #[arg(long, value_enum)]
        prediction_type: Option<PredictionArg>,
        /// The data set name recorded in the checkpoint (for `dsno eval`: mnist, …).
        #[arg(long)]
        dataset: Option<String>,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    let Args::Diffusers {
        dir,
        out,
        fp16,
        prediction_type,
        dataset,
    } = a;
    let o = ImportOptions {
        prediction: prediction_type.map(|p| match p {
            PredictionArg::Epsilon => Prediction::Eps,
            PredictionArg::VPrediction => Prediction::V,
            PredictionArg::Sample => Prediction::X,
        }),
        dataset,
        ..Default::default()
    };
    crate::common::check_out(("DIR", &dir), &out, false)?;
    let ck = importer("diffusers")?.import(&dir, &o)?;
    let n = ck.export(&out, fp16.then_some(Kind::Half))?;
    println!(
        "{} → {}: teacher ({:?} prediction, {} parameters in {n} tensors, schedule {:?})",
        dir.display(),
        out.display(),
        ck.meta.prediction,
        ck.meta.model.num_params(),
        ck.meta.schedule
    );
    Ok(ExitCode::SUCCESS)
}

//! Importers: a foreign checkpoint (a folder or file of another library) → a dsno teacher
//! checkpoint, whose network dsno builds itself and whose weights must match it exactly. One
//! file per source format, registered in [`IMPORTERS`] (docs/ARCHITECTURE.md, "Where new things
//! go"). The Progressive-Distillation Flax teachers are converted by `scripts/convert-pd-flax.py`
//! (Flax's msgpack needs Python); everything it writes is checked on load like any checkpoint.
pub mod diffusers;

use crate::checkpoint::Checkpoint;
use crate::denoiser::Prediction;
use crate::schedule::Schedule;
use crate::{Error, Result};
use std::path::Path;

pub use diffusers::{import_diffusers, read_scheduler_config};

/// A source format dsno imports teachers from.
pub trait Importer: Sync {
    /// Its name on the command line (`dsno import <name>`).
    fn name(&self) -> &'static str;
    /// The teacher checkpoint of `source` (weights as float32, metadata complete).
    fn import(&self, source: &Path, o: &ImportOptions) -> Result<Checkpoint>;
}

/// Every importer of this build.
pub static IMPORTERS: &[&dyn Importer] = &[&diffusers::Diffusers];

/// The importer named `name`.
pub fn importer(name: &str) -> Result<&'static dyn Importer> {
    IMPORTERS
        .iter()
        .copied()
        .find(|i| i.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = IMPORTERS.iter().map(|i| i.name()).collect();
            Error::invalid(format!(
                "no importer for `{name}` (known: {})",
                known.join(", ")
            ))
        })
}

/// Overrides of what the source says (or lacks).
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The network's prediction (else the source's, e.g. `prediction_type`).
    pub prediction: Option<Prediction>,
    /// The noise schedule (else the source's).
    pub schedule: Option<Schedule>,
    /// The data set name recorded in the checkpoint (default `imported`).
    pub dataset: Option<String>,
}

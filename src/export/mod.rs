//! Exporters: a dsno model → a file in another format, for use outside a training run. One
//! file per format, registered in [`EXPORTERS`] (docs/ARCHITECTURE.md, "Where new things go").
//! Every exporter writes atomically: the file is complete, or absent and the old one kept.
pub mod safetensors;

use crate::checkpoint::Checkpoint;
use crate::{Error, Result};
use std::path::Path;
use tch::Kind;

/// How to export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Store floating-point weights as this kind (e.g. float16), where the format allows it.
    pub store: Option<Kind>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Tensors (or initialisers) written.
    pub tensors: usize,
}

/// A format dsno writes models in.
pub trait Exporter: Sync {
    /// Its name on the command line (`dsno export --format <name>`).
    fn name(&self) -> &'static str;
    /// One line for `--help` and the docs.
    fn summary(&self) -> &'static str;
    /// Writes the model of `ck` (read from `from`, named in errors) to `out`.
    fn export(
        &self,
        ck: &Checkpoint,
        from: &Path,
        out: &Path,
        o: &ExportOptions,
    ) -> Result<Exported>;
}

/// Every exporter of this build.
pub static EXPORTERS: &[&dyn Exporter] = &[&safetensors::Safetensors];

/// The exporter named `name`.
pub fn exporter(name: &str) -> Result<&'static dyn Exporter> {
    EXPORTERS
        .iter()
        .copied()
        .find(|e| e.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = EXPORTERS.iter().map(|e| e.name()).collect();
            Error::invalid(format!(
                "no exporter for `{name}` (known: {})",
                known.join(", ")
            ))
        })
}

//! The model alone as a dsno safetensors checkpoint: its weights (a training checkpoint's EMA)
//! and metadata without the training state and configuration — what `dsno sample` and
//! `safetensors.torch.load_file` read.
use super::{ExportOptions, Exported, Exporter};
use crate::checkpoint::Checkpoint;
use crate::Result;
use std::path::Path;

pub struct Safetensors;

impl Exporter for Safetensors {
    fn name(&self) -> &'static str {
        "safetensors"
    }

    fn summary(&self) -> &'static str {
        "a dsno checkpoint of the model alone (no training state; float16 with --fp16)"
    }

    fn export(
        &self,
        ck: &Checkpoint,
        _from: &Path,
        out: &Path,
        o: &ExportOptions,
    ) -> Result<Exported> {
        let tensors = ck.export(out, o.store)?;
        Ok(Exported { tensors })
    }
}

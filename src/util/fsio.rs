//! File helpers: every write goes to a temporary name in the same folder and is renamed when
//! complete, so a crash never leaves a half-written file under the final name.
use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written: `.<name>.tmp` beside it.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes `path` atomically through `fill`, which writes the content into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("cannot create folder: {e}")))?;
    }
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, format!("cannot write: {e}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(
            path,
            format!("cannot rename the finished file into place: {e}"),
        )
    })
}

/// The largest text file read (configs, manifests): 64 MiB.
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// Reads a text file (a config, a manifest) of at most [`MAX_TEXT_BYTES`]; errors name the file.
pub fn read_text(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
        .len();
    if len > MAX_TEXT_BYTES {
        return Err(Error::file(
            path,
            format!("{len} bytes: a config or manifest is at most {MAX_TEXT_BYTES} bytes"),
        ));
    }
    std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))
}

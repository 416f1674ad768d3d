//! ZIP archives through the `zip` crate (Python wheels, numpy's `.npz`): the entries' names,
//! one entry's bytes under a size limit (its CRC-32 checked by the crate as it is read), and an
//! archive of stored entries with every timestamp at 1980-01-01 00:00 (numpy's `savez` layout),
//! so the same content always gives the same bytes.
//!
//! Errors are plain strings; callers attach the file name.
use std::io::{Read, Seek, Write};

/// An archive being read.
pub struct Archive<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
}

fn zip_err(e: zip::result::ZipError) -> String {
    format!("not a readable ZIP archive ({e})")
}

impl<R: Read + Seek> Archive<R> {
    /// Reads the archive's directory.
    pub fn open(r: R) -> Result<Self, String> {
        Ok(Archive {
            zip: zip::ZipArchive::new(r).map_err(zip_err)?,
        })
    }

    /// The entries' names, in the archive's order.
    pub fn names(&mut self) -> Result<Vec<String>, String> {
        (0..self.zip.len())
            .map(|i| {
                Ok(self
                    .zip
                    .by_index_raw(i)
                    .map_err(zip_err)?
                    .name()
                    .to_string())
            })
            .collect()
    }

    /// Copies entry `name` into `w`; an entry larger than `max_size` bytes is refused before it
    /// is read, and one whose data is longer or shorter than its declared size, or whose CRC-32
    /// does not match, is an error. Returns the bytes written.
    pub fn extract<W: Write>(
        &mut self,
        name: &str,
        w: &mut W,
        max_size: u64,
    ) -> Result<u64, String> {
        let mut f = self.zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        let size = f.size();
        if size > max_size {
            return Err(format!(
                "{name}: {size} bytes, more than the {max_size} allowed"
            ));
        }
        let got = std::io::copy(&mut (&mut f).take(size + 1), w)
            .map_err(|e| format!("{name}: corrupt or truncated data ({e})"))?;
        if got != size {
            return Err(format!("{name}: {got} bytes of data, {size} declared"));
        }
        Ok(got)
    }
}

/// An archive of `files` (name, content), stored uncompressed, with every timestamp set to
/// 1980-01-01 00:00, so the same content always gives the same bytes.
pub fn stored_archive(files: &[(&str, &[u8])]) -> Result<Vec<u8>, String> {
    let err = |e: &dyn std::fmt::Display| format!("cannot write the archive: {e}");
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::FileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .large_file(false);
    for (name, bytes) in files {
        w.start_file(*name, options).map_err(|e| err(&e))?;
        w.write_all(bytes).map_err(|e| err(&e))?;
    }
    Ok(w.finish().map_err(|e| err(&e))?.into_inner())
}

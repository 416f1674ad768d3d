//! IDX files (MNIST, Fashion-MNIST), gzipped or raw.
//!
//! Format: big-endian magic `0x0000 08 NN` (type 0x08 = unsigned byte, NN dimensions; 0x803 for
//! images, 0x801 for labels), NN sizes as u32, then the bytes. Everything is validated: magic,
//! dimension count, the exact data length.
use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// The largest decompressed IDX file read (4 GiB; MNIST's largest is 47 MB).
pub const MAX_BYTES: u64 = 1 << 32;

/// Parses IDX bytes (already decompressed); `path` only names the source in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Idx> {
    if bytes.len() < 4 {
        return Err(Error::file(
            path,
            format!("truncated IDX file: {} bytes, no header", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(Error::file(
            path,
            format!(
                "not an IDX file of unsigned bytes: magic {:02x}{:02x}{:02x}{:02x} (expected 000008NN)",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    let nd = bytes[3] as usize;
    if nd == 0 || nd > 4 {
        return Err(Error::file(
            path,
            format!("IDX file with {nd} dimensions (expected 1 to 4)"),
        ));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(Error::file(
            path,
            format!("truncated IDX header: {} bytes, need {header}", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let want = want.ok_or_else(|| Error::file(path, format!("IDX sizes {dims:?} overflow")))?;
    let have = bytes.len() - header;
    if have != want {
        return Err(Error::file(
            path,
            format!("IDX sizes {dims:?} need {want} data bytes, the file has {have} (truncated or corrupt)"),
        ));
    }
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX file, gunzipping it if it starts with the gzip magic.
pub fn read(path: &Path) -> Result<Idx> {
    let raw = crate::util::fsio::read(path)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        // a bounded read: a small file that inflates without end is refused, not swallowed
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("corrupt gzip data: {e}")))?;
        if out.len() as u64 > MAX_BYTES {
            return Err(Error::file(
                path,
                format!(
                    "decompresses to more than {MAX_BYTES} bytes: not an IDX data set dsno reads"
                ),
            ));
        }
        out
    } else {
        raw
    };
    parse(&bytes, path)
}

/// Finds `<stem>` or `<stem>.gz` in `dir`.
pub fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::file(
        dir,
        format!("no {stem} or {stem}.gz in this folder (expected MNIST-style IDX files)"),
    ))
}

/// Which part of the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Reads `<prefix>-<what>-idx<dims>-ubyte[.gz]` of `split` and checks its dimension count.
fn load(dir: &Path, split: Split, what: &str, dims: usize) -> Result<Idx> {
    let path = find(dir, &format!("{}-{what}-idx{dims}-ubyte", split.prefix()))?;
    let idx = read(&path)?;
    if idx.dims.len() != dims {
        return Err(Error::file(
            &path,
            format!(
                "{what} file with {} dimensions (expected {dims})",
                idx.dims.len()
            ),
        ));
    }
    Ok(idx)
}

/// Loads the images of `split` from an MNIST-layout folder as u8 `[N, 1, H, W]`.
pub fn load_images(dir: &Path, split: Split) -> Result<Tensor> {
    let idx = load(dir, split, "images", 3)?;
    let (n, h, w) = (idx.dims[0] as i64, idx.dims[1] as i64, idx.dims[2] as i64);
    Ok(Tensor::from_slice(&idx.data).reshape([n, 1, h, w]))
}

/// Loads the labels of `split` as i64 `[N]`.
pub fn load_labels(dir: &Path, split: Split) -> Result<Tensor> {
    let idx = load(dir, split, "labels", 1)?;
    Ok(Tensor::from_slice(&idx.data).to_kind(tch::Kind::Int64))
}

//! numpy's `.npy` and `.npz` formats for floating-point arrays: the format pytorch-fid, EDM and
//! clean-fid keep FID reference statistics in (`mu`, `sigma` in an `.npz`).
//!
//! Reading accepts what numpy writes with `save`, `savez` and `savez_compressed`: format versions
//! 1.0, 2.0 and 3.0, little- or big-endian float32 or float64 (`<f4`, `<f8`, `>f4`, `>f8`), C or
//! Fortran order, any number of dimensions. Writing produces float64, C order, format 1.0 in a
//! stored archive with fixed timestamps, as `np.savez` does, so equal arrays give equal bytes.
//! The archive is the `zip` crate's ([`crate::util::zip`]).
//!
//! Why not `npyz` or `ndarray-npy`: both parse the header's Python literal with `py_literal`, that
//! is `pest` and its derive macro, `stacker` and `psm` (a C build). Measured on this 2-core
//! machine: `npyz` 0.8 with `npz` is 78 crates and 51.5 s of release build from scratch, for the
//! one header line of the float arrays FID statistics hold, which these lines parse.
use crate::util::zip;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The largest array read from an `.npz` entry: 2 GiB.
pub const MAX_ARRAY_BYTES: u64 = 2 << 30;

/// A float64 array in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Array {
    /// An array of `shape` holding `data` (C order); the lengths must agree.
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> std::result::Result<Array, String> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(format!(
                "shape {shape:?} holds {n} values, got {}",
                data.len()
            ));
        }
        Ok(Array { shape, data })
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// The `.npy` encoding of `a`: format 1.0, `<f8`, C order, header padded to 64 bytes.
pub fn encode_npy(a: &Array) -> Vec<u8> {
    let shape = match a.shape.len() {
        1 => format!("({},)", a.shape[0]),
        _ => format!(
            "({})",
            a.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(unpadded + 64 + a.data.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &a.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes an `.npy` file's bytes into a float64 array in C order.
pub fn decode_npy(b: &[u8]) -> std::result::Result<Array, String> {
    if b.len() < 10 || &b[..6] != MAGIC {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!(".npy format version {v}.{} is not supported", b[7])),
    };
    let header = b
        .get(start..start + hlen)
        .ok_or("the .npy header is cut off")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = header_value(header, "descr")?;
    let fortran = match header_value(header, "fortran_order")? {
        "True" => true,
        "False" => false,
        v => return Err(format!("fortran_order {v:?} is neither True nor False")),
    };
    let shape = parse_shape(header_value(header, "shape")?)?;
    let (width, big) = match descr.trim_matches(['\'', '"']) {
        "<f8" => (8, false),
        ">f8" => (8, true),
        "<f4" => (4, false),
        ">f4" => (4, true),
        d => {
            return Err(format!(
                "dtype {d:?} is not supported (float32 or float64 expected)"
            ))
        }
    };
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("the shape overflows")?;
    let body = &b[start + hlen..];
    let need = n.checked_mul(width).ok_or("the shape overflows")?;
    if body.len() != need {
        return Err(format!(
            "shape {shape:?} of {descr} needs {need} bytes of data, the file has {}",
            body.len()
        ));
    }
    let mut data: Vec<f64> = body
        .chunks_exact(width)
        .map(|c| match (width, big) {
            (8, false) => f64::from_le_bytes(c.try_into().unwrap()),
            (8, true) => f64::from_be_bytes(c.try_into().unwrap()),
            (_, false) => f32::from_le_bytes(c.try_into().unwrap()) as f64,
            (_, true) => f32::from_be_bytes(c.try_into().unwrap()) as f64,
        })
        .collect();
    if fortran && shape.len() > 1 {
        data = fortran_to_c(&data, &shape);
    }
    Ok(Array { shape, data })
}

/// The text after `'key':` in a header dict, up to the next top-level comma or brace.
fn header_value<'a>(header: &'a str, key: &str) -> std::result::Result<&'a str, String> {
    let pat = format!("'{key}':");
    let at = header
        .find(&pat)
        .ok_or_else(|| format!("the .npy header has no {key:?}"))?;
    let rest = header[at + pat.len()..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    };
    Ok(rest[..end.ok_or_else(|| format!("the .npy header's {key:?} is cut off"))?].trim())
}

fn parse_shape(s: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("shape {s:?} is not a tuple"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<usize>()
                .map_err(|_| format!("shape {s:?}: {p:?} is not a size"))
        })
        .collect()
}

/// Reorders column-major `data` of `shape` into row-major order.
fn fortran_to_c(data: &[f64], shape: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; data.len()];
    let mut idx = vec![0usize; shape.len()];
    for v in out.iter_mut() {
        // Fortran offset of the C-order index `idx`.
        let (mut off, mut stride) = (0, 1);
        for (i, &d) in idx.iter().zip(shape) {
            off += i * stride;
            stride *= d;
        }
        *v = data[off];
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Reads every array of the `.npz` file `path` (names without `.npy`).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>> {
    Ok(read_npz_where(path, |_| true)?.0)
}

/// Reads the arrays of the `.npz` file `path` whose names `wanted` accepts (others are not
/// decoded, whatever their type); also returns the names of all the arrays in the file.
pub fn read_npz_where(
    path: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<(BTreeMap<String, Array>, Vec<String>)> {
    let fail = |m: String| Error::file(path, m);
    let f = std::io::BufReader::new(super::fsio::open_input(path)?);
    let mut z = zip::Archive::open(f).map_err(|m| fail(format!("not an .npz file: {m}")))?;
    let mut out = BTreeMap::new();
    let mut names = Vec::new();
    for entry in z
        .names()
        .map_err(|m| fail(format!("not an .npz file: {m}")))?
    {
        let Some(name) = entry.strip_suffix(".npy") else {
            continue;
        };
        names.push(name.to_string());
        if !wanted(name) {
            continue;
        }
        let mut bytes = Vec::new();
        z.extract(&entry, &mut bytes, MAX_ARRAY_BYTES)
            .map_err(fail)?;
        let a = decode_npy(&bytes).map_err(|m| fail(format!("array {name:?}: {m}")))?;
        out.insert(name.to_string(), a);
    }
    Ok((out, names))
}

/// Writes `arrays` (name, array) to the `.npz` file `path` atomically, as `np.savez` would.
pub fn write_npz(path: &Path, arrays: &[(&str, &Array)]) -> Result<()> {
    let names: Vec<String> = arrays.iter().map(|(n, _)| format!("{n}.npy")).collect();
    let bodies: Vec<Vec<u8>> = arrays.iter().map(|(_, a)| encode_npy(a)).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&bodies)
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let bytes = zip::stored_archive(&files).map_err(|m| Error::file(path, m))?;
    crate::util::fsio::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_and_pads_its_header() {
        for shape in [vec![3], vec![2, 3], vec![2, 1, 2]] {
            let n: usize = shape.iter().product();
            let a = Array::new(shape, (0..n).map(|i| i as f64 * 0.5 - 1.0).collect()).unwrap();
            let b = encode_npy(&a);
            assert_eq!((b.len() - n * 8) % 64, 0, "header padded to 64 bytes");
            assert_eq!(decode_npy(&b).unwrap(), a);
        }
    }

    #[test]
    fn fortran_order_is_transposed_back() {
        // [[1, 2, 3], [4, 5, 6]] stored column by column.
        let f = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        assert_eq!(
            fortran_to_c(&f, &[2, 3]),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
    }

    #[test]
    fn bad_headers_are_named() {
        let a = Array::new(vec![2], vec![1.0, 2.0]).unwrap();
        let good = encode_npy(&a);
        let swap = |from: &str, to: &str| {
            let (from, to) = (from.as_bytes(), to.as_bytes());
            let at = good.windows(from.len()).position(|w| w == from).unwrap();
            let mut b = good.clone();
            b.splice(at..at + from.len(), to.iter().copied());
            decode_npy(&b).unwrap_err()
        };
        assert!(swap("<f8", "<i8").contains("dtype"));
        assert!(swap("(2,)", "(3,)").contains("needs 24 bytes"));
        assert!(swap("False", "Maybe").contains("fortran_order"));
        assert!(decode_npy(&good[..good.len() - 1])
            .unwrap_err()
            .contains("bytes"));
        assert!(decode_npy(b"PK\x03\x04").unwrap_err().contains("magic"));
    }
}

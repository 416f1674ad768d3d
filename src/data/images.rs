//! Image sets from files, for the metrics: an IDX images file or an MNIST-layout folder, a
//! folder of PNGs, or a safetensors file of raw samples (`dsno sample --safetensors`). Every
//! source comes back as float `[N, C, H, W]` in [−1, 1].
use crate::data::idx::{self, Split};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The largest number of PNGs read from one folder.
pub const MAX_PNGS: usize = 1_000_000;

/// Reads the image set at `path` (see the module documentation): a folder holding MNIST-style
/// IDX files gives its `split` images; a folder of `*.png` files gives them in name order (all
/// the same size and colour type); a `.safetensors` file its tensor `samples` (or its only
/// tensor); any other file is read as an IDX images file `[N, H, W]`.
pub fn read_images(path: &Path, split: Split) -> Result<Tensor> {
    if path.is_dir() {
        return match idx::load_images(path, split) {
            Ok(u8s) => Ok(crate::data::to_unit_range(&u8s)),
            Err(_) if has_pngs(path)? => read_pngs(path),
            Err(e) => Err(Error::file(
                path,
                format!("neither an MNIST-style IDX folder nor a folder of PNGs ({e})"),
            )),
        };
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors {
        return read_samples(path);
    }
    let x = idx::read(path)?;
    if x.dims.len() != 3 {
        return Err(Error::file(
            path,
            format!(
                "an IDX file of {} dimensions, not images [N, H, W]",
                x.dims.len()
            ),
        ));
    }
    let shape = [x.dims[0] as i64, 1, x.dims[1] as i64, x.dims[2] as i64];
    Ok(crate::data::to_unit_range(
        &Tensor::from_slice(&x.data).reshape(shape),
    ))
}

fn pngs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
    let mut out = Vec::new();
    for e in rd {
        let p = e
            .map_err(|e| Error::file(dir, format!("cannot list: {e}")))?
            .path();
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) && p.is_file() {
            out.push(p);
        }
        if out.len() > MAX_PNGS {
            return Err(Error::file(dir, format!("more than {MAX_PNGS} PNG files")));
        }
    }
    out.sort();
    Ok(out)
}

fn has_pngs(dir: &Path) -> Result<bool> {
    Ok(!pngs(dir)?.is_empty())
}

fn read_pngs(dir: &Path) -> Result<Tensor> {
    let files = pngs(dir)?;
    let first = crate::util::image::Image::load_png(&files[0])?;
    let (h, w, c) = (first.height, first.width, first.channels);
    let mut data = Vec::with_capacity(files.len() * h * w * c);
    for f in &files {
        let im = crate::util::image::Image::load_png(f)?;
        if (im.height, im.width, im.channels) != (h, w, c) {
            return Err(Error::file(
                f,
                format!(
                    "{}×{} with {} channels, but {} is {h}×{w} with {c}: a set's images must match",
                    im.height,
                    im.width,
                    im.channels,
                    files[0].display()
                ),
            ));
        }
        data.extend_from_slice(&im.data);
    }
    let hwc = Tensor::from_slice(&data).reshape([files.len() as i64, h as i64, w as i64, c as i64]);
    Ok(crate::data::to_unit_range(
        &hwc.permute([0, 3, 1, 2]).contiguous(),
    ))
}

/// Raw samples from a safetensors file: tensor `samples`, or the only tensor; `[N, C, H, W]`,
/// finite.
fn read_samples(path: &Path) -> Result<Tensor> {
    let bytes = crate::util::fsio::read(path)?;
    let mut tensors = crate::checkpoint::read_tensors(&bytes, path)?;
    let t = match tensors.remove("samples") {
        Some(t) => t,
        None if tensors.len() == 1 => tensors.into_values().next().unwrap(),
        None => {
            return Err(Error::file(
                path,
                format!(
                    "no tensor \"samples\" and {} others: which one holds the images?",
                    tensors.len()
                ),
            ))
        }
    };
    let s = t.size();
    if s.len() != 4 || !(s[1] == 1 || s[1] == 3) {
        return Err(Error::file(
            path,
            format!("samples of shape {s:?}: images [N, 1 or 3, H, W] expected"),
        ));
    }
    if !t.is_floating_point() {
        return Err(Error::file(
            path,
            format!("samples of kind {:?}: float expected", t.kind()),
        ));
    }
    let t = t.to_kind(Kind::Float);
    if !bool::try_from(t.isfinite().all()).unwrap_or(false) {
        return Err(Error::file(path, "the samples hold NaN or infinite values"));
    }
    Ok(t)
}

//! PNG output: image grids, trajectory strips and 2-D scatter plots, written atomically.
use super::fsio::write_atomic;
use crate::{Error, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// Maps images in [-1, 1] to u8 with rounding (not truncation): `round((x + 1)·127.5)`, clamped.
pub fn to_u8(images: &Tensor) -> Tensor {
    ((images.to_kind(Kind::Float) + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
}

/// An 8-bit image in memory: `height × width × channels` (1 = grey, 3 = RGB).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Image {
    /// Encodes as PNG and writes atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let color = match self.channels {
            1 => png::ColorType::Grayscale,
            3 => png::ColorType::Rgb,
            c => {
                return Err(Error::invalid(format!(
                    "cannot write a PNG with {c} channels"
                )))
            }
        };
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, self.width as u32, self.height as u32);
            enc.set_color(color);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(|e| Error::file(path, e))?;
            w.write_image_data(&self.data)
                .map_err(|e| Error::file(path, e))?;
        }
        write_atomic(path, &buf)
    }

    /// Reads an 8-bit grey or RGB PNG.
    pub fn load_png(path: &Path) -> Result<Image> {
        let file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
        let dec = png::Decoder::new(std::io::BufReader::new(file));
        let mut reader = dec
            .read_info()
            .map_err(|e| Error::file(path, format!("not a PNG: {e}")))?;
        let mut data = vec![0; reader.output_buffer_size()];
        let info = reader
            .next_frame(&mut data)
            .map_err(|e| Error::file(path, format!("bad PNG data: {e}")))?;
        let channels = match (info.color_type, info.bit_depth) {
            (png::ColorType::Grayscale, png::BitDepth::Eight) => 1,
            (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
            (c, b) => {
                return Err(Error::file(
                    path,
                    format!("unsupported PNG format {c:?} {b:?}"),
                ))
            }
        };
        data.truncate(info.buffer_size());
        Ok(Image {
            width: info.width as usize,
            height: info.height as usize,
            channels,
            data,
        })
    }
}

/// Tiles a batch `[N, C, H, W]` of images in [-1, 1] into a grid of `cols` columns with a
/// `pad`-pixel border of black between tiles.
pub fn grid(images: &Tensor, cols: usize, pad: usize) -> Result<Image> {
    let size = images.size();
    if size.len() != 4 || !(size[1] == 1 || size[1] == 3) || size[0] == 0 {
        return Err(Error::invalid(format!(
            "image grid needs a non-empty [N, 1|3, H, W] batch, got {size:?}"
        )));
    }
    let (n, c, h, w) = (
        size[0] as usize,
        size[1] as usize,
        size[2] as usize,
        size[3] as usize,
    );
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let bytes: Vec<u8> = Vec::<u8>::try_from(
        &to_u8(images)
            .permute([0, 2, 3, 1])
            .contiguous()
            .flatten(0, -1),
    )?;
    let (gw, gh) = (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad);
    let mut data = vec![0u8; gw * gh * c];
    for k in 0..n {
        let (r, col) = (k / cols, k % cols);
        let (y0, x0) = (pad + r * (h + pad), pad + col * (w + pad));
        for y in 0..h {
            let src = &bytes[(k * h + y) * w * c..(k * h + y + 1) * w * c];
            let dst = ((y0 + y) * gw + x0) * c;
            data[dst..dst + w * c].copy_from_slice(src);
        }
    }
    Ok(Image {
        width: gw,
        height: gh,
        channels: c,
        data,
    })
}

/// A 2-D scatter plot of points `[N, 2]` over the square `[-extent, extent]²`, `size` pixels
/// wide: a white canvas, light grid lines at integer coordinates, one dark dot per point.
pub fn scatter(points: &Tensor, extent: f64, size: usize) -> Result<Image> {
    let s = points.size();
    if s.len() != 2 || s[1] != 2 {
        return Err(Error::invalid(format!(
            "scatter plot needs points of shape [N, 2], got {s:?}"
        )));
    }
    let xy: Vec<f64> = Vec::<f64>::try_from(&points.to_kind(Kind::Double).flatten(0, -1))?;
    let mut data = vec![255u8; size * size * 3];
    let to_px = |v: f64| ((v + extent) / (2.0 * extent) * (size as f64 - 1.0)).round() as i64;
    for g in (-(extent.floor() as i64))..=(extent.floor() as i64) {
        let p = to_px(g as f64);
        if p < 0 || p >= size as i64 {
            continue;
        }
        for q in 0..size {
            for (x, y) in [(p as usize, q), (q, p as usize)] {
                let i = (y * size + x) * 3;
                data[i..i + 3].copy_from_slice(&[225, 225, 225]);
            }
        }
    }
    for pt in xy.chunks(2) {
        let (px, py) = (to_px(pt[0]), size as i64 - 1 - to_px(pt[1]));
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let (x, y) = (px + dx, py + dy);
            if x >= 0 && y >= 0 && x < size as i64 && y < size as i64 {
                let i = (y as usize * size + x as usize) * 3;
                data[i..i + 3].copy_from_slice(&[20, 60, 160]);
            }
        }
    }
    Ok(Image {
        width: size,
        height: size,
        channels: 3,
        data,
    })
}

/// A preview of samples `[N, …]`: a square grid of images, or a scatter plot of 2-D points.
pub fn preview(samples: &Tensor) -> Result<Image> {
    let s = samples.to_device(tch::Device::Cpu);
    if s.dim() == 2 {
        scatter(&s, 3.0, 512)
    } else {
        let cols = (s.size()[0] as f64).sqrt().ceil() as usize;
        grid(&s, cols, 2)
    }
}

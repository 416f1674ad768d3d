//! TimeConv: DSNO's Fourier temporal convolution (docs/METHOD.md §6), on `u` of shape
//! `[B, M, C, …]`:
//!
//! 1. `U = rfft(u)` along the M time slots;
//! 2. keep the lowest `modes` frequencies;
//! 3. per kept mode k and per position, a complex channel mix `V[b,k,o] = Σ_i U[b,k,i]·R[i,o,k]`
//!    with `R` complex `[C, C, modes]`, stored real as `weight` `[C, C, modes, 2]`;
//! 4. `v = irfft(V, n = M)` (the other modes zero);
//! 5. `out = u + LeakyReLU_0.01(v)`.
//!
//! Initialised as the authors do: real and imaginary parts uniform in `[0, 1/(C·C))`.
//!
//! Two exact implementations: [`DftPath::Fft`] (`fft_rfft`/`fft_irfft`) and
//! [`DftPath::Matmul`], which writes the truncated real DFT and its inverse as fixed `2K × M`
//! and `M × 2K` matrices and the complex mix as one real `2C × 2C` block matrix per mode; for
//! the small M of DSNO the latter is faster (`dsno bench engine` measures both). [`DftPath::Dense`]
//! composes the whole layer into one matrix over (slot, channel): fastest on the CPU.
use crate::{Error, Result};
use std::f64::consts::PI;
use tch::{nn, Device, Kind, Tensor};

/// How the Fourier transform along the slots is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DftPath {
    Fft,
    Matmul,
    /// The layer's whole linear map `u ↦ irfft(mix(rfft(u)))` over (slot, channel), composed
    /// into one `[M·C, M·C]` matrix from the weight at each call and applied as a single GEMM
    /// over all positions: twice the FLOPs of [`DftPath::Matmul`] but no reshuffling of the
    /// activations.
    Dense,
}

impl DftPath {
    /// The form measured fastest on `device` (`dsno bench engine`, docs/RESULTS.md §2 and §8):
    /// the dense map on the CPU (forward 15–26 % faster than the matmul DFT at batch 64–250 on
    /// the MNIST operator), the matmul DFT on CUDA (the dense map is not measured there yet).
    pub fn fastest_on(device: Device) -> Self {
        match device {
            Device::Cpu => DftPath::Dense,
            _ => DftPath::Matmul,
        }
    }
}

/// The Fourier temporal layer. Variable: `weight` `[C, C, modes, 2]`.
#[derive(Debug)]
pub struct TimeConv {
    pub weight: Tensor,
    channels: i64,
    modes: i64,
    slots: i64,
    path: DftPath,
    /// `[2K, M]`: rows `Re_k = cos(2πkm/M)`, then `Im_k = −sin(2πkm/M)`.
    fwd: Tensor,
    /// `[M, 2K]`: the inverse real DFT restricted to the kept modes.
    inv: Tensor,
}

/// The truncated real DFT matrices `(F [2K, M], G [M, 2K])`: `U = F u` gives the real and
/// imaginary parts of rfft's first K bins; `G [Re V; Im V]` equals `irfft(V, n = M)` with the
/// other bins zero (the imaginary parts of the DC and Nyquist bins drop out, as in irfft).
pub fn dft_matrices(slots: i64, modes: i64, kind: Kind, device: Device) -> (Tensor, Tensor) {
    let (m, k) = (slots as usize, modes as usize);
    let mut f = vec![0.0f64; 2 * k * m];
    let mut g = vec![0.0f64; m * 2 * k];
    for kk in 0..k {
        // irfft weight of bin k: 1 for DC and (M even) Nyquist, 2 for the others
        let c = if kk == 0 || (m % 2 == 0 && kk == m / 2) {
            1.0
        } else {
            2.0
        };
        for mm in 0..m {
            let a = 2.0 * PI * (kk * mm) as f64 / m as f64;
            f[kk * m + mm] = a.cos();
            f[(k + kk) * m + mm] = -a.sin();
            g[mm * 2 * k + kk] = c * a.cos() / m as f64;
            g[mm * 2 * k + k + kk] = -c * a.sin() / m as f64;
        }
    }
    let t = |v: Vec<f64>, r: usize, c: usize| {
        Tensor::from_slice(&v)
            .reshape([r as i64, c as i64])
            .to_kind(kind)
            .to_device(device)
    };
    (t(f, 2 * k, m), t(g, m, 2 * k))
}

impl TimeConv {
    /// A TimeConv over `channels` channels and `slots` = M time slots keeping `modes` Fourier
    /// modes (at most M/2 + 1), with the authors' initialisation.
    pub fn new(p: &nn::Path, channels: i64, modes: i64, slots: i64, path: DftPath) -> Result<Self> {
        let max = slots / 2 + 1;
        if modes < 1 || modes > max {
            return Err(Error::invalid(format!(
                "TimeConv: {modes} Fourier modes requested, but M = {slots} time slots have only {max} (modes must be in 1..={max})"
            )));
        }
        let scale = 1.0 / (channels * channels) as f64;
        let weight = p.var(
            "weight",
            &[channels, channels, modes, 2],
            nn::Init::Uniform { lo: 0.0, up: scale },
        );
        let (fwd, inv) = dft_matrices(slots, modes, weight.kind(), weight.device());
        Ok(TimeConv {
            weight,
            channels,
            modes,
            slots,
            path,
            fwd,
            inv,
        })
    }

    pub fn set_path(&mut self, path: DftPath) {
        self.path = path;
    }

    /// `u + LeakyReLU_0.01(irfft(mix(rfft(u)[:modes])))` for `u` of shape `[B, M, C, …]`.
    ///
    /// Inside an autocast forward pass (`--precision bf16`) the layer computes in float32, as
    /// the authors run it under mixed precision: a bfloat16 `u` is widened first, and the
    /// output is float32.
    pub fn forward(&self, u: &Tensor) -> Tensor {
        let _fp32 = crate::device::full_precision(u.device());
        let u = match u.kind() {
            Kind::BFloat16 | Kind::Half => u.to_kind(Kind::Float),
            _ => u.shallow_clone(),
        };
        let u = &u;
        let s = u.size();
        assert!(
            s.len() >= 3 && s[1] == self.slots && s[2] == self.channels,
            "TimeConv expects [B, {}, {}, …], got {s:?}",
            self.slots,
            self.channels
        );
        let (b, m, c) = (s[0], s[1], s[2]);
        let p: i64 = s[3..].iter().product();
        let u4 = u.reshape([b, m, c, p]);
        let v = match self.path {
            DftPath::Fft => self.mix_fft(&u4),
            DftPath::Matmul => self.mix_matmul(&u4),
            DftPath::Dense => self.mix_dense(&u4),
        };
        u + v.leaky_relu().reshape(s.as_slice())
    }

    fn mix_fft(&self, u: &Tensor) -> Tensor {
        let (b, m, c, p) = (u.size()[0], self.slots, self.channels, u.size()[3]);
        let uf = u.to_kind(if u.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        });
        let spec = uf.fft_rfft(Some(m), 1, "backward").narrow(1, 0, self.modes);
        let w = self.weight.to_kind(uf.kind()).view_as_complex();
        let v = Tensor::einsum("bkip,iok->bkop", &[spec, w], None::<i64>);
        let nbins = m / 2 + 1;
        let v = if nbins > self.modes {
            let pad = Tensor::zeros([b, nbins - self.modes, c, p], (v.kind(), v.device()));
            Tensor::cat(&[v, pad], 1)
        } else {
            v
        };
        v.fft_irfft(Some(m), 1, "backward").to_kind(u.kind())
    }

    fn mix_matmul(&self, u: &Tensor) -> Tensor {
        let (b, c, p, k) = (u.size()[0], self.channels, u.size()[3], self.modes);
        let f = self.fwd.to_kind(u.kind());
        let g = self.inv.to_kind(u.kind());
        // [B, 2K, C, P] → [B, K, 2C, P] with channels [Re; Im]
        let spec = Tensor::einsum("jm,bmcp->bjcp", &[f, u.shallow_clone()], None::<i64>);
        let spec = spec
            .reshape([b, 2, k, c, p])
            .permute([0, 2, 1, 3, 4])
            .reshape([b, k, 2 * c, p]);
        // per mode, the real form of the complex mix: [Re V; Im V] = [[Wr, Wi], [−Wi, Wr]]ᵀ-applied
        let w = self.weight.to_kind(u.kind()).permute([2, 0, 1, 3]); // [K, Cin, Cout, 2]
        let (wr, wi) = (w.select(3, 0), w.select(3, 1));
        let top = Tensor::cat(&[&wr, &wi], 2); // rows for Re U: → (Re V, Im V)
        let bot = Tensor::cat(&[-&wi, wr], 2); // rows for Im U
        let big = Tensor::cat(&[top, bot], 1); // [K, 2C, 2C]
        let v = Tensor::einsum("bkip,kio->bkop", &[spec, big], None::<i64>);
        let v = v
            .reshape([b, k, 2, c, p])
            .permute([0, 2, 1, 3, 4])
            .reshape([b, 2 * k, c, p]);
        Tensor::einsum("mj,bjcp->bmcp", &[g, v], None::<i64>)
    }

    /// The composed map `L [M·C, M·C]` with `v[m, o] = Σ_{n,i} L[(m,o), (n,i)] u[n, i]`.
    pub fn dense_map(&self, kind: Kind) -> Tensor {
        let (m, c, k) = (self.slots, self.channels, self.modes);
        let f = self.fwd.to_kind(kind); // [2K, M]
        let g = self.inv.to_kind(kind); // [M, 2K]
        let w = self.weight.to_kind(kind);
        let (wr, wi) = (w.select(3, 0), w.select(3, 1)); // [Cin, Cout, K]
        let (fr, fi) = (f.narrow(0, 0, k), f.narrow(0, k, k)); // [K, M]
        let (gr, gi) = (g.narrow(1, 0, k), g.narrow(1, k, k)); // [M, K]
                                                               // Re V = Σ_i Re U·Wr − Im U·Wi;  Im V = Σ_i Re U·Wi + Im U·Wr;  v = Gr Re V + Gi Im V
                                                               // with Re U = Fr u, Im U = Fi u: L[m,o,n,i] = Σ_k (Gr[m,k] (Fr[k,n] Wr[i,o,k] − Fi[k,n] Wi[i,o,k])
                                                               //                                               + Gi[m,k] (Fr[k,n] Wi[i,o,k] + Fi[k,n] Wr[i,o,k]))
        let a = Tensor::einsum("mk,kn->mnk", &[&gr, &fr], None::<i64>)
            + Tensor::einsum("mk,kn->mnk", &[&gi, &fi], None::<i64>); // multiplies Wr
        let bm = Tensor::einsum("mk,kn->mnk", &[&gi, &fr], None::<i64>)
            - Tensor::einsum("mk,kn->mnk", &[&gr, &fi], None::<i64>); // multiplies Wi
        let l = Tensor::einsum("mnk,iok->moni", &[a, wr], None::<i64>)
            + Tensor::einsum("mnk,iok->moni", &[bm, wi], None::<i64>);
        l.reshape([m * c, m * c])
    }

    fn mix_dense(&self, u: &Tensor) -> Tensor {
        let (b, m, c, p) = (u.size()[0], self.slots, self.channels, u.size()[3]);
        let l = self.dense_map(u.kind());
        l.matmul(&u.reshape([b, m * c, p])).reshape([b, m, c, p])
    }

    /// Parameters: `C·C·modes·2`.
    pub fn num_params(channels: i64, modes: i64) -> u64 {
        (channels * channels * modes * 2) as u64
    }

    /// FLOPs per sample (B = 1) at `positions` pixels: the two transforms and the mix.
    pub fn flops(channels: i64, modes: i64, slots: i64, positions: i64) -> f64 {
        let (c, k, m, p) = (
            channels as f64,
            modes as f64,
            slots as f64,
            positions as f64,
        );
        2.0 * (2.0 * k * m * c * p * 2.0 + k * (2.0 * c) * (2.0 * c) * p)
    }
}

//! The blocks both U-Nets are made of — dsno's own ([`super::unet`]) and diffusers'
//! `UNet2DModel` ([`super::diffusers`]) — each built under the variable names its network
//! passes in: group norm, convolution, the residual block with time conditioning (FiLM
//! scale-shift or additive, optional BigGAN resampling, output rescale), and multi-head
//! self-attention over the pixels ([`attend`]). The sinusoidal time features are
//! [`super::embedding::sinusoidal`].
use tch::{nn, nn::Module, Kind, Tensor};

/// Group normalisation of `c` channels in `groups` groups.
pub fn group_norm(p: nn::Path, groups: i64, c: i64, eps: f64) -> nn::GroupNorm {
    nn::group_norm(
        p,
        groups,
        c,
        nn::GroupNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// The largest group count ≤ `groups` that divides `c`.
pub fn dividing_groups(groups: i64, c: i64) -> i64 {
    (1..=groups.min(c)).rev().find(|g| c % g == 0).unwrap_or(1)
}

/// How a convolution is laid out and initialised.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub stride: i64,
    pub padding: i64,
    /// Zero-initialised weights (a residual branch's last layer starts as the identity).
    pub zero: bool,
}

impl ConvSpec {
    /// Stride 1, "same" padding for a k × k kernel, default initialisation.
    pub fn same(k: i64) -> Self {
        ConvSpec {
            stride: 1,
            padding: k / 2,
            zero: false,
        }
    }

    pub fn zero(self) -> Self {
        ConvSpec { zero: true, ..self }
    }
}

/// A k × k convolution from `i` to `o` channels.
pub fn conv(p: nn::Path, i: i64, o: i64, k: i64, s: ConvSpec) -> nn::Conv2D {
    let mut cfg = nn::ConvConfig {
        stride: s.stride,
        padding: s.padding,
        ..Default::default()
    };
    if s.zero {
        cfg.ws_init = nn::Init::Const(0.0);
    }
    nn::conv2d(p, i, o, k, cfg)
}

/// Resampling inside a residual block (BigGAN style: both branches, after the first norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    None,
    /// 2 × 2 average pooling.
    Down,
    /// Nearest-neighbour upsampling by 2.
    Up,
}

impl Resample {
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Resample::None => x.shallow_clone(),
            Resample::Down => x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>),
            Resample::Up => {
                let s = x.size();
                x.upsample_nearest2d([s[2] * 2, s[3] * 2], Some(2.0), Some(2.0))
            }
        }
    }
}

/// A residual block: what it is, and the names of its two network-specific variables (the
/// others are `norm1`, `conv1`, `norm2`, `conv2`).
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    pub groups: i64,
    pub eps: f64,
    /// Width of the (activated) time embedding it reads.
    pub emb_dim: i64,
    /// FiLM: the embedding gives a scale and a shift after the second norm; otherwise it is
    /// added before it.
    pub scale_shift: bool,
    /// The second convolution starts at zero.
    pub zero_out: bool,
    pub dropout: f64,
    /// The output is divided by this.
    pub output_scale: f64,
    pub resample: Resample,
    /// The embedding projection's name (`emb`, diffusers' `time_emb_proj`).
    pub emb_name: &'static str,
    /// The 1 × 1 shortcut's name (`skip`, diffusers' `conv_shortcut`).
    pub skip_name: &'static str,
}

/// `x → skip(x) + conv2(drop(act(cond(norm2(conv1(act(norm1(x))))))))`, resampled and rescaled
/// as its [`ResnetSpec`] says.
#[derive(Debug)]
pub struct Resnet {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    emb: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    skip: Option<nn::Conv2D>,
    spec: ResnetSpec,
    out: i64,
}

impl Resnet {
    /// The block from `i` to `o` channels under `p`.
    pub fn new(p: nn::Path, (i, o): (i64, i64), spec: &ResnetSpec) -> Self {
        let (g, eps) = (spec.groups, spec.eps);
        let film = if spec.scale_shift { 2 * o } else { o };
        let c2 = ConvSpec::same(3);
        Resnet {
            norm1: group_norm(&p / "norm1", dividing_groups(g, i), i, eps),
            conv1: conv(&p / "conv1", i, o, 3, c2),
            emb: nn::linear(&p / spec.emb_name, spec.emb_dim, film, Default::default()),
            norm2: group_norm(&p / "norm2", dividing_groups(g, o), o, eps),
            conv2: conv(
                &p / "conv2",
                o,
                o,
                3,
                if spec.zero_out { c2.zero() } else { c2 },
            ),
            skip: (i != o).then(|| conv(&p / spec.skip_name, i, o, 1, ConvSpec::same(1))),
            spec: *spec,
            out: o,
        }
    }

    /// The block on `x` `[B, C, H, W]` with the activated time embedding `emb_act` `[B, E]`.
    pub fn forward(&self, x: &Tensor, emb_act: &Tensor, train: bool) -> Tensor {
        let s = &self.spec;
        let h = self.norm1.forward(x).silu();
        let (h, x) = (s.resample.apply(&h), s.resample.apply(x));
        let h = self.conv1.forward(&h);
        let e = self.emb.forward(emb_act).unsqueeze(-1).unsqueeze(-1);
        let h = if s.scale_shift {
            let (scale, shift) = (e.narrow(1, 0, self.out), e.narrow(1, self.out, self.out));
            self.norm2.forward(&h) * (scale + 1.0) + shift
        } else {
            self.norm2.forward(&(h + e))
        };
        let h = self.conv2.forward(&h.silu().dropout(s.dropout, train));
        let out = match &self.skip {
            Some(c) => c.forward(&x) + h,
            None => x + h,
        };
        if s.output_scale == 1.0 {
            out
        } else {
            out / s.output_scale
        }
    }

    /// Parameters of a block from `i` to `o` channels.
    pub fn num_params((i, o): (i64, i64), emb_dim: i64, scale_shift: bool) -> u64 {
        let film = if scale_shift { 2 * o } else { o };
        let conv = |i: i64, o: i64, k: i64| (i * o * k * k + o) as u64;
        (2 * i + 2 * o + emb_dim * film + film) as u64
            + conv(i, o, 3)
            + conv(o, o, 3)
            + if i != o { conv(i, o, 1) } else { 0 }
    }
}

/// Multi-head attention over positions: `q`, `k`, `v` `[N, d, L]` (N = batch × heads, d
/// channels per head, L positions) → `softmax(qᵀk/√d)`-weighted values `[N, d, L]`. q and k are
/// each scaled by d^(−1/4) before their product (as guided-diffusion does, for low-precision
/// range); the weights are float32 and cast to v's kind.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let d = q.size()[1];
    let scale = 1.0 / (d as f64).sqrt().sqrt();
    let w = (q * scale)
        .transpose(1, 2)
        .bmm(&(k * scale))
        .softmax(-1, Kind::Float); // [N, L, L]
    v.bmm(&w.to_kind(v.kind()).transpose(1, 2))
}

//! The blocks of `UNet2DModel` beyond the shared ones of [`crate::nn::blocks`]: diffusers'
//! attention (its `to_q`/`to_k`/`to_v`/`to_out.0` layout), a resnet with its attention, the
//! down, up and mid blocks.
use super::config::{DiffusersUNetConfig, TimeScaleShift};
use crate::nn::blocks::{self, ConvSpec, Resample, Resnet, ResnetSpec};
use tch::{nn, nn::Module, Tensor};

pub(super) fn conv(p: nn::Path, i: i64, o: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let spec = ConvSpec {
        stride,
        padding,
        zero: false,
    };
    blocks::conv(p, i, o, k, spec)
}

/// diffusers' `ResnetBlock2D` (variables `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`,
/// `conv_shortcut`), its output divided by `output_scale`.
pub(super) fn resnet(
    p: nn::Path,
    io: (i64, i64),
    cfg: &DiffusersUNetConfig,
    output_scale: f64,
) -> Resnet {
    let spec = ResnetSpec {
        groups: cfg.groups(),
        eps: cfg.norm_eps,
        emb_dim: cfg.time_embed_dim(),
        scale_shift: cfg.resnet_time_scale_shift == TimeScaleShift::ScaleShift,
        zero_out: false,
        dropout: cfg.dropout,
        output_scale,
        resample: Resample::None,
        emb_name: "time_emb_proj",
        skip_name: "conv_shortcut",
    };
    Resnet::new(p, io, &spec)
}

/// diffusers' `Attention` as its deprecated attention blocks use it: group norm (optional),
/// multi-head self-attention over the pixels, output projection, residual, rescale.
pub(super) struct Attention {
    pub(super) norm: Option<nn::GroupNorm>,
    pub(super) to_q: nn::Linear,
    pub(super) to_k: nn::Linear,
    pub(super) to_v: nn::Linear,
    pub(super) to_out: nn::Linear,
    pub(super) heads: i64,
    pub(super) rescale: f64,
}

impl Attention {
    pub(super) fn new(
        p: nn::Path,
        c: i64,
        cfg: &DiffusersUNetConfig,
        groups: Option<i64>,
        rescale: f64,
    ) -> Self {
        let (heads, dim) = (cfg.heads(c), cfg.head_dim(c));
        let inner = heads * dim;
        let lin = |name: &str, i, o| nn::linear(&p / name, i, o, Default::default());
        Attention {
            norm: groups.map(|g| blocks::group_norm(&p / "group_norm", g, c, cfg.norm_eps)),
            to_q: lin("to_q", c, inner),
            to_k: lin("to_k", c, inner),
            to_v: lin("to_v", c, inner),
            to_out: nn::linear(&p / "to_out" / 0, inner, c, Default::default()),
            heads,
            rescale,
        }
    }

    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("attention input [B, C, H, W]");
        let normed = match &self.norm {
            Some(n) => n.forward(x),
            None => x.shallow_clone(),
        };
        let seq = normed.view([b, c, h * w]).transpose(1, 2); // [B, HW, C]
                                                              // [B, HW, heads·d] → [B·heads, d, HW]
        let heads = |t: Tensor| {
            let d = t.size()[2] / self.heads;
            t.view([b, h * w, self.heads, d])
                .permute([0, 2, 3, 1])
                .reshape([b * self.heads, d, h * w])
        };
        let q = heads(self.to_q.forward(&seq));
        let k = heads(self.to_k.forward(&seq));
        let v = heads(self.to_v.forward(&seq));
        let d = v.size()[1];
        let o = blocks::attend(&q, &k, &v) // [B·heads, d, HW]
            .view([b, self.heads, d, h * w])
            .permute([0, 3, 1, 2])
            .reshape([b, h * w, -1]);
        let o = self
            .to_out
            .forward(&o)
            .transpose(1, 2)
            .reshape([b, c, h, w]);
        let out = o + x;
        if self.rescale == 1.0 {
            out
        } else {
            out / self.rescale
        }
    }
}

pub(super) struct Layer {
    pub(super) resnet: Resnet,
    pub(super) attention: Option<Attention>,
}

impl Layer {
    pub(super) fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = self.resnet.forward(x, emb, train);
        match &self.attention {
            Some(a) => a.forward(&h),
            None => h,
        }
    }
}

pub(super) struct DownBlock {
    pub(super) layers: Vec<Layer>,
    pub(super) down: Option<nn::Conv2D>,
    pub(super) pad_first: bool,
}

pub(super) struct UpBlock {
    pub(super) layers: Vec<Layer>,
    pub(super) up: Option<nn::Conv2D>,
}

pub(super) struct Mid {
    pub(super) res0: Resnet,
    pub(super) attention: Option<Attention>,
    pub(super) res1: Resnet,
}

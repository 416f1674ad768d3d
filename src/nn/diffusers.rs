//! diffusers' `UNet2DModel`, reproduced exactly: built from its `config.json`, its variables
//! named as diffusers' state dict (`conv_in.weight`, `down_blocks.0.resnets.1.norm1.weight`,
//! `mid_block.attentions.0.to_q.weight`, …), so `diffusion_pytorch_model.safetensors` loads
//! without renaming (the legacy attention names `query`/`key`/`value`/`proj_attn` are mapped by
//! [`legacy_name`]).
//!
//! Supported: `DownBlock2D`, `AttnDownBlock2D`, `UpBlock2D`, `AttnUpBlock2D`, `UNetMidBlock2D`
//! (with or without attention, or none), `layers_per_block`, `block_out_channels`,
//! `norm_num_groups`, `norm_eps`, `resnet_time_scale_shift` `default` / `scale_shift`,
//! `downsample_padding` 0 (pad right and bottom by one first) or 1, `flip_sin_to_cos`,
//! `freq_shift`, positional time embeddings, `attention_head_dim` (null: one head),
//! `num_class_embeds`, `center_input_sample`, `mid_block_scale_factor`, dropout. Anything else
//! is refused by [`DiffusersUNetConfig::from_json`] naming the key and value.
//!
//! As a [`Backbone`] the time input is diffusers' (fractional) timestep, and the DSNO hook
//! slots are after every resnet (with its attention) of the down and up blocks and after the
//! mid block: the non-resampling blocks.
use super::blocks::{self, ConvSpec, Resample, Resnet, ResnetSpec};
use super::{check, Backbone};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

/// The variable path of the class embedding (diffusers' `class_embedding.weight`).
pub const CLASS_EMBEDDING: &str = "class_embedding";

fn d_true() -> bool {
    true
}
fn d_one() -> f64 {
    1.0
}
fn d_pos() -> String {
    "positional".into()
}
fn d_conv() -> String {
    "conv".into()
}
fn d_silu() -> String {
    "silu".into()
}
fn d_default() -> String {
    "default".into()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn d_groups() -> Option<i64> {
    Some(32)
}
fn d_eps() -> f64 {
    1e-5
}
fn d_head() -> Option<i64> {
    Some(8)
}
fn d_two() -> i64 {
    2
}
fn d_three() -> i64 {
    3
}

/// `UNet2DModel`'s configuration with diffusers' key names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusersUNetConfig {
    pub sample_size: i64,
    #[serde(default = "d_three")]
    pub in_channels: i64,
    #[serde(default = "d_three")]
    pub out_channels: i64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_pos")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<i64>,
    #[serde(default = "d_two")]
    pub layers_per_block: i64,
    #[serde(default = "d_one")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_one_i")]
    pub downsample_padding: i64,
    #[serde(default = "d_conv")]
    pub downsample_type: String,
    #[serde(default = "d_conv")]
    pub upsample_type: String,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_head")]
    pub attention_head_dim: Option<i64>,
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<i64>,
    #[serde(default)]
    pub attn_norm_num_groups: Option<i64>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_true")]
    pub add_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<i64>,
}

fn d_one_i() -> i64 {
    1
}

/// Keys of `config.json` that dsno reads; any other key (bookkeeping keys starting with `_`
/// aside) must have one of the values in [`NEUTRAL`].
const KNOWN: [&str; 27] = [
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "time_embedding_type",
    "time_embedding_dim",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "downsample_type",
    "upsample_type",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "resnet_time_scale_shift",
    "add_attention",
    "class_embed_type",
    "num_class_embeds",
];

/// Other keys diffusers writes that do not change `UNet2DModel` when they hold these values.
const NEUTRAL: [(&str, &str); 1] = [("num_train_timesteps", "any")];

impl DiffusersUNetConfig {
    /// Parses and validates diffusers' `config.json` text; errors name the key and value.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::invalid(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid("config.json is not a JSON object"))?;
        if let Some(c) = obj.get("_class_name") {
            check(c == "UNet2DModel", || {
                format!(
                    "_class_name {c}: only UNet2DModel is supported (no cross-attention models)"
                )
            })?;
        }
        for (k, val) in obj {
            let neutral = NEUTRAL.iter().any(|(n, _)| n == k);
            if !k.starts_with('_') && !KNOWN.contains(&k.as_str()) && !neutral && !val.is_null() {
                return Err(Error::invalid(format!(
                    "config key {k:?} = {val} is not supported by dsno's UNet2DModel"
                )));
            }
        }
        let c: DiffusersUNetConfig = serde_json::from_value(v.clone())
            .map_err(|e| Error::invalid(format!("config.json: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every field (the block types, the supported options, the sizes).
    pub fn validate(&self) -> Result<()> {
        let one_of = |key: &str, val: &str, ok: &[&str]| {
            check(ok.contains(&val), || {
                format!("config key {key:?} = {val:?} is not supported (supported: {ok:?})")
            })
        };
        one_of(
            "time_embedding_type",
            &self.time_embedding_type,
            &["positional"],
        )?;
        one_of("act_fn", &self.act_fn, &["silu", "swish"])?;
        one_of("downsample_type", &self.downsample_type, &["conv"])?;
        one_of("upsample_type", &self.upsample_type, &["conv"])?;
        one_of(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            &["default", "scale_shift"],
        )?;
        for b in &self.down_block_types {
            one_of("down_block_types", b, &["DownBlock2D", "AttnDownBlock2D"])?;
        }
        for b in &self.up_block_types {
            one_of("up_block_types", b, &["UpBlock2D", "AttnUpBlock2D"])?;
        }
        if let Some(m) = &self.mid_block_type {
            one_of("mid_block_type", m, &["UNetMidBlock2D"])?;
        }
        check(self.class_embed_type.is_none(), || {
            format!(
                "config key \"class_embed_type\" = {:?} is not supported (only num_class_embeds)",
                self.class_embed_type
            )
        })?;
        let n = self.block_out_channels.len();
        check((1..=8).contains(&n), || {
            format!("block_out_channels has {n} entries (1 to 8)")
        })?;
        check(
            self.down_block_types.len() == n && self.up_block_types.len() == n,
            || {
                format!(
                "down_block_types ({}) and up_block_types ({}) need one entry per block_out_channels ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            )
            },
        )?;
        let groups = self.norm_num_groups.ok_or_else(|| {
            Error::invalid("config key \"norm_num_groups\" = null is not supported")
        })?;
        check((1..=1024).contains(&groups), || {
            format!("norm_num_groups {groups} not in [1, 1024]")
        })?;
        for &c in &self.block_out_channels {
            check((1..=8192).contains(&c) && c % groups == 0, || {
                format!("block_out_channels entry {c}: in [1, 8192] and divisible by norm_num_groups {groups}")
            })?;
            if let Some(h) = self.attention_head_dim {
                check(h >= 1 && c / h >= 1, || {
                    format!("attention_head_dim {h} for {c} channels")
                })?;
            }
        }
        if let Some(g) = self.attn_norm_num_groups {
            check(g >= 1 && self.block_out_channels[n - 1] % g == 0, || {
                format!("attn_norm_num_groups {g} does not divide the mid block's channels")
            })?;
        }
        check((1..=16).contains(&self.layers_per_block), || {
            format!("layers_per_block {} not in [1, 16]", self.layers_per_block)
        })?;
        check(
            (1..=16).contains(&self.in_channels) && (1..=16).contains(&self.out_channels),
            || "in_channels and out_channels must be in [1, 16]".into(),
        )?;
        check((1..=4096).contains(&self.sample_size), || {
            format!("sample_size {} not in [1, 4096]", self.sample_size)
        })?;
        let down = 1i64 << (n - 1);
        check(self.sample_size % down == 0, || {
            format!(
                "sample_size {} is not divisible by 2^{}",
                self.sample_size,
                n - 1
            )
        })?;
        check([0, 1].contains(&self.downsample_padding), || {
            format!(
                "downsample_padding {} is not 0 or 1",
                self.downsample_padding
            )
        })?;
        // below 1e-12 the float32 ε vanishes and a constant feature map divides 0 by 0
        check(self.norm_eps >= 1e-12 && self.norm_eps < 1.0, || {
            format!("norm_eps {} not in [1e-12, 1)", self.norm_eps)
        })?;
        check((0.0..1.0).contains(&self.dropout), || {
            format!("dropout {} not in [0, 1)", self.dropout)
        })?;
        check((1e-3..=1e3).contains(&self.mid_block_scale_factor), || {
            format!(
                "mid_block_scale_factor {} not in [0.001, 1000]",
                self.mid_block_scale_factor
            )
        })?;
        check(
            self.freq_shift.is_finite() && self.freq_shift.abs() < 1e3,
            || format!("freq_shift {}", self.freq_shift),
        )?;
        if let Some(k) = self.num_class_embeds {
            check((1..=100_000).contains(&k), || {
                format!("num_class_embeds {k} not in [1, 100000]")
            })?;
        }
        let t = self.time_embed_dim();
        check((1..=65_536).contains(&t), || {
            format!("time embedding width {t} not in [1, 65536]")
        })?;
        check(self.block_out_channels[0] % 2 == 0, || {
            "block_out_channels[0] must be even".into()
        })?;
        let half = (self.block_out_channels[0] / 2) as f64;
        check(half - self.freq_shift > 0.0, || {
            format!(
                "freq_shift {} must be below block_out_channels[0]/2 = {half} (the embedding's \
                 frequencies divide by their difference)",
                self.freq_shift
            )
        })
    }

    fn time_embed_dim(&self) -> i64 {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }

    fn groups(&self) -> i64 {
        self.norm_num_groups.unwrap_or(32)
    }

    /// The channel count at each hook slot: every down-block layer, the mid block, every
    /// up-block layer.
    pub fn slot_channels(&self) -> Vec<i64> {
        let l = self.layers_per_block as usize;
        let mut out = vec![];
        for &c in &self.block_out_channels {
            out.extend(std::iter::repeat_n(c, l));
        }
        if self.mid_block_type.is_some() {
            out.push(*self.block_out_channels.last().unwrap());
        }
        for &c in self.block_out_channels.iter().rev() {
            out.extend(std::iter::repeat_n(c, l + 1));
        }
        out
    }

    /// The parameter count, computed without allocating.
    pub fn num_params(&self) -> u64 {
        let t = self.time_embed_dim();
        let c0 = self.block_out_channels[0];
        let conv = |i: i64, o: i64, k: i64| (i * o * k * k + o) as u64;
        let lin = |i: i64, o: i64| (i * o + o) as u64;
        let norm = |c: i64| 2 * c as u64;
        let scale_shift = self.resnet_time_scale_shift == "scale_shift";
        let res = |i: i64, o: i64| Resnet::num_params((i, o), t, scale_shift);
        let attn = |c: i64, with_norm: bool| {
            let inner = self.heads(c) * self.head_dim(c);
            3 * lin(c, inner) + lin(inner, c) + if with_norm { norm(c) } else { 0 }
        };
        let mut n = conv(self.in_channels, c0, 3) + lin(c0, t) + lin(t, t);
        if let Some(k) = self.num_class_embeds {
            n += (k * t) as u64;
        }
        for (i, plan) in self.down_plan().iter().enumerate() {
            for &(ci, co) in &plan.resnets {
                n += res(ci, co) + if plan.attention { attn(co, true) } else { 0 };
            }
            if i + 1 < self.block_out_channels.len() {
                n += conv(plan.out, plan.out, 3);
            }
        }
        if self.mid_block_type.is_some() {
            let c = *self.block_out_channels.last().unwrap();
            n += 2 * res(c, c);
            if self.add_attention {
                n += attn(c, self.mid_attention_groups().is_some());
            }
        }
        for (i, plan) in self.up_plan().iter().enumerate() {
            for &(ci, co) in &plan.resnets {
                n += res(ci, co) + if plan.attention { attn(co, true) } else { 0 };
            }
            if i + 1 < self.block_out_channels.len() {
                n += conv(plan.out, plan.out, 3);
            }
        }
        n + norm(c0) + conv(c0, self.out_channels, 3)
    }

    fn head_dim(&self, c: i64) -> i64 {
        self.attention_head_dim.unwrap_or(c)
    }

    fn heads(&self, c: i64) -> i64 {
        c / self.head_dim(c)
    }

    /// The mid block's attention group count: `attn_norm_num_groups`, else `norm_num_groups`
    /// with the default time shift and none (no group norm) with `scale_shift`, as diffusers.
    fn mid_attention_groups(&self) -> Option<i64> {
        self.attn_norm_num_groups
            .or((self.resnet_time_scale_shift == "default").then_some(self.groups()))
    }

    fn down_plan(&self) -> Vec<BlockPlan> {
        let mut out = vec![];
        let mut prev = self.block_out_channels[0];
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            let resnets = (0..self.layers_per_block)
                .map(|j| (if j == 0 { prev } else { c }, c))
                .collect();
            out.push(BlockPlan {
                resnets,
                attention: self.down_block_types[i] == "AttnDownBlock2D",
                out: c,
            });
            prev = c;
        }
        out
    }

    /// Up blocks: resnet j takes the previous output plus the skip it concatenates.
    fn up_plan(&self) -> Vec<BlockPlan> {
        let rev: Vec<i64> = self.block_out_channels.iter().rev().copied().collect();
        let n = rev.len();
        let l = self.layers_per_block + 1;
        let mut prev = rev[0];
        let mut out = vec![];
        for (i, &c) in rev.iter().enumerate() {
            let input = rev[(i + 1).min(n - 1)];
            let resnets = (0..l)
                .map(|j| {
                    let skip = if j == l - 1 { input } else { c };
                    let from = if j == 0 { prev } else { c };
                    (from + skip, c)
                })
                .collect();
            out.push(BlockPlan {
                resnets,
                attention: self.up_block_types[i] == "AttnUpBlock2D",
                out: c,
            });
            prev = c;
        }
        out
    }

    /// Multiply–add FLOPs (×2) of one forward pass of one sample: convolutions, linear layers
    /// and the attention matmuls.
    pub fn flops_per_sample(&self) -> f64 {
        let mut f = 0.0;
        let mut hw = (self.sample_size * self.sample_size) as f64;
        let conv = |i: i64, o: i64, k: i64, hw: f64| 2.0 * (i * o * k * k) as f64 * hw;
        let attn = |c: i64, hw: f64| 8.0 * (c * c) as f64 * hw + 4.0 * c as f64 * hw * hw;
        let res = |i: i64, o: i64, hw: f64| {
            conv(i, o, 3, hw) + conv(o, o, 3, hw) + if i != o { conv(i, o, 1, hw) } else { 0.0 }
        };
        f += conv(self.in_channels, self.block_out_channels[0], 3, hw);
        let n = self.block_out_channels.len();
        for (i, p) in self.down_plan().iter().enumerate() {
            for &(ci, co) in &p.resnets {
                f += res(ci, co, hw) + if p.attention { attn(co, hw) } else { 0.0 };
            }
            if i + 1 < n {
                hw /= 4.0;
                f += conv(p.out, p.out, 3, hw);
            }
        }
        if self.mid_block_type.is_some() {
            let c = self.block_out_channels[n - 1];
            f += 2.0 * res(c, c, hw) + if self.add_attention { attn(c, hw) } else { 0.0 };
        }
        for (i, p) in self.up_plan().iter().enumerate() {
            for &(ci, co) in &p.resnets {
                f += res(ci, co, hw) + if p.attention { attn(co, hw) } else { 0.0 };
            }
            if i + 1 < n {
                hw *= 4.0;
                f += conv(p.out, p.out, 3, hw);
            }
        }
        f + conv(self.block_out_channels[0], self.out_channels, 3, hw)
    }
}

struct BlockPlan {
    /// (in, out) channels of each resnet.
    resnets: Vec<(i64, i64)>,
    attention: bool,
    out: i64,
}

/// The diffusers name of a legacy attention variable (`query` → `to_q`, `key` → `to_k`,
/// `value` → `to_v`, `proj_attn` → `to_out.0`); `None` for other names.
pub fn legacy_name(name: &str) -> Option<String> {
    for (old, new) in [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ] {
        if name.contains(".attentions.") && name.contains(old) {
            return Some(name.replacen(old, new, 1));
        }
    }
    None
}

fn conv(p: nn::Path, i: i64, o: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let spec = ConvSpec {
        stride,
        padding,
        zero: false,
    };
    blocks::conv(p, i, o, k, spec)
}

/// diffusers' `ResnetBlock2D` (variables `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`,
/// `conv_shortcut`), its output divided by `output_scale`.
fn resnet(p: nn::Path, io: (i64, i64), cfg: &DiffusersUNetConfig, output_scale: f64) -> Resnet {
    let spec = ResnetSpec {
        groups: cfg.groups(),
        eps: cfg.norm_eps,
        emb_dim: cfg.time_embed_dim(),
        scale_shift: cfg.resnet_time_scale_shift == "scale_shift",
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
struct Attention {
    norm: Option<nn::GroupNorm>,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
    rescale: f64,
}

impl Attention {
    fn new(
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

    fn forward(&self, x: &Tensor) -> Tensor {
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

struct Layer {
    resnet: Resnet,
    attention: Option<Attention>,
}

impl Layer {
    fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = self.resnet.forward(x, emb, train);
        match &self.attention {
            Some(a) => a.forward(&h),
            None => h,
        }
    }
}

struct DownBlock {
    layers: Vec<Layer>,
    down: Option<nn::Conv2D>,
    pad_first: bool,
}

struct UpBlock {
    layers: Vec<Layer>,
    up: Option<nn::Conv2D>,
}

struct Mid {
    res0: Resnet,
    attention: Option<Attention>,
    res1: Resnet,
}

/// diffusers' `UNet2DModel`.
pub struct DiffusersUNet {
    cfg: DiffusersUNetConfig,
    conv_in: nn::Conv2D,
    linear_1: nn::Linear,
    linear_2: nn::Linear,
    class_embedding: Option<Tensor>,
    down: Vec<DownBlock>,
    mid: Option<Mid>,
    up: Vec<UpBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

fn layers(p: &nn::Path, plan: &BlockPlan, cfg: &DiffusersUNetConfig) -> Vec<Layer> {
    plan.resnets
        .iter()
        .enumerate()
        .map(|(j, &io)| Layer {
            resnet: resnet(p / "resnets" / j, io, cfg, 1.0),
            attention: plan
                .attention
                .then(|| Attention::new(p / "attentions" / j, io.1, cfg, Some(cfg.groups()), 1.0)),
        })
        .collect()
}

impl DiffusersUNet {
    /// Creates the variables under `p` with diffusers' names.
    pub fn new(p: &nn::Path, cfg: &DiffusersUNetConfig) -> Result<Self> {
        cfg.validate()?;
        let (c0, t) = (cfg.block_out_channels[0], cfg.time_embed_dim());
        let n = cfg.block_out_channels.len();
        let down = cfg
            .down_plan()
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let bp = p / "down_blocks" / i;
                DownBlock {
                    layers: layers(&bp, plan, cfg),
                    down: (i + 1 < n).then(|| {
                        let pad = cfg.downsample_padding;
                        conv(
                            &bp / "downsamplers" / 0 / "conv",
                            plan.out,
                            plan.out,
                            3,
                            2,
                            pad,
                        )
                    }),
                    pad_first: cfg.downsample_padding == 0,
                }
            })
            .collect();
        let mid = cfg.mid_block_type.as_ref().map(|_| {
            let c = cfg.block_out_channels[n - 1];
            let mp = p / "mid_block";
            let s = cfg.mid_block_scale_factor;
            Mid {
                res0: resnet(&mp / "resnets" / 0, (c, c), cfg, s),
                attention: cfg.add_attention.then(|| {
                    Attention::new(
                        &mp / "attentions" / 0,
                        c,
                        cfg,
                        cfg.mid_attention_groups(),
                        s,
                    )
                }),
                res1: resnet(&mp / "resnets" / 1, (c, c), cfg, s),
            }
        });
        let up = cfg
            .up_plan()
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let bp = p / "up_blocks" / i;
                UpBlock {
                    layers: layers(&bp, plan, cfg),
                    up: (i + 1 < n).then(|| {
                        conv(&bp / "upsamplers" / 0 / "conv", plan.out, plan.out, 3, 1, 1)
                    }),
                }
            })
            .collect();
        Ok(DiffusersUNet {
            cfg: cfg.clone(),
            conv_in: conv(p / "conv_in", cfg.in_channels, c0, 3, 1, 1),
            linear_1: nn::linear(p / "time_embedding" / "linear_1", c0, t, Default::default()),
            linear_2: nn::linear(p / "time_embedding" / "linear_2", t, t, Default::default()),
            class_embedding: cfg.num_class_embeds.map(|k| {
                (p / CLASS_EMBEDDING).var(
                    "weight",
                    &[k, t],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                )
            }),
            down,
            mid,
            up,
            conv_norm_out: blocks::group_norm(p / "conv_norm_out", cfg.groups(), c0, cfg.norm_eps),
            conv_out: conv(p / "conv_out", c0, cfg.out_channels, 3, 1, 1),
        })
    }

    pub fn config(&self) -> &DiffusersUNetConfig {
        &self.cfg
    }

    /// diffusers' `Timesteps`: sinusoidal features of the (fractional) timesteps `[N]`.
    fn time_features(&self, timesteps: &Tensor) -> Tensor {
        let c = &self.cfg;
        super::embedding::sinusoidal_features(
            timesteps,
            c.block_out_channels[0],
            c.freq_shift,
            c.flip_sin_to_cos,
        )
    }
}

impl Backbone for DiffusersUNet {
    /// The time embedding alone (a class-conditional model's labelled paths go through
    /// [`Backbone::embed`], which refuses to run it without labels).
    fn time_embedding(&self, t_in: &Tensor) -> Tensor {
        self.linear_2
            .forward(&self.linear_1.forward(&self.time_features(t_in)).silu())
    }

    fn num_classes(&self) -> Option<i64> {
        self.cfg.num_class_embeds
    }

    /// The time (and class) embedding `[N, E]`; conditional models need `labels` `[N]`.
    fn embed(&self, timesteps: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let emb = self.time_embedding(timesteps);
        match (&self.class_embedding, labels) {
            (Some(table), Some(y)) => {
                // diffusers' class embedding has no null class: labels 0 … K − 1 only
                let y = super::check_labels(y, timesteps.size()[0], table.size()[0], false)?;
                Ok(emb + table.index_select(0, &y.to_device(table.device())))
            }
            (None, None) => Ok(emb),
            (Some(_), None) => Err(Error::invalid(
                "this UNet2DModel is class-conditional without a null class (diffusers' \
                 num_class_embeds): it needs class labels, and classifier-free guidance other \
                 than w = 1 does not apply",
            )),
            (None, Some(_)) => Err(Error::invalid(
                "this UNet2DModel has no class embedding: it takes no labels",
            )),
        }
    }

    fn stem(&self, x: &Tensor) -> Tensor {
        let x = if self.cfg.center_input_sample {
            x * 2.0 - 1.0
        } else {
            x.shallow_clone()
        };
        self.conv_in.forward(&x)
    }

    fn body(
        &self,
        h: Tensor,
        emb: &Tensor,
        train: bool,
        hook: &mut dyn FnMut(usize, Tensor) -> Tensor,
    ) -> Tensor {
        let emb = emb.silu(); // every resnet applies SiLU to the embedding first
        let mut slot = 0;
        let mut skips = vec![h.shallow_clone()];
        let mut h = h;
        for b in &self.down {
            for l in &b.layers {
                h = hook(slot, l.forward(&h, &emb, train));
                slot += 1;
                skips.push(h.shallow_clone());
            }
            if let Some(d) = &b.down {
                if b.pad_first {
                    h = h.constant_pad_nd([0, 1, 0, 1]);
                }
                h = d.forward(&h);
                skips.push(h.shallow_clone());
            }
        }
        if let Some(m) = &self.mid {
            h = m.res0.forward(&h, &emb, train);
            if let Some(a) = &m.attention {
                h = a.forward(&h);
            }
            h = hook(slot, m.res1.forward(&h, &emb, train));
            slot += 1;
        }
        for b in &self.up {
            for l in &b.layers {
                let skip = skips.pop().expect("one skip per up-block layer");
                h = hook(slot, l.forward(&Tensor::cat(&[h, skip], 1), &emb, train));
                slot += 1;
            }
            if let Some(u) = &b.up {
                let s = h.size();
                h = u.forward(&h.upsample_nearest2d([s[2] * 2, s[3] * 2], None, None));
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h).silu())
    }

    fn slot_channels(&self) -> Vec<i64> {
        self.cfg.slot_channels()
    }

    fn sample_shape(&self) -> Vec<i64> {
        vec![
            self.cfg.in_channels,
            self.cfg.sample_size,
            self.cfg.sample_size,
        ]
    }

    fn flops_per_sample(&self) -> f64 {
        self.cfg.flops_per_sample()
    }
}

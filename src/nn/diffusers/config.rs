//! `UNet2DModel`'s `config.json`: diffusers' key names and defaults, its string options as
//! enums (an unsupported value is refused naming the key), the checks of every field, and what
//! the configuration alone determines (parameters, FLOPs, hook slots, the blocks' channels).
use super::super::blocks::Resnet;
use super::super::check;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

crate::util::names::named_enum! {
    /// `time_embedding_type`.
    pub enum TimeEmbeddingType ("time_embedding_type") {
        /// Sinusoidal features of the timestep.
        Positional = "positional",
    }
}

crate::util::names::named_enum! {
    /// `act_fn`.
    pub enum ActFn ("act_fn") {
        /// x·sigmoid(x).
        Silu = "silu",
        /// The same function by its other name.
        Swish = "swish",
    }
}

crate::util::names::named_enum! {
    /// `downsample_type`.
    pub enum DownsampleType ("downsample_type") {
        /// A stride-2 3 × 3 convolution.
        Conv = "conv",
    }
}

crate::util::names::named_enum! {
    /// `upsample_type`.
    pub enum UpsampleType ("upsample_type") {
        /// Nearest-neighbour ×2, then a 3 × 3 convolution.
        Conv = "conv",
    }
}

crate::util::names::named_enum! {
    /// `resnet_time_scale_shift`: how a resnet reads the time embedding.
    pub enum TimeScaleShift ("resnet_time_scale_shift") {
        /// Added before the second norm.
        Default = "default",
        /// FiLM: a scale and a shift after the second norm.
        ScaleShift = "scale_shift",
    }
}

crate::util::names::named_enum! {
    /// An entry of `down_block_types`.
    pub enum DownBlockType ("down_block_types entry") {
        /// Resnets, then a downsampler.
        DownBlock2D = "DownBlock2D",
        /// Resnets each followed by attention, then a downsampler.
        AttnDownBlock2D = "AttnDownBlock2D",
    }
}

crate::util::names::named_enum! {
    /// An entry of `up_block_types`.
    pub enum UpBlockType ("up_block_types entry") {
        /// Resnets on the concatenated skips, then an upsampler.
        UpBlock2D = "UpBlock2D",
        /// Resnets each followed by attention, then an upsampler.
        AttnUpBlock2D = "AttnUpBlock2D",
    }
}

crate::util::names::named_enum! {
    /// `mid_block_type`.
    pub enum MidBlockType ("mid_block_type") {
        /// Resnet, attention (unless `add_attention` is false), resnet.
        UNetMidBlock2D = "UNetMidBlock2D",
    }
}

fn d_pos() -> TimeEmbeddingType {
    TimeEmbeddingType::Positional
}
fn d_down() -> DownsampleType {
    DownsampleType::Conv
}
fn d_up() -> UpsampleType {
    UpsampleType::Conv
}
fn d_silu() -> ActFn {
    ActFn::Silu
}
fn d_default() -> TimeScaleShift {
    TimeScaleShift::Default
}
fn d_mid() -> Option<MidBlockType> {
    Some(MidBlockType::UNetMidBlock2D)
}

fn d_true() -> bool {
    true
}
fn d_one() -> f64 {
    1.0
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
    pub time_embedding_type: TimeEmbeddingType,
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<DownBlockType>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<MidBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub block_out_channels: Vec<i64>,
    #[serde(default = "d_two")]
    pub layers_per_block: i64,
    #[serde(default = "d_one")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_one_i")]
    pub downsample_padding: i64,
    #[serde(default = "d_down")]
    pub downsample_type: DownsampleType,
    #[serde(default = "d_up")]
    pub upsample_type: UpsampleType,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_silu")]
    pub act_fn: ActFn,
    #[serde(default = "d_head")]
    pub attention_head_dim: Option<i64>,
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<i64>,
    #[serde(default)]
    pub attn_norm_num_groups: Option<i64>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: TimeScaleShift,
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
        // the string options are enums: an unsupported value fails to parse, naming its key
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

    pub(super) fn time_embed_dim(&self) -> i64 {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }

    pub(super) fn groups(&self) -> i64 {
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
        let scale_shift = self.resnet_time_scale_shift == TimeScaleShift::ScaleShift;
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

    pub(super) fn head_dim(&self, c: i64) -> i64 {
        self.attention_head_dim.unwrap_or(c)
    }

    pub(super) fn heads(&self, c: i64) -> i64 {
        c / self.head_dim(c)
    }

    /// The mid block's attention group count: `attn_norm_num_groups`, else `norm_num_groups`
    /// with the default time shift and none (no group norm) with `scale_shift`, as diffusers.
    pub(super) fn mid_attention_groups(&self) -> Option<i64> {
        self.attn_norm_num_groups
            .or((self.resnet_time_scale_shift == TimeScaleShift::Default).then_some(self.groups()))
    }

    pub(super) fn down_plan(&self) -> Vec<BlockPlan> {
        let mut out = vec![];
        let mut prev = self.block_out_channels[0];
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            let resnets = (0..self.layers_per_block)
                .map(|j| (if j == 0 { prev } else { c }, c))
                .collect();
            out.push(BlockPlan {
                resnets,
                attention: self.down_block_types[i] == DownBlockType::AttnDownBlock2D,
                out: c,
            });
            prev = c;
        }
        out
    }

    /// Up blocks: resnet j takes the previous output plus the skip it concatenates.
    pub(super) fn up_plan(&self) -> Vec<BlockPlan> {
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
                attention: self.up_block_types[i] == UpBlockType::AttnUpBlock2D,
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

pub(super) struct BlockPlan {
    /// (in, out) channels of each resnet.
    pub(super) resnets: Vec<(i64, i64)>,
    pub(super) attention: bool,
    pub(super) out: i64,
}

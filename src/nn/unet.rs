//! The teacher's U-Net (iDDPM / Progressive-Distillation style, docs/METHOD.md §6).
//!
//! ResBlocks with GroupNorm (eps 1e-6) + SiLU and FiLM time conditioning
//! (`h = SiLU(GN(h)·(1 + scale) + shift)`), BigGAN-style resampling ResBlocks (nearest ×2 up,
//! 2×2 average-pool down, applied inside the block), multi-head self-attention at the
//! configured resolutions, skip concatenations, dropout before the second convolution.
//!
//! ## Parameter names (the checkpoint format)
//! ```text
//! temb.dense0.{weight,bias}  temb.dense1.{weight,bias}        time embedding (ch → 4ch → 4ch)
//! conv_in.{weight,bias}                                        3×3, in_channels → ch
//! down.{i}.res.*  down.{i}.attn.*                              down path, blocks in order
//! mid.res0.*  mid.attn.*  mid.res1.*
//! up.{i}.res.*  up.{i}.attn.*                                  up path, blocks in order
//! out.norm.{weight,bias}  out.conv.{weight,bias}               GN → SiLU → 3×3 conv
//! res: norm1, conv1 (3×3), emb (Linear 4ch → 2·out: scale then shift), norm2, conv2 (3×3),
//!      skip (1×1, only when the channel count changes)
//! attn: norm, qkv (1×1 conv C → 3C; rows [q; k; v], each split into heads of C/heads
//!       consecutive channels), proj (1×1 conv C → C)
//! ```
//! The DSNO operator's TimeConv slots are the outputs of the non-resampling down blocks, of
//! `mid` after its attention, and of every non-resampling up block.
use super::blocks::{self, ConvSpec, Resample, Resnet, ResnetSpec};
use super::embedding::TimeEmbedding;
use super::{check, Backbone, Hook, ModelConfig};
use crate::error::{check_field, check_range};
use crate::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

/// The variable path of a conditional U-Net's class embedding (`class_emb.weight`).
pub const CLASS_EMBEDDING: &str = "class_emb";

/// U-Net hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    pub image_size: i64,
    pub in_channels: i64,
    pub out_channels: i64,
    /// Base channel count `ch`; the time embedding has `4·ch`.
    pub channels: i64,
    /// Channel multiplier per resolution level.
    pub channel_mult: Vec<i64>,
    pub num_res_blocks: usize,
    /// Resolutions (in pixels) at which the blocks carry self-attention.
    pub attn_resolutions: Vec<i64>,
    pub num_heads: i64,
    pub dropout: f64,
    /// GroupNorm groups (at most; fewer where the channel count is smaller).
    pub groups: i64,
    /// Class-conditional: K classes, a learned embedding of K + 1 rows (the last the null class
    /// of classifier-free guidance) added to the time embedding, zero-initialised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<i64>,
    /// Channels per attention head; when set, every attention layer has `C / head_dim` heads
    /// (Progressive Distillation's ImageNet-64 model: 64) instead of `num_heads`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
}

impl Default for UNetConfig {
    /// The DSNO authors' CIFAR-10 U-Net: 256 channels, multipliers [1, 1, 1], 3 blocks per
    /// level, attention at 16 and 8, dropout 0.2 (60,004,099 parameters).
    fn default() -> Self {
        UNetConfig {
            image_size: 32,
            in_channels: 3,
            out_channels: 3,
            channels: 256,
            channel_mult: vec![1, 1, 1],
            num_res_blocks: 3,
            attn_resolutions: vec![16, 8],
            num_heads: 1,
            dropout: 0.2,
            groups: 32,
            num_classes: None,
            head_dim: None,
        }
    }
}

impl UNetConfig {
    /// The MNIST / Fashion-MNIST preset (`configs/mnist.toml`): 28×28×1, 16 channels,
    /// multipliers [1, 2, 4], 2 blocks per level, attention at 7×7 with 4 heads, dropout 0.1
    /// (1,110,977 parameters).
    pub fn mnist() -> Self {
        UNetConfig {
            image_size: 28,
            in_channels: 1,
            out_channels: 1,
            channels: 16,
            channel_mult: vec![1, 2, 4],
            num_res_blocks: 2,
            attn_resolutions: vec![7],
            num_heads: 4,
            dropout: 0.1,
            groups: 8,
            num_classes: None,
            head_dim: None,
        }
    }

    /// Checks every field against its range (docs/FORMATS.md §10); errors name the field
    /// under `model.`.
    pub fn validate(&self) -> Result<()> {
        let levels = self.channel_mult.len();
        check_range("model.channel_mult (levels)", levels, 1, 8)?;
        for (i, &m) in self.channel_mult.iter().enumerate() {
            check_range(&format!("model.channel_mult[{i}]"), m, 1, 64)?;
        }
        check_range("model.image_size", self.image_size, 1, 1024)?;
        check_range("model.in_channels", self.in_channels, 1, 64)?;
        check_range("model.out_channels", self.out_channels, 1, 64)?;
        check_range("model.channels", self.channels, 1, 4096)?;
        check_range("model.num_res_blocks", self.num_res_blocks, 1, 16)?;
        check_range("model.num_heads", self.num_heads, 1, 64)?;
        check_range("model.groups", self.groups, 1, 1024)?;
        if let Some(k) = self.num_classes {
            check_range("model.num_classes", k, 1, 100_000)?;
        }
        let unit = (0.0..1.0).contains(&self.dropout);
        check_field("model.dropout", self.dropout, unit, "in [0, 1)")?;
        for (i, &r) in self.attn_resolutions.iter().enumerate() {
            check_range(
                &format!("model.attn_resolutions[{i}]"),
                r,
                1,
                self.image_size,
            )?;
        }
        let down = 1i64 << (levels - 1);
        check_field(
            "model.image_size",
            self.image_size,
            self.image_size % down == 0,
            &format!("divisible by 2^{} for {levels} levels", levels - 1),
        )?;
        // every attention layer, the middle block's included, splits its channels into heads
        let (mc, mr) = self.mid();
        let attn = self
            .plan()
            .into_iter()
            .filter(|b| b.attn)
            .map(|b| (b.out, b.res));
        if let Some(d) = self.head_dim {
            check_range("model.head_dim", d, 1, 4096)?;
        }
        for (c, res) in attn.chain([(mc, mr)]) {
            let ok = match self.head_dim {
                Some(d) => c % d == 0,
                None => c % self.num_heads == 0,
            };
            check(ok, || {
                match self.head_dim {
                Some(d) => format!(
                    "field `model.head_dim` = {d}: the {c} channels of the attention at resolution {res} do not split into heads of {d}"
                ),
                None => format!(
                    "field `model.num_heads` = {}: the {c} channels of the attention at resolution {res} do not split into {} heads",
                    self.num_heads, self.num_heads
                ),
            }
            })?;
        }
        Ok(())
    }

    /// The heads of an attention layer of `c` channels.
    pub fn heads(&self, c: i64) -> i64 {
        self.head_dim.map_or(self.num_heads, |d| c / d)
    }

    fn emb_dim(&self) -> i64 {
        4 * self.channels
    }

    /// The blocks in order: down path, then up path (the middle is fixed).
    fn plan(&self) -> Vec<BlockSpec> {
        let ch = self.channels;
        let mut specs = vec![];
        let mut skips = vec![ch];
        let (mut cur, mut res) = (ch, self.image_size);
        let last = self.channel_mult.len() - 1;
        for (lvl, &m) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                let out = ch * m;
                let attn = self.attn_resolutions.contains(&res);
                specs.push(BlockSpec {
                    path: Path::Down,
                    inp: cur,
                    out,
                    res,
                    resample: Resample::None,
                    attn,
                });
                cur = out;
                skips.push(cur);
            }
            if lvl != last {
                specs.push(BlockSpec {
                    path: Path::Down,
                    inp: cur,
                    out: cur,
                    res,
                    resample: Resample::Down,
                    attn: false,
                });
                res /= 2;
                skips.push(cur);
            }
        }
        for (lvl, &m) in self.channel_mult.iter().enumerate().rev() {
            for _ in 0..=self.num_res_blocks {
                let skip = skips.pop().expect("one skip per up block");
                let out = ch * m;
                let attn = self.attn_resolutions.contains(&res);
                specs.push(BlockSpec {
                    path: Path::Up,
                    inp: cur + skip,
                    out,
                    res,
                    resample: Resample::None,
                    attn,
                });
                cur = out;
            }
            if lvl != 0 {
                specs.push(BlockSpec {
                    path: Path::Up,
                    inp: cur,
                    out: cur,
                    res,
                    resample: Resample::Up,
                    attn: false,
                });
                res *= 2;
            }
        }
        specs
    }

    /// Channels and resolution at the middle block.
    fn mid(&self) -> (i64, i64) {
        let levels = self.channel_mult.len() as u32;
        (
            self.channels * self.channel_mult[self.channel_mult.len() - 1],
            self.image_size >> (levels - 1),
        )
    }

    /// The middle block's ResBlocks (with attention), used for building and counting alike.
    fn mid_spec(&self) -> BlockSpec {
        let (mc, mr) = self.mid();
        BlockSpec {
            path: Path::Down,
            inp: mc,
            out: mc,
            res: mr,
            resample: Resample::None,
            attn: true,
        }
    }

    /// Parameter count, computed from the configuration alone.
    pub fn num_params(&self) -> u64 {
        let e = self.emb_dim();
        let res_params = |i: i64, o: i64| Resnet::num_params((i, o), e, true) as i64;
        let attn_params = |c: i64| -> i64 { 2 * c + (c * 3 * c + 3 * c) + (c * c + c) };
        let mut n = TimeEmbedding::num_params(self.channels, e) as i64;
        n += self.in_channels * self.channels * 9 + self.channels;
        for b in self.plan() {
            n += res_params(b.inp, b.out) + if b.attn { attn_params(b.out) } else { 0 };
        }
        let (mc, _) = self.mid();
        n += 2 * res_params(mc, mc) + attn_params(mc);
        let c_last = self.channels * self.channel_mult[0];
        n += 2 * c_last + c_last * self.out_channels * 9 + self.out_channels;
        n += self.num_classes.map_or(0, |k| (k + 1) * e);
        n as u64
    }

    /// Channel count at each TimeConv slot, in hook order.
    pub fn slot_channels(&self) -> Vec<i64> {
        let plan = self.plan();
        let (mc, _) = self.mid();
        let mut v: Vec<i64> = plan
            .iter()
            .filter(|b| b.path == Path::Down && b.resample == Resample::None)
            .map(|b| b.out)
            .collect();
        v.push(mc);
        v.extend(
            plan.iter()
                .filter(|b| b.path == Path::Up && b.resample == Resample::None)
                .map(|b| b.out),
        );
        v
    }

    /// FLOPs (2 × multiply–adds) of one forward pass of one sample.
    pub fn flops_per_sample(&self) -> f64 {
        let e = self.emb_dim() as f64;
        let conv = |i: i64, o: i64, k: i64, r: i64| 2.0 * (i * o * k * k) as f64 * (r * r) as f64;
        let res_flops = |b: &BlockSpec| -> f64 {
            let r_out = match b.resample {
                Resample::None => b.res,
                Resample::Down => b.res / 2,
                Resample::Up => b.res * 2,
            };
            conv(b.inp, b.out, 3, r_out)
                + conv(b.out, b.out, 3, r_out)
                + 2.0 * e * 2.0 * b.out as f64
                + if b.inp != b.out {
                    conv(b.inp, b.out, 1, r_out)
                } else {
                    0.0
                }
        };
        let attn_flops = |c: i64, r: i64| -> f64 {
            let hw = (r * r) as f64;
            conv(c, 3 * c, 1, r) + conv(c, c, 1, r) + 2.0 * 2.0 * hw * hw * c as f64
        };
        let mut f = conv(self.in_channels, self.channels, 3, self.image_size);
        for b in self.plan() {
            f += res_flops(&b)
                + if b.attn {
                    attn_flops(b.out, b.res)
                } else {
                    0.0
                };
        }
        let (mc, mr) = self.mid();
        let mid = self.mid_spec();
        f += 2.0 * res_flops(&mid) + attn_flops(mc, mr);
        f += conv(
            self.channels * self.channel_mult[0],
            self.out_channels,
            3,
            self.image_size,
        );
        let c = self.channels as f64;
        f + 2.0 * (c * 4.0 * c + 16.0 * c * c)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Down,
    Up,
}

#[derive(Debug, Clone, Copy)]
struct BlockSpec {
    path: Path,
    inp: i64,
    out: i64,
    res: i64,
    resample: Resample,
    attn: bool,
}

/// Group norm of dsno's U-Net: ε = 1e-6, the largest group count ≤ `groups` dividing `c`.
fn group_norm(p: nn::Path, groups: i64, c: i64) -> nn::GroupNorm {
    blocks::group_norm(p, blocks::dividing_groups(groups, c), c, 1e-6)
}

/// A stride-1 "same" convolution, zero-initialised if `zero`.
fn conv(p: nn::Path, i: i64, o: i64, k: i64, zero: bool) -> nn::Conv2D {
    let s = ConvSpec::same(k);
    blocks::conv(p, i, o, k, if zero { s.zero() } else { s })
}

/// The residual block of dsno's U-Net: FiLM conditioning, optional BigGAN-style resampling,
/// variables `norm1`, `conv1`, `emb`, `norm2`, `conv2`, `skip`.
fn res_block(p: nn::Path, spec: &BlockSpec, emb_dim: i64, groups: i64, dropout: f64) -> Resnet {
    let rs = ResnetSpec {
        groups,
        eps: 1e-6,
        emb_dim,
        scale_shift: true,
        zero_out: true,
        dropout,
        output_scale: 1.0,
        resample: spec.resample,
        emb_name: "emb",
        skip_name: "skip",
    };
    Resnet::new(p, (spec.inp, spec.out), &rs)
}

/// Multi-head self-attention over the pixels, with a residual connection.
#[derive(Debug)]
struct Attention {
    norm: nn::GroupNorm,
    qkv: nn::Conv2D,
    proj: nn::Conv2D,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, c: i64, heads: i64, groups: i64) -> Self {
        Attention {
            norm: group_norm(&p / "norm", groups, c),
            qkv: conv(&p / "qkv", c, 3 * c, 1, false),
            proj: conv(&p / "proj", c, c, 1, true),
            heads,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (b, c, hw) = (s[0], s[1], s[2] * s[3]);
        let d = c / self.heads;
        // [B, 3C, HW] → [3, B·heads, d, HW]: q, k, v each split into heads of d channels
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x))
            .reshape([b, 3, self.heads, d, hw]);
        let qkv = qkv
            .permute([1, 0, 2, 3, 4])
            .reshape([3, b * self.heads, d, hw]);
        let a = blocks::attend(&qkv.get(0), &qkv.get(1), &qkv.get(2)); // [BH, d, HW]
        x + self.proj.forward(&a.reshape(s.as_slice()))
    }
}

#[derive(Debug)]
struct Block {
    res: Resnet,
    attn: Option<Attention>,
    spec: BlockSpec,
}

impl Block {
    fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = self.res.forward(x, emb, train);
        match &self.attn {
            Some(a) => a.forward(&h),
            None => h,
        }
    }
}

/// The U-Net.
#[derive(Debug)]
pub struct UNet {
    cfg: UNetConfig,
    temb: TimeEmbedding,
    /// `[K + 1, E]`: the class embedding of a conditional U-Net (`class_emb.weight`).
    class_emb: Option<Tensor>,
    conv_in: nn::Conv2D,
    down: Vec<Block>,
    mid_res0: Resnet,
    mid_attn: Attention,
    mid_res1: Resnet,
    up: Vec<Block>,
    out_norm: nn::GroupNorm,
    out_conv: nn::Conv2D,
}

impl UNet {
    /// Creates the variables under `p` (names in the module docs).
    pub fn new(p: &nn::Path, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate()?;
        let e = cfg.emb_dim();
        let g = cfg.groups;
        let mk = |p: nn::Path, spec: BlockSpec| Block {
            res: res_block(&p / "res", &spec, e, g, cfg.dropout),
            attn: spec
                .attn
                .then(|| Attention::new(&p / "attn", spec.out, cfg.heads(spec.out), g)),
            spec,
        };
        let plan = cfg.plan();
        let down = plan
            .iter()
            .filter(|b| b.path == Path::Down)
            .enumerate()
            .map(|(i, s)| mk(p / "down" / i, *s))
            .collect();
        let up = plan
            .iter()
            .filter(|b| b.path == Path::Up)
            .enumerate()
            .map(|(i, s)| mk(p / "up" / i, *s))
            .collect();
        let (mc, _) = cfg.mid();
        let mid = cfg.mid_spec();
        let c0 = cfg.channels * cfg.channel_mult[0];
        Ok(UNet {
            cfg: cfg.clone(),
            temb: TimeEmbedding::new(&(p / "temb"), cfg.channels, e),
            class_emb: cfg
                .num_classes
                .map(|k| (p / CLASS_EMBEDDING).var("weight", &[k + 1, e], nn::Init::Const(0.0))),
            conv_in: conv(p / "conv_in", cfg.in_channels, cfg.channels, 3, false),
            down,
            mid_res0: res_block(p / "mid" / "res0", &mid, e, g, cfg.dropout),
            mid_attn: Attention::new(p / "mid" / "attn", mc, cfg.heads(mc), g),
            mid_res1: res_block(p / "mid" / "res1", &mid, e, g, cfg.dropout),
            up,
            out_norm: group_norm(p / "out" / "norm", g, c0),
            out_conv: conv(p / "out" / "conv", c0, cfg.out_channels, 3, true),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }
}

impl Backbone for UNet {
    fn config(&self) -> ModelConfig {
        ModelConfig::Unet(self.cfg.clone())
    }

    fn time_embedding(&self, t_in: &Tensor) -> Tensor {
        let e = self.temb.forward(t_in);
        match &self.class_emb {
            // the null class
            Some(table) => e + table.get(table.size()[0] - 1),
            None => e,
        }
    }

    fn embed(&self, t_in: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        match (&self.class_emb, labels) {
            (_, None) => Ok(self.time_embedding(t_in)),
            (None, Some(_)) => Err(crate::Error::invalid(
                "this U-Net is not class-conditional (model.num_classes): it takes no labels",
            )),
            (Some(table), Some(y)) => {
                let k = table.size()[0] - 1;
                let y = super::check_labels(y, t_in.size()[0], k, true)?;
                Ok(self.temb.forward(t_in) + table.index_select(0, &y.to_device(table.device())))
            }
        }
    }

    fn stem(&self, x: &Tensor) -> Tensor {
        self.conv_in.forward(x)
    }

    fn body(&self, h: Tensor, emb: &Tensor, train: bool, hook: &mut Hook) -> Tensor {
        // the residual blocks read the activated embedding
        let emb = &emb.silu();
        let mut slot = 0;
        let mut hs = vec![h.shallow_clone()];
        let mut h = h;
        for b in &self.down {
            h = b.forward(&h, emb, train);
            if b.spec.resample == Resample::None {
                h = hook(slot, h);
                slot += 1;
            }
            hs.push(h.shallow_clone());
        }
        h = self
            .mid_attn
            .forward(&self.mid_res0.forward(&h, emb, train));
        h = hook(slot, h);
        slot += 1;
        h = self.mid_res1.forward(&h, emb, train);
        for b in &self.up {
            if b.spec.resample == Resample::None {
                let skip = hs.pop().expect("one skip per up block");
                h = b.forward(&Tensor::cat(&[h, skip], 1), emb, train);
                h = hook(slot, h);
                slot += 1;
            } else {
                h = b.forward(&h, emb, train);
            }
        }
        self.out_conv.forward(&self.out_norm.forward(&h).silu())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Multi-head attention against a per-head loop over the packed qkv channels.
    #[test]
    fn attention_heads_are_packed_as_documented() {
        let vs = nn::VarStore::new(Device::Cpu);
        let (c, heads) = (8i64, 2i64);
        let att = Attention::new(vs.root() / "a", c, heads, 4);
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let r = v.randn_like() * 0.3;
                v.copy_(&r);
            }
        });
        let x = Tensor::randn([2, c, 3, 3], (Kind::Float, Device::Cpu));
        let got = att.forward(&x);
        let qkv = att
            .qkv
            .forward(&att.norm.forward(&x))
            .reshape([2, 3 * c, 9]);
        let d = c / heads;
        let mut outs = vec![];
        for h in 0..heads {
            let q = qkv.narrow(1, h * d, d);
            let k = qkv.narrow(1, c + h * d, d);
            let v = qkv.narrow(1, 2 * c + h * d, d);
            let w = (q.transpose(1, 2).bmm(&k) / (d as f64).sqrt()).softmax(-1, Kind::Float);
            outs.push(v.bmm(&w.transpose(1, 2)));
        }
        let want = &x
            + att
                .proj
                .forward(&Tensor::cat(&outs, 1).reshape([2, c, 3, 3]));
        assert!((got - want).abs().max().double_value(&[]) < 1e-5);
    }
}

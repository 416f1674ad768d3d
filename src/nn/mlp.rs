//! A residual MLP for 2-D toy data, with the U-Net's time embedding and FiLM conditioning.
//!
//! ```text
//! temb.dense0, temb.dense1                        time embedding (hidden → hidden → hidden)
//! input.{weight,bias}                             Linear (dim·(1 + 2F)) → hidden  (the stem), on
//!                                                 [z, sin(2^k π z / 4), cos(2^k π z / 4)], k < F = 6:
//!                                                 Fourier features let a small MLP resolve fine
//!                                                 structure of low-dimensional data
//! blocks.{i}: norm1, fc1, emb (→ scale, shift), norm2, fc2 (zero-initialised)
//!   h ← h + fc2(SiLU(LN(fc1(SiLU(LN(h))))·(1 + scale) + shift))   — one hook slot after each
//! out.fc                                          Linear hidden → dim on the residual stream
//! skip.gate, skip.fc                              a time-gated linear path from the stem:
//!   x̂ = out.fc(h) + skip.fc(h₀ ⊙ skip.gate(SiLU(emb)))   (h₀ = input(z), skip.fc zero-initialised)
//! The gated path lets the network pass z through at low noise (x̂ ≈ z) and shut it at high
//! noise (x̂ ≈ E[x]), which an x-predicting MLP otherwise learns slowly.
//! ```
use super::embedding::TimeEmbedding;
use super::{Backbone, Hook, ModelConfig};
use crate::error::{check_field, check_range};
use crate::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

/// Octaves of the input's Fourier features.
const FOURIER: i64 = 6;

/// `[z, sin(2^k π z/4), cos(2^k π z/4)]` for k < [`FOURIER`], concatenated along the last axis.
fn fourier_features(x: &Tensor) -> Tensor {
    let mut parts = vec![x.shallow_clone()];
    for k in 0..FOURIER {
        let a = x * (std::f64::consts::PI / 4.0 * (1u64 << k) as f64);
        parts.push(a.sin());
        parts.push(a.cos());
    }
    Tensor::cat(&parts, -1)
}

/// MLP hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    /// Data dimension.
    pub dim: i64,
    pub hidden: i64,
    pub blocks: usize,
    pub dropout: f64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            dim: 2,
            hidden: 128,
            blocks: 3,
            dropout: 0.0,
        }
    }
}

impl MlpConfig {
    /// One hook slot after every residual block, `hidden` channels each.
    pub fn slot_channels(&self) -> Vec<i64> {
        vec![self.hidden; self.blocks]
    }

    /// Multiply–add FLOPs (×2) of one forward pass of one sample.
    pub fn flops_per_sample(&self) -> f64 {
        let (d, h) = (self.dim as f64, self.hidden as f64);
        2.0 * (d * h + self.blocks as f64 * (2.0 * h * h + 2.0 * h * h) + 2.0 * h * d + 3.0 * h * h)
    }

    /// Checks every field against its range (docs/FORMATS.md §10).
    pub fn validate(&self) -> Result<()> {
        check_range("model.dim", self.dim, 1, 64)?;
        check_range("model.hidden", self.hidden, 2, 65_536)?;
        check_range("model.blocks", self.blocks, 0, 64)?;
        let unit = (0.0..1.0).contains(&self.dropout);
        check_field("model.dropout", self.dropout, unit, "in [0, 1)")
    }

    pub fn num_params(&self) -> u64 {
        let (d, h) = (self.dim, self.hidden);
        let block = 2 * h + (h * h + h) + (h * 2 * h + 2 * h) + 2 * h + (h * h + h);
        let skip = (h * h + h) + (h * d + d);
        (TimeEmbedding::num_params(h, h) as i64
            + (d * (1 + 2 * FOURIER) * h + h)
            + self.blocks as i64 * block
            + (h * d + d)
            + skip) as u64
    }
}

#[derive(Debug)]
struct MlpBlock {
    norm1: nn::LayerNorm,
    fc1: nn::Linear,
    emb: nn::Linear,
    norm2: nn::LayerNorm,
    fc2: nn::Linear,
}

/// The MLP backbone.
#[derive(Debug)]
pub struct Mlp {
    cfg: MlpConfig,
    temb: TimeEmbedding,
    input: nn::Linear,
    blocks: Vec<MlpBlock>,
    out_fc: nn::Linear,
    skip_gate: nn::Linear,
    skip_fc: nn::Linear,
}

impl Mlp {
    pub fn new(p: &nn::Path, cfg: &MlpConfig) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden;
        let ln = |p: nn::Path| nn::layer_norm(p, vec![h], Default::default());
        let zero = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let blocks = (0..cfg.blocks)
            .map(|i| {
                let b = p / "blocks" / i;
                MlpBlock {
                    norm1: ln(&b / "norm1"),
                    fc1: nn::linear(&b / "fc1", h, h, Default::default()),
                    emb: nn::linear(&b / "emb", h, 2 * h, Default::default()),
                    norm2: ln(&b / "norm2"),
                    fc2: nn::linear(&b / "fc2", h, h, zero),
                }
            })
            .collect();
        Ok(Mlp {
            cfg: cfg.clone(),
            temb: TimeEmbedding::new(&(p / "temb"), h, h),
            input: nn::linear(
                p / "input",
                cfg.dim * (1 + 2 * FOURIER),
                h,
                Default::default(),
            ),
            blocks,
            out_fc: nn::linear(p / "out" / "fc", h, cfg.dim, Default::default()),
            skip_gate: nn::linear(p / "skip" / "gate", h, h, Default::default()),
            skip_fc: nn::linear(p / "skip" / "fc", h, cfg.dim, zero),
        })
    }
}

impl Backbone for Mlp {
    fn config(&self) -> ModelConfig {
        ModelConfig::Mlp(self.cfg.clone())
    }

    fn time_embedding(&self, t_in: &Tensor) -> Tensor {
        self.temb.forward(t_in)
    }

    fn stem(&self, x: &Tensor) -> Tensor {
        self.input.forward(&fourier_features(x))
    }

    fn body(&self, h: Tensor, emb: &Tensor, train: bool, hook: &mut Hook) -> Tensor {
        let h0 = h.shallow_clone();
        let mut h = h;
        let e = emb.silu();
        for (i, b) in self.blocks.iter().enumerate() {
            let ss = b.emb.forward(&e);
            let (scale, shift) = (
                ss.narrow(1, 0, self.cfg.hidden),
                ss.narrow(1, self.cfg.hidden, self.cfg.hidden),
            );
            let r = b.fc1.forward(&b.norm1.forward(&h).silu());
            let r = (b.norm2.forward(&r) * (scale + 1.0) + shift).silu();
            h = hook(i, h + b.fc2.forward(&r.dropout(self.cfg.dropout, train)));
        }
        self.out_fc.forward(&h) + self.skip_fc.forward(&(h0 * self.skip_gate.forward(&e)))
    }
}

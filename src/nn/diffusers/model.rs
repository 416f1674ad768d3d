//! `UNet2DModel` itself: its variables under diffusers' names and its forward pass as a
//! [`Backbone`].
use super::blocks::{conv, resnet, Attention, DownBlock, Layer, Mid, UpBlock};
use super::config::{BlockPlan, DiffusersUNetConfig};
use super::CLASS_EMBEDDING;
use crate::nn::blocks;
use crate::nn::{Backbone, Hook, ModelConfig};
use crate::{Error, Result};
use tch::{nn, nn::Module, Tensor};

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
        crate::nn::embedding::sinusoidal_features(
            timesteps,
            c.block_out_channels[0],
            c.freq_shift,
            c.flip_sin_to_cos,
        )
    }
}

impl Backbone for DiffusersUNet {
    fn config(&self) -> ModelConfig {
        ModelConfig::Diffusers(Box::new(self.cfg.clone()))
    }

    /// The time embedding alone (a class-conditional model's labelled paths go through
    /// [`Backbone::embed`], which refuses to run it without labels).
    fn time_embedding(&self, t_in: &Tensor) -> Tensor {
        self.linear_2
            .forward(&self.linear_1.forward(&self.time_features(t_in)).silu())
    }

    /// The time (and class) embedding `[N, E]`; conditional models need `labels` `[N]`.
    fn embed(&self, timesteps: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let emb = self.time_embedding(timesteps);
        match (&self.class_embedding, labels) {
            (Some(table), Some(y)) => {
                // diffusers' class embedding has no null class: labels 0 … K − 1 only
                let y = crate::nn::check_labels(y, timesteps.size()[0], table.size()[0], false)?;
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

    fn body(&self, h: Tensor, emb: &Tensor, train: bool, hook: &mut Hook) -> Tensor {
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
}

//! Networks: the U-Net of the teacher ([`unet`]), an MLP for 2-D toy data ([`mlp`]), their
//! time embedding ([`embedding`]), DSNO's Fourier temporal layer ([`timeconv`]), the
//! imported [`diffusers`] `UNet2DModel`, and the networks of the metrics and losses: the
//! feature [`classifier`], [`lpips`] and the FID [`inception`] network.
//!
//! A [`Backbone`] is split so that the operator can run it on M time slots at once and insert a
//! TimeConv after every non-resampling block: `stem` (the input layer), `body` (everything
//! after it) with a hook called after each of those blocks, and `embed` (the time embedding).
pub mod blocks;
pub mod classifier;
pub mod diffusers;
pub mod embedding;
pub mod inception;
pub mod lpips;
pub mod mlp;
pub mod timeconv;
pub mod unet;

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// The hook of [`Backbone::body`]: called with each hook slot and its features, it returns the
/// features to go on with (the operator's TimeConv; the identity for a plain pass).
pub type Hook<'a> = dyn FnMut(usize, Tensor) -> Tensor + 'a;

/// A network split into stem, body (with hook slots) and time embedding.
pub trait Backbone: Send {
    /// The configuration it was built from (its shapes, slots, cost and classes).
    fn config(&self) -> ModelConfig;
    /// The time embedding of a batch of network times `t_in`, shape `[N]` → `[N, E]`, without
    /// labels (a class-conditional U-Net adds its null class; the probes and benchmarks use it).
    fn time_embedding(&self, t_in: &Tensor) -> Tensor;
    /// The input layer (the U-Net's `conv_in`, the MLP's input projection).
    fn stem(&self, x: &Tensor) -> Tensor;
    /// Everything after the stem. `hook(slot, h)` is called on the output of every
    /// non-resampling block, in order; the teacher passes the identity.
    fn body(&self, h: Tensor, emb: &Tensor, train: bool, hook: &mut Hook) -> Tensor;

    /// The channel count at each hook slot.
    fn slot_channels(&self) -> Vec<i64> {
        self.config().slot_channels()
    }
    /// Shape of one input sample, e.g. `[1, 28, 28]` or `[2]`.
    fn sample_shape(&self) -> Vec<i64> {
        self.config().sample_shape()
    }
    /// Multiply–add FLOPs (×2) of one forward pass of one sample (convolutions, linear layers and
    /// attention matmuls; norms and activations are not counted).
    fn flops_per_sample(&self) -> f64 {
        self.config().flops_per_sample()
    }
    /// `Some(K)` for a class-conditional network (labels 0 … K − 1, and, for dsno's U-Net, K:
    /// the null class of classifier-free guidance, meaning "no label"); `None` otherwise.
    fn num_classes(&self) -> Option<i64> {
        self.config().num_classes()
    }

    /// The embedding `[N, E]` of network times `t_in` `[N]` with class `labels` `[N]` (int64)
    /// added; `None` is the null class. An unconditional network refuses labels.
    fn embed(&self, t_in: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        match labels {
            None => Ok(self.time_embedding(t_in)),
            Some(_) => Err(Error::invalid(
                "this network is not class-conditional: it takes no labels",
            )),
        }
    }

    /// The plain network `f(x, t_in, y)`: class `labels` `[N]` for a class-conditional network
    /// (`None`: the null class).
    fn forward(
        &self,
        x: &Tensor,
        t_in: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let emb = self.embed(t_in, labels)?;
        Ok(self.body(self.stem(x), &emb, train, &mut |_, h| h))
    }
}

pub use crate::denoiser::check_labels;

/// What a variable of a model is for: how distillation and fine-tuning choose what to copy from
/// another model, instead of matching name prefixes at the call site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The backbone's own weights (shared by a teacher and its students).
    Backbone,
    /// The class embedding of a class-conditional backbone (absent from its unconditional
    /// version).
    ClassEmbedding,
    /// The operator's temporal layers (absent from a teacher).
    TimeConv,
}

/// Which backbone, with its configuration (stored in every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    Unet(unet::UNetConfig),
    Mlp(mlp::MlpConfig),
    /// diffusers' `UNet2DModel` (an imported teacher).
    Diffusers(Box<diffusers::DiffusersUNetConfig>),
}

impl ModelConfig {
    /// Builds the backbone's variables under `path`.
    pub fn build(&self, path: &nn::Path) -> Result<Box<dyn Backbone>> {
        self.validate()?;
        let bytes = 4.0 * self.num_params() as f64;
        crate::util::memory::check_memory("the model's parameters", bytes)?;
        Ok(match self {
            ModelConfig::Unet(c) => Box::new(unet::UNet::new(path, c)?),
            ModelConfig::Mlp(c) => Box::new(mlp::Mlp::new(path, c)?),
            ModelConfig::Diffusers(c) => Box::new(diffusers::DiffusersUNet::new(path, c)?),
        })
    }

    /// Checks every field against its range (docs/FORMATS.md §10).
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Unet(c) => c.validate(),
            ModelConfig::Mlp(c) => c.validate(),
            ModelConfig::Diffusers(c) => c.validate(),
        }
    }

    /// The parameter count, computed without allocating.
    pub fn num_params(&self) -> u64 {
        match self {
            ModelConfig::Unet(c) => c.num_params(),
            ModelConfig::Mlp(c) => c.num_params(),
            ModelConfig::Diffusers(c) => c.num_params(),
        }
    }

    /// Shape of one data sample.
    pub fn sample_shape(&self) -> Vec<i64> {
        match self {
            ModelConfig::Unet(c) => vec![c.in_channels, c.image_size, c.image_size],
            ModelConfig::Mlp(c) => vec![c.dim],
            ModelConfig::Diffusers(c) => vec![c.in_channels, c.sample_size, c.sample_size],
        }
    }

    /// The channel count at each hook slot of the network.
    pub fn slot_channels(&self) -> Vec<i64> {
        match self {
            ModelConfig::Unet(c) => c.slot_channels(),
            ModelConfig::Mlp(c) => c.slot_channels(),
            ModelConfig::Diffusers(c) => c.slot_channels(),
        }
    }

    /// Multiply–add FLOPs (×2) of one forward pass of one sample.
    pub fn flops_per_sample(&self) -> f64 {
        match self {
            ModelConfig::Unet(c) => c.flops_per_sample(),
            ModelConfig::Mlp(c) => c.flops_per_sample(),
            ModelConfig::Diffusers(c) => c.flops_per_sample(),
        }
    }

    /// The channels of the network's output (the data dimension of an MLP), and the field that
    /// sets them.
    pub fn output_channels(&self) -> (i64, &'static str) {
        match self {
            ModelConfig::Unet(c) => (c.out_channels, "model.out_channels"),
            ModelConfig::Mlp(c) => (c.dim, "model.dim"),
            ModelConfig::Diffusers(c) => (c.out_channels, "model.out_channels"),
        }
    }

    /// `Some(K)` for a class-conditional model of K classes.
    pub fn num_classes(&self) -> Option<i64> {
        match self {
            ModelConfig::Unet(c) => c.num_classes,
            ModelConfig::Mlp(_) => None,
            ModelConfig::Diffusers(c) => c.num_class_embeds,
        }
    }

    /// The role of the backbone's variable `name` ([`Role::Backbone`] or
    /// [`Role::ClassEmbedding`]); the operator adds [`Role::TimeConv`].
    pub fn role(&self, name: &str) -> Role {
        let class = match self {
            ModelConfig::Unet(_) => unet::CLASS_EMBEDDING,
            ModelConfig::Diffusers(_) => diffusers::CLASS_EMBEDDING,
            ModelConfig::Mlp(_) => return Role::Backbone,
        };
        match name.strip_prefix(class) {
            Some(rest) if rest.is_empty() || rest.starts_with('.') => Role::ClassEmbedding,
            _ => Role::Backbone,
        }
    }

    /// The same backbone without class conditioning.
    pub fn unconditional(&self) -> ModelConfig {
        match self {
            ModelConfig::Unet(c) => ModelConfig::Unet(crate::nn::unet::UNetConfig {
                num_classes: None,
                ..c.clone()
            }),
            ModelConfig::Diffusers(c) => {
                ModelConfig::Diffusers(Box::new(crate::nn::diffusers::DiffusersUNetConfig {
                    num_class_embeds: None,
                    ..(**c).clone()
                }))
            }
            ModelConfig::Mlp(c) => ModelConfig::Mlp(c.clone()),
        }
    }

    /// Sets the dropout rate.
    pub fn set_dropout(&mut self, p: f64) {
        match self {
            ModelConfig::Unet(c) => c.dropout = p,
            ModelConfig::Mlp(c) => c.dropout = p,
            ModelConfig::Diffusers(c) => c.dropout = p,
        }
    }
}

pub(crate) fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::invalid(msg()))
    }
}

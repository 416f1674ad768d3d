//! The DSNO operator (docs/METHOD.md §6): the teacher's backbone with a TimeConv after every
//! non-resampling block, run on M time slots at once, and [`Generator`], the one-step
//! generator type shared by DSNO and the knowledge-distillation (KD) baseline.
//!
//! `h0 = stem(x_T)` is repeated M times into the `[B·M, …]` batch (b-major); slot m gets the
//! time embedding of its output time t_m; after each hooked block the features are viewed as
//! `[B, M, C, …]` and mixed along M by that slot's TimeConv. The output `[B, M, …]` holds the
//! predictions x̂(t_1) … x̂(t_M); the last is the sample.
//!
//! Variable names: the backbone's (identical to the teacher's, so a teacher checkpoint loads
//! into it) and `timeconv.{i}.weight` for the i-th slot.
use crate::nn::timeconv::{DftPath, TimeConv};
use crate::nn::{Backbone, ModelConfig};
use crate::schedule::Schedule;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use tch::{nn, Kind, Tensor};

/// What an operator is, beyond its backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorConfig {
    pub backbone: ModelConfig,
    /// Output times t_1 > … > t_M (t_M = 0 is the sample).
    pub times: Vec<f64>,
    /// Fourier modes kept by every TimeConv (the authors: 2).
    pub modes: i64,
}

/// Backbone + TimeConv layers.
pub struct Operator {
    pub cfg: OperatorConfig,
    pub backbone: Box<dyn Backbone>,
    pub timeconvs: Vec<TimeConv>,
    pub schedule: Schedule,
}

impl Operator {
    /// Creates the variables under `p` (backbone at `p`, TimeConv under `p/timeconv`).
    pub fn new(p: &nn::Path, cfg: &OperatorConfig, schedule: Schedule) -> Result<Self> {
        if cfg.times.is_empty() {
            return Err(Error::invalid("operator: no output times"));
        }
        let backbone = cfg.backbone.build(p)?;
        let m = cfg.times.len() as i64;
        let timeconvs = backbone
            .slot_channels()
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let path = DftPath::fastest_on(p.device());
                TimeConv::new(&(p / "timeconv" / i), c, cfg.modes, m, path)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Operator {
            cfg: cfg.clone(),
            backbone,
            timeconvs,
            schedule,
        })
    }

    /// Number of output slots M.
    pub fn slots(&self) -> i64 {
        self.cfg.times.len() as i64
    }

    /// Chooses the DFT implementation of every TimeConv.
    pub fn set_dft_path(&mut self, path: DftPath) {
        for tc in &mut self.timeconvs {
            tc.set_path(path);
        }
    }

    /// `x_T` `[B, …]` → predictions at the M output times `[B, M, …]` (a class-conditional
    /// backbone with its null class).
    pub fn forward(&self, x_t: &Tensor, train: bool) -> Tensor {
        let emb = self
            .backbone
            .embed(&self.slot_times(x_t))
            .repeat([x_t.size()[0], 1]);
        self.forward_emb(x_t, &emb, train)
    }

    /// [`Operator::forward`] for class `labels` `[B]` (`None`: the null class): every slot of
    /// sample b gets the embedding of its output time plus that of class `labels[b]`.
    pub fn forward_labels(
        &self,
        x_t: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let Some(y) = labels else {
            return Ok(self.forward(x_t, train));
        };
        let (b, m) = (x_t.size()[0], self.slots());
        if y.size() != [b] {
            return Err(Error::invalid(format!(
                "labels of shape {:?} for a batch of {b}",
                y.size()
            )));
        }
        let t = self.slot_times(x_t).repeat([b]);
        let y = y
            .to_device(x_t.device())
            .repeat_interleave_self_int(m, 0, None);
        let emb = self.backbone.embed_labels(&t, Some(&y))?;
        Ok(self.forward_emb(x_t, &emb, train))
    }

    /// The network times of the M output times `[M]`, on `x`'s device (copied there without
    /// waiting for it).
    fn slot_times(&self, x: &Tensor) -> Tensor {
        let t_in: Vec<f32> = self
            .cfg
            .times
            .iter()
            .map(|&t| self.schedule.t_input(t) as f32)
            .collect();
        crate::device::upload_slice(&t_in, x.device())
    }

    /// The pass with the embedding `[B·M, E]` (b-major) given.
    fn forward_emb(&self, x_t: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let b = x_t.size()[0];
        let m = self.slots();
        let h0 = self.backbone.stem(x_t);
        let rest: Vec<i64> = h0.size()[1..].to_vec();
        let expand: Vec<i64> = [b, m].iter().chain(rest.iter()).copied().collect();
        let h0 = h0
            .unsqueeze(1)
            .expand(expand.as_slice(), false)
            .reshape([&[b * m][..], &rest[..]].concat());
        let mut hook = |slot: usize, h: Tensor| -> Tensor {
            let s = h.size();
            let split: Vec<i64> = [b, m].iter().chain(s[1..].iter()).copied().collect();
            self.timeconvs[slot]
                .forward(&h.reshape(split.as_slice()))
                .reshape(s.as_slice())
        };
        let out = self.backbone.body(h0, emb, train, &mut hook);
        let s = out.size();
        out.reshape([&[b, m][..], &s[1..]].concat())
    }

    /// The sample: the last slot of [`Operator::forward`], `[B, …]`.
    pub fn sample(&self, x_t: &Tensor) -> Tensor {
        self.forward(x_t, false).select(1, self.slots() - 1)
    }

    /// Parameter count (backbone + TimeConv).
    pub fn num_params(&self) -> u64 {
        self.cfg.backbone.num_params()
            + self
                .backbone
                .slot_channels()
                .iter()
                .map(|&c| TimeConv::num_params(c, self.cfg.modes))
                .sum::<u64>()
    }

    /// FLOPs of one forward pass per sample: M backbone passes (minus M − 1 stems, shared)
    /// plus the TimeConv layers.
    pub fn flops_per_sample(&self) -> f64 {
        let m = self.slots();
        let per_slot = self.backbone.flops_per_sample();
        let shapes = self.slot_positions();
        let tc: f64 = self
            .backbone
            .slot_channels()
            .iter()
            .zip(shapes)
            .map(|(&c, p)| TimeConv::flops(c, self.cfg.modes, m, p))
            .sum();
        m as f64 * per_slot + tc
    }

    /// Spatial positions at each hook slot, found by one probe forward pass on one sample.
    fn slot_positions(&self) -> Vec<i64> {
        let _g = tch::no_grad_guard();
        let shape: Vec<i64> = [1]
            .iter()
            .chain(self.backbone.sample_shape().iter())
            .copied()
            .collect();
        let dev = self
            .timeconvs
            .first()
            .map(|t| t.weight.device())
            .unwrap_or(tch::Device::Cpu);
        let x = Tensor::zeros(shape.as_slice(), (Kind::Float, dev));
        let emb = self.backbone.embed(&Tensor::zeros([1], (Kind::Float, dev)));
        let mut out = vec![];
        let mut hook = |_: usize, h: Tensor| {
            out.push(h.size()[2..].iter().product::<i64>());
            h
        };
        let _ = self
            .backbone
            .body(self.backbone.stem(&x), &emb, false, &mut hook);
        out
    }
}

/// Which one-step generator: the DSNO operator or the KD baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The operator: x_T → the teacher's x̂ at all M output times (Zheng et al. 2023).
    #[default]
    Dsno,
    /// Knowledge distillation (Luhman & Luhman 2021): the bare backbone at the last output time,
    /// x_T → the sample.
    Kd,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Dsno => "DSNO",
            Method::Kd => "KD",
        })
    }
}

/// A one-step generator: noise x_T `[B, …]` → outputs `[B, M', …]` in one forward pass, the last
/// of which is the sample (DSNO: M' = M output times; KD: M' = 1).
pub enum Generator {
    Dsno(Box<Operator>),
    Kd {
        backbone: Box<dyn Backbone>,
        /// The network time input of the last output time.
        t_in: f64,
    },
}

impl Generator {
    /// Creates the variables of a `method` generator under `p`: the backbone at `p` (named as
    /// the teacher's, so a teacher checkpoint initialises it) and, for DSNO, the TimeConv
    /// layers of [`Operator::new`].
    pub fn new(
        p: &nn::Path,
        method: Method,
        cfg: &OperatorConfig,
        schedule: Schedule,
    ) -> Result<Self> {
        Ok(match method {
            Method::Dsno => Generator::Dsno(Box::new(Operator::new(p, cfg, schedule)?)),
            Method::Kd => {
                let t0 = *cfg
                    .times
                    .last()
                    .ok_or_else(|| Error::invalid("generator: no output times"))?;
                Generator::Kd {
                    backbone: cfg.backbone.build(p)?,
                    t_in: schedule.t_input(t0),
                }
            }
        })
    }

    pub fn method(&self) -> Method {
        match self {
            Generator::Dsno(_) => Method::Dsno,
            Generator::Kd { .. } => Method::Kd,
        }
    }

    /// Outputs per sample (M for DSNO, 1 for KD).
    pub fn slots(&self) -> i64 {
        match self {
            Generator::Dsno(op) => op.slots(),
            Generator::Kd { .. } => 1,
        }
    }

    /// All outputs `[B, M', …]` of float noise `x_t` `[B, …]`.
    pub fn forward(&self, x_t: &Tensor, train: bool) -> Tensor {
        match self {
            Generator::Dsno(op) => op.forward(x_t, train),
            Generator::Kd { backbone, t_in } => {
                let t = Tensor::full([x_t.size()[0]], *t_in, (Kind::Float, x_t.device()));
                backbone.forward_t(x_t, &t, train).unsqueeze(1)
            }
        }
    }

    /// [`Generator::forward`] for class `labels` `[B]` (`None`: the null class); labels given
    /// to an unconditional generator are an error.
    pub fn forward_labels(
        &self,
        x_t: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        match self {
            Generator::Dsno(op) => op.forward_labels(x_t, labels, train),
            Generator::Kd { backbone, t_in } => {
                let t = Tensor::full([x_t.size()[0]], *t_in, (Kind::Float, x_t.device()));
                let y = labels.map(|y| y.to_device(x_t.device()));
                Ok(backbone
                    .forward_labels(x_t, &t, y.as_ref(), train)?
                    .unsqueeze(1))
            }
        }
    }
}

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
use crate::nn::{Backbone, ModelConfig, Role};
use crate::schedule::{OutputTimes, Schedule};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use tch::{nn, Kind, Tensor};

/// The variable path of the operator's TimeConv layers (`timeconv.{i}.weight`).
pub const TIMECONV: &str = "timeconv";

/// The role of variable `name` of an operator (or a bare backbone) on `backbone`.
pub fn role(backbone: &ModelConfig, name: &str) -> Role {
    match name.strip_prefix(TIMECONV) {
        Some(rest) if rest.starts_with('.') => Role::TimeConv,
        _ => backbone.role(name),
    }
}

/// What an operator is, beyond its backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorConfig {
    pub backbone: ModelConfig,
    /// Output times t_1 > … > t_M (t_M = 0 is the sample).
    pub times: OutputTimes,
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
                TimeConv::new(&(p / TIMECONV / i), c, cfg.modes, m, path)
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

    /// `x_T` `[B, …]` → predictions at the M output times `[B, M, …]`, for class `labels` `[B]`
    /// of a class-conditional backbone (`None`: the null class): every slot of sample b gets the
    /// embedding of its output time plus that of class `labels[b]`.
    pub fn forward(&self, x_t: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let (b, m) = (x_t.size()[0], self.slots());
        let Some(y) = labels else {
            let emb = self
                .backbone
                .embed(&self.slot_times(x_t), None)?
                .repeat([b, 1]);
            return Ok(self.forward_emb(x_t, &emb, train));
        };
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
        let emb = self.backbone.embed(&t, Some(&y))?;
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
    pub fn sample(&self, x_t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        Ok(self
            .forward(x_t, labels, false)?
            .select(1, self.slots() - 1))
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
        let emb = self
            .backbone
            .time_embedding(&Tensor::zeros([1], (Kind::Float, dev)));
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

/// A distillation method, by the name written in distillation configs (`method`) and in the
/// checkpoints of its students (`kind`): `dsno`, `kd`, or any other method registered in
/// `train::objective`. This layer knows a method by name only; what it trains is the objective's
/// business, what it runs is its [`Architecture`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Method(Cow<'static, str>);

impl Method {
    /// The operator: x_T → the teacher's x̂ at all M output times (Zheng et al. 2023).
    pub const DSNO: Method = Method(Cow::Borrowed("dsno"));
    /// Knowledge distillation (Luhman & Luhman 2021): the bare backbone at the last output time,
    /// x_T → the sample.
    pub const KD: Method = Method(Cow::Borrowed("kd"));

    /// A method name: 1 to 32 characters of `a`–`z`, `0`–`9` and `-`, starting with a letter;
    /// `teacher` is a checkpoint kind of its own.
    pub fn new(name: &str) -> Result<Method> {
        let ok = (1..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name != "teacher";
        if !ok {
            return Err(Error::invalid(format!(
                "{name:?} is not a method name (1 to 32 of a–z, 0–9 and '-', starting with a letter; not \"teacher\")"
            )));
        }
        Ok(Method(Cow::Owned(name.to_string())))
    }

    /// A method name known to be valid, for registrations (`train::objective`), which a test
    /// checks against [`Method::new`].
    pub const fn registered(name: &'static str) -> Method {
        Method(Cow::Borrowed(name))
    }

    /// The name as written in files (`dsno`, `kd`).
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Default for Method {
    fn default() -> Self {
        Method::DSNO
    }
}

impl TryFrom<String> for Method {
    type Error = Error;
    fn try_from(s: String) -> Result<Method> {
        Method::new(&s)
    }
}

impl From<Method> for String {
    fn from(m: Method) -> String {
        m.0.into_owned()
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Method> {
        Method::new(s)
    }
}

impl fmt::Display for Method {
    /// The display name: the name in capitals (`DSNO`, `KD`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_uppercase())
    }
}

/// What a one-step generator runs: the network a method trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// The DSNO operator (backbone + TimeConv): M outputs, at the store's output times.
    Operator,
    /// The bare backbone at the last output time: one output, the sample.
    Backbone,
}

enum Net {
    Operator(Box<Operator>),
    Backbone {
        backbone: Box<dyn Backbone>,
        /// The network time input of the last output time.
        t_in: f64,
    },
}

/// A one-step generator: noise x_T `[B, …]` → outputs `[B, M', …]` in one forward pass, the last
/// of which is the sample (an operator: M' = M output times; a bare backbone: M' = 1), with the
/// method that trained it.
pub struct Generator {
    method: Method,
    net: Net,
}

impl Generator {
    /// Creates the variables of a generator of `architecture` under `p`: the backbone at `p`
    /// (named as the teacher's, so a teacher checkpoint initialises it) and, for an operator,
    /// the TimeConv layers of [`Operator::new`].
    pub fn new(
        p: &nn::Path,
        method: Method,
        architecture: Architecture,
        cfg: &OperatorConfig,
        schedule: Schedule,
    ) -> Result<Self> {
        let net = match architecture {
            Architecture::Operator => Net::Operator(Box::new(Operator::new(p, cfg, schedule)?)),
            Architecture::Backbone => {
                let t0 = *cfg
                    .times
                    .last()
                    .ok_or_else(|| Error::invalid("generator: no output times"))?;
                Net::Backbone {
                    backbone: cfg.backbone.build(p)?,
                    t_in: schedule.t_input(t0),
                }
            }
        };
        Ok(Generator { method, net })
    }

    /// The method that trained it.
    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn architecture(&self) -> Architecture {
        match self.net {
            Net::Operator(_) => Architecture::Operator,
            Net::Backbone { .. } => Architecture::Backbone,
        }
    }

    /// Outputs per sample (M for an operator, 1 for a bare backbone).
    pub fn slots(&self) -> i64 {
        match &self.net {
            Net::Operator(op) => op.slots(),
            Net::Backbone { .. } => 1,
        }
    }

    /// All outputs `[B, M', …]` of float noise `x_t` `[B, …]`, for class `labels` `[B]` of a
    /// class-conditional generator (`None`: the null class); labels given to an unconditional
    /// generator are an error.
    pub fn forward(&self, x_t: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        match &self.net {
            Net::Operator(op) => op.forward(x_t, labels, train),
            Net::Backbone { backbone, t_in } => {
                let t = Tensor::full([x_t.size()[0]], *t_in, (Kind::Float, x_t.device()));
                let y = labels.map(|y| y.to_device(x_t.device()));
                Ok(backbone.forward(x_t, &t, y.as_ref(), train)?.unsqueeze(1))
            }
        }
    }
}

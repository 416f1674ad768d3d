//! Time conditioning (docs/METHOD.md §2): the network time `t_in = atan(e^{−λ/2})/(π/2)`, a
//! sinusoidal embedding of `1000·t_in`, then Dense → SiLU → Dense.
use tch::{nn, nn::Module, Kind, Tensor};

/// Sinusoidal embedding (Vaswani et al.; iDDPM layout): `[cos(s·f_i), sin(s·f_i)]` with
/// `f_i = 10000^{−i/half}`, `i < half = dim/2`; `steps` has shape `[N]`, the result `[N, dim]`.
pub fn sinusoidal(steps: &Tensor, dim: i64) -> Tensor {
    sinusoidal_features(steps, dim, 0.0, true)
}

/// The sinusoidal features of both U-Nets (diffusers' `Timesteps`): `f_i = 10000^{−i/(half −
/// shift)}`, `[cos, sin]` when `cos_first` (diffusers' `flip_sin_to_cos`), else `[sin, cos]`;
/// an odd `dim` gets a zero column last.
pub fn sinusoidal_features(steps: &Tensor, dim: i64, shift: f64, cos_first: bool) -> Tensor {
    let half = dim / 2;
    let freqs = (Tensor::arange(half, (Kind::Float, steps.device()))
        * (-(10000f64.ln()) / (half as f64 - shift)))
        .exp();
    let args = steps.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let emb = match cos_first {
        true => Tensor::cat(&[args.cos(), args.sin()], 1),
        false => Tensor::cat(&[args.sin(), args.cos()], 1),
    };
    if dim % 2 == 1 {
        Tensor::cat(
            &[
                emb,
                Tensor::zeros([steps.size()[0], 1], (Kind::Float, steps.device())),
            ],
            1,
        )
    } else {
        emb
    }
}

/// `Dense(ch → dim) → SiLU → Dense(dim → dim)` on the sinusoidal embedding of `1000·t_in`.
/// Variables: `dense0.{weight,bias}`, `dense1.{weight,bias}`.
#[derive(Debug)]
pub struct TimeEmbedding {
    ch: i64,
    dense0: nn::Linear,
    dense1: nn::Linear,
}

impl TimeEmbedding {
    pub fn new(p: &nn::Path, ch: i64, dim: i64) -> Self {
        TimeEmbedding {
            ch,
            dense0: nn::linear(p / "dense0", ch, dim, Default::default()),
            dense1: nn::linear(p / "dense1", dim, dim, Default::default()),
        }
    }

    /// `[N]` network times in [0, 1] → `[N, dim]`.
    pub fn forward(&self, t_in: &Tensor) -> Tensor {
        let e = sinusoidal(&(t_in * 1000.0), self.ch);
        self.dense1.forward(&self.dense0.forward(&e).silu())
    }

    /// Parameters: `(ch·dim + dim) + (dim·dim + dim)`.
    pub fn num_params(ch: i64, dim: i64) -> u64 {
        (ch * dim + dim + dim * dim + dim) as u64
    }
}

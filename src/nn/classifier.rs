//! A small LeNet-style classifier for 28×28 grey images, whose penultimate features serve the
//! sample-quality metrics (Fréchet distance, KID, precision/recall) on MNIST-like data.
//!
//! ```text
//! conv1 3×3, 1 → 16, ReLU, 2×2 max-pool      (28 → 14)
//! conv2 3×3, 16 → 32, ReLU, 2×2 max-pool     (14 → 7)
//! fc1 32·7·7 → 64, ReLU                      ← features (64-D)
//! fc2 64 → 10                                 logits
//! ```
use tch::{nn, nn::Module, Device, Kind, Tensor};

/// The classifier.
#[derive(Debug)]
pub struct Classifier {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Classifier {
    /// The shape of one input image.
    pub const INPUT_SHAPE: [i64; 3] = [1, 28, 28];
    /// The number of classes.
    pub const CLASSES: i64 = 10;

    pub fn new(p: &nn::Path) -> Self {
        let c = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        Classifier {
            conv1: nn::conv2d(p / "conv1", 1, 16, 3, c),
            conv2: nn::conv2d(p / "conv2", 16, 32, 3, c),
            fc1: nn::linear(p / "fc1", 32 * 7 * 7, 64, Default::default()),
            fc2: nn::linear(p / "fc2", 64, Self::CLASSES, Default::default()),
        }
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.fc2.ws.device()
    }

    /// Penultimate features `[N, 64]` of images `[N, 1, 28, 28]` in [-1, 1].
    pub fn features(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(x).relu().max_pool2d_default(2);
        let h = self.conv2.forward(&h).relu().max_pool2d_default(2);
        self.fc1.forward(&h.flatten(1, -1)).relu()
    }

    /// Logits `[N, 10]`.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.features(x))
    }

    /// Class probabilities, in batches, without gradients.
    pub fn probabilities(&self, x: &Tensor, batch: i64) -> Tensor {
        let _g = tch::no_grad_guard();
        let n = x.size()[0];
        let parts: Vec<Tensor> = (0..n)
            .step_by(batch.max(1) as usize)
            .map(|i| {
                self.logits(&x.narrow(0, i, batch.min(n - i)))
                    .softmax(-1, Kind::Float)
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// The fraction of images `[N, 1, 28, 28]` (in [-1, 1]) whose most probable class has
    /// probability above `threshold`: a sanity measure of how much samples look like some
    /// class, which neither needs nor replaces the feature statistics.
    pub fn confident_fraction(&self, x: &Tensor, threshold: f64, batch: i64) -> f64 {
        if x.size()[0] == 0 {
            return f64::NAN;
        }
        self.probabilities(x, batch)
            .amax([1i64].as_slice(), false)
            .gt(threshold)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    }

    /// Features in batches, without gradients.
    pub fn features_batched(&self, x: &Tensor, batch: i64) -> Tensor {
        let _g = tch::no_grad_guard();
        let n = x.size()[0];
        let parts: Vec<Tensor> = (0..n)
            .step_by(batch.max(1) as usize)
            .map(|i| self.features(&x.narrow(0, i, batch.min(n - i))))
            .collect();
        Tensor::cat(&parts, 0)
    }
}

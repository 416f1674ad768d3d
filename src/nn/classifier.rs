//! A small LeNet-style classifier for 28×28 grey images, whose penultimate features serve the
//! sample-quality metrics (Fréchet distance, KID, precision/recall) on MNIST-like data.
//!
//! ```text
//! conv1 3×3, 1 → 16, ReLU, 2×2 max-pool      (28 → 14)
//! conv2 3×3, 16 → 32, ReLU, 2×2 max-pool     (14 → 7)
//! fc1 32·7·7 → 64, ReLU                      ← features (64-D)
//! fc2 64 → 10                                 logits
//! ```
use crate::data::Batches;
use crate::train::optim::Adam;
use crate::Result;
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
    pub fn new(p: &nn::Path) -> Self {
        let c = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        Classifier {
            conv1: nn::conv2d(p / "conv1", 1, 16, 3, c),
            conv2: nn::conv2d(p / "conv2", 16, 32, 3, c),
            fc1: nn::linear(p / "fc1", 32 * 7 * 7, 64, Default::default()),
            fc2: nn::linear(p / "fc2", 64, 10, Default::default()),
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

/// How to train the classifier.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
}

/// Trains `net` (variables in `vs`) with Adam (learning rate decayed to 0 by a half cosine) on images `[N, 1, 28, 28]` in [-1, 1] and labels
/// `[N]`; returns the last loss. Random streams: the batches come from `seed`; libtorch's
/// generator is seeded per step.
pub fn train(
    vs: &nn::VarStore,
    net: &Classifier,
    images: &Tensor,
    labels: &Tensor,
    s: Schedule,
) -> Result<f64> {
    let Schedule {
        steps,
        batch,
        lr,
        seed,
    } = s;
    let device = vs.device();
    let idx = Tensor::arange(images.size()[0], (Kind::Int64, Device::Cpu));
    let batches = Batches::new(idx, batch, seed)?;
    let (images, labels) = (images.to_device(device), labels.to_device(device));
    let params: Vec<(String, Tensor)> = {
        let mut v: Vec<_> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut adam = Adam::new(params, 0.9, 0.999, 1e-8);
    let mut last = f64::NAN;
    let bar = crate::train::progress_bar(true, 0, steps);
    for step in 0..steps {
        // cosine decay of the learning rate to zero over the run
        let lr_t = lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos());
        tch::manual_seed(crate::train::step_seed(seed, step));
        let ix = batches.get(step).to_device(device);
        let loss = net
            .logits(&images.index_select(0, &ix))
            .cross_entropy_for_logits(&labels.index_select(0, &ix));
        adam.zero_grad();
        loss.backward();
        adam.step(lr_t, step + 1, 0.0, 0.0);
        last = loss.double_value(&[]);
        bar.inc(1);
        if step % 50 == 0 {
            bar.set_message(format!("loss {last:.4}"));
        }
    }
    bar.finish_and_clear();
    Ok(last)
}

/// Accuracy of `net` on `images`, `labels`.
pub fn accuracy(net: &Classifier, images: &Tensor, labels: &Tensor) -> f64 {
    let p = net.probabilities(images, 500);
    p.argmax(-1, false)
        .eq_tensor(&labels.to_device(p.device()))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

/// What a saved classifier was trained on and how well it does (safetensors metadata key
/// `dsno-classifier`, JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassifierInfo {
    /// The data set (`mnist`, `fashion-mnist`, …).
    pub dataset: String,
    /// Accuracy on the data set's test split.
    pub test_accuracy: f64,
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
}

/// Writes the classifier's variables (float32) and `info` to `path`, atomically.
pub fn save(path: &std::path::Path, vs: &nn::VarStore, info: &ClassifierInfo) -> Result<()> {
    let json = serde_json::to_string(info).map_err(|e| crate::Error::invalid(e.to_string()))?;
    let meta = std::collections::HashMap::from([("dsno-classifier".to_string(), json)]);
    crate::checkpoint::write_safetensors(
        path,
        &crate::checkpoint::named(vs, ""),
        Some(Kind::Float),
        meta,
    )
}

/// A classifier loaded from a file written by [`save`], with its variables and description.
pub struct Loaded {
    pub vs: nn::VarStore,
    pub net: Classifier,
    pub info: ClassifierInfo,
}

/// Loads a classifier written by [`save`] onto `device`.
pub fn load(path: &std::path::Path, device: Device) -> Result<Loaded> {
    let bytes = std::fs::read(path)
        .map_err(|e| crate::Error::file(path, format!("cannot read classifier: {e}")))?;
    load_bytes(&bytes, path, device)
}

/// Loads a classifier held in memory; `path` names it in errors.
pub fn load_bytes(bytes: &[u8], path: &std::path::Path, device: Device) -> Result<Loaded> {
    let (_, md) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| crate::Error::file(path, format!("not a safetensors file ({e})")))?;
    let json = md
        .metadata()
        .as_ref()
        .and_then(|m| m.get("dsno-classifier"))
        .ok_or_else(|| {
            crate::Error::file(
                path,
                "no dsno-classifier metadata: not a feature classifier",
            )
        })?;
    let info: ClassifierInfo = serde_json::from_str(json)
        .map_err(|e| crate::Error::file(path, format!("unreadable classifier metadata: {e}")))?;
    let tensors = crate::checkpoint::read_tensors(bytes, path)?;
    let mut vs = nn::VarStore::new(device);
    let net = Classifier::new(&vs.root());
    crate::checkpoint::copy_into(&tensors, &vs, "", path, |_| true)?;
    vs.freeze();
    Ok(Loaded { vs, net, info })
}

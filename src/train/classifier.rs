//! Training the metrics' feature classifier ([`crate::nn::classifier`]) and saving it.
use crate::checkpoint::{self, ClassifierInfo};
use crate::data::{idx, to_unit_range, Batches};
use crate::nn::classifier::Classifier;
use crate::train::optim::Adam;
use crate::util::progress;
use crate::{Error, Result};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// How to train the classifier.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
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
        ..
    } = s;
    check_labels(images, labels)?;
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
    let bar = progress::steps(s.progress, 0, steps);
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
        let _gnorm = adam.step(lr_t, step + 1, 0.0, 0.0, &crate::comm::Comm::single())?;
        last = loss.double_value(&[]);
        bar.inc(1);
        if step % 50 == 0 {
            bar.set_message(format!("loss {last:.4}"));
        }
    }
    bar.finish_and_clear();
    Ok(last)
}

/// Labels must be one per image and name one of the classifier's classes.
fn check_labels(images: &Tensor, labels: &Tensor) -> Result<()> {
    check_images(images)?;
    let (n, k) = (
        images.size()[0],
        labels.size().first().copied().unwrap_or(0),
    );
    if labels.dim() != 1 || n != k {
        return Err(Error::invalid(format!(
            "{n} images but {k} labels: the label file must hold one label per image"
        )));
    }
    let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
    if lo < 0 || hi >= Classifier::CLASSES {
        return Err(Error::invalid(format!(
            "labels range over {lo}..={hi}, the classifier has classes 0..={}",
            Classifier::CLASSES - 1
        )));
    }
    Ok(())
}

/// Images must be a non-empty set of the classifier's input shape.
pub fn check_images(images: &Tensor) -> Result<()> {
    let s = images.size();
    if s.len() != 4 || s[0] == 0 || s[1..] != Classifier::INPUT_SHAPE {
        return Err(Error::invalid(format!(
            "images of shape {s:?}: the classifier reads a non-empty set of {:?} images",
            Classifier::INPUT_SHAPE
        )));
    }
    Ok(())
}

/// A classifier trained by [`fit`].
pub struct Trained {
    pub vs: nn::VarStore,
    pub net: Classifier,
    pub last_loss: f64,
    /// Accuracy on the data set's test split.
    pub test_accuracy: f64,
    pub train_images: usize,
    pub test_images: usize,
}

/// Trains a classifier on the training split of the IDX folder `dir` and measures its accuracy
/// on the test split.
pub fn fit(dir: &Path, s: Schedule, device: Device) -> Result<Trained> {
    let load = |split| -> Result<(Tensor, Tensor)> {
        Ok((
            to_unit_range(&idx::load_images(dir, split)?),
            idx::load_labels(dir, split)?,
        ))
    };
    let (train_x, train_y) = load(idx::Split::Train)?;
    let (test_x, test_y) = load(idx::Split::Test)?;
    check_labels(&test_x, &test_y)?;
    tch::manual_seed(s.seed as i64);
    let vs = nn::VarStore::new(device);
    let net = Classifier::new(&vs.root());
    let last_loss = train(&vs, &net, &train_x, &train_y, s)?;
    let test_accuracy = accuracy(&net, &test_x.to_device(device), &test_y);
    Ok(Trained {
        vs,
        net,
        last_loss,
        test_accuracy,
        train_images: train_x.size()[0] as usize,
        test_images: test_x.size()[0] as usize,
    })
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

/// Writes the classifier's variables (float32) and `info` to `path`, atomically.
pub fn save(path: &std::path::Path, vs: &nn::VarStore, info: &ClassifierInfo) -> Result<()> {
    checkpoint::save_classifier(path, &checkpoint::named(vs, ""), info)
}

//! Scoring samples on a feature classifier's penultimate features against real data: Fréchet
//! distance, KID, precision/recall, and the fraction of confidently labelled samples.
use crate::metrics;
use crate::nn::classifier::Classifier;
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// The class probability above which a sample counts as confidently labelled.
pub const CONFIDENT: f64 = 0.9;

/// The scores of one set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub fd: f64,
    pub kid: f64,
    pub kid_se: f64,
    pub precision: f64,
    pub recall: f64,
    pub confident: f64,
    /// Class-conditional samples: the fraction the classifier labels as the class they were
    /// drawn for.
    pub class_accuracy: Option<f64>,
    /// Class-conditional samples: the FD of each class's samples to the real images of that
    /// class, averaged over the classes.
    pub class_fd: Option<f64>,
}

/// How KID and precision/recall are computed.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// KID: number of subsets and their size.
    pub kid_subsets: usize,
    pub kid_subset_size: usize,
    /// k of the k-NN manifolds of precision/recall.
    pub knn: i64,
}

/// Feature-space scores against a real reference set.
pub struct Scorer<'a> {
    classifier: &'a Classifier,
    real: Tensor,
    real_subset: Tensor,
    /// The class of each real image `[N]` (int64, CPU), for class-conditional scores.
    real_labels: Option<Tensor>,
    o: ScoreOptions,
}

impl<'a> Scorer<'a> {
    /// A scorer against the features of `real` images; precision/recall use the first
    /// `pr_count` of them as the real manifold.
    pub fn new(classifier: &'a Classifier, real: &Tensor, pr_count: i64, o: ScoreOptions) -> Self {
        let real = features(classifier, real);
        let n = pr_count.min(real.size()[0]);
        Scorer {
            classifier,
            real_subset: real.narrow(0, 0, n),
            real,
            real_labels: None,
            o,
        }
    }

    /// The scorer with the class `labels` `[N]` of the real images, for
    /// class-conditional scores.
    pub fn with_labels(mut self, labels: &Tensor) -> Result<Self> {
        if labels.size() != [self.real.size()[0]] {
            return Err(Error::invalid(format!(
                "{} labels for {} real images",
                labels.size().first().copied().unwrap_or(0),
                self.real.size()[0]
            )));
        }
        self.real_labels = Some(labels.to_device(Device::Cpu).to_kind(Kind::Int64));
        Ok(self)
    }

    /// Class accuracy and the per-class FD averaged over the classes present in `labels`
    /// (classes with fewer than two samples or real images are skipped).
    fn class_scores(&self, images: &Tensor, feats: &Tensor, labels: &Tensor) -> Result<(f64, f64)> {
        let real_labels = self.real_labels.as_ref().ok_or_else(|| {
            Error::invalid("class-conditional scores need the labels of the real images")
        })?;
        let y = labels.to_device(Device::Cpu).to_kind(Kind::Int64);
        let predicted = self
            .classifier
            .probabilities(
                &images.clamp(-1.0, 1.0).to_device(self.classifier.device()),
                1000,
            )
            .argmax(1, false)
            .to_device(Device::Cpu);
        let accuracy = predicted
            .eq_tensor(&y)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        let classes = Vec::<i64>::try_from(&y.unique_dim(0, true, false, false).0)?;
        let mut fds = vec![];
        for c in classes {
            let pick =
                |f: &Tensor, l: &Tensor| f.index_select(0, &l.eq(c).nonzero().squeeze_dim(1));
            let (gen, real) = (pick(feats, &y), pick(&self.real, real_labels));
            if gen.size()[0] >= 2 && real.size()[0] >= 2 {
                fds.push(metrics::frechet_distance_of(&gen, &real)?);
            }
        }
        if fds.is_empty() {
            return Err(Error::invalid(
                "per-class FD needs at least two samples and two real images of some class",
            ));
        }
        Ok((accuracy, fds.iter().sum::<f64>() / fds.len() as f64))
    }

    /// The scores of images `[N, …]` in [-1, 1] (values outside are clamped), with the
    /// class-conditional scores when the images' class `labels` `[N]` are given.
    pub fn score(&self, images: &Tensor, labels: Option<&Tensor>) -> Result<Scores> {
        let feats = features(self.classifier, images);
        let fd = metrics::frechet_distance_of(&feats, &self.real)?;
        let (kid, kid_se) = metrics::kid(
            &feats,
            &self.real,
            self.o.kid_subsets,
            self.o.kid_subset_size,
            0,
        )?;
        let (precision, recall) = metrics::precision_recall(&self.real_subset, &feats, self.o.knn)?;
        let confident = self.classifier.confident_fraction(
            &images.clamp(-1.0, 1.0).to_device(self.classifier.device()),
            CONFIDENT,
            1000,
        );
        let class = labels
            .map(|y| self.class_scores(images, &feats, y))
            .transpose()?;
        Ok(Scores {
            fd,
            kid,
            kid_se,
            precision,
            recall,
            confident,
            class_accuracy: class.map(|c| c.0),
            class_fd: class.map(|c| c.1),
        })
    }
}

/// How far outside the data range [−1, 1] an image set read from a file may reach, |x| ≤ 2:
/// samples overshoot the range a little and are clamped to it, as the networks that score them
/// quantise to 8 bits; values beyond are not images of the range (raw network outputs, [0, 255]
/// pixels) and clamping them would score something else. (Samples a command draws itself, e.g.
/// `eval`'s few-step rows, are scored as drawn, clamped.)
pub const FAR_OUTSIDE: f64 = 2.0;

/// Refuses images with non-finite values or values beyond ±[`FAR_OUTSIDE`].
pub fn check_image_range(images: &Tensor) -> Result<()> {
    if images.numel() == 0 {
        return Ok(());
    }
    let m = images.abs().max().to_kind(Kind::Double).double_value(&[]);
    if !m.is_finite() {
        return Err(Error::invalid("the samples hold NaN or infinite values"));
    }
    if m > FAR_OUTSIDE {
        return Err(Error::invalid(format!(
            "the samples reach |x| = {m:.4}, far outside the data range [−1, 1] (up to \
             ±{FAR_OUTSIDE} is clamped to it): not images of the range (raw outputs, or \
             pixels in [0, 255]?)"
        )));
    }
    Ok(())
}

/// Penultimate features (float64, CPU) of images in [-1, 1] (values outside are clamped).
pub fn features(classifier: &Classifier, images: &Tensor) -> Tensor {
    classifier
        .features_batched(
            &images.clamp(-1.0, 1.0).to_device(classifier.device()),
            1000,
        )
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
}

/// Sliced Wasserstein-2 distances of 2-D toy samples and of their initial noise to `n` fresh
/// points of the toy distribution `name` (drawn with `seed`): `(samples, noise)`.
pub fn toy_w2(samples: &Tensor, noise: &Tensor, name: &str, seed: u64) -> Result<(f64, f64)> {
    let n = samples.size()[0] as usize;
    let data = crate::data::toy2d::sample(name, n, seed)?;
    let cpu = |t: &Tensor| t.to_device(Device::Cpu);
    Ok((
        metrics::sliced_wasserstein(&cpu(samples), &data, 64, 0)?,
        metrics::sliced_wasserstein(&cpu(noise), &data, 64, 0)?,
    ))
}

/// The FID statistics of images `[N, …]` in [−1, 1] on the Inception network, `batch` images
/// at a time, with a progress bar labelled `progress` if given.
pub fn inception_stats(
    net: &crate::nn::inception::Inception,
    images: &Tensor,
    batch: usize,
    progress: Option<&str>,
) -> Result<crate::metrics::fid::FidStats> {
    let n = images.size().first().copied().unwrap_or(0) as u64;
    let bar = crate::util::progress::samples(
        progress.is_some(),
        n,
        &format!("{:24}", progress.unwrap_or("")),
    );
    let feats = net.features(images, batch as i64, |k| bar.inc(k))?;
    bar.finish_and_clear();
    crate::metrics::fid::FidStats::of_features(&feats)
}

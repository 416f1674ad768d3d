//! Scoring samples on a feature classifier's penultimate features against real data: Fréchet
//! distance, KID, precision/recall, and the fraction of confidently labelled samples.
use crate::metrics;
use crate::nn::classifier::Classifier;
use crate::Result;
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
            o,
        }
    }

    /// The scores of images `[N, …]` in [-1, 1] (values outside are clamped).
    pub fn score(&self, images: &Tensor) -> Result<Scores> {
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
        Ok(Scores {
            fd,
            kid,
            kid_se,
            precision,
            recall,
            confident,
        })
    }
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

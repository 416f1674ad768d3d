//! Data: MNIST / Fashion-MNIST IDX files ([`idx`]) and where to find or fetch them
//! ([`fetch`]), image sets from files for the metrics ([`images`]), 2-D toy distributions ([`toy2d`]), the trajectory store's format ([`store`]),
//! and seeded, stateless batching ([`Batches`]).
pub mod fetch;
pub mod idx;
pub mod images;
pub mod store;
pub mod toy2d;

use crate::rng::Rng;
use tch::{Kind, Tensor};

/// Seeded shuffled batches over an in-memory data set, as a pure function of the step: batch
/// `s` is slice `s mod E` of the permutation of epoch `⌊s / E⌋` (E = batches per epoch, the
/// last partial batch dropped), the permutation drawn from `(seed, epoch)`. Resuming at any step
/// therefore continues the exact sequence.
#[derive(Debug)]
pub struct Batches {
    data: Tensor,
    batch: usize,
    seed: u64,
    per_epoch: usize,
    cache: std::cell::RefCell<Option<(usize, Tensor)>>,
}

impl Batches {
    /// `data` `[N, …]`; `batch` ≤ N.
    pub fn new(data: Tensor, batch: usize, seed: u64) -> crate::Result<Self> {
        let n = data.size()[0] as usize;
        if batch == 0 || batch > n {
            return Err(crate::Error::invalid(format!(
                "batch size {batch} must be in 1..={n} (the data set size)"
            )));
        }
        Ok(Batches {
            data,
            batch,
            seed,
            per_epoch: n / batch,
            cache: Default::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.data.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch of training step `step`.
    pub fn get(&self, step: u64) -> Tensor {
        let epoch = step as usize / self.per_epoch;
        let k = step as usize % self.per_epoch;
        let mut cache = self.cache.borrow_mut();
        if cache.as_ref().map(|c| c.0) != Some(epoch) {
            let perm: Vec<i64> = Rng::for_item(self.seed, epoch as u64)
                .permutation(self.len())
                .into_iter()
                .map(|i| i as i64)
                .collect();
            // one asynchronous copy per epoch, so that a step never waits for the device
            let perm = crate::device::upload_slice(&perm, self.data.device());
            *cache = Some((epoch, perm));
        }
        let perm = &cache.as_ref().unwrap().1;
        let idx = perm.narrow(0, (k * self.batch) as i64, self.batch as i64);
        self.data.index_select(0, &idx)
    }
}

/// Images as u8 `[N, C, H, W]` → float in [-1, 1].
pub fn to_unit_range(images: &Tensor) -> Tensor {
    images.to_kind(Kind::Float) / 127.5 - 1.0
}

/// `n` items of `set` `[N, …]` spread evenly over it (item `i·N/n` for i < n; all of them when
/// n ≥ N). Data sets are often ordered (MNIST's test set by source), so their first n items are
/// not a sample of them.
pub fn spread(set: &Tensor, n: usize) -> Tensor {
    let total = set.size()[0];
    let n = (n as i64).min(total);
    let idx: Vec<i64> = (0..n).map(|i| i * total / n).collect();
    set.index_select(0, &Tensor::from_slice(&idx).to_device(set.device()))
}

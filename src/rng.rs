//! Explicit, device-independent random streams.
//!
//! The noise of sample `i` under seed `s` is a pure function of `(s, i)`: [`noise`] seeds a
//! xoshiro256++ stream with SplitMix64 of `(s, i)` and draws standard normals by Box–Muller in
//! float64. The same seed gives the same bits on any machine, any batch size and any device, so
//! trajectory shards can be produced in any order.
use tch::{Device, Kind, Tensor};

/// SplitMix64 (Steele, Lea, Flood 2014): a good 64-bit mixer, used to seed streams.
pub fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ (Blackman, Vigna 2019).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A stream seeded from `seed` by SplitMix64.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Rng {
            s: [
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
            ],
        }
    }

    /// The stream of item `index` under `seed`: independent of every other index.
    pub fn for_item(seed: u64, index: u64) -> Self {
        let mut x = seed ^ 0x5DEE_CE66_D1CE_4E5B;
        let a = splitmix64(&mut x);
        let mut y = index.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ a;
        Rng::new(splitmix64(&mut y))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (n > 0), without modulo bias worth noticing for n ≪ 2⁶⁴.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// `n` standard normals (Box–Muller, float64).
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = 1.0 - self.uniform(); // (0, 1]
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
            out.push(r * c);
            out.push(r * s);
        }
        out.truncate(n);
        out
    }

    /// A Fisher–Yates permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// Class labels `[range.len()]` (int64, CPU) of the items `range` under `seed`: item i's label is
/// uniform in `0..classes` and depends on (seed, i) only, on a stream apart from its noise.
pub fn labels(seed: u64, range: std::ops::Range<u64>, classes: u64) -> Tensor {
    let mut x = seed ^ 0x1AB3_15C1_A55E_5EED;
    let stream = splitmix64(&mut x);
    let v: Vec<i64> = range
        .map(|i| Rng::for_item(stream, i).below(classes.max(1)) as i64)
        .collect();
    Tensor::from_slice(&v)
}

/// Standard-normal noise of shape `[indices.len(), shape…]`: row `k` is the noise of item
/// `indices[k]` under `seed`, whatever the other rows are.
pub fn noise(
    seed: u64,
    indices: impl IntoIterator<Item = u64>,
    shape: &[i64],
    kind: Kind,
    device: Device,
) -> Tensor {
    let per: i64 = shape.iter().product();
    let mut data = Vec::new();
    let mut rows = 0i64;
    for i in indices {
        data.extend(Rng::for_item(seed, i).normals(per as usize));
        rows += 1;
    }
    let mut full = vec![rows];
    full.extend_from_slice(shape);
    Tensor::from_slice(&data)
        .reshape(&full)
        .to_kind(kind)
        .to_device(device)
}

//! 2-D toy distributions, drawn from explicit random streams (same seed, same points).
use crate::rng::Rng;
use crate::{Error, Result};
use std::f64::consts::PI;
use tch::Tensor;

/// The toy distributions.
pub const NAMES: [&str; 4] = ["checkerboard", "8gaussians", "moons", "swissroll"];

/// `n` points of the named distribution, `[n, 2]` float32, roughly within [-2, 2]².
pub fn sample(name: &str, n: usize, seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let mut pts = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let (x, y) = match name {
            // 4×4 board on [-2, 2]², the 8 squares where ⌊x⌋ + ⌊y⌋ is even
            "checkerboard" => loop {
                let (x, y) = (rng.uniform() * 4.0 - 2.0, rng.uniform() * 4.0 - 2.0);
                if (x.floor() as i64 + y.floor() as i64).rem_euclid(2) == 0 {
                    break (x, y);
                }
            },
            // eight Gaussians of std 0.1 on the circle of radius √2 · 1.2
            "8gaussians" => {
                let k = rng.below(8) as f64;
                let e = rng.normals(2);
                let r = 2f64.sqrt() * 1.2;
                (
                    r * (k * PI / 4.0).cos() + 0.1 * e[0],
                    r * (k * PI / 4.0).sin() + 0.1 * e[1],
                )
            }
            // two interleaved half circles, noise 0.05, centred and scaled to ≈ [-2, 2]
            "moons" => {
                let a = rng.uniform() * PI;
                let e = rng.normals(2);
                let (x, y) = if rng.below(2) == 0 {
                    (a.cos(), a.sin())
                } else {
                    (1.0 - a.cos(), 0.5 - a.sin())
                };
                (
                    (x - 0.5) * 1.5 + 0.05 * e[0],
                    (y - 0.25) * 1.5 + 0.05 * e[1],
                )
            }
            // Swiss roll: angle θ ∈ [1.5π, 4.5π], radius θ, scaled by 1/(2π)·0.9
            "swissroll" => {
                let th = 1.5 * PI * (1.0 + 2.0 * rng.uniform());
                let e = rng.normals(2);
                let s = 0.9 / (2.0 * PI) * 0.75;
                (
                    th * th.cos() * s + 0.03 * e[0],
                    th * th.sin() * s + 0.03 * e[1],
                )
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown toy data set `{name}`: expected one of {}",
                    NAMES.join(", ")
                )))
            }
        };
        pts.push(x as f32);
        pts.push(y as f32);
    }
    Ok(Tensor::from_slice(&pts).reshape([n as i64, 2]))
}

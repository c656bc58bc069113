//! A1111's variation seeds and seed resize (`processing.create_random_tensors` →
//! `rng.ImageRNG.first`), and its `all_seeds` / `all_subseeds` rules (SPEC §3).
//!
//! For one image of latent shape `[c, h, w]` with seed s and subseed u:
//! 1. `noise_shape` = `[c, seed_resize_from_h/8, seed_resize_from_w/8]` when both are > 0, else
//!    the latent shape;
//! 2. noise = the first `randn(noise_shape)` of s; with `subseed_strength ≠ 0` it is
//!    `slerp(strength, noise, randn(noise_shape) of u)` — A1111's slerp over **dim 1** of the
//!    `[c, h, w]` tensor (norms, dot products and angles per (channel, column)), with its lerp
//!    fallback `noise·strength + subnoise·(1 − strength)` when the mean dot product > 0.9995;
//! 3. with a resized noise shape, the first `randn([c, h, w])` of s is drawn and the (varied) noise
//!    is pasted into its centre (or its centre cropped into it), as A1111 does.
//!
//! Seeds: image j of the job uses seed + j, except that every image keeps the seed when
//! `subseed_strength ≠ 0`; image j's subseed is subseed + j (A1111 `process_images_inner`).
//! Ancestral/SDE noise is not varied: A1111 draws it from the generator of the image's seed,
//! and so do we (SPEC §7), so images that share a seed share their ancestral noise.

use candle_core::{Device, Tensor};

use super::TorchGenerator;
use crate::Result;

/// The variation-seed fields of a request (A1111 `subseed`, `subseed_strength`,
/// `seed_resize_from_w/h`); the default changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct VariationSeed {
    /// Variation seed of image 0 (already resolved: never random here); image j uses subseed + j.
    pub subseed: u64,
    /// Slerp weight of the variation noise (0 ⇒ off).
    pub subseed_strength: f64,
    /// Width whose noise is reproduced (0 ⇒ off; needs `seed_resize_from_h` too).
    pub seed_resize_from_w: u32,
    /// Height whose noise is reproduced (0 ⇒ off; needs `seed_resize_from_w` too).
    pub seed_resize_from_h: u32,
}

impl VariationSeed {
    /// Whether the variation noise is mixed in.
    pub fn varies(&self) -> bool {
        self.subseed_strength != 0.0
    }

    /// Whether the noise comes from another size.
    pub fn resizes(&self) -> bool {
        self.seed_resize_from_w > 0 && self.seed_resize_from_h > 0
    }

    /// (seed, subseed) of each of `count` images (A1111 `all_seeds` / `all_subseeds`).
    pub fn image_seeds(&self, seed: u64, count: u32) -> Vec<(u64, u64)> {
        (0..u64::from(count))
            .map(|j| {
                let s = if self.varies() {
                    seed
                } else {
                    seed.wrapping_add(j)
                };
                (s, self.subseed.wrapping_add(j))
            })
            .collect()
    }

    /// The A1111 infotext pairs: `Variation seed`, `Variation seed strength` (strength ≠ 0) and
    /// `Seed resize from` (both sizes > 0), for an image whose subseed is `subseed`.
    pub fn infotext(&self, subseed: u64) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.varies() {
            out.push(("Variation seed".to_string(), subseed.to_string()));
            out.push((
                "Variation seed strength".to_string(),
                crate::output::format_number(self.subseed_strength),
            ));
        }
        if self.resizes() {
            out.push((
                "Seed resize from".to_string(),
                format!("{}x{}", self.seed_resize_from_w, self.seed_resize_from_h),
            ));
        }
        out
    }

    /// A1111's initial noise of one image of latent shape `[c, h, w]` (f32, row-major).
    pub fn noise(&self, seed: u64, subseed: u64, shape: [usize; 3]) -> Vec<f32> {
        let c = shape[0];
        let noise_shape = if self.resizes() {
            [
                c,
                (self.seed_resize_from_h / 8) as usize,
                (self.seed_resize_from_w / 8) as usize,
            ]
        } else {
            shape
        };
        let mut noise = TorchGenerator::new(seed).randn(&noise_shape);
        if self.varies() {
            let sub = TorchGenerator::new(subseed).randn(&noise_shape);
            noise = slerp(self.subseed_strength, &noise, &sub, noise_shape);
        }
        if noise_shape == shape {
            return noise;
        }
        let mut x = TorchGenerator::new(seed).randn(&shape);
        paste_centre(&mut x, shape, &noise, noise_shape);
        x
    }

    /// [`Self::noise`] as a `[1, c, h, w]` tensor on `device` for the latent `shape`
    /// `[1, c, h, w]` (generated on the CPU, then moved).
    pub fn noise_tensor(
        &self,
        seed: u64,
        subseed: u64,
        shape: &[usize; 4],
        device: &Device,
    ) -> Result<Tensor> {
        let data = self.noise(seed, subseed, [shape[1], shape[2], shape[3]]);
        let t = Tensor::from_vec(data, shape.as_slice(), &Device::Cpu)?;
        Ok(t.to_device(device)?)
    }
}

/// A1111 `rng.slerp(val, low, high)` on `[c, h, w]` tensors, reducing over dim 1 (h).
fn slerp(val: f64, low: &[f32], high: &[f32], shape: [usize; 3]) -> Vec<f32> {
    let [c, h, w] = shape;
    let at = |ci: usize, y: usize, xi: usize| (ci * h + y) * w + xi;
    // Per (channel, column): norms of low and high over h, and the dot of the normalised vectors.
    let mut dots = vec![0f64; c * w];
    for ci in 0..c {
        for xi in 0..w {
            let (mut nl, mut nh) = (0f64, 0f64);
            for y in 0..h {
                let (l, hv) = (
                    f64::from(low[at(ci, y, xi)]),
                    f64::from(high[at(ci, y, xi)]),
                );
                nl += l * l;
                nh += hv * hv;
            }
            let (nl, nh) = (nl.sqrt(), nh.sqrt());
            let mut dot = 0f64;
            for y in 0..h {
                let l = f64::from(low[at(ci, y, xi)]) / nl;
                let hv = f64::from(high[at(ci, y, xi)]) / nh;
                dot += l * hv;
            }
            dots[ci * w + xi] = dot;
        }
    }
    let mean = if dots.is_empty() {
        0.0
    } else {
        dots.iter().sum::<f64>() / dots.len() as f64
    };
    if mean > 0.9995 {
        return low
            .iter()
            .zip(high)
            .map(|(&l, &hv)| (f64::from(l) * val + f64::from(hv) * (1.0 - val)) as f32)
            .collect();
    }
    let mut out = vec![0f32; low.len()];
    for ci in 0..c {
        for xi in 0..w {
            let omega = dots[ci * w + xi].clamp(-1.0, 1.0).acos();
            let so = omega.sin();
            let (a, b) = (((1.0 - val) * omega).sin() / so, (val * omega).sin() / so);
            for y in 0..h {
                let i = at(ci, y, xi);
                out[i] = (a * f64::from(low[i]) + b * f64::from(high[i])) as f32;
            }
        }
    }
    out
}

/// A1111's paste of a `noise_shape` noise into the centre of `x` (`[c, h, w]`): offsets use
/// Python's floor division, so a larger noise is centre-cropped and a smaller one centred.
fn paste_centre(x: &mut [f32], shape: [usize; 3], noise: &[f32], noise_shape: [usize; 3]) {
    let [c, h, w] = shape.map(|v| v as i64);
    let [_, nh, nw] = noise_shape.map(|v| v as i64);
    let dx = (w - nw).div_euclid(2);
    let dy = (h - nh).div_euclid(2);
    let cw = if dx >= 0 { nw } else { nw + 2 * dx };
    let ch = if dy >= 0 { nh } else { nh + 2 * dy };
    let (tx, ty) = (dx.max(0), dy.max(0));
    let (sx, sy) = ((-dx).max(0), (-dy).max(0));
    for ci in 0..c {
        for y in 0..ch.max(0) {
            for xi in 0..cw.max(0) {
                let (dst_y, dst_x) = (ty + y, tx + xi);
                let (src_y, src_x) = (sy + y, sx + xi);
                if dst_y >= h || dst_x >= w || src_y >= nh || src_x >= nw {
                    continue;
                }
                x[((ci * h + dst_y) * w + dst_x) as usize] =
                    noise[((ci * nh + src_y) * nw + src_x) as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_follow_a1111_all_seeds() {
        let plain = VariationSeed::default();
        assert_eq!(plain.image_seeds(10, 3), vec![(10, 0), (11, 1), (12, 2)]);
        let varied = VariationSeed {
            subseed: 7,
            subseed_strength: 0.5,
            ..VariationSeed::default()
        };
        assert_eq!(varied.image_seeds(10, 3), vec![(10, 7), (10, 8), (10, 9)]);
    }

    #[test]
    fn default_is_the_plain_seed_noise() {
        let v = VariationSeed::default();
        assert_eq!(
            v.noise(42, 0, [4, 3, 5]),
            TorchGenerator::new(42).randn(&[4, 3, 5])
        );
    }
}

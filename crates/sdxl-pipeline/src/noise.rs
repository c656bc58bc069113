//! Seed-compatible noise: a bit-exact port of `torch.Generator("cpu").manual_seed(seed)` followed
//! by `torch.randn(shape)` in f32 (SPEC §7).
//!
//! torch's CPU generator is a 32-bit mt19937 seeded with the low 32 bits of the seed. `randn` of a
//! contiguous f32 tensor with at least 16 elements fills the tensor with 24-bit uniforms, then turns
//! each block of 16 into normals with Box–Muller (`u1 = 1 − data[j]`, `u2 = data[j+8]`); when the size
//! is not a multiple of 16 the last 16 values are drawn again and recomputed. On x86 CPUs with AVX2
//! (what torch dispatches to on AVX2 and AVX-512 machines) the transform uses the Cephes-style
//! `log256_ps`/`sincos256_ps` polynomials of `avx_mathfun.h`; we reproduce those in scalar f32 so the
//! result does not depend on the CPU we run on. Tensors with fewer than 16 elements take torch's
//! scalar path: 53-bit double uniforms, `r = √(−2·log1p(−u2))`, θ = 2π·u1, returning `r·cos θ` and
//! caching `r·sin θ` in the generator for the next small draw.

use candle_core::{Device, Tensor};

use crate::sampling::NoiseSource;
use crate::Result;

mod variation;
pub use variation::VariationSeed;

const MT_N: usize = 624;
const MT_M: usize = 397;

/// The 32-bit Mersenne Twister exactly as torch's `at::mt19937`.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        // torch: init_with_uint32(seed) keeps the low 32 bits.
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self { state, index: MT_N }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..MT_N {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % MT_N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// A generator reproducing torch's CPU generator stream for `randn` in f32.
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// Same as `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        Self {
            engine: Mt19937::new(seed),
            next_double_normal: None,
        }
    }

    /// A float uniform in [0, 1) with 24 random bits (torch `uniform_real_distribution<float>`).
    fn uniform_f32(&mut self) -> f32 {
        let v = self.engine.next_u32() & ((1 << 24) - 1);
        v as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A double uniform in [0, 1) with 53 random bits (torch `random64()`: first draw is the high word).
    fn uniform_f64(&mut self) -> f64 {
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        let v = ((hi << 32) | lo) & ((1u64 << 53) - 1);
        v as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// torch's scalar `normal_distribution<double>` with its one-value cache.
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(shape, generator=g)` in f32, bit for bit; continues the stream across calls.
    pub fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let size: usize = shape.iter().product();
        if size < 16 {
            return (0..size).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..size).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            normal_fill_16(block);
        }
        if size % 16 != 0 {
            let tail_start = size - 16;
            for v in &mut data[tail_start..] {
                *v = self.uniform_f32();
            }
            normal_fill_16(&mut data[tail_start..]);
        }
        data
    }

    /// `randn` as a candle f32 tensor on `device` (generated on the CPU, then moved).
    pub fn randn_tensor(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let data = self.randn(shape);
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
        Ok(t.to_device(device)?)
    }
}

/// Box–Muller on one block of 16 uniforms, as torch's `normal_fill_16_AVX2` (mean 0, std 1).
fn normal_fill_16(data: &mut [f32]) {
    let two_pi = (2.0f64 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0f32 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0f32 * log_ps(u1)).sqrt();
        let theta = two_pi * u2;
        let (s, c) = sincos_ps(theta);
        data[j] = radius * c;
        data[j + 8] = radius * s;
    }
}

// Constants of avx_mathfun.h: double literals rounded to float, as the C initialisers do.
#[allow(clippy::approx_constant, clippy::excessive_precision)]
const SQRTHF: f32 = 0.707_106_781_186_547_524_f64 as f32;
const LOG_P: [f32; 9] = [
    7.037_683_629_2E-2_f64 as f32,
    -1.151_461_031_0E-1_f64 as f32,
    1.167_699_874_0E-1_f64 as f32,
    -1.242_014_084_6E-1_f64 as f32,
    1.424_932_278_7E-1_f64 as f32,
    -1.666_805_766_5E-1_f64 as f32,
    2.000_071_476_5E-1_f64 as f32,
    -2.499_999_399_3E-1_f64 as f32,
    3.333_333_117_4E-1_f64 as f32,
];
const LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
const LOG_Q2: f32 = 0.693_359_375_f64 as f32;
const MINUS_DP1: f32 = -0.785_156_25_f64 as f32;
#[allow(clippy::excessive_precision)]
const MINUS_DP2: f32 = -2.418_756_484_985_351_562_5e-4_f64 as f32;
#[allow(clippy::excessive_precision)]
const MINUS_DP3: f32 = -3.774_894_977_445_941_08e-8_f64 as f32;
const SINCOF: [f32; 3] = [
    -1.951_529_589_1E-4_f64 as f32,
    8.332_160_873_6E-3_f64 as f32,
    -1.666_665_461_1E-1_f64 as f32,
];
const COSCOF: [f32; 3] = [
    2.443_315_711_809_948E-5_f64 as f32,
    -1.388_731_625_493_765E-3_f64 as f32,
    4.166_664_568_298_827E-2_f64 as f32,
];
const FOPI: f32 = 1.273_239_544_735_16_f64 as f32;

/// Scalar port of `avx_mathfun.h` `log256_ps` (Cephes logf), valid for x in (0, 1].
fn log_ps(x: f32) -> f32 {
    if x <= 0.0 {
        return f32::NAN;
    }
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = m < SQRTHF;
    let tmp = if below { m } else { 0.0 };
    m -= 1.0;
    if below {
        e -= 1.0;
    }
    m += tmp;
    let z = m * m;
    let mut y = LOG_P[0];
    for &c in &LOG_P[1..] {
        y = y.mul_add(m, c);
    }
    y *= m;
    y = y.mul_add(z, e * LOG_Q1);
    y = (-z).mul_add(0.5, y);
    m += y;
    e.mul_add(LOG_Q2, m)
}

/// Scalar port of `avx_mathfun.h` `sincos256_ps` (Cephes sinf/cosf); returns (sin, cos).
fn sincos_ps(x: f32) -> (f32, f32) {
    let sign_sin = x.to_bits() & 0x8000_0000;
    let mut x = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let y = x * FOPI;
    let mut j = (y as i32).wrapping_add(1) & !1;
    let yf = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    let poly_sin_is_second = (j & 2) == 0;
    x = yf.mul_add(MINUS_DP1, x);
    x = yf.mul_add(MINUS_DP2, x);
    x = yf.mul_add(MINUS_DP3, x);
    j -= 2;
    let sign_cos = ((!j & 4) as u32) << 29;
    let sign_sin = sign_sin ^ swap_sign_sin;
    let z = x * x;
    let mut y1 = COSCOF[0];
    y1 = y1.mul_add(z, COSCOF[1]);
    y1 = y1.mul_add(z, COSCOF[2]);
    y1 *= z;
    y1 = y1.mul_add(z, -(z * 0.5));
    y1 += 1.0;
    let mut y2 = SINCOF[0];
    y2 = y2.mul_add(z, SINCOF[1]);
    y2 = y2.mul_add(z, SINCOF[2]);
    y2 *= z;
    y2 = y2.mul_add(x, x);
    let (sin_v, cos_v) = if poly_sin_is_second {
        (y2, y1)
    } else {
        (y1, y2)
    };
    (
        f32::from_bits(sin_v.to_bits() ^ sign_sin),
        f32::from_bits(cos_v.to_bits() ^ sign_cos),
    )
}

/// The per-step noise of ancestral/SDE samplers: a second [`TorchGenerator`] seeded with the job's
/// seed, one `randn` of the latent shape per draw (SPEC §7, ComfyUI `default_noise_sampler`).
pub struct TorchNoiseSource {
    generator: TorchGenerator,
    shape: Vec<usize>,
    device: Device,
}

impl TorchNoiseSource {
    /// A noise source for latents of `shape`, placed on `device` (f32).
    pub fn new(seed: u64, shape: &[usize], device: &Device) -> Self {
        Self {
            generator: TorchGenerator::new(seed),
            shape: shape.to_vec(),
            device: device.clone(),
        }
    }
}

impl TorchNoiseSource {
    /// Later draws have `shape`; the generator stream continues (the hires pass, SPEC §13).
    pub fn set_shape(&mut self, shape: &[usize]) {
        self.shape = shape.to_vec();
    }
}

impl NoiseSource for TorchNoiseSource {
    fn next_noise(&mut self) -> Result<Tensor> {
        self.generator.randn_tensor(&self.shape, &self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_10000th_output() {
        // C++11 requires the 10000th output of std::mt19937 (seed 5489) to be 4123659995.
        let mut mt = Mt19937::new(5489);
        let mut v = 0;
        for _ in 0..10_000 {
            v = mt.next_u32();
        }
        assert_eq!(v, 4_123_659_995);
    }
}

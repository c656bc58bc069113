//! The seed and sampler-parameter fields of the job schema (SPEC §3): `n_iter`, the A1111
//! variation seed (`subseed`, `subseed_strength`, `seed_resize_from_w/h`) and the sampler extra
//! parameters (`eta`, `s_noise`, `s_churn`, `s_tmin`, `s_tmax`, with the `override_settings`
//! options `eta_ancestral`, `eta_ddim` and `s_noise`).

use sdxl_pipeline::noise::VariationSeed;
use sdxl_pipeline::sampling::SamplerParams;

use super::{Checker, MAX_SEED};

/// Most images one job renders (`batch_size × n_iter`).
pub const MAX_IMAGES: i64 = 16;
/// Largest `seed_resize_from_w/h`.
pub const MAX_SEED_RESIZE: i64 = 4096;

/// What the fields said (absent or invalid fields at their defaults; problems are in the checker).
pub(super) struct SeedFields {
    /// `n_iter` when present and valid.
    pub n_iter: Option<i64>,
    subseed: u64,
    subseed_strength: f64,
    seed_resize_from_w: u32,
    seed_resize_from_h: u32,
    /// The sampler parameters.
    pub sampler_params: SamplerParams,
}

impl SeedFields {
    /// The variation-seed part of the request.
    pub fn variation(&self) -> VariationSeed {
        VariationSeed {
            subseed: self.subseed,
            subseed_strength: self.subseed_strength,
            seed_resize_from_w: self.seed_resize_from_w,
            seed_resize_from_h: self.seed_resize_from_h,
        }
    }

    /// `batch_size × n_iter` for the pixel budget, `None` when either field was invalid (already
    /// reported). Reports a product over [`MAX_IMAGES`].
    pub fn image_count(&self, c: &Checker, batch_size: Option<i64>) -> Option<i64> {
        let present = |names: &[&str]| {
            names
                .iter()
                .any(|n| c.obj.get(*n).is_some_and(|v| !v.is_null()))
        };
        if (batch_size.is_none() && present(&["batch_size", "num_images"]))
            || (self.n_iter.is_none() && present(&["n_iter"]))
        {
            return None;
        }
        Some(batch_size.unwrap_or(1) * self.n_iter.unwrap_or(1))
    }
}

/// Reads the fields, reporting problems (including `batch_size × n_iter` over [`MAX_IMAGES`]).
pub(super) fn read(c: &mut Checker, batch_size: Option<i64>) -> SeedFields {
    let n_iter = c.int(&["n_iter"], 1, MAX_IMAGES);
    if let (Some(b), Some(n)) = (batch_size, n_iter) {
        if b * n > MAX_IMAGES {
            c.problem(format!(
                "`batch_size` × `n_iter` must be at most {MAX_IMAGES}, got {b} × {n} = {}",
                b * n
            ));
        }
    }
    let subseed = match c.int(&["subseed"], -1, MAX_SEED) {
        None | Some(-1) => crate::ids::random_seed(),
        Some(s) => u64::try_from(s).unwrap_or(0),
    };
    let subseed_strength = c.number(&["subseed_strength"], 0.0, 1.0).unwrap_or(0.0);
    let seed_resize_from_w = resize(c, "seed_resize_from_w");
    let seed_resize_from_h = resize(c, "seed_resize_from_h");

    let d = SamplerParams::default();
    let eta = c.number(&["eta"], 0.0, 1.0);
    let eta_ancestral = c.number(&["override_settings.eta_ancestral"], 0.0, 1.0);
    let eta_ddim = c.number(&["override_settings.eta_ddim"], 0.0, 1.0);
    let s_churn = c.number(&["s_churn"], 0.0, 100.0).unwrap_or(d.s_churn);
    let s_tmin = c.number(&["s_tmin"], 0.0, 1000.0).unwrap_or(d.s_tmin);
    let s_tmax = c.number(&["s_tmax"], 0.0, 1000.0).unwrap_or(d.s_tmax);
    let job_s_noise = c.number(&["s_noise"], 0.0, 2.0).unwrap_or(d.s_noise);
    // A1111 `Sampler.initialize`: the `s_noise` option wins over the request when it is not 1.
    let s_noise = match c.number(&["override_settings.s_noise"], 0.0, 2.0) {
        Some(v) if v != d.s_noise => v,
        _ => job_s_noise,
    };
    SeedFields {
        n_iter,
        subseed,
        subseed_strength,
        seed_resize_from_w,
        seed_resize_from_h,
        sampler_params: SamplerParams {
            eta,
            eta_ancestral,
            eta_ddim,
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
        },
    }
}

/// `seed_resize_from_w/h`: -1 or 0 (A1111's "off"), or 8..=[`MAX_SEED_RESIZE`] pixels (the noise
/// is `value / 8` latent pixels, so 1..=7 would make an empty noise).
fn resize(c: &mut Checker, name: &'static str) -> u32 {
    match c.int(&[name], -1, MAX_SEED_RESIZE) {
        None | Some(-1) | Some(0) => 0,
        Some(v) if v < 8 => {
            c.problem(format!(
                "`{name}` must be -1 or 0 (off) or 8..={MAX_SEED_RESIZE}, got {v}"
            ));
            0
        }
        Some(v) => u32::try_from(v).unwrap_or(0),
    }
}

//! `torch.nn.functional.interpolate(x, size=(h, w), mode=..., antialias=...)` on f32 `[B, C, H, W]`
//! latents (CPU kernels of torch 2.x, `align_corners=False`, no `scale_factor`): the six A1111
//! latent upscale modes of the hires fix and the bilinear resize of img2img resize mode 3.
//! Arithmetic in f32 as torch's CPU `opmath` for float, with the same index and weight rules.

use candle_core::{DType, Device, Tensor};

use crate::{PipelineError, Result};

/// A1111's `shared.latent_upscale_modes` (`hr_upscaler` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentMode {
    /// `Latent`: bilinear.
    Bilinear,
    /// `Latent (antialiased)`: bilinear, antialias.
    BilinearAntialias,
    /// `Latent (bicubic)`: bicubic (a = −0.75).
    Bicubic,
    /// `Latent (bicubic antialiased)`: bicubic antialias (a = −0.5, PIL-style weights).
    BicubicAntialias,
    /// `Latent (nearest)`: torch's legacy `nearest`.
    Nearest,
    /// `Latent (nearest-exact)`.
    NearestExact,
}

impl LatentMode {
    /// Every mode with its A1111 name, in A1111's order.
    pub const ALL: [(&'static str, LatentMode); 6] = [
        ("Latent", LatentMode::Bilinear),
        ("Latent (antialiased)", LatentMode::BilinearAntialias),
        ("Latent (bicubic)", LatentMode::Bicubic),
        ("Latent (bicubic antialiased)", LatentMode::BicubicAntialias),
        ("Latent (nearest)", LatentMode::Nearest),
        ("Latent (nearest-exact)", LatentMode::NearestExact),
    ];

    /// The mode for an A1111 upscaler name (exact spelling), if it is a latent mode.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }

    /// The A1111 name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("Latent", |(n, _)| n)
    }
}

/// One axis of a separable resampling: per output index `(first input index, weights)`.
type Taps = Vec<(usize, Vec<f32>)>;

fn cc1(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

fn cc2(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// `compute_indices_weights_linear` (align_corners=False): two taps, source index clamped at 0,
/// the second index equal to the first at the last input.
fn linear_axis(input: usize, output: usize) -> Axis {
    let scale = input as f32 / output as f32;
    Axis::Gather(
        (0..output)
            .map(|i| {
                let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src as usize).min(input - 1);
                let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
                let l1 = (src - i0 as f32).clamp(0.0, 1.0);
                (vec![i0, i1], vec![1.0 - l1, l1])
            })
            .collect(),
    )
}

/// One axis of a separable resampling.
enum Axis {
    /// Antialiased: taps at consecutive indices from `.0`.
    Taps(Taps),
    /// Linear and bicubic: explicit (clamped) indices and weights per output.
    Gather(Vec<(Vec<usize>, Vec<f32>)>),
    /// Nearest: one index per output.
    Index(Vec<usize>),
}

/// `upsample_bicubic2d` (a = −0.75): four indices clamped to the input.
fn cubic_axis(input: usize, output: usize) -> Axis {
    const A: f32 = -0.75;
    let scale = input as f32 / output as f32;
    let last = input as i64 - 1;
    Axis::Gather(
        (0..output)
            .map(|i| {
                let src = scale * (i as f32 + 0.5) - 0.5;
                let idx = (src.floor() as i64).min(last);
                let t = (src - idx as f32).clamp(0.0, 1.0);
                let w = vec![
                    cc2(t + 1.0, A),
                    cc1(t, A),
                    cc1(1.0 - t, A),
                    cc2(1.0 - t + 1.0, A),
                ];
                let ids = (0..4)
                    .map(|j| (idx - 1 + j).clamp(0, last) as usize)
                    .collect();
                (ids, w)
            })
            .collect(),
    )
}

fn nearest_axis(input: usize, output: usize, exact: bool) -> Axis {
    let scale = input as f32 / output as f32;
    Axis::Index(
        (0..output)
            .map(|i| {
                let src = if exact {
                    ((i as f32 + 0.5) * scale).floor() as usize
                } else if output == input {
                    i
                } else if output == 2 * input {
                    i >> 1
                } else {
                    (i as f32 * scale) as usize
                };
                src.min(input - 1)
            })
            .collect(),
    )
}

/// `_compute_index_ranges_weights` of torch's antialiased kernels (PIL's algorithm in f32).
fn aa_taps(input: usize, output: usize, bicubic: bool) -> Taps {
    let interp = if bicubic { 4.0f32 } else { 2.0 };
    let scale = input as f32 / output as f32;
    let support = if scale >= 1.0 {
        interp * 0.5 * scale
    } else {
        interp * 0.5
    };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let filter = |x: f32| -> f32 {
        let x = x.abs();
        if bicubic {
            if x < 1.0 {
                cc1(x, -0.5)
            } else if x < 2.0 {
                cc2(x, -0.5)
            } else {
                0.0
            }
        } else if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    (0..output)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(input as i64);
            let mut w: Vec<f32> = (xmin..xmax)
                .map(|j| filter((j as f32 - center + 0.5) * invscale))
                .collect();
            let total: f32 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin as usize, w)
        })
        .collect()
}

/// Applies `axis` along the last dimension of `rows` (each of length `input`), giving `output`
/// values per row.
fn resample_rows(data: &[f32], input: usize, axis: &Axis) -> Vec<f32> {
    let rows = data.len() / input;
    let output = match axis {
        Axis::Taps(t) => t.len(),
        Axis::Gather(g) => g.len(),
        Axis::Index(i) => i.len(),
    };
    let mut out = Vec::with_capacity(rows * output);
    for r in data.chunks_exact(input) {
        match axis {
            Axis::Taps(taps) => {
                for (start, w) in taps {
                    let mut t = 0.0f32;
                    for (j, wj) in w.iter().enumerate() {
                        t += r[start + j] * wj;
                    }
                    out.push(t);
                }
            }
            Axis::Gather(g) => {
                for (ids, w) in g {
                    let mut t = 0.0f32;
                    for (&i, &wi) in ids.iter().zip(w) {
                        t += r[i] * wi;
                    }
                    out.push(t);
                }
            }
            Axis::Index(ix) => out.extend(ix.iter().map(|&i| r[i])),
        }
    }
    out
}

/// Transposes each `[h, w]` plane of `data` to `[w, h]`.
fn transpose_planes(data: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for (p, plane) in data.chunks_exact(h * w).enumerate() {
        let o = &mut out[p * h * w..(p + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                o[x * h + y] = plane[y * w + x];
            }
        }
    }
    out
}

/// Resizes latents `[B, C, H, W]` to `[B, C, height, width]` with `mode` (f32 on the CPU; the
/// result goes back to `x`'s device as f32).
pub fn interpolate(x: &Tensor, height: usize, width: usize, mode: LatentMode) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if height == 0 || width == 0 || h == 0 || w == 0 {
        return Err(PipelineError::InvalidInput(format!(
            "cannot resize a {w}x{h} latent to {width}x{height}"
        )));
    }
    let data = x
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let out = match mode {
        LatentMode::Bilinear => {
            // torch evaluates wy0·(wx0·a + wx1·b) + wy1·(...): x first, then y, no intermediate rounding
            // beyond f32 — the separable form below computes the same products and sums.
            separable(
                &data,
                h,
                w,
                height,
                width,
                linear_axis(h, height),
                linear_axis(w, width),
                false,
            )
        }
        LatentMode::Bicubic => separable(
            &data,
            h,
            w,
            height,
            width,
            cubic_axis(h, height),
            cubic_axis(w, width),
            false,
        ),
        LatentMode::Nearest => separable(
            &data,
            h,
            w,
            height,
            width,
            nearest_axis(h, height, false),
            nearest_axis(w, width, false),
            false,
        ),
        LatentMode::NearestExact => separable(
            &data,
            h,
            w,
            height,
            width,
            nearest_axis(h, height, true),
            nearest_axis(w, width, true),
            false,
        ),
        LatentMode::BilinearAntialias | LatentMode::BicubicAntialias => {
            let bic = mode == LatentMode::BicubicAntialias;
            separable(
                &data,
                h,
                w,
                height,
                width,
                Axis::Taps(aa_taps(h, height, bic)),
                Axis::Taps(aa_taps(w, width, bic)),
                true,
            )
        }
    };
    Ok(Tensor::from_vec(out, (b, c, height, width), &Device::Cpu)?.to_device(x.device())?)
}

/// Horizontal pass, then vertical (skipping an unchanged axis when `skip_same`, as torch's
/// antialiased kernels do).
#[allow(clippy::too_many_arguments)]
fn separable(
    data: &[f32],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    vert: Axis,
    horiz: Axis,
    skip_same: bool,
) -> Vec<f32> {
    let rows = if skip_same && ow == w {
        data.to_vec()
    } else {
        resample_rows(data, w, &horiz)
    };
    if skip_same && oh == h {
        return rows;
    }
    let t = transpose_planes(&rows, h, ow);
    let v = resample_rows(&t, h, &vert);
    transpose_planes(&v, ow, oh)
}

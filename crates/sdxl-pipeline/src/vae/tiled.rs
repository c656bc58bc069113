//! Tiled VAE decoding (diffusers `AutoencoderKL.tiled_decode`): overlapping latent tiles decoded
//! one at a time, each blended linearly into its upper and left neighbours and cropped, so a
//! 2048² decode needs the memory of a 1024² one.

use candle_core::{DType, Tensor};

use crate::Result;

/// When and how [`super::AutoencoderKl::decode`] tiles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeTiling {
    /// Tile side in latent pixels; latents larger than this on either side are tiled.
    pub tile_latent: usize,
    /// Fraction of a tile shared with its neighbour (diffusers' `tile_overlap_factor`).
    pub overlap: f64,
}

impl Default for VaeTiling {
    /// diffusers' values for the SDXL VAE (`sample_size` 1024): 128-latent tiles (1024² pixels),
    /// 25 % overlap. Everything up to 1024² decodes whole.
    fn default() -> Self {
        Self {
            tile_latent: 128,
            overlap: 0.25,
        }
    }
}

/// Decodes `z` [B, C, h, w] tile by tile with `decode` (latent tile → image tile, `upscale`×).
pub(crate) fn decode_tiled(
    z: &Tensor,
    tiling: VaeTiling,
    upscale: usize,
    decode: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = z.dims4()?;
    let tile = tiling.tile_latent.max(1);
    let tile_px = tile * upscale;
    // diffusers: int(tile_latent · (1 − overlap)), int(tile_sample · overlap).
    let stride = ((tile as f64 * (1.0 - tiling.overlap)) as usize).max(1);
    let blend = (tile_px as f64 * tiling.overlap) as usize;
    let row_limit = tile_px - blend;
    let starts = |n: usize| (0..n).step_by(stride).collect::<Vec<_>>();
    let (ys, xs) = (starts(h), starts(w));

    let mut rows: Vec<Vec<Tensor>> = Vec::with_capacity(ys.len());
    for &y in &ys {
        let mut row = Vec::with_capacity(xs.len());
        for &x in &xs {
            let t = z
                .narrow(2, y, tile.min(h - y))?
                .narrow(3, x, tile.min(w - x))?;
            row.push(decode(&t.contiguous()?)?);
        }
        rows.push(row);
    }
    // Blend in place like diffusers: tile (i, j) takes the already blended (i−1, j) and (i, j−1).
    for i in 0..rows.len() {
        for j in 0..rows[i].len() {
            let mut t = rows[i][j].clone();
            if i > 0 {
                t = blend_edge(&rows[i - 1][j], &t, blend, 2)?;
            }
            if j > 0 {
                t = blend_edge(&rows[i][j - 1], &t, blend, 3)?;
            }
            rows[i][j] = t;
        }
    }
    let mut out_rows = Vec::with_capacity(rows.len());
    for row in &rows {
        let cropped = row
            .iter()
            .map(|t| crop(t, row_limit))
            .collect::<Result<Vec<_>>>()?;
        out_rows.push(Tensor::cat(&cropped, 3)?);
    }
    Ok(Tensor::cat(&out_rows, 2)?)
}

fn crop(t: &Tensor, limit: usize) -> Result<Tensor> {
    let (_, _, h, w) = t.dims4()?;
    Ok(t.narrow(2, 0, limit.min(h))?.narrow(3, 0, limit.min(w))?)
}

/// diffusers `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `extent` rows/columns of `b`
/// become `a_end · (1 − k/extent) + b · k/extent`, with `a_end` the last `extent` of `a`.
fn blend_edge(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let a_end = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let b_start = b.narrow(dim, 0, extent)?;
    let ramp: Vec<f32> = (0..extent).map(|k| k as f32 / extent as f32).collect();
    let mut shape = vec![1usize; 4];
    shape[dim] = extent;
    let r = Tensor::from_vec(ramp, shape.as_slice(), b.device())?.to_dtype(DType::F32)?;
    let dtype = b.dtype();
    let a32 = a_end.to_dtype(DType::F32)?;
    let b32 = b_start.to_dtype(DType::F32)?;
    let mixed = (a32.broadcast_mul(&(1.0 - &r)?)? + b32.broadcast_mul(&r)?)?.to_dtype(dtype)?;
    let rest = b.narrow(dim, extent, b.dim(dim)? - extent)?;
    Ok(Tensor::cat(&[&mixed, &rest], dim)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// With a per-pixel "decoder" (nearest 8× upsampling, no statistics across pixels) every
    /// overlap blends equal values, so the tiled result must equal the whole one: this checks
    /// the tile grid, the blend ranges and the crops, including ragged last tiles.
    #[test]
    fn tiles_cover_the_image_exactly_for_a_local_decoder() {
        let dev = Device::Cpu;
        let up = |t: &Tensor| -> Result<Tensor> {
            let (_, _, h, w) = t.dims4()?;
            Ok(t.upsample_nearest2d(h * 8, w * 8)?)
        };
        for (h, w) in [(40, 40), (37, 53), (16, 17), (5, 40)] {
            let z = Tensor::randn(0f32, 1.0, (1, 4, h, w), &dev).unwrap();
            let whole = up(&z).unwrap();
            let tiling = VaeTiling {
                tile_latent: 16,
                overlap: 0.25,
            };
            let tiled = decode_tiled(&z, tiling, 8, up).unwrap();
            assert_eq!(tiled.dims(), whole.dims(), "{h}x{w}");
            let d = (tiled - whole)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{h}x{w}: max abs diff {d}");
        }
    }
}

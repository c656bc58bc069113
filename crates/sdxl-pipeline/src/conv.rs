//! `Conv2d` with a CPU fast path (issue 17's CPU race).
//!
//! candle's CPU conv2d (0.11) re-lays out the whole kernel into `[C_out, kh·kw·C_in]` on every
//! call (a single-threaded strided gather over every weight of the layer), transposes the input
//! to NHWC single-threaded, scatters 512-pixel im2col tiles with strided writes and copies each
//! tile's result back with strided writes; 1×1 convolutions copy the input element by element.
//! Here, on CPU:
//!
//! * 1×1, stride 1, no padding: one `[C_out, C_in] × [C_in, H·W]` matmul per image on the input
//!   as it is (no copy);
//! * any other kernel: an im2col matrix `[C_in·kh·kw, H_out·W_out]` built in parallel with
//!   row-slice copies (rows in the kernel's own `(c_in, ky, kx)` order, so the weight is used as
//!   the `[C_out, C_in·kh·kw]` view it already is), then one matmul per image whose output is
//!   already NCHW. Outputs whose im2col matrix would exceed [`MAX_COL_ELEMS`] are computed in
//!   bands of output rows (the VAE's full-resolution levels).
//!
//! The products are the same as candle's (gemm, f32 accumulation for f32, the dtype's own for
//! f16); only the summation order over `C_in·kh·kw` differs, i.e. rounding. Other devices,
//! grouped or dilated convolutions and other dtypes go through candle's `Conv2d` unchanged. The
//! weights stay the tensors the `VarBuilder` returned, so in-place LoRA switches reach them.

use candle_core::{CpuStorage, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

/// Largest im2col matrix (elements, all images of the batch) built at once: 128 MiB in f32.
const MAX_COL_ELEMS: usize = 32 << 20;

/// A 2-D convolution (diffusers names `weight`, `bias`) with the CPU fast path described in the
/// module docs.
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    inner: candle_nn::Conv2d,
}

/// `candle_nn::conv2d` (weight `[out, in, k, k]` and bias `[out]` under `vb`) with the CPU fast path.
pub(crate) fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> candle_core::Result<Conv2d> {
    Ok(Conv2d {
        inner: candle_nn::conv2d(in_channels, out_channels, kernel_size, cfg, vb)?,
    })
}

impl Conv2d {
    /// Whether `x` takes the fast path.
    fn fast_path(&self, x: &Tensor) -> bool {
        let cfg = self.inner.config();
        x.device().is_cpu()
            && x.rank() == 4
            && matches!(x.dtype(), DType::F32 | DType::F16)
            && x.dtype() == self.inner.weight().dtype()
            && cfg.groups == 1
            && cfg.dilation == 1
            && cfg.stride > 0
    }

    /// The convolution without bias on the fast path.
    fn forward_cpu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let cfg = self.inner.config();
        let w = self.inner.weight();
        let (c_out, c_in, kh, kw) = w.dims4()?;
        let (b, c, h, wd) = x.dims4()?;
        if c != c_in {
            candle_core::bail!("conv2d: input {:?}, weight {:?}", x.dims(), w.dims());
        }
        let x = x.contiguous()?;
        let (pad, stride) = (cfg.padding, cfg.stride);
        if kh == 1 && kw == 1 && stride == 1 && pad == 0 {
            let xs = x.reshape((b, c, h * wd))?;
            return w
                .reshape((c_out, c_in))?
                .broadcast_matmul(&xs)?
                .reshape((b, c_out, h, wd));
        }
        if h + 2 * pad < kh || wd + 2 * pad < kw {
            candle_core::bail!("conv2d: input {:?} is smaller than the kernel", x.dims());
        }
        let h_out = (h + 2 * pad - kh) / stride + 1;
        let w_out = (wd + 2 * pad - kw) / stride + 1;
        let k = c_in * kh * kw;
        let wm = w.reshape((c_out, k))?;
        let per_row = (b * k * w_out).max(1);
        let band = (MAX_COL_ELEMS / per_row).clamp(1, h_out);
        let mut parts = Vec::with_capacity(h_out.div_ceil(band));
        let mut row0 = 0;
        while row0 < h_out {
            let rows = band.min(h_out - row0);
            let op = Im2Col {
                kh,
                kw,
                stride,
                pad,
                row0,
                rows,
                w_out,
            };
            let col = x.apply_op1_no_bwd(&op)?;
            parts.push(
                wm.broadcast_matmul(&col)?
                    .reshape((b, c_out, rows, w_out))?,
            );
            row0 += rows;
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        Tensor::cat(&parts, 2)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !self.fast_path(x) {
            return self.inner.forward(x);
        }
        let y = self.forward_cpu(x)?;
        match self.inner.bias() {
            Some(bias) => {
                let n = bias.dims1()?;
                y.broadcast_add(&bias.reshape((1, n, 1, 1))?)
            }
            None => Ok(y),
        }
    }
}

/// im2col of output rows `row0..row0 + rows` of a contiguous `[B, C, H, W]` input:
/// `[B, C·kh·kw, rows·w_out]`, row `c·kh·kw + ky·kw + kx`, zeros where the kernel reads padding.
struct Im2Col {
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    row0: usize,
    rows: usize,
    w_out: usize,
}

impl Im2Col {
    /// `x` is `b·c` planes of `h × w`.
    fn run<T: Copy + Default + Send + Sync>(&self, x: &[T], h: usize, w: usize) -> Vec<T> {
        let plane = h * w;
        let taps = self.kh * self.kw;
        let n = self.rows * self.w_out;
        let planes = x.len().checked_div(plane).unwrap_or(0);
        let mut out = vec![T::default(); planes * taps * n];
        if n == 0 || plane == 0 {
            return out;
        }
        out.par_chunks_mut(taps * n)
            .zip(x.par_chunks(plane))
            .for_each(|(dst, src)| {
                for ky in 0..self.kh {
                    for kx in 0..self.kw {
                        let tap = &mut dst[(ky * self.kw + kx) * n..][..n];
                        self.fill_tap(tap, src, h, w, ky, kx);
                    }
                }
            });
        out
    }

    /// One kernel tap `(ky, kx)` of one input plane: `rows × w_out` values.
    fn fill_tap<T: Copy>(
        &self,
        tap: &mut [T],
        src: &[T],
        h: usize,
        w: usize,
        ky: usize,
        kx: usize,
    ) {
        for (r, drow) in tap.chunks_mut(self.w_out).enumerate() {
            let iy = (self.row0 + r) * self.stride + ky;
            if iy < self.pad || iy - self.pad >= h {
                continue; // padding row: stays zero
            }
            let srow = &src[(iy - self.pad) * w..][..w];
            if self.stride == 1 {
                // ix = ox + kx − pad is inside 0..w for ox in lo..hi.
                let lo = self.pad.saturating_sub(kx);
                let hi = (w + self.pad).saturating_sub(kx).min(self.w_out);
                if lo < hi {
                    let s0 = lo + kx - self.pad;
                    drow[lo..hi].copy_from_slice(&srow[s0..s0 + (hi - lo)]);
                }
            } else {
                for (ox, d) in drow.iter_mut().enumerate() {
                    let ix = ox * self.stride + kx;
                    if ix >= self.pad && ix - self.pad < w {
                        *d = srow[ix - self.pad];
                    }
                }
            }
        }
    }
}

impl candle_core::CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col-cpu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("im2col-cpu: the input is not contiguous");
        };
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(self.run(&x[start..end], h, w)),
            CpuStorage::F16(x) => CpuStorage::F16(self.run(&x[start..end], h, w)),
            CpuStorage::BF16(x) => CpuStorage::BF16(self.run(&x[start..end], h, w)),
            _ => candle_core::bail!("im2col-cpu: unsupported dtype"),
        };
        let shape = Shape::from((b, c * self.kh * self.kw, self.rows * self.w_out));
        Ok((out, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_dtype(DType::F32))
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }

    /// The fast path against candle's conv2d (the reference) for every kernel shape the models
    /// use: 3×3 pad 1 (stride 1 and 2), 1×1, including non-square inputs, banding and f16.
    #[test]
    fn fast_path_matches_candle_conv2d() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let cases = [
            (3, 1, 1, 2, 8, 16, 7, 9),
            (3, 1, 2, 2, 8, 16, 9, 6),
            (1, 0, 1, 2, 12, 5, 4, 5),
            (3, 1, 1, 1, 4, 3, 1, 1),
        ];
        for (k, pad, stride, b, c_in, c_out, h, w) in cases {
            let map = VarMap::new();
            let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
            let cfg = Conv2dConfig {
                padding: pad,
                stride,
                ..Default::default()
            };
            let conv = conv2d(c_in, c_out, k, cfg, vb)?;
            let x = Tensor::randn(0f32, 1.0, (b, c_in, h, w), &dev)?;
            assert!(conv.fast_path(&x));
            let fast = conv.forward(&x)?;
            let reference = conv.inner.forward(&x)?;
            assert_eq!(fast.dims(), reference.dims(), "k{k} s{stride}");
            let d = max_abs_diff(&fast, &reference);
            assert!(d < 1e-4, "k{k} s{stride} {h}x{w}: max |Δ| {d}");
            // f16 weights and input
            let conv16 = Conv2d {
                inner: candle_nn::Conv2d::new(
                    conv.inner.weight().to_dtype(DType::F16)?,
                    conv.inner
                        .bias()
                        .map(|b| b.to_dtype(DType::F16))
                        .transpose()?,
                    cfg,
                ),
            };
            let x16 = x.to_dtype(DType::F16)?;
            let d16 = max_abs_diff(&conv16.forward(&x16)?, &conv16.inner.forward(&x16)?);
            assert!(d16 < 2e-2, "f16 k{k} s{stride}: max |Δ| {d16}");
        }
        Ok(())
    }

    /// Banding (outputs computed in row bands) gives the unbanded result.
    #[test]
    fn bands_join_to_the_whole_output() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 11, 6), &dev)?.contiguous()?;
        let whole = Im2Col {
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
            row0: 0,
            rows: 11,
            w_out: 6,
        };
        let all = x.apply_op1_no_bwd(&whole)?.reshape((27, 11, 6))?;
        let mut parts = Vec::new();
        for (row0, rows) in [(0, 4), (4, 4), (8, 3)] {
            let op = Im2Col {
                row0,
                rows,
                ..whole
            };
            parts.push(x.apply_op1_no_bwd(&op)?.reshape((27, rows, 6))?);
        }
        let joined = Tensor::cat(&parts, 1)?;
        assert_eq!(max_abs_diff(&all, &joined), 0.0);
        Ok(())
    }
}

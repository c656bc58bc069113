//! Building blocks shared by the UNet and the VAE: a GroupNorm on candle's fused layer-norm op
//! (+ SiLU) and the diffusers `ResnetBlock2D` on top of it.
//!
//! GroupNorm over `[B, C, H, W]` is a layer norm over the last axis of `[B, G, C/G·H·W]` followed by
//! the per-channel affine. candle's `layer_norm` op (CPU and CUDA kernels, tested in candle) does
//! the statistics and the normalisation in one pass with f32 accumulation for every dtype, so the
//! norm costs one kernel + the affine (two broadcast ops) instead of ~13 ops with f32 temporaries.
//! Weights are kept as views of the tensors the `VarBuilder` returned, so in-place LoRA switches
//! (`LiveWeights`) reach them.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::conv::Conv2d;
use candle_core::{CpuStorage, DType, DeviceLocation, Layout, Module, Shape, Tensor, D};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};
use rayon::prelude::*;

/// Largest normalised row (elements) whose unit scale / zero shift are cached between calls;
/// longer rows (the VAE's full-resolution levels) allocate them per call.
const CACHE_MAX_ROW: usize = 1 << 20;

type UnitKey = (usize, DType, DeviceLocation);

/// `(ones, zeros)` of length `n` in `dtype` on `device`: the identity affine of the layer-norm op.
fn unit_affine(n: usize, like: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let make = || -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            Tensor::ones(n, like.dtype(), like.device())?,
            Tensor::zeros(n, like.dtype(), like.device())?,
        ))
    };
    if n > CACHE_MAX_ROW {
        return make();
    }
    static CACHE: OnceLock<Mutex<HashMap<UnitKey, (Tensor, Tensor)>>> = OnceLock::new();
    let key = (n, like.dtype(), like.device().location());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        // A device re-created at the same location is another device (CUDA context).
        if hit.0.device().same_device(like.device()) {
            return Ok(hit);
        }
    }
    let unit = make()?;
    if let Ok(mut c) = cache.lock() {
        c.insert(key, unit.clone());
    }
    Ok(unit)
}

/// GroupNorm (diffusers names `weight`, `bias`) through candle's fused layer-norm op.
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    /// `[1, C, 1, 1]` views of the loaded `[C]` parameters.
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    groups: usize,
    channels: usize,
}

impl GroupNorm {
    pub fn new(
        groups: usize,
        channels: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        if groups == 0 || channels % groups != 0 {
            candle_core::bail!("GroupNorm: {channels} channels do not split into {groups} groups");
        }
        let weight = vb.get(channels, "weight")?.reshape((1, channels, 1, 1))?;
        let bias = vb.get(channels, "bias")?.reshape((1, channels, 1, 1))?;
        Ok(Self {
            weight,
            bias,
            eps,
            groups,
            channels,
        })
    }

    /// Normalised `x` before the affine, in `x`'s dtype (statistics in f32).
    fn normalize(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 3 || dims[1] != self.channels {
            candle_core::bail!(
                "GroupNorm: input {dims:?}, expected [B, {}, ...]",
                self.channels
            );
        }
        let row = x.elem_count() / (dims[0] * self.groups);
        let grouped = x.reshape((dims[0], self.groups, row))?;
        let (ones, zeros) = unit_affine(row, x)?;
        candle_nn::ops::layer_norm(&grouped, &ones, &zeros, self.eps as f32)?.reshape(dims)
    }

    /// `GroupNorm(x)` for `x` [B, C, ...] (4-D: the per-channel affine broadcasts over H, W).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() {
            return self.cpu_op(x, false);
        }
        let n = self.normalize(x)?;
        let (w, b) = self.affine_for(x)?;
        n.broadcast_mul(&w)?.broadcast_add(&b)
    }

    /// `SiLU(GroupNorm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() {
            return self.cpu_op(x, true);
        }
        candle_nn::ops::silu(&self.forward(x)?)
    }

    /// CPU: the whole norm (+ SiLU) in one pass per group writing the output once (every
    /// separate candle op allocates and faults in a fresh activation-sized buffer).
    fn cpu_op(&self, x: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 3 || dims[1] != self.channels {
            candle_core::bail!(
                "GroupNorm: input {dims:?}, expected [B, {}, ...]",
                self.channels
            );
        }
        let op = GroupNormCpu {
            groups: self.groups,
            eps: self.eps,
            silu,
        };
        x.contiguous()?.apply_op3_no_bwd(
            &self.weight.flatten_all()?,
            &self.bias.flatten_all()?,
            &op,
        )
    }

    fn affine_for(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        if x.rank() == 4 {
            return Ok((self.weight.clone(), self.bias.clone()));
        }
        let mut dims = vec![1; x.rank()];
        dims[1] = self.channels;
        Ok((
            self.weight.reshape(dims.as_slice())?,
            self.bias.reshape(dims.as_slice())?,
        ))
    }
}

/// GroupNorm (+ SiLU) as one CPU op: per (batch, group) row the mean and variance in two passes
/// (f64 sums, like candle-nn's f32 two-pass GroupNorm but without its temporaries), then
/// `y = act(((x − mean)·inv_std)·w[c] + b[c])` with each intermediate rounded to the tensor's
/// dtype as the separate ops would round it.
struct GroupNormCpu {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl GroupNormCpu {
    /// `x` contiguous [B, C, rest…] with `hw` = prod(rest); `w`, `b` [C].
    #[allow(clippy::too_many_arguments)]
    fn run<T: Copy + Send + Sync + Default>(
        &self,
        x: &[T],
        w: &[T],
        b: &[T],
        channels: usize,
        hw: usize,
        to: impl Fn(T) -> f32 + Sync,
        from: impl Fn(f32) -> T + Sync,
    ) -> Vec<T> {
        let cg = channels / self.groups;
        let row = cg * hw;
        let mut out = vec![T::default(); x.len()];
        if row == 0 {
            return out;
        }
        out.par_chunks_mut(row)
            .zip(x.par_chunks(row))
            .enumerate()
            .for_each(|(r, (o, xs))| {
                let n = xs.len() as f64;
                let mean = xs.iter().map(|&v| f64::from(to(v))).sum::<f64>() / n;
                let var = xs
                    .iter()
                    .map(|&v| {
                        let d = f64::from(to(v)) - mean;
                        d * d
                    })
                    .sum::<f64>()
                    / n;
                let (mean, inv) = (mean as f32, (1.0 / (var + self.eps).sqrt()) as f32);
                let c0 = (r % self.groups) * cg;
                for (k, (oc, xc)) in o.chunks_mut(hw).zip(xs.chunks(hw)).enumerate() {
                    let (wc, bc) = (to(w[c0 + k]), to(b[c0 + k]));
                    for (d, &v) in oc.iter_mut().zip(xc) {
                        let normed = to(from((to(v) - mean) * inv));
                        let y = to(from(to(from(normed * wc)) + bc));
                        *d = if self.silu {
                            from(y / (1.0 + (-y).exp()))
                        } else {
                            from(y)
                        };
                    }
                }
            });
        out
    }
}

impl candle_core::CustomOp3 for GroupNormCpu {
    fn name(&self) -> &'static str {
        "group-norm-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let channels = dims[1];
        let hw = dims[2..].iter().product::<usize>();
        let part = |l: &Layout, what: &str| match l.contiguous_offsets() {
            Some(o) => Ok(o),
            None => candle_core::bail!("group-norm-cpu: {what} is not contiguous"),
        };
        let ((a1, b1), (a2, b2), (a3, b3)) =
            (part(l1, "x")?, part(l2, "weight")?, part(l3, "bias")?);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(self.run(
                    &x[a1..b1],
                    &w[a2..b2],
                    &b[a3..b3],
                    channels,
                    hw,
                    |v| v,
                    |v| v,
                ))
            }
            (CpuStorage::F16(x), CpuStorage::F16(w), CpuStorage::F16(b)) => {
                CpuStorage::F16(self.run(
                    &x[a1..b1],
                    &w[a2..b2],
                    &b[a3..b3],
                    channels,
                    hw,
                    half::f16::to_f32,
                    half::f16::from_f32,
                ))
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w), CpuStorage::BF16(b)) => {
                CpuStorage::BF16(self.run(
                    &x[a1..b1],
                    &w[a2..b2],
                    &b[a3..b3],
                    channels,
                    hw,
                    half::bf16::to_f32,
                    half::bf16::from_f32,
                ))
            }
            _ => candle_core::bail!("group-norm-cpu: unsupported or mixed dtypes"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// diffusers `ResnetBlock2D` (names `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`,
/// `conv_shortcut`): the same ops as candle-transformers' block, minus the division by an output
/// scale factor of 1 and with SiLU(temb) computed once per call by the caller.
#[derive(Debug)]
pub(crate) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    time_emb_proj: Option<Linear>,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// Shape of one [`ResnetBlock`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock {
    pub fn new(vb: VarBuilder, cfg: ResnetConfig) -> candle_core::Result<Self> {
        let (inp, out) = (cfg.in_channels, cfg.out_channels);
        let conv3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_shortcut = if inp != out {
            Some(crate::conv::conv2d(
                inp,
                out,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(candle_nn::linear(t, out, vb.pp("time_emb_proj"))?),
            None => None,
        };
        Ok(Self {
            norm1: GroupNorm::new(cfg.groups, inp, cfg.eps, vb.pp("norm1"))?,
            conv1: crate::conv::conv2d(inp, out, 3, conv3, vb.pp("conv1"))?,
            norm2: GroupNorm::new(cfg.groups, out, cfg.eps, vb.pp("norm2"))?,
            conv2: crate::conv::conv2d(out, out, 3, conv3, vb.pp("conv2"))?,
            time_emb_proj,
            conv_shortcut,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `x` [B, C, H, W]; `temb_silu` = SiLU(time embedding) [B, T] (ignored without `time_emb_proj`).
    pub fn forward(&self, x: &Tensor, temb_silu: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = match (temb_silu, &self.time_emb_proj) {
            (Some(t), Some(proj)) => proj
                .forward(t)?
                .unsqueeze(D::Minus1)?
                .unsqueeze(D::Minus1)?
                .broadcast_add(&h)?,
            _ => h,
        };
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let out = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn fused_group_norm_matches_candle_group_norm() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let ours = GroupNorm::new(4, 8, 1e-6, vb.pp("gn")).unwrap();
        let w = Tensor::randn(0f32, 1.0, 8, &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 8, &dev).unwrap();
        let ours = GroupNorm {
            weight: w.reshape((1, 8, 1, 1)).unwrap(),
            bias: b.reshape((1, 8, 1, 1)).unwrap(),
            ..ours
        };
        let theirs = candle_nn::GroupNorm::new(w, b, 8, 4, 1e-6).unwrap();
        let x = (Tensor::randn(0f32, 3.0, (2, 8, 5, 7), &dev).unwrap() + 1.5).unwrap();
        let d = max_abs_diff(&ours.forward(&x).unwrap(), &theirs.forward(&x).unwrap());
        assert!(d < 1e-5, "max abs diff {d}");
        // The layer-norm path (non-CPU devices) on the CPU too.
        let ln = ours
            .normalize(&x)
            .unwrap()
            .broadcast_mul(&ours.weight)
            .unwrap()
            .broadcast_add(&ours.bias)
            .unwrap();
        let d = max_abs_diff(&ln, &theirs.forward(&x).unwrap());
        assert!(d < 1e-5, "layer-norm path: max abs diff {d}");
        let s = candle_nn::ops::silu(&theirs.forward(&x).unwrap()).unwrap();
        assert!(max_abs_diff(&ours.forward_silu(&x).unwrap(), &s) < 1e-5);
    }
}

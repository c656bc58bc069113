//! The LoRA merge of one weight on the CPU in a single fused pass: `cast(f32(base) + delta)`,
//! split across threads. candle's ops would take three single-threaded passes and two f32-sized
//! temporaries (upcast, add, downcast); the result is bit-identical (same f32 sum, same
//! round-to-nearest-even cast).

use candle_core::{CpuStorage, DType, Device, Shape, Storage, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::host_alloc::with_capacity_huge;

/// Elements per parallel work item (256 KiB of f32 delta).
const CHUNK: usize = 64 * 1024;

/// `base + delta` cast to `dtype`, for a contiguous CPU `base` (f16, bf16 or f32) and a
/// contiguous f32 CPU `delta` of the same shape. `None` when the fused path does not apply (other
/// devices or dtypes, strided tensors, shape mismatch): the caller then uses candle's ops.
pub fn fused_add_cast(
    base: &Tensor,
    delta: &Tensor,
    dtype: DType,
) -> candle_core::Result<Option<Tensor>> {
    if !matches!(base.device(), Device::Cpu)
        || !matches!(delta.device(), Device::Cpu)
        || base.dims() != delta.dims()
    {
        return Ok(None);
    }
    let (base_storage, base_layout) = base.storage_and_layout();
    let (delta_storage, delta_layout) = delta.storage_and_layout();
    let (Some((b0, b1)), Some((d0, d1))) = (
        base_layout.contiguous_offsets(),
        delta_layout.contiguous_offsets(),
    ) else {
        return Ok(None);
    };
    let (Storage::Cpu(base_cpu), Storage::Cpu(CpuStorage::F32(delta_all))) =
        (&*base_storage, &*delta_storage)
    else {
        return Ok(None);
    };
    let Some(delta) = delta_all.get(d0..d1) else {
        return Ok(None);
    };
    let shape = base.shape().clone();
    let out = match base_cpu {
        CpuStorage::F16(b) => {
            slice(b, b0, b1).and_then(|b| merge_to(b, delta, f16::to_f32, dtype, shape))
        }
        CpuStorage::BF16(b) => {
            slice(b, b0, b1).and_then(|b| merge_to(b, delta, bf16::to_f32, dtype, shape))
        }
        CpuStorage::F32(b) => {
            slice(b, b0, b1).and_then(|b| merge_to(b, delta, |x| x, dtype, shape))
        }
        _ => None,
    };
    out.transpose()
}

fn slice<T>(v: &[T], from: usize, to: usize) -> Option<&[T]> {
    v.get(from..to)
}

/// [`merge`] into a new CPU tensor of `dtype` (`None` for a dtype other than f16, bf16, f32).
fn merge_to<B: Copy + Sync>(
    base: &[B],
    delta: &[f32],
    from: impl Fn(B) -> f32 + Sync,
    dtype: DType,
    shape: Shape,
) -> Option<candle_core::Result<Tensor>> {
    let cpu = &Device::Cpu;
    Some(match dtype {
        DType::F16 => Tensor::from_vec(merge(base, delta, from, f16::from_f32), shape, cpu),
        DType::BF16 => Tensor::from_vec(merge(base, delta, from, bf16::from_f32), shape, cpu),
        DType::F32 => Tensor::from_vec(merge(base, delta, from, |x| x), shape, cpu),
        _ => return None,
    })
}

/// `out[i] = to(from(base[i]) + delta[i])`, in parallel chunks, into a huge-page-hinted buffer.
fn merge<B: Copy + Sync, O: Send + Copy>(
    base: &[B],
    delta: &[f32],
    from: impl Fn(B) -> f32 + Sync,
    to: impl Fn(f32) -> O + Sync,
) -> Vec<O> {
    let n = base.len().min(delta.len());
    let mut out = with_capacity_huge::<O>(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .zip(base[..n].par_chunks(CHUNK))
        .zip(delta[..n].par_chunks(CHUNK))
        .for_each(|((o, b), d)| {
            for ((o, &b), &d) in o.iter_mut().zip(b).zip(d) {
                o.write(to(from(b) + d));
            }
        });
    // SAFETY: the chunks above cover `out`'s first `n` slots exactly once each (equal chunking of
    // three length-`n` slices), and every slot is written.
    unsafe { out.set_len(n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// candle's three-pass merge, the reference the fused pass must equal bit for bit.
    fn reference(base: &Tensor, delta: &Tensor, dtype: DType) -> Tensor {
        (base.to_dtype(DType::F32).unwrap() + delta)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn equals_candle_ops_for_every_dtype_pair() {
        // Spans several chunks and ends in a partial one; values straddle f16 rounding ties.
        let n = 3 * CHUNK + 17;
        let base32 = Tensor::randn(0f32, 1.0, (n,), &Device::Cpu).unwrap();
        let delta = (Tensor::randn(0f32, 1.0, (n,), &Device::Cpu).unwrap() * 1e-3).unwrap();
        for base_dtype in [DType::F16, DType::BF16, DType::F32] {
            let base = base32.to_dtype(base_dtype).unwrap();
            for out_dtype in [DType::F16, DType::BF16, DType::F32] {
                let got = fused_add_cast(&base, &delta, out_dtype)
                    .unwrap()
                    .expect("fused path applies");
                assert_eq!(got.dtype(), out_dtype);
                let want = reference(&base, &delta, out_dtype);
                let (g, w) = (bits(&got), bits(&want));
                let differing = g.iter().zip(&w).filter(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(differing.count(), 0, "{base_dtype:?} → {out_dtype:?}");
            }
        }
    }

    #[test]
    fn strided_or_mismatched_inputs_fall_back() {
        let base = Tensor::randn(0f32, 1.0, (4, 6), &Device::Cpu).unwrap();
        let delta = Tensor::zeros((6, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(fused_add_cast(&base, &delta, DType::F16).unwrap().is_none());
        let transposed = base.t().unwrap();
        assert!(fused_add_cast(&transposed, &delta, DType::F16)
            .unwrap()
            .is_none());
        let delta16 = delta.to_dtype(DType::F16).unwrap();
        let base_t = base.t().unwrap().contiguous().unwrap();
        assert!(fused_add_cast(&base_t, &delta16, DType::F16)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_narrowed_contiguous_view_uses_its_own_elements() {
        let all = Tensor::arange(0f32, 20.0, &Device::Cpu).unwrap();
        let view = all.narrow(0, 5, 10).unwrap();
        let delta = Tensor::ones(10, DType::F32, &Device::Cpu).unwrap();
        let got = fused_add_cast(&view, &delta, DType::F32).unwrap().unwrap();
        assert_eq!(bits(&got), (6..16).map(|x| x as f32).collect::<Vec<_>>());
    }
}

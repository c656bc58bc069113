//! f16 → f32 of loaded weights on CPU in parallel (the f32 load of an fp16 checkpoint).
//!
//! candle's `to_dtype` converts element by element on one thread; here the rayon pool converts
//! slices with `half`'s vectorised (F16C) slice conversion. Every f16 value is exactly
//! representable in f32, so the result is bit-identical to candle's.

use candle_core::{CpuStorage, DType, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Elements converted per task.
const CHUNK: usize = 1 << 16;

/// `t` (contiguous f16 on CPU) as f32; `None` when `t` is anything else (the caller then uses
/// `to_dtype`).
pub(crate) fn f16_to_f32(t: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !t.device().is_cpu() || t.dtype() != DType::F16 {
        return Ok(None);
    }
    let out = {
        let (storage, layout) = t.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F16(src)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        else {
            return Ok(None);
        };
        let src = &src[a..b];
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| s.convert_to_f32_slice(d));
        out
    };
    Tensor::from_vec(out, t.shape(), t.device()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_candle_to_dtype_bit_for_bit() -> candle_core::Result<()> {
        let n = 3 * CHUNK + 17;
        let vals: Vec<half::f16> = (0..n)
            .map(|i| half::f16::from_bits((i as u16).wrapping_mul(40503)))
            .collect();
        let t = Tensor::from_vec(vals, (n,), &Device::Cpu)?;
        let ours = f16_to_f32(&t)?.ok_or_else(|| candle_core::Error::Msg("not taken".into()))?;
        let theirs = t.to_dtype(DType::F32)?;
        let (a, b) = (ours.to_vec1::<f32>()?, theirs.to_vec1::<f32>()?);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())));
        assert!(f16_to_f32(&theirs)?.is_none());
        Ok(())
    }
}

//! The LoRA merge of one weight on the CPU in a single fused pass: `cast(f32(base) + delta)`,
//! split across threads, with vectorised conversions. candle's ops would take three
//! single-threaded passes and two f32-sized temporaries (upcast, add, downcast); the result is
//! bit-identical (exact upcast, same f32 sum, same round-to-nearest-even downcast).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, DType, Device, Shape, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::host_alloc::with_capacity_huge;

/// Elements per parallel work item (256 KiB of f32 delta).
const CHUNK: usize = 64 * 1024;

/// A weight element type with whole-slice conversions to and from f32 (F16C/AVX where the CPU has
/// them).
trait Elem: Copy + Default + Send + Sync + 'static {
    fn to_f32s(src: &[Self], dst: &mut [f32]);
    fn from_f32s(src: &[f32], dst: &mut [Self]);
}

impl Elem for f16 {
    fn to_f32s(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn from_f32s(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
}

impl Elem for bf16 {
    fn to_f32s(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn from_f32s(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
}

impl Elem for f32 {
    fn to_f32s(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn from_f32s(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

/// `out = cast(f32(base) + delta)` for one chunk (all three of the same length).
fn add_cast_chunk<B: Elem, O: Elem>(out: &mut [MaybeUninit<O>], base: &[B], delta: &[f32]) {
    let mut sum = vec![0f32; base.len()];
    B::to_f32s(base, &mut sum);
    for (s, d) in sum.iter_mut().zip(delta) {
        *s += d;
    }
    for o in out.iter_mut() {
        o.write(O::default());
    }
    // SAFETY: every element of `out` was initialised just above.
    let out = unsafe { &mut *(out as *mut [MaybeUninit<O>] as *mut [O]) };
    O::from_f32s(&sum, out);
}

/// Fills a fresh vector of `n` elements chunk by chunk: `fill(i, chunk)` writes every element of
/// chunk `i` (of `step` elements; the last may be shorter) and says whether it could.
fn fill_chunks<O: Elem>(
    n: usize,
    step: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<O>]) -> candle_core::Result<bool> + Sync,
) -> candle_core::Result<Option<Vec<O>>> {
    let mut out = with_capacity_huge::<O>(n);
    let done = out.spare_capacity_mut()[..n]
        .par_chunks_mut(step.max(1))
        .enumerate()
        .map(|(i, chunk)| fill(i, chunk))
        .collect::<candle_core::Result<Vec<bool>>>()?;
    if !done.iter().all(|&d| d) {
        return Ok(None);
    }
    // SAFETY: the chunks tile `[0, n)` and each `fill` that returned true wrote its whole chunk.
    unsafe { out.set_len(n) };
    Ok(Some(out))
}

/// The contiguous CPU elements of `t`, borrowed for `f`.
fn with_cpu_slice<R>(
    t: &Tensor,
    f: impl FnOnce(&CpuStorage, usize, usize) -> candle_core::Result<Option<R>>,
) -> candle_core::Result<Option<R>> {
    if !matches!(t.device(), Device::Cpu) {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(cpu), Some((from, to))) => f(cpu, from, to),
        _ => Ok(None),
    }
}

/// Runs `f::<B>` on the base elements (f16, bf16 or f32).
macro_rules! with_base {
    ($cpu:expr, $from:expr, $to:expr, |$b:ident| $body:expr) => {
        match $cpu {
            CpuStorage::F16(v) => {
                let $b = &v[$from..$to];
                $body
            }
            CpuStorage::BF16(v) => {
                let $b = &v[$from..$to];
                $body
            }
            CpuStorage::F32(v) => {
                let $b = &v[$from..$to];
                $body
            }
            _ => Ok(None),
        }
    };
}

/// Rows of a delta, `(from, to) → f32 [to − from, cols]` (see `DeltaSource::delta_rows`).
pub type DeltaRows<'a> = dyn Fn(usize, usize) -> candle_core::Result<Option<Tensor>> + Sync + 'a;

/// `cast(f32(base) + delta)` as a new CPU tensor of `dtype`, for a contiguous CPU `base` (f16,
/// bf16 or f32). The delta arrives in row blocks of about [`CHUNK`] elements from `rows`, formed
/// in parallel next to the pass that consumes them, so the parameter-sized f32 delta is never
/// written to memory. `None` when this path does not apply (other devices or dtypes, a strided
/// base) or `rows` has no delta: the caller then uses candle's ops.
pub fn fused_add_cast_blocked(
    base: &Tensor,
    dtype: DType,
    rows: &DeltaRows<'_>,
) -> candle_core::Result<Option<Tensor>> {
    let shape = base.shape().clone();
    let n_rows = shape.dims().first().copied().unwrap_or(0);
    if n_rows == 0 {
        return Ok(None);
    }
    with_cpu_slice(base, |cpu, b0, b1| {
        with_base!(cpu, b0, b1, |b| merge_blocked(
            b, rows, n_rows, dtype, shape
        ))
    })
}

fn merge_blocked<B: Elem>(
    base: &[B],
    rows: &DeltaRows<'_>,
    n_rows: usize,
    dtype: DType,
    shape: Shape,
) -> candle_core::Result<Option<Tensor>> {
    fn run<B: Elem, O: Elem + candle_core::WithDType>(
        base: &[B],
        rows: &DeltaRows<'_>,
        n_rows: usize,
        shape: Shape,
    ) -> candle_core::Result<Option<Tensor>> {
        let cols = base.len() / n_rows;
        if cols * n_rows != base.len() {
            return Ok(None);
        }
        let per_block = (CHUNK / cols.max(1)).max(1);
        let step = per_block * cols;
        let v = fill_chunks::<O>(base.len(), step, |i, o| {
            let r0 = i * per_block;
            let r1 = (r0 + per_block).min(n_rows);
            let Some(delta) = rows(r0, r1)? else {
                return Ok(false);
            };
            let filled = with_cpu_slice(&delta, |dcpu, d0, d1| match dcpu {
                CpuStorage::F32(d) if d1 - d0 == o.len() => {
                    add_cast_chunk(o, &base[i * step..i * step + o.len()], &d[d0..d1]);
                    Ok(Some(()))
                }
                _ => Ok(None),
            })?;
            match filled {
                Some(()) => Ok(true),
                None => Err(candle_core::Error::Msg(format!(
                    "delta rows {r0}..{r1}: expected {} contiguous f32 values on the CPU",
                    o.len()
                ))),
            }
        })?;
        v.map(|v| Tensor::from_vec(v, shape, &Device::Cpu))
            .transpose()
    }
    match dtype {
        DType::F16 => run::<B, f16>(base, rows, n_rows, shape),
        DType::BF16 => run::<B, bf16>(base, rows, n_rows, shape),
        DType::F32 => run::<B, f32>(base, rows, n_rows, shape),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked merge fed with rows of a whole delta.
    fn fused_add_cast(
        base: &Tensor,
        delta: &Tensor,
        dtype: DType,
    ) -> candle_core::Result<Option<Tensor>> {
        let rows = |r0: usize, r1: usize| -> candle_core::Result<Option<Tensor>> {
            Ok(Some(crate::checkpoint::backend_rows_of(delta, r0, r1)?))
        };
        fused_add_cast_blocked(base, dtype, &rows)
    }

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
    fn blocked_merge_equals_the_whole_delta_merge() {
        // 300 rows of 700: several blocks, the last one partial.
        let (rows, cols) = (300, 700);
        let base32 = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let up = Tensor::randn(0f32, 0.1, (rows, 8), &Device::Cpu).unwrap();
        let down = Tensor::randn(0f32, 0.1, (8, cols), &Device::Cpu).unwrap();
        let delta = up.matmul(&down).unwrap();
        let by_rows = |r0: usize, r1: usize| -> candle_core::Result<Option<Tensor>> {
            Ok(Some(up.narrow(0, r0, r1 - r0)?.matmul(&down)?))
        };
        for base_dtype in [DType::F16, DType::BF16, DType::F32] {
            let base = base32.to_dtype(base_dtype).unwrap();
            for out_dtype in [DType::F16, DType::BF16, DType::F32] {
                let got = fused_add_cast_blocked(&base, out_dtype, &by_rows)
                    .unwrap()
                    .expect("blocked path applies");
                let want = reference(&base, &delta, out_dtype);
                assert_eq!(got.dims(), want.dims());
                let (g, w) = (bits(&got), bits(&want));
                let worst = g
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // Row blocks of a k = 8 product: the same dot products, so equal up to gemm's
                // summation order (at most one rounding step of the output dtype).
                assert!(
                    worst <= 1e-6 || out_dtype != DType::F32,
                    "{base_dtype:?}: {worst}"
                );
                let differing = g.iter().zip(&w).filter(|(a, b)| a != b).count();
                assert!(
                    differing * 1000 <= g.len(),
                    "{base_dtype:?} → {out_dtype:?}: {differing}"
                );
            }
        }
        let none = |_: usize, _: usize| -> candle_core::Result<Option<Tensor>> { Ok(None) };
        assert!(fused_add_cast_blocked(&base32, DType::F32, &none)
            .unwrap()
            .is_none());
        let bad = |_: usize, _: usize| -> candle_core::Result<Option<Tensor>> {
            Ok(Some(Tensor::zeros(3, DType::F32, &Device::Cpu)?))
        };
        assert!(fused_add_cast_blocked(&base32, DType::F32, &bad).is_err());
    }

    #[test]
    fn strided_bases_fall_back_and_mismatched_deltas_fail() {
        let base = Tensor::randn(0f32, 1.0, (4, 6), &Device::Cpu).unwrap();
        let delta = Tensor::zeros((6, 4), DType::F32, &Device::Cpu).unwrap();
        // A delta whose rows do not fit the base is an error, never a silent partial merge.
        assert!(fused_add_cast(&base, &delta, DType::F16).is_err());
        let transposed = base.t().unwrap();
        assert!(fused_add_cast(&transposed, &delta, DType::F16)
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

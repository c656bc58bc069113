//! The merge formulas (A1111 `extensions-builtin/Lora`, LyCORIS): every function returns the
//! un-scaled weight delta in f32; the caller applies `multiplier · alpha/rank` and DoRA.

use candle_core::{DType, Result, Tensor, D};

/// `up[out,r,(1,1)] · down[r,in,(kh,kw)]` reshaped to `[out,in,(kh,kw)]` (Linear, 1×1 and k×k
/// LoCon: `rebuild_conventional`).
pub(crate) fn lora_updown(up: &Tensor, down: &Tensor) -> Result<Tensor> {
    let out = up.dim(0)?;
    let r = down.dim(0)?;
    let up2 = up.reshape((out, r))?;
    let down2 = down.reshape((r, ()))?;
    let mut shape = down.dims().to_vec();
    if let Some(first) = shape.first_mut() {
        *first = out;
    }
    up2.matmul(&down2)?.reshape(shape)
}

/// CP/Tucker rebuild `Σ_{n,m} left[o,n] · core[n,m,k,l] · right[m,i]` → `[o,i,k,l]`
/// (`rebuild_cp_decomposition` / `make_weight_cp`).
pub(crate) fn cp_rebuild(left: &Tensor, core: &Tensor, right: &Tensor) -> Result<Tensor> {
    let (n, m, kh, kw) = core.dims4()?;
    let o = left.dim(0)?;
    let i = right.dim(1)?;
    let x = left.matmul(&core.reshape((n, m * kh * kw))?)?; // [o, m·k·l]
    let x = x.reshape((o, m, kh * kw))?.transpose(1, 2)?.contiguous()?; // [o, kl, m]
    let x = x.broadcast_matmul(right)?; // [o, kl, i]
    x.transpose(1, 2)?.contiguous()?.reshape((o, i, kh, kw))
}

/// LoCon with a `lora_mid` core: up `[out,r,1,1]`, mid `[r,r,kh,kw]`, down `[r,in,1,1]`.
pub(crate) fn lora_cp(up: &Tensor, mid: &Tensor, down: &Tensor) -> Result<Tensor> {
    let out = up.dim(0)?;
    let r = up.dim(1)?;
    let up2 = up.reshape((out, r))?;
    let rd = down.dim(0)?;
    let down2 = down.reshape((rd, ()))?;
    cp_rebuild(&up2, mid, &down2)
}

/// One LoHa factor: `a·b`, or with a CP core `t`: `make_weight_cp(t, a, b)` (a `[r,out]`, b `[r,in]`).
pub(crate) fn loha_factor(a: &Tensor, b: &Tensor, t: Option<&Tensor>) -> Result<Tensor> {
    match t {
        None => a.matmul(b),
        Some(t) => cp_rebuild(&a.t()?.contiguous()?, t, b),
    }
}

/// Kronecker product of `a [p,q]` (or `[p,q,1,1]`) and `b [m,n,(k,l)]` → `[p·m, q·n, (k,l)]`.
pub(crate) fn kron(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (p, q) = (a.dim(0)?, a.dim(1)?);
    let (m, n) = (b.dim(0)?, b.dim(1)?);
    let rest: Vec<usize> = b.dims().iter().skip(2).copied().collect();
    let mut ashape = vec![p, 1, q, 1];
    ashape.extend(rest.iter().map(|_| 1));
    let mut bshape = vec![1, m, 1, n];
    bshape.extend(rest.iter().copied());
    let prod = a.reshape(ashape)?.broadcast_mul(&b.reshape(bshape)?)?;
    let mut out = vec![p * m, q * n];
    out.extend(rest);
    prod.reshape(out)
}

/// DoRA (A1111 `apply_weight_decompose`): `(W+Δ)·scale/‖W+Δ‖` − W, the norm taken per input
/// channel (over output rows and kernel positions). `dora_scale` has `in` elements.
pub(crate) fn dora(delta: &Tensor, base: &Tensor, dora_scale: &Tensor) -> Result<Tensor> {
    let merged = (base.to_dtype(DType::F32)? + delta)?;
    let dims = merged.dims().to_vec();
    let inp = merged.dim(1)?;
    let norm = merged
        .transpose(0, 1)?
        .contiguous()?
        .reshape((inp, ()))?
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?; // [in, 1]
    let mut bshape = vec![1, inp];
    bshape.extend(dims.iter().skip(2).map(|_| 1));
    let norm = norm.reshape(bshape.clone())?;
    let scale = dora_scale.reshape(bshape)?;
    merged.broadcast_mul(&scale.broadcast_div(&norm)?)? - base.to_dtype(DType::F32)?
}

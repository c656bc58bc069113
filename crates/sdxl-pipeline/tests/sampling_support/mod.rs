//! Helpers shared by the sampler tests: f64 views of tensors and their largest difference.
#![allow(dead_code)]

use candle_core::{DType, Tensor};

/// All elements of `t` as f64.
pub fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// max |a − b| in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64s(a)
        .iter()
        .zip(f64s(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

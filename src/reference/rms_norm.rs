//! Reference RMSNorm in f64.

use crate::tensor::DType;

/// `y = x / sqrt(mean(x^2) + eps) * (w + weight_offset)` over rows of `n = weight.len()`.
///
/// With `residual`, `h = x + residual` is first rounded to `dtype` (the storage dtype, as the model
/// would store it) and returned as the second value; the norm is taken of `h`. Outputs are
/// unrounded f64.
pub fn rms_norm(
    x: &[f64],
    weight: &[f64],
    residual: Option<&[f64]>,
    eps: f64,
    weight_offset: f64,
    dtype: DType,
) -> (Vec<f64>, Option<Vec<f64>>) {
    let n = weight.len();
    assert!(
        n > 0 && x.len().is_multiple_of(n),
        "reference rms_norm: x length {} is not a multiple of {n}",
        x.len()
    );
    let h: Vec<f64> = match residual {
        Some(r) => x.iter().zip(r).map(|(&a, &b)| dtype.round(a + b)).collect(),
        None => x.to_vec(),
    };
    let mut out = vec![0.0; x.len()];
    for (row_in, row_out) in h.chunks(n).zip(out.chunks_mut(n)) {
        let mut sum_sq = 0.0;
        for &v in row_in {
            sum_sq += v * v;
        }
        let inv = 1.0 / (sum_sq / n as f64 + eps).sqrt();
        for i in 0..n {
            row_out[i] = row_in[i] * inv * (weight[i] + weight_offset);
        }
    }
    (out, residual.map(|_| h))
}

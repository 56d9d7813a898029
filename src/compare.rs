//! How GPU results are judged against the f64 reference.
//!
//! Metric: NMSE = sum((got - want)^2) / sum(want^2) over the finite reference values. A NaN in the
//! output fails unless the reference has a NaN in the same place; infinities must match exactly
//! (same place, same sign).

use crate::tensor::DType;

/// The outcome of comparing one output against the reference.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Comparison {
    /// Number of reference values.
    pub n: usize,
    /// NMSE over the finite reference values.
    pub nmse: f64,
    /// Largest absolute difference over the finite values.
    pub max_abs: f64,
    /// Positions where exactly one of the two is NaN.
    pub nan_mismatch: usize,
    /// Positions where the two disagree about an infinity.
    pub inf_mismatch: usize,
    /// Length mismatch between the two slices (always a failure).
    pub len_mismatch: bool,
}

impl Comparison {
    /// True when the shapes matched, the NaN/inf rules hold and NMSE is within `tol`.
    pub fn passes(&self, tol: f64) -> bool {
        !self.len_mismatch && self.nan_mismatch == 0 && self.inf_mismatch == 0 && self.nmse <= tol
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nmse {:.3e}, max abs err {:.3e}",
            self.nmse, self.max_abs
        )?;
        if self.nan_mismatch > 0 {
            write!(f, ", {} NaN mismatches", self.nan_mismatch)?;
        }
        if self.inf_mismatch > 0 {
            write!(f, ", {} inf mismatches", self.inf_mismatch)?;
        }
        if self.len_mismatch {
            write!(f, ", length mismatch")?;
        }
        Ok(())
    }
}

/// Compare `got` against `want` (see the module docs for the rules).
pub fn compare(got: &[f32], want: &[f64]) -> Comparison {
    let mut c = Comparison {
        n: want.len(),
        len_mismatch: got.len() != want.len(),
        ..Default::default()
    };
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let g = g as f64;
        if w.is_nan() || g.is_nan() {
            if w.is_nan() != g.is_nan() {
                c.nan_mismatch += 1;
            }
            continue;
        }
        if w.is_infinite() || g.is_infinite() {
            if g != w {
                c.inf_mismatch += 1;
            }
            continue;
        }
        let d = g - w;
        err += d * d;
        norm += w * w;
        c.max_abs = c.max_abs.max(d.abs());
    }
    c.nmse = if norm > 0.0 {
        err / norm
    } else if err > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    c
}

/// Default NMSE limit for outputs stored in `dtype`. Storage rounding alone gives about 1e-14
/// (f32), 8e-8 (f16) and 5e-6 (bf16); the limits leave an order of magnitude for f32 arithmetic.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-10,
        DType::F16 => 1e-6,
        DType::BF16 => 5e-5,
    }
}

//! Reference RoPE in f64: the frequency table of every HF `rope_type` and the rotation itself.
//!
//! The frequency code follows `transformers/modeling_rope_utils.py` formula by formula, in f64
//! instead of f32. The GPU op uploads exactly the table [`frequencies`] returns, so the two can
//! only differ in how they evaluate `cos(p * inv_freq)` and `sin(p * inv_freq)`.

pub use crate::ops::rope::{frequencies, Layout, Scaling};
/// Rotate `x: [batch, seq, heads, head_dim]` (row-major, given as `shape`) in f64.
///
/// `positions` has `batch * seq` entries (token `(b, s)` at `b * seq + s`). Pair `i` of each head,
/// at the indices [`Layout::pair`] gives, is rotated by `positions * inv_freq[i]` and scaled by
/// `attention_factor`; elements from `rotary_dim` on are copied unchanged.
pub fn rope(
    x: &[f64],
    shape: [usize; 4],
    positions: &[i64],
    inv_freq: &[f64],
    attention_factor: f64,
    layout: Layout,
    rotary_dim: usize,
) -> Vec<f64> {
    let [batch, seq, heads, head_dim] = shape;
    assert_eq!(x.len(), batch * seq * heads * head_dim, "reference rope: x");
    assert_eq!(positions.len(), batch * seq, "reference rope: positions");
    assert_eq!(inv_freq.len(), rotary_dim / 2, "reference rope: inv_freq");
    let mut out = x.to_vec();
    for (t, &pos) in positions.iter().enumerate() {
        let p = pos as f64;
        for h in 0..heads {
            let base = (t * heads + h) * head_dim;
            for (i, &f) in inv_freq.iter().enumerate() {
                let angle = p * f;
                let (s, c) = angle.sin_cos();
                let (ia, ib) = layout.pair(i, rotary_dim);
                let (a, b) = (x[base + ia], x[base + ib]);
                out[base + ia] = (a * c - b * s) * attention_factor;
                out[base + ib] = (b * c + a * s) * attention_factor;
            }
        }
    }
    out
}

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

/// The per-head RMSNorm that QK-norm models apply before RoPE, in f64: every `head_dim`
/// elements of `x` become `x / sqrt(mean(x²) + eps) * (weight + weight_offset)`
/// (Qwen3 offset 0, Gemma 3 offset 1; see [`crate::ops::rope::HeadNorm`]).
pub fn head_norm(x: &[f64], weight: &[f64], eps: f64, weight_offset: f64) -> Vec<f64> {
    let head_dim = weight.len();
    assert!(
        head_dim > 0 && x.len().is_multiple_of(head_dim),
        "reference head_norm: x has {} values, not a multiple of head_dim {head_dim}",
        x.len()
    );
    let mut out = Vec::with_capacity(x.len());
    for head in x.chunks(head_dim) {
        let ms = head.iter().map(|v| v * v).sum::<f64>() / head_dim as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(
            head.iter()
                .zip(weight)
                .map(|(v, w)| v * inv * (w + weight_offset)),
        );
    }
    out
}

/// The position row (0 time, 1 height, 2 width) that rotates pair `i` under multimodal RoPE
/// with `section = [t, h, w]`: contiguous runs (Qwen2-VL's `mrope_section`), or interleaved
/// (Qwen3-VL's `apply_interleaved_mrope`: row `i % 3` while `i < 3h` (row 1) or `i < 3w`
/// (row 2), else row 0).
pub fn mrope_row(section: [usize; 3], interleaved: bool, i: usize) -> usize {
    let [t, h, w] = section;
    if interleaved {
        match i % 3 {
            1 if i < 3 * h => 1,
            2 if i < 3 * w => 2,
            _ => 0,
        }
    } else if i < t {
        0
    } else if i < t + h {
        1
    } else {
        2
    }
}

/// Multimodal RoPE (Qwen2-VL `mrope_section`) in f64: like [`rope`], but pair `i` of token `t`
/// rotates by `positions[j * batch * seq + t]`, where `j` is the section of `mrope_section`
/// (`[time, height, width]` pair counts, summing to `rotary_dim / 2`) that holds `i`;
/// `positions` is `[3, batch * seq]`.
#[allow(clippy::too_many_arguments)]
pub fn rope_multimodal(
    x: &[f64],
    shape: [usize; 4],
    positions: &[i64],
    mrope_section: [usize; 3],
    inv_freq: &[f64],
    attention_factor: f64,
    layout: Layout,
    rotary_dim: usize,
) -> Vec<f64> {
    let rows = Mrope {
        section: mrope_section,
        interleaved: false,
    };
    rope_mrope(
        x,
        shape,
        positions,
        rows,
        inv_freq,
        attention_factor,
        layout,
        rotary_dim,
    )
}

/// Which multimodal RoPE: the `[t, h, w]` pair counts and whether they interleave.
#[derive(Clone, Copy, Debug)]
pub struct Mrope {
    /// `mrope_section`, pair counts summing to `rotary_dim / 2`.
    pub section: [usize; 3],
    /// Qwen3-VL's interleaved layout ([`mrope_row`]).
    pub interleaved: bool,
}

/// Multimodal RoPE in f64, contiguous or interleaved sections: pair `i` of token `t` rotates by
/// `positions[mrope_row(i) * batch * seq + t]`; `positions` is `[3, batch * seq]`.
#[allow(clippy::too_many_arguments)]
pub fn rope_mrope(
    x: &[f64],
    shape: [usize; 4],
    positions: &[i64],
    mrope: Mrope,
    inv_freq: &[f64],
    attention_factor: f64,
    layout: Layout,
    rotary_dim: usize,
) -> Vec<f64> {
    let [batch, seq, heads, head_dim] = shape;
    let tokens = batch * seq;
    assert_eq!(x.len(), tokens * heads * head_dim, "reference rope: x");
    assert_eq!(positions.len(), 3 * tokens, "reference rope: positions");
    assert_eq!(inv_freq.len(), rotary_dim / 2, "reference rope: inv_freq");
    assert_eq!(
        mrope.section.iter().sum::<usize>(),
        rotary_dim / 2,
        "reference rope: mrope_section"
    );
    let mut out = x.to_vec();
    for t in 0..tokens {
        for h in 0..heads {
            let base = (t * heads + h) * head_dim;
            for (i, &f) in inv_freq.iter().enumerate() {
                let row = mrope_row(mrope.section, mrope.interleaved, i);
                let p = positions[row * tokens + t] as f64;
                let (s, c) = (p * f).sin_cos();
                let (ia, ib) = layout.pair(i, rotary_dim);
                let (a, b) = (x[base + ia], x[base + ib]);
                out[base + ia] = (a * c - b * s) * attention_factor;
                out[base + ib] = (b * c + a * s) * attention_factor;
            }
        }
    }
    out
}

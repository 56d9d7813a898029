//! Reference RoPE in f64: the frequency table of every HF `rope_type` and the rotation itself.
//!
//! The frequency code follows `transformers/modeling_rope_utils.py` formula by formula, in f64
//! instead of f32. The GPU op uploads exactly the table [`frequencies`] returns, so the two can
//! only differ in how they evaluate `cos(p * inv_freq)` and `sin(p * inv_freq)`.

use std::f64::consts::PI;

/// Which pairs of a head RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Pairs `(i, i + rotary_dim/2)`: HF's `rotate_half` (Llama in HF, GPT-NeoX, Qwen, Phi).
    Half,
    /// Pairs `(2i, 2i + 1)`: Meta's original Llama, GPT-J.
    Interleaved,
}

impl Layout {
    /// `"half"` or `"interleaved"`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Half => "half",
            Layout::Interleaved => "interleaved",
        }
    }
    /// Element indices (within a head) of pair `i` for a rotary part of `rotary_dim` elements.
    pub fn pair(self, i: usize, rotary_dim: usize) -> (usize, usize) {
        match self {
            Layout::Half => (i, i + rotary_dim / 2),
            Layout::Interleaved => (2 * i, 2 * i + 1),
        }
    }
}

/// Frequency scaling, mirroring HF's `rope_scaling["rope_type"]` with the same parameter names.
#[derive(Clone, Debug, PartialEq)]
pub enum Scaling {
    /// `inv_freq[i] = theta^(-2i/rotary_dim)`.
    Default,
    /// Position interpolation: `inv_freq / factor`.
    Linear { factor: f64 },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN: per-pair blend of interpolated and extrapolated frequencies, cos and sin scaled by
    /// `attention_factor` (default `0.1 ln(factor) + 1`, or DeepSeek's `mscale` ratio).
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        /// Default 32.
        beta_fast: f64,
        /// Default 1.
        beta_slow: f64,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        /// Round the correction range outward to integers (HF default true).
        truncate: bool,
    },
    /// Dynamic NTK: `theta` grows with the sequence length once it passes
    /// `original_max_position_embeddings` (HF reads the config's `max_position_embeddings`):
    /// `theta * (factor * seq_len / orig - (factor - 1))^(dim / (dim - 2))`.
    Dynamic {
        factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Phi-3 LongRoPE: per-pair divisors, `short_factor` up to `original_max_position_embeddings`
    /// tokens and `long_factor` beyond; cos and sin scaled by `attention_factor` (default
    /// `sqrt(1 + ln(factor) / ln(original_max_position_embeddings))`, 1 when `factor <= 1`).
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        /// `max_position_embeddings / original_max_position_embeddings`; only used for the
        /// default attention factor.
        factor: f64,
        original_max_position_embeddings: f64,
        attention_factor: Option<f64>,
    },
    /// A table supplied by the user (one entry per pair), with its cos/sin multiplier.
    InvFreq {
        inv_freq: Vec<f64>,
        attention_factor: f64,
    },
}

impl Scaling {
    /// HF's `rope_type` string.
    pub fn rope_type(&self) -> &'static str {
        match self {
            Scaling::Default => "default",
            Scaling::Linear { .. } => "linear",
            Scaling::Llama3 { .. } => "llama3",
            Scaling::Yarn { .. } => "yarn",
            Scaling::Dynamic { .. } => "dynamic",
            Scaling::LongRope { .. } => "longrope",
            Scaling::InvFreq { .. } => "inv_freq",
        }
    }

    /// YaRN with HF's defaults (`beta_fast` 32, `beta_slow` 1, default attention factor).
    pub fn yarn(factor: f64, original_max_position_embeddings: f64) -> Self {
        Scaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: true,
        }
    }

    /// Whether the table depends on the sequence length (dynamic NTK, LongRoPE).
    pub fn needs_seq_len(&self) -> bool {
        matches!(self, Scaling::Dynamic { .. } | Scaling::LongRope { .. })
    }
}

/// `theta^(-2i/dim)` for `i < dim/2`.
fn default_inv_freq(theta: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
        .collect()
}

/// The f64 frequency table (`rotary_dim / 2` entries) and the factor that multiplies cos and sin.
///
/// `seq_len` is the sequence length the length-dependent scalings see: HF uses
/// `max(position_ids) + 1` of the current call (dynamic NTK: `theta` is rescaled only when it
/// exceeds `original_max_position_embeddings`; LongRoPE: `long_factor` when it exceeds it). Other
/// scalings ignore it. Parameters are assumed valid (the op validates them first).
pub fn frequencies(
    theta: f64,
    rotary_dim: usize,
    scaling: &Scaling,
    seq_len: usize,
) -> (Vec<f64>, f64) {
    let dim = rotary_dim;
    match scaling {
        Scaling::Default => (default_inv_freq(theta, dim), 1.0),
        Scaling::Linear { factor } => (
            default_inv_freq(theta, dim)
                .into_iter()
                .map(|f| f / factor)
                .collect(),
            1.0,
        ),
        Scaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_context_len,
        } => {
            let low_freq_wavelen = old_context_len / low_freq_factor;
            let high_freq_wavelen = old_context_len / high_freq_factor;
            let inv = default_inv_freq(theta, dim)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_context_len / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (inv, 1.0)
        }
        Scaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            let get_mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attn = match (attention_factor, mscale, mscale_all_dim) {
                (Some(a), _, _) => *a,
                (None, Some(m), Some(mad)) if *m != 0.0 && *mad != 0.0 => {
                    get_mscale(*factor, *m) / get_mscale(*factor, *mad)
                }
                _ => get_mscale(*factor, 1.0),
            };
            let correction_dim = |num_rotations: f64| {
                (dim as f64 * (original_max_position_embeddings / (num_rotations * 2.0 * PI)).ln())
                    / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let low = low.max(0.0);
            let mut high = high.min(dim as f64 - 1.0);
            if low == high {
                high += 0.001;
            }
            let inv = (0..dim / 2)
                .map(|i| {
                    let pos_freq = theta.powf((2 * i) as f64 / dim as f64);
                    let extrapolation = 1.0 / pos_freq;
                    let interpolation = 1.0 / (factor * pos_freq);
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor)
                        + extrapolation * extrapolation_factor
                })
                .collect();
            (inv, attn)
        }
        Scaling::Dynamic {
            factor,
            original_max_position_embeddings: orig,
        } => {
            let seq = seq_len as f64;
            let base = if seq > *orig {
                theta
                    * ((factor * seq / orig) - (factor - 1.0)).powf(dim as f64 / (dim as f64 - 2.0))
            } else {
                theta
            };
            (default_inv_freq(base, dim), 1.0)
        }
        Scaling::LongRope {
            short_factor,
            long_factor,
            factor,
            original_max_position_embeddings: orig,
            attention_factor,
        } => {
            let attn = attention_factor.unwrap_or_else(|| {
                if *factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / orig.ln()).sqrt()
                }
            });
            let ext = if seq_len as f64 > *orig {
                long_factor
            } else {
                short_factor
            };
            let inv = default_inv_freq(theta, dim)
                .into_iter()
                .zip(ext)
                .map(|(f, e)| f / e)
                .collect();
            (inv, attn)
        }
        Scaling::InvFreq {
            inv_freq,
            attention_factor,
        } => (inv_freq.clone(), *attention_factor),
    }
}

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
    for t in 0..batch * seq {
        let p = positions[t] as f64;
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

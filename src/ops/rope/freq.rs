//! RoPE's frequency tables: [`Layout`], HF's `rope_type`s ([`Scaling`]) and their f64 `inv_freq`
//! tables ([`frequencies`], following `transformers/modeling_rope_utils.py` formula by formula
//! in f64), parameter validation, and the 64-bit fixed-point turns the kernel reads ([`Freq`]).

use std::f64::consts::PI;

use super::{Rope, OP};
use crate::error::{Error, Result};
use crate::tensor::DType;

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
    Linear {
        /// Position interpolation factor.
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth blend between;
    /// with `low_freq_factor >= high_freq_factor` (Llama-4-Scout: 1 and 1) the blend is empty
    /// and the table is a step, as HF computes it.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: f64,
    },
    /// YaRN: per-pair blend of interpolated and extrapolated frequencies, cos and sin scaled by
    /// `attention_factor` (default `0.1 ln(factor) + 1`, or DeepSeek's `mscale` ratio).
    Yarn {
        /// Context extension factor.
        factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: f64,
        /// Default 32.
        beta_fast: f64,
        /// Default 1.
        beta_slow: f64,
        /// cos/sin multiplier; default from `mscale`/`mscale_all_dim` or `0.1 ln(factor) + 1`.
        attention_factor: Option<f64>,
        /// DeepSeek's `mscale`.
        mscale: Option<f64>,
        /// DeepSeek's `mscale_all_dim`.
        mscale_all_dim: Option<f64>,
        /// Round the correction range outward to integers (HF default true).
        truncate: bool,
    },
    /// Dynamic NTK: `theta` grows with the sequence length once it passes
    /// `original_max_position_embeddings` (HF reads the config's `max_position_embeddings`):
    /// `theta * (factor * seq_len / orig - (factor - 1))^(dim / (dim - 2))`.
    Dynamic {
        /// Context extension factor.
        factor: f64,
        /// The pre-training context length (HF reads `max_position_embeddings`).
        original_max_position_embeddings: f64,
    },
    /// Phi-3 LongRoPE: per-pair divisors, `short_factor` up to `original_max_position_embeddings`
    /// tokens and `long_factor` beyond; cos and sin scaled by `attention_factor` (default
    /// `sqrt(1 + ln(factor) / ln(original_max_position_embeddings))`, 1 when `factor <= 1`).
    LongRope {
        /// Per-pair divisors up to `original_max_position_embeddings` tokens.
        short_factor: Vec<f64>,
        /// Per-pair divisors beyond.
        long_factor: Vec<f64>,
        /// `max_position_embeddings / original_max_position_embeddings`; only used for the
        /// default attention factor.
        factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: f64,
        /// cos/sin multiplier; default from `factor`.
        attention_factor: Option<f64>,
    },
    /// A table supplied by the user (one entry per pair), with its cos/sin multiplier.
    InvFreq {
        /// One inverse frequency per pair.
        inv_freq: Vec<f64>,
        /// cos/sin multiplier.
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
            // HF's order of tests: the long-wavelength test wins over the short one, which only
            // matters when `low_freq_factor >= high_freq_factor` (the smoothing band is empty;
            // HF warns and computes this table). A wavelength exactly on an empty band's edge
            // gives 0/0 there as in HF, which `Rope::inv_freq` rejects.
            let inv = default_inv_freq(theta, dim)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen > low_freq_wavelen {
                        f / factor
                    } else if wavelen < high_freq_wavelen {
                        f
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

/// The per-pair entry of the frequency table; mirrors `struct Freq` in `shaders/rope.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Freq {
    /// `frac(inv_freq / 2pi) * 2^64`, high word.
    pub turn_hi: u32,
    /// Low word.
    pub turn_lo: u32,
    /// `inv_freq` rounded to f32 (`SinCos::NaiveF32`, a benchmark method, only).
    pub inv_freq: f32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// `frac(inv_freq / 2pi)` as a 64-bit fixed-point fraction of a turn, (high, low) words.
///
/// The division is done in double-double (2pi = `TAU + TAU_LO`), so the turn is right to about
/// 2^-60 for any finite `inv_freq`; the kernel multiplies it by the integer position.
pub fn fixed_point_turn(inv_freq: f64) -> (u32, u32) {
    const TAU_LO: f64 = 2.449_293_598_294_706_4e-16;
    let t = inv_freq / std::f64::consts::TAU;
    // inv_freq = t * (TAU + TAU_LO) + r exactly enough: the residual r is exact by fma.
    let r = (-t).mul_add(std::f64::consts::TAU, inv_freq) - t * TAU_LO;
    let t_lo = r / std::f64::consts::TAU;
    let frac = t - t.floor(); // exact
    let x = frac * 4294967296.0; // exact (power of two)
    let mut hi = x.floor();
    let mut rem = (x - hi) + t_lo * 4294967296.0;
    // `rem` is within a unit or two of [0, 1) for real frequencies, but once ulp(inv_freq) is
    // far above 1 (theta near 0) it is huge: carry with a floor, never a loop of +-1 steps,
    // which would not terminate there. The second step catches -tiny + 1 rounding to 1.
    let carry = rem.floor();
    rem -= carry;
    hi += carry;
    if rem >= 1.0 {
        rem -= 1.0;
        hi += 1.0;
    }
    let mut lo = (rem * 4294967296.0).round();
    if lo >= 4294967296.0 {
        lo = 0.0;
        hi += 1.0;
    }
    let hi = hi.rem_euclid(4294967296.0);
    (hi as u32, lo as u32)
}

/// [`Freq`] entries for an f64 `inv_freq` table.
pub(crate) fn turns(inv: &[f64]) -> Vec<Freq> {
    inv.iter()
        .map(|&f| {
            let (turn_hi, turn_lo) = fixed_point_turn(f);
            Freq {
                turn_hi,
                turn_lo,
                inv_freq: f as f32,
                _pad: 0,
            }
        })
        .collect()
}

/// The largest |inv_freq| (radians per position) the op accepts. Beyond it one f64 ulp of the
/// frequency (2^-30 at 2^22) approaches the kernel's angle resolution of 2^-32 turn (1.5e-9 rad)
/// at position 1 and passes it at position 2, so the angles would be rounding noise of the
/// frequency rather than the rotation asked for; real configs stay below a few radians.
pub const MAX_INV_FREQ: f64 = 4_194_304.0;

fn check_f(name: &str, v: f64, positive: bool) -> Result<()> {
    crate::ensure!(
        v.is_finite() && (!positive || v > 0.0),
        Param,
        OP,
        "{name} must be finite{}, got {v}",
        if positive { " and > 0" } else { "" }
    );
    Ok(())
}

impl Rope {
    /// Check `theta`, `rotary_dim` and the scaling parameters for heads of `head_dim` elements.
    pub fn validate_params(&self, head_dim: usize) -> Result<usize> {
        check_f("theta", self.theta, true)?;
        // A subnormal theta keeps only a few significant bits, so theta^(2i/d) is not the
        // number the config means (and its frequencies overflow for most head sizes).
        crate::ensure!(
            self.theta.is_normal(),
            Param,
            OP,
            "theta must be a normal f64 (>= {:e}), got {:e}",
            f64::MIN_POSITIVE,
            self.theta
        );
        let rd = self.rotary_dim.unwrap_or(head_dim);
        // Without rotary_dim the whole head rotates: name the head_dim the user passed, not a
        // rotary_dim they never set.
        crate::ensure!(
            self.rotary_dim.is_some() || (head_dim.is_multiple_of(2) && head_dim > 0),
            Param,
            OP,
            "head_dim {head_dim} must be even and > 0 (RoPE rotates pairs; rotary_dim is not set, so the whole head rotates)"
        );
        crate::ensure!(
            rd.is_multiple_of(2) && rd > 0 && rd <= head_dim,
            Param,
            OP,
            "rotary_dim {rd} must be even, > 0 and <= head_dim {head_dim}"
        );
        let pairs = rd / 2;
        if let Some(sec) = self.mrope_section {
            let sum = sec.iter().try_fold(0usize, |a, &b| a.checked_add(b));
            crate::ensure!(
                sum == Some(pairs),
                Param,
                OP,
                "mrope_section {sec:?} must sum to rotary_dim / 2 = {pairs} pairs (rotary_dim {rd})"
            );
        }
        let orig_ok = |v: f64| check_f("original_max_position_embeddings", v, true);
        match &self.scaling {
            Scaling::Default => {}
            Scaling::Linear { factor } => check_f("factor", *factor, true)?,
            Scaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                check_f("factor", *factor, true)?;
                check_f("low_freq_factor", *low_freq_factor, true)?;
                check_f("high_freq_factor", *high_freq_factor, true)?;
                orig_ok(*original_max_position_embeddings)?;
                // No order between the two factors: HF only warns when low_freq_factor >=
                // high_freq_factor (Llama-4-Scout ships 1 and 1) and computes a well-defined table.
            }
            Scaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                ..
            } => {
                check_f("factor", *factor, true)?;
                orig_ok(*original_max_position_embeddings)?;
                check_f("beta_fast", *beta_fast, true)?;
                check_f("beta_slow", *beta_slow, true)?;
                crate::ensure!(
                    self.theta != 1.0,
                    Param,
                    OP,
                    "yarn needs theta != 1 (its correction range divides by ln(theta))"
                );
                if let Some(a) = attention_factor {
                    check_f("attention_factor", *a, true)?;
                }
                for (n, m) in [("mscale", mscale), ("mscale_all_dim", mscale_all_dim)] {
                    if let Some(m) = m {
                        check_f(n, *m, false)?;
                    }
                }
            }
            Scaling::Dynamic {
                factor,
                original_max_position_embeddings,
            } => {
                check_f("factor", *factor, true)?;
                orig_ok(*original_max_position_embeddings)?;
                crate::ensure!(
                    rd > 2,
                    Param,
                    OP,
                    "dynamic NTK needs rotary_dim > 2 (its exponent is dim / (dim - 2)), got {rd}"
                );
            }
            Scaling::LongRope {
                short_factor,
                long_factor,
                factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                check_f("factor", *factor, true)?;
                orig_ok(*original_max_position_embeddings)?;
                if let Some(a) = attention_factor {
                    check_f("attention_factor", *a, true)?;
                }
                for (n, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    crate::ensure!(
                        f.len() == pairs,
                        Param,
                        OP,
                        "longrope {n} has {} entries but rotary_dim {rd} needs {pairs}",
                        f.len()
                    );
                    if let Some(bad) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                        return Err(Error::param(
                            OP,
                            format!("longrope {n} entries must be finite and > 0, got {bad}"),
                        ));
                    }
                }
            }
            Scaling::InvFreq {
                inv_freq,
                attention_factor,
            } => {
                crate::ensure!(
                    inv_freq.len() == pairs,
                    Param,
                    OP,
                    "inv_freq table has {} entries but rotary_dim {rd} needs {pairs}",
                    inv_freq.len()
                );
                if let Some(bad) = inv_freq.iter().find(|v| !v.is_finite()) {
                    return Err(Error::param(
                        OP,
                        format!("inv_freq entries must be finite, got {bad}"),
                    ));
                }
                check_f("attention_factor", *attention_factor, false)?;
            }
        }
        Ok(rd)
    }

    /// [`Rope::validate_params`], plus the storage rule: with f16/bf16 storage and the half
    /// layout, `rotary_dim` must be a multiple of 4, so that the two elements of every pair sit
    /// in the same half of their 32-bit words and each word is written by one invocation.
    /// Returns `rotary_dim`.
    pub fn validate_for(&self, head_dim: usize, dtype: DType) -> Result<usize> {
        let rd = self.validate_params(head_dim)?;
        let what = if self.rotary_dim.is_some() {
            "rotary_dim"
        } else {
            "head_dim (rotary_dim not set)"
        };
        crate::ensure!(
            !(dtype.is_half() && self.layout == Layout::Half) || rd % 4 == 0,
            Param,
            OP,
            "{what} {rd} with {dtype} storage and the half layout must be a multiple of 4 (pairs (i, i + rotary_dim/2) must share 32-bit words)"
        );
        Ok(rd)
    }

    /// The f64 `inv_freq` table (`rotary_dim / 2` entries) and the cos/sin multiplier for heads
    /// of `head_dim` elements, after validation. `seq_len` is what dynamic NTK and LongRoPE see.
    pub fn inv_freq(&self, head_dim: usize, seq_len: usize) -> Result<(Vec<f64>, f64)> {
        let rd = self.validate_params(head_dim)?;
        let (inv, attn) = frequencies(self.theta, rd, &self.scaling, seq_len);
        if let Some((i, bad)) = inv
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && v.abs() <= MAX_INV_FREQ))
        {
            return Err(Error::param(
                OP,
                format!(
                    "theta {:e} with {} scaling and rotary_dim {rd} gives inv_freq[{i}] = {bad:e} rad per position; frequencies must be finite and at most 2^22 = {MAX_INV_FREQ}",
                    self.theta,
                    self.scaling.rope_type()
                ),
            ));
        }
        crate::ensure!(
            attn.is_finite(),
            Param,
            OP,
            "{} scaling gives a non-finite attention_factor {attn}",
            self.scaling.rope_type()
        );
        Ok((inv, attn))
    }

    /// The per-pair table the kernel reads (fixed-point turns of [`Rope::inv_freq`]) and the
    /// cos/sin multiplier, for kernels that fuse RoPE (the angle code is `turn_of` and
    /// `cos_sin` in `shaders/rope.wgsl`).
    pub fn turn_table(&self, head_dim: usize, seq_len: usize) -> Result<(Vec<Freq>, f32)> {
        let (inv, attn) = self.inv_freq(head_dim, seq_len)?;
        Ok((turns(&inv), attn as f32))
    }
}

/// The fixed-point frequency table of the last call, with what it was built from. A decode loop
/// calls RoPE with one configuration over and over; the table (an f64 `powf` and a fixed-point
/// conversion per pair) is rebuilt only when the configuration, head_dim or sequence length
/// changes. The configuration is compared, not trusted, because `Rope`'s fields are public.
#[derive(Clone, Default)]
pub(crate) struct TableCache(std::sync::Arc<std::sync::Mutex<Option<CachedTable>>>);

pub(crate) struct CachedTable {
    config: Rope,
    head_dim: usize,
    seq_len: usize,
    freqs: std::sync::Arc<[Freq]>,
    attention_factor: f64,
}

impl TableCache {
    /// The table for `rope` at `head_dim` and `seq_len`: the cached one when everything matches,
    /// else `build()`'s result, which replaces it.
    pub(crate) fn get_or_build(
        &self,
        rope: &Rope,
        head_dim: usize,
        seq_len: usize,
        build: impl FnOnce() -> Result<(Vec<Freq>, f64)>,
    ) -> Result<(std::sync::Arc<[Freq]>, f64)> {
        let Ok(mut slot) = self.0.lock() else {
            return build().map(|(f, a)| (f.into(), a));
        };
        if let Some(c) = slot.as_ref() {
            if c.head_dim == head_dim && c.seq_len == seq_len && c.config == *rope {
                return Ok((c.freqs.clone(), c.attention_factor));
            }
        }
        let (freqs, attention_factor) = build()?;
        // Shared, not copied, by every call that hits.
        let freqs: std::sync::Arc<[Freq]> = freqs.into();
        // The stored configuration gets a cache of its own, so the entry does not keep its own
        // cache alive.
        let config = Rope {
            table: TableCache::default(),
            ..rope.clone()
        };
        *slot = Some(CachedTable {
            config,
            head_dim,
            seq_len,
            freqs: freqs.clone(),
            attention_factor,
        });
        Ok((freqs, attention_factor))
    }
}

/// Not part of the configuration: every cache equals every other.
impl PartialEq for TableCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for TableCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableCache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_turn_matches_f64() {
        for &f in &[
            1.0,
            0.5,
            1e-4,
            3.7e-7,
            2.0 * std::f64::consts::PI,
            10.0,
            0.0,
        ] {
            let (hi, lo) = fixed_point_turn(f);
            let t = (hi as f64 + lo as f64 / 4294967296.0) / 4294967296.0;
            let want = (f / std::f64::consts::TAU).fract();
            let d = (t - want).abs().min(1.0 - (t - want).abs());
            assert!(d < 1e-15, "inv_freq {f}: turn {t} vs {want}");
        }
    }

    #[test]
    fn turn_table_is_the_fixed_point_inv_freq() {
        let (t, scale) = Rope::default().turn_table(128, 0).unwrap();
        assert_eq!((t.len(), scale), (64, 1.0));
        // inv_freq[0] = 1: 2^32 / 2pi = 683565275.57...
        assert_eq!(t[0].turn_hi, 683_565_275);
        assert!(Rope::default()
            .with_rotary_dim(7)
            .turn_table(128, 0)
            .is_err());
    }
}

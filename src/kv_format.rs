//! Storage formats of K and V in a KV cache ([`KvFormat`]), an axis apart from the storage dtype
//! of q and out ([`DType`]): the float formats hold values as a [`DType`] does; the quantized ones
//! hold 8 or 4 bits per value and are dequantized in registers by the attention kernels.
//!
//! Formats, bit-compatible with their references (`reference::quant` implements them on the CPU):
//! - [`KvFormat::Q8_0`], ggml's `quantize_row_q8_0_ref`: blocks of 32 consecutive values of a
//!   head row; in f32 `d = amax / 127`, `id = 1 / d` (0 when `d` is 0), `q = roundf(x · id)`
//!   (half away from zero); stored: 32 int8 and `d` rounded to f16; value = `q · d(f16)`.
//! - [`KvFormat::Q4_0`], ggml's `quantize_row_q4_0_ref`: blocks of 32; `max` is the value of
//!   largest magnitude (the first of equal ones), sign kept; in f32 `d = max / -8`, `id = 1 / d`,
//!   `q = min(15, trunc(x · id + 8.5))` with the product rounded to f32 before the sum (no fused
//!   multiply-add: what ggml's reference compiled without contraction and `gguf.quants` give);
//!   `d` stored as f16; value = `(q - 8) · d`.
//! - [`KvFormat::Fp8E4M3`], OCP e4m3 as vLLM's `fp8_e4m3` cache: a per-tensor f32 scale (the
//!   cache's `k_scale` / `v_scale`, default 1); stored `e4m3(x / scale)`, the quotient clamped to
//!   ±448 and rounded to nearest even; value = `e4m3 · scale`.
//!
//! # Layout of a quantized buffer
//! A buffer holds `rows` head rows of `head_dim` values (a cache: `[batch, n_kv_heads, capacity,
//! head_dim]`, row `(b · n_kv_heads + h) · capacity + t`), element `e` being value `e % head_dim`
//! of row `e / head_dim`, as in a float cache:
//! - the data plane first: q8_0 and fp8 one byte per value, byte `e`; q4_0 16 bytes per block of
//!   32, value `j` of block `k` in the low nibble of byte `16k + j` for `j < 16`, in the high
//!   nibble of byte `16k + j - 16` otherwise (ggml's nibble order). So the 4 values at a
//!   multiple of 4 are one 32-bit word, and a block's data is 32 (q8_0) or 16 (q4_0) bytes
//!   starting on a 16-byte boundary (16-byte loads take whole blocks);
//! - then, for the block formats, the scale plane ([`KvFormat::scale_plane_byte`]): per row
//!   `head_dim / 32` f16 scales padded to an even count ([`KvFormat::scales_per_row`]), so that
//!   no 32-bit word holds the scales of two rows and the append kernel writes whole words; the
//!   scale of element `e` is f16 number `(e / head_dim) · scales_per_row + (e % head_dim) / 32`
//!   of the plane.
//!
//! Bytes per value: q8_0 1 + 2/32 (34 bytes per block, as ggml's), q4_0 0.5 + 2/32, fp8 1
//! (plus the padding scale of a row with an odd block count, e.g. head_dim 96).

use crate::error::Result;
use crate::tensor::DType;

/// Values per q8_0 / q4_0 block.
pub const BLOCK: usize = 32;
/// Largest finite e4m3 magnitude; quotients past it saturate.
pub const FP8_E4M3_MAX: f32 = 448.0;

/// How K and V values are stored in a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KvFormat {
    /// 32-bit float.
    F32,
    /// IEEE half, two per word.
    F16,
    /// bfloat16, two per word.
    BF16,
    /// ggml q8_0: blocks of 32 int8 with an f16 scale.
    Q8_0,
    /// ggml q4_0: blocks of 32 4-bit values with an f16 scale.
    Q4_0,
    /// OCP fp8 e4m3 with a per-tensor f32 scale.
    Fp8E4M3,
}

impl KvFormat {
    /// Every format.
    pub const ALL: [KvFormat; 6] = [
        KvFormat::F32,
        KvFormat::F16,
        KvFormat::BF16,
        KvFormat::Q8_0,
        KvFormat::Q4_0,
        KvFormat::Fp8E4M3,
    ];
    /// The quantized formats.
    pub const QUANTIZED: [KvFormat; 3] = [KvFormat::Q8_0, KvFormat::Q4_0, KvFormat::Fp8E4M3];

    /// Whether RoPE writes new K rows of dtype `new` straight into a cache of this format whose
    /// q/out dtype is `cache` (rotated on their way in, one pass over K): rows of the cache's
    /// dtype, or any rows into a quantized cache (`rope_q` quantizes as it writes). The one rule
    /// of `KvCache::rope_fused_for` and `PagedKvCache::rope_fused_for`.
    pub(crate) fn rope_writes_k(self, cache: DType, new: DType) -> bool {
        new == cache || self.is_quantized()
    }

    /// The float format that stores values as `dtype` does.
    pub fn from_dtype(dtype: DType) -> KvFormat {
        match dtype {
            DType::F32 => KvFormat::F32,
            DType::F16 => KvFormat::F16,
            DType::BF16 => KvFormat::BF16,
        }
    }

    /// The float dtype of a float format; `None` for the quantized ones.
    pub fn dtype(self) -> Option<DType> {
        match self {
            KvFormat::F32 => Some(DType::F32),
            KvFormat::F16 => Some(DType::F16),
            KvFormat::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    /// True for q8_0, q4_0 and fp8 e4m3.
    pub fn is_quantized(self) -> bool {
        self.dtype().is_none()
    }

    /// True for the formats with per-block f16 scales (q8_0, q4_0).
    pub fn is_block(self) -> bool {
        matches!(self, KvFormat::Q8_0 | KvFormat::Q4_0)
    }

    /// Lower-case name, as printed in errors and used by case files (`q8_0`, `fp8_e4m3`).
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
            KvFormat::BF16 => "bf16",
            KvFormat::Q8_0 => "q8_0",
            KvFormat::Q4_0 => "q4_0",
            KvFormat::Fp8E4M3 => "fp8_e4m3",
        }
    }

    /// The format named `name` ([`KvFormat::name`]).
    pub fn parse(name: &str) -> Option<KvFormat> {
        KvFormat::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The value of the `KV_FMT` override constant: the [`DType::shader_code`] of a float
    /// format, 3 q8_0, 4 q4_0, 5 fp8 e4m3 (`KV_*` in `shaders/common.wgsl`).
    pub fn shader_code(self) -> u32 {
        match self {
            KvFormat::Q8_0 => 3,
            KvFormat::Q4_0 => 4,
            KvFormat::Fp8E4M3 => 5,
            f => f.dtype().map_or(0, DType::shader_code),
        }
    }

    /// Bytes of the data plane for `n` values (a whole number of blocks for the block formats).
    pub fn data_bytes(self, n: usize) -> usize {
        match self {
            KvFormat::Q4_0 => n / 2,
            KvFormat::Q8_0 | KvFormat::Fp8E4M3 => n,
            f => n * f.dtype().map_or(4, DType::size),
        }
    }

    /// f16 scales per head row in the scale plane: `head_dim / 32` rounded up to even (0 for
    /// the formats without blocks).
    pub fn scales_per_row(self, head_dim: usize) -> usize {
        if self.is_block() {
            (head_dim / BLOCK).next_multiple_of(2)
        } else {
            0
        }
    }

    /// Byte offset of the scale plane in a buffer of `rows` rows (the end of the data plane).
    pub fn scale_plane_byte(self, rows: usize, head_dim: usize) -> usize {
        self.data_bytes(rows * head_dim)
    }

    /// Bytes of a buffer of `rows` head rows, data and scales (a multiple of 4).
    pub fn buffer_bytes(self, rows: usize, head_dim: usize) -> usize {
        let scales = rows * self.scales_per_row(head_dim) * 2;
        (self.scale_plane_byte(rows, head_dim) + scales).next_multiple_of(4)
    }

    /// Whether this format can hold rows of `head_dim`: the block formats need a multiple of
    /// 32, fp8 a multiple of 8 (the kernels read 8 values at a time), the float formats any
    /// multiple of 4 (the caches' own rule).
    pub fn check_head_dim(self, op: &'static str, head_dim: usize) -> Result<()> {
        let need = match self {
            KvFormat::Q8_0 | KvFormat::Q4_0 => BLOCK,
            KvFormat::Fp8E4M3 => 8,
            _ => 4,
        };
        crate::ensure!(
            head_dim.is_multiple_of(need),
            Shape,
            op,
            "kv format {} needs head_dim to be a multiple of {need}, got head_dim {head_dim}",
            self.name()
        );
        Ok(())
    }
}

/// How attention reads K/V of a quantized cache in place: the whole K and V buffers bound, the
/// f16 number of the first scale of each scale plane, and fp8's per-tensor scales.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct QuantReads {
    pub format: KvFormat,
    pub scale_plane: u32,
    pub k_scale: f32,
    pub v_scale: f32,
}

impl std::fmt::Display for KvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// fp8's per-tensor K and V scales must be finite and > 0 (both caches' `set_scales`).
pub(crate) fn check_scales(op: &'static str, k_scale: f32, v_scale: f32) -> Result<()> {
    crate::ensure!(
        [k_scale, v_scale].iter().all(|s| s.is_finite() && *s > 0.0),
        Param,
        op,
        "k_scale {k_scale} and v_scale {v_scale} must be finite and > 0"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes() {
        // Llama-3-8B at 32k tokens: 8 kv heads x head_dim 128 per token.
        let rows = 8 * 32768;
        assert_eq!(KvFormat::Q8_0.buffer_bytes(rows, 128), rows * 128 / 32 * 34);
        assert_eq!(KvFormat::Q4_0.buffer_bytes(rows, 128), rows * 128 / 32 * 18);
        assert_eq!(KvFormat::Fp8E4M3.buffer_bytes(rows, 128), rows * 128);
        assert_eq!(KvFormat::BF16.buffer_bytes(rows, 128), rows * 256);
        // head_dim 96: three blocks, four scales per row.
        assert_eq!(KvFormat::Q8_0.scales_per_row(96), 4);
        assert_eq!(KvFormat::Q4_0.buffer_bytes(3, 96), 3 * 48 + 3 * 8);
        for f in KvFormat::ALL {
            assert_eq!(KvFormat::parse(f.name()), Some(f));
            // The scale plane starts on a 16-byte boundary for every allowed head_dim.
            assert_eq!(f.scale_plane_byte(3, 96) % 16, 0, "{f}");
        }
        assert_eq!(KvFormat::parse("q5_1"), None);
    }

    #[test]
    fn head_dim_rules() {
        assert!(KvFormat::Q8_0.check_head_dim("kv_cache", 64).is_ok());
        let e = KvFormat::Q4_0.check_head_dim("kv_cache", 80).unwrap_err();
        assert!(
            e.to_string()
                .contains("kv format q4_0 needs head_dim to be a multiple of 32, got head_dim 80"),
            "{e}"
        );
        assert!(KvFormat::Fp8E4M3.check_head_dim("kv_cache", 80).is_ok());
        assert!(KvFormat::Fp8E4M3.check_head_dim("kv_cache", 36).is_err());
    }
}

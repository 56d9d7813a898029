//! The quantized KV formats on the CPU ([`crate::kv_format`]): quantizers bit-compatible with
//! ggml's `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` and with an fp8 e4m3 cast of the
//! clamped quotient, the matching dequantizers, and the buffer layout the caches use, so that a
//! test can build the bytes a cache should hold and attend over exactly the values it holds.
//!
//! Arithmetic is f32, step by step as the references write it: every product and quotient is
//! rounded to f32 (q4_0's `x · id + 8.5` is not fused; see [`q4_0_fused_differs`]).

use crate::kv_format::{KvFormat, BLOCK, FP8_E4M3_MAX};

/// One q8_0 block: the f16 bits of `d` and 32 int8.
pub fn quantize_q8_0(x: &[f32; BLOCK]) -> (u16, [i8; BLOCK]) {
    let (d, q) = q8_0_f32(x);
    (half::f16::from_f32(d).to_bits(), q)
}

/// q8_0's rule with `d` left in f32 (before the f16 rounding the stored block gets).
fn q8_0_f32(x: &[f32; BLOCK]) -> (f32, [i8; BLOCK]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; BLOCK];
    for (o, &v) in q.iter_mut().zip(x) {
        // C's roundf: half away from zero (Rust's f32::round).
        *o = (v * id).round() as i8;
    }
    (d, q)
}

/// The query rows as attention's packed 8-bit scoring sees them
/// ([`crate::Attention::int8_dot`]): each value times `scale` in f32 (the kernel pre-scales q),
/// each block of 32 of a row of `head_dim` quantized by q8_0's rule with `d` kept in f32, and
/// the int8 values times `d`, exact in f64. Attending over these with scale 1 (K/V as the cache
/// holds them, [`round_trip`]) is what the kernel computes, up to f32 rounding of its scores.
pub fn int8_dot_q(q: &[f32], head_dim: usize, scale: f32) -> Vec<f64> {
    assert!(head_dim.is_multiple_of(BLOCK) && q.len().is_multiple_of(head_dim));
    q.chunks_exact(BLOCK)
        .flat_map(|block| {
            let x: [f32; BLOCK] = std::array::from_fn(|i| block[i] * scale);
            let (d, v) = q8_0_f32(&x);
            v.map(|v| v as f64 * d as f64)
        })
        .collect()
}

/// The index and value of q4_0's `max`: the largest magnitude, the first of equal ones.
fn q4_0_max(x: &[f32; BLOCK]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// One q4_0 block: the f16 bits of `d` and the 32 4-bit values (0..=15, value `q - 8`), in value
/// order (see [`pack_q4_0`] for the nibble order in memory).
pub fn quantize_q4_0(x: &[f32; BLOCK]) -> (u16, [u8; BLOCK]) {
    let d = q4_0_max(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; BLOCK];
    for (o, &v) in q.iter_mut().zip(x) {
        // (int8_t) truncates toward zero; MIN(15, .).
        *o = ((v * id + 8.5) as i8).min(15) as u8;
    }
    (half::f16::from_f32(d).to_bits(), q)
}

/// How many values of the block a fused `x · id + 8.5` (one rounding) would quantize to another
/// step than [`quantize_q4_0`]: ggml notes that q4_0's reference rounding depends on FMA, so
/// a kernel compiled with contraction may differ from the reference at these values.
pub fn q4_0_fused_differs(x: &[f32; BLOCK]) -> Vec<usize> {
    let d = q4_0_max(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (0..BLOCK)
        .filter(|&i| {
            let a = ((x[i] * id + 8.5) as i8).min(15);
            let b = (x[i].mul_add(id, 8.5) as i8).min(15);
            a != b
        })
        .collect()
}

/// The 16 bytes of a q4_0 block in memory: value `j` in the low nibble of byte `j`, value
/// `j + 16` in its high nibble.
pub fn pack_q4_0(q: &[u8; BLOCK]) -> [u8; BLOCK / 2] {
    std::array::from_fn(|j| (q[j] & 15) | (q[j + 16] << 4))
}

/// f32 -> e4m3 bits (OCP, no infinities, NaN 0x7f): round to nearest even from the f32 value.
/// Magnitudes past 448 are first clamped ([`quantize_fp8`] does; this rounds 448..464 to 448 and
/// gives NaN above, as torch's `float8_e4m3fn` cast).
pub fn f32_to_e4m3(v: f32) -> u8 {
    let sign = ((v.to_bits() >> 24) & 0x80) as u8;
    let a = v.abs();
    if a.is_nan() {
        return 0x7f | sign;
    }
    // Smallest subnormal 2^-9; normals from 2^-6 with 3 mantissa bits.
    let e = if a < 2f32.powi(-6) {
        -6
    } else {
        ((a.to_bits() >> 23) as i32 - 127).min(8)
    };
    let ulp = 2f64.powi(e - 3);
    let m = (a as f64 / ulp).round_ties_even();
    let r = m * ulp;
    if r > FP8_E4M3_MAX as f64 {
        return 0x7f | sign;
    }
    if r == 0.0 {
        return sign;
    }
    // r = m · 2^(e - 3), m in 8..=16 for normals (16 carries into the next exponent).
    let (e, m) = if m >= 16.0 { (e + 1, m / 2.0) } else { (e, m) };
    let bits = if m < 8.0 {
        m as u8
    } else {
        (((e + 7) as u8) << 3) | (m as u8 - 8)
    };
    bits | sign
}

/// e4m3 bits -> f32 (exact).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 15) as i32;
    let m = (b & 7) as f32;
    if b & 0x7f == 0x7f {
        return f32::NAN;
    }
    if e == 0 {
        return sign * m * 2f32.powi(-9);
    }
    sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
}

/// `e4m3(clamp(x / scale, -448, 448))`.
pub fn quantize_fp8(x: f32, scale: f32) -> u8 {
    f32_to_e4m3((x / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX))
}

fn f16(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// The bytes of a buffer of `x.len() / head_dim` rows in `format`'s cache layout
/// ([`crate::kv_format`]); `scale` is fp8's per-tensor scale. Float formats are rounded to
/// nearest even.
pub fn encode(format: KvFormat, x: &[f32], head_dim: usize, scale: f32) -> Vec<u8> {
    let rows = x.len() / head_dim;
    let mut out = vec![0u8; format.buffer_bytes(rows, head_dim)];
    if let Some(dtype) = format.dtype() {
        let bytes = crate::tensor::encode_f32(x, dtype);
        out[..bytes.len()].copy_from_slice(&bytes);
        return out;
    }
    let plane = format.scale_plane_byte(rows, head_dim);
    let per_row = format.scales_per_row(head_dim);
    for (i, chunk) in x.chunks_exact(BLOCK).enumerate() {
        let block: &[f32; BLOCK] = chunk.try_into().expect("chunks of BLOCK");
        let e = i * BLOCK;
        let d = match format {
            KvFormat::Q8_0 => {
                let (d, q) = quantize_q8_0(block);
                for (j, v) in q.iter().enumerate() {
                    out[e + j] = *v as u8;
                }
                d
            }
            KvFormat::Q4_0 => {
                let (d, q) = quantize_q4_0(block);
                out[e / 2..e / 2 + BLOCK / 2].copy_from_slice(&pack_q4_0(&q));
                d
            }
            _ => {
                for (j, &v) in block.iter().enumerate() {
                    out[e + j] = quantize_fp8(v, scale);
                }
                continue;
            }
        };
        let s = plane + 2 * ((e / head_dim) * per_row + (e % head_dim) / BLOCK);
        out[s..s + 2].copy_from_slice(&d.to_le_bytes());
    }
    out
}

/// The values of the `n` elements of a buffer in `format`'s cache layout, rows of `head_dim`.
pub fn decode(format: KvFormat, bytes: &[u8], n: usize, head_dim: usize, scale: f32) -> Vec<f32> {
    if let Some(dtype) = format.dtype() {
        return crate::tensor::decode_f32(&bytes[..n * dtype.size()], dtype);
    }
    let plane = format.scale_plane_byte(n / head_dim, head_dim);
    let per_row = format.scales_per_row(head_dim);
    (0..n)
        .map(|e| {
            let s = plane + 2 * ((e / head_dim) * per_row + (e % head_dim) / BLOCK);
            let d = || f16(u16::from_le_bytes([bytes[s], bytes[s + 1]]));
            match format {
                KvFormat::Q8_0 => bytes[e] as i8 as f32 * d(),
                KvFormat::Q4_0 => {
                    let (blk, j) = (e / BLOCK, e % BLOCK);
                    let byte = bytes[blk * 16 + j % 16];
                    let q = if j < 16 { byte & 15 } else { byte >> 4 };
                    (q as f32 - 8.0) * d()
                }
                _ => e4m3_to_f32(bytes[e]) * scale,
            }
        })
        .collect()
}

/// What a cache in `format` holds for the values `x` (rows of `head_dim`): quantized and
/// dequantized, in f64, for the attention reference.
pub fn round_trip(format: KvFormat, x: &[f32], head_dim: usize, scale: f32) -> Vec<f64> {
    let bytes = encode(format, x, head_dim, scale);
    decode(format, &bytes, x.len(), head_dim, scale)
        .into_iter()
        .map(f64::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_every_code_round_trips() {
        for b in 0..=255u8 {
            let v = e4m3_to_f32(b);
            if b & 0x7f == 0x7f {
                assert!(v.is_nan());
                continue;
            }
            // -0 encodes as 0x80.
            assert_eq!(f32_to_e4m3(v), b, "code {b:#x} value {v}");
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        // Saturation and ties to even: 464 is halfway between 448 and 480 (not finite).
        assert_eq!(quantize_fp8(1e9, 1.0), 0x7e);
        assert_eq!(quantize_fp8(-1e9, 1.0), 0xfe);
        assert_eq!(f32_to_e4m3(1.0625), f32_to_e4m3(1.0));
        assert_eq!(f32_to_e4m3(1.1875), f32_to_e4m3(1.25));
    }

    #[test]
    fn q4_0_nibble_order() {
        let q: [u8; BLOCK] = std::array::from_fn(|i| (i % 16) as u8);
        let p = pack_q4_0(&q);
        assert_eq!(p[0], 0x00);
        assert_eq!(p[5], 0x55);
        assert_eq!(p[15], 0xff);
    }
}

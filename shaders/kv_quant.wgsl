// The quantized KV formats (src/kv_format.rs has the layout and the formats' definitions),
// prepended after common.wgsl to the cache writers (quantize) and the attention modules
// (dequantize). Element e of a quantized buffer: its 4-value word is `kv_word(fmt, e)`, its f16
// block scale number `kv_scale_index(e, head_dim)` of the scale plane. Every kernel decodes
// through `kv_dequant4`, the writers encode through `kv_quant_block` and `f32x4_to_e4m3`, so
// the tests of the cache's append (bit for bit against the CPU quantizer) cover them.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): the loops over a
// block's 8 words count up by 1 to 8.

// KvFormat::shader_code after the float dtypes' codes (0 f32, 1 f16, 2 bf16).
const KV_Q8_0: u32 = 3u;
const KV_Q4_0: u32 = 4u;
const KV_FP8: u32 = 5u;

// f16 scales per row of the scale plane: head_dim / 32 rounded up to even, so no word holds
// two rows' scales.
fn kv_scales_per_row(head_dim: u32) -> u32 {
    return (head_dim / 32u + 1u) & ~1u;
}

// The scale of element e, as f16 number of the scale plane.
fn kv_scale_index(e: u32, head_dim: u32) -> u32 {
    return (e / head_dim) * kv_scales_per_row(head_dim) + (e % head_dim) / 32u;
}

// f16 number i of a word pair's low (i even) or high half, widened.
fn kv_f16(word: u32, i: u32) -> f32 {
    return f16x4_to_f32(vec4<u32>((word >> ((i & 1u) * 16u)) & 0xffffu)).x;
}

// f16 number n of a plane read by 16-byte units, from u, the unit holding it (unit n >> 3).
fn kv_unit_f16(u: vec4<u32>, n: u32) -> f32 {
    return kv_f16(u[(n >> 1u) & 3u], n);
}

// The word holding the 4 values at element e (a multiple of 4) in the data plane.
fn kv_word(fmt: u32, e: u32) -> u32 {
    if fmt == KV_Q4_0 {
        // A block's 16 bytes: values j and j + 16 share byte j.
        return (e >> 5u) * 4u + ((e & 15u) >> 2u);
    }
    return e >> 2u;
}

// The 8 values at element e (a multiple of 8) of a quantized buffer, from the 16-byte unit u that
// holds their two data words (`kv_word(fmt, e)`, even for every format at such an e, and the
// next), with d as in kv_dequant4. One 16-byte load instead of two word loads: on llvmpipe each
// load instruction is a loop over the lanes, and LLVM's compile time follows their count
// (BENCHMARKS.md, cold compile).
fn kv_dequant8(fmt: u32, u: vec4<u32>, e: u32, d: f32) -> Item {
    let w = select(u.xy, u.zw, (kv_word(fmt, e) & 2u) != 0u);
    return Item(kv_dequant4(fmt, w.x, e, d), kv_dequant4(fmt, w.y, e + 4u, d));
}

// Values 4c .. 4c + 3 of a 16-byte unit u of the data plane that starts on a 16-byte boundary
// of a row: a whole q4_0 block (c < 8: values 16 .. 31 are the high nibbles of words 0 .. 3), or
// 16 q8_0 or fp8 values (c < 4); d as in kv_dequant4. The GPU decode's whole-unit read
// (`sg_units`, attention_subgroup.wgsl): one 16-byte load per unit, one scale per unit.
fn kv_dequant_unit(fmt: u32, u: vec4<u32>, c: u32, d: f32) -> vec4<f32> {
    return kv_dequant4(fmt, u[c & 3u], 4u * c, d);
}

// e4m3 bits (4 bytes of a word, value 0 in the low byte) -> f32, exact: the 7 low bits placed
// as an f16 (exponent bias 15 instead of 7) are the value times 2^-8; 0x7f is NaN.
fn e4m3x4_to_f32(w: u32) -> vec4<f32> {
    let b = (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
    let h = ((b & vec4<u32>(0x80u)) << vec4<u32>(8u)) | ((b & vec4<u32>(0x7fu)) << vec4<u32>(7u));
    let v = f16x4_to_f32(h) * 256.0;
    // A NaN built from b, so that it is not a constant expression.
    let nan = bitcast<vec4<f32>>(b | vec4<u32>(0x7fc00000u));
    return select(v, nan, (b & vec4<u32>(0x7fu)) == vec4<u32>(0x7fu));
}

// The 4 values of data word w at element e (a multiple of 4), with d the block's scale (q8_0,
// q4_0) or the tensor's scale (fp8).
fn kv_dequant4(fmt: u32, w: u32, e: u32, d: f32) -> vec4<f32> {
    if fmt == KV_Q8_0 {
        let q = bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
        return vec4<f32>(q) * d;
    }
    if fmt == KV_Q4_0 {
        let s = select(0u, 4u, (e & 16u) != 0u);
        let q = (vec4<u32>(w >> s) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u);
        return (vec4<f32>(q) - 8.0) * d;
    }
    return e4m3x4_to_f32(w) * d;
}

// f32 -> e4m3 bits, round to nearest even, magnitudes past 448 (infinities too) saturated to
// 448, NaN to 0x7f. The clamp is on the magnitude's bits. Normals: rebias the exponent by -120
// and round away 20 mantissa bits (a carry moves to the next binade); below 2^-6 the sum with
// 2^14, whose f32 ulp is the e4m3 subnormal step 2^-9, rounds the value to a multiple of it.
fn f32x4_to_e4m3(v: vec4<f32>) -> vec4<u32> {
    let x = bitcast<vec4<u32>>(v);
    let sign = (x >> vec4<u32>(24u)) & vec4<u32>(0x80u);
    let a0 = x & vec4<u32>(0x7fffffffu);
    let a = min(a0, vec4<u32>(0x43e00000u));
    let odd = (a >> vec4<u32>(20u)) & vec4<u32>(1u);
    let n = (a - vec4<u32>(0x3c000000u) + vec4<u32>(0x7ffffu) + odd) >> vec4<u32>(20u);
    let sub = bitcast<vec4<u32>>(bitcast<vec4<f32>>(a) + vec4<f32>(16384.0)) - vec4<u32>(0x46800000u);
    var o = select(n, sub, a < vec4<u32>(0x3c800000u));
    o = select(o, vec4<u32>(0x7fu), a0 > vec4<u32>(0x7f800000u));
    return o | sign;
}

// y = x · id of 4 q8_0 values as int8 in one word (value 0 in the low byte): roundf, ties away
// from zero, as the integer part plus the sign where the fraction is at least one half.
fn kv_q8_word(y: vec4<f32>) -> u32 {
    let t = trunc(y);
    let r = t + select(vec4<f32>(0.0), sign(y), abs(y - t) >= vec4<f32>(0.5));
    let q = bitcast<vec4<u32>>(vec4<i32>(r)) & vec4<u32>(0xffu);
    return q.x | (q.y << 8u) | (q.z << 16u) | (q.w << 24u);
}

// q8_0's scale for a block of q whose largest magnitude is amax (ggml's `quantize_row_q8_0_ref`,
// the scale kept in f32): (d, 1 / d) with d = amax / 127, 1 / d = 0 for an all-zero block. The
// packed 8-bit scoring's quantization of q (`sg_quant_q`, attention_subgroup.wgsl, and
// `pf_quant_q`, attention_prefill_sg_step.wgsl) with `kv_q8_word`.
fn kv_q8_scale(amax: f32) -> vec2<f32> {
    let d = amax / 127.0;
    return vec2<f32>(d, select(0.0, 1.0 / d, d != 0.0));
}

// q4_0 values (the low nibble of each byte of w's words) as int8 q - 8 for dot4I8Packed: q + 0x78
// stays inside its byte, and flipping bit 7 maps 0x78 .. 0x87 onto -8 .. 7.
fn kv_i4_i8(w: vec4<u32>) -> vec4<u32> {
    return ((w & vec4<u32>(0x0f0f0f0fu)) + vec4<u32>(0x78787878u)) ^ vec4<u32>(0x80808080u);
}

// One block of 32 values (x[i] = values 4i .. 4i + 3) quantized: the 8 data words of q8_0, or
// the 4 of q4_0 in words 0..3, and the f16 bits of d in the last lane. Step by step as ggml's
// references (src/reference/quant.rs): amax (q8_0) or the first value of largest magnitude
// (q4_0) and d, id = 1 / d in f32, then each value (q8_0: `kv_q8_word`).
struct QBlock {
    words: array<u32, 8>,
    d: u32,
}

fn kv_quant_block(fmt: u32, x: ptr<function, array<vec4<f32>, 8>>) -> QBlock {
    var out: QBlock;
    var amax = 0.0;
    var mx = 0.0;
    for (var i = 0u; i < 8u; i++) {
        let v = (*x)[i];
        for (var c = 0u; c < 4u; c++) {
            if amax < abs(v[c]) {
                amax = abs(v[c]);
                mx = v[c];
            }
        }
    }
    var d = amax / 127.0;
    if fmt == KV_Q4_0 {
        d = mx / -8.0;
    }
    let id = select(0.0, 1.0 / d, d != 0.0);
    for (var i = 0u; i < 8u; i++) {
        let y = (*x)[i] * id;
        if fmt == KV_Q8_0 {
            out.words[i] = kv_q8_word(y);
        } else {
            let q = min(vec4<u32>(vec4<i32>(trunc(y + 8.5))), vec4<u32>(15u));
            let packed = q.x | (q.y << 8u) | (q.z << 16u) | (q.w << 24u);
            // Values 0..15 in the low nibbles of words 0..3, values 16..31 in their high ones.
            out.words[i % 4u] |= packed << (4u * (i / 4u));
        }
    }
    out.d = f32x4_to_f16(vec4<f32>(d)).x;
    return out;
}

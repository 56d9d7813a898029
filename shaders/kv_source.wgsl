// Shared by the two cache writers (prepended to kv_cache.wgsl and paged_kv.wgsl by
// `Shader::source`, after common.wgsl and kv_quant.wgsl): the new K and V rows' bindings, their
// reads, and their quantization (`quant_unit`). Each writer declares `SRC_DTYPE` (the new rows'
// storage dtype) and its own destination bindings, and stores the quantized units itself.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): quant_unit's loops
// count up by 1 to the 2 blocks of a pair and the 8 loads of a block.

@group(0) @binding(1) var<storage, read> k_src: array<u32>;
@group(0) @binding(2) var<storage, read> v_src: array<u32>;

fn src_word(is_v: bool, i: u32) -> u32 {
    if is_v {
        return v_src[i];
    }
    return k_src[i];
}

// Four elements of the new K (or V) rows starting at element e (a multiple of 2 for half
// types). The same shape as attention_common.wgsl's load4, on other bindings: WGSL cannot pass a
// storage buffer to a function, so each binding set keeps its own word fetch; the decoding is
// shared (unpack_half4 in common.wgsl).
fn load4(is_v: bool, e: u32) -> vec4<f32> {
    if SRC_DTYPE == DT_F32 {
        return vec4<f32>(
            bitcast<f32>(src_word(is_v, e)),
            bitcast<f32>(src_word(is_v, e + 1u)),
            bitcast<f32>(src_word(is_v, e + 2u)),
            bitcast<f32>(src_word(is_v, e + 3u)),
        );
    }
    let h = e >> 1u;
    return unpack_half4(vec2<u32>(src_word(is_v, h), src_word(is_v, h + 1u)), SRC_DTYPE);
}

// Unit u of a new head row starting at element src, quantized to format fmt: blocks 2u and
// 2u + 1 of the row (those below head_dim / 32) for q8_0 / q4_0, block k's data words at
// words[8k ..] (8 words q8_0, 4 q4_0) and the pair's f16 scales in `scales` (block 2u in the
// low half); for fp8, values 4u .. 4u + 3 divided by `scale` in words[0].
struct QUnit {
    words: array<u32, 16>,
    scales: u32,
}

fn quant_unit(fmt: u32, is_v: bool, src: u32, u: u32, head_dim: u32, scale: f32) -> QUnit {
    var out: QUnit;
    if fmt == KV_FP8 {
        let q = f32x4_to_e4m3(load4(is_v, src + 4u * u) / scale);
        out.words[0] = q.x | (q.y << 8u) | (q.z << 16u) | (q.w << 24u);
        return out;
    }
    for (var k = 0u; k < 2u; k++) {
        if 2u * u + k < head_dim / 32u {
            var x: array<vec4<f32>, 8>;
            for (var i = 0u; i < 8u; i++) {
                x[i] = load4(is_v, src + 32u * (2u * u + k) + 4u * i);
            }
            let q = kv_quant_block(fmt, &x);
            for (var i = 0u; i < 8u; i++) {
                out.words[8u * k + i] = q.words[i];
            }
            out.scales |= q.d << (16u * k);
        }
    }
    return out;
}

// Units per head row of quant_unit: pairs of blocks, or 4 values for fp8.
fn quant_units(fmt: u32, head_dim: u32) -> u32 {
    return select(kv_scales_per_row(head_dim) / 2u, head_dim / 4u, fmt == KV_FP8);
}

// Data words per block of format fmt (q8_0 8, q4_0 4).
fn block_words(fmt: u32) -> u32 {
    return select(4u, 8u, fmt == KV_Q8_0);
}

// Quantizing a head row unit by unit into a quantized buffer (layout in src/kv_format.rs), shared
// by the cache writers (kv_cache.wgsl, paged_kv.wgsl, after kv_source.wgsl) and RoPE's quantized
// output (rope_q.wgsl), after common.wgsl and kv_quant.wgsl. The including module supplies the
// two seams: `load4(is_v, e)`, the 4 values at element e of the row being written (the new K or
// V rows for the writers; the normalised, rotated K head for rope_q), and `kv_put(is_v, i, w)`,
// the store of word i of the K (or V) destination.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): the loops count up
// by 1 to the 2 blocks of a pair and the 8 loads or the 4 or 8 words of a block.

// Unit u of a head row starting at element src (of `load4`), quantized to format fmt: blocks 2u and
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

// Unit u (quant_unit) of the head row that starts at element e0 of a quantized buffer whose first
// word is `base` and whose scale plane starts at word `base + scale_word` (a page of a paged
// cache; the whole K or V buffer of a contiguous one, base 0), quantized from the values at src
// with fp8's `scale`.
fn quant_store(
    fmt: u32,
    is_v: bool,
    base: u32,
    e0: u32,
    scale_word: u32,
    src: u32,
    u: u32,
    head_dim: u32,
    scale: f32,
) {
    let q = quant_unit(fmt, is_v, src, u, head_dim, scale);
    if fmt == KV_FP8 {
        kv_put(is_v, base + e0 / 4u + u, q.words[0]);
        return;
    }
    for (var k = 0u; k < 2u; k++) {
        let blk = 2u * u + k;
        if blk < head_dim / 32u {
            let w0 = base + kv_word(fmt, e0 + 32u * blk);
            for (var i = 0u; i < block_words(fmt); i++) {
                kv_put(is_v, w0 + i, q.words[8u * k + i]);
            }
        }
    }
    let row = e0 / head_dim;
    kv_put(is_v, base + scale_word + row * (kv_scales_per_row(head_dim) / 2u) + u, q.scales);
}

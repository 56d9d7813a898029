// rope_q: RoPE written straight into a quantized KV cache's K rows (q8_0, q4_0, fp8 e4m3; layout
// in src/kv_format.rs), the rotation and the quantization in one pass, no float copy of the rows.
// Module `rope_q.wgsl` (`Shader::ROPE_Q`): common.wgsl, the integer store hooks, kv_quant.wgsl,
// kv_quant_store.wgsl, rope.wgsl (params, bindings, positions, cos/sin, `rotate`, the norm
// helpers), then this file.
//
// One invocation per (token, head of segment A) owns the whole head row: the head's 1 / RMS
// once (FLAG_NORM_A, `head_inv_rms` as rope_norm computes it), then unit by unit
// (`quant_units`: pairs of blocks, or 4 values for fp8) kv_quant_store.wgsl's `quant_store`,
// which reads the values through the `load4` seam below: each value normalised, rotated with its
// pair partner by `rotate` (the products of `rope` / `rope_norm`, in their order) and rounded to
// the storage dtype as their stores round it, so the quantizer sees exactly the values RoPE out
// of place would have written. A pair's cos/sin is computed for each of its two values.
//
// Where a head row goes: its float-equivalent element `ob` (the strided out view, or the row map
// with FLAG_ROW_MAP) is element `ob % q_page_elems` of page `ob / q_page_elems`, a quantized
// buffer starting at word `page * q_page_words` with its scale plane `q_scale_word` words in (a
// contiguous cache is one page at word 0). A row map entry is GPU data: a head that is not a
// whole row of a page inside `dst` is skipped, so a bad entry never writes out of bounds.
//
// Override constants: rope.wgsl's (IN_PLACE and X_IN_DST false: x is read from `src`), and
//   KV_FMT   the cache's format (KvFormat::shader_code: 3 q8_0, 4 q4_0, 5 fp8 e4m3)
// Loops (modules are created without naga's loop counters, src/pipeline.rs): over a head's units
// and a word's 4 values, by 1 to uniform bounds.

override KV_FMT: u32 = 3u;

// The head this invocation writes: its first input element, 1 / RMS (1 without a norm), and the
// token's positions.
struct QHead {
    ib: u32,
    inv: f32,
    pos: vec3<i32>,
}

var<private> q_head: QHead;

// Element e of the head, normalised with FLAG_NORM_A as rope_norm normalises it.
fn q_input(e: u32) -> f32 {
    var x: f32;
    if DTYPE == DT_F32 {
        x = ld(q_head.ib + e);
    } else {
        let w = ld2(q_head.ib + (e & ~1u));
        x = select(w.x, w.y, (e & 1u) != 0u);
    }
    if (p.flags & FLAG_NORM_A) != 0u {
        x = x * q_head.inv * norm_weight(false, e);
    }
    return x;
}

// Element e of the head after RoPE: rotated with its pair partner below rotary_dim, the tail as
// it is.
fn q_rotated(e: u32) -> f32 {
    let x = q_input(e);
    if e >= 2u * p.half_rot {
        return x;
    }
    var is_b = (e & 1u) != 0u;
    var k = e / 2u;
    var partner = e ^ 1u;
    if LAYOUT == 0u {
        is_b = e >= p.half_rot;
        k = select(e, e - p.half_rot, is_b);
        partner = select(e + p.half_rot, k, is_b);
    }
    let y = q_input(partner);
    let r = rotate(select(vec2<f32>(x, y), vec2<f32>(y, x), is_b), cos_sin(pair_pos(q_head.pos, k), k));
    return select(r.x, r.y, is_b);
}

// kv_quant_store.wgsl's store seam.
fn kv_put(is_v: bool, i: u32, w: u32) {
    dst[i] = w;
}

// kv_quant_store.wgsl's load seam: the 4 values at element e of the head, in the storage dtype's
// precision (is_v is always false here). The loop's bound comes from a uniform (head_dim is at
// least 8) so that the compiler keeps one copy of q_rotated instead of unrolling four: code size
// is what a cold compile on lavapipe pays for.
fn load4(is_v: bool, e: u32) -> vec4<f32> {
    var v: vec4<f32>;
    for (var c = 0u; c < min(4u, p.head_dim); c++) {
        v[c] = q_rotated(e + c);
    }
    return round_to_dtype(v, DTYPE);
}

// Whether a row map's head row (at element e0 of the page at word `base`) is a whole row of a
// page inside dst; always without a row map (the host checked the view).
fn q_row_fits(base: u32, e0: u32) -> bool {
    if (p.flags & FLAG_ROW_MAP) == 0u {
        return true;
    }
    let whole_row = e0 % p.head_dim == 0u && p.head_dim <= p.q_page_elems - e0;
    return whole_row && base + p.q_page_words <= arrayLength(&dst);
}

@compute @workgroup_size(WG)
fn rope_q(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let gid = linear_workgroup(wid, nwg) * WG + lid;
    // One head per group (n_hgroups = a_heads).
    let g = group_at(gid);
    let ob = g.row + g.hg * p.o_hstride;
    let base = (ob / p.q_page_elems) * p.q_page_words;
    let e0 = ob % p.q_page_elems;
    // No barriers in this kernel, so invocations past the end, on a skipped token or (row map)
    // on a head that is not a whole row of a page inside dst may simply leave.
    if !g.ok || !q_row_fits(base, e0) {
        return;
    }
    q_head.ib = p.a_off + g.b * p.a_bstride + g.s * p.a_sstride + g.hg * p.a_hstride;
    q_head.inv = 1.0;
    if (p.flags & FLAG_NORM_A) != 0u {
        q_head.inv = head_inv_rms(q_head.ib, p.eps_a);
    }
    q_head.pos = token_pos(g.b, g.s);
    for (var u = 0u; u < quant_units(KV_FMT, p.head_dim); u++) {
        quant_store(KV_FMT, false, base, e0, p.q_scale_word, 0u, u, p.head_dim, p.q_scale);
    }
}

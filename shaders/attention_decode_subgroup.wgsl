// Appended to attention_decode.wgsl and attention_subgroup.wgsl in a module of its own
// (`ops::attention::ATTENTION_DECODE_SUBGROUP`): a module that uses subgroup operations anywhere
// fails validation on devices without SUBGROUP.
//
// `attn_decode_sg`: the subgroup decode step (`sg_partial`, attention_subgroup.wgsl, which says
// what it follows) over contiguous K/V, read as 16-byte units through `keys_rows` / `k4` / `v4`
// (attention_decode.wgsl; the host requires 16-byte aligned rows): one workgroup per (batch, kv
// head, row block, split), one partial per (row, split) merged by `attn_decode_merge_rows`, or
// with one split the output directly.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): rows by 1 to RS.

// `sg_item` (the K/V load seam) comes from the part before this one: the packed words
// (`ATTENTION_DECODE_SUBGROUP` in ops/attention/variants.rs) or native f16
// (attention_subgroup_f16.wgsl).

// Quantized K/V (`sg_rows`): key j's K and V rows in the whole cache buffers k4 / v4.
fn sg_qrows(h: vec2<u32>, j: u32) -> SgRows {
    return kv_qrows(h, j);
}

// f16 scale number n of source src, read through k4 / v4 (the same whole cache buffers as k_buf /
// v_buf, which `kv_scale` reads by words; binding those too would pass WebGPU's 8 storage
// buffers in the native-f16 module).
fn sg_qscale(src: u32, n: u32) -> f32 {
    return kv_unit_f16(keys_unit(src, n >> 3u), n);
}

@compute @workgroup_size(WG)
fn attn_decode_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= split_items() {
        return;
    }
    let w = split_item(wg_id, RS);
    let b = w.b;
    let kvh = w.kvh;
    let r0 = w.r0;
    let gl = sg_lane_group(sg_lane, sg_size, sg_id);

    var q: SgRegs;
    var pos: array<i32, RS>;
    sg_load_q(&q, &pos, r0, p.rows, kvh, b * p.q_sb, p.q_offset, gl.y);
    let heads = vec2<u32>(p.k_off + b * p.k_sb + kvh * p.k_sh, p.v_off + b * p.v_sb + kvh * p.v_sh);
    var acc: SgRegs;
    var m: array<f32, RS>;
    var l: array<f32, RS>;
    sg_partial(&q, &pos, &acc, &m, &l, heads, kvh, mask_seq(b), w.kv, r0, p.rows, gl.x, gl.y);
    let stride = part_units();
    for (var r = 0u; r < RS; r++) {
        sg_merge_row(&acc, &m, &l, r, gl.x, gl.y);
        let rr = r0 + r;
        if gl.x == 0u && rr < p.rows {
            let h = kvh * p.group + rr % p.group;
            let o_base = p.o_off + b * p.o_sb + (rr / p.group) * p.o_st + h * p.o_sh;
            let e = ((w.bh * p.rows + rr) * p.n_splits + w.split) * stride;
            sg_store_row(&acc, m[r], l[r], r, gl.y, p.n_splits == 1u, e, o_base, h);
        }
    }
}

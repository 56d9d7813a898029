// Appended to attention_decode.wgsl and attention_subgroup.wgsl in a module of its own
// (`ops::attention::ATTENTION_DECODE_SUBGROUP`): a module that uses subgroup operations anywhere
// fails validation on devices without SUBGROUP.
//
// `attn_decode_sg`: the subgroup decode step (`sg_partial`, attention_subgroup.wgsl, which says
// what it follows) over contiguous K/V: one workgroup per (batch, kv head, row block, split),
// partials merged by `attn_decode_merge`.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): virtual subgroups step
// by num_subgroups (>= 1) to NSG, rows by 1 to RS.

// `sg_load4` (the K/V reads) comes from the part before this one: the packed words
// (`ATTENTION_DECODE_SUBGROUP` in ops/attention.rs) or native f16 (attention_subgroup_f16.wgsl).

// (K source, K element, V source, V element) of key j; h = the head's K and V element bases.
fn sg_row(h: vec2<u32>, j: u32) -> vec4<u32> {
    return vec4<u32>(1u, h.x + j * p.k_st, 2u, h.y + j * p.v_st);
}

@compute @workgroup_size(WG)
fn attn_decode_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the subgroup operations is allowed.
    if wg_id >= split_items() {
        return;
    }
    let w = split_item(wg_id, RS);
    let b = w.b;
    let kvh = w.kvh;
    let r0 = w.r0;

    var q: SgRegs;
    var pos: array<i32, RS>;
    sg_load_q(&q, &pos, r0, p.rows, kvh, b * p.q_sb, p.q_offset, sg_lane, sg_size);
    let heads = vec2<u32>(p.k_off + b * p.k_sb + kvh * p.k_sh, p.v_off + b * p.v_sb + kvh * p.v_sh);
    let stride = 4u * HD4 + 2u;
    let n_parts = p.n_splits * NSG;

    for (var vs = sg_id; vs < NSG; vs += n_sg) {
        var acc: SgRegs;
        var m: array<f32, RS>;
        var l: array<f32, RS>;
        sg_partial(&q, &pos, &acc, &m, &l, heads, kvh, w.kv, r0, p.rows, vs, sg_lane, sg_size);
        // The partial of (row, split, key lane vs).
        for (var r = 0u; r < RS; r++) {
            if r0 + r < p.rows {
                let e = ((w.bh * p.rows + r0 + r) * n_parts + w.split * NSG + vs) * stride;
                sg_store_partial(&acc, m[r], l[r], r, e, sg_lane, sg_size);
            }
        }
    }
}

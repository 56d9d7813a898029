// Appended to attention_paged.wgsl and attention_subgroup.wgsl in a module of its own
// (`ops::paged::ATTENTION_PAGED_SUBGROUP`): a module that uses subgroup operations anywhere fails
// validation on devices without SUBGROUP.
//
// `attn_paged_sg`: the GPU decode rows of a paged batch (q_len <= 8 on adapters with SUBGROUP
// that are not CPU adapters), the subgroup decode step (`sg_partial`, attention_subgroup.wgsl)
// over pages, as FlashInfer's `BatchDecodeWithPagedKVCacheKernel` reads its pages: one
// workgroup per (work item, kv head), a work item being (sequence, row block, split) of the
// host's plan with RS rows per block and NSG key lanes per split (the sequence record's
// rows_per_wg and lanes). A row of one kv head is contiguous inside a page in both layouts, so
// each lane reads its 16-byte slots of a K or V row straight from the page. Partials go to the
// sequence's entries in (row, split, lane) order and `attn_paged_merge` combines them (the
// host plans at least two partials per row, so no row is left to a direct write).
// With the same split structure the results equal `attn_decode_sg`'s bit for bit.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): virtual subgroups step
// by num_subgroups (>= 1) to NSG, rows by 1 to RS.

// (K source, K element, V source, V element) of key j; h = (block-table offset, kv head). Both
// rows live in the same page, so in the same pool buffer.
fn sg_row(h: vec2<u32>, j: u32) -> vec4<u32> {
    let a = key_addr(h.x, j, h.y);
    return vec4<u32>(a.x, a.y, a.x, a.y + p.k_off);
}

fn sg_load4(src: u32, e: u32) -> vec4<f32> {
    return pool_load4(src, e);
}

@compute @workgroup_size(WG)
fn attn_paged_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the subgroup operations is allowed.
    if wg_id >= p.v_sb * p.n_kv_heads {
        return;
    }
    // The plan gives these work items rows_per_wg = RS.
    let it = paged_item(wg_id);

    var q: SgRegs;
    var pos: array<i32, RS>;
    sg_load_q(&q, &pos, it.r0, it.rows, it.kvh, it.sq.q_start * p.q_st, it.sq.q_offset, sg_lane, sg_size);
    let stride = 4u * HD4 + 2u;
    let n_parts = it.sq.n_splits * NSG;

    for (var vs = sg_id; vs < NSG; vs += n_sg) {
        var acc: SgRegs;
        var m: array<f32, RS>;
        var l: array<f32, RS>;
        sg_partial(&q, &pos, &acc, &m, &l, vec2<u32>(it.sq.bt_off, it.kvh), it.kvh, it.kv, it.r0, it.rows, vs, sg_lane, sg_size);
        for (var r = 0u; r < RS; r++) {
            let rr = it.r0 + r;
            if rr < it.rows {
                let e = (it.sq.part_base + (it.kvh * it.rows + rr) * n_parts + it.split * NSG + vs) * stride;
                sg_store_partial(&acc, m[r], l[r], r, e, sg_lane, sg_size);
            }
        }
    }
}

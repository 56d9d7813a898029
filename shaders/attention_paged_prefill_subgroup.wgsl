// Appended to attention_paged.wgsl and attention_prefill_sg_step.wgsl in a module of its own
// (`ops::paged::ATTENTION_PAGED_PREFILL_SUBGROUP`): a module that uses subgroup operations
// anywhere fails validation on devices without SUBGROUP.
//
// `attn_paged_prefill_sg`: the prefill rows of a paged batch (q_len > 8) on adapters with
// SUBGROUP that are not CPU adapters, with 16-byte aligned rows: the GPU prefill step
// (attention_prefill_sg_step.wgsl, which says what it follows) over pages. One workgroup per
// (work item, kv head), a work item being (sequence, row block, split) of the host's plan with
// R * WG / L rows per block and one key lane (the sequence record's rows_per_wg and lanes). A row
// of one kv head is contiguous inside a page in both layouts, so each K/V row is staged with
// 16-byte loads straight from its page. A sequence with one split writes its output directly;
// split sequences write partials in (row, split) order for the batch's merge. With the same
// tiles the results equal `attn_prefill_sg`'s bit for bit.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): the staging loop by
// WG to the tile's items (the step's loops: attention_prefill_sg_step.wgsl).

// The 16 bytes at element e of pool buffer buf (e a multiple of `elems_per_item(DTYPE)`), as
// f32: every read of the pages goes through here, one case per storage format.
fn pf_pool_kv(buf: u32, e: u32) -> Item {
    return unpack_item(pool_word4(buf, e / elems_per_item(DTYPE)), DTYPE);
}

// Quantized pages (`pf_qstage`): key j's rows (`pool_qrows`, attention_paged.wgsl); h = (the
// block-table row's first word, kv head).
fn pf_qrows(h: vec2<u32>, j: u32) -> KvRows {
    return pool_qrows(h, j);
}

// Keys j0 .. j0 + n of kv head src.y of the sequence whose block-table row starts at word src.x
// of plan_buf into k_tile / v_tile, one 16-byte piece of K and of V per invocation and step.
fn pf_stage(lid: u32, j0: i32, n: u32, src: vec2<u32>) {
    let per_item = elems_per_item(DTYPE) / 4u;
    let items = HD4 / per_item;
    for (var i = lid; i < n * items; i += WG) {
        let jj = i / items;
        let c = i % items;
        let a = key_addr(src.x, u32(j0) + jj, src.y);
        let e = a.y + 4u * c * per_item;
        pf_put(jj * HD4 + c * per_item, pf_pool_kv(a.x, e), pf_pool_kv(a.x, e + p.k_off));
    }
}

@compute @workgroup_size(WG)
fn attn_paged_prefill_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= p.v_sb * p.n_kv_heads {
        return;
    }
    // The plan gives these work items rows_per_wg = R * WG / L and one lane.
    let it = paged_item(wg_id);
    let lane = sg_lane % L;
    let rg = pf_group_row(it.r0, sg_id, sg_size, sg_lane);

    var q: PfRegs;
    var acc: PfRegs;
    var st: array<PfRow, R>;
    pf_load_rows(
        &q,
        &acc,
        &st,
        rg,
        it.rows,
        it.kvh,
        it.sq.q_start * p.q_st,
        it.sq.q_offset,
        it.sq.kv_len,
        lane,
    );
    let toks = vec2<u32>(it.r0, it.r_last) / p.group;
    pf_run(&q, &acc, &st, it.kv, vec2<u32>(it.sq.bt_off, it.kvh), lid, lane, paged_mask_seq(it.sq), toks);

    let part0 = it.sq.part_base + it.kvh * it.rows * it.sq.n_splits;
    let dest = PfDest(it.rows, it.kvh, it.sq.q_start * p.o_st, part0, it.sq.n_splits, it.split);
    pf_store(&acc, &st, rg, dest, lane);
}

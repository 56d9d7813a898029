// `attn_prefill_sg`: the GPU prefill (`Kind::PrefillSubgroup`; the step and its design:
// attention_prefill_sg_step.wgsl, joined before this file in the module
// `ops::attention::ATTENTION_PREFILL_SUBGROUP`) over contiguous K/V, read 16 bytes at a time
// through `vec4<u32>` views of their windows (a quantized cache's whole buffers, read in place
// by the step's `pf_qstage`): one workgroup per (batch, kv head, block of rows,
// split), the output written directly or, split over the keys (p.n_splits > 1), partials for
// `attn_prefill_merge`.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): the staging loop by
// WG to the tile's items (the step's loops: attention_prefill_sg_step.wgsl).

// The 16 bytes of float K (src 0u) or V (src 1u) at element e of its window (e a multiple of
// `elems_per_item(DTYPE)`), as f32, one case per storage format.
fn pf_kv(src: u32, e: u32) -> Item {
    return unpack_item(keys_unit(src, e / elems_per_item(DTYPE)), DTYPE);
}

// Quantized K/V (`pf_qstage`): key j's rows in the whole cache buffers (k4 / v4 bind them),
// the head's K and V rows starting at elements h.x and h.y.
fn pf_qrows(h: vec2<u32>, j: u32) -> KvRows {
    return kv_qrows(h, j);
}

// Keys j0 .. j0 + n of the kv head whose K and V rows start at elements src.x and src.y into
// k_tile / v_tile (key jj's vec4 d at jj * HD4 + d), one 16-byte piece per invocation and step.
fn pf_stage(lid: u32, j0: i32, n: u32, src: vec2<u32>) {
    let per_item = elems_per_item(DTYPE) / 4u;
    let items = HD4 / per_item;
    for (var i = lid; i < n * items; i += WG) {
        let jj = i / items;
        let c = i % items;
        let j = u32(j0) + jj;
        let t = jj * HD4 + c * per_item;
        let k = pf_kv(0u, src.x + j * p.k_st + 4u * c * per_item);
        let v = pf_kv(1u, src.y + j * p.v_st + 4u * c * per_item);
        pf_put(t, k, v);
    }
}

@compute @workgroup_size(WG)
fn attn_prefill_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= split_items() {
        return;
    }
    let w = split_item(wg_id, R * (WG / L));
    // This lane's place in its group and the group's first row.
    let lane = sg_lane % L;
    let rg = pf_group_row(w.r0, sg_id, sg_size, sg_lane);

    var q: PfRegs;
    var acc: PfRegs;
    var st: array<PfRow, R>;
    pf_load_rows(&q, &acc, &st, rg, p.rows, w.kvh, w.b * p.q_sb, p.q_offset, p.kv_len, lane);
    let src = vec2<u32>(p.k_off + w.b * p.k_sb + w.kvh * p.k_sh, p.v_off + w.b * p.v_sb + w.kvh * p.v_sh);
    pf_run(&q, &acc, &st, w.kv, src, lid, lane, mask_seq(w.b), vec2<u32>(w.r0, w.r_last) / p.group);

    let dest = PfDest(p.rows, w.kvh, w.b * p.o_sb, w.bh * p.rows * p.n_splits, p.n_splits, w.split);
    pf_store(&acc, &st, rg, dest, lane);
}

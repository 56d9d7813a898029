// Appended to attention_paged.wgsl and attention_subgroup.wgsl in a module of its own
// (`ops::paged::ATTENTION_PAGED_SUBGROUP`): a module that uses subgroup operations anywhere fails
// validation on devices without SUBGROUP.
//
// `attn_paged_sg`: the GPU decode rows of a paged batch (q_len <= 8 on adapters with SUBGROUP
// that are not CPU adapters), the subgroup decode step (`sg_partial`, attention_subgroup.wgsl)
// over pages, as FlashInfer's `BatchDecodeWithPagedKVCacheKernel` reads its pages: one
// workgroup per (work item, kv head), a work item being (sequence, row block, split) of the
// host's plan with RS rows per block (the sequence record's rows_per_wg). A row of one kv head is
// contiguous inside a page in both layouts, so each lane reads its 16-byte units of a K or V row
// straight from the page; `keys_rows` (attention_paged.wgsl) finds the page with a shift and a
// mask (page sizes are powers of two) and the pool buffer with comparisons, no division per key.
// One partial per (row, split) goes to the sequence's entries in (row, split) order for
// `attn_paged_merge_rows`; a sequence with one split writes its output directly. With the same
// split structure the results equal `attn_decode_sg`'s bit for bit.
//
// The host plans a batch before it knows the pool's K/V format, so a work item's row block
// (the sequence record's rows_per_wg) is sized for float pages; a quantized pool's lanes hold
// more values of each row, so fewer rows fit their registers and the key constant RS may be
// smaller: the block's rows are then taken RS at a time, each step over the block's keys (one
// step for float pools, and for quantized ones whose block fits).
// Loops (modules are created without naga's loop counters, src/pipeline.rs): rows by 1 to RS;
// the row steps by RS (> 0) to the end of the block (one step over float pools).

// The K/V load seam (`sg_item`, the pool's packed 16-byte units) is the part before this one
// (`SG_ITEM_PACKED` in ops/attention/variants.rs); quantized pages' rows and scales: `sg_qrows`
// and `sg_qscale` below.

// Quantized pages (`sg_rows`): key j's K and V rows (`pool_qrows`, attention_paged.wgsl).
fn sg_qrows(h: vec2<u32>, j: u32) -> SgRows {
    return pool_qrows(h, j);
}

// f16 scale number n of pool buffer src.
fn sg_qscale(src: u32, n: u32) -> f32 {
    return kv_f16(pool_word(src, n >> 1u), n);
}

@compute @workgroup_size(WG)
fn attn_paged_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= p.v_sb * p.n_kv_heads {
        return;
    }
    // The plan gives these work items rows_per_wg rows, a multiple of RS (both powers of two).
    let it = paged_item(wg_id);
    let gl = sg_lane_group(sg_lane, sg_size, sg_id);
    let stride = part_units();
    let n_parts = it.sq.n_splits;
    let r_end = min(it.r0 + it.sq.rows_per_wg, it.rows);

    var r0 = it.r0;
    loop {
        var q: SgRegs;
        var pos: array<i32, RS>;
        sg_load_q(&q, &pos, r0, it.rows, it.kvh, it.sq.q_start * p.q_st, it.sq.q_offset, gl.y);
        var acc: SgRegs;
        var m: array<f32, RS>;
        var l: array<f32, RS>;
        sg_partial(&q, &pos, &acc, &m, &l, vec2<u32>(it.sq.bt_off, it.kvh), it.kvh, paged_mask_seq(it.sq), it.kv, r0, it.rows, gl.x, gl.y);
        for (var r = 0u; r < RS; r++) {
            sg_merge_row(&acc, &m, &l, r, gl.x, gl.y);
            let rr = r0 + r;
            if gl.x == 0u && rr < it.rows {
                let t = rr / p.group;
                let h = it.kvh * p.group + rr % p.group;
                let o_base = p.o_off + (it.sq.q_start + t) * p.o_st + h * p.o_sh;
                let e = (it.sq.part_base + (it.kvh * it.rows + rr) * n_parts + it.split) * stride;
                sg_store_row(&acc, m[r], l[r], r, gl.y, n_parts == 1u, e, o_base, h);
            }
        }
        r0 += RS;
        // A float pool's blocks are RS rows: one step, and the exit is a constant the compiler
        // folds (as a `for` over the block's rows this cost lavapipe's LLVM 0.7 s more in
        // tests/paged.rs' float subgroup_decode_over_pages, cold).
        if KV_FMT < KV_Q8_0 || r0 >= r_end {
            break;
        }
    }
}

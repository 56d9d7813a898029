// GQA attention for few query tokens (decode): split-KV "flash-decoding" in two passes.
//
// out[b, t, h] = softmax_j(softcap(scale * q[b, t, h] . k[b, j, h / g]) + mask) . v[b, :, h / g]
//
// Pass 1 (`attn_decode_partial`): one workgroup per (batch, kv head, row block, split). The
// workgroup's rows are the g query heads of the kv head times the query tokens (r = t * g + i),
// so each K/V row of the split's chunk of `chunk` keys is read from memory once per kv head and
// staged in workgroup memory for all query heads of the group. With fewer rows than invocations,
// the spare invocations become key lanes (WG / rows_per_wg per row), each taking every lanes-th
// key of a tile. Each invocation runs an f32 online softmax for its row and lane over the chunk
// (`softmax_tile` in attention_common.wgsl, the same step as the prefill) and writes the
// partial (m, l, acc); partials are ordered (row, split, lane). A chunk with no visible
// key writes (NEG_BIG, 0, 0), which the merge weighs with exp(NEG_BIG - M) * 0 = 0.
//
// Pass 2 (`attn_decode_merge`): one invocation per (row, 4 output elements) combines the
// n_splits * lanes partials in ascending (split, lane) order (bitwise repeatable), adds the
// sink to the denominator and divides;
// a row with no visible key at all stores 0.
//
// Override constants (set by `ops::attention::Variant`):
//   DTYPE    storage dtype of q, k, v and out (0 f32, 1 f16, 2 bf16)
//   WG       workgroup size = query rows per workgroup (pass 1), invocations per workgroup (pass 2)
//   TILE_V4  vec4 capacity of each of the K and V tiles (bk * head_dim / 4 <= TILE_V4)
//   HD4      head_dim / 4 (1 ..= 64)
// Loops (modules are created without naga's loop counters, src/pipeline.rs): the key loop steps by
// p.bk, which the host sets to min(64, TILE_V4 / HD4) >= 1 after checking TILE_V4 >= HD4; the head
// loops by 1 to HD4.

// Overrides, Params, input bindings and helpers: attention_common.wgsl; the partials' bindings,
// store_partial and merge_partials: attention_split.wgsl.

@compute @workgroup_size(WG)
fn attn_decode_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= split_items() {
        return;
    }
    // rows_per_wg rows (a power of two <= WG) times `lanes` key lanes: lane l of a row takes
    // keys l, l + lanes, ... of every tile and writes its own partial, merged like a split.
    // w.kv: the keys of this split that any row of the workgroup can see.
    let w = split_item(wg_id, p.rows_per_wg);
    let b = w.b;
    let kvh = w.kvh;
    let lanes = p.lanes;
    let lane = lid / p.rows_per_wg;
    let r = w.r0 + lid % p.rows_per_wg;
    let row_ok = r < p.rows;
    let pos = p.q_offset + i32(min(r, p.rows - 1u) / p.group);
    let kv = w.kv;
    var q: array<vec4<f32>, MAX_HD4>;
    var acc: array<vec4<f32>, MAX_HD4>;
    load_q(&q, b, r, kvh);
    for (var d = 0u; d < HD4; d++) {
        acc[d] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    let k_base = p.k_off + b * p.k_sb + kvh * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + kvh * p.v_sh;

    let ms = mask_seq(b);
    for (var j0 = kv.x; j0 < kv.y; j0 += i32(p.bk)) {
        let n = min(p.bk, u32(kv.y - j0));
        // MASKS: a tile the boolean mask hides from every row of the block is skipped.
        if mask_tile_seen(lid, WG, ms, w.r0 / p.group, w.r_last / p.group, j0, n) {
            stage_tile(lid, j0, n, k_base, v_base);
            workgroupBarrier();
            if row_ok {
                softmax_tile(&q, &acc, &m, &l, j0, n, pos, lane, lanes, row_slope(r, kvh), kvh * p.group + r % p.group, ms);
            }
            workgroupBarrier();
        }
    }

    if row_ok {
        let stride = part_units();
        let n_parts = p.n_splits * lanes;
        store_partial(&acc, ((w.bh * p.rows + r) * n_parts + w.split * lanes + lane) * stride, m, l);
    }
}

@compute @workgroup_size(WG)
fn attn_decode_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let hd4 = HD4;
    let idx = linear_workgroup(wid, nwg) * WG + lid;
    let total_rows = p.batch * p.n_kv_heads * p.rows;
    if idx >= total_rows * hd4 {
        return;
    }
    let d = idx % hd4;
    let row = idx / hd4;
    let r = row % p.rows;
    let bh = row / p.rows;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    let t = r / p.group;
    let h = kvh * p.group + r % p.group;
    let n_parts = p.n_splits * p.lanes;
    let base = row * n_parts * part_units();
    let o_base = p.o_off + b * p.o_sb + t * p.o_st + h * p.o_sh;
    store4(o_base + 4u * d, merge_partials(base, n_parts, d, h));
}

// `attn_decode_merge_rows`: the merge of the subgroup decode (`attn_decode_sg`), one workgroup of
// WG invocations per row reducing its n_splits partials in parallel (`merge_row`,
// attention_split.wgsl). With one split the partial pass wrote the output and this pass is not
// recorded.
@compute @workgroup_size(WG)
fn attn_decode_merge_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if row >= p.batch * p.n_kv_heads * p.rows {
        return;
    }
    let r = row % p.rows;
    let bh = row / p.rows;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    let h = kvh * p.group + r % p.group;
    let n_parts = p.n_splits * p.lanes;
    let o = merge_row(row * n_parts * part_units(), n_parts, h, lid);
    if lid < HD4 {
        store4(p.o_off + b * p.o_sb + (r / p.group) * p.o_st + h * p.o_sh + 4u * lid, o);
    }
}

// ---------------------------------------------------------------------------------------------
// `attn_decode_keys`: decode for CPU adapters; the key-lane step `keys_partial` it shares with
// `attn_paged_keys` is in attention_keys.wgsl, with the reasons for its shape. This entry point
// picks the workgroup's (batch, kv head, row block, split), loads the KR query rows and hands
// `keys_partial` the K/V row addresses of one contiguous head (`keys_rows` below, `keys_unit` in
// attention_kv4.wgsl).
// Requires 16-byte aligned K/V rows (offsets and strides; head_dim a multiple of 8 for halves),
// which the host checks.

// (K source, K unit, V source, V unit): where the 16-byte units of key j's K and V rows start;
// h = (K element base, V element base) of the head. Source 0 is k4, 1 is v4.
fn keys_rows(h: vec2<u32>, j: u32) -> vec4<u32> {
    let epi = select(elems_per_item(DTYPE), 8u, KV_FMT >= KV_Q8_0);
    return vec4<u32>(0u, (h.x + j * p.k_st) / epi, 1u, (h.y + j * p.v_st) / epi);
}

// Quantized K/V of source src (0 K, 1 V) at element e (a multiple of 8): the 16-byte unit of
// k4 / v4 (the same whole cache buffers as k_buf / v_buf) holding its two data words, and its
// scale.
fn keys_qunit(src: u32, e: u32) -> vec4<u32> {
    return keys_unit(src, kv_word(KV_FMT, e) >> 2u);
}

fn keys_qscale(src: u32, e: u32) -> f32 {
    return kv_scale(src + 1u, e);
}

@compute @workgroup_size(WG)
fn attn_decode_keys(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    if wg_id >= split_items() {
        return;
    }
    let w = split_item(wg_id, KR);
    let b = w.b;
    let kvh = w.kvh;
    let r0 = w.r0;

    let bases = vec4<u32>(q_row(b, r0, kvh), q_row(b, r0 + 1u, kvh), q_row(b, r0 + 2u, kvh), q_row(b, r0 + 3u, kvh));
    keys_stage_q(lid, bases);
    let stride = part_units();
    let n_parts = p.n_splits;
    let e = ((w.bh * p.rows + r0) * n_parts + w.split) * stride;
    let h = vec2<u32>(p.k_off + b * p.k_sb + kvh * p.k_sh, p.v_off + b * p.v_sb + kvh * p.v_sh);
    keys_partial(h, kvh, w.kv, lid, r0, p.rows, mask_seq(b), e, n_parts * stride, false, vec4<u32>(0u));
}

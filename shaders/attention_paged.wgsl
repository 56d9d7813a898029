// Variable-length GQA attention over a paged KV cache (PagedAttention / FlashInfer's batch
// kernels), read in place from the pages: no gather into a contiguous copy.
//
// Sequence s has q_len[s] queries packed at rows q_start[s] .. of q / out `[total_q, n_heads,
// head_dim]`, kv_len[s] keys held in the pages its block-table row lists, and its queries aligned
// bottom-right (query t at position kv_len - q_len + t). One call mixes prefill, chunked prefill
// and decode sequences.
//
// Pages live in up to three pool buffers (`pool0` .. `pool2`, seen as vec4 words), pages_per_buffer
// pages each; a page holds K then V, each `[page_size, n_kv_heads, head_dim]` (NHD) or
// `[n_kv_heads, page_size, head_dim]` (HND), as token and head strides in the parameters.
//
// Pass 1 (`attn_paged_partial`): one workgroup per (work item, kv head); a work item is
// (sequence, row block, split) from the host's plan, so splits follow each sequence's own length
// and a 32k sequence beside thirty short ones fills the device without padding. The rest is
// `attn_decode_partial` (attention_decode.wgsl): rows are the g query heads of the kv head times
// the sequence's tokens, K/V tiles staged in workgroup memory for the whole group, spare
// invocations as key lanes, the same `softmax_tile` step, a partial (m, l, acc) per (row, split,
// lane). With the same split configuration the arithmetic is the contiguous kernel's, so results
// are bitwise equal. A sequence whose rows each have one partial (one split, one lane: prefill
// rows) writes its output directly, as `attn_prefill` does, so long prefills need no partials;
// that is the merge of a single partial, bit for bit.
//
// Bindings: the partial pass uses q, the pools, the plan, aux (sinks and masks), the partials and
// out: the eight storage buffers of WebGPU's default limit, which is why the pool has three
// buffers.
//
// Pass 1 on CPU adapters (`attn_paged_keys`, for the decode sequences the host planned that way:
// q_len <= 8, 16-byte aligned rows): the contiguous `attn_decode_keys` over pages. One
// workgroup of WG = 8 key lanes per (work item, kv head), each lane owning whole keys of the
// split and reading each of their K/V rows once with 16-byte units straight from the page (a
// row of one kv head is contiguous inside a page in both layouts), serving the KR rows of the
// row block with it (`keys_partial`, attention_keys.wgsl). A partial per (row, split, lane),
// 8 lanes. The host dispatches it once per KR present in the batch, each over its own list of
// work items; with the same split structure the results equal `attn_decode_keys`' bit for bit.
//
// Pass 2 (`attn_paged_merge`): one invocation per (packed token, query head, 4 output elements)
// merges its sequence's partials in ascending (split, lane) order, as `attn_decode_merge`;
// sequences written directly are skipped.
//
// The host plan lives in the `plan_buf` buffer (u32 words): a 16-word record per sequence, a 4-word
// record per work item, the sequence of every packed query row, and the block-table rows.
//
// Parameters reuse attention_common.wgsl's Params; fields with a paged meaning:
//   batch      sequences              q_len     packed query rows (total_q)
//   kv_len     page_size              rows      pages per pool buffer
//   k_off      element offset of V inside a page (K is at 0)
//   k_sb       elements per page      k_st, k_sh  token and head strides inside a page
//   v_off      word offset of the work items in plan_buf     v_sb  work items
//   v_st       word offset of the query-row sequence map in plan_buf
//   v_sh       word offset of the sequence records in plan_buf
//   q_off, q_st, q_sh / o_off, o_st, o_sh: packed q / out, element offset and token, head strides.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): tile loops step by
// p.bk (>= 1, as in attention_decode.wgsl), staging by WG, head loops by 1 to HD4.

// The partials' bindings (5, 6, 7), store_partial and merge_partials: attention_split.wgsl.
@group(0) @binding(8) var<storage, read> pool0: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read> pool1: array<vec4<u32>>;
@group(0) @binding(10) var<storage, read> pool2: array<vec4<u32>>;
@group(0) @binding(11) var<storage, read> plan_buf: array<u32>;

// Words of a sequence record.
const SEQ_WORDS: u32 = 16u;

struct Seq {
    q_start: u32,
    q_len: u32,
    kv_len: u32,
    // word offset of the block-table row in plan_buf
    bt_off: u32,
    n_splits: u32,
    chunk: u32,
    rows_per_wg: u32,
    lanes: u32,
    row_blocks: u32,
    // first partial entry of the sequence
    part_base: u32,
    // position of query 0: kv_len - q_len
    q_offset: i32,
    // Where the sequence's mask inputs start (`Masks` over a paged batch, FlashInfer's
    // mask_indptr): the bit number of its packed mask (each sequence's mask starts on a byte,
    // as `segment_packbits` packs them), the sum of q_len * kv_len and of kv_len over the
    // sequences before it.
    mask_bit: u32,
    bias_at: u32,
    ids_at: u32,
}

// Sequence sq's mask inputs (`MaskSeq`).
fn paged_mask_seq(sq: Seq) -> MaskSeq {
    let per = select(1u, p.n_heads, (p.masks & MASK_BIAS_HEADS) != 0u);
    return MaskSeq(sq.mask_bit, p.bias_off + per * sq.bias_at, p.ids_off + sq.ids_at, sq.q_len, sq.kv_len, sq.q_offset);
}

fn seq_record(s: u32) -> Seq {
    let e = p.v_sh + s * SEQ_WORDS;
    return Seq(
        plan_buf[e],
        plan_buf[e + 1u],
        plan_buf[e + 2u],
        plan_buf[e + 3u],
        plan_buf[e + 4u],
        plan_buf[e + 5u],
        plan_buf[e + 6u],
        plan_buf[e + 7u],
        plan_buf[e + 8u],
        plan_buf[e + 9u],
        bitcast<i32>(plan_buf[e + 10u]),
        plan_buf[e + 11u],
        plan_buf[e + 12u],
        plan_buf[e + 13u],
    );
}

// Pool buffers the cache has (1, 2 or 3): an override so that a pool in one buffer, the common
// case, compiles to plain loads from pool0. A pool-buffer switch on every 16-byte load is most of
// the code of the key loops (a lane's keys may sit in different buffers, so a CPU adapter emits
// every arm), and LLVM's time on lavapipe follows the code size (BENCHMARKS.md, cold compile).
override POOLS: u32 = 3u;

fn pool_word4(buf: u32, i: u32) -> vec4<u32> {
    if POOLS == 1u || buf == 0u {
        return pool0[i];
    }
    if POOLS == 2u || buf == 1u {
        return pool1[i];
    }
    return pool2[i];
}

// Quantized pages (KV_FMT >= KV_Q8_0): page n of a pool buffer is a quantized buffer of p.k_sc
// words from word n * p.k_sc, whose scale plane starts at f16 number p.v_sc of the page
// (src/kv_format.rs, PagedKvCache::with_format); its values are addressed by page and value
// inside it (`key_slot`), never by dividing an offset by the page's size. V's rows start at value
// p.k_off of a page, so fp8 picks V's scale from there on.
fn pool_word(buf: u32, i: u32) -> u32 {
    return pool_word4(buf, i >> 2u)[i & 3u];
}

// The scale of value le of the page whose first word is base.
fn pool_qscale(buf: u32, base: u32, le: u32) -> f32 {
    if KV_FMT == KV_FP8 {
        return select(p.k_scale, p.v_scale, le >= p.k_off);
    }
    let i = pool_scale_number(base, le);
    return kv_f16(pool_word(buf, i >> 1u), i);
}

// The f16 number, in its pool buffer, of the block scale of value le of the page whose first
// word is base.
fn pool_scale_number(base: u32, le: u32) -> u32 {
    return 2u * base + p.v_sc + kv_scale_index(le, 4u * HD4);
}

// Four elements at value le (a multiple of 4) of page `page` of pool buffer buf (`key_slot`'s
// parts).
fn pool_load4(buf: u32, page: u32, le: u32) -> vec4<f32> {
    if KV_FMT >= KV_Q8_0 {
        let base = page * p.k_sc;
        let w = pool_word(buf, base + kv_word(KV_FMT, le));
        return kv_dequant4(KV_FMT, w, le, pool_qscale(buf, base, le));
    }
    let e = page * p.k_sb + le;
    if DTYPE == DT_F32 {
        return bitcast<vec4<f32>>(pool_word4(buf, e >> 2u));
    }
    let w = pool_word4(buf, e >> 3u);
    var pair = w.xy;
    if (e & 4u) != 0u {
        pair = w.zw;
    }
    return unpack_half4(pair, DTYPE);
}

// Key j of the sequence whose block-table row starts at bt_off, kv head kvh: (pool buffer,
// element offset of the head's K row); V is p.k_off further. No division per key: the page
// size is a power of two (the host checks), so the page is a shift and the slot a mask, and the
// pool buffer (at most 3) comes from comparisons.
fn key_addr(bt_off: u32, j: u32, kvh: u32) -> vec2<u32> {
    let s = key_slot(bt_off, j, kvh);
    return vec2<u32>(s.x, s.y * p.k_sb + s.z);
}

// key_addr's parts: (pool buffer, page number inside it, element offset of the head's K row
// inside the page).
fn key_slot(bt_off: u32, j: u32, kvh: u32) -> vec3<u32> {
    let page = plan_buf[bt_off + (j >> countTrailingZeros(p.kv_len))];
    var buf = 0u;
    if POOLS > 1u {
        buf = u32(page >= p.rows) + u32(page >= 2u * p.rows);
    }
    return vec3<u32>(buf, page - buf * p.rows, (j & (p.kv_len - 1u)) * p.k_st + kvh * p.k_sh);
}

// Quantized pages: key j's K and V rows (`KvRows`) of kv head h.y of the sequence whose
// block-table row starts at h.x, found from its page and the element inside it (`key_slot`),
// so that no unit divides by the page's size.
fn pool_qrows(h: vec2<u32>, j: u32) -> KvRows {
    let s = key_slot(h.x, j, h.y);
    let base = s.y * p.k_sc;
    return KvRows(pool_qrow(s.x, base, s.z, p.k_scale), pool_qrow(s.x, base, s.z + p.k_off, p.v_scale));
}

// The row starting at value le of the page whose first word is base, in pool buffer buf: (buf,
// its first data unit, its first block's scale number or fp8's tensor scale ts).
fn pool_qrow(buf: u32, base: u32, le: u32, ts: f32) -> vec3<u32> {
    var sc = bitcast<u32>(ts);
    if KV_FMT != KV_FP8 {
        sc = pool_scale_number(base, le);
    }
    return vec3<u32>(buf, (base + kv_word(KV_FMT, le)) >> 2u, sc);
}

// The share of one workgroup of a partial pass: a (work item, kv head) of the host's plan.
struct PagedItem {
    sq: Seq,
    kvh: u32,
    split: u32,
    // the sequence's rows (query heads of the group x its tokens)
    rows: u32,
    // the row block's first and last row
    r0: u32,
    r_last: u32,
    // the keys the block's rows may see in the split
    kv: vec2<i32>,
}

// Workgroup wg_id's (work item, kv head): work items are kv-head-major in v_off's list, row
// blocks of the sequence's rows_per_wg rows.
fn paged_item(wg_id: u32) -> PagedItem {
    let kvh = wg_id % p.n_kv_heads;
    let item = p.v_off + 4u * (wg_id / p.n_kv_heads);
    let sq = seq_record(plan_buf[item]);
    let blk = plan_buf[item + 1u];
    let split = plan_buf[item + 2u];
    let rows = sq.q_len * p.group;
    let r0 = blk * sq.rows_per_wg;
    let r_last = min(r0 + sq.rows_per_wg, rows) - 1u;
    let split_end = min(sq.kv_len, (split + 1u) * sq.chunk);
    let kv = key_range(i32(min(split * sq.chunk, sq.kv_len)), i32(split_end), r0, r_last, sq.q_offset);
    return PagedItem(sq, kvh, split, rows, r0, r_last, kv);
}

// Keys j0 .. j0 + n of one kv head into k_tile / v_tile, spread over the workgroup: K's units,
// then V's, through one `pool_load4` call (its half-type conversion is inlined once: llvmpipe's
// compile time follows the inlined code, BENCHMARKS.md).
fn stage_tile_paged(lid: u32, j0: i32, n: u32, bt_off: u32, kvh: u32) {
    for (var i = lid; i < 2u * n * HD4; i += WG) {
        let v = i >= n * HD4;
        let iu = select(i, i - n * HD4, v);
        let s = key_slot(bt_off, u32(j0) + iu / HD4, kvh);
        let x = pool_load4(s.x, s.y, s.z + select(0u, p.k_off, v) + 4u * (iu % HD4));
        if v {
            v_tile[iu] = x;
        } else {
            k_tile[iu] = x;
        }
    }
}

@compute @workgroup_size(WG)
fn attn_paged_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= p.v_sb * p.n_kv_heads {
        return;
    }
    let it = paged_item(wg_id);
    let lanes = it.sq.lanes;
    let lane = lid / it.sq.rows_per_wg;
    let r = it.r0 + lid % it.sq.rows_per_wg;
    let row_ok = r < it.rows;
    let rc = min(r, it.rows - 1u);
    let t = rc / p.group;
    let h = it.kvh * p.group + rc % p.group;
    let pos = it.sq.q_offset + i32(t);

    var q: array<vec4<f32>, MAX_HD4>;
    var acc: array<vec4<f32>, MAX_HD4>;
    let q_base = p.q_off + (it.sq.q_start + t) * p.q_st + h * p.q_sh;
    for (var d = 0u; d < HD4; d++) {
        q[d] = q_load4(q_base + 4u * d) * p.scale;
        acc[d] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;

    let ms = paged_mask_seq(it.sq);
    for (var j0 = it.kv.x; j0 < it.kv.y; j0 += i32(p.bk)) {
        let n = min(p.bk, u32(it.kv.y - j0));
        // MASKS: a tile the boolean mask hides from every row of the block is skipped.
        if mask_tile_seen(lid, WG, ms, it.r0 / p.group, it.r_last / p.group, j0, n) {
            stage_tile_paged(lid, j0, n, it.sq.bt_off, it.kvh);
            workgroupBarrier();
            if row_ok && lane < lanes {
                softmax_tile(&q, &acc, &m, &l, j0, n, pos, lane, lanes, alibi_slope(h), h, ms);
            }
            workgroupBarrier();
        }
    }

    let n_parts = it.sq.n_splits * lanes;
    if row_ok && n_parts == 1u {
        let inv = out_scale(m, l, h);
        let o_base = p.o_off + (it.sq.q_start + t) * p.o_st + h * p.o_sh;
        for (var d = 0u; d < HD4; d++) {
            store4(o_base + 4u * d, acc[d] * inv);
        }
    } else if row_ok && lane < lanes {
        let stride = part_units();
        let entry = it.sq.part_base + (it.kvh * it.rows + r) * n_parts + it.split * lanes + lane;
        store_partial(&acc, entry * stride, m, l);
    }
}

@compute @workgroup_size(WG)
fn attn_paged_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_workgroup(wid, nwg) * WG + lid;
    if idx >= p.q_len * p.n_heads * HD4 {
        return;
    }
    let d = idx % HD4;
    let th = idx / HD4;
    let h = th % p.n_heads;
    let tq = th / p.n_heads;
    let sq = seq_record(plan_buf[p.v_st + tq]);
    let kvh = h / p.group;
    let r = (tq - sq.q_start) * p.group + h % p.group;
    let rows = sq.q_len * p.group;
    let stride = part_units();
    let n_parts = sq.n_splits * sq.lanes;
    // Written directly by the partial pass.
    if n_parts == 1u {
        return;
    }
    let base = (sq.part_base + (kvh * rows + r) * n_parts) * stride;
    store4(p.o_off + tq * p.o_st + h * p.o_sh + 4u * d, merge_partials(base, n_parts, d, h));
}

// `attn_paged_merge_rows`: the merge of a batch whose decode rows ran `attn_paged_sg`, one
// workgroup of WG invocations per (packed token, query head) reducing its sequence's partials in
// parallel (`merge_row`, attention_split.wgsl); sequences written directly are skipped.
@compute @workgroup_size(WG)
fn attn_paged_merge_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let th = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if th >= p.q_len * p.n_heads {
        return;
    }
    let h = th % p.n_heads;
    let tq = th / p.n_heads;
    let sq = seq_record(plan_buf[p.v_st + tq]);
    let n_parts = sq.n_splits * sq.lanes;
    if n_parts == 1u {
        return;
    }
    let kvh = h / p.group;
    let r = (tq - sq.q_start) * p.group + h % p.group;
    let base = (sq.part_base + (kvh * sq.q_len * p.group + r) * n_parts) * part_units();
    let o = merge_row(base, n_parts, h, lid);
    if lid < HD4 {
        store4(p.o_off + tq * p.o_st + h * p.o_sh + 4u * lid, o);
    }
}

// ---------------------------------------------------------------------------------------------
// `attn_paged_keys` (see the header): `keys_partial`'s row addresses inside the pages.

// (K source, K unit, V source, V unit) of key j; h = (block-table offset, kv head). Both rows
// live in the same page, so in the same pool buffer. Float pages: the source is the pool buffer,
// the unit counts from the buffer's start. Quantized pages: the source is the pool buffer + 4 x
// the page's number inside it (POOLS <= 3), the unit counts from the page's start, so that
// `keys_qunit` / `keys_qscale` find the page's words without dividing by its size.
fn keys_rows(h: vec2<u32>, j: u32) -> vec4<u32> {
    if KV_FMT >= KV_Q8_0 {
        let s = key_slot(h.x, j, h.y);
        let x = s.x + 4u * s.y;
        return vec4<u32>(x, s.z / 8u, x, (s.z + p.k_off) / 8u);
    }
    let a = key_addr(h.x, j, h.y);
    let epi = elems_per_item(DTYPE);
    return vec4<u32>(a.x, a.y / epi, a.x, (a.y + p.k_off) / epi);
}

fn keys_unit(src: u32, i: u32) -> vec4<u32> {
    return pool_word4(src, i);
}

// Quantized pages (`keys_rows`' source src = pool buffer + 4 x page), value e of the page (a
// multiple of 8): the 16-byte unit holding its two data words (a page is a whole number of
// 16-byte units, so they share one), and its scale.
fn keys_qunit(src: u32, e: u32) -> vec4<u32> {
    return pool_word4(src & 3u, ((src >> 2u) * p.k_sc + kv_word(KV_FMT, e)) >> 2u);
}

fn keys_qscale(src: u32, e: u32) -> f32 {
    return pool_qscale(src & 3u, (src >> 2u) * p.k_sc, e);
}

// (Packed token, query head) of query row r (clamped to the sequence's last row) of sequence sq,
// kv head kvh.
fn paged_row(sq: Seq, r: u32, kvh: u32) -> vec2<u32> {
    let rc = min(r, sq.q_len * p.group - 1u);
    return vec2<u32>(sq.q_start + rc / p.group, kvh * p.group + rc % p.group);
}

// Element offset of query row r's q row (`paged_row`).
fn paged_q_row(sq: Seq, r: u32, kvh: u32) -> u32 {
    let th = paged_row(sq, r, kvh);
    return p.q_off + th.x * p.q_st + th.y * p.q_sh;
}

// Element offset of query row r's output row (`paged_row`).
fn paged_o_row(sq: Seq, r: u32, kvh: u32) -> u32 {
    let th = paged_row(sq, r, kvh);
    return p.o_off + th.x * p.o_st + th.y * p.o_sh;
}

@compute @workgroup_size(WG)
fn attn_paged_keys(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    if wg_id >= p.v_sb * p.n_kv_heads {
        return;
    }
    // The plan gives these work items rows_per_wg = KR.
    let it = paged_item(wg_id);

    let bases = vec4<u32>(
        paged_q_row(it.sq, it.r0, it.kvh),
        paged_q_row(it.sq, it.r0 + 1u, it.kvh),
        paged_q_row(it.sq, it.r0 + 2u, it.kvh),
        paged_q_row(it.sq, it.r0 + 3u, it.kvh),
    );
    keys_stage_q(lid, bases);
    let stride = part_units();
    let n_parts = it.sq.n_splits;
    let e = (it.sq.part_base + (it.kvh * it.rows + it.r0) * n_parts + it.split) * stride;
    // A sequence's only split writes its rows' outputs (the planner gives it no partials).
    let o = vec4<u32>(
        paged_o_row(it.sq, it.r0, it.kvh),
        paged_o_row(it.sq, it.r0 + 1u, it.kvh),
        paged_o_row(it.sq, it.r0 + 2u, it.kvh),
        paged_o_row(it.sq, it.r0 + 3u, it.kvh),
    );
    keys_partial(vec2<u32>(it.sq.bt_off, it.kvh), it.kvh, it.kv, lid, it.r0, it.rows, paged_mask_seq(it.sq), e, n_parts * stride, n_parts == 1u, o);
}

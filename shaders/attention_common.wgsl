// Shared by the attention kernels (prepended to attention_prefill.wgsl and attention_decode.wgsl
// by `Shader::source`, after common.wgsl): override constants, parameters, the input bindings,
// the load, store, mask and logit helpers, and the online-softmax tile step. Each kernel file
// declares its own output bindings (`out_buf` and, for decode, the split partials); WGSL resolves
// module-scope names in any order.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): every loop counts up
// by 1, by WG or by the plan's key lanes (p.lanes >= 1) to HD4 or to a tile's key count.
//
// Masks (`MASKS`, a pipeline-key axis: off, the branches below are constant and fold away, so
// unmasked calls run the code they ran before masks existed): a packed boolean mask, an
// additive bias and block ids, all read from the `aux` binding (which also holds the sinks, so
// that no kernel needs another storage binding). `mask_logit` applies them to one logit; every
// kernel calls it where it finalises a score, and treats a logit at or below NEG_BIG as a
// hidden key.

override DTYPE: u32 = 0u;
// Storage format of K and V (KvFormat::shader_code): DTYPE's code for the float formats, or
// KV_Q8_0 / KV_Q4_0 / KV_FP8 (kv_quant.wgsl), read in place and dequantized in registers.
override KV_FMT: u32 = 0u;
override WG: u32 = 64u;
override TILE_V4: u32 = 512u;
// head_dim / 4, a compile-time constant so that the loops over a head have a fixed trip count
// and the per-invocation q / acc arrays can live in registers.
override HD4: u32 = 32u;
// Mask inputs bound (`Inputs`): the mask bits, bias and block ids named by p.masks are read.
override MASKS: bool = false;

struct Params {
    batch: u32,
    q_len: u32,
    kv_len: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    group: u32,
    rows: u32,
    q_off: u32,
    q_sb: u32,
    q_st: u32,
    q_sh: u32,
    k_off: u32,
    k_sb: u32,
    k_st: u32,
    k_sh: u32,
    v_off: u32,
    v_sb: u32,
    v_st: u32,
    v_sh: u32,
    o_off: u32,
    o_sb: u32,
    o_st: u32,
    o_sh: u32,
    q_offset: i32,
    // Keys j with pos - j > win_left are masked (-1 = no left bound).
    win_left: i32,
    causal: u32,
    has_sinks: u32,
    scale: f32,
    softcap: f32,
    s_off: u32,
    bk: u32,
    row_blocks: u32,
    n_splits: u32,
    chunk: u32,
    rows_per_wg: u32,
    lanes: u32,
    // Keys j with j - pos > win_right are masked (-1 = no right bound).
    win_right: i32,
    // Chunked local attention (Llama 4): only keys of the query's chunk of `attn_chunk` positions
    // (0 = none).
    attn_chunk: u32,
    // ALiBi: the largest power of two <= n_heads (0 = off); see `alibi_slope`.
    alibi: u32,
    // Quantized K/V (KV_FMT >= KV_Q8_0; the whole cache buffers are bound): the f16 number of
    // the first scale of the K and V scale planes, and fp8's per-tensor scales.
    k_sc: u32,
    v_sc: u32,
    k_scale: f32,
    v_scale: f32,
    // Masks (MASKS): which inputs are bound (MASK_* bits), the word offset of the packed mask
    // bits in aux, and the element offsets of the bias and of the block ids in aux.
    masks: u32,
    mask_off: u32,
    bias_off: u32,
    ids_off: u32,
}

// p.masks bits. The BATCHED bits: the input has a batch dimension (contiguous calls with
// batch > 1; otherwise the batch rows share it).
const MASK_BITS: u32 = 1u;
const MASK_BITS_BATCHED: u32 = 2u;
const MASK_BIAS: u32 = 4u;
const MASK_BIAS_HEADS: u32 = 8u;
const MASK_BIAS_BATCHED: u32 = 16u;
const MASK_IDS: u32 = 32u;
const MASK_IDS_BATCHED: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q_buf: array<u32>;
@group(0) @binding(2) var<storage, read> k_buf: array<u32>;
@group(0) @binding(3) var<storage, read> v_buf: array<u32>;
// The call's side inputs, views of one buffer: sinks (f32, at p.s_off) and, with MASKS, the
// packed mask bits, the bias (f32) and the block ids (i32).
@group(0) @binding(4) var<storage, read> aux: array<u32>;


var<workgroup> k_tile: array<vec4<f32>, TILE_V4>;
var<workgroup> v_tile: array<vec4<f32>, TILE_V4>;

// Below every finite logit; used instead of -inf so that exp(m - m_new) is never NaN.
const NEG_BIG: f32 = -3.0e38;
// Largest head_dim / 4.
const MAX_HD4: u32 = 64u;
// Largest bk.
const MAX_BK: u32 = 64u;

fn word(b: u32, i: u32) -> u32 {
    switch b {
        case 0u: {
            return q_buf[i];
        }
        case 1u: {
            return k_buf[i];
        }
        default: {
            return v_buf[i];
        }
    }
}

// The scale of element e of quantized K (b = 1) or V (b = 2): its block's f16 scale, or fp8's
// tensor scale.
fn kv_scale(b: u32, e: u32) -> f32 {
    if KV_FMT == KV_FP8 {
        return kv_tensor_scale(b);
    }
    let i = kv_scale_number(b, e);
    return kv_f16(word(b, i >> 1u), i);
}

// fp8's tensor scale of K (b = 1) or V (b = 2).
fn kv_tensor_scale(b: u32) -> f32 {
    return select(p.k_scale, p.v_scale, b == 2u);
}

// The f16 number, in its buffer, of the block scale of element e of quantized K (b = 1) or V
// (b = 2); `kv_scale` reads it by words, the subgroup decode through its 16-byte views.
fn kv_scale_number(b: u32, e: u32) -> u32 {
    return select(p.k_sc, p.v_sc, b == 2u) + kv_scale_index(e, 4u * HD4);
}

// Where key j's K and V rows start, each (source, 16-byte unit, scale): float K/V the unit of
// the row (scale unused); quantized K/V (KV_FMT >= KV_Q8_0) the unit of the row's first data word
// and the f16 number of its first block's scale, or fp8's tensor scale as bits: a row's units
// follow one another, and its block scales too. The subgroup kernels' row seam
// (attention_subgroup.wgsl, attention_prefill_sg_step.wgsl).
struct KvRows {
    k: vec3<u32>,
    v: vec3<u32>,
}

// Quantized K/V in the whole cache buffers: key j's rows of the head whose K and V rows start at
// elements h.x and h.y, as (source 0 = K, 1 = V; `keys_unit`'s numbering, unit, scale).
fn kv_qrows(h: vec2<u32>, j: u32) -> KvRows {
    return KvRows(vec3<u32>(0u, kv_qrow(1u, h.x + j * p.k_st)), vec3<u32>(1u, kv_qrow(2u, h.y + j * p.v_st)));
}

// The quantized row of K (b = 1) or V (b = 2) starting at element e: its first data unit and its
// first block's scale number, or fp8's tensor scale as bits.
fn kv_qrow(b: u32, e: u32) -> vec2<u32> {
    var sc = bitcast<u32>(kv_tensor_scale(b));
    if KV_FMT != KV_FP8 {
        sc = kv_scale_number(b, e);
    }
    return vec2<u32>(kv_word(KV_FMT, e) >> 2u, sc);
}

// Four elements of quantized K or V at element e (a multiple of 4): their data word and their
// scale, dequantized.
fn kv_load4(b: u32, e: u32) -> vec4<f32> {
    return kv_dequant4(KV_FMT, word(b, kv_word(KV_FMT, e)), e, kv_scale(b, e));
}

// Four elements starting at element e (e is a multiple of 2 for half types, of 4 for quantized
// K/V).
fn load4(b: u32, e: u32) -> vec4<f32> {
    if KV_FMT >= KV_Q8_0 && b != 0u {
        return kv_load4(b, e);
    }
    if DTYPE == DT_F32 {
        return vec4<f32>(
            bitcast<f32>(word(b, e)),
            bitcast<f32>(word(b, e + 1u)),
            bitcast<f32>(word(b, e + 2u)),
            bitcast<f32>(word(b, e + 3u)),
        );
    }
    let h = e >> 1u;
    return unpack_half4(vec2<u32>(word(b, h), word(b, h + 1u)), DTYPE);
}

// Four elements of q at element e (a multiple of 2 for half types): `load4(0u, e)` without the
// k_buf and v_buf reads in its switch, so that a kernel reading K/V elsewhere (the paged ones,
// from the pools) does not bind them: two more storage bindings than WebGPU's default limit of 8
// allows there.
fn q_load4(e: u32) -> vec4<f32> {
    if DTYPE == DT_F32 {
        return vec4<f32>(
            bitcast<f32>(q_buf[e]),
            bitcast<f32>(q_buf[e + 1u]),
            bitcast<f32>(q_buf[e + 2u]),
            bitcast<f32>(q_buf[e + 3u]),
        );
    }
    let h = e >> 1u;
    return unpack_half4(vec2<u32>(q_buf[h], q_buf[h + 1u]), DTYPE);
}

fn store4(e: u32, v: vec4<f32>) {
    if DTYPE == DT_F32 {
        out_buf[e] = bitcast<u32>(v.x);
        out_buf[e + 1u] = bitcast<u32>(v.y);
        out_buf[e + 2u] = bitcast<u32>(v.z);
        out_buf[e + 3u] = bitcast<u32>(v.w);
        return;
    }
    let h = e >> 1u;
    let w = pack_half4(v, DTYPE);
    out_buf[h] = w.x;
    out_buf[h + 1u] = w.y;
}

fn cap_logit(s: f32) -> f32 {
    if p.softcap > 0.0 {
        // tanh saturates long before |x| = 15; clamping keeps exp-based tanh from inf / inf.
        return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0));
    }
    return s;
}

// ALiBi (BLOOM's `build_alibi_tensor`, `Attention::alibi`): the slope of query head h, whose
// logit for key j at query position pos gains slope * (j - pos) (BLOOM adds slope * j, the same
// softmax, since the difference is constant along a row; the distance keeps the term small).
// With n = p.alibi, heads below n get 2^(-8 (h + 1) / n), the others 2^(-4 (2 (h - n) + 1) / n).
// Off (p.alibi = 0) the slope is 0, so each kernel's bias term is one multiply-add that adds 0.
fn alibi_slope(h: u32) -> f32 {
    if p.alibi == 0u {
        return 0.0;
    }
    let n = f32(p.alibi);
    if h < p.alibi {
        return exp2(-8.0 * f32(h + 1u) / n);
    }
    return exp2(-4.0 * f32(2u * (h - p.alibi) + 1u) / n);
}

// The ALiBi slope of row r (r = t * group + i) of kv head kvh.
fn row_slope(r: u32, kvh: u32) -> f32 {
    return alibi_slope(kvh * p.group + r % p.group);
}

// First position of the attention chunk that holds position pos (floor, also for pos < 0).
fn chunk_start(pos: i32) -> i32 {
    let c = i32(p.attn_chunk);
    return pos - ((pos % c) + c) % c;
}

// Whether causal masking is a closed-form bound on the keys. Block ids widen it (a query sees
// the later keys of its own block), so with them it is applied per key, by `mask_logit`.
fn causal_bound() -> bool {
    return p.causal != 0u && !(MASKS && (p.masks & MASK_IDS) != 0u);
}

// Whether key j is visible to the query at position pos under the closed-form rules. Differences,
// not sums, so that no bound overflows i32 (the host keeps positions within 31 bits and clamps
// the window bounds).
fn visible(j: i32, pos: i32) -> bool {
    let d = pos - j;
    var ok = true;
    if causal_bound() {
        ok = d >= 0;
    }
    if p.win_left >= 0 {
        ok = ok && d <= p.win_left;
    }
    if p.win_right >= 0 {
        ok = ok && -d <= p.win_right;
    }
    if p.attn_chunk != 0u {
        ok = ok && chunk_start(j) == chunk_start(pos);
    }
    return ok;
}

// The keys visible to the query at position pos, as [x, y): the same rule as `visible`, as one
// interval (the prefill kernels mask with it), with bounds taken so that nothing overflows i32
// (see `key_range`).
fn visible_interval(pos: i32) -> vec2<i32> {
    return visible_interval_in(pos, p.kv_len);
}

// `visible_interval` for a sequence of kv_len keys (a paged sequence's own length).
fn visible_interval_in(pos: i32, kv_len: u32) -> vec2<i32> {
    var lo = 0;
    var hi = i32(kv_len);
    if causal_bound() {
        hi = min(hi, pos + 1);
    }
    if p.win_left >= 0 {
        lo = max(lo, pos - p.win_left);
    }
    if p.win_right >= 0 && p.win_right < hi - pos {
        hi = pos + p.win_right + 1;
    }
    if p.attn_chunk != 0u {
        let cs = chunk_start(pos);
        lo = max(lo, cs);
        if hi > cs && p.attn_chunk < u32(hi - cs) {
            hi = cs + i32(p.attn_chunk);
        }
    }
    return vec2<i32>(lo, hi);
}

// Keys within [lo, hi) that some row r0 ..= r_last of a workgroup can see (the causal, right and
// chunk upper bounds of the last row, the left and chunk lower bounds of the first), so that
// fully masked tiles are never loaded. Empty when x >= y.
// `q_offset` is the position of query 0 (p.q_offset, or a paged sequence's own).
fn key_range(lo: i32, hi: i32, r0: u32, r_last: u32, q_offset: i32) -> vec2<i32> {
    var kv = vec2<i32>(lo, hi);
    let first = q_offset + i32(r0 / p.group);
    let last = q_offset + i32(r_last / p.group);
    if causal_bound() {
        kv.y = min(kv.y, last + 1);
    }
    // Upper bounds as "bound < hi - last" first, so that last + bound + 1 cannot overflow.
    if p.win_right >= 0 && p.win_right < kv.y - last {
        kv.y = last + p.win_right + 1;
    }
    if p.win_left >= 0 {
        kv.x = max(kv.x, first - p.win_left);
    }
    if p.attn_chunk != 0u {
        // cs <= last < kv.y when the range is not already empty; the difference is taken in
        // u32 (WGSL integers wrap), where it is exact.
        let cs = chunk_start(last);
        if kv.y > cs && p.attn_chunk < u32(kv.y - cs) {
            kv.y = cs + i32(p.attn_chunk);
        }
        kv.x = max(kv.x, chunk_start(first));
    }
    return kv;
}

// A sequence's mask inputs (MASKS): the bit number of its mask's [0, 0] relative to word
// p.mask_off of aux, the aux index of its bias's [0, 0, 0] and of its first block id, its query
// count, key count and the position of query 0.
struct MaskSeq {
    bits: u32,
    bias: u32,
    ids: u32,
    q_len: u32,
    kv_len: u32,
    q_offset: i32,
}

// Batch row b's mask inputs in a contiguous call: each batched input steps by one row's share.
fn mask_seq(b: u32) -> MaskSeq {
    let qk = p.q_len * p.kv_len;
    let bits = select(0u, b * qk, (p.masks & MASK_BITS_BATCHED) != 0u);
    let per = select(1u, p.n_heads, (p.masks & MASK_BIAS_HEADS) != 0u) * qk;
    let bias = p.bias_off + select(0u, b * per, (p.masks & MASK_BIAS_BATCHED) != 0u);
    let ids = p.ids_off + select(0u, b * p.kv_len, (p.masks & MASK_IDS_BATCHED) != 0u);
    return MaskSeq(bits, bias, ids, p.q_len, p.kv_len, p.q_offset);
}

// Logit x of key j for the query at position pos of query head h, under the masks: NEG_BIG
// when the boolean mask hides the key, or when causal masking hides it (j > pos) and block ids
// do not give it back (key and query in the same block, id >= 0: transformers'
// `or_masks(causal, blockwise)` of Gemma 3, inside the window and chunk rules, which the caller
// applies); else x plus the bias. Without MASKS, x. A logit the bias takes to NEG_BIG or below
// counts as hidden too.
fn mask_logit(x: f32, j: i32, pos: i32, h: u32, ms: MaskSeq) -> f32 {
    if !MASKS {
        return x;
    }
    let jj = u32(j);
    let t = u32(pos - ms.q_offset);
    var ok = true;
    if (p.masks & MASK_BITS) != 0u {
        let bit = ms.bits + t * ms.kv_len + jj;
        ok = ((aux[p.mask_off + (bit >> 5u)] >> (bit & 31u)) & 1u) != 0u;
    }
    if (p.masks & MASK_IDS) != 0u && p.causal != 0u && j > pos {
        // pos < j < kv_len, so the query's id is in range; a query before the first key
        // (pos < 0) has no block.
        let kid = bitcast<i32>(aux[ms.ids + jj]);
        let qid = select(-1, bitcast<i32>(aux[ms.ids + u32(max(pos, 0))]), pos >= 0);
        ok = ok && kid >= 0 && kid == qid;
    }
    var y = x;
    if (p.masks & MASK_BIAS) != 0u {
        let hb = select(0u, h, (p.masks & MASK_BIAS_HEADS) != 0u);
        y += bitcast<f32>(aux[ms.bias + (hb * ms.q_len + t) * ms.kv_len + jj]);
    }
    return select(NEG_BIG, y, ok && y > NEG_BIG);
}

// Whether a logit from `mask_logit` is a visible key's (always, without MASKS).
fn shown(x: f32) -> bool {
    return !MASKS || x > NEG_BIG;
}

// Tiles the boolean mask hides (MASKS with mask bits; issue 23): before a K/V tile is staged,
// the workgroup decides whether the mask shows any key of the tile, inside the closed-form
// interval, to any query token of its rows, and skips the tile's loads and scoring when not.
// Only the mask bits can prove a tile hidden: a bias or block ids (which give back keys past the
// causal edge) never do. Without MASKS, or without mask bits, every tile is seen and none of
// this runs (the branches fold away).
fn mask_bits_on() -> bool {
    return MASKS && (p.masks & MASK_BITS) != 0u;
}

// Whether the boolean mask shows query t of ms some key of [a, b) (false when empty): the row's
// bits there, a word at a time.
fn mask_row_any(ms: MaskSeq, t: u32, a: i32, b: i32) -> bool {
    if b <= a {
        return false;
    }
    let s = ms.bits + t * ms.kv_len + u32(a);
    let e = s + u32(b - a);
    var hit = 0u;
    for (var w = s >> 5u; w <= (e - 1u) >> 5u; w++) {
        let w0 = w << 5u;
        let lo = max(s, w0) - w0;
        let hi = min(e - w0, 32u);
        hit |= aux[p.mask_off + w] & (0xffffffffu << lo) & (0xffffffffu >> (32u - hi));
    }
    return hit != 0u;
}

// This invocation's share (tokens t0 + i, t0 + i + step, ... <= t1) of the decision: whether
// the mask shows one of those queries a key of [j0, j0 + n) inside its closed-form interval.
fn mask_tile_share(ms: MaskSeq, t0: u32, t1: u32, i: u32, step: u32, j0: i32, n: u32) -> bool {
    var hit = false;
    for (var t = t0 + i; t <= t1; t += step) {
        let iv = visible_interval_in(ms.q_offset + i32(t), ms.kv_len);
        if mask_row_any(ms, t, max(j0, iv.x), min(j0 + i32(n), iv.y)) {
            hit = true;
        }
    }
    return hit;
}

// Whether the boolean mask shows key j to one of the queries t0 ..= t1 of ms (the decode
// kernels' per-key test: a lane's or a lane group's keys are its own, so no vote).
fn mask_key_seen(ms: MaskSeq, t0: u32, t1: u32, j: i32) -> bool {
    var seen = false;
    for (var t = t0; t <= t1; t++) {
        let bit = ms.bits + t * ms.kv_len + u32(j);
        if ((aux[p.mask_off + (bit >> 5u)] >> (bit & 31u)) & 1u) != 0u {
            seen = true;
        }
    }
    return seen;
}

// Vote slots for the query tokens t0 ..= t1 of a workgroup of `wg` invocations: a multiple of 4,
// at most wg (the invocations past the tokens vote no).
fn mask_voters(t0: u32, t1: u32, wg: u32) -> u32 {
    return min(wg, (t1 - t0 + 4u) & ~3u);
}

// Whether any of the first `voters` invocations has `hit`: the same value in every invocation, a
// uniform one (`workgroupUniformLoad`), so the tile loop may branch around its barriers. The
// votes go through the first vec4s of k_tile, free before a tile is staged (one component per
// invocation, no two writing one location). Every invocation calls it (it has barriers).
fn tile_seen(lid: u32, hit: bool, voters: u32) -> bool {
    if lid < voters {
        k_tile[lid >> 2u][lid & 3u] = select(0.0, 1.0, hit);
    }
    workgroupBarrier();
    if lid == 0u {
        var v = k_tile[0];
        for (var i = 1u; i < voters / 4u; i++) {
            v = max(v, k_tile[i]);
        }
        k_tile[0] = v;
    }
    return any(workgroupUniformLoad(&k_tile[0]) != vec4<f32>(0.0));
}

// Whether the workgroup (invocation lid of wg) stages and scores tile [j0, j0 + n) for the query
// tokens t0 ..= t1 of ms: always without mask bits, else `tile_seen` of the votes. Every
// invocation calls it.
fn mask_tile_seen(lid: u32, wg: u32, ms: MaskSeq, t0: u32, t1: u32, j0: i32, n: u32) -> bool {
    if !mask_bits_on() {
        return true;
    }
    return tile_seen(lid, mask_tile_share(ms, t0, t1, lid, wg, j0, n), mask_voters(t0, t1, wg));
}

// The work item of a contiguous split-KV workgroup (decode partial, keys and subgroup kernels,
// prefill partial and keys kernels): workgroup wg_id < split_items() takes (batch b, kv head kvh,
// row block blk, split), kv head fastest and split slowest, as `paged_item` orders its items:
// workgroups that run side by side then read the same key rows of neighbouring heads, not chunks
// of one head far apart (measured faster on CPU adapters, BENCHMARKS.md). The block's rows
// r0 ..= r_last (block_rows per block) see the keys kv of the split's chunk [lo, hi). Every
// partial's place follows from the item, not from wg_id.
struct SplitItem {
    split: u32,
    blk: u32,
    // b * n_kv_heads + kvh
    bh: u32,
    kvh: u32,
    b: u32,
    r0: u32,
    r_last: u32,
    lo: i32,
    hi: i32,
    kv: vec2<i32>,
}

fn split_items() -> u32 {
    return p.batch * p.n_kv_heads * p.row_blocks * p.n_splits;
}

fn split_item(wg_id: u32, block_rows: u32) -> SplitItem {
    let n_bh = p.batch * p.n_kv_heads;
    let split = wg_id / (n_bh * p.row_blocks);
    let rest = wg_id % (n_bh * p.row_blocks);
    let blk = rest / n_bh;
    let bh = rest % n_bh;
    let r0 = blk * block_rows;
    let r_last = min(r0 + block_rows, p.rows) - 1u;
    let lo = i32(split * p.chunk);
    let hi = i32(min(p.kv_len, (split + 1u) * p.chunk));
    let kv = key_range(lo, hi, r0, r_last, p.q_offset);
    return SplitItem(split, blk, bh, bh % p.n_kv_heads, bh / p.n_kv_heads, r0, r_last, lo, hi, kv);
}

// Element offset of query row r (clamped to the last row) of batch b, kv head kvh.
fn q_row(b: u32, r: u32, kvh: u32) -> u32 {
    let rc = min(r, p.rows - 1u);
    let h = kvh * p.group + rc % p.group;
    return p.q_off + b * p.q_sb + (rc / p.group) * p.q_st + h * p.q_sh;
}

// Query row r (r = t * group + i; clamped to the last row, so spare invocations read valid
// memory) of kv head kvh, pre-multiplied by the scale.
fn load_q(q: ptr<function, array<vec4<f32>, MAX_HD4>>, b: u32, r: u32, kvh: u32) {
    let q_base = q_row(b, r, kvh);
    for (var d = 0u; d < HD4; d++) {
        (*q)[d] = load4(0u, q_base + 4u * d) * p.scale;
    }
}

// Keys j0 .. j0 + n of one kv head into k_tile / v_tile, spread over the workgroup's invocations.
fn stage_tile(lid: u32, j0: i32, n: u32, k_base: u32, v_base: u32) {
    for (var i = lid; i < n * HD4; i += WG) {
        let j = u32(j0) + i / HD4;
        let d4 = 4u * (i % HD4);
        k_tile[i] = load4(1u, k_base + j * p.k_st + d4);
        v_tile[i] = load4(2u, v_base + j * p.v_st + d4);
    }
}

// One online-softmax step of one query row over the staged tile (keys j0 .. j0 + n), shared by
// `attn_prefill` and `attn_decode_partial`: this invocation takes keys lane, lane + lanes, ... of
// the tile (prefill: lane 0 of 1, every key). All scores of the tile first, so that the running
// max m moves, and the accumulator is rescaled, at most once per tile; then l and acc gather
// exp(s - m) and exp(s - m) * v. Masked keys add nothing. `slope`: the row's ALiBi slope; h its
// query head and ms its sequence's mask inputs (`mask_logit`).
fn softmax_tile(
    q: ptr<function, array<vec4<f32>, MAX_HD4>>,
    acc: ptr<function, array<vec4<f32>, MAX_HD4>>,
    m: ptr<function, f32>,
    l: ptr<function, f32>,
    j0: i32,
    n: u32,
    pos: i32,
    lane: u32,
    lanes: u32,
    slope: f32,
    h: u32,
    ms: MaskSeq,
) {
    var s: array<f32, MAX_BK>;
    var m_new = *m;
    for (var jj = lane; jj < n; jj += lanes) {
        var x = NEG_BIG;
        if visible(j0 + i32(jj), pos) {
            var dot_acc = vec4<f32>(0.0);
            let kb = jj * HD4;
            for (var d = 0u; d < HD4; d++) {
                dot_acc += (*q)[d] * k_tile[kb + d];
            }
            let j = j0 + i32(jj);
            x = cap_logit(dot_acc.x + dot_acc.y + dot_acc.z + dot_acc.w) + slope * f32(j - pos);
            x = mask_logit(x, j, pos, h, ms);
            m_new = max(m_new, x);
        }
        s[jj] = x;
    }
    if m_new > *m {
        let alpha = exp(*m - m_new);
        *l *= alpha;
        for (var d = 0u; d < HD4; d++) {
            (*acc)[d] *= alpha;
        }
        *m = m_new;
    }
    for (var jj = lane; jj < n; jj += lanes) {
        if visible(j0 + i32(jj), pos) && shown(s[jj]) {
            let pj = exp(s[jj] - *m);
            *l += pj;
            let vb = jj * HD4;
            for (var d = 0u; d < HD4; d++) {
                (*acc)[d] += pj * v_tile[vb + d];
            }
        }
    }
}

// The factor that turns the accumulator of query head h, with running max m and denominator l,
// into the output: the sink (if any) joins the denominator. A row with no visible key (l == 0,
// acc == 0) gets 0, so it stores 0 instead of 0 / 0.
fn out_scale(m: f32, l: f32, h: u32) -> f32 {
    var a = 1.0;
    var den = l;
    if p.has_sinks != 0u {
        let sink = bitcast<f32>(aux[p.s_off + h]);
        let m2 = max(m, sink);
        a = exp(m - m2);
        den = l * a + exp(sink - m2);
    }
    if den > 0.0 {
        return a / den;
    }
    return 0.0;
}

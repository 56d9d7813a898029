// GQA attention, FlashAttention-2 prefill with register tiling over query rows.
//
// out[b, t, h] = softmax_j(softcap(scale * q[b, t, h] . k[b, j, h / g]) + mask) . v[b, :, h / g]
//
// Follows FlashAttention-2 (Dao 2023, Algorithm 1): a workgroup owns a block of query rows of one
// (batch, kv head); K/V tiles of `bk` keys are staged in workgroup memory once and read by every
// row of the block; per tile, the scores of all keys come first (S = Q K^T for the tile), then
// one running-max update and one rescale of the accumulator, then P V; the output is divided by
// the softmax denominator once, at the end. No score matrix exists outside registers.
// Register tiling, as in the matmul kernels FlashAttention-2 builds on (each thread owns a block
// of the output, CUTLASS / llm.c's matmul): each invocation owns PR query rows, so every K and
// V element it loads from workgroup memory feeds PR dot products and PR accumulators instead of
// one. Rows are numbered r = t * g + i (token-major, then the g query heads of the group), so a
// K/V tile serves all query heads of the group; invocation `lid` owns rows r0 + lid * PR + 0..PR
// (neighbouring rows: the same token's heads when g >= PR, which see the same keys). Scores, the
// running max m and the denominator l of the PR rows live in the components of a vec4, so the
// softmax bookkeeping is vector arithmetic whatever PR is; the per-row loops over PR have a
// constant trip count and unroll.
// Masking: each row's visible keys are one interval [lo, hi) (causal, two-sided window and
// attention chunk all cut intervals), computed once; the key range of the whole workgroup is cut
// to the union of its rows' intervals (`key_range`), so fully masked tiles are never loaded, and
// a key no row of an invocation sees skips its dot products. A row with no visible key stores 0.
//
// The storage dtype (f32, f16, bf16) is converted to f32 when staged; `ht` is the arithmetic type
// of the products (q, the K/V tiles, q.k and p.v): f32 in `attention_prefill.wgsl`'s own module,
// f16 in the opt-in `SHADER_F16` module (`ops::attention::ATTENTION_PREFILL_F16`, which prepends
// `enable f16; alias ht = f16;`), where each q.k is a 4-term f16 dot and each p.v an f16 product
// as FlashAttention-2 feeds half inputs to its matmuls, while scores, softmax statistics and the
// output accumulator stay f32 (FlashAttention-2 accumulates in f32 too).
//
// Entry points:
//   attn_prefill          writes the output
//   attn_prefill_partial  the same over one chunk of keys (split over kv_len), writing (m, l, acc)
//                         partials (attention_split.wgsl), for CPU adapters whose loop cap is
//                         below kv_len (`ops::attention::loop_cap_keys`)
//   attn_prefill_merge    combines the partials in a fixed order (bitwise repeatable)
//
// Override constants (set by `ops::attention::Variant`):
//   DTYPE    storage dtype of q, k, v and out (0 f32, 1 f16, 2 bf16)
//   WG       invocations per workgroup (PR rows each; the merge: one per 4 output elements)
//   PR       query rows per invocation (1 ..= 4)
//   TILE_V4  vec4 capacity of each of the K and V tiles (bk * head_dim / 4 <= TILE_V4)
//   HD4      head_dim / 4 (1 ..= 64)

// Overrides, Params, input bindings and helpers: attention_common.wgsl; out_buf, the partials'
// bindings, store and merge: attention_split.wgsl.

override PR: u32 = 4u;
const MAX_PR: u32 = 4u;
// MAX_Q, the vec4s of q (and of acc) one invocation holds (MAX_PR x the head_dim class / 4), is
// set by the module: one module per head_dim class (`ops::attention::prefill_shader`), since
// lavapipe's compile time grows with these private arrays.

var<workgroup> kh_tile: array<vec4<ht>, TILE_V4>;
var<workgroup> vh_tile: array<vec4<ht>, TILE_V4>;

// Keys j0 .. j0 + n of one kv head into kh_tile / vh_tile, spread over the workgroup.
fn stage_tile_h(lid: u32, j0: i32, n: u32, k_base: u32, v_base: u32) {
    for (var i = lid; i < n * HD4; i += WG) {
        let j = u32(j0) + i / HD4;
        let d4 = 4u * (i % HD4);
        kh_tile[i] = vec4<ht>(load4(1u, k_base + j * p.k_st + d4));
        vh_tile[i] = vec4<ht>(load4(2u, v_base + j * p.v_st + d4));
    }
}

// Row r of the block clamped to the last row (spare rows compute on valid memory and store
// nothing): (token, query head).
fn row_th(r: u32, kvh: u32) -> vec2<u32> {
    let rc = min(r, p.rows - 1u);
    return vec2<u32>(rc / p.group, kvh * p.group + rc % p.group);
}

// The keys visible to the query at position pos, as [x, y): the same rule as `visible`, as one
// interval, with bounds taken so that nothing overflows i32 (see `key_range`).
fn visible_interval(pos: i32) -> vec2<i32> {
    var lo = 0;
    var hi = i32(p.kv_len);
    if p.causal != 0u {
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

// The per-invocation state of PR rows: pre-scaled q and the f32 accumulators, row i's element
// vec4 d at [i * HD4 + d]; per-row scalars in vec4 components.
struct Rows {
    lo: vec4<i32>,
    hi: vec4<i32>,
    m: vec4<f32>,
    l: vec4<f32>,
}

// One FlashAttention-2 step of PR rows over the staged tile (keys j0 .. j0 + n).
fn tile_step(
    q: ptr<function, array<vec4<ht>, MAX_Q>>,
    acc: ptr<function, array<vec4<f32>, MAX_Q>>,
    st: ptr<function, Rows>,
    j0: i32,
    n: u32,
) {
    var s: array<vec4<f32>, MAX_BK>;
    var m_new = (*st).m;
    for (var jj = 0u; jj < n; jj++) {
        let j = vec4<i32>(j0 + i32(jj));
        let vis = (j >= (*st).lo) & (j < (*st).hi);
        var x = vec4<f32>(NEG_BIG);
        if any(vis) {
            var dots = vec4<f32>(0.0);
            let kb = jj * HD4;
            for (var d = 0u; d < HD4; d++) {
                let kd = kh_tile[kb + d];
                for (var i = 0u; i < PR; i++) {
                    dots[i] += f32(dot((*q)[i * HD4 + d], kd));
                }
            }
            if p.softcap > 0.0 {
                dots = p.softcap * tanh(clamp(dots / p.softcap, vec4<f32>(-15.0), vec4<f32>(15.0)));
            }
            x = select(x, dots, vis);
            m_new = max(m_new, x);
        }
        s[jj] = x;
    }
    if any(m_new > (*st).m) {
        let alpha = exp((*st).m - m_new);
        (*st).l *= alpha;
        for (var d = 0u; d < HD4; d++) {
            for (var i = 0u; i < PR; i++) {
                (*acc)[i * HD4 + d] *= alpha[i];
            }
        }
        (*st).m = m_new;
    }
    for (var jj = 0u; jj < n; jj++) {
        let j = vec4<i32>(j0 + i32(jj));
        let vis = (j >= (*st).lo) & (j < (*st).hi);
        if any(vis) {
            let pj = select(vec4<f32>(0.0), exp(s[jj] - (*st).m), vis);
            (*st).l += pj;
            let ph = vec4<ht>(pj);
            let vb = jj * HD4;
            for (var d = 0u; d < HD4; d++) {
                let vd = vh_tile[vb + d];
                for (var i = 0u; i < PR; i++) {
                    (*acc)[i * HD4 + d] += vec4<f32>(ph[i] * vd);
                }
            }
        }
    }
}

// Block `blk` of rows of (b, kvh) over keys [lo_key, hi_key): q loaded, tiles streamed, state
// left in q / acc / st for the caller to store. Returns the block's first row.
fn run_block(
    q: ptr<function, array<vec4<ht>, MAX_Q>>,
    acc: ptr<function, array<vec4<f32>, MAX_Q>>,
    st: ptr<function, Rows>,
    lid: u32,
    b: u32,
    kvh: u32,
    blk: u32,
    lo_key: i32,
    hi_key: i32,
) -> u32 {
    let r0 = blk * WG * PR;
    let r_last = min(r0 + WG * PR, p.rows) - 1u;
    let kv = key_range(lo_key, hi_key, r0, r_last, p.q_offset);
    // Unused components (PR < 4) see nothing.
    (*st).lo = vec4<i32>(1);
    (*st).hi = vec4<i32>(0);
    (*st).m = vec4<f32>(NEG_BIG);
    (*st).l = vec4<f32>(0.0);
    for (var i = 0u; i < PR; i++) {
        let r = r0 + lid * PR + i;
        let th = row_th(r, kvh);
        let q_base = p.q_off + b * p.q_sb + th.x * p.q_st + th.y * p.q_sh;
        for (var d = 0u; d < HD4; d++) {
            (*q)[i * HD4 + d] = vec4<ht>(load4(0u, q_base + 4u * d) * p.scale);
            (*acc)[i * HD4 + d] = vec4<f32>(0.0);
        }
        let iv = visible_interval(p.q_offset + i32(th.x));
        (*st).lo[i] = iv.x;
        (*st).hi[i] = iv.y;
    }
    let k_base = p.k_off + b * p.k_sb + kvh * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + kvh * p.v_sh;
    for (var j0 = kv.x; j0 < kv.y; j0 += i32(p.bk)) {
        let n = min(p.bk, u32(kv.y - j0));
        stage_tile_h(lid, j0, n, k_base, v_base);
        workgroupBarrier();
        tile_step(q, acc, st, j0, n);
        workgroupBarrier();
    }
    return r0;
}

@compute @workgroup_size(WG)
fn attn_prefill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= p.batch * p.n_kv_heads * p.row_blocks {
        return;
    }
    let blk = wg_id % p.row_blocks;
    let bh = wg_id / p.row_blocks;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    var q: array<vec4<ht>, MAX_Q>;
    var acc: array<vec4<f32>, MAX_Q>;
    var st: Rows;
    let r0 = run_block(&q, &acc, &st, lid, b, kvh, blk, 0, i32(p.kv_len));
    for (var i = 0u; i < PR; i++) {
        let r = r0 + lid * PR + i;
        if r < p.rows {
            let th = row_th(r, kvh);
            let inv = out_scale(st.m[i], st.l[i], th.y);
            let o_base = p.o_off + b * p.o_sb + th.x * p.o_st + th.y * p.o_sh;
            for (var d = 0u; d < HD4; d++) {
                store4(o_base + 4u * d, acc[i * HD4 + d] * inv);
            }
        }
    }
}

@compute @workgroup_size(WG)
fn attn_prefill_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= p.batch * p.n_kv_heads * p.row_blocks * p.n_splits {
        return;
    }
    let split = wg_id % p.n_splits;
    let rest = wg_id / p.n_splits;
    let blk = rest % p.row_blocks;
    let bh = rest / p.row_blocks;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    let split_end = min(p.kv_len, (split + 1u) * p.chunk);
    var q: array<vec4<ht>, MAX_Q>;
    var acc: array<vec4<f32>, MAX_Q>;
    var st: Rows;
    let r0 = run_block(&q, &acc, &st, lid, b, kvh, blk, i32(split * p.chunk), i32(split_end));
    // Partials are ordered (row, split); one lane per row.
    let stride = 4u * HD4 + 2u;
    for (var i = 0u; i < PR; i++) {
        let r = r0 + lid * PR + i;
        if r < p.rows {
            let e = ((bh * p.rows + r) * p.n_splits + split) * stride;
            part_out[e] = st.m[i];
            part_out[e + 1u] = st.l[i];
            for (var d = 0u; d < HD4; d++) {
                let a = acc[i * HD4 + d];
                part_out[e + 2u + 4u * d] = a.x;
                part_out[e + 3u + 4u * d] = a.y;
                part_out[e + 4u + 4u * d] = a.z;
                part_out[e + 5u + 4u * d] = a.w;
            }
        }
    }
}

@compute @workgroup_size(WG)
fn attn_prefill_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_workgroup(wid, nwg) * WG + lid;
    let total_rows = p.batch * p.n_kv_heads * p.rows;
    if idx >= total_rows * HD4 {
        return;
    }
    let d = idx % HD4;
    let row = idx / HD4;
    let r = row % p.rows;
    let bh = row / p.rows;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    let th = row_th(r, kvh);
    let base = row * p.n_splits * (4u * HD4 + 2u);
    let o_base = p.o_off + b * p.o_sb + th.x * p.o_st + th.y * p.o_sh;
    store4(o_base + 4u * d, merge_partials(base, p.n_splits, d, th.y));
}

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
// a key no row of an invocation sees skips its dot products. With MASKS, a tile the boolean
// mask hides from every row of the block is skipped too (`mask_tile_seen_h`). A row with no
// visible key stores 0.
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
// Loops (modules are created without naga's loop counters, src/pipeline.rs): key loops step by p.bk
// (>= 1, as in attention_decode.wgsl) or by PK_BK (64); every other loop by 1 or by the workgroup
// size to a constant or a host-checked bound.

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

// `mask_tile_seen` (attention_common.wgsl) with the votes in kh_tile, the tiles this kernel
// stages (k_tile is not part of its workgroup memory). Every invocation calls it.
fn mask_tile_seen_h(lid: u32, ms: MaskSeq, t0: u32, t1: u32, j0: i32, n: u32) -> bool {
    if !mask_bits_on() {
        return true;
    }
    let voters = mask_voters(t0, t1, WG);
    if lid < voters {
        kh_tile[lid >> 2u][lid & 3u] = select(ht(0.0), ht(1.0), mask_tile_share(ms, t0, t1, lid, WG, j0, n));
    }
    workgroupBarrier();
    if lid == 0u {
        var v = kh_tile[0];
        for (var i = 1u; i < voters / 4u; i++) {
            v = max(v, kh_tile[i]);
        }
        kh_tile[0] = v;
    }
    return any(workgroupUniformLoad(&kh_tile[0]) != vec4<ht>(ht(0.0)));
}

// Row r of the block clamped to the last row (spare rows compute on valid memory and store
// nothing): (token, query head).
fn row_th(r: u32, kvh: u32) -> vec2<u32> {
    let rc = min(r, p.rows - 1u);
    return vec2<u32>(rc / p.group, kvh * p.group + rc % p.group);
}

// The per-invocation state of PR rows: pre-scaled q and the f32 accumulators, row i's element
// vec4 d at [i * HD4 + d]; per-row scalars in vec4 components.
struct Rows {
    lo: vec4<i32>,
    hi: vec4<i32>,
    m: vec4<f32>,
    l: vec4<f32>,
    // query positions and ALiBi slopes
    pos: vec4<i32>,
    slope: vec4<f32>,
    // query heads and the batch row's mask inputs (MASKS)
    head: vec4<u32>,
    ms: MaskSeq,
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
            dots += (*st).slope * vec4<f32>(j - (*st).pos);
            if MASKS {
                for (var i = 0u; i < PR; i++) {
                    dots[i] = mask_logit(dots[i], j.x, (*st).pos[i], (*st).head[i], (*st).ms);
                }
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
        let vis = (j >= (*st).lo) & (j < (*st).hi) & vec4<bool>(shown(s[jj].x), shown(s[jj].y), shown(s[jj].z), shown(s[jj].w));
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
    (*st).pos = vec4<i32>(0);
    (*st).slope = vec4<f32>(0.0);
    (*st).head = vec4<u32>(0u);
    (*st).ms = mask_seq(b);
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
        (*st).pos[i] = p.q_offset + i32(th.x);
        (*st).slope[i] = alibi_slope(th.y);
        (*st).head[i] = th.y;
    }
    let k_base = p.k_off + b * p.k_sb + kvh * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + kvh * p.v_sh;
    for (var j0 = kv.x; j0 < kv.y; j0 += i32(p.bk)) {
        let n = min(p.bk, u32(kv.y - j0));
        // MASKS: a tile the boolean mask hides from every row of the block is skipped.
        if mask_tile_seen_h(lid, (*st).ms, r0 / p.group, r_last / p.group, j0, n) {
            stage_tile_h(lid, j0, n, k_base, v_base);
            workgroupBarrier();
            tile_step(q, acc, st, j0, n);
            workgroupBarrier();
        }
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
    if wg_id >= split_items() {
        return;
    }
    // run_block finds the block's rows and their visible keys again (the non-split entry point
    // shares it); w's chunk bounds are what it needs.
    let w = split_item(wg_id, WG * PR);
    var q: array<vec4<ht>, MAX_Q>;
    var acc: array<vec4<f32>, MAX_Q>;
    var st: Rows;
    let r0 = run_block(&q, &acc, &st, lid, w.b, w.kvh, w.blk, w.lo, w.hi);
    // Partials are ordered (row, split); one lane per row.
    let stride = part_units();
    for (var i = 0u; i < PR; i++) {
        let r = r0 + lid * PR + i;
        if r < p.rows {
            let e = ((w.bh * p.rows + r) * p.n_splits + w.split) * stride;
            part_out[e] = vec4<f32>(st.m[i], st.l[i], 0.0, 0.0);
            for (var d = 0u; d < HD4; d++) {
                part_out[e + 1u + d] = acc[i * HD4 + d];
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
    let base = row * p.n_splits * part_units();
    let o_base = p.o_off + b * p.o_sb + th.x * p.o_st + th.y * p.o_sh;
    store4(o_base + 4u * d, merge_partials(base, p.n_splits, d, th.y));
}

// ---------------------------------------------------------------------------------------------
// attn_prefill_keys: the prefill for CPU adapters (`Kind::PrefillKeys`), shaped like the fastest
// register-tiled matmul on llvmpipe. llvmpipe runs a workgroup on one thread with its invocations
// as the lanes of 8-wide SIMD vectors, and issues every load from storage or workgroup memory as
// one scalar access per lane (also for a uniform address), while a 16-byte load costs about what
// a 4-byte one does; it keeps a private array in registers only when every index into it is a
// constant, and by measurement it does not unroll these loops, not even ones with constant trip
// counts of 4 or 8 (a loop-indexed private array is a memory access per lane; the same kernel
// written with such arrays ran at half this one's speed). So the count of load instructions per multiply-add is what costs, and all per-lane
// state here is named vectors and matrices indexed by constants, with the loops left over the
// head (d) and over the keys of a tile.
//
// One workgroup of PK_LANES (8) invocations owns PK_ROWS (8) query rows of one (batch, kv head,
// split), in 2 groups of 4 rows (the components of a vec4, the columns of a mat4x4), and walks
// the keys in tiles of PK_BK (64), one FlashAttention-2 step per tile (Dao 2023, Algorithm 1):
// - S = Q K^T, lanes own keys: lane `l` scores keys 8l .. 8l + 8 of the tile for all 8 rows.
//   Per 4 head elements it makes 8 K loads (16 bytes each, its own keys) and 8 q loads (the
//   rows, staged once per workgroup in workgroup memory, pre-scaled and converted to f32) for
//   4 4x4 matrix products, 256 multiply-adds.
// - Softmax in the log2 domain (logits times log2(e), exp2): each lane's row maxima go through
//   workgroup memory, every lane reduces the 8 to the tile maxima, rescales its accumulators
//   only if some maximum moved, and writes exp2(s - m) of its keys to workgroup memory (P^T,
//   a vec4 of 4 rows per key and group).
// - O += P V, lanes own head slices: lane `l` accumulates head elements 4(l + 8c) .. + 4 (slot c,
//   up to 8 slots at head_dim 256) of all 8 rows; per key one 16-byte V load per slot and 2
//   loads of P for 8 multiply-adds of 4 rows each per slot.
// Why 8 rows, not 16: llvmpipe's LLVM compile time follows the written-out code and the live
// values; 16 rows (4 groups: 128 scores and up to 512 accumulator values per lane) ran faster
// warm but compiled past issue 20's first-use budget (BENCHMARKS.md, its cold-compile section).
// Three barriers per tile (one thread per workgroup on llvmpipe: they are cheap). Masks as in
// `attn_prefill`: each row's visible keys are one interval, cut to the workgroup's key range, and
// tiles outside the union of the rows' intervals are never visited (with MASKS, nor tiles the
// boolean mask hides from all 8 rows: `pk_seen`). K and V are read through
// `vec4<u32>` views of their windows (rows 16-byte aligned, `ops::attention::kv_rows_aligned`).
// With p.n_splits > 1 each workgroup covers one chunk of the keys and writes (m, l, acc)
// partials that `attn_prefill_merge` combines, as `attn_prefill_partial` does; one pipeline
// serves both, so tests compile one specialisation per shape.

@group(0) @binding(8) var<storage, read> k4: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read> v4: array<vec4<u32>>;

const PK_ROWS: u32 = 8u;
const PK_LANES: u32 = 8u;
const PK_BK: u32 = 64u;
const LOG2E: f32 = 1.4426950408889634;
const LN2: f32 = 0.6931471805599453;

// 8 rows x one head slot (4 elements): group g's rows are the columns of [g].
alias Rows8 = array<mat4x4<f32>, 2>;

// The workgroup's q rows (8 x head_dim / 4 vec4s; MAX_Q is 4 rows of the module's head_dim
// class), each lane's row maxima per group (lane l, group g at l * 2 + g), and P^T of the tile
// (key k, group g at k * 2 + g).
var<workgroup> pk_q: array<vec4<f32>, 2 * MAX_Q>;
var<workgroup> pk_m: array<vec4<f32>, 16>;
var<workgroup> pk_p: array<vec4<f32>, 128>;

// 4 elements at element e (a multiple of 4) of K or V, through the 16-byte views.
fn pk_k(e: u32) -> vec4<f32> {
    if KV_FMT >= KV_Q8_0 {
        return kv_load4(1u, e);
    }
    if DTYPE == DT_F32 {
        return bitcast<vec4<f32>>(k4[e >> 2u]);
    }
    let u = k4[e >> 3u];
    return unpack_half4(select(u.xy, u.zw, (e & 4u) != 0u), DTYPE);
}

fn pk_v(e: u32) -> vec4<f32> {
    if KV_FMT >= KV_Q8_0 {
        return kv_load4(2u, e);
    }
    if DTYPE == DT_F32 {
        return bitcast<vec4<f32>>(v4[e >> 2u]);
    }
    let u = v4[e >> 3u];
    return unpack_half4(select(u.xy, u.zw, (e & 4u) != 0u), DTYPE);
}

// Rows 4g .. 4g + 4 of the staged q at head vec4 d, as the columns of a matrix.
fn pk_qg(g: u32, d: u32) -> mat4x4<f32> {
    let r = 4u * g * HD4 + d;
    return mat4x4<f32>(pk_q[r], pk_q[r + HD4], pk_q[r + 2u * HD4], pk_q[r + 3u * HD4]);
}

// Keys at row starts e0 .. e3 (elements) at head vec4 d, as the columns of a matrix.
fn pk_kq(e: vec4<u32>, d: u32) -> mat4x4<f32> {
    return mat4x4<f32>(pk_k(e.x + 4u * d), pk_k(e.y + 4u * d), pk_k(e.z + 4u * d), pk_k(e.w + 4u * d));
}
// Scores (column k: key j + k, components: the 4 rows of a group) to log2-domain logits: the
// soft cap and ALiBi (`pk_scores`), then the rows' key intervals (`pk_select`). With MASKS the
// masks come between the two, for all of a step's logits in one loop (`pk_mask_step`).
fn pk_logits(s: mat4x4<f32>, j: i32, rows: PkRows) -> mat4x4<f32> {
    return pk_select(pk_scores(s, j, rows), j, rows);
}

fn pk_scores(s: mat4x4<f32>, j: i32, rows: PkRows) -> mat4x4<f32> {
    var x = s;
    if p.softcap > 0.0 {
        let c = vec4<f32>(p.softcap);
        let lim = vec4<f32>(15.0);
        x = mat4x4<f32>(
            c * tanh(clamp(s[0] / c, -lim, lim)),
            c * tanh(clamp(s[1] / c, -lim, lim)),
            c * tanh(clamp(s[2] / c, -lim, lim)),
            c * tanh(clamp(s[3] / c, -lim, lim)),
        );
    }
    let dist = vec4<f32>(vec4<i32>(j) - rows.pos);
    return mat4x4<f32>(
        x[0] + rows.slope * dist,
        x[1] + rows.slope * (dist + 1.0),
        x[2] + rows.slope * (dist + 2.0),
        x[3] + rows.slope * (dist + 3.0),
    );
}

fn pk_select(x: mat4x4<f32>, j: i32, rows: PkRows) -> mat4x4<f32> {
    let lo = rows.lo;
    let hi = rows.hi;
    let neg = vec4<f32>(NEG_BIG);
    if MASKS {
        return mat4x4<f32>(
            select(neg, x[0] * LOG2E, pk_in(j, lo, hi) & pk_shown(x[0])),
            select(neg, x[1] * LOG2E, pk_in(j + 1, lo, hi) & pk_shown(x[1])),
            select(neg, x[2] * LOG2E, pk_in(j + 2, lo, hi) & pk_shown(x[2])),
            select(neg, x[3] * LOG2E, pk_in(j + 3, lo, hi) & pk_shown(x[3])),
        );
    }
    return mat4x4<f32>(
        select(neg, x[0] * LOG2E, (vec4<i32>(j) >= lo) & (vec4<i32>(j) < hi)),
        select(neg, x[1] * LOG2E, (vec4<i32>(j + 1) >= lo) & (vec4<i32>(j + 1) < hi)),
        select(neg, x[2] * LOG2E, (vec4<i32>(j + 2) >= lo) & (vec4<i32>(j + 2) < hi)),
        select(neg, x[3] * LOG2E, (vec4<i32>(j + 3) >= lo) & (vec4<i32>(j + 3) < hi)),
    );
}

// MASKS: `mask_logit` over a step's 64 logits (4 matrices: group g's keys jl .. jl + 4 in
// s[2g], jl + 4 .. jl + 8 in s[2g + 1]), one per iteration, so the masked pipeline holds one
// copy of it, not 64 written out (its compile stays near the unmasked one's; the loop's
// dynamic indices put s in memory, on the masked path only). A key past the range is clamped
// into it (the interval test hides it). Bounded: 64 iterations.
fn pk_mask_step(s: ptr<function, array<mat4x4<f32>, 4>>, jl: i32, rows: ptr<function, array<PkRows, 2>>) {
    let jmax = i32(p.kv_len) - 1;
    for (var e = 0u; e < 64u; e++) {
        let t = e >> 4u;
        let c = (e >> 2u) & 3u;
        let r = e & 3u;
        let g = t >> 1u;
        let j = clamp(jl + 4 * i32(t & 1u) + i32(c), 0, jmax);
        (*s)[t][c][r] = mask_logit((*s)[t][c][r], j, (*rows)[g].pos[r], (*rows)[g].head[r], (*rows)[g].ms);
    }
}
// Whether key j lies in each of 4 rows' intervals [lo, hi) (the masked path's form of the test
// above).
fn pk_in(j: i32, lo: vec4<i32>, hi: vec4<i32>) -> vec4<bool> {
    return (vec4<i32>(j) >= lo) & (vec4<i32>(j) < hi);
}

fn pk_shown(x: vec4<f32>) -> vec4<bool> {
    return vec4<bool>(shown(x.x), shown(x.y), shown(x.z), shown(x.w));
}

fn pk_colmax(s: mat4x4<f32>) -> vec4<f32> {
    return max(max(s[0], s[1]), max(s[2], s[3]));
}

// exp2(s - m), 0 for masked logits (also when the row has seen no key yet, m = NEG_BIG).
fn pk_exp(s: vec4<f32>, m: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(0.0), exp2(s - m), s > vec4<f32>(NEG_BIG));
}

// P^T of 4 keys from key k of the tile for group g.
fn pk_put(k: u32, g: u32, s: mat4x4<f32>, m: vec4<f32>) {
    pk_p[k * 2u + g] = pk_exp(s[0], m);
    pk_p[(k + 1u) * 2u + g] = pk_exp(s[1], m);
    pk_p[(k + 2u) * 2u + g] = pk_exp(s[2], m);
    pk_p[(k + 3u) * 2u + g] = pk_exp(s[3], m);
}

fn pk_pv4(a: mat4x4<f32>, v: vec4<f32>, pr: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(a[0] + v * pr.x, a[1] + v * pr.y, a[2] + v * pr.z, a[3] + v * pr.w);
}

// One slot of 8 rows += p * v (p0, p1: the probabilities of the 2 groups for this key).
fn pk_pv(a: Rows8, v: vec4<f32>, p0: vec4<f32>, p1: vec4<f32>) -> Rows8 {
    return Rows8(pk_pv4(a[0], v, p0), pk_pv4(a[1], v, p1));
}

fn pk_scale4(a: mat4x4<f32>, f: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(a[0] * f.x, a[1] * f.y, a[2] * f.z, a[3] * f.w);
}

fn pk_scale(a: Rows8, f0: vec4<f32>, f1: vec4<f32>) -> Rows8 {
    return Rows8(pk_scale4(a[0], f0), pk_scale4(a[1], f1));
}
// Where a workgroup's results go: the output, or (split over the keys) its partials.
struct PkDest {
    b: u32,
    kvh: u32,
    bh: u32,
    r0: u32,
    split: u32,
}

// Row r0 + r's 4 elements at head vec4 d4, already normalised (output) or not (partial).
fn pk_store(t: PkDest, r: u32, d4: u32, a: vec4<f32>) {
    let row = t.r0 + r;
    if row >= p.rows {
        return;
    }
    if p.n_splits > 1u {
        part_out[((t.bh * p.rows + row) * p.n_splits + t.split) * part_units() + 1u + d4] = a;
        return;
    }
    let th = row_th(row, t.kvh);
    store4(p.o_off + t.b * p.o_sb + th.x * p.o_st + th.y * p.o_sh + 4u * d4, a);
}

// The factors that turn the accumulators of group g's rows into their output (1 for partials),
// and, for partials, (m, l) of each row (lane 0 writes them).
fn pk_finish(t: PkDest, g: u32, m: vec4<f32>, l: vec4<f32>, lane: u32) -> vec4<f32> {
    var f = vec4<f32>(1.0);
    for (var i = 0u; i < 4u; i++) {
        let row = t.r0 + 4u * g + i;
        if p.n_splits > 1u {
            if lane == 0u && row < p.rows {
                let e = ((t.bh * p.rows + row) * p.n_splits + t.split) * part_units();
                part_out[e] = vec4<f32>(m[i] * LN2, l[i], 0.0, 0.0);
            }
        } else {
            f[i] = out_scale(m[i] * LN2, l[i], row_th(row, t.kvh).y);
        }
    }
    return f;
}

// Slot d4 (this lane's head vec4, if within the head) of all 8 rows.
fn pk_store_slot(t: PkDest, d4: u32, a: Rows8, f0: vec4<f32>, f1: vec4<f32>) {
    if d4 >= HD4 {
        return;
    }
    pk_store(t, 0u, d4, a[0][0] * f0.x);
    pk_store(t, 1u, d4, a[0][1] * f0.y);
    pk_store(t, 2u, d4, a[0][2] * f0.z);
    pk_store(t, 3u, d4, a[0][3] * f0.w);
    pk_store(t, 4u, d4, a[1][0] * f1.x);
    pk_store(t, 5u, d4, a[1][1] * f1.y);
    pk_store(t, 6u, d4, a[1][2] * f1.z);
    pk_store(t, 7u, d4, a[1][3] * f1.w);
}
// `mask_tile_seen` (attention_common.wgsl) for the 8 lanes, the votes in pk_m (free before a
// tile's scores). Every lane calls it.
fn pk_seen(lane: u32, ms: MaskSeq, t0: u32, t1: u32, j0: i32, n: u32) -> bool {
    if !mask_bits_on() {
        return true;
    }
    let voters = mask_voters(t0, t1, PK_LANES);
    if lane < voters {
        pk_m[lane >> 2u][lane & 3u] = select(0.0, 1.0, mask_tile_share(ms, t0, t1, lane, PK_LANES, j0, n));
    }
    workgroupBarrier();
    if lane == 0u && voters > 4u {
        pk_m[0] = max(pk_m[0], pk_m[1]);
    }
    return any(workgroupUniformLoad(&pk_m[0]) != vec4<f32>(0.0));
}

// Rows r .. r + 4: visible-key intervals cut to [kv.x, kv.y), query positions, ALiBi slopes.
struct PkRows {
    lo: vec4<i32>,
    hi: vec4<i32>,
    pos: vec4<i32>,
    slope: vec4<f32>,
    // query heads and the batch row's mask inputs (MASKS)
    head: vec4<u32>,
    ms: MaskSeq,
}

fn pk_bounds(r: u32, kvh: u32, kv: vec2<i32>, bt: u32) -> PkRows {
    var b = PkRows(vec4<i32>(0), vec4<i32>(0), vec4<i32>(0), vec4<f32>(0.0), vec4<u32>(0u), mask_seq(bt));
    for (var i = 0u; i < 4u; i++) {
        let th = row_th(r + i, kvh);
        let pos = p.q_offset + i32(th.x);
        let iv = visible_interval(pos);
        b.lo[i] = max(iv.x, kv.x);
        b.hi[i] = min(iv.y, kv.y);
        b.pos[i] = pos;
        b.slope[i] = alibi_slope(th.y);
        b.head[i] = th.y;
    }
    return b;
}

@compute @workgroup_size(PK_LANES)
fn attn_prefill_keys(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= split_items() {
        return;
    }
    let w = split_item(wg_id, PK_ROWS);
    let b = w.b;
    let kvh = w.kvh;
    let r0 = w.r0;
    let kv = w.kv;

    for (var i = lane; i < PK_ROWS * HD4; i += PK_LANES) {
        let th = row_th(r0 + i / HD4, kvh);
        let q_base = p.q_off + b * p.q_sb + th.x * p.q_st + th.y * p.q_sh;
        pk_q[i] = load4(0u, q_base + 4u * (i % HD4)) * p.scale;
    }
    let b0 = pk_bounds(r0, kvh, kv, b);
    let b1 = pk_bounds(r0 + 4u, kvh, kv, b);
    workgroupBarrier();

    let neg = vec4<f32>(NEG_BIG);
    var m0 = neg;
    var m1 = neg;
    var l0 = vec4<f32>(0.0);
    var l1 = l0;
    let z = mat4x4<f32>();
    var a0 = Rows8(z, z);
    var a1 = a0;
    var a2 = a0;
    var a3 = a0;
    var a4 = a0;
    var a5 = a0;
    var a6 = a0;
    var a7 = a0;
    let k_base = p.k_off + b * p.k_sb + kvh * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + kvh * p.v_sh;
    // This lane's head vec4 in each slot, clamped so spare lanes of a partial slot read valid
    // memory (and store nothing).
    let d0 = min(lane, HD4 - 1u);
    let d1 = min(lane + 8u, HD4 - 1u);
    let d2 = min(lane + 16u, HD4 - 1u);
    let d3 = min(lane + 24u, HD4 - 1u);
    let d4 = min(lane + 32u, HD4 - 1u);
    let d5 = min(lane + 40u, HD4 - 1u);
    let d6 = min(lane + 48u, HD4 - 1u);
    let d7 = min(lane + 56u, HD4 - 1u);
    for (var j0 = kv.x; j0 < kv.y; j0 += i32(PK_BK)) {
        // MASKS: a tile the boolean mask hides from all 8 rows is neither loaded nor scored.
        if !pk_seen(lane, b0.ms, w.r0 / p.group, w.r_last / p.group, j0, min(PK_BK, u32(kv.y - j0))) {
            continue;
        }
        // This lane's 8 keys, clamped to the range (keys past it are masked).
        let jl = j0 + i32(PK_LANES * lane);
        let last = kv.y - 1;
        let ja = vec4<u32>(min(vec4<i32>(jl) + vec4<i32>(0, 1, 2, 3), vec4<i32>(last)));
        let jb = vec4<u32>(min(vec4<i32>(jl) + vec4<i32>(4, 5, 6, 7), vec4<i32>(last)));
        let ea = vec4<u32>(k_base) + ja * p.k_st;
        let eb = vec4<u32>(k_base) + jb * p.k_st;
        var s0a = z;
        var s0b = z;
        var s1a = z;
        var s1b = z;
        for (var d = 0u; d < HD4; d++) {
            let ka = pk_kq(ea, d);
            let kb = pk_kq(eb, d);
            let q0 = transpose(pk_qg(0u, d));
            let q1 = transpose(pk_qg(1u, d));
            s0a += q0 * ka;
            s0b += q0 * kb;
            s1a += q1 * ka;
            s1b += q1 * kb;
        }
        if MASKS {
            var sm = array<mat4x4<f32>, 4>(
                pk_scores(s0a, jl, b0), pk_scores(s0b, jl + 4, b0),
                pk_scores(s1a, jl, b1), pk_scores(s1b, jl + 4, b1),
            );
            var bs = array<PkRows, 2>(b0, b1);
            pk_mask_step(&sm, jl, &bs);
            s0a = pk_select(sm[0], jl, b0);
            s0b = pk_select(sm[1], jl + 4, b0);
            s1a = pk_select(sm[2], jl, b1);
            s1b = pk_select(sm[3], jl + 4, b1);
        } else {
            s0a = pk_logits(s0a, jl, b0);
            s0b = pk_logits(s0b, jl + 4, b0);
            s1a = pk_logits(s1a, jl, b1);
            s1b = pk_logits(s1b, jl + 4, b1);
        }
        pk_m[lane * 2u] = max(pk_colmax(s0a), pk_colmax(s0b));
        pk_m[lane * 2u + 1u] = max(pk_colmax(s1a), pk_colmax(s1b));
        workgroupBarrier();
        var n0 = m0;
        var n1 = m1;
        for (var i = 0u; i < PK_LANES; i++) {
            n0 = max(n0, pk_m[i * 2u]);
            n1 = max(n1, pk_m[i * 2u + 1u]);
        }
        // The same decision in every lane (all read the same maxima).
        if any(n0 > m0) || any(n1 > m1) {
            let f0 = exp2(m0 - n0);
            let f1 = exp2(m1 - n1);
            l0 *= f0;
            l1 *= f1;
            a0 = pk_scale(a0, f0, f1);
            if HD4 > 8u {
                a1 = pk_scale(a1, f0, f1);
            }
            if HD4 > 16u {
                a2 = pk_scale(a2, f0, f1);
            }
            if HD4 > 24u {
                a3 = pk_scale(a3, f0, f1);
            }
            if HD4 > 32u {
                a4 = pk_scale(a4, f0, f1);
            }
            if HD4 > 40u {
                a5 = pk_scale(a5, f0, f1);
            }
            if HD4 > 48u {
                a6 = pk_scale(a6, f0, f1);
            }
            if HD4 > 56u {
                a7 = pk_scale(a7, f0, f1);
            }
            m0 = n0;
            m1 = n1;
        }
        let kl = PK_LANES * lane;
        pk_put(kl, 0u, s0a, m0);
        pk_put(kl + 4u, 0u, s0b, m0);
        pk_put(kl, 1u, s1a, m1);
        pk_put(kl + 4u, 1u, s1b, m1);
        workgroupBarrier();
        let nk = min(PK_BK, u32(kv.y - j0));
        for (var kk = 0u; kk < nk; kk++) {
            let p0 = pk_p[kk * 2u];
            let p1 = pk_p[kk * 2u + 1u];
            l0 += p0;
            l1 += p1;
            let vr = v_base + (u32(j0) + kk) * p.v_st;
            a0 = pk_pv(a0, pk_v(vr + 4u * d0), p0, p1);
            if HD4 > 8u {
                a1 = pk_pv(a1, pk_v(vr + 4u * d1), p0, p1);
            }
            if HD4 > 16u {
                a2 = pk_pv(a2, pk_v(vr + 4u * d2), p0, p1);
            }
            if HD4 > 24u {
                a3 = pk_pv(a3, pk_v(vr + 4u * d3), p0, p1);
            }
            if HD4 > 32u {
                a4 = pk_pv(a4, pk_v(vr + 4u * d4), p0, p1);
            }
            if HD4 > 40u {
                a5 = pk_pv(a5, pk_v(vr + 4u * d5), p0, p1);
            }
            if HD4 > 48u {
                a6 = pk_pv(a6, pk_v(vr + 4u * d6), p0, p1);
            }
            if HD4 > 56u {
                a7 = pk_pv(a7, pk_v(vr + 4u * d7), p0, p1);
            }
        }
        workgroupBarrier();
    }

    let t = PkDest(b, kvh, w.bh, r0, w.split);
    let f0 = pk_finish(t, 0u, m0, l0, lane);
    let f1 = pk_finish(t, 1u, m1, l1, lane);
    pk_store_slot(t, lane, a0, f0, f1);
    if HD4 > 8u {
        pk_store_slot(t, lane + 8u, a1, f0, f1);
    }
    if HD4 > 16u {
        pk_store_slot(t, lane + 16u, a2, f0, f1);
    }
    if HD4 > 24u {
        pk_store_slot(t, lane + 24u, a3, f0, f1);
    }
    if HD4 > 32u {
        pk_store_slot(t, lane + 32u, a4, f0, f1);
    }
    if HD4 > 40u {
        pk_store_slot(t, lane + 40u, a5, f0, f1);
    }
    if HD4 > 48u {
        pk_store_slot(t, lane + 48u, a6, f0, f1);
    }
    if HD4 > 56u {
        pk_store_slot(t, lane + 56u, a7, f0, f1);
    }
}

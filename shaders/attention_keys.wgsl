// Prepended after attention_split.wgsl to the decode and paged modules only (the prefill module
// has no `keys_rows` / `keys_unit`).
//
// `keys_partial`: the key-lane step of the CPU-adapter decode kernels `attn_decode_keys`
// (contiguous K/V) and `attn_paged_keys` (pages). On llvmpipe every load instruction costs one
// scalar access per invocation (also for a workgroup-uniform address, and also for workgroup
// memory), while one 16-byte load costs about the same as one 4-byte load. So here each
// invocation owns whole keys (key lane `lane` takes the visible keys lo + lane, lo + lane + WG,
// ... of its split) and reads each K/V row of its keys once with 16-byte loads (8 halves or 4 f32
// per load) and uses it for all KR rows (query heads x tokens) of the workgroup's row block, so a
// GQA group shares every load. No workgroup memory, no barriers. llvmpipe reaches a private
// array indexed by a loop counter one invocation at a time, as it does storage, and Mesa's NIR
// does not unroll the loops over head_dim here; so the head_dim work is written out as calls with
// constant unit indices (keys_dot8 / keys_pv8 below), which makes every q and accumulator index a
// constant for any head_dim, and each 16-byte unit is used as soon as it is loaded (no staged
// row). Each (row, split, lane) writes a partial like `attn_decode_partial` (lanes = WG), merged
// by the same fixed-order pass.
//
// The including kernel supplies where rows live: `keys_rows(h, j)` gives (K source, K unit,
// V source, V unit) for key j of the head described by `h`, `keys_unit(src, i)` loads 16-byte
// unit i of a source, and for quantized K/V `keys_qunit(src, e)` / `keys_qscale(src, e)` load the
// 16-byte unit holding the data of the 8 values at element e and their scale. With the same
// split structure the contiguous and paged kernels therefore run the same arithmetic, bit for bit.
//
// Why this does not use `softmax_tile` (attention_common.wgsl), which the prefill and
// `attn_decode_partial` share: that step works on one query row per invocation over a K/V tile
// staged in workgroup memory, scoring the whole tile before one rescale. Here nothing is staged
// (each invocation reads its own keys through 16-byte units, which is the point on CPU adapters);
// the unit of work is one step of two keys for KR rows at once, so
// m, l and the rescale are updated once per step, branch-free across the KR rows held in vector
// components, with no score array (the tile step's `s[jj]` is indexed dynamically, which CPU
// adapters keep in memory, not registers).
//
// Override constant:
//   KR       query rows per workgroup, every invocation computing all of them (1, 2 or 4)
// Loops (modules are created without naga's loop counters, src/pipeline.rs): the key loop steps by
// WG or 2 * WG (a constant > 0) to the end of the split; `keys_load_q`'s by WG (> 0) and by 1 to
// constants.
override KR: u32 = 1u;

// The workgroup's KR query rows, staged once: the lanes load them (by words, at any alignment)
// in a loop that the compiler keeps rolled, and each lane then fills its registers with one
// workgroup load per 16-byte unit. Loading the registers straight from q_buf would take one load
// instruction per word, and on llvmpipe every load instruction is a loop over the lanes whose
// count LLVM's compile time follows (BENCHMARKS.md, cold compile).
var<workgroup> keys_q: array<vec4<f32>, 4 * MAX_HD4>;

// Rows r0 .. r0 + KR of the workgroup into q0 .. q3, pre-multiplied by the scale; row i starts at
// element bases[i] of q_buf (rows past the last are clamped copies). Every invocation calls it
// (it has a barrier).
fn keys_load_q(
    lid: u32,
    bases: vec4<u32>,
    q0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q3: ptr<function, array<vec4<f32>, MAX_HD4>>,
) {
    for (var i = lid; i < KR * HD4; i += WG) {
        keys_q[i] = q_load4(bases[i / HD4] + 4u * (i % HD4)) * p.scale;
    }
    workgroupBarrier();
    for (var d = 0u; d < HD4; d++) {
        (*q0)[d] = keys_q[d];
        if KR > 1u {
            (*q1)[d] = keys_q[HD4 + d];
        }
        if KR > 2u {
            (*q2)[d] = keys_q[2u * HD4 + d];
            (*q3)[d] = keys_q[3u * HD4 + d];
        }
    }
}

// Whether a unit holds 8 values (halves, and quantized K/V read 8 values at a time). Such a step
// also takes two keys of the lane; an f32 step, whose rows have twice the units, takes one: a
// step reads head_dim / 4 units of K and of V either way, and LLVM's compile time on llvmpipe
// follows the load instructions of a step (BENCHMARKS.md, cold compile).
fn keys_two() -> bool {
    return DTYPE != DT_F32 || KV_FMT >= KV_Q8_0;
}

// Units per head row: HD4 for f32, HD4 / 2 for halves and quantized K/V (head_dim % 8 == 0).
fn keys_units() -> u32 {
    return select(HD4, HD4 / 2u, keys_two());
}

// Quantized K/V, rows a and b (source, unit; u0 a multiple of 8): the scales of a's units u0 .. u0
// + 3 (x) and u0 + 4 .. u0 + 7 (y), and of b's (z, w). A head row starts a block and head_dim is a
// multiple of 32 (the formats' rule), so the 4 units of 8 values from a multiple of 4 share one
// block and one scale: one scale load per block instead of one per unit (`keys_qscale(src, e)`,
// the including kernel's read; fp8's tensor scale is no load). 0 for the float formats.
fn keys_qscales(u0: u32, a: vec2<u32>, b: vec2<u32>) -> vec4<f32> {
    var d = vec4<f32>(0.0);
    if KV_FMT >= KV_Q8_0 {
        d.x = keys_qscale(a.x, 8u * (a.y + u0));
        d.z = keys_qscale(b.x, 8u * (b.y + u0));
        if u0 + 4u < keys_units() {
            d.y = keys_qscale(a.x, 8u * (a.y + u0 + 4u));
            d.w = keys_qscale(b.x, 8u * (b.y + u0 + 4u));
        }
    }
    return d;
}

// Unit u's scales of the two rows out of keys_qscales' d (u constant, so the select folds).
fn keys_dsel(u: u32, d: vec4<f32>) -> vec2<f32> {
    return select(d.xz, d.yw, (u & 4u) != 0u);
}

// One 16-byte unit as 4 (f32) or 8 (halves) values; bf16 takes one shift or one mask per value.
fn keys_unpack(w: vec4<u32>) -> Item {
    if DTYPE == DT_BF16 {
        let m = vec4<u32>(0xffff0000u);
        let lo = vec4<u32>(w.x << 16u, w.x, w.y << 16u, w.y) & m;
        let hi = vec4<u32>(w.z << 16u, w.z, w.w << 16u, w.w) & m;
        return Item(bitcast<vec4<f32>>(lo), bitcast<vec4<f32>>(hi));
    }
    return unpack_item(w, DTYPE);
}

// s[base + i] += q_i[d ..] . x for the KR rows (one unit: head slots d, and d + 1 for halves).
fn keys_dot_rows(
    q0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    s: ptr<function, array<vec4<f32>, 8>>,
    base: u32,
    d: u32,
    x: Item,
) {
    let two = keys_two();
    (*s)[base] += (*q0)[d] * x.lo;
    if two {
        (*s)[base] += (*q0)[d + 1u] * x.hi;
    }
    if KR > 1u {
        (*s)[base + 1u] += (*q1)[d] * x.lo;
        if two {
            (*s)[base + 1u] += (*q1)[d + 1u] * x.hi;
        }
    }
    if KR > 2u {
        (*s)[base + 2u] += (*q2)[d] * x.lo;
        (*s)[base + 3u] += (*q3)[d] * x.lo;
        if two {
            (*s)[base + 2u] += (*q2)[d + 1u] * x.hi;
            (*s)[base + 3u] += (*q3)[d + 1u] * x.hi;
        }
    }
}

// Quantized K/V: two 8-value units from one 16-byte load of the data plane (`keys_qdot_pair`,
// `keys_qpv_pair`, for units u and u + 1 with u even): the 16 values of a q8_0 or fp8 load, or
// the low (u % 4 == 0) or high nibbles of a whole q4_0 block. A row's data takes head_dim / 16
// loads per key instead of head_dim / 8, and each call dequantizes exactly its two units (no
// code that a constant condition drops only after inlining: LLVM's and NIR's time on llvmpipe
// follow the inlined code, BENCHMARKS.md, cold compile). A head row starts a block and head_dim
// is a multiple of 32, so both units share a block (and `keys_dsel`'s scale).

// Units u and u + 1 (u even) of the K rows of both keys of a step against every row.
fn keys_qdot_pair(
    u: u32,
    q0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    s: ptr<function, array<vec4<f32>, 8>>,
    k0: vec2<u32>,
    k1: vec2<u32>,
    ds: vec4<f32>,
) {
    let dq = keys_dsel(u, ds);
    let w0 = keys_qunit(k0.x, 8u * (k0.y + u));
    let w1 = keys_qunit(k1.x, 8u * (k1.y + u));
    keys_dot_rows(q0, q1, q2, q3, s, 0u, 2u * u, kv_dequant8(KV_FMT, w0, 8u * (k0.y + u), dq.x));
    keys_dot_rows(q0, q1, q2, q3, s, 4u, 2u * u, kv_dequant8(KV_FMT, w1, 8u * (k1.y + u), dq.y));
    keys_dot_rows(q0, q1, q2, q3, s, 0u, 2u * u + 2u, kv_dequant8(KV_FMT, w0, 8u * (k0.y + u + 1u), dq.x));
    keys_dot_rows(q0, q1, q2, q3, s, 4u, 2u * u + 2u, kv_dequant8(KV_FMT, w1, 8u * (k1.y + u + 1u), dq.y));
}

// Unit u of the float K rows of both keys of a step (k0, k1: source and unit of each row)
// against every row. Called with constant u only (keys_dot8), so that every private-array index
// is a constant.
fn keys_dot_unit(
    u: u32,
    q0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    s: ptr<function, array<vec4<f32>, 8>>,
    k0: vec2<u32>,
    k1: vec2<u32>,
) {
    if u >= keys_units() {
        return;
    }
    let d = u * select(1u, 2u, keys_two());
    keys_dot_rows(q0, q1, q2, q3, s, 0u, d, keys_unpack(keys_unit(k0.x, k0.y + u)));
    if keys_two() {
        keys_dot_rows(q0, q1, q2, q3, s, 4u, d, keys_unpack(keys_unit(k1.x, k1.y + u)));
    }
}

// acc[d ..] = acc * al + p0 * y0 + p1 * y1 for one row (the step's two keys; a one-key step
// drops the y1 terms).
fn keys_pv_row(a: ptr<function, array<vec4<f32>, MAX_HD4>>, d: u32, al: f32, p0: f32, p1: f32, y0: Item, y1: Item) {
    if !keys_two() {
        (*a)[d] = (*a)[d] * al + p0 * y0.lo;
        return;
    }
    (*a)[d] = (*a)[d] * al + p0 * y0.lo + p1 * y1.lo;
    (*a)[d + 1u] = (*a)[d + 1u] * al + p0 * y0.hi + p1 * y1.hi;
}

// The step's V items y0, y1 (head slots d ..) into every row's accumulator.
fn keys_pv_rows(
    a0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    d: u32,
    al: vec4<f32>,
    p0: vec4<f32>,
    p1: vec4<f32>,
    y0: Item,
    y1: Item,
) {
    keys_pv_row(a0, d, al.x, p0.x, p1.x, y0, y1);
    if KR > 1u {
        keys_pv_row(a1, d, al.y, p0.y, p1.y, y0, y1);
    }
    if KR > 2u {
        keys_pv_row(a2, d, al.z, p0.z, p1.z, y0, y1);
        keys_pv_row(a3, d, al.w, p0.w, p1.w, y0, y1);
    }
}

// Units u and u + 1 (u even) of the quantized V rows of the step's keys into every row's
// accumulator (as keys_qdot_pair).
fn keys_qpv_pair(
    u: u32,
    a0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    v0: vec2<u32>,
    v1: vec2<u32>,
    al: vec4<f32>,
    p0: vec4<f32>,
    p1: vec4<f32>,
    ds: vec4<f32>,
) {
    let dq = keys_dsel(u, ds);
    let w0 = keys_qunit(v0.x, 8u * (v0.y + u));
    let w1 = keys_qunit(v1.x, 8u * (v1.y + u));
    keys_pv_rows(a0, a1, a2, a3, 2u * u, al, p0, p1, kv_dequant8(KV_FMT, w0, 8u * (v0.y + u), dq.x), kv_dequant8(KV_FMT, w1, 8u * (v1.y + u), dq.y));
    keys_pv_rows(a0, a1, a2, a3, 2u * u + 2u, al, p0, p1, kv_dequant8(KV_FMT, w0, 8u * (v0.y + u + 1u), dq.x), kv_dequant8(KV_FMT, w1, 8u * (v1.y + u + 1u), dq.y));
}

// Unit u of the float V rows of the step's keys into every row's accumulator (constant u only).
fn keys_pv_unit(
    u: u32,
    a0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    v0: vec2<u32>,
    v1: vec2<u32>,
    al: vec4<f32>,
    p0: vec4<f32>,
    p1: vec4<f32>,
) {
    if u >= keys_units() {
        return;
    }
    let d = u * select(1u, 2u, keys_two());
    let y0 = keys_unpack(keys_unit(v0.x, v0.y + u));
    var y1 = y0;
    if keys_two() {
        y1 = keys_unpack(keys_unit(v1.x, v1.y + u));
    }
    keys_pv_rows(a0, a1, a2, a3, d, al, p0, p1, y0, y1);
}

// Units u0 .. u0 + 8, written out: WGSL cannot ask for unrolling, and llvmpipe keeps a private
// array indexed by a loop counter in memory, reaching it one invocation at a time.
fn keys_dot8(
    u0: u32,
    q0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    s: ptr<function, array<vec4<f32>, 8>>,
    k0: vec2<u32>,
    k1: vec2<u32>,
) {
    if u0 >= keys_units() {
        return;
    }
    if KV_FMT >= KV_Q8_0 {
        // Units come in fours (head_dim a multiple of 32): u0 + 4 is the only other bound.
        let ds = keys_qscales(u0, k0, k1);
        keys_qdot_pair(u0, q0, q1, q2, q3, s, k0, k1, ds);
        keys_qdot_pair(u0 + 2u, q0, q1, q2, q3, s, k0, k1, ds);
        if u0 + 4u < keys_units() {
            keys_qdot_pair(u0 + 4u, q0, q1, q2, q3, s, k0, k1, ds);
            keys_qdot_pair(u0 + 6u, q0, q1, q2, q3, s, k0, k1, ds);
        }
        return;
    }
    keys_dot_unit(u0, q0, q1, q2, q3, s, k0, k1);
    keys_dot_unit(u0 + 1u, q0, q1, q2, q3, s, k0, k1);
    keys_dot_unit(u0 + 2u, q0, q1, q2, q3, s, k0, k1);
    keys_dot_unit(u0 + 3u, q0, q1, q2, q3, s, k0, k1);
    keys_dot_unit(u0 + 4u, q0, q1, q2, q3, s, k0, k1);
    keys_dot_unit(u0 + 5u, q0, q1, q2, q3, s, k0, k1);
    keys_dot_unit(u0 + 6u, q0, q1, q2, q3, s, k0, k1);
    keys_dot_unit(u0 + 7u, q0, q1, q2, q3, s, k0, k1);
}

fn keys_pv8(
    u0: u32,
    a0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    a3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    v0: vec2<u32>,
    v1: vec2<u32>,
    al: vec4<f32>,
    p0: vec4<f32>,
    p1: vec4<f32>,
) {
    if u0 >= keys_units() {
        return;
    }
    if KV_FMT >= KV_Q8_0 {
        let ds = keys_qscales(u0, v0, v1);
        keys_qpv_pair(u0, a0, a1, a2, a3, v0, v1, al, p0, p1, ds);
        keys_qpv_pair(u0 + 2u, a0, a1, a2, a3, v0, v1, al, p0, p1, ds);
        if u0 + 4u < keys_units() {
            keys_qpv_pair(u0 + 4u, a0, a1, a2, a3, v0, v1, al, p0, p1, ds);
            keys_qpv_pair(u0 + 6u, a0, a1, a2, a3, v0, v1, al, p0, p1, ds);
        }
        return;
    }
    keys_pv_unit(u0, a0, a1, a2, a3, v0, v1, al, p0, p1);
    keys_pv_unit(u0 + 1u, a0, a1, a2, a3, v0, v1, al, p0, p1);
    keys_pv_unit(u0 + 2u, a0, a1, a2, a3, v0, v1, al, p0, p1);
    keys_pv_unit(u0 + 3u, a0, a1, a2, a3, v0, v1, al, p0, p1);
    keys_pv_unit(u0 + 4u, a0, a1, a2, a3, v0, v1, al, p0, p1);
    keys_pv_unit(u0 + 5u, a0, a1, a2, a3, v0, v1, al, p0, p1);
    keys_pv_unit(u0 + 6u, a0, a1, a2, a3, v0, v1, al, p0, p1);
    keys_pv_unit(u0 + 7u, a0, a1, a2, a3, v0, v1, al, p0, p1);
}

// Score of the KR rows against one key from its dot partials (lanes of s[base + i]).
fn keys_scores(s: ptr<function, array<vec4<f32>, 8>>, base: u32) -> vec4<f32> {
    var x = vec4<f32>(NEG_BIG);
    x.x = cap_logit(dot((*s)[base], vec4<f32>(1.0)));
    if KR > 1u {
        x.y = cap_logit(dot((*s)[base + 1u], vec4<f32>(1.0)));
    }
    if KR > 2u {
        x.z = cap_logit(dot((*s)[base + 2u], vec4<f32>(1.0)));
        x.w = cap_logit(dot((*s)[base + 3u], vec4<f32>(1.0)));
    }
    return x;
}

// `mask_logit` of four rows' logits x for key j (rows at positions pos, query heads hq).
fn keys_mask(x: vec4<f32>, j: i32, pos: vec4<i32>, hq: vec4<u32>, ms: MaskSeq) -> vec4<f32> {
    if !MASKS {
        return x;
    }
    return vec4<f32>(
        mask_logit(x.x, j, pos.x, hq.x, ms),
        mask_logit(x.y, j, pos.y, hq.y, ms),
        mask_logit(x.z, j, pos.z, hq.z, ms),
        mask_logit(x.w, j, pos.w, hq.w, ms),
    );
}

fn keys_shown(x: vec4<f32>) -> vec4<bool> {
    return vec4<bool>(shown(x.x), shown(x.y), shown(x.z), shown(x.w));
}

// Rows r0 .. r0 + KR (q0 .. q3 pre-scaled; rows past `rows` are computed on a clamped copy and
// not stored) over the keys kv.x + lane, kv.x + lane + WG, ... < kv.y of the head `h` (kv head
// kvh, for the rows' ALiBi slopes), queries at positions ms.q_offset + r / group (ms: the
// sequence's mask inputs); the partial of row r0 + i goes to part_out[e + i * row_step].
// A step of halves or quantized K/V takes two keys of the lane (j and j + WG): both are scored
// first, then one running-max update and one rescale of the accumulators serve both (also for one
// row: the two keys' loads and dot products are independent, which llvmpipe overlaps;
// BENCHMARKS.md, round five). An f32 step takes one key (`keys_two`), as many 16-byte units.
fn keys_partial(
    q0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    h: vec2<u32>,
    kvh: u32,
    kv: vec2<i32>,
    lane: u32,
    r0: u32,
    rows: u32,
    ms: MaskSeq,
    e: u32,
    row_step: u32,
) {
    // Zero-initialised (WGSL initialises function variables).
    var a0: array<vec4<f32>, MAX_HD4>;
    var a1: array<vec4<f32>, MAX_HD4>;
    var a2: array<vec4<f32>, MAX_HD4>;
    var a3: array<vec4<f32>, MAX_HD4>;
    let rr = vec4<u32>(r0, r0 + 1u, r0 + 2u, r0 + 3u);
    let row_ok = rr < vec4<u32>(min(rows, r0 + KR));
    let rcl = min(rr, vec4<u32>(rows - 1u));
    let pos = vec4<i32>(ms.q_offset) + vec4<i32>(rcl / p.group);
    let slope = vec4<f32>(row_slope(rr.x, kvh), row_slope(rr.y, kvh), row_slope(rr.z, kvh), row_slope(rr.w, kvh));
    let hq = vec4<u32>(kvh * p.group) + rcl % vec4<u32>(p.group);
    var m = vec4<f32>(NEG_BIG);
    var l = vec4<f32>(0.0);
    // The block's query tokens (MASKS).
    let toks = vec2<u32>(r0, min(rows, r0 + KR) - 1u) / p.group;
    for (var j0 = kv.x + i32(lane); j0 < kv.y; j0 += i32(select(1u, 2u, keys_two()) * WG)) {
        // The second key, clamped into the range so that its loads stay valid; masked below.
        let j1 = j0 + i32(WG);
        // MASKS: a step whose keys the boolean mask hides from every row of the block loads
        // and scores nothing (the lane's keys are its own: no vote).
        if mask_bits_on() {
            let two = keys_two() && j1 < kv.y;
            if !mask_key_seen(ms, toks.x, toks.y, j0) && !(two && mask_key_seen(ms, toks.x, toks.y, j1)) {
                continue;
            }
        }
        let at0 = keys_rows(h, u32(j0));
        var at1 = at0;
        if keys_two() {
            at1 = keys_rows(h, u32(min(j1, kv.y - 1)));
        }
        // Zero each step. The explicit initializer matters: Dawn's Tint (webgpu 0.6.2) zeroes a
        // `var` declared in a loop without one only once, so the scores would add up over steps.
        var s = array<vec4<f32>, 8>();
        // Up to 64 units (head_dim 256 in f32).
        keys_dot8(0u, q0, q1, q2, q3, &s, at0.xy, at1.xy);
        keys_dot8(8u, q0, q1, q2, q3, &s, at0.xy, at1.xy);
        keys_dot8(16u, q0, q1, q2, q3, &s, at0.xy, at1.xy);
        keys_dot8(24u, q0, q1, q2, q3, &s, at0.xy, at1.xy);
        keys_dot8(32u, q0, q1, q2, q3, &s, at0.xy, at1.xy);
        keys_dot8(40u, q0, q1, q2, q3, &s, at0.xy, at1.xy);
        keys_dot8(48u, q0, q1, q2, q3, &s, at0.xy, at1.xy);
        keys_dot8(56u, q0, q1, q2, q3, &s, at0.xy, at1.xy);
        let x0 = keys_mask(keys_scores(&s, 0u) + slope * vec4<f32>(vec4<i32>(j0) - pos), j0, pos, hq, ms);
        let ok0 = row_ok & vec4<bool>(visible(j0, pos.x), visible(j0, pos.y), visible(j0, pos.z), visible(j0, pos.w)) & keys_shown(x0);
        let x1 = keys_mask(keys_scores(&s, 4u) + slope * vec4<f32>(vec4<i32>(j1) - pos), min(j1, kv.y - 1), pos, hq, ms);
        let ok1 = row_ok & vec4<bool>(keys_two() && j1 < kv.y) & vec4<bool>(visible(j1, pos.x), visible(j1, pos.y), visible(j1, pos.z), visible(j1, pos.w)) & keys_shown(x1);
        let m_0 = select(m, max(m, x0), ok0);
        let m_new = select(m_0, max(m_0, x1), ok1);
        // m_new >= m, so alpha <= 1; while nothing is visible both are NEG_BIG: alpha 1.
        let al = exp(m - m_new);
        let p0 = select(vec4<f32>(0.0), exp(x0 - m_new), ok0);
        let p1 = select(vec4<f32>(0.0), exp(x1 - m_new), ok1);
        l = l * al + p0 + p1;
        m = m_new;
        keys_pv8(0u, &a0, &a1, &a2, &a3, at0.zw, at1.zw, al, p0, p1);
        keys_pv8(8u, &a0, &a1, &a2, &a3, at0.zw, at1.zw, al, p0, p1);
        keys_pv8(16u, &a0, &a1, &a2, &a3, at0.zw, at1.zw, al, p0, p1);
        keys_pv8(24u, &a0, &a1, &a2, &a3, at0.zw, at1.zw, al, p0, p1);
        keys_pv8(32u, &a0, &a1, &a2, &a3, at0.zw, at1.zw, al, p0, p1);
        keys_pv8(40u, &a0, &a1, &a2, &a3, at0.zw, at1.zw, al, p0, p1);
        keys_pv8(48u, &a0, &a1, &a2, &a3, at0.zw, at1.zw, al, p0, p1);
        keys_pv8(56u, &a0, &a1, &a2, &a3, at0.zw, at1.zw, al, p0, p1);
    }

    store_partial(&a0, e, m.x, l.x);
    if row_ok.y {
        store_partial(&a1, e + row_step, m.y, l.y);
    }
    if row_ok.z {
        store_partial(&a2, e + 2u * row_step, m.z, l.z);
    }
    if row_ok.w {
        store_partial(&a3, e + 3u * row_step, m.w, l.w);
    }
}

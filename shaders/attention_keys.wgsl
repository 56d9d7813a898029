// Prepended after attention_split.wgsl to the decode and paged modules only (the prefill module
// has no `keys_rows` / `keys_unit`).
//
// `keys_partial`: the step of the CPU-adapter decode kernels `attn_decode_keys` (contiguous K/V)
// and `attn_paged_keys` (pages), shaped like `attn_prefill_keys` (FlashAttention-2's step,
// Dao 2023): a workgroup of WG (8) invocations owns KR query rows (query heads x tokens of one
// kv head) and one chunk of the keys, at most KEYS_TRIPS trips of keys_kpt() keys, in one pass:
// - Q K^T, lanes own head slices: each lane holds its 16-byte units of every row of q (`KeysRow`,
//   pre-scaled; `keys_slot_unit`) and, for each trip in turn, loads its units of the trip's K
//   rows (4 f32 or 8 halves / quantized values per load) and writes its partial dot products to
//   workgroup memory, a vec4 of (row, key) pairs (`keys_trip_dots`: 4 / KR keys, so that one row
//   still moves 4 keys per exchange);
// - softmax, lanes own trips: lane t sums the WG partials of trips t, t + WG, ..., applies the
//   soft cap, ALiBi, the masks and the visibility rules; the maximum goes through workgroup
//   memory, so every lane holds the same m; the lane writes p = exp(x - m) and keeps its own
//   share of the denominator l;
// - P V, lanes own head slices again: each lane adds p times its units of every key's V row into
//   its accumulators (`KeysRow` per row).
// Four barriers, none inside a loop: llvmpipe compiles a loop around a barrier into code about
// half as fast, so the planner gives each workgroup a chunk it takes in one pass. Every per-lane
// array is indexed by constants only (slots written out, `keys_dot_slot` / `keys_pv_slot`):
// llvmpipe keeps a private array indexed by a loop counter in memory and reaches it one
// invocation at a time. The loops over the trips stay rolled, so the code LLVM compiles is one
// trip's units for KR rows, not the whole head (BENCHMARKS.md, cold compile).
//
// Each (row, split) gets one partial like `attn_decode_partial` (lanes = 1), merged by the same
// fixed-order pass: lane 0 writes (m, l), every lane its accumulator units.
//
// The including kernel supplies where rows live: `keys_rows(h, j)` gives (K source, K unit,
// V source, V unit) for key j of the head described by `h`, `keys_unit(src, i)` loads 16-byte
// unit i of a source, and for quantized K/V `keys_qunit(src, e)` / `keys_qscale(src, e)` load the
// 16-byte unit holding the data of the 8 values at element e and their scale. With the same
// split structure the contiguous and paged kernels therefore run the same arithmetic, bit for bit.
//
// Override constant:
//   KR       query rows per workgroup (1, 2 or 4)
// Loops (modules are created without naga's loop counters, src/pipeline.rs): the trip loops step
// by 1 or by WG (a constant > 0) to at most KEYS_TRIPS, the staging loop by WG to a constant.
override KR: u32 = 1u;

// Slots per lane: head slices of 16 bytes (`keys_slot_unit`; WG = 8: head_dim 256 in f32 is 64
// units). A slot's values sit at [i] and, for 8-value units, [KEYS_SLOTS + i].
const KEYS_SLOTS: u32 = 8u;
alias KeysRow = array<vec4<f32>, 16>;
// The KR rows' slots (q or accumulators), indexed by constants only.
alias KeysRows = array<KeysRow, 4>;

// The workgroup's KR query rows, staged once (pre-scaled, f32), then each lane takes its slots.
var<workgroup> keys_q: array<vec4<f32>, 4 * MAX_HD4>;
// Trips per workgroup (each keys_kpt() keys; `KEYS_TRIPS` on the host caps a chunk), the trips'
// partial scores (trip t, lane: [t * WG + lane]), the lanes' maxima, and the trips' logits / p.
const KEYS_TRIPS: u32 = 64u;
var<workgroup> keys_sc: array<vec4<f32>, 512>;
var<workgroup> keys_mx: array<vec4<f32>, 8>;
var<workgroup> keys_pb: array<vec4<f32>, 64>;

// Whether a unit holds 8 values (halves and quantized K/V) rather than 4 (f32).
fn keys_two() -> bool {
    return DTYPE != DT_F32 || KV_FMT >= KV_Q8_0;
}

// Units per head row: HD4 for f32, HD4 / 2 for halves and quantized K/V (head_dim % 8 == 0).
fn keys_units() -> u32 {
    return select(HD4, HD4 / 2u, keys_two());
}

// Whether some lane has slot i (a constant condition: it folds).
fn keys_slot_used(i: u32) -> bool {
    return i < KEYS_SLOTS && i < keys_lane_units();
}

// Units per lane, and the unit of slot i: an f32 lane owns units lane * n .. lane * n + n (one
// cache line of a row at head_dim 128), so that one load instruction reaches WG lines of a row; a
// lane of 8-value units owns units lane, lane + WG, ... (measured faster for halves, BENCHMARKS.md).
fn keys_lane_units() -> u32 {
    return (keys_units() + WG - 1u) / WG;
}

// Whether the lane's slot i (unit u) is inside the head: with head_dim a multiple of 8 units
// per lane only the constant part remains.
fn keys_slot_ok(i: u32, u: u32) -> bool {
    return keys_slot_used(i) && (keys_units() % WG == 0u || u < keys_units());
}

fn keys_slot_unit(lane: u32, i: u32) -> u32 {
    if keys_two() && !keys_qpairs() {
        return lane + WG * i;
    }
    return lane * keys_lane_units() + i;
}

// Quantized K/V with an even count of units per lane: the lane's slots 2m and 2m + 1 are the
// 16 values of one 16-byte load in one block (one scale), read once (`keys_qload2`).
fn keys_qpairs() -> bool {
    return KV_FMT >= KV_Q8_0 && keys_lane_units() % 2u == 0u;
}

struct Item2 {
    a: Item,
    b: Item,
}

// Quantized units u and u + 1 of the row at `at`: one data load, one scale. `a` (unit u) holds
// for any u, `b` (unit u + 1) where u is even (`keys_qpairs`: the pair shares a 16-byte load and
// a block).
fn keys_qload2(at: vec2<u32>, u: u32) -> Item2 {
    let e = 8u * (at.y + u);
    let w = keys_qunit(at.x, e);
    let d = keys_qscale(at.x, e);
    return Item2(kv_dequant8(KV_FMT, w, e, d), kv_dequant8(KV_FMT, w, e + 8u, d));
}

// Vec4 index in the head of the first 4 values of unit u.
fn keys_v4(u: u32) -> u32 {
    return select(u, 2u * u, keys_two());
}

// Rows r0 .. r0 + KR of the workgroup, pre-multiplied by the scale, into `keys_q`; row i starts
// at element bases[i] of q_buf (rows past the last are clamped copies). Every invocation calls it
// (it has a barrier).
fn keys_stage_q(lid: u32, bases: vec4<u32>) {
    for (var i = lid; i < KR * HD4; i += WG) {
        keys_q[i] = q_load4(bases[i / HD4] + 4u * (i % HD4)) * p.scale;
    }
    workgroupBarrier();
}

// The lane's slots of the staged rows into q.
fn keys_load_q(
    lid: u32,
    q: ptr<function, KeysRows>,
) {
    keys_q_slot(0u, lid, q);
    keys_q_slot(1u, lid, q);
    keys_q_slot(2u, lid, q);
    keys_q_slot(3u, lid, q);
    keys_q_slot(4u, lid, q);
    keys_q_slot(5u, lid, q);
    keys_q_slot(6u, lid, q);
    keys_q_slot(7u, lid, q);
}

fn keys_q_row(i: u32, d: u32, r: u32, q: ptr<function, KeysRows>) {
    (*q)[r][i] = keys_q[r * HD4 + d];
    if keys_two() {
        (*q)[r][KEYS_SLOTS + i] = keys_q[r * HD4 + d + 1u];
    }
}

fn keys_q_slot(
    i: u32,
    lane: u32,
    q: ptr<function, KeysRows>,
) {
    let u = keys_slot_unit(lane, i);
    if !keys_slot_ok(i, u) {
        return;
    }
    let d = keys_v4(u);
    keys_q_row(i, d, 0u, q);
    if KR > 1u {
        keys_q_row(i, d, 1u, q);
    }
    if KR > 2u {
        keys_q_row(i, d, 2u, q);
        keys_q_row(i, d, 3u, q);
    }
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

// Unit u of the row at (source, unit) `at` in `a`, and with quantized pairs (`keys_qpairs`) unit
// u + 1 in `b`: float units through `keys_unit`, quantized ones dequantized from the 16-byte unit
// holding their values and their block's scale.
fn keys_slot_load(at: vec2<u32>, u: u32) -> Item2 {
    if KV_FMT >= KV_Q8_0 {
        return keys_qload2(at, u);
    }
    return Item2(keys_unpack(keys_unit(at.x, at.y + u)), Item());
}

// With quantized pairs (`keys_qpairs`) the even slot i takes units u and u + 1: whether slot i is
// an odd one (its unit already taken), and whether the even slot i also takes slot i + 1.
fn keys_pair_odd(i: u32) -> bool {
    return keys_qpairs() && (i & 1u) == 1u;
}

fn keys_pair_next(i: u32, u: u32) -> bool {
    return keys_qpairs() && keys_slot_ok(i + 1u, u + 1u);
}

fn keys_dot_row(i: u32, r: u32, q: ptr<function, KeysRows>, x: Item) -> vec4<f32> {
    var s = (*q)[r][i] * x.lo;
    if keys_two() {
        s += (*q)[r][KEYS_SLOTS + i] * x.hi;
    }
    return s;
}

// s[c] += the lane's slot i of row c % KR . the K row of the trip's key c / KR (at ks[c / KR]),
// component c as in `keys_trip_dots`. The slot's unit is loaded for every key of the trip before
// the next slot's, so that the loads of one slot reach keys_kpt() rows at once. A key whose
// `seen` is false is not read.
fn keys_dot_slot(
    i: u32,
    lane: u32,
    q: ptr<function, KeysRows>,
    ks: array<vec2<u32>, 4>,
    seen: vec4<bool>,
    s: ptr<function, mat4x4<f32>>,
) {
    let u = keys_slot_unit(lane, i);
    if !keys_slot_ok(i, u) || keys_pair_odd(i) {
        return;
    }
    keys_dot_key(i, u, 0u, q, ks[0], seen.x, s);
    if keys_kpt() > 1u {
        keys_dot_key(i, u, 1u, q, ks[1], seen.y, s);
    }
    if keys_kpt() > 2u {
        keys_dot_key(i, u, 2u, q, ks[2], seen.z, s);
        keys_dot_key(i, u, 3u, q, ks[3], seen.w, s);
    }
}

// Key k of the trip (K row at `at`), slot i (unit u).
fn keys_dot_key(i: u32, u: u32, k: u32, q: ptr<function, KeysRows>, at: vec2<u32>, seen: bool, s: ptr<function, mat4x4<f32>>) {
    if !seen {
        return;
    }
    let x = keys_slot_load(at, u);
    keys_dot_item(i, k, q, x.a, s);
    if keys_pair_next(i, u) {
        keys_dot_item(i + 1u, k, q, x.b, s);
    }
}

fn keys_dot_item(i: u32, k: u32, q: ptr<function, KeysRows>, x: Item, s: ptr<function, mat4x4<f32>>) {
    (*s)[k * KR] += keys_dot_row(i, 0u, q, x);
    if KR > 1u {
        (*s)[k * KR + 1u] += keys_dot_row(i, 1u, q, x);
    }
    if KR > 2u {
        (*s)[2] += keys_dot_row(i, 2u, q, x);
        (*s)[3] += keys_dot_row(i, 3u, q, x);
    }
}

// Row r's slot i += its p of each key of the trip (components r, r + KR, ...) x the key's V unit.
fn keys_pv_row(i: u32, a: ptr<function, KeysRows>, pr: vec4<f32>, r: u32, y0: Item, y1: Item, y2: Item, y3: Item) {
    var lo = pr[r] * y0.lo;
    var hi = pr[r] * y0.hi;
    if keys_kpt() > 1u {
        lo += pr[r + KR] * y1.lo;
        hi += pr[r + KR] * y1.hi;
    }
    if keys_kpt() > 2u {
        lo += pr[r + 2u] * y2.lo + pr[r + 3u] * y3.lo;
        hi += pr[r + 2u] * y2.hi + pr[r + 3u] * y3.hi;
    }
    (*a)[r][i] += lo;
    if keys_two() {
        (*a)[r][KEYS_SLOTS + i] += hi;
    }
}

// y, or 0 where every row's p for the trip's key k is 0.
fn keys_keep(y: Item, pr: vec4<f32>, k: u32) -> Item {
    var seen = pr[k & 3u] != 0.0;
    if KR == 4u {
        seen = any(pr != vec4<f32>(0.0));
    } else if KR == 2u {
        seen = any(select(pr.xy, pr.zw, k == 1u) != vec2<f32>(0.0));
    }
    let z = vec4<f32>(0.0);
    return Item(select(z, y.lo, seen), select(z, y.hi, seen));
}

// The lane's slot i of every row's accumulator += p x the V rows of the trip's keys (at v0 ..
// v3; pr in the trip's component layout, `keys_trip_dots`).
fn keys_pv_slot(
    i: u32,
    lane: u32,
    a: ptr<function, KeysRows>,
    v: array<vec2<u32>, 4>,
    pr: vec4<f32>,
) {
    let u = keys_slot_unit(lane, i);
    if !keys_slot_ok(i, u) || keys_pair_odd(i) {
        return;
    }
    let y0 = keys_slot_load(v[0], u);
    var y1 = y0;
    var y2 = y0;
    var y3 = y0;
    if keys_kpt() > 1u {
        y1 = keys_slot_load(v[1], u);
    }
    if keys_kpt() > 2u {
        y2 = keys_slot_load(v[2], u);
        y3 = keys_slot_load(v[3], u);
    }
    keys_pv_item(i, a, pr, y0.a, y1.a, y2.a, y3.a);
    if keys_pair_next(i, u) {
        keys_pv_item(i + 1u, a, pr, y0.b, y1.b, y2.b, y3.b);
    }
}

// Slot i of every row's accumulator += p x the trip's keys' V values y0 .. y3.
fn keys_pv_item(i: u32, a: ptr<function, KeysRows>, pr: vec4<f32>, v0: Item, v1: Item, v2: Item, v3: Item) {
    var y0 = v0;
    var y1 = v1;
    var y2 = v2;
    var y3 = v3;
    if mask_bits_on() {
        // A key the boolean mask hides has p = 0 for every row and its V row is never read
        // (it may hold anything, NaN included): its values are dropped, not multiplied by 0.
        y0 = keys_keep(y0, pr, 0u);
        y1 = keys_keep(y1, pr, 1u);
        y2 = keys_keep(y2, pr, 2u);
        y3 = keys_keep(y3, pr, 3u);
    }
    keys_pv_row(i, a, pr, 0u, y0, y1, y2, y3);
    if KR > 1u {
        keys_pv_row(i, a, pr, 1u, y0, y1, y2, y3);
    }
    if KR > 2u {
        keys_pv_row(i, a, pr, 2u, y0, y1, y2, y3);
        keys_pv_row(i, a, pr, 3u, y0, y1, y2, y3);
    }
}

// Keys per trip: the components of a trip's vec4 are (row, key) pairs, component c for row
// c % KR and key c / KR, so that the scores, p and the lanes' exchanges of one row (MHA) carry
// 4 keys each, not one row's value in one component.
fn keys_kpt() -> u32 {
    return 4u / KR;
}

// Lane `lane`'s partial dot products for the trip's keys j .. j + keys_kpt() in its component
// layout.
fn keys_trip_dots(
    q: ptr<function, KeysRows>,
    h: vec2<u32>,
    j: i32,
    kv_end: i32,
    lane: u32,
    ms: MaskSeq,
    toks: vec2<u32>,
) -> vec4<f32> {
    // Key j + k's K row at ks[k]; a key the boolean mask hides from every row of the block is
    // not read (its pairs stay 0), a key past the split reads the last one's row (its logits
    // are dropped).
    let jc = min(vec4<i32>(j) + vec4<i32>(0, 1, 2, 3), vec4<i32>(kv_end - 1));
    let kpt = keys_kpt();
    var seen = vec4<bool>(true, kpt > 1u, kpt > 2u, kpt > 2u);
    if mask_bits_on() {
        seen &= vec4<bool>(
            mask_key_seen(ms, toks.x, toks.y, jc.x),
            mask_key_seen(ms, toks.x, toks.y, jc.y),
            mask_key_seen(ms, toks.x, toks.y, jc.z),
            mask_key_seen(ms, toks.x, toks.y, jc.w),
        );
    }
    var ks: array<vec2<u32>, 4>;
    ks[0] = keys_rows(h, u32(jc.x)).xy;
    if kpt > 1u {
        ks[1] = keys_rows(h, u32(jc.y)).xy;
    }
    if kpt > 2u {
        ks[2] = keys_rows(h, u32(jc.z)).xy;
        ks[3] = keys_rows(h, u32(jc.w)).xy;
    }
    var s = mat4x4<f32>();
    keys_dot_slot(0u, lane, q, ks, seen, &s);
    keys_dot_slot(1u, lane, q, ks, seen, &s);
    keys_dot_slot(2u, lane, q, ks, seen, &s);
    keys_dot_slot(3u, lane, q, ks, seen, &s);
    keys_dot_slot(4u, lane, q, ks, seen, &s);
    keys_dot_slot(5u, lane, q, ks, seen, &s);
    keys_dot_slot(6u, lane, q, ks, seen, &s);
    keys_dot_slot(7u, lane, q, ks, seen, &s);
    // Each (row, key) pair's sum: a vec4 of partial products per pair, added across once.
    return vec4<f32>(1.0) * s;
}

// Each component's row maximum over the components of the same row (the trip's keys).
fn keys_rowmax(x: vec4<f32>) -> vec4<f32> {
    if KR == 4u {
        return x;
    }
    let m2 = max(x.xy, x.zw);
    if KR == 2u {
        return vec4<f32>(m2, m2);
    }
    return vec4<f32>(max(m2.x, m2.y));
}

// Row r's sum over its components.
fn keys_rowsum(x: vec4<f32>, r: u32) -> f32 {
    var t = x[r];
    if keys_kpt() > 1u {
        t += x[r + KR];
    }
    if keys_kpt() > 2u {
        t += x[r + 2u] + x[r + 3u];
    }
    return t;
}

// `mask_logit` of four rows' logits x for key j (rows at positions pos, query heads hq).
fn keys_mask(x: vec4<f32>, j: vec4<i32>, pos: vec4<i32>, hq: vec4<u32>, ms: MaskSeq) -> vec4<f32> {
    if !MASKS {
        return x;
    }
    return vec4<f32>(
        mask_logit(x.x, j.x, pos.x, hq.x, ms),
        mask_logit(x.y, j.y, pos.y, hq.y, ms),
        mask_logit(x.z, j.z, pos.z, hq.z, ms),
        mask_logit(x.w, j.w, pos.w, hq.w, ms),
    );
}

fn keys_shown(x: vec4<f32>) -> vec4<bool> {
    return vec4<bool>(shown(x.x), shown(x.y), shown(x.z), shown(x.w));
}

// The logits of trip t (the sum of the lanes' partials; component c for key j[c] and the row
// whose position, slope and head are pos[c], slope[c], hq[c]), NEG_BIG where the row does not see
// the key (past the split, past the rows, outside the visible interval, masked).
fn keys_logits(
    t: u32,
    j: vec4<i32>,
    kv_end: i32,
    row_ok: vec4<bool>,
    pos: vec4<i32>,
    slope: vec4<f32>,
    hq: vec4<u32>,
    ms: MaskSeq,
) -> vec4<f32> {
    // Written out (WG = 8): no loop trips against llvmpipe's cap.
    let b = t * WG;
    let sc = ((keys_sc[b] + keys_sc[b + 1u]) + (keys_sc[b + 2u] + keys_sc[b + 3u]))
        + ((keys_sc[b + 4u] + keys_sc[b + 5u]) + (keys_sc[b + 6u] + keys_sc[b + 7u]));
    let x = keys_mask(
        vec4<f32>(cap_logit(sc.x), cap_logit(sc.y), cap_logit(sc.z), cap_logit(sc.w)) + slope * vec4<f32>(j - pos),
        min(j, vec4<i32>(kv_end - 1)),
        pos,
        hq,
        ms,
    );
    let ok = row_ok & (j < vec4<i32>(kv_end)) & vec4<bool>(visible(j.x, pos.x), visible(j.y, pos.y), visible(j.z, pos.z), visible(j.w, pos.w)) & keys_shown(x);
    return select(vec4<f32>(NEG_BIG), x, ok);
}

// Trip t0 of a lane's pass in f32 with several rows (KR > 1): lane l takes trip (t0 + l) % n, so
// that one load instruction reaches 8 rows (8 cache lines in flight) rather than 8 slices of one
// row; halves, quantized units and one row (MHA) measured faster unskewed (BENCHMARKS.md).
fn keys_skew(t0: u32, lane: u32, n: u32) -> u32 {
    if keys_two() || KR == 1u {
        return t0;
    }
    return (t0 + lane) % n;
}

// exp(x - m) of a logit from `keys_logits`, 0 for a hidden one.
fn keys_p(x: vec4<f32>, m: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(0.0), exp(x - m), x > vec4<f32>(NEG_BIG));
}

// The lane's slots of row r's accumulator: with `direct` (a sequence's only split, paged),
// normalised into the output row at element o; else into the row's partial at part_out[e], whose
// (m, l) lane 0 writes. Every unit of a row is one lane's, so the partial is whole.
fn keys_store(a: ptr<function, KeysRows>, r: u32, e: u32, m: f32, l: f32, lane: u32, direct: bool, o: u32, h: u32) {
    var sc = 1.0;
    if direct {
        sc = out_scale(m, l, h);
    } else if lane == 0u {
        part_out[e] = vec4<f32>(m, l, 0.0, 0.0);
    }
    keys_store_slot(0u, a, r, e, lane, direct, o, sc);
    keys_store_slot(1u, a, r, e, lane, direct, o, sc);
    keys_store_slot(2u, a, r, e, lane, direct, o, sc);
    keys_store_slot(3u, a, r, e, lane, direct, o, sc);
    keys_store_slot(4u, a, r, e, lane, direct, o, sc);
    keys_store_slot(5u, a, r, e, lane, direct, o, sc);
    keys_store_slot(6u, a, r, e, lane, direct, o, sc);
    keys_store_slot(7u, a, r, e, lane, direct, o, sc);
}

fn keys_store_slot(i: u32, a: ptr<function, KeysRows>, r: u32, e: u32, lane: u32, direct: bool, o: u32, sc: f32) {
    let u = keys_slot_unit(lane, i);
    if !keys_slot_ok(i, u) {
        return;
    }
    let d = keys_v4(u);
    if direct {
        store4(o + 4u * d, (*a)[r][i] * sc);
        if keys_two() {
            store4(o + 4u * d + 4u, (*a)[r][KEYS_SLOTS + i] * sc);
        }
        return;
    }
    part_out[e + 1u + d] = (*a)[r][i];
    if keys_two() {
        part_out[e + 2u + d] = (*a)[r][KEYS_SLOTS + i];
    }
}

// Rows r0 .. r0 + KR (rows past `rows` are computed on a clamped copy and not stored; q staged by
// `keys_stage_q`) over the keys kv.x .. kv.y (at most KEYS_TRIPS * keys_kpt(): the planner's
// chunk, `keys_chunk_keys` on the host) of the head `h` (kv head kvh, for the rows' ALiBi
// slopes), queries at positions ms.q_offset + r / group (ms: the sequence's mask inputs). Row
// r0 + i's partial goes to part_out[e + i * row_step], or with `direct` its output to element
// o[i] of out_buf. Every invocation calls it (it has barriers, none inside a loop: llvmpipe
// compiles a loop around a barrier into code about half as fast, BENCHMARKS.md).
fn keys_partial(
    h: vec2<u32>,
    kvh: u32,
    kv: vec2<i32>,
    lane: u32,
    r0: u32,
    rows: u32,
    ms: MaskSeq,
    e: u32,
    row_step: u32,
    direct: bool,
    o: vec4<u32>,
) {
    // Per component c of a trip: its row r0 + c % KR and its key's offset c / KR in the trip.
    let rr = vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u) % vec4<u32>(KR);
    let kc = vec4<i32>(vec4<u32>(0u, 1u, 2u, 3u) / vec4<u32>(KR));
    let row_ok = rr < vec4<u32>(min(rows, r0 + KR));
    let rcl = min(rr, vec4<u32>(rows - 1u));
    let pos = vec4<i32>(ms.q_offset) + vec4<i32>(rcl / p.group);
    let slope = vec4<f32>(row_slope(rr.x, kvh), row_slope(rr.y, kvh), row_slope(rr.z, kvh), row_slope(rr.w, kvh));
    let hq = vec4<u32>(kvh * p.group) + rcl % vec4<u32>(p.group);
    // The block's query tokens (MASKS).
    let toks = vec2<u32>(r0, min(rows, r0 + KR) - 1u) / p.group;
    let kpt = i32(keys_kpt());
    let n_trips = min(u32(max(kv.y - kv.x + kpt - 1, 0) / kpt), KEYS_TRIPS);

    // Q K^T: the lane's head slices of each key.
    var q = KeysRows();
    keys_load_q(lane, &q);
    for (var t0 = 0u; t0 < n_trips; t0++) {
        let t = keys_skew(t0, lane, n_trips);
        keys_sc[t * WG + lane] = keys_trip_dots(&q, h, kv.x + i32(t) * kpt, kv.y, lane, ms, toks);
    }
    workgroupBarrier();

    // Softmax: lane `lane` takes trips lane, lane + WG, ... (hidden keys: NEG_BIG); the maximum
    // per component, then per row, through workgroup memory; p in place of the logits.
    var mx = vec4<f32>(NEG_BIG);
    for (var t = lane; t < n_trips; t += WG) {
        let x = keys_logits(t, vec4<i32>(kv.x + i32(t) * kpt) + kc, kv.y, row_ok, pos, slope, hq, ms);
        keys_pb[t] = x;
        mx = max(mx, x);
    }
    keys_mx[lane] = mx;
    workgroupBarrier();
    // Constant indices: one load for the workgroup instead of one per lane on llvmpipe. Every
    // lane computes the same m from the same values; NEG_BIG while nothing is visible.
    let m = keys_rowmax(max(
        max(max(keys_mx[0], keys_mx[1]), max(keys_mx[2], keys_mx[3])),
        max(max(keys_mx[4], keys_mx[5]), max(keys_mx[6], keys_mx[7])),
    ));
    var l = vec4<f32>(0.0);
    for (var t = lane; t < n_trips; t += WG) {
        let pt = keys_p(keys_pb[t], m);
        keys_pb[t] = pt;
        l += pt;
    }
    workgroupBarrier();

    // P V: the lane's head slices of each key's V row.
    var a = KeysRows();
    let last = kv.y - 1;
    for (var t0 = 0u; t0 < n_trips; t0++) {
        let t = keys_skew(t0, lane, n_trips);
        let pt = keys_pb[t];
        let jt = kv.x + i32(t) * kpt;
        var v: array<vec2<u32>, 4>;
        v[0] = keys_rows(h, u32(min(jt, last))).zw;
        if kpt > 1 {
            v[1] = keys_rows(h, u32(min(jt + 1, last))).zw;
        }
        if kpt > 2 {
            v[2] = keys_rows(h, u32(min(jt + 2, last))).zw;
            v[3] = keys_rows(h, u32(min(jt + 3, last))).zw;
        }
        keys_pv_slot(0u, lane, &a, v, pt);
        keys_pv_slot(1u, lane, &a, v, pt);
        keys_pv_slot(2u, lane, &a, v, pt);
        keys_pv_slot(3u, lane, &a, v, pt);
        keys_pv_slot(4u, lane, &a, v, pt);
        keys_pv_slot(5u, lane, &a, v, pt);
        keys_pv_slot(6u, lane, &a, v, pt);
        keys_pv_slot(7u, lane, &a, v, pt);
    }

    // The denominator: the lanes' shares, added in a fixed order (keys_mx is free: every lane
    // read it before the last barrier).
    keys_mx[lane] = l;
    workgroupBarrier();
    let ls = ((keys_mx[0] + keys_mx[1]) + (keys_mx[2] + keys_mx[3])) + ((keys_mx[4] + keys_mx[5]) + (keys_mx[6] + keys_mx[7]));
    keys_store(&a, 0u, e, m.x, keys_rowsum(ls, 0u), lane, direct, o.x, hq.x);
    if row_ok.y && KR > 1u {
        keys_store(&a, 1u, e + row_step, m.y, keys_rowsum(ls, 1u), lane, direct, o.y, hq.y);
    }
    if row_ok.z && KR > 2u {
        keys_store(&a, 2u, e + 2u * row_step, m.z, keys_rowsum(ls, 2u), lane, direct, o.z, hq.z);
    }
    if row_ok.w && KR > 2u {
        keys_store(&a, 3u, e + 3u * row_step, m.w, keys_rowsum(ls, 3u), lane, direct, o.w, hq.w);
    }
}

// RoPE family: rotate pairs (a, b) of each head by theta = pos * inv_freq[i]:
//   a' = (a cos - b sin) * scale,  b' = (b cos + a sin) * scale
// over token-major views [batch, seq, heads, head_dim] (any strides, last dim contiguous).
// Up to two head segments share a dispatch (Q and K inside one fused QKV buffer).
//
// Entry points: `rope_vec4` (below `rope`) for in-place views whose heads are whole, 16-byte
// aligned vec4s, `rope_norm` (end of file) with a per-head RMSNorm first, `rope` for every other
// view, described here; `rope_q` (rope_q.wgsl, its own module) writes quantized KV cache rows.
//
// One invocation of `rope` owns a "column" of one token and a group of heads:
//   - columns < n_quads rotate pairs 2c and 2c+1 (so a packed f16/bf16 word is only ever written by
//     one invocation); their cos/sin are computed once and applied to every head of the group;
//   - columns >= n_quads copy the unrotated tail [rotary_dim, head_dim) two elements at a time
//     (out-of-place only).
//
// Exact angles: the host uploads frac(inv_freq / 2pi) per pair as a 64-bit fixed-point turn
// (hi, lo words). pos * turn mod 1 is computed in u32 arithmetic, which is exact, so the angle is
// known to 2^-32 turns for every 32-bit position; it is reduced to an octant in fixed point, and
// sin/cos are evaluated by short polynomials (Cephes sinf/cosf coefficients) on [-pi/4, pi/4].
//
// Override constants (set by `ops::rope::Variant`):
//   DTYPE    storage dtype (0 f32, 1 f16, 2 bf16)
//   LAYOUT   0 half (pairs i, i + rotary_dim/2), 1 interleaved (pairs 2i, 2i+1)
//   POS_BUF  positions come from the `positions` buffer (else pos_start + s)
//   IN_PLACE read and write the `dst` binding; else read `src` (or `dst` when X_IN_DST)
//   X_IN_DST out-of-place with x and out in one buffer (both reached through `dst`)
//   SINCOS   0 fixed-point turn + polynomial (exact), 1 fixed-point turn + built-in sin/cos,
//            2 f32 angle pos * inv_freq + built-in sin/cos (what most frameworks do),
//            3 host table: freqs[pos * half_rot + k] holds (cos, sin) built in f64
//   WG       workgroup size
// `rope_vec4` reads the same constants; IN_PLACE and X_IN_DST are always (true, false) there.
// Stores of packed halves go through `encode_half4` / `encode_item`: common.wgsl's integer
// encoder in `rope.wgsl`'s module, `pack2x16float` for f16 in `rope_f16_store.wgsl`'s
// (f16_store.wgsl; `ops::rope::Variant::f16_store`).
// Loops (modules are created without naga's loop counters, src/pipeline.rs): over heads and head
// elements by 1 or 2 to uniform bounds.

override DTYPE: u32 = 0u;
override LAYOUT: u32 = 0u;
override POS_BUF: bool = false;
override IN_PLACE: bool = true;
override X_IN_DST: bool = false;
override SINCOS: u32 = 0u;
override WG: u32 = 64u;

struct Params {
    n_tokens: u32,
    seq: u32,
    n_cols: u32,
    n_quads: u32,
    n_hgroups: u32,
    heads_per_group: u32,
    half_rot: u32,
    head_dim: u32,
    // segment A: x (and the whole input when out-of-place)
    a_off: u32,
    a_bstride: u32,
    a_sstride: u32,
    a_hstride: u32,
    a_heads: u32,
    // segment B: a second view rotated in place in the same dispatch (0 heads when absent)
    b_heads: u32,
    b_off: u32,
    b_bstride: u32,
    b_sstride: u32,
    b_hstride: u32,
    // out (out-of-place only)
    o_off: u32,
    o_bstride: u32,
    o_sstride: u32,
    o_hstride: u32,
    // positions
    pos_off: u32,
    pos_bstride: u32,
    pos_sstride: u32,
    pos_start: i32,
    scale: f32,
    // FLAG_* bits below
    flags: u32,
    // rope_vec4 only: vec4 distance between the two halves of a head (LAYOUT 0)
    v_half: u32,
    // row map: first entry of this call in `rows`
    rows_off: u32,
    // multimodal RoPE: pairs [0, sec1) take position row 0 (time), [sec1, sec2) row 1 (height),
    // the rest row 2 (width); sec1 = sec2 = 0xffffffff for 1-D RoPE; interleaved sections
    // (FLAG_MROPE_INTERLEAVED) read them as in pair_pos
    sec1: u32,
    sec2: u32,
    // distance between the position rows (multimodal RoPE)
    pos_rstride: u32,
    // per-head RMSNorm of segments A and B (rope_norm): eps, weight offset, weight element offset
    eps_a: f32,
    eps_b: f32,
    woff_a: f32,
    woff_b: f32,
    wa_off: u32,
    wb_off: u32,
    // rope_q (rope_q.wgsl): the quantized destination's pages (the whole buffer for a contiguous
    // cache): elements and words per page, the word of the scale plane in a page; fp8's scale
    q_page_elems: u32,
    q_page_words: u32,
    q_scale_word: u32,
    q_scale: f32,
    _pad0: u32,
}

// Segment A heads are normalised (weights `wa`) before the rotation (rope_norm).
const FLAG_NORM_A: u32 = 1u;
// Segment B heads are normalised (weights `wb`).
const FLAG_NORM_B: u32 = 2u;
// Output rows come from `rows`: token t's head h goes to dst[rows[rows_off + t] + h * o_hstride];
// an entry 0xffffffff skips the token.
const FLAG_ROW_MAP: u32 = 4u;
// multimodal sections interleave (Qwen3-VL): sec1 = 3h and sec2 = 3w end the height and width
// pairs, k % 3 picks the row
const FLAG_MROPE_INTERLEAVED: u32 = 8u;
const SKIP_ROW: u32 = 0xffffffffu;

struct Freq {
    // frac(inv_freq / 2pi) * 2^64 as (high word, low word); SINCOS 3: bits of f32 (cos, sin)
    turn_hi: u32,
    turn_lo: u32,
    // inv_freq rounded to f32 (SINCOS 2 only)
    inv_freq: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<u32>;
@group(0) @binding(3) var<storage, read> positions: array<i32>;
@group(0) @binding(4) var<storage, read> freqs: array<Freq>;
// The written buffer seen as vec4 words, for `rope_vec4` (in place, 16-byte aligned views).
@group(0) @binding(5) var<storage, read_write> dst4: array<vec4<u32>>;
// Row map (out of place, FLAG_ROW_MAP): first output element of each token.
@group(0) @binding(6) var<storage, read> rows: array<u32>;
// Per-head RMSNorm weights [head_dim] of segments A and B (rope_norm), in the storage dtype.
@group(0) @binding(7) var<storage, read> wa: array<u32>;
@group(0) @binding(8) var<storage, read> wb: array<u32>;

// High 32 bits of the 64-bit product a * b.
fn mul_hi(a: u32, b: u32) -> u32 {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = ((a0 * b0) >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
}

// frac(pos * turn) as a 32-bit fixed-point turn, rounded to nearest.
fn turn_of(pos: i32, f: Freq) -> u32 {
    let neg = pos < 0;
    // |pos| as u32; 0 - u32(pos) is also right for i32 min.
    var m = u32(pos);
    if neg {
        m = 0u - m;
    }
    let lo = m * f.turn_lo;
    // (m * (hi * 2^32 + lo)) mod 2^64, top word; the dropped low word rounds it.
    var t = m * f.turn_hi + mul_hi(m, f.turn_lo) + (lo >> 31u);
    if neg {
        t = 0u - t;
    }
    return t;
}

// 2pi / 2^32: one unit of the 32-bit turn in radians.
const TURN_UNIT: f32 = 1.4629180792671596e-9;

// (cos, sin) of x in [-pi/4, pi/4] (Cephes sinf/cosf, < 1 ulp there).
fn sincos_octant(x: f32) -> vec2<f32> {
    let z = x * x;
    let s = x + x * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
    return vec2<f32>(c, s);
}

// (cos, sin) of pos * inv_freq for pair k.
fn cos_sin(pos: i32, k: u32) -> vec2<f32> {
    if SINCOS == 3u {
        let e = freqs[u32(pos) * p.half_rot + k];
        return vec2<f32>(bitcast<f32>(e.turn_hi), bitcast<f32>(e.turn_lo));
    }
    let f = freqs[k];
    if SINCOS == 2u {
        let a = f32(pos) * f.inv_freq;
        return vec2<f32>(cos(a), sin(a));
    }
    let t = turn_of(pos, f);
    if SINCOS == 1u {
        let a = f32(bitcast<i32>(t)) * TURN_UNIT;
        return vec2<f32>(cos(a), sin(a));
    }
    // Nearest quarter turn q; remainder r in [-2^29, 2^29] units, i.e. [-pi/4, pi/4].
    let q = ((t + 0x20000000u) >> 30u) & 3u;
    let r = bitcast<i32>(t - (q << 30u));
    let cs = sincos_octant(f32(r) * TURN_UNIT);
    switch q {
        case 0u: {
            return cs;
        }
        case 1u: {
            return vec2<f32>(-cs.y, cs.x);
        }
        case 2u: {
            return -cs;
        }
        default: {
            return vec2<f32>(cs.y, -cs.x);
        }
    }
}

// The positions of token (b, s): one per row of a multimodal position tensor, else one splatted.
fn token_pos(b: u32, s: u32) -> vec3<i32> {
    if POS_BUF {
        let i = p.pos_off + b * p.pos_bstride + s * p.pos_sstride;
        if p.sec1 < p.half_rot || (p.flags & FLAG_MROPE_INTERLEAVED) != 0u {
            return vec3<i32>(positions[i], positions[i + p.pos_rstride], positions[i + 2u * p.pos_rstride]);
        }
        return vec3<i32>(positions[i]);
    }
    return vec3<i32>(p.pos_start + i32(s));
}

// The position that rotates pair k: its multimodal section's row (always row 0 for 1-D RoPE).
fn pair_pos(pos: vec3<i32>, k: u32) -> i32 {
    if (p.flags & FLAG_MROPE_INTERLEAVED) != 0u {
        let m = k % 3u;
        return select(select(pos.x, pos.z, m == 2u && k < p.sec2), pos.y, m == 1u && k < p.sec1);
    }
    return select(select(pos.z, pos.y, k < p.sec2), pos.x, k < p.sec1);
}

// First output element of token `tok` through the row map, or SKIP_ROW.
fn mapped_row(tok: u32, o_tok: u32) -> u32 {
    if (p.flags & FLAG_ROW_MAP) == 0u {
        return o_tok;
    }
    return rows[p.rows_off + tok];
}

// Whether head h of a token whose output row starts at element `row` lies inside `dst` (only a
// row map can point outside; the host checks every other view and that a whole token's heads
// fit `dst`, so `row + h * o_hstride` cannot wrap) and, for packed halves, starts on a word.
fn head_fits(row: u32, h: u32) -> bool {
    if (p.flags & FLAG_ROW_MAP) == 0u {
        return true;
    }
    var n = arrayLength(&dst);
    if DTYPE != DT_F32 {
        n = 2u * n;
    }
    let ob = row + h * p.o_hstride;
    return row < n && ob <= n && p.head_dim <= n - ob && (DTYPE == DT_F32 || (ob & 1u) == 0u);
}

fn rd(i: u32) -> u32 {
    if IN_PLACE || X_IN_DST {
        return dst[i];
    }
    return src[i];
}

fn ld(i: u32) -> f32 {
    return bitcast<f32>(rd(i));
}

// Word holding half-precision element e (e even) of the input.
fn ld2(e: u32) -> vec2<f32> {
    return unpack_half2(rd(e >> 1u), DTYPE);
}

fn st(i: u32, v: f32) {
    dst[i] = bitcast<u32>(v);
}

// Half-precision elements e and e + 1 (e even); f16 through `pack2x16float` in the module that
// includes f16_store.wgsl, the integer encoder otherwise (`encode_half4`).
fn st2(e: u32, v: vec2<f32>) {
    dst[e >> 1u] = encode_half4(vec4<f32>(v, 0.0, 0.0), DTYPE).x;
}

// Element indices of pair k (relative to the head start).
fn pair_idx(k: u32) -> vec2<u32> {
    if LAYOUT == 0u {
        return vec2<u32>(k, k + p.half_rot);
    }
    return vec2<u32>(2u * k, 2u * k + 1u);
}

// (a0, b0, a1, b1) of pairs k0 = 2c and k0 + 1 at head base `ib`; pair 1 only when `two`.
fn load_quad(ib: u32, k0: u32, two: bool) -> vec4<f32> {
    let i0 = pair_idx(k0);
    if DTYPE == DT_F32 {
        var v = vec4<f32>(ld(ib + i0.x), ld(ib + i0.y), 0.0, 0.0);
        if two {
            let i1 = pair_idx(k0 + 1u);
            v.z = ld(ib + i1.x);
            v.w = ld(ib + i1.y);
        }
        return v;
    }
    // Packed halves: k0 is even, head bases are even, and half_rot is even for LAYOUT 0 (the
    // host checks), so each word below holds exactly two elements of this quad.
    if LAYOUT == 0u {
        let a = ld2(ib + i0.x);
        let b = ld2(ib + i0.y);
        return vec4<f32>(a.x, b.x, a.y, b.y);
    }
    let w0 = ld2(ib + i0.x);
    var w1 = vec2<f32>(0.0);
    if two {
        w1 = ld2(ib + i0.x + 2u);
    }
    return vec4<f32>(w0, w1);
}

fn store_quad(ob: u32, k0: u32, two: bool, v: vec4<f32>) {
    let i0 = pair_idx(k0);
    if DTYPE == DT_F32 {
        st(ob + i0.x, v.x);
        st(ob + i0.y, v.y);
        if two {
            let i1 = pair_idx(k0 + 1u);
            st(ob + i1.x, v.z);
            st(ob + i1.y, v.w);
        }
        return;
    }
    if LAYOUT == 0u {
        st2(ob + i0.x, vec2<f32>(v.x, v.z));
        st2(ob + i0.y, vec2<f32>(v.y, v.w));
        return;
    }
    st2(ob + i0.x, v.xy);
    if two {
        st2(ob + i0.x + 2u, v.zw);
    }
}

fn rotate(v: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(v.x * cs.x - v.y * cs.y, v.y * cs.x + v.x * cs.y) * p.scale;
}

@compute @workgroup_size(WG)
fn rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let gid = linear_workgroup(wid, nwg) * WG + lid;
    let col = gid % p.n_cols;
    let rest = gid / p.n_cols;
    let hg = rest % p.n_hgroups;
    let tok = rest / p.n_hgroups;
    // No barriers in this kernel, so invocations past the end may simply leave.
    if tok >= p.n_tokens {
        return;
    }
    let b = tok / p.seq;
    let s = tok % p.seq;
    let total_heads = p.a_heads + p.b_heads;
    let h0 = hg * p.heads_per_group;
    let h1 = min(h0 + p.heads_per_group, total_heads);
    let a_tok = p.a_off + b * p.a_bstride + s * p.a_sstride;
    let b_tok = p.b_off + b * p.b_bstride + s * p.b_sstride;
    let o_tok = mapped_row(tok, p.o_off + b * p.o_bstride + s * p.o_sstride);
    if o_tok == SKIP_ROW {
        return;
    }

    if col < p.n_quads {
        let pos = token_pos(b, s);
        let k0 = 2u * col;
        let two = k0 + 1u < p.half_rot;
        let cs0 = cos_sin(pair_pos(pos, k0), k0);
        var cs1 = vec2<f32>(1.0, 0.0);
        if two {
            cs1 = cos_sin(pair_pos(pos, k0 + 1u), k0 + 1u);
        }
        for (var h = h0; h < h1; h++) {
            var ib: u32;
            var ob: u32;
            if h < p.a_heads {
                ib = a_tok + h * p.a_hstride;
                ob = o_tok + h * p.o_hstride;
            } else {
                ib = b_tok + (h - p.a_heads) * p.b_hstride;
                ob = ib;
            }
            if IN_PLACE {
                ob = ib;
            }
            if !head_fits(o_tok, h) {
                continue;
            }
            let v = load_quad(ib, k0, two);
            let r0 = rotate(v.xy, cs0);
            let r1 = rotate(v.zw, cs1);
            store_quad(ob, k0, two, vec4<f32>(r0, r1));
        }
    } else {
        // Unrotated tail, copied when out-of-place (n_cols == n_quads in place).
        let e = 2u * p.half_rot + 2u * (col - p.n_quads);
        for (var h = h0; h < h1; h++) {
            let ib = a_tok + h * p.a_hstride + e;
            let ob = o_tok + h * p.o_hstride + e;
            if !head_fits(o_tok, h) {
                continue;
            }
            if DTYPE == DT_F32 {
                st(ob, ld(ib));
                if e + 1u < p.head_dim {
                    st(ob + 1u, ld(ib + 1u));
                }
            } else {
                dst[ob >> 1u] = rd(ib >> 1u);
            }
        }
    }
}

// ---- rope_vec4: the fast path for in-place views whose heads are whole, 16-byte aligned vec4s ----
//
// Taken when every offset and stride is a multiple of 16 bytes and rotary_dim is a multiple of
// 2 x (elements per vec4); the host then gives offsets and strides in vec4 units. One invocation
// owns a "unit" of one token and a group of heads: P pairs (4 for f32, 8 for f16/bf16) whose cos
// and sin it computes once, with the attention factor folded in, and then, for every head of the
// group, two vec4 loads and two vec4 stores:
//   - LAYOUT 0 (half): the vec4 holding the a's of pairs P*j.. and the one holding their b's,
//     v_half vec4s later;
//   - LAYOUT 1 (interleaved): the two consecutive vec4s holding (a, b) of pairs P*j...
// On CPU adapters a vec4 access costs about what a scalar one does, so this moves 4x (f32) or
// 8x (halves) the bytes per memory instruction of the general path, and its loop over heads has
// no per-head branch or division.

// cos and sin of four consecutive pairs starting at k, times the attention factor.
struct CosSin4 {
    c: vec4<f32>,
    s: vec4<f32>,
}

fn cos_sin4(pos: vec3<i32>, k: u32) -> CosSin4 {
    let e0 = cos_sin(pair_pos(pos, k), k);
    let e1 = cos_sin(pair_pos(pos, k + 1u), k + 1u);
    let e2 = cos_sin(pair_pos(pos, k + 2u), k + 2u);
    let e3 = cos_sin(pair_pos(pos, k + 3u), k + 3u);
    return CosSin4(
        vec4<f32>(e0.x, e1.x, e2.x, e3.x) * p.scale,
        vec4<f32>(e0.y, e1.y, e2.y, e3.y) * p.scale,
    );
}

// Interleaved (a0, b0, a1, b1) rotated by the cos/sin of its two pairs.
fn rot_il(v: vec4<f32>, c: vec2<f32>, s: vec2<f32>) -> vec4<f32> {
    return v * vec4<f32>(c.x, c.x, c.y, c.y) + v.yxwz * vec4<f32>(-s.x, s.x, -s.y, s.y);
}

// Rotate the unit whose two vec4 words are at u0 and u1.
fn rotate_unit(u0: u32, u1: u32, cs0: CosSin4, cs1: CosSin4) {
    if DTYPE == DT_F32 {
        let x = bitcast<vec4<f32>>(dst4[u0]);
        let y = bitcast<vec4<f32>>(dst4[u1]);
        if LAYOUT == 0u {
            dst4[u0] = bitcast<vec4<u32>>(x * cs0.c - y * cs0.s);
            dst4[u1] = bitcast<vec4<u32>>(y * cs0.c + x * cs0.s);
        } else {
            dst4[u0] = bitcast<vec4<u32>>(rot_il(x, cs0.c.xy, cs0.s.xy));
            dst4[u1] = bitcast<vec4<u32>>(rot_il(y, cs0.c.zw, cs0.s.zw));
        }
        return;
    }
    // Packed halves: each 16-byte item holds 8 values (`Item` in common.wgsl): the a's (x) and b's
    // (y) of pairs k..k+7 for LAYOUT 0; (a, b) of pairs k..k+3 (x) and k+4..k+7 (y) for LAYOUT 1.
    let x = unpack_item(dst4[u0], DTYPE);
    let y = unpack_item(dst4[u1], DTYPE);
    if LAYOUT == 0u {
        dst4[u0] = encode_item(Item(x.lo * cs0.c - y.lo * cs0.s, x.hi * cs1.c - y.hi * cs1.s), DTYPE);
        dst4[u1] = encode_item(Item(y.lo * cs0.c + x.lo * cs0.s, y.hi * cs1.c + x.hi * cs1.s), DTYPE);
    } else {
        let rx = Item(rot_il(x.lo, cs0.c.xy, cs0.s.xy), rot_il(x.hi, cs0.c.zw, cs0.s.zw));
        let ry = Item(rot_il(y.lo, cs1.c.xy, cs1.s.xy), rot_il(y.hi, cs1.c.zw, cs1.s.zw));
        dst4[u0] = encode_item(rx, DTYPE);
        dst4[u1] = encode_item(ry, DTYPE);
    }
}

@compute @workgroup_size(WG)
fn rope_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let gid = linear_workgroup(wid, nwg) * WG + lid;
    let unit = gid % p.n_cols;
    let rest = gid / p.n_cols;
    let hg = rest % p.n_hgroups;
    let tok = rest / p.n_hgroups;
    // No barriers in this kernel, so invocations past the end may simply leave.
    if tok >= p.n_tokens {
        return;
    }
    let b = tok / p.seq;
    let s = tok % p.seq;
    let pos = token_pos(b, s);
    var per = 4u;
    if DTYPE != DT_F32 {
        per = 8u;
    }
    let k = unit * per;
    let cs0 = cos_sin4(pos, k);
    var cs1 = cs0;
    if DTYPE != DT_F32 {
        cs1 = cos_sin4(pos, k + 4u);
    }
    var d0 = 2u * unit;
    var d1 = 2u * unit + 1u;
    if LAYOUT == 0u {
        d0 = unit;
        d1 = unit + p.v_half;
    }
    let total_heads = p.a_heads + p.b_heads;
    let h0 = hg * p.heads_per_group;
    let h1 = min(h0 + p.heads_per_group, total_heads);
    // Segment A heads [h0, min(h1, a_heads)), then segment B's.
    var ia = p.a_off + b * p.a_bstride + s * p.a_sstride + h0 * p.a_hstride;
    for (var h = h0; h < min(h1, p.a_heads); h++) {
        rotate_unit(ia + d0, ia + d1, cs0, cs1);
        ia += p.a_hstride;
    }
    let hb = max(h0, p.a_heads);
    var ib = p.b_off + b * p.b_bstride + s * p.b_sstride + (hb - p.a_heads) * p.b_hstride;
    for (var h = hb; h < h1; h++) {
        rotate_unit(ib + d0, ib + d1, cs0, cs1);
        ib += p.b_hstride;
    }
}

// ---- rope_norm: per-head RMSNorm, then the rotation (Qwen3, Gemma 3 QK-norm) ----
//
// One invocation per (token, group of up to NORM_GROUP heads): first each head's sum of squares
// in f32 (kept in a private array), then, pair by pair, cos/sin computed once and applied to
// every head of the group after normalising (x * inverseSqrt(mean(x^2) + eps) * (w + offset));
// the unrotated tail is normalised too; one rounding to the storage dtype at the end. A head is
// read twice (at most 1 KiB, so the second read hits the cache). A segment without FLAG_NORM_*
// is only rotated (inv 1, weight 1), so Q and K with one norm still share a dispatch. A group
// owns whole heads, so packed words and the norm need no cross-invocation traffic; it shares
// cos/sin the way `rope` shares them across its group of heads.

const NORM_GROUP: u32 = 8u;

// Weight of element e of a head (segment B when `seg_b`), plus the weight offset.
fn norm_weight(seg_b: bool, e: u32) -> f32 {
    var off = p.wa_off;
    var add = p.woff_a;
    if seg_b {
        off = p.wb_off;
        add = p.woff_b;
    }
    let i = off + e;
    var w: f32;
    if DTYPE == DT_F32 {
        if seg_b {
            w = bitcast<f32>(wb[i]);
        } else {
            w = bitcast<f32>(wa[i]);
        }
    } else {
        var word: u32;
        if seg_b {
            word = wb[i >> 1u];
        } else {
            word = wa[i >> 1u];
        }
        let v = unpack_half2(word, DTYPE);
        w = select(v.x, v.y, (i & 1u) != 0u);
    }
    return w + add;
}

// The weights of the quad (pairs k0, k0 + 1) of a segment, or ones when it is not normalised.
fn quad_weights(seg_b: bool, k0: u32, two: bool) -> vec4<f32> {
    var flag = FLAG_NORM_A;
    if seg_b {
        flag = FLAG_NORM_B;
    }
    if (p.flags & flag) == 0u {
        return vec4<f32>(1.0);
    }
    let i0 = pair_idx(k0);
    var w = vec4<f32>(norm_weight(seg_b, i0.x), norm_weight(seg_b, i0.y), 1.0, 1.0);
    if two {
        let i1 = pair_idx(k0 + 1u);
        w.z = norm_weight(seg_b, i1.x);
        w.w = norm_weight(seg_b, i1.y);
    }
    return w;
}

// Where head h of token (b, s) is read and written; `ok` is false for a head a row map skips.
struct HeadAt {
    ib: u32,
    ob: u32,
    seg_b: bool,
    ok: bool,
}

fn head_at(b: u32, s: u32, h: u32, row: u32) -> HeadAt {
    var at: HeadAt;
    if h >= p.a_heads {
        at.ib = p.b_off + b * p.b_bstride + s * p.b_sstride + (h - p.a_heads) * p.b_hstride;
        at.ob = at.ib;
        at.seg_b = true;
        at.ok = true;
    } else {
        at.ib = p.a_off + b * p.a_bstride + s * p.a_sstride + h * p.a_hstride;
        at.ob = row + h * p.o_hstride;
        at.seg_b = false;
        at.ok = head_fits(row, h);
    }
    if IN_PLACE {
        at.ob = at.ib;
    }
    return at;
}

// 1 / RMS of the head whose input starts at element ib (rope_norm and rope_q).
fn head_inv_rms(ib: u32, eps: f32) -> f32 {
    var ss = 0.0;
    if DTYPE == DT_F32 {
        for (var e = 0u; e < p.head_dim; e++) {
            let v = ld(ib + e);
            ss += v * v;
        }
    } else {
        for (var e = 0u; e < p.head_dim; e += 2u) {
            let v = ld2(ib + e);
            ss += dot(v, v);
        }
    }
    return inverseSqrt(ss / f32(p.head_dim) + eps);
}

// Where invocation gid of a kernel with one invocation per (token, head group) works (rope_norm,
// rope_q): the token's batch row b and position s in it, the head group, and the token's first
// output element; `ok` is false past the last token and for a token the row map skips.
struct GroupAt {
    b: u32,
    s: u32,
    hg: u32,
    row: u32,
    ok: bool,
}

fn group_at(gid: u32) -> GroupAt {
    var g: GroupAt;
    g.hg = gid % p.n_hgroups;
    let tok = gid / p.n_hgroups;
    g.ok = tok < p.n_tokens;
    if g.ok {
        g.b = tok / p.seq;
        g.s = tok % p.seq;
        g.row = mapped_row(tok, p.o_off + g.b * p.o_bstride + g.s * p.o_sstride);
        g.ok = g.row != SKIP_ROW;
    }
    return g;
}

@compute @workgroup_size(WG)
fn rope_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = group_at(linear_workgroup(wid, nwg) * WG + lid);
    // No barriers in this kernel, so invocations past the end may simply leave. Segment B (k)
    // exists only without a row map, so a skipped row skips every head.
    if !g.ok {
        return;
    }
    let b = g.b;
    let s = g.s;
    let row = g.row;
    let h0 = g.hg * p.heads_per_group;
    let h1 = min(h0 + min(p.heads_per_group, NORM_GROUP), p.a_heads + p.b_heads);
    let hd = p.head_dim;

    var inv: array<f32, NORM_GROUP>;
    for (var h = h0; h < h1; h++) {
        let at = head_at(b, s, h, row);
        var flag = FLAG_NORM_A;
        var eps = p.eps_a;
        if at.seg_b {
            flag = FLAG_NORM_B;
            eps = p.eps_b;
        }
        var r = 1.0;
        if at.ok && (p.flags & flag) != 0u {
            r = head_inv_rms(at.ib, eps);
        }
        inv[h - h0] = r;
    }

    let pos = token_pos(b, s);
    for (var k0 = 0u; k0 < p.half_rot; k0 += 2u) {
        let two = k0 + 1u < p.half_rot;
        let cs0 = cos_sin(pair_pos(pos, k0), k0);
        var cs1 = vec2<f32>(1.0, 0.0);
        if two {
            cs1 = cos_sin(pair_pos(pos, k0 + 1u), k0 + 1u);
        }
        let wa4 = quad_weights(false, k0, two);
        let wb4 = quad_weights(true, k0, two);
        for (var h = h0; h < h1; h++) {
            let at = head_at(b, s, h, row);
            if !at.ok {
                continue;
            }
            var w = wa4;
            if at.seg_b {
                w = wb4;
            }
            let v = load_quad(at.ib, k0, two) * inv[h - h0] * w;
            store_quad(at.ob, k0, two, vec4<f32>(rotate(v.xy, cs0), rotate(v.zw, cs1)));
        }
    }

    // The unrotated tail: normalised (the norm covers the whole head), copied out of place.
    for (var h = h0; h < h1; h++) {
        let at = head_at(b, s, h, row);
        var flag = FLAG_NORM_A;
        if at.seg_b {
            flag = FLAG_NORM_B;
        }
        let normed = (p.flags & flag) != 0u;
        if !at.ok || (!normed && IN_PLACE) {
            continue;
        }
        let r = inv[h - h0];
        if DTYPE == DT_F32 {
            for (var e = 2u * p.half_rot; e < hd; e++) {
                var v = ld(at.ib + e);
                if normed {
                    v = v * r * norm_weight(at.seg_b, e);
                }
                st(at.ob + e, v);
            }
        } else {
            for (var e = 2u * p.half_rot; e < hd; e += 2u) {
                if normed {
                    let w = vec2<f32>(norm_weight(at.seg_b, e), norm_weight(at.seg_b, e + 1u));
                    st2(at.ob + e, ld2(at.ib + e) * r * w);
                } else {
                    dst[(at.ob + e) >> 1u] = rd((at.ib + e) >> 1u);
                }
            }
        }
    }
}

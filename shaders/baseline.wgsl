// Unfused baselines that the benchmark runs beside the real kernels, so the gain from fusion
// shows. They are deliberately straightforward, not deliberately slow: the split into passes is
// the only thing they give away.
//
// RMSNorm in two dispatches over contiguous rows of `n` elements:
//   rms_norm_reduce  one workgroup per row: inv_rms[row] = 1 / sqrt(mean(x*x) + eps) to a scratch
//                    buffer (tree reduction in workgroup memory)
//   rms_norm_scale   one invocation per 32-bit word: y = x * inv_rms[row] * (w + weight_offset)
//
// Override constants:
//   DTYPE  storage dtype (0 f32, 1 f16, 2 bf16); half types are packed two per word
//   WG     workgroup size, a power of two <= 256
// Loops (modules are created without naga's loop counters, src/pipeline.rs): by 1 or by WG to
// uniform bounds; the reductions halve their stride down to 0.

override DTYPE: u32 = 0u;
override WG: u32 = 256u;

struct NormParams {
    n_rows: u32,
    // elements per row (even for half types, so a word never spans two rows)
    n: u32,
    eps: f32,
    weight_offset: f32,
}

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read_write> inv_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<u32>;
@group(0) @binding(5) var<storage, read> inv_in: array<f32>;

// Elements per 32-bit word.
fn per_word() -> u32 {
    if DTYPE == DT_F32 {
        return 1u;
    }
    return 2u;
}

// The (one or two) values in a word, as f32; lane y is 0 for f32.
fn unpack_word(w: u32) -> vec2<f32> {
    if DTYPE == DT_F32 {
        return vec2<f32>(bitcast<f32>(w), 0.0);
    }
    return unpack_half2(w, DTYPE);
}

fn pack_word(v: vec2<f32>) -> u32 {
    if DTYPE == DT_F32 {
        return bitcast<u32>(v.x);
    }
    return pack_half2(v, DTYPE);
}

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(WG)
fn rms_norm_reduce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if row >= p.n_rows {
        return;
    }
    let words = p.n / per_word();
    var ss = 0.0;
    for (var i = lid; i < words; i += WG) {
        let v = unpack_word(src[row * words + i]);
        ss += dot(v, v);
    }
    partial[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        inv_out[row] = 1.0 / sqrt(partial[0] / f32(p.n) + p.eps);
    }
}

@compute @workgroup_size(WG)
fn rms_norm_scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    let words = p.n / per_word();
    if i >= p.n_rows * words {
        return;
    }
    let row = i / words;
    let col = i % words;
    let w = unpack_word(weight[col]) + vec2<f32>(p.weight_offset);
    dst[i] = pack_word(unpack_word(src[i]) * inv_in[row] * w);
}

// RoPE (rotate-half pairs (i, i + rotary_dim / 2), rotary_dim = head_dim, positions
// start .. start + seq) in two dispatches over a contiguous [seq, heads, head_dim] view, in place:
//   rope_table   one invocation per (token, pair): (cos, sin) of f32(pos) * inv_freq[i] to a table
//   rope_rotate  one invocation per (token, head, two neighbouring pairs), so that a packed half
//                word is only ever written by one invocation; reads the table

struct RopeParams {
    seq: u32,
    heads: u32,
    head_dim: u32,
    start: u32,
}

@group(0) @binding(7) var<uniform> rp: RopeParams;
@group(0) @binding(8) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(9) var<storage, read_write> table_out: array<vec2<f32>>;
@group(0) @binding(10) var<storage, read> table_in: array<vec2<f32>>;
@group(0) @binding(11) var<storage, read_write> xs: array<u32>;

// Elements e and e + 1 (e even) of `xs`.
fn load_pair(e: u32) -> vec2<f32> {
    if DTYPE == DT_F32 {
        return vec2<f32>(bitcast<f32>(xs[e]), bitcast<f32>(xs[e + 1u]));
    }
    return unpack_half2(xs[e / 2u], DTYPE);
}

fn store_pair(e: u32, v: vec2<f32>) {
    if DTYPE == DT_F32 {
        xs[e] = bitcast<u32>(v.x);
        xs[e + 1u] = bitcast<u32>(v.y);
    } else {
        xs[e / 2u] = pack_half2(v, DTYPE);
    }
}

@compute @workgroup_size(WG)
fn rope_table(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half_rot = rp.head_dim / 2u;
    let i = linear_workgroup(wid, nwg) * WG + lid;
    if i >= rp.seq * half_rot {
        return;
    }
    let token = i / half_rot;
    let angle = f32(rp.start + token) * inv_freq[i % half_rot];
    table_out[i] = vec2<f32>(cos(angle), sin(angle));
}

@compute @workgroup_size(WG)
fn rope_rotate(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half_rot = rp.head_dim / 2u;
    let couples = half_rot / 2u;
    let i = linear_workgroup(wid, nwg) * WG + lid;
    if i >= rp.seq * rp.heads * couples {
        return;
    }
    let j = 2u * (i % couples);
    let token_head = i / couples;
    let token = token_head / rp.heads;
    let base = token_head * rp.head_dim;
    let a = load_pair(base + j);
    let b = load_pair(base + j + half_rot);
    let cs0 = table_in[token * half_rot + j];
    let cs1 = table_in[token * half_rot + j + 1u];
    let c = vec2<f32>(cs0.x, cs1.x);
    let s = vec2<f32>(cs0.y, cs1.y);
    store_pair(base + j, a * c - b * s);
    store_pair(base + j + half_rot, b * c + a * s);
}

// Attention, unfused, f32, batch 1, contiguous [tokens, heads, head_dim] views, the way a
// framework without a fused kernel runs it:
//   attn_repeat_kv  K or V [kv_len, n_kv_heads, d] -> [kv_len, n_heads, d] (K/V repeated per head)
//   attn_scores     one invocation per (head, query, key): scale * q.k, or -3e38 where masked,
//                   into an explicit [n_heads, q_len, kv_len] score matrix
//   attn_softmax    one invocation per score row, in place
//   attn_pv         one invocation per output element: sum over keys of p * v

struct AttnParams {
    q_len: u32,
    kv_len: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // position of query 0 (kv_len - q_len for prefill)
    q_offset: u32,
    causal: u32,
    scale: f32,
}

@group(0) @binding(12) var<uniform> ap: AttnParams;
@group(0) @binding(13) var<storage, read> kv_src: array<f32>;
@group(0) @binding(14) var<storage, read_write> kv_rep: array<f32>;
@group(0) @binding(15) var<storage, read> q_in: array<f32>;
@group(0) @binding(16) var<storage, read> k_rep: array<f32>;
@group(0) @binding(17) var<storage, read_write> scores: array<f32>;
@group(0) @binding(18) var<storage, read> p_in: array<f32>;
@group(0) @binding(19) var<storage, read> v_rep: array<f32>;
@group(0) @binding(20) var<storage, read_write> o_out: array<f32>;

@compute @workgroup_size(WG)
fn attn_repeat_kv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    let hd = ap.head_dim;
    if i >= ap.kv_len * ap.n_heads * hd {
        return;
    }
    let j = i / (ap.n_heads * hd);
    let h = (i / hd) % ap.n_heads;
    let g = ap.n_heads / ap.n_kv_heads;
    kv_rep[i] = kv_src[(j * ap.n_kv_heads + h / g) * hd + i % hd];
}

@compute @workgroup_size(WG)
fn attn_scores(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    if i >= ap.n_heads * ap.q_len * ap.kv_len {
        return;
    }
    let h = i / (ap.q_len * ap.kv_len);
    let t = (i / ap.kv_len) % ap.q_len;
    let j = i % ap.kv_len;
    let hd = ap.head_dim;
    let qb = (t * ap.n_heads + h) * hd;
    let kb = (j * ap.n_heads + h) * hd;
    var s = 0.0;
    for (var d = 0u; d < hd; d++) {
        s += q_in[qb + d] * k_rep[kb + d];
    }
    s *= ap.scale;
    if ap.causal != 0u && j > t + ap.q_offset {
        s = -3.0e38;
    }
    scores[i] = s;
}

@compute @workgroup_size(WG)
fn attn_softmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg) * WG + lid;
    if row >= ap.n_heads * ap.q_len {
        return;
    }
    let base = row * ap.kv_len;
    var m = -3.0e38;
    for (var j = 0u; j < ap.kv_len; j++) {
        m = max(m, scores[base + j]);
    }
    var l = 0.0;
    for (var j = 0u; j < ap.kv_len; j++) {
        let e = exp(scores[base + j] - m);
        scores[base + j] = e;
        l += e;
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var j = 0u; j < ap.kv_len; j++) {
        scores[base + j] *= inv;
    }
}

@compute @workgroup_size(WG)
fn attn_pv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    let hd = ap.head_dim;
    if i >= ap.q_len * ap.n_heads * hd {
        return;
    }
    let t = i / (ap.n_heads * hd);
    let h = (i / hd) % ap.n_heads;
    let d = i % hd;
    let pb = (h * ap.q_len + t) * ap.kv_len;
    var acc = 0.0;
    for (var j = 0u; j < ap.kv_len; j++) {
        acc += p_in[pb + j] * v_rep[(j * ap.n_heads + h) * hd + d];
    }
    o_out[i] = acc;
}

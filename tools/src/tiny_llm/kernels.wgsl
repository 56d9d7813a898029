// The model's own small kernels; RMSNorm, RoPE, attention and the KV cache are the crate's.
//
// Every tensor is an array of 32-bit words: f32 elements one per word, f16/bf16 elements two per
// word (element 0 in the low half), as the crate stores them. One invocation writes two adjacent
// elements, so a packed half word always has a single writer. Arithmetic is f32; each output is
// rounded once to the storage dtype.

// 0 = f32, 1 = f16, 2 = bf16: the storage of every tensor of the dispatch.
override DTYPE: u32 = 0u;
// gate activation of `gated_act`: 0 = SiLU, 1 = GELU with the tanh approximation.
override ACT: u32 = 0u;
// whether `matmul` adds a bias.
override BIAS: u32 = 0u;

struct Params {
    rows: u32,
    cols: u32,
    inner: u32,
    // groups of 64 invocations along x, for dispatches wider than 65535 groups
    groups_x: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<u32>;
@group(0) @binding(5) var<storage, read> ids: array<u32>;

fn half_to_f32(bits: u32) -> f32 {
    if DTYPE == 2u {
        return bitcast<f32>(bits << 16u);
    }
    return unpack2x16float(bits).x;
}

// Round to nearest even; NaN stays NaN.
fn bf16_bits(v: f32) -> u32 {
    let u = bitcast<u32>(v);
    if (u & 0x7fffffffu) > 0x7f800000u {
        return (u >> 16u) | 0x40u;
    }
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

fn word_elem(word: u32, i: u32) -> f32 {
    return half_to_f32(select(word & 0xffffu, word >> 16u, (i & 1u) == 1u));
}

fn ld_a(i: u32) -> f32 {
    if DTYPE == 0u {
        return bitcast<f32>(a[i]);
    }
    return word_elem(a[i >> 1u], i);
}
fn ld_b(i: u32) -> f32 {
    if DTYPE == 0u {
        return bitcast<f32>(b[i]);
    }
    return word_elem(b[i >> 1u], i);
}
fn ld_bias(i: u32) -> f32 {
    if DTYPE == 0u {
        return bitcast<f32>(bias[i]);
    }
    return word_elem(bias[i >> 1u], i);
}
fn ld_y(i: u32) -> f32 {
    if DTYPE == 0u {
        return bitcast<f32>(y[i]);
    }
    return word_elem(y[i >> 1u], i);
}

// Store elements i and i + 1 (i even).
fn st_y2(i: u32, v0: f32, v1: f32) {
    if DTYPE == 0u {
        y[i] = bitcast<u32>(v0);
        y[i + 1u] = bitcast<u32>(v1);
    } else if DTYPE == 2u {
        y[i >> 1u] = bf16_bits(v0) | (bf16_bits(v1) << 16u);
    } else {
        y[i >> 1u] = pack2x16float(vec2<f32>(v0, v1));
    }
}

// Index of this invocation's pair, or -1 past the end.
fn pair_index(gid: vec3<u32>, pairs: u32) -> i32 {
    let i = gid.x + gid.y * p.groups_x * 64u;
    if i >= pairs {
        return -1;
    }
    return i32(i);
}

// y[r, c] = sum_k a[r, k] * b[c, k] (+ bias[c]): a `[rows, inner]`, b `[cols, inner]` as HF stores
// a Linear weight (out, in), y `[rows, cols]`.
@compute @workgroup_size(64)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_cols = p.cols / 2u;
    let i = pair_index(gid, p.rows * half_cols);
    if i < 0 {
        return;
    }
    let r = u32(i) / half_cols;
    let c = (u32(i) % half_cols) * 2u;
    let xa = r * p.inner;
    let w0 = c * p.inner;
    let w1 = w0 + p.inner;
    var s0 = 0.0;
    var s1 = 0.0;
    for (var k = 0u; k < p.inner; k++) {
        let x = ld_a(xa + k);
        s0 += x * ld_b(w0 + k);
        s1 += x * ld_b(w1 + k);
    }
    if BIAS == 1u {
        s0 += ld_bias(c);
        s1 += ld_bias(c + 1u);
    }
    st_y2(r * p.cols + c, s0, s1);
}

// y[t, :] = a[ids[t], :] * scale: a `[vocab, cols]` (rows = vocab), y `[tokens, cols]`. An id past
// the table reads row 0 (the host refuses such ids before recording).
@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_cols = p.cols / 2u;
    let i = pair_index(gid, p.inner * half_cols);
    if i < 0 {
        return;
    }
    let t = u32(i) / half_cols;
    let c = (u32(i) % half_cols) * 2u;
    var id = ids[t];
    if id >= p.rows {
        id = 0u;
    }
    let src = id * p.cols + c;
    st_y2(t * p.cols + c, ld_a(src) * p.scale, ld_a(src + 1u) * p.scale);
}

fn act(g: f32) -> f32 {
    if ACT == 1u {
        // HF gelu_pytorch_tanh: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
        let u = clamp(0.7978845608028654 * (g + 0.044715 * g * g * g), -15.0, 15.0);
        return 0.5 * g * (1.0 + tanh(u));
    }
    return g / (1.0 + exp(-g));
}

// y[t, c] = act(a[t, c]) * a[t, cols + c]: a `[rows, 2 * cols]` holds gate then up (HF's order in
// Phi-3's fused gate_up_proj), y `[rows, cols]`.
@compute @workgroup_size(64)
fn gated_act(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_cols = p.cols / 2u;
    let i = pair_index(gid, p.rows * half_cols);
    if i < 0 {
        return;
    }
    let r = u32(i) / half_cols;
    let c = (u32(i) % half_cols) * 2u;
    let g = r * 2u * p.cols + c;
    let u = g + p.cols;
    st_y2(r * p.cols + c, act(ld_a(g)) * ld_a(u), act(ld_a(g + 1u)) * ld_a(u + 1u));
}

// In place: y = scale * tanh(y / scale) (Gemma 2's final logit softcap), y `[rows, cols]`.
@compute @workgroup_size(64)
fn softcap(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_cols = p.cols / 2u;
    let i = pair_index(gid, p.rows * half_cols);
    if i < 0 {
        return;
    }
    let e = u32(i) * 2u;
    // tanh saturates to +-1 in f32 well before 15; the clamp keeps exp-based tanh from inf/inf.
    let v0 = p.scale * tanh(clamp(ld_y(e) / p.scale, -15.0, 15.0));
    let v1 = p.scale * tanh(clamp(ld_y(e + 1u) / p.scale, -15.0, 15.0));
    st_y2(e, v0, v1);
}

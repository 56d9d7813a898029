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

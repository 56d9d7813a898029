// Shared by the attention kernels (prepended to attention_prefill.wgsl and attention_decode.wgsl
// by `Shader::source`, after common.wgsl): override constants, parameters, the input bindings
// and the load, store, mask and logit helpers. Each kernel file declares its own output bindings
// (`out_buf` and, for decode, the split partials); WGSL resolves module-scope names in any order.

override DTYPE: u32 = 0u;
override WG: u32 = 64u;
override TILE_V4: u32 = 512u;
// head_dim / 4, a compile-time constant so that the loops over a head have a fixed trip count
// and the per-invocation q / acc arrays can live in registers.
override HD4: u32 = 32u;

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
    window: u32,
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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q_buf: array<u32>;
@group(0) @binding(2) var<storage, read> k_buf: array<u32>;
@group(0) @binding(3) var<storage, read> v_buf: array<u32>;
@group(0) @binding(4) var<storage, read> sinks: array<f32>;


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

// Four elements starting at element e (e is a multiple of 2 for half types).
fn load4(b: u32, e: u32) -> vec4<f32> {
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

fn visible(j: i32, pos: i32) -> bool {
    var ok = true;
    if p.causal != 0u {
        ok = j <= pos;
    }
    if p.window != 0u {
        ok = ok && j > pos - i32(p.window);
    }
    return ok;
}


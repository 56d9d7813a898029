// KV cache append: copy new K and V rows [batch, n_new, n_kv_heads, head_dim] (any outer strides,
// any storage dtype) into the cache, laid out [batch, n_kv_heads, capacity, head_dim], at
// positions pos .. pos + n_new. One invocation per (batch, token, kv head, 4 elements) writes
// both K and V, so the whole batch is one dispatch.
//
// `kv_append_q` writes a quantized cache (q8_0, q4_0, fp8 e4m3; layout in src/kv_format.rs),
// quantizing in the same pass: one invocation per (batch, token, kv head, pair of blocks) for the
// block formats (it also writes the pair's scale word), per 4 values for fp8.
//
// Override constants (set by `ops::kv_cache`):
//   SRC_DTYPE  storage dtype of the new rows (0 f32, 1 f16, 2 bf16)
//   DST_DTYPE  storage format of the cache (KvFormat::shader_code: a dtype, or 3 q8_0, 4 q4_0,
//              5 fp8 e4m3 for kv_append_q)
//   WG         workgroup size
//   WRITE_K    false when RoPE writes the rotated K rows into the cache itself (`rope`'s
//              out-of-place view); kv_append_q reads it as the uniform `q_write_k` instead (RoPE's
//              `rope_q` writes a quantized cache's K), so that its append with and without K is
//              one pipeline, one cold compile fewer

override SRC_DTYPE: u32 = 0u;
override DST_DTYPE: u32 = 0u;
override WG: u32 = 64u;
override WRITE_K: bool = true;

struct Params {
    batch: u32,
    n_new: u32,
    n_kv_heads: u32,
    head_dim: u32,
    pos: u32,
    capacity: u32,
    k_off: u32,
    k_sb: u32,
    k_st: u32,
    k_sh: u32,
    v_off: u32,
    v_sb: u32,
    v_st: u32,
    v_sh: u32,
    // Quantized caches: word index of the scale plane, fp8's per-tensor scales of K and V.
    scale_plane: u32,
    k_scale: f32,
    v_scale: f32,
    // kv_append_q: 0 when RoPE's rope_q writes K (V only), else 1 (WRITE_K as a uniform)
    q_write_k: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> k_dst: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_dst: array<u32>;

// kv_quant_store.wgsl's store seam.
fn kv_put(is_v: bool, i: u32, w: u32) {
    if is_v {
        v_dst[i] = w;
    } else {
        k_dst[i] = w;
    }
}

fn store4(is_v: bool, e: u32, v: vec4<f32>) {
    if DST_DTYPE == DT_F32 {
        kv_put(is_v, e, bitcast<u32>(v.x));
        kv_put(is_v, e + 1u, bitcast<u32>(v.y));
        kv_put(is_v, e + 2u, bitcast<u32>(v.z));
        kv_put(is_v, e + 3u, bitcast<u32>(v.w));
        return;
    }
    let h = e >> 1u;
    let w = pack_half4(v, DST_DTYPE);
    kv_put(is_v, h, w.x);
    kv_put(is_v, h + 1u, w.y);
}

@compute @workgroup_size(WG)
fn kv_append(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let hd4 = p.head_dim / 4u;
    let idx = linear_workgroup(wid, nwg) * WG + lid;
    if idx >= p.batch * p.n_new * p.n_kv_heads * hd4 {
        return;
    }
    let d = 4u * (idx % hd4);
    var rest = idx / hd4;
    let h = rest % p.n_kv_heads;
    rest /= p.n_kv_heads;
    let t = rest % p.n_new;
    let b = rest / p.n_new;
    let dst = ((b * p.n_kv_heads + h) * p.capacity + p.pos + t) * p.head_dim + d;
    if WRITE_K {
        store4(false, dst, load4(false, p.k_off + b * p.k_sb + t * p.k_st + h * p.k_sh + d));
    }
    store4(true, dst, load4(true, p.v_off + b * p.v_sb + t * p.v_st + h * p.v_sh + d));
}

// Element offset of the new row (token t, kv head h, sequence b) in the K or V source.
fn src_row(is_v: bool, b: u32, t: u32, h: u32) -> u32 {
    if is_v {
        return p.v_off + b * p.v_sb + t * p.v_st + h * p.v_sh;
    }
    return p.k_off + b * p.k_sb + t * p.k_st + h * p.k_sh;
}

@compute @workgroup_size(WG)
fn kv_append_q(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let units = quant_units(DST_DTYPE, p.head_dim);
    let idx = linear_workgroup(wid, nwg) * WG + lid;
    if idx >= p.batch * p.n_new * p.n_kv_heads * units {
        return;
    }
    let u = idx % units;
    var rest = idx / units;
    let h = rest % p.n_kv_heads;
    rest /= p.n_kv_heads;
    let t = rest % p.n_new;
    let b = rest / p.n_new;
    let e0 = ((b * p.n_kv_heads + h) * p.capacity + p.pos + t) * p.head_dim;
    if p.q_write_k != 0u {
        let src = src_row(false, b, t, h);
        quant_store(DST_DTYPE, false, 0u, e0, p.scale_plane, src, u, p.head_dim, p.k_scale);
    }
    let src = src_row(true, b, t, h);
    quant_store(DST_DTYPE, true, 0u, e0, p.scale_plane, src, u, p.head_dim, p.v_scale);
}

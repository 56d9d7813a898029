// Elementwise dtype conversion between f32, f16 and bf16 storage (round to nearest even).
// Each invocation converts one pair of elements (one u32 word of half storage), so two
// invocations never write halves of the same word.
//
// Override constants: SRC, DST (dtype codes), WG (workgroup size).

override SRC: u32 = 0u;
override DST: u32 = 1u;
override WG: u32 = 256u;

struct Params {
    n_pairs: u32,
    src_off: u32,
    dst_off: u32,
    odd_tail: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

fn load_pair(e: u32, both: bool) -> vec2<f32> {
    if SRC == DT_F32 {
        var v = vec2<f32>(bitcast<f32>(src[e]), 0.0);
        if both {
            v.y = bitcast<f32>(src[e + 1u]);
        }
        return v;
    }
    return unpack_half2(src[e >> 1u], SRC);
}

fn store_pair(e: u32, v: vec2<f32>, both: bool) {
    if DST == DT_F32 {
        dst[e] = bitcast<u32>(v.x);
        if both {
            dst[e + 1u] = bitcast<u32>(v.y);
        }
        return;
    }
    dst[e >> 1u] = pack_half2(v, DST);
}

@compute @workgroup_size(WG)
fn cast_dtype(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    if i >= p.n_pairs {
        return;
    }
    // The last pair of an odd-length f32 -> f32 tensor has one element (half types are even).
    let both = !(p.odd_tail == 1u && i + 1u == p.n_pairs);
    let v = load_pair(p.src_off + 2u * i, both);
    store_pair(p.dst_off + 2u * i, v, both);
}

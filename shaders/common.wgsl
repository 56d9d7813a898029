// Shared by every kernel (prepended to each shader file by `Shader::source`).
//
// Storage dtypes, as the `DTYPE` override constant of each kernel: 0 = f32, 1 = f16, 2 = bf16.
// Half types are packed two per u32, element 0 in the low 16 bits (little-endian memory order),
// so any adapter can read them; arithmetic is always f32.

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;

// bf16 -> f32 is exact: the bf16 bits are the top half of an f32.
fn bf16x2_to_f32(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN instead of rounding to inf.
fn f32_to_bf16_bits(v: f32) -> u32 {
    let u = bitcast<u32>(v);
    if (u & 0x7fffffffu) > 0x7f800000u {
        return (u >> 16u) | 0x40u;
    }
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

fn unpack_half2(w: u32, dtype: u32) -> vec2<f32> {
    if dtype == DT_F16 {
        return unpack2x16float(w);
    }
    return bf16x2_to_f32(w);
}

fn pack_half2(v: vec2<f32>, dtype: u32) -> u32 {
    if dtype == DT_F16 {
        return pack2x16float(v);
    }
    return f32_to_bf16_bits(v.x) | (f32_to_bf16_bits(v.y) << 16u);
}

// Round f32 values to what `dtype` storage would hold.
fn round_to_dtype(v: vec4<f32>, dtype: u32) -> vec4<f32> {
    if dtype == DT_F32 {
        return v;
    }
    return vec4<f32>(unpack_half2(pack_half2(v.xy, dtype), dtype), unpack_half2(pack_half2(v.zw, dtype), dtype));
}

// Dispatches larger than 65535 workgroups use a 2-D grid; this is the linear workgroup index.
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

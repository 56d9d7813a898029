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

// f16 bits -> f32, exact (subnormals, infinities and NaN included). Written with integer ops
// instead of `unpack2x16float` so adapters without the f16-in-f32 downlevel capability run it.
fn f16_bits_to_f32(h: u32) -> f32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if e == 0u {
        // Zero or subnormal: m * 2^-24, exact in f32.
        return bitcast<f32>(s | bitcast<u32>(f32(m) * 5.9604644775390625e-8));
    }
    if e == 31u {
        return bitcast<f32>(s | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

// f32 -> f16 bits, round to nearest even; overflow gives inf, NaN stays NaN.
fn f32_to_f16_bits(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let s = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if a > 0x7f800000u {
        return s | 0x7e00u;
    }
    if a >= 0x38800000u {
        // Normal f16 range (>= 2^-14): rebias the exponent, round away 13 mantissa bits. A carry
        // out of the mantissa bumps the exponent, up to inf (0x7c00) for values >= 65520.
        let r = min(a, 0x47800000u) - 0x38000000u;
        return s | min((r + 0x0fffu + ((r >> 13u) & 1u)) >> 13u, 0x7c00u);
    }
    if a < 0x33000000u {
        return s;
    }
    // Subnormal f16: value / 2^-24, rounded to nearest even.
    let e = a >> 23u;
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    var q = m >> shift;
    let rem = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if rem > half || (rem == half && (q & 1u) == 1u) {
        q += 1u;
    }
    return s | q;
}

fn unpack_half2(w: u32, dtype: u32) -> vec2<f32> {
    if dtype == DT_F16 {
        return vec2<f32>(f16_bits_to_f32(w & 0xffffu), f16_bits_to_f32(w >> 16u));
    }
    return bf16x2_to_f32(w);
}

fn pack_half2(v: vec2<f32>, dtype: u32) -> u32 {
    if dtype == DT_F16 {
        return f32_to_f16_bits(v.x) | (f32_to_f16_bits(v.y) << 16u);
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

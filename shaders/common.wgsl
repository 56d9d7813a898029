// Shared by every kernel (prepended to each shader file by `Shader::source`).
//
// Storage dtypes, as the `DTYPE` override constant of each kernel: 0 = f32, 1 = f16, 2 = bf16.
// Half types are packed two per u32, element 0 in the low 16 bits (little-endian memory order),
// so any adapter can read them; arithmetic is always f32.

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;

// ---- Conversions, four values at a time and branch-free ----
// CPU adapters (lavapipe, SwiftShader, WARP) run invocations as SIMD lanes, so a branch per value
// costs every lane both sides; these use `select` instead. They are written with integer and f32
// ops rather than `unpack2x16float` / `pack2x16float`, so adapters without the f16-in-f32
// downlevel capability run them, and because WGSL leaves the built-ins' rounding and overflow
// open. Every kernel converts through them (the two-value forms below included), so the cast
// tests, which check every f16/bf16 pattern and a sweep of f32 patterns through `cast_dtype`,
// cover them bit for bit; the one exception is the f16 stores of the GPU modules that include
// f16_store.wgsl (`pack2x16float`, devices with the f16-in-f32 capability only).

// f16 bits (low 16 bits of each lane) -> f32, exact for every value: subnormals by subtracting
// 2^-14 from a normal f32 (no f32 subnormal is ever produced or read), inf/NaN by a second rebias.
fn f16x4_to_f32(h: vec4<u32>) -> vec4<f32> {
    let o = (h & vec4<u32>(0x7fffu)) << vec4<u32>(13u);
    let e = o & vec4<u32>(0x0f800000u);
    var r = o + vec4<u32>(0x38000000u);
    r = select(r, r + vec4<u32>(0x38000000u), e == vec4<u32>(0x0f800000u));
    let sub = bitcast<vec4<f32>>(o + vec4<u32>(0x38800000u)) - vec4<f32>(6.103515625e-05);
    r = select(r, bitcast<vec4<u32>>(sub), e == vec4<u32>(0u));
    return bitcast<vec4<f32>>(r | ((h & vec4<u32>(0x8000u)) << vec4<u32>(16u)));
}

// f32 -> f16 bits, round to nearest even; overflow gives inf, NaN a quiet NaN. Results below
// 2^-14 come from adding 0.5, whose f32 ulp is the f16 subnormal step 2^-24.
fn f32x4_to_f16(v: vec4<f32>) -> vec4<u32> {
    let x = bitcast<vec4<u32>>(v);
    let sign = (x >> vec4<u32>(16u)) & vec4<u32>(0x8000u);
    let a = x & vec4<u32>(0x7fffffffu);
    // Normal: rebias the exponent by -112 (mod 2^32) and round away 13 mantissa bits. A carry out
    // of the mantissa bumps the exponent, which is what rounding up to the next binade needs.
    let odd = (a >> vec4<u32>(13u)) & vec4<u32>(1u);
    let n = (a + vec4<u32>(0xc8000fffu) + odd) >> vec4<u32>(13u);
    let sub = bitcast<vec4<u32>>(bitcast<vec4<f32>>(a) + vec4<f32>(0.5)) - vec4<u32>(0x3f000000u);
    var o = select(n, sub, a < vec4<u32>(0x38800000u));
    let big = select(vec4<u32>(0x7c00u), vec4<u32>(0x7e00u), a > vec4<u32>(0x7f800000u));
    o = select(o, big, a >= vec4<u32>(0x47800000u));
    return o | sign;
}

// bf16 bits (low 16 bits of each lane) -> f32 is exact: the bf16 bits are the top half of an f32.
fn bf16x4_to_f32(h: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(h << vec4<u32>(16u));
}

// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN instead of rounding to inf.
fn f32x4_to_bf16(v: vec4<f32>) -> vec4<u32> {
    let u = bitcast<vec4<u32>>(v);
    let r = (u + vec4<u32>(0x7fffu) + ((u >> vec4<u32>(16u)) & vec4<u32>(1u))) >> vec4<u32>(16u);
    let nan = (u >> vec4<u32>(16u)) | vec4<u32>(0x40u);
    return select(r, nan, (u & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u));
}

// Two packed words (four halves, element 0 in the low bits of w.x) -> f32.
fn unpack_half4(w: vec2<u32>, dtype: u32) -> vec4<f32> {
    let h = (vec4<u32>(w.x, w.x, w.y, w.y) >> vec4<u32>(0u, 16u, 0u, 16u)) & vec4<u32>(0xffffu);
    if dtype == DT_F16 {
        return f16x4_to_f32(h);
    }
    return bf16x4_to_f32(h);
}

// Four f32 -> two packed words of `dtype` halves.
fn pack_half4(v: vec4<f32>, dtype: u32) -> vec2<u32> {
    var h: vec4<u32>;
    if dtype == DT_F16 {
        h = f32x4_to_f16(v);
    } else {
        h = f32x4_to_bf16(v);
    }
    return vec2<u32>(h.x | (h.y << 16u), h.z | (h.w << 16u));
}

// One packed word. The unused lanes of the four-wide forms are dead code that the shader
// compiler removes.
fn unpack_half2(w: u32, dtype: u32) -> vec2<f32> {
    return unpack_half4(vec2<u32>(w, 0u), dtype).xy;
}

fn pack_half2(v: vec2<f32>, dtype: u32) -> u32 {
    return pack_half4(vec4<f32>(v, 0.0, 0.0), dtype).x;
}

// Round f32 values to what `dtype` storage would hold.
fn round_to_dtype(v: vec4<f32>, dtype: u32) -> vec4<f32> {
    if dtype == DT_F32 {
        return v;
    }
    return unpack_half4(pack_half4(v, dtype), dtype);
}

// ---- 16-byte items: 4 f32 or 8 packed halves in one vec4<u32> ----
// CPU adapters turn one 16-byte load or store per invocation into far fewer instructions than
// four 4-byte ones, so kernels with 16-byte aligned views read and write `array<vec4<u32>>`
// bindings one item at a time through these.

// The values of one item; `hi` holds values 4..7 of a half item and is 0 for f32.
struct Item {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn elems_per_item(dtype: u32) -> u32 {
    return select(8u, 4u, dtype == DT_F32);
}

fn unpack_item(u: vec4<u32>, dtype: u32) -> Item {
    if dtype == DT_F32 {
        return Item(bitcast<vec4<f32>>(u), vec4<f32>(0.0));
    }
    return Item(unpack_half4(u.xy, dtype), unpack_half4(u.zw, dtype));
}

fn pack_item(v: Item, dtype: u32) -> vec4<u32> {
    if dtype == DT_F32 {
        return bitcast<vec4<u32>>(v.lo);
    }
    return vec4<u32>(pack_half4(v.lo, dtype), pack_half4(v.hi, dtype));
}

// Dispatches larger than 65535 workgroups use a 2-D grid; this is the linear workgroup index.
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Native f16 K/V reads for the contiguous subgroup decode (`attn_decode_sg`), in the module
// that starts with `enable f16;` (`ops::attention::ATTENTION_DECODE_SUBGROUP_F16`; devices with
// SHADER_F16). K and V are also bound as `array<vec4<f16>>` (the same windows as k_buf and v_buf)
// and widened with `vec4<f32>(...)`, one conversion per value on a GPU instead of common.wgsl's
// integer decode (about fourteen integer ops per value, which would make f16 decode ALU-bound
// rather than memory-bound). Widening f16 to f32 is exact: the results equal the integer
// module's bit for bit. The host picks it only for 16-byte aligned K/V rows, so every element
// index e passed here is a multiple of 4.
@group(0) @binding(16) var<storage, read> k_h: array<vec4<f16>>;
@group(0) @binding(17) var<storage, read> v_h: array<vec4<f16>>;

// Four values at element e of K (src 1) or V (src 2): `sg_row`'s sources.
fn sg_load4(src: u32, e: u32) -> vec4<f32> {
    if src == 1u {
        return vec4<f32>(k_h[e >> 2u]);
    }
    return vec4<f32>(v_h[e >> 2u]);
}

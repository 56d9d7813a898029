// Native f16 K/V reads for the contiguous subgroup decode (`attn_decode_sg`), in the module
// that starts with `enable f16;` (`ops::attention::ATTENTION_DECODE_SUBGROUP_F16`; devices with
// SHADER_F16). K and V are also bound as `array<vec4<f16>>` (the same windows as k4 and v4)
// and widened with `vec4<f32>(...)`, one conversion per value on a GPU instead of common.wgsl's
// integer decode (about fourteen integer ops per value, which would make f16 decode ALU-bound
// rather than memory-bound). Widening f16 to f32 is exact: the results equal the integer
// module's bit for bit. A 16-byte unit i is the two vec4<f16> at 2i and 2i + 1, adjacent, which
// compilers issue as one 16-byte load.
@group(0) @binding(16) var<storage, read> k_h: array<vec4<f16>>;
@group(0) @binding(17) var<storage, read> v_h: array<vec4<f16>>;

// The K/V load seam: unit i of K (src 0) or V (src 1), `keys_rows`' sources.
fn sg_item(src: u32, i: u32) -> Item {
    if src == 0u {
        return Item(vec4<f32>(k_h[2u * i]), vec4<f32>(k_h[2u * i + 1u]));
    }
    return Item(vec4<f32>(v_h[2u * i]), vec4<f32>(v_h[2u * i + 1u]));
}

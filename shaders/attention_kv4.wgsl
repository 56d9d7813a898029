// The contiguous K/V windows read 16 bytes at a time (prepended after attention_split.wgsl to
// the contiguous decode modules and the contiguous subgroup prefill; the prefill module declares
// the same bindings itself): `vec4<u32>` views of the same windows as k_buf / v_buf, or of a
// quantized cache's whole buffers. The paged modules read through their pool instead.
@group(0) @binding(8) var<storage, read> k4: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read> v4: array<vec4<u32>>;

// 16-byte unit i of K (src 0u) or V (src 1u): every read of K/V goes through here.
fn keys_unit(src: u32, i: u32) -> vec4<u32> {
    if src == 0u {
        return k4[i];
    }
    return v4[i];
}

// f16 stores through WGSL's `pack2x16float` (prepended after common.wgsl in the modules that
// store f16 natively: RMSNorm's native-f16 modules, RoPE's `rope_f16_store.wgsl`). One
// conversion instruction per value on a GPU instead of `f32x4_to_f16`'s dozen integer ops.
// naga takes `pack2x16float` only with the SHADER_F16_IN_F32 downlevel capability (no `enable`
// directive: it is core WGSL), so these modules are only created on devices that have it.
//
// WGSL leaves the conversion's rounding open (either neighbour of a value between two f16
// values) and makes a value past f16's finite range an indeterminate result, where the integer
// encoder rounds to nearest even and overflows to inf. So on other devices these modules agree
// with the integer path within the f16 tolerance, not bit for bit; their outputs stay within
// f16's range for finite inputs of a model's scale. bf16 has no built-in and keeps the integer
// encoder. The modules without these stores include `pipeline::INTEGER_STORE` instead.

// Four f32 -> two packed words of `dtype` halves.
fn encode_half4(v: vec4<f32>, dtype: u32) -> vec2<u32> {
    if dtype == DT_F16 {
        return vec2<u32>(pack2x16float(v.xy), pack2x16float(v.zw));
    }
    return pack_half4(v, dtype);
}

// The words of one 16-byte item (`Item` in common.wgsl).
fn encode_item(v: Item, dtype: u32) -> vec4<u32> {
    if dtype == DT_F16 {
        return vec4<u32>(encode_half4(v.lo, dtype), encode_half4(v.hi, dtype));
    }
    return pack_item(v, dtype);
}

// Native f16 reads for the RMSNorm module (prepended to rms_norm.wgsl, after common.wgsl, in
// the modules that start with `enable f16;`; devices with SHADER_F16 only): x, the weight and
// the residual, when read through their own read-only bindings, are also bound as
// `array<vec4<f16>>` and widened with `vec4<f32>(...)`, one conversion instruction per value on
// a GPU instead of common.wgsl's integer decode (about fourteen integer ops per value). Widening
// f16 to f32 is exact. Writes go through `pack2x16float` (f16_store.wgsl, prepended before
// this part; SHADER_F16 devices always have the f16-in-f32 capability it needs), whose rounding
// WGSL leaves open, so on other devices the results agree with the integer path within the f16
// tolerance. Reads through the read_write output bindings (which one buffer cannot share with a
// second binding) keep the exact integer decode; the modules without f16 define `NATIVE_F16`
// false and a stub, and store through the integer encoder.
const NATIVE_F16: bool = true;

@group(0) @binding(11) var<storage, read> src_h: array<vec4<f16>>;
@group(0) @binding(12) var<storage, read> weight_h: array<vec4<f16>>;
@group(0) @binding(13) var<storage, read> res_h: array<vec4<f16>>;

// Item i (8 values) of x (b = 0), the weight (1) or the residual (2).
fn f16_item(b: u32, i: u32) -> Item {
    var lo: vec4<f16>;
    var hi: vec4<f16>;
    switch b {
        case 0u: {
            lo = src_h[2u * i];
            hi = src_h[2u * i + 1u];
        }
        case 1u: {
            lo = weight_h[2u * i];
            hi = weight_h[2u * i + 1u];
        }
        default: {
            lo = res_h[2u * i];
            hi = res_h[2u * i + 1u];
        }
    }
    return Item(vec4<f32>(lo), vec4<f32>(hi));
}

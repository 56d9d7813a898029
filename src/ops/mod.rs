//! One module per kernel family.
pub mod attention;
pub mod cast;
pub mod kv_cache;
pub mod paged;
pub mod rms_norm;
pub mod rope;

/// True when kernels read f16 tensors natively on this adapter where they can (RMSNorm's
/// workgroup-per-row kernel, the subgroup decode): a GPU whose device has `SHADER_F16`. CPU
/// adapters keep the integer decode (llvmpipe's f16 loads measured no faster, BENCHMARKS.md).
pub fn native_f16_wanted(ctx: &crate::Context) -> bool {
    ctx.caps().shader_f16 && ctx.adapter_info().device_type != wgpu::DeviceType::Cpu
}

/// True when RoPE stores f16 through WGSL's `pack2x16float` on this adapter by default
/// ([`rope::Rope::native_f16_store`]): a device that is not a CPU adapter and has the
/// f16-in-f32 capability ([`crate::context::Caps::f16_in_f32`]). CPU adapters keep the exact
/// integer encoder, as they keep the integer decode. RMSNorm's native f16 stores come with its
/// native reads ([`native_f16_wanted`]).
pub fn native_f16_store_wanted(ctx: &crate::Context) -> bool {
    ctx.caps().f16_in_f32 && ctx.adapter_info().device_type != wgpu::DeviceType::Cpu
}

//! Elementwise dtype conversion: `dst = dtype_of_dst(src)` for f32, f16 and bf16 storage.
//!
//! f16 and bf16 are encoded with round to nearest even; overflow becomes inf and NaN stays NaN.
//! Decoding is exact. One invocation per pair of elements (one word of half storage).
//! Both views must be contiguous and hold the same number of elements; they may not overlap.

use crate::context::Context;
use crate::error::Result;
use crate::pipeline::{PipelineKey, Shader, Window};
use crate::tensor::{DType, Tensor};

const OP: &str = "cast";
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
/// Uniform parameters; mirrors `struct Params` in `shaders/cast.wgsl`.
pub struct Params {
    /// Pairs of elements (32-bit words of half storage) to convert.
    pub n_pairs: u32,
    /// Element offset of the source in its binding.
    pub src_off: u32,
    /// Element offset of the destination in its binding.
    pub dst_off: u32,
    /// 1 when the element count is odd (the last pair has one element).
    pub odd_tail: u32,
}

fn key(src: DType, dst: DType) -> PipelineKey {
    PipelineKey::new(
        Shader::CAST,
        "cast_dtype",
        vec![
            ("SRC", src.shader_code()),
            ("DST", dst.shader_code()),
            ("WG", WG),
        ],
    )
}

/// Every pipeline key the dispatcher can produce.
pub fn all_variant_keys() -> Vec<PipelineKey> {
    DType::ALL
        .iter()
        .flat_map(|&s| DType::ALL.iter().map(move |&d| key(s, d)))
        .collect()
}

fn validate(src: &Tensor, dst: &Tensor) -> Result<()> {
    src.validate(OP, "src")?;
    dst.validate_written(OP, "dst")?;
    crate::ensure!(
        src.is_contiguous() && dst.is_contiguous(),
        Shape,
        OP,
        "src and dst must be contiguous (src strides {:?}, dst strides {:?})",
        src.strides(),
        dst.strides()
    );
    crate::ensure!(
        src.numel() == dst.numel(),
        Shape,
        OP,
        "src {:?} has {} elements but dst {:?} has {}",
        src.shape(),
        src.numel(),
        dst.shape(),
        dst.numel()
    );
    crate::ensure!(
        src.buffer() != dst.buffer(),
        Alias,
        OP,
        "src and dst share a buffer; cast needs two buffers"
    );
    Ok(())
}

/// Record `dst = cast(src)` into `encoder`.
pub fn encode(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    src: &Tensor,
    dst: &Tensor,
) -> Result<()> {
    validate(src, dst)?;
    ctx.scoped(OP, || record(ctx, encoder, src, dst))?
}

fn record(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    src: &Tensor,
    dst: &Tensor,
) -> Result<()> {
    let sw = Window::covering(ctx, OP, &[src])?;
    let dw = Window::covering(ctx, OP, &[dst])?;
    let n = src.numel();
    let params = Params {
        n_pairs: n.div_ceil(2) as u32,
        src_off: sw.elem_offset(src),
        dst_off: dw.elem_offset(dst),
        odd_tail: (n % 2) as u32,
    };
    ctx.encode_kernel(
        OP,
        encoder,
        &key(src.dtype(), dst.dtype()),
        &params,
        &[("src", sw.resource()), ("dst", dw.resource())],
        params.n_pairs.div_ceil(WG) as u64,
    )
}

/// [`encode`], submitted and waited for.
pub fn run(ctx: &Context, src: &Tensor, dst: &Tensor) -> Result<()> {
    validate(src, dst)?;
    ctx.submit_and_wait(OP, |enc| record(ctx, enc, src, dst))
}

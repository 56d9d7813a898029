//! RMSNorm (Zhang & Sennrich 2019) and its fused-residual form.
//!
//! ```text
//! y[r, i] = x[r, i] / sqrt(mean_i(x[r, i]^2) + eps) * (w[i] + weight_offset)
//! ```
//! over the last dimension of `x: [..., n]`. There is no mean subtraction (that is LayerNorm).
//! `weight_offset` is 0 for Llama, Mistral and Qwen and 1 for Gemma's `(1 + w)`.
//!
//! Variants, each with its strategy:
//! - workgroup per row (GPUs, and few rows anywhere): the design of GPU norm kernels (Apex's
//!   and PyTorch's `RMSNormForward`, llm.c's `rmsnorm_forward_kernel`): consecutive invocations
//!   read consecutive 16-byte items of one row (coalesced `vec4<u32>` loads; 4-byte words when
//!   a view is not 16-byte aligned), sum squares in f32 registers, reduce across the workgroup,
//!   then a second pass scales and stores. The reduction is `subgroupAdd` followed by one
//!   workgroup-memory slot per subgroup where the device has `SUBGROUP` and is not a CPU
//!   adapter (`rms_norm_wg4_subgroup`, in [`RMS_NORM_SUBGROUP`]), and a tree in workgroup
//!   memory otherwise (`rms_norm_wg4`, `rms_norm`). CPU adapters keep the tree: llvmpipe's
//!   `subgroupAdd` measured slower than it (BENCHMARKS.md).
//! - invocation per row (CPU adapters, at least [`ROWS_PER_INVOCATION_MIN`] rows): each
//!   invocation streams one whole row, so there is no workgroup memory and no barrier; the
//!   weight index is uniform across invocations, which CPU drivers load once and broadcast.
//!   On lavapipe this is about 4x faster than a workgroup per row (see BENCHMARKS.md); on a GPU
//!   it would be uncoalesced, so GPUs always get a workgroup per row.
//! - native f16 reads and stores (GPUs with `SHADER_F16`, workgroup per row, 16-byte aligned
//!   views): f16 x, weight and residual are also bound as `array<vec4<f16>>` and widened by the
//!   hardware's conversion instead of the integer decode every other path uses (about fourteen
//!   integer ops per value, enough to make a memory-bound norm ALU-bound on a GPU), and out and
//!   residual_out are stored through WGSL's `pack2x16float` (one instruction per value) instead
//!   of the integer encoder (about twelve). Widening is exact; `pack2x16float`'s rounding and
//!   out-of-range results are left open by WGSL, so the results agree with the integer path
//!   within the f16 tolerance (bit for bit on lavapipe, tests/rms_norm.rs), and the norm of
//!   the fused form reads back exactly the residual_out it stored. In modules of their own
//!   ([`RMS_NORM_F16`], [`RMS_NORM_SUBGROUP_F16`]): a module with `enable f16` fails validation
//!   without `SHADER_F16`, and one with `pack2x16float` without the f16-in-f32 capability,
//!   which wgpu gives every device with `SHADER_F16`. CPU adapters keep the integer code
//!   (llvmpipe's f16 loads measured no faster, BENCHMARKS.md). bf16 has no built-in and keeps
//!   its integer encoder (four ops a value) everywhere.
//! - fused residual: `h = x + residual` (rounded to the storage dtype, as the model stores it)
//!   is written to `residual_out` during the first pass; the second pass normalises `h`.
//! - in place: `out` may be the same view as `x` and `residual_out` the same view as `residual`;
//!   such pairs share one `read_write` binding.
//!
//! Layout: `x`, `out`, `residual`, `residual_out` are `[..., n]` views whose leading dims collapse
//! to rows with one row stride; the last dim is contiguous. `weight` is a contiguous `[n]`.
//! All tensors share one storage dtype (f32, f16 or bf16); math is f32.

mod plan;
mod record;
mod variant;

pub use variant::{
    all_variant_keys, invocation_per_row_wanted, rows_workgroup, subgroup_variant_keys,
    subgroups_wanted, Variant, RMS_NORM, RMS_NORM_F16, RMS_NORM_SUBGROUP, RMS_NORM_SUBGROUP_F16,
    ROWS_PER_INVOCATION_MIN,
};

/// True when [`Strategy::Auto`] reads f16 views natively on this adapter (the views must also
/// be 16-byte aligned).
pub use super::native_f16_wanted;

use crate::context::Context;
use crate::error::Result;
use crate::tensor::Tensor;

const OP: &str = "rms_norm";

/// Parameters of one RMSNorm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsNorm {
    /// Added to the mean square before the square root; any value >= 0.
    pub eps: f32,
    /// Added to every weight: 0 for Llama-style models, 1 for Gemma's `(1 + w)`.
    pub weight_offset: f32,
}

impl Default for RmsNorm {
    fn default() -> Self {
        RmsNorm {
            eps: 1e-6,
            weight_offset: 0.0,
        }
    }
}

/// Uniform parameters; mirrors `struct Params` in `shaders/rms_norm.wgsl` (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Rows.
    pub n_rows: u32,
    /// Row length.
    pub n: u32,
    /// Element offset of x in its binding.
    pub x_off: u32,
    /// Elements between rows of x.
    pub x_stride: u32,
    /// Element offset of the weight.
    pub w_off: u32,
    /// Element offset of the residual.
    pub r_off: u32,
    /// Elements between rows of the residual.
    pub r_stride: u32,
    /// Element offset of out.
    pub out_off: u32,
    /// Elements between rows of out.
    pub out_stride: u32,
    /// Element offset of residual_out.
    pub rout_off: u32,
    /// Elements between rows of residual_out.
    pub rout_stride: u32,
    /// Epsilon.
    pub eps: f32,
    /// Added to the weight (1 for Gemma).
    pub weight_offset: f32,
    /// Padding to 16 bytes.
    pub _pad: [u32; 3],
}

/// How rows are spread over invocations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Let the dispatcher decide from the adapter and the number of rows.
    #[default]
    Auto,
    /// One workgroup per row (GPUs, and few rows anywhere), reduced as the adapter prefers:
    /// subgroups on GPUs that have them, the workgroup-memory tree elsewhere.
    WorkgroupPerRow,
    /// One workgroup per row, always the workgroup-memory tree.
    WorkgroupTree,
    /// One workgroup per row reduced with subgroup operations where the views are 16-byte
    /// aligned (the tree otherwise); an error on a device without `SUBGROUP`.
    WorkgroupSubgroup,
    /// One invocation per row (CPU adapters with many rows).
    InvocationPerRow,
    /// One workgroup per row, f16 views read natively and stored through `pack2x16float` (see
    /// the module docs), reduced with subgroup operations wherever the device has `SUBGROUP`
    /// (CPU adapters included: the combination GPUs run), the tree otherwise; an error without
    /// `SHADER_F16` or the f16-in-f32 capability, for other dtypes, or for views that are not
    /// 16-byte aligned. [`Strategy::Auto`] and [`Strategy::WorkgroupPerRow`] pick it for f16 on
    /// GPUs with `SHADER_F16`; [`Strategy::WorkgroupTree`] and [`Strategy::WorkgroupSubgroup`]
    /// keep the integer decode.
    WorkgroupNativeF16,
}

/// Read sources (the `X_SRC`, `R_SRC`, `W_SRC` override values).
pub const SRC_OWN: u32 = 0;
/// Read through out's `read_write` binding (in place).
pub const SRC_OUT: u32 = 1;
/// Read through residual_out's `read_write` binding (in place).
pub const SRC_RES_OUT: u32 = 2;

/// The residual stream of the fused form, by name: `residual_out = x + residual`. Most layers
/// update the stream in place: [`Residual::in_place`].
#[derive(Clone, Copy, Debug)]
pub struct Residual<'a> {
    /// The stream read (added to `x`).
    pub residual: &'a Tensor,
    /// Where `x + residual` is written: `residual` itself (in place) or a disjoint view.
    pub residual_out: &'a Tensor,
}

impl<'a> Residual<'a> {
    /// `residual_out` is `residual`: the stream is updated in place.
    pub fn in_place(residual: &'a Tensor) -> Self {
        Residual {
            residual,
            residual_out: residual,
        }
    }
    fn pair(self) -> (&'a Tensor, &'a Tensor) {
        (self.residual, self.residual_out)
    }
}

impl RmsNorm {
    /// Llama / Mistral / Qwen RMSNorm with the given eps.
    pub fn new(eps: f32) -> Self {
        RmsNorm {
            eps,
            weight_offset: 0.0,
        }
    }
    /// Gemma's RMSNorm: weights are used as `(1 + w)`.
    pub fn gemma(eps: f32) -> Self {
        RmsNorm {
            eps,
            weight_offset: 1.0,
        }
    }

    /// Record `out = rms_norm(x) * (weight + weight_offset)` into `encoder`.
    pub fn encode(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
    ) -> Result<()> {
        let c = self.validate(ctx, x, weight, out, None, Strategy::Auto)?;
        self.record(ctx, encoder, c, x, weight, out, None)
    }

    /// Record the fused form: `h = x + residual; residual_out = h; out = rms_norm(h) * w`, with
    /// `x`, `weight` and `out` as in [`RmsNorm::encode`].
    pub fn encode_residual(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Residual<'_>,
    ) -> Result<()> {
        self.encode_with(ctx, encoder, x, weight, out, Some(residual), Strategy::Auto)
    }

    /// [`RmsNorm::encode`], submitted and waited for.
    pub fn run(&self, ctx: &Context, x: &Tensor, weight: &Tensor, out: &Tensor) -> Result<()> {
        let c = self.validate(ctx, x, weight, out, None, Strategy::Auto)?;
        ctx.submit_and_wait(OP, |enc| self.record(ctx, enc, c, x, weight, out, None))
    }

    /// [`RmsNorm::encode_residual`], submitted and waited for.
    pub fn run_residual(
        &self,
        ctx: &Context,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Residual<'_>,
    ) -> Result<()> {
        let r = Some(residual.pair());
        let c = self.validate(ctx, x, weight, out, r, Strategy::Auto)?;
        ctx.submit_and_wait(OP, |enc| self.record(ctx, enc, c, x, weight, out, r))
    }

    /// [`RmsNorm::encode`] (`residual: None`) or [`RmsNorm::encode_residual`] with a forced
    /// [`Strategy`]; tests and the benchmark use it to run every variant on any adapter.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_with(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<Residual<'_>>,
        strategy: Strategy,
    ) -> Result<()> {
        let r = residual.map(Residual::pair);
        let c = self.validate(ctx, x, weight, out, r, strategy)?;
        self.record(ctx, encoder, c, x, weight, out, r)
    }

    /// The variant that [`RmsNorm::encode_with`] would dispatch (after validating the views).
    pub fn variant(
        &self,
        ctx: &Context,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<Residual<'_>>,
        strategy: Strategy,
    ) -> Result<Variant> {
        let r = residual.map(Residual::pair);
        Ok(self.validate(ctx, x, weight, out, r, strategy)?.variant)
    }

    /// Build the pipeline that [`RmsNorm::encode`] (`residual` `None`) or
    /// [`RmsNorm::encode_residual`] would use for these views, so the first call does not stall
    /// on a shader compile; the same validation, nothing recorded. The variant depends on the
    /// row count and the adapter, so prepare once per shape a model uses (the prefill's rows
    /// and a decode step's). Returns how many pipelines were built (0 when already cached).
    pub fn prepare(
        &self,
        ctx: &Context,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<Residual<'_>>,
    ) -> Result<usize> {
        let v = self.variant(ctx, x, weight, out, residual, Strategy::Auto)?;
        let before = ctx.cached_pipelines();
        ctx.kernel(OP, &v.key())?;
        Ok(ctx.cached_pipelines().saturating_sub(before))
    }
}

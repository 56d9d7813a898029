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
//! - native f16 reads (GPUs with `SHADER_F16`, workgroup per row, 16-byte aligned views): f16
//!   x, weight and residual are also bound as `array<vec4<f16>>` and widened by the hardware's
//!   conversion instead of the integer decode every other path uses (about fourteen integer ops
//!   per value, enough to make a memory-bound norm ALU-bound on a GPU). Widening is exact, so the
//!   results equal the integer path's bit for bit; writes keep the exact integer encode. In
//!   modules of their own ([`RMS_NORM_F16`], [`RMS_NORM_SUBGROUP_F16`]): a module with
//!   `enable f16` fails validation without `SHADER_F16`. CPU adapters keep the integer decode
//!   (llvmpipe's f16 loads measured no faster, BENCHMARKS.md).
//! - fused residual: `h = x + residual` (rounded to the storage dtype, as the model stores it)
//!   is written to `residual_out` during the first pass; the second pass normalises `h`.
//! - in place: `out` may be the same view as `x` and `residual_out` the same view as `residual`;
//!   such pairs share one `read_write` binding.
//!
//! Layout: `x`, `out`, `residual`, `residual_out` are `[..., n]` views whose leading dims collapse
//! to rows with one row stride; the last dim is contiguous. `weight` is a contiguous `[n]`.
//! All tensors share one storage dtype (f32, f16 or bf16); math is f32.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::{PipelineKey, Shader, Window};
use crate::tensor::{DType, Tensor};

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
    /// One workgroup per row, f16 views read natively (see the module docs), reduced with
    /// subgroup operations wherever the device has `SUBGROUP` (CPU adapters included: the
    /// combination GPUs run), the tree otherwise; an error without `SHADER_F16`, for other
    /// dtypes, or for views that are not 16-byte aligned. [`Strategy::Auto`] and [`Strategy::WorkgroupPerRow`] pick it for f16 on
    /// GPUs with `SHADER_F16`; [`Strategy::WorkgroupTree`] and [`Strategy::WorkgroupSubgroup`]
    /// keep the integer decode.
    WorkgroupNativeF16,
}

/// `shaders/rms_norm.wgsl` with the subgroup-reduced entry point
/// (`shaders/rms_norm_subgroup.wgsl`): a module of its own, because a module that uses subgroup
/// operations anywhere fails validation on devices without `SUBGROUP`.
pub const RMS_NORM_SUBGROUP: &Shader = &Shader {
    name: "rms_norm_subgroup.wgsl",
    parts: &[
        crate::pipeline::COMMON_WGSL,
        NO_NATIVE_F16,
        include_str!("../../shaders/rms_norm.wgsl"),
        include_str!("../../shaders/rms_norm_subgroup.wgsl"),
    ],
    variants: subgroup_variant_keys,
};

/// The RMSNorm modules without `enable f16` define the native-read hook as never taken.
const NO_NATIVE_F16: &str = "const NATIVE_F16: bool = false;
fn f16_item(b: u32, i: u32) -> Item {
    return Item(vec4<f32>(0.0), vec4<f32>(0.0));
}";

/// `shaders/rms_norm.wgsl`.
pub const RMS_NORM: &Shader = &Shader {
    name: "rms_norm.wgsl",
    parts: &[
        crate::pipeline::COMMON_WGSL,
        NO_NATIVE_F16,
        include_str!("../../shaders/rms_norm.wgsl"),
    ],
    variants: all_variant_keys,
};

/// [`RMS_NORM`] with native f16 reads (`shaders/rms_norm_f16.wgsl`, `enable f16`).
pub const RMS_NORM_F16: &Shader = &Shader {
    name: "rms_norm_f16.wgsl",
    parts: &[
        "enable f16;",
        crate::pipeline::COMMON_WGSL,
        include_str!("../../shaders/rms_norm_f16.wgsl"),
        include_str!("../../shaders/rms_norm.wgsl"),
    ],
    variants: || native_variant_keys(false),
};

/// [`RMS_NORM_SUBGROUP`] with native f16 reads.
pub const RMS_NORM_SUBGROUP_F16: &Shader = &Shader {
    name: "rms_norm_subgroup_f16.wgsl",
    parts: &[
        "enable f16;",
        crate::pipeline::COMMON_WGSL,
        include_str!("../../shaders/rms_norm_f16.wgsl"),
        include_str!("../../shaders/rms_norm.wgsl"),
        include_str!("../../shaders/rms_norm_subgroup.wgsl"),
    ],
    variants: || native_variant_keys(true),
};

/// True when [`Strategy::Auto`] reads f16 views natively on this adapter (the views must also
/// be 16-byte aligned).
pub use super::native_f16_wanted;

/// True when [`Strategy::WorkgroupPerRow`] reduces with subgroups on this adapter.
pub fn subgroups_wanted(ctx: &Context) -> bool {
    ctx.caps().subgroups && ctx.adapter_info().device_type != wgpu::DeviceType::Cpu
}

/// On CPU adapters, [`Strategy::Auto`] runs one invocation per row from this many rows on; with
/// fewer rows a workgroup per row keeps more SIMD lanes busy.
pub const ROWS_PER_INVOCATION_MIN: usize = 64;

/// True when [`Strategy::Auto`] picks one invocation per row for `rows` rows on this adapter.
pub fn invocation_per_row_wanted(ctx: &Context, rows: usize) -> bool {
    ctx.adapter_info().device_type == wgpu::DeviceType::Cpu && rows >= ROWS_PER_INVOCATION_MIN
}

/// Workgroup size of the invocation-per-row kernel: the adapter's widest subgroup (the SIMD
/// width of a CPU driver), within 1..=64. Only speed depends on it, never correctness.
pub fn rows_workgroup(ctx: &Context) -> u32 {
    match ctx.adapter_info().subgroup_max_size {
        0 => 8,
        s => s.clamp(1, 64),
    }
}

/// The code-shaping decisions for one dispatch; the pipeline key is derived from it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Storage dtype of every tensor.
    pub dtype: DType,
    /// Elements per chunk (1 or 4 for f32, 2 or 4 for half types).
    pub vec: u32,
    /// Workgroup size (power of two, <= 256, for a workgroup per row; 1..=64 per invocation).
    pub workgroup: u32,
    /// The fused residual form.
    pub residual: bool,
    /// Where x, residual and weight are read from: [`SRC_OWN`], [`SRC_OUT`] (through out's
    /// read_write binding) or [`SRC_RES_OUT`] (through residual_out's).
    pub x_src: u32,
    /// Where the residual is read from (see `x_src`).
    pub r_src: u32,
    /// Where the weight is read from (see `x_src`).
    pub w_src: u32,
    /// One invocation per row (`rms_norm_rows`) instead of one workgroup per row.
    pub per_invocation: bool,
    /// 16-byte items through `vec4<u32>` bindings (`rms_norm_rows4`, `rms_norm_wg4*`).
    pub items16: bool,
    /// With a workgroup per row and `items16`: reduce with subgroup operations.
    pub subgroup: bool,
    /// With a workgroup per row, `items16` and f16: read x, weight and residual natively.
    pub native_f16: bool,
}

impl Variant {
    /// The workgroup-per-row variant for rows of `n` elements.
    pub fn choose(dtype: DType, n: usize, residual: bool, src: [u32; 3]) -> Self {
        let vec = if n.is_multiple_of(4) {
            4
        } else if dtype.is_half() {
            2
        } else {
            1
        };
        let chunks = (n / vec as usize).max(1);
        let workgroup = (chunks.next_power_of_two() as u32).clamp(32, 256);
        Variant {
            dtype,
            vec,
            workgroup,
            residual,
            x_src: src[0],
            r_src: src[1],
            w_src: src[2],
            per_invocation: false,
            items16: false,
            subgroup: false,
            native_f16: false,
        }
    }

    /// The variant the dispatcher runs for `rows` rows of `n` elements under `strategy`;
    /// `aligned16`: the row length, every view's start and every row stride are multiples of 16
    /// bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn choose_for(
        ctx: &Context,
        strategy: Strategy,
        rows: usize,
        dtype: DType,
        n: usize,
        residual: bool,
        src: [u32; 3],
        aligned16: bool,
    ) -> Self {
        let v = Self::choose(dtype, n, residual, src);
        let per_invocation = match strategy {
            Strategy::Auto => invocation_per_row_wanted(ctx, rows),
            Strategy::InvocationPerRow => true,
            _ => false,
        };
        if per_invocation {
            return Variant {
                workgroup: rows_workgroup(ctx),
                per_invocation,
                items16: aligned16,
                // 16-byte items hold 4 f32 or 8 half values; `vec` only shapes `rms_norm_rows`.
                vec: if aligned16 { 4 } else { v.vec },
                ..v
            };
        }
        if !aligned16 {
            return v;
        }
        let items = (n * dtype.size() / 16).max(1);
        let subgroup = match strategy {
            Strategy::WorkgroupSubgroup => true,
            Strategy::WorkgroupTree => false,
            // Forced native reads take the subgroup reduction wherever the device has SUBGROUP,
            // CPU adapters included, so that lavapipe runs the combination GPUs run.
            Strategy::WorkgroupNativeF16 => ctx.caps().subgroups,
            _ => subgroups_wanted(ctx),
        };
        let native_f16 = dtype == DType::F16
            && match strategy {
                Strategy::WorkgroupNativeF16 => true,
                Strategy::Auto | Strategy::WorkgroupPerRow => native_f16_wanted(ctx),
                _ => false,
            };
        Variant {
            vec: 4,
            workgroup: (items.next_power_of_two() as u32).clamp(32, 256),
            items16: true,
            subgroup,
            native_f16,
            ..v
        }
    }

    /// A short name such as `wg_per_row_v4_wg256` or `inv_per_row_v4_wg8`.
    pub fn name(&self) -> String {
        let layout = if self.items16 {
            "16B".to_string()
        } else {
            format!("v{}", self.vec)
        };
        let strategy = match (self.per_invocation, self.subgroup) {
            (true, _) => "inv_per_row",
            (false, true) => "wg_per_row_subgroup",
            (false, false) => "wg_per_row",
        };
        let reads = if self.native_f16 { "_native_f16" } else { "" };
        format!("{strategy}_{layout}{reads}_wg{}", self.workgroup)
    }

    /// Workgroups to dispatch for `rows` rows.
    pub fn workgroups(&self, rows: usize) -> u64 {
        if self.per_invocation {
            (rows as u64).div_ceil(self.workgroup as u64)
        } else {
            rows as u64
        }
    }

    /// The pipeline key of this variant.
    pub fn key(&self) -> PipelineKey {
        let (shader, entry) = match (self.per_invocation, self.items16, self.subgroup) {
            (true, true, _) => (RMS_NORM, "rms_norm_rows4"),
            (true, false, _) => (RMS_NORM, "rms_norm_rows"),
            (false, true, true) if self.native_f16 => {
                (RMS_NORM_SUBGROUP_F16, "rms_norm_wg4_subgroup")
            }
            (false, true, true) => (RMS_NORM_SUBGROUP, "rms_norm_wg4_subgroup"),
            (false, true, false) if self.native_f16 => (RMS_NORM_F16, "rms_norm_wg4"),
            (false, true, false) => (RMS_NORM, "rms_norm_wg4"),
            (false, false, _) => (RMS_NORM, "rms_norm"),
        };
        PipelineKey::new(
            shader,
            entry,
            vec![
                ("DTYPE", self.dtype.shader_code()),
                ("V", self.vec),
                ("WG", self.workgroup),
                ("HAS_RES", self.residual as u32),
                ("X_SRC", self.x_src),
                ("R_SRC", self.r_src),
                ("W_SRC", self.w_src),
            ],
        )
    }
}

/// Every pipeline key the dispatcher can produce, with a representative set of read sources
/// (the portability tests compile each).
pub fn all_variant_keys() -> Vec<PipelineKey> {
    variant_keys(false)
}

/// The keys of [`RMS_NORM_SUBGROUP`].
pub fn subgroup_variant_keys() -> Vec<PipelineKey> {
    variant_keys(true)
}

fn variant_keys(subgroup: bool) -> Vec<PipelineKey> {
    // [x, residual, weight] sources: separate buffers, in place, residual in place, x in
    // residual_out's buffer, weight in either output's buffer.
    const SOURCES: [[u32; 3]; 6] = [
        [SRC_OWN, SRC_OWN, SRC_OWN],
        [SRC_OUT, SRC_OWN, SRC_OWN],
        [SRC_OUT, SRC_RES_OUT, SRC_OWN],
        [SRC_RES_OUT, SRC_OUT, SRC_OUT],
        [SRC_OWN, SRC_OWN, SRC_RES_OUT],
        [SRC_OWN, SRC_OWN, SRC_OUT],
    ];
    let mut keys = Vec::new();
    for dtype in DType::ALL {
        for vec in if dtype.is_half() { [2, 4] } else { [1, 4] } {
            for residual in [false, true] {
                for src in SOURCES {
                    if !residual && (src.contains(&SRC_RES_OUT) || src[1] != SRC_OWN) {
                        continue;
                    }
                    for (per_invocation, items16, workgroup) in [
                        (false, false, 256),
                        (false, true, 256),
                        (true, false, 8),
                        (true, true, 8),
                    ] {
                        if items16 && vec != 4 {
                            continue;
                        }
                        // The subgroup module holds one more entry point (workgroup per row,
                        // 16-byte items); the others are in both modules, compiled from the plain.
                        if subgroup && (per_invocation || !items16) {
                            continue;
                        }
                        keys.push(
                            Variant {
                                dtype,
                                vec,
                                workgroup,
                                residual,
                                x_src: src[0],
                                r_src: src[1],
                                w_src: src[2],
                                per_invocation,
                                items16,
                                subgroup,
                                native_f16: false,
                            }
                            .key(),
                        );
                    }
                }
            }
        }
    }
    keys
}

/// The keys of [`RMS_NORM_F16`] (`subgroup`: [`RMS_NORM_SUBGROUP_F16`]): f16, a workgroup per
/// row over 16-byte items, every read-source combination.
fn native_variant_keys(subgroup: bool) -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for residual in [false, true] {
        for x_src in [SRC_OWN, SRC_OUT, SRC_RES_OUT] {
            for r_src in [SRC_OWN, SRC_OUT, SRC_RES_OUT] {
                for w_src in [SRC_OWN, SRC_OUT, SRC_RES_OUT] {
                    if !residual
                        && (x_src == SRC_RES_OUT || w_src == SRC_RES_OUT || r_src != SRC_OWN)
                    {
                        continue;
                    }
                    if x_src != SRC_OWN && r_src != SRC_OWN && w_src != SRC_OWN {
                        continue;
                    }
                    keys.push(
                        Variant {
                            dtype: DType::F16,
                            vec: 4,
                            workgroup: 256,
                            residual,
                            x_src,
                            r_src,
                            w_src,
                            per_invocation: false,
                            items16: true,
                            subgroup,
                            native_f16: true,
                        }
                        .key(),
                    );
                }
            }
        }
    }
    keys
}

/// Read sources (the `X_SRC`, `R_SRC`, `W_SRC` override values).
pub const SRC_OWN: u32 = 0;
/// Read through out's `read_write` binding (in place).
pub const SRC_OUT: u32 = 1;
/// Read through residual_out's `read_write` binding (in place).
pub const SRC_RES_OUT: u32 = 2;

/// Rows of a `[..., n]` view: (row count, row stride). Leading dims must collapse to one stride.
fn rows_of(t: &Tensor, name: &str) -> Result<(usize, usize)> {
    crate::ensure!(
        t.rank() >= 1,
        Shape,
        OP,
        "{name} must have at least 1 dimension, got a scalar"
    );
    let rank = t.rank();
    let n = t.shape()[rank - 1];
    let rows: usize = t.shape()[..rank - 1].iter().product();
    if rank == 1 {
        return Ok((1, n));
    }
    // Walk outward: each leading dim's stride must equal the next inner dim's stride * size.
    let stride = t.strides()[rank - 2];
    let mut expect = stride;
    for d in (0..rank - 1).rev() {
        if t.shape()[d] != 1 && t.strides()[d] != expect {
            return Err(Error::bounds(
                OP,
                format!(
                    "{name} has shape {:?} and strides {:?}: its leading dims must collapse to rows with one stride",
                    t.shape(),
                    t.strides()
                ),
            ));
        }
        expect = expect.saturating_mul(t.shape()[d]);
    }
    Ok((rows, if rows == 1 { n } else { stride }))
}

#[derive(Clone, Copy)]
struct Checked {
    rows: usize,
    n: usize,
    x_stride: usize,
    out_stride: usize,
    r_stride: usize,
    rout_stride: usize,
    variant: Variant,
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

    fn validate(
        &self,
        ctx: &Context,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<(&Tensor, &Tensor)>,
        strategy: Strategy,
    ) -> Result<Checked> {
        crate::ensure!(
            self.eps.is_finite() && self.eps >= 0.0,
            Param,
            OP,
            "eps must be finite and >= 0, got {}",
            self.eps
        );
        crate::ensure!(
            self.weight_offset.is_finite(),
            Param,
            OP,
            "weight_offset must be finite, got {}",
            self.weight_offset
        );
        crate::ensure!(
            strategy != Strategy::WorkgroupSubgroup || ctx.caps().subgroups,
            Limit,
            OP,
            "the subgroup reduction needs a device with SUBGROUP, and {} has none",
            ctx.adapter_info().name
        );
        x.validate(OP, "x")?;
        weight.validate(OP, "weight")?;
        out.validate_written(OP, "out")?;
        let dtype = x.dtype();
        if strategy == Strategy::WorkgroupNativeF16 {
            crate::ensure!(
                ctx.caps().shader_f16,
                Limit,
                OP,
                "native f16 reads need a device with SHADER_F16, and {} has none",
                ctx.adapter_info().name
            );
            crate::ensure!(
                dtype == DType::F16,
                DType,
                OP,
                "native f16 reads are for f16 tensors, got {dtype}"
            );
        }
        weight.expect_dtype(OP, "weight", dtype)?;
        out.expect_dtype(OP, "out", dtype)?;
        let (rows, x_stride) = rows_of(x, "x")?;
        let n = *x.shape().last().unwrap_or(&0);
        crate::ensure!(
            weight.rank() == 1 && weight.shape()[0] == n,
            Shape,
            OP,
            "weight has shape {:?} but must be [{n}] to match x {:?}",
            weight.shape(),
            x.shape()
        );
        crate::ensure!(
            out.shape() == x.shape(),
            Shape,
            OP,
            "out has shape {:?} but x has {:?}",
            out.shape(),
            x.shape()
        );
        let (_, out_stride) = rows_of(out, "out")?;

        let (mut r_stride, mut rout_stride) = (0, 0);
        if let Some((r, rout)) = residual {
            r.validate(OP, "residual")?;
            rout.validate_written(OP, "residual_out")?;
            r.expect_dtype(OP, "residual", dtype)?;
            rout.expect_dtype(OP, "residual_out", dtype)?;
            crate::ensure!(
                r.shape() == x.shape() && rout.shape() == x.shape(),
                Shape,
                OP,
                "residual {:?} and residual_out {:?} must both have x's shape {:?}",
                r.shape(),
                rout.shape(),
                x.shape()
            );
            r_stride = rows_of(r, "residual")?.1;
            rout_stride = rows_of(rout, "residual_out")?.1;
        }
        let src = read_sources(x, weight, out, residual)?;
        crate::ensure!(
            rows <= u32::MAX as usize && n <= u32::MAX as usize,
            Limit,
            OP,
            "{rows} rows of {n} elements exceed 32-bit indexing"
        );
        // 16-byte items need 16-byte aligned row starts in every view.
        let size = dtype.size();
        let aligned = |t: &Tensor, stride: usize| {
            (t.offset() * size).is_multiple_of(16)
                && (rows == 1 || (stride * size).is_multiple_of(16))
        };
        let mut aligned16 = (n * size).is_multiple_of(16)
            && aligned(x, x_stride)
            && aligned(out, out_stride)
            && aligned(weight, 0);
        if let Some((r, rout)) = residual {
            aligned16 = aligned16 && aligned(r, r_stride) && aligned(rout, rout_stride);
        }
        crate::ensure!(
            aligned16 || strategy != Strategy::WorkgroupNativeF16,
            Param,
            OP,
            "native f16 reads need 16-byte aligned rows (n {n} x 2 bytes, every view's offset and row stride multiples of 16)"
        );
        Ok(Checked {
            rows,
            n,
            x_stride,
            out_stride,
            r_stride,
            rout_stride,
            variant: Variant::choose_for(
                ctx,
                strategy,
                rows,
                dtype,
                n,
                residual.is_some(),
                src,
                aligned16,
            ),
        })
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

    /// Record the fused form: `h = x + residual; residual_out = h; out = rms_norm(h) * w`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_residual(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        residual: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual_out: &Tensor,
    ) -> Result<()> {
        let c = self.validate(
            ctx,
            x,
            weight,
            out,
            Some((residual, residual_out)),
            Strategy::Auto,
        )?;
        self.record(
            ctx,
            encoder,
            c,
            x,
            weight,
            out,
            Some((residual, residual_out)),
        )
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
        residual: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual_out: &Tensor,
    ) -> Result<()> {
        let c = self.validate(
            ctx,
            x,
            weight,
            out,
            Some((residual, residual_out)),
            Strategy::Auto,
        )?;
        ctx.submit_and_wait(OP, |enc| {
            self.record(ctx, enc, c, x, weight, out, Some((residual, residual_out)))
        })
    }

    /// [`RmsNorm::encode`] (`residual: None`) or [`RmsNorm::encode_residual`]
    /// (`Some((residual, residual_out))`) with a forced [`Strategy`]; tests and the benchmark
    /// use it to run every variant on any adapter.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_with(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<(&Tensor, &Tensor)>,
        strategy: Strategy,
    ) -> Result<()> {
        let c = self.validate(ctx, x, weight, out, residual, strategy)?;
        self.record(ctx, encoder, c, x, weight, out, residual)
    }

    /// The variant that [`RmsNorm::encode_with`] would dispatch (after validating the views).
    pub fn variant(
        &self,
        ctx: &Context,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<(&Tensor, &Tensor)>,
        strategy: Strategy,
    ) -> Result<Variant> {
        Ok(self
            .validate(ctx, x, weight, out, residual, strategy)?
            .variant)
    }

    /// Record under one error scope (the only one of the call).
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        c: Checked,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<(&Tensor, &Tensor)>,
    ) -> Result<()> {
        let chunk = rows_per_dispatch(
            ctx,
            &c,
            [
                Some(x),
                Some(out),
                residual.map(|r| r.0),
                residual.map(|r| r.1),
            ],
        );
        ctx.scoped(OP, || {
            if chunk >= c.rows {
                return self.record_unscoped(ctx, enc, c, x, weight, out, residual);
            }
            // Views larger than one storage binding: rows are independent, so record one
            // dispatch per run of rows whose views fit a binding.
            let sub = |t: &Tensor, r0: usize, rows: usize, stride: usize| {
                Tensor::with_strides(
                    t.buffer(),
                    t.offset() + r0 * stride,
                    &[rows, c.n],
                    &[stride, 1],
                    t.dtype(),
                )
            };
            for r0 in (0..c.rows).step_by(chunk) {
                let rows = chunk.min(c.rows - r0);
                let part = Checked { rows, ..c };
                let xs = sub(x, r0, rows, c.x_stride);
                let os = sub(out, r0, rows, c.out_stride);
                let rs = residual.map(|(r, ro)| {
                    (
                        sub(r, r0, rows, c.r_stride),
                        sub(ro, r0, rows, c.rout_stride),
                    )
                });
                self.record_unscoped(
                    ctx,
                    enc,
                    part,
                    &xs,
                    weight,
                    &os,
                    rs.as_ref().map(|(a, b)| (a, b)),
                )?;
            }
            Ok(())
        })?
    }

    #[allow(clippy::too_many_arguments)]
    fn record_unscoped(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        c: Checked,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<(&Tensor, &Tensor)>,
    ) -> Result<()> {
        let v = c.variant;
        // Group the views by the binding they are read through; each binding's window covers
        // all of its views.
        let reads: [(&Tensor, u32); 3] = [
            (x, v.x_src),
            (
                residual.map_or(x, |r| r.0),
                if residual.is_some() { v.r_src } else { SRC_OWN },
            ),
            (weight, v.w_src),
        ];
        let group = |base: &Tensor, which: u32| -> Result<Window> {
            let mut views = vec![base];
            views.extend(reads.iter().filter(|(_, s)| *s == which).map(|(t, _)| *t));
            Window::covering(ctx, OP, &views)
        };
        let dst_win = group(out, SRC_OUT)?;
        let rout_win = match residual {
            Some((_, rout)) => Some(group(rout, SRC_RES_OUT)?),
            None => None,
        };
        let own = |t: &Tensor, s: u32| -> Result<Option<Window>> {
            if s == SRC_OWN {
                Window::covering(ctx, OP, &[t]).map(Some)
            } else {
                Ok(None)
            }
        };
        let x_win = own(x, v.x_src)?;
        let w_win = own(weight, v.w_src)?;
        let r_win = match residual {
            Some((r, _)) => own(r, v.r_src)?,
            None => None,
        };
        let offset_in = |t: &Tensor, s: u32, own_win: &Option<Window>| -> u32 {
            match s {
                SRC_OUT => dst_win.elem_offset(t),
                SRC_RES_OUT => rout_win.as_ref().map_or(0, |w| w.elem_offset(t)),
                _ => own_win.as_ref().map_or(0, |w| w.elem_offset(t)),
            }
        };
        let x_off = offset_in(x, v.x_src, &x_win);
        let w_off = offset_in(weight, v.w_src, &w_win);
        let (r_off, rout_off) = match residual {
            Some((r, rout)) => (
                offset_in(r, v.r_src, &r_win),
                rout_win.as_ref().map_or(0, |w| w.elem_offset(rout)),
            ),
            None => (0, 0),
        };
        let params = Params {
            n_rows: c.rows as u32,
            n: c.n as u32,
            x_off,
            x_stride: c.x_stride as u32,
            w_off,
            r_off,
            r_stride: c.r_stride as u32,
            out_off: dst_win.elem_offset(out),
            out_stride: c.out_stride as u32,
            rout_off,
            rout_stride: c.rout_stride as u32,
            eps: self.eps,
            weight_offset: self.weight_offset,
            _pad: [0; 3],
        };
        // `rms_norm_rows4` reads the same windows through its `vec4<u32>` bindings.
        let names: [&str; 5] = if v.items16 {
            ["src4", "weight4", "res4", "dst4", "res_dst4"]
        } else {
            ["src", "weight", "res", "dst", "res_dst"]
        };
        // Room for every binding up front: growing the list was a reallocation per call.
        let mut named = Vec::with_capacity(names.len() + 3);
        named.push((names[3], dst_win.resource()));
        for (name, win) in [
            (names[0], &x_win),
            (names[1], &w_win),
            (names[2], &r_win),
            (names[4], &rout_win),
        ] {
            if let Some(w) = win {
                named.push((name, w.resource()));
            }
        }
        if v.native_f16 {
            // The same read-only windows, also read as `array<vec4<f16>>`.
            for (name, win) in [("src_h", &x_win), ("weight_h", &w_win), ("res_h", &r_win)] {
                if let Some(w) = win {
                    named.push((name, w.resource()));
                }
            }
        }
        ctx.encode_kernel(OP, enc, &v.key(), &params, &named, v.workgroups(c.rows))
    }
}

/// Rows one dispatch may cover so that each row view's binding window fits the device's
/// `max_storage_buffer_binding_size` (all rows when they already fit).
fn rows_per_dispatch(ctx: &Context, c: &Checked, views: [Option<&Tensor>; 4]) -> usize {
    let max = ctx.limits().max_storage_buffer_binding_size;
    let slack = ctx.limits().min_storage_buffer_offset_alignment as u64 + 4;
    let views = views.into_iter().flatten();
    if views.clone().all(|t| {
        let s = t.byte_span();
        s.end - s.start + slack <= max
    }) {
        return c.rows;
    }
    let size = views.clone().map(|t| t.dtype().size()).max().unwrap_or(4) as u64;
    let row_bytes = [c.x_stride, c.out_stride, c.r_stride, c.rout_stride, c.n]
        .into_iter()
        .max()
        .unwrap_or(1) as u64
        * size;
    (max.saturating_sub(slack) / row_bytes.max(1)).max(1) as usize
}

/// Where each read tensor is bound, and the aliasing rules.
///
/// A buffer cannot be bound read-only and read-write in one dispatch, so a read tensor that
/// shares a buffer with `out` (or `residual_out`) is read through that output's binding. Outputs
/// may be exactly their in-place input (`out == x`, `residual_out == residual`); every other
/// overlap between a written view and any other view is refused.
fn read_sources(
    x: &Tensor,
    weight: &Tensor,
    out: &Tensor,
    residual: Option<(&Tensor, &Tensor)>,
) -> Result<[u32; 3]> {
    let rout = residual.map(|r| r.1);
    let source = |t: &Tensor| {
        if t.buffer() == out.buffer() {
            SRC_OUT
        } else if rout.is_some_and(|ro| t.buffer() == ro.buffer()) {
            SRC_RES_OUT
        } else {
            SRC_OWN
        }
    };
    if x.overlaps(out) && !x.same_view(out) {
        return Err(Error::alias(
            OP,
            "out partially overlaps x: it must be exactly x (in place) or disjoint",
        ));
    }
    crate::ensure!(!weight.overlaps(out), Alias, OP, "weight and out overlap");
    let mut src = [source(x), SRC_OWN, source(weight)];
    if let Some((r, rout)) = residual {
        if r.overlaps(rout) && !r.same_view(rout) {
            return Err(Error::alias(
                OP,
                "residual_out partially overlaps residual: it must be exactly residual (in place) or disjoint",
            ));
        }
        crate::ensure!(
            !rout.overlaps(out),
            Alias,
            OP,
            "residual_out and out overlap; they must be disjoint"
        );
        crate::ensure!(
            !rout.overlaps(x) && !r.overlaps(out),
            Alias,
            OP,
            "residual_out must not overlap x, and out must not overlap residual"
        );
        crate::ensure!(
            !weight.overlaps(rout),
            Alias,
            OP,
            "weight and residual_out overlap"
        );
        src[1] = source(r);
    }
    Ok(src)
}

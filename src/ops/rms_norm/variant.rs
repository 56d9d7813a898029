//! The variant space: the shader modules, the adapter decisions, [`Variant`] and its pipeline
//! keys.

use super::{Strategy, SRC_OUT, SRC_OWN, SRC_RES_OUT};
use crate::context::Context;
use crate::ops::native_f16_wanted;
use crate::pipeline::{PipelineKey, Shader};
use crate::tensor::DType;

/// `shaders/rms_norm.wgsl` with the subgroup-reduced entry point
/// (`shaders/rms_norm_subgroup.wgsl`): a module of its own, because a module that uses subgroup
/// operations anywhere fails validation on devices without `SUBGROUP`.
pub const RMS_NORM_SUBGROUP: &Shader = &Shader {
    name: "rms_norm_subgroup.wgsl",
    parts: &[
        "enable subgroups;",
        crate::pipeline::COMMON_WGSL,
        crate::pipeline::INTEGER_STORE,
        NO_NATIVE_F16,
        include_str!("../../../shaders/rms_norm.wgsl"),
        include_str!("../../../shaders/rms_norm_subgroup.wgsl"),
    ],
    variants: subgroup_variant_keys,
};

/// The RMSNorm modules without `enable f16` define the native-read hook as never taken (and
/// store through the integer encoder, [`crate::pipeline::INTEGER_STORE`]).
const NO_NATIVE_F16: &str = "const NATIVE_F16: bool = false;
fn f16_item(b: u32, i: u32) -> Item {
    return Item(vec4<f32>(0.0), vec4<f32>(0.0));
}";

/// `shaders/rms_norm.wgsl`.
pub const RMS_NORM: &Shader = &Shader {
    name: "rms_norm.wgsl",
    parts: &[
        crate::pipeline::COMMON_WGSL,
        crate::pipeline::INTEGER_STORE,
        NO_NATIVE_F16,
        include_str!("../../../shaders/rms_norm.wgsl"),
    ],
    variants: all_variant_keys,
};

/// [`RMS_NORM`] with native f16 reads (`shaders/rms_norm_f16.wgsl`, `enable f16`) and f16
/// stores through `pack2x16float` (`shaders/f16_store.wgsl`): only created on devices with
/// `SHADER_F16`, which wgpu always gives the f16-in-f32 capability `pack2x16float` needs.
pub const RMS_NORM_F16: &Shader = &Shader {
    name: "rms_norm_f16.wgsl",
    parts: &[
        "enable f16;",
        crate::pipeline::COMMON_WGSL,
        crate::pipeline::F16_STORE_WGSL,
        include_str!("../../../shaders/rms_norm_f16.wgsl"),
        include_str!("../../../shaders/rms_norm.wgsl"),
    ],
    variants: || native_variant_keys(false),
};

/// [`RMS_NORM_SUBGROUP`] with native f16 reads and `pack2x16float` stores.
pub const RMS_NORM_SUBGROUP_F16: &Shader = &Shader {
    name: "rms_norm_subgroup_f16.wgsl",
    parts: &[
        "enable f16;\nenable subgroups;",
        crate::pipeline::COMMON_WGSL,
        crate::pipeline::F16_STORE_WGSL,
        include_str!("../../../shaders/rms_norm_f16.wgsl"),
        include_str!("../../../shaders/rms_norm.wgsl"),
        include_str!("../../../shaders/rms_norm_subgroup.wgsl"),
    ],
    variants: || native_variant_keys(true),
};

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
    /// With a workgroup per row, `items16` and f16: read x, weight and residual natively and
    /// store through `pack2x16float` ([`RMS_NORM_F16`], [`RMS_NORM_SUBGROUP_F16`]).
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
                // The native modules store through `pack2x16float`: SHADER_F16 devices have
                // the capability it needs, checked all the same.
                Strategy::Auto | Strategy::WorkgroupPerRow => {
                    native_f16_wanted(ctx) && ctx.caps().f16_in_f32
                }
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

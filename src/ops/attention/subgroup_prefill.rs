//! [`Kind::PrefillSubgroup`](super::Kind::PrefillSubgroup)'s module and launch shape: the prefill
//! for GPUs with `SUBGROUP` (FlashAttention-2 on SIMT lanes,
//! `shaders/attention_prefill_sg_step.wgsl`).

use super::variants::keys_of;
use crate::pipeline::Shader;

/// `shaders/attention_prefill_subgroup.wgsl` (with `attention_common.wgsl`, the split partials'
/// bindings and the step, `shaders/attention_prefill_sg_step.wgsl`):
/// [`Kind::PrefillSubgroup`](super::Kind::PrefillSubgroup), a module of its own because a module
/// that uses subgroup operations anywhere fails validation on devices without `SUBGROUP`. Its
/// partials are merged by `attn_prefill_merge` of the f32 prefill module of its head_dim class.
pub const ATTENTION_PREFILL_SUBGROUP: &Shader = &Shader {
    name: "attention_prefill_subgroup.wgsl",
    parts: &[
        "enable subgroups;",
        crate::pipeline::COMMON_WGSL,
        crate::pipeline::KV_QUANT_WGSL,
        crate::pipeline::ATTENTION_COMMON_WGSL,
        crate::pipeline::ATTENTION_SPLIT_WGSL,
        crate::pipeline::ATTENTION_KV4_WGSL,
        crate::pipeline::ATTENTION_PREFILL_SG_STEP_WGSL,
        include_str!("../../../shaders/attention_prefill_subgroup.wgsl"),
    ],
    variants: || keys_of(ATTENTION_PREFILL_SUBGROUP),
};

/// Most f32 of accumulators one lane of [`Kind::PrefillSubgroup`](super::Kind::PrefillSubgroup)
/// holds (as many again for its q slots): `rows_per_group * slots * 4`.
pub const PREFILL_SG_MAX_ACC: u32 = 64;

/// [`Kind::PrefillSubgroup`](super::Kind::PrefillSubgroup)'s launch shape at one head_dim and
/// smallest subgroup size ([`prefill_sg_shape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillSgShape {
    /// Lanes that split one row's head (`L`: 4, 8 or 16, at most the smallest subgroup).
    pub lanes_per_row: u32,
    /// vec4 slots of a head per lane (`SLOTS`).
    pub slots: u32,
    /// Rows each group of lanes owns (`R`).
    pub rows_per_group: u32,
    /// Invocations per workgroup (`WG`).
    pub invocations: u32,
}

impl PrefillSgShape {
    /// Query rows per workgroup.
    pub fn rows_per_wg(&self) -> u32 {
        self.rows_per_group * self.invocations / self.lanes_per_row
    }
    /// f32 of accumulators per lane (as many again for q).
    pub fn acc_f32(&self) -> u32 {
        self.rows_per_group * self.slots * 4
    }
}

/// [`Kind::PrefillSubgroup`](super::Kind::PrefillSubgroup) at `hd4` (head_dim / 4) with subgroups
/// of at least `sg_min` lanes: lanes per row aiming at 4 vec4 slots each (16 f32 of a head per
/// lane), capped at 16 and at the smallest subgroup; rows per group as many (up to 4, a power of
/// two) as keep the accumulators within [`PREFILL_SG_MAX_ACC`]; invocations (128 or 256) so that a
/// workgroup holds at least 64 rows.
pub fn prefill_sg_shape(hd4: u32, sg_min: u32) -> PrefillSgShape {
    let lanes = hd4
        .div_ceil(4)
        .next_power_of_two()
        .clamp(4, 16)
        .min(sg_min.clamp(4, 16));
    let slots = hd4.div_ceil(lanes);
    let fit = (PREFILL_SG_MAX_ACC / 4 / slots).clamp(1, 4);
    let rows = 1 << (31 - fit.leading_zeros());
    PrefillSgShape {
        lanes_per_row: lanes,
        slots,
        rows_per_group: rows,
        invocations: (64 * lanes / rows).clamp(128, 256),
    }
}

//! [`Kind::DecodeSubgroup`]'s launch shape: rows per workgroup, lane groups, register slots and
//! merge memory for one head_dim, storage format and smallest subgroup size
//! (`shaders/attention_subgroup.wgsl`), and the key constants they set.

use super::variants::{SG_MAX_ROWS, SG_MAX_WORKGROUP_BYTES, SG_WG};
#[cfg(doc)]
use super::Kind;
use crate::tensor::DType;

// Most vec4s per lane the subgroup kernel holds for its q rows (RS x SLOTS x VPU; as many for
// the accumulators): 64 f32 accumulators.
const SG_MAX_REGS: u32 = 16;

/// Most rows per [`Kind::DecodeSubgroup`] workgroup at `hd4` with subgroups of at least
/// `sg_min` lanes: [`SG_MAX_ROWS`], fewer where the rows' vec4s per lane would pass 16 (64 f32
/// accumulators, as many q values) in f32 or in halves (the same for every storage format, so
/// that a paged batch, planned before its cache's format is known, blocks rows as the
/// contiguous call does).
pub fn sg_rows_max(hd4: u32, sg_min: u32) -> u32 {
    let sv = [DType::F32, DType::F16]
        .map(|dt| sg_shape(hd4, sg_min, dt).sv())
        .into_iter()
        .max()
        .unwrap_or(1);
    let fit = (SG_MAX_REGS / sv).max(1);
    (1u32 << (31 - fit.leading_zeros())).min(SG_MAX_ROWS as u32)
}

/// The geometry of [`Kind::DecodeSubgroup`] at one head_dim, storage format and smallest
/// subgroup size (`shaders/attention_subgroup.wgsl` says how each value is used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgShape {
    /// 16-byte units of a K/V row (8 halves or 4 f32 each).
    pub upr: u32,
    /// vec4s per unit: 1 (f32) or 2 (halves).
    pub vpu: u32,
    /// Lanes that read one row (a lane group): the power of two at least `upr`, at most the
    /// smallest subgroup.
    pub lg: u32,
    /// Units of a row per lane.
    pub slots: u32,
    /// Invocations per workgroup.
    pub wg: u32,
    /// Lane groups per workgroup (`wg / lg`), each on its own keys.
    pub nlg: u32,
    /// vec4s of the in-workgroup merge memory: `max(nlg / 2, 1) * hd4`.
    pub merge_v4: u32,
}

impl SgShape {
    /// vec4s of one row per lane (`slots * vpu`).
    pub fn sv(&self) -> u32 {
        self.slots * self.vpu
    }
    /// Bytes of workgroup memory the partial pass declares: the merge's accumulators and (m, l).
    pub fn workgroup_bytes(&self) -> u32 {
        self.merge_v4 * 16 + (self.nlg / 2).max(1) * 8
    }
}

/// [`SgShape`] at `hd4` over `dtype` K/V with subgroups of at least `sg_min` lanes: [`SG_WG`]
/// invocations, halved (down to one lane group) while the merge memory would pass
/// [`SG_MAX_WORKGROUP_BYTES`].
pub fn sg_shape(hd4: u32, sg_min: u32, dtype: DType) -> SgShape {
    let vpu = if dtype == DType::F32 { 1 } else { 2 };
    let upr = hd4.div_ceil(vpu);
    let lg = upr.next_power_of_two().min(sg_min.max(4));
    let at = |wg: u32| {
        let nlg = (wg / lg).max(1);
        SgShape {
            upr,
            vpu,
            lg,
            slots: upr.div_ceil(lg),
            wg: nlg * lg,
            nlg,
            merge_v4: (nlg / 2).max(1) * hd4,
        }
    };
    let mut wg = SG_WG;
    while wg > lg && at(wg).workgroup_bytes() > SG_MAX_WORKGROUP_BYTES {
        wg /= 2;
    }
    at(wg)
}

/// The key constants of a [`Kind::DecodeSubgroup`] partial pass with `rs` rows per workgroup
/// (`shaders/attention_subgroup.wgsl`'s `// @key` lines), shared by the contiguous and paged
/// keys.
pub fn sg_key_constants(sh: &SgShape, rs: u32) -> [(&'static str, u32); 6] {
    [
        ("RS", rs),
        ("SLOTS", sh.slots),
        ("VPU", sh.vpu),
        ("LG", sh.lg),
        ("NLG", sh.nlg),
        ("MV4", sh.merge_v4),
    ]
}

//! [`Kind::DecodeSubgroup`]'s launch shape: rows per workgroup, lane groups, register slots and
//! merge memory for one head_dim, K/V format and smallest subgroup size
//! (`shaders/attention_subgroup.wgsl`), and the key constants they set.
//!
//! A lane reads whole 16-byte units of a K/V row: 4 f32, 8 halves, 16 q8_0 or fp8 values (half
//! a q8_0 block), or 32 q4_0 values (a whole block, its 16 bytes of nibbles), dequantized in
//! registers; so the quantized formats have fewer units per row, fewer lanes per row and more
//! values per lane, and their registers hold fewer query rows ([`sg_rows_max_kv`]).

use super::variants::{SG_MAX_ROWS, SG_MAX_WORKGROUP_BYTES, SG_WG};
#[cfg(doc)]
use super::Kind;
use crate::kv_format::KvFormat;

// Most vec4s per lane the subgroup kernel holds for its q rows (RS x SLOTS x VPU; as many for
// the accumulators): 64 f32 accumulators.
const SG_MAX_REGS: u32 = 16;

/// Most rows per [`Kind::DecodeSubgroup`] workgroup at `hd4` with subgroups of at least
/// `sg_min` lanes over float K/V: [`SG_MAX_ROWS`], fewer where the rows' vec4s per lane would
/// pass 16 (64 f32 accumulators, as many q values) in f32 or in halves (the same for every
/// float format, so that a paged batch, planned before its cache's format is known, blocks rows
/// as the contiguous call does).
pub fn sg_rows_max(hd4: u32, sg_min: u32) -> u32 {
    rows_within(
        [KvFormat::F32, KvFormat::F16]
            .map(|kv| sg_shape(hd4, sg_min, kv).sv())
            .into_iter()
            .max()
            .unwrap_or(1),
    )
}

/// [`sg_rows_max`] for K/V stored in `kv`: a quantized format's own limit (its lanes hold 4 or
/// 8 vec4s of every row per unit, so at most 4 or 2 rows), the float formats' otherwise. A paged
/// batch's row blocks follow [`sg_rows_max`]; over a quantized pool the kernel takes each block
/// this many rows at a time (`attn_paged_sg`).
pub fn sg_rows_max_kv(hd4: u32, sg_min: u32, kv: KvFormat) -> u32 {
    match kv.is_quantized() {
        true => rows_within(sg_shape(hd4, sg_min, kv).sv()).min(sg_rows_max(hd4, sg_min)),
        false => sg_rows_max(hd4, sg_min),
    }
}

/// The largest power of two of rows, at most [`SG_MAX_ROWS`], whose `sv` vec4s per lane each
/// stay within [`SG_MAX_REGS`].
fn rows_within(sv: u32) -> u32 {
    let fit = (SG_MAX_REGS / sv.max(1)).max(1);
    (1u32 << (31 - fit.leading_zeros())).min(SG_MAX_ROWS as u32)
}

/// vec4s per 16-byte unit of a K/V row in `kv`: 1 (f32), 2 (halves), 4 (q8_0, fp8: 16 bytes of
/// 8-bit values) or 8 (q4_0: a block's 16 bytes of nibbles).
pub fn sg_vec4s_per_unit(kv: KvFormat) -> u32 {
    match kv {
        KvFormat::F32 => 1,
        KvFormat::F16 | KvFormat::BF16 => 2,
        KvFormat::Q8_0 | KvFormat::Fp8E4M3 => 4,
        KvFormat::Q4_0 => 8,
    }
}

/// Whether [`Kind::DecodeSubgroup`] can read rows of `head_dim` values in `kv` as whole 16-byte
/// units: every float format (the caller checks the alignment), the block formats at every
/// head_dim they hold (multiples of 32), fp8 where head_dim is a multiple of 16.
pub fn sg_reads_rows(kv: KvFormat, head_dim: usize) -> bool {
    kv.check_head_dim("attention", head_dim).is_ok()
        && (!kv.is_quantized() || kv.data_bytes(head_dim).is_multiple_of(16))
}

/// The geometry of [`Kind::DecodeSubgroup`] at one head_dim, K/V format and smallest subgroup
/// size (`shaders/attention_subgroup.wgsl` says how each value is used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgShape {
    /// 16-byte units of a K/V row (4 f32, 8 halves, 16 q8_0 or fp8 values, 32 q4_0 values).
    pub upr: u32,
    /// vec4s per unit ([`sg_vec4s_per_unit`]): 1 (f32), 2 (halves), 4 (q8_0, fp8), 8 (q4_0).
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

/// [`SgShape`] at `hd4` over K/V stored in `kv` with subgroups of at least `sg_min` lanes:
/// [`SG_WG`] invocations, halved (down to one lane group) while the merge memory would pass
/// [`SG_MAX_WORKGROUP_BYTES`].
pub fn sg_shape(hd4: u32, sg_min: u32, kv: KvFormat) -> SgShape {
    let vpu = sg_vec4s_per_unit(kv);
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

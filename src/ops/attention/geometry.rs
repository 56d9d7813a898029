//! The launch geometry of a decode plan ([`Plan::decode_geometry`]): what a decode call asks of
//! the device, computed from the plan alone, so tests pin it for described devices and
//! `llama-kernels info` prints it.

use super::{Dims, Kind, Plan, DECODE_WG, KEYS_WG, MAX_BK, MAX_HEAD_DIM, MERGE_WG};

/// What one decode call launches (the partial pass and the merge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeGeometry {
    /// Workgroups of the partial pass.
    pub workgroups: usize,
    /// Invocations per workgroup of the partial pass.
    pub invocations: u32,
    /// Workgroup memory the partial pass declares, in bytes.
    pub workgroup_bytes: u32,
    /// 32-bit values of an invocation's private arrays and per-row state (q rows, accumulators,
    /// K/V values in flight, m and l): what must fit the lane's registers.
    pub registers_per_lane: u32,
    /// Bytes of each K/V load instruction.
    pub bytes_per_load: u32,
    /// Invocations that read one K/V row together (1: each invocation reads whole rows, or the
    /// workgroup stages them).
    pub lanes_per_row: u32,
    /// Key splits (partials per row and lane).
    pub splits: usize,
    /// Workgroups of the merge pass (0: the partial pass writes the output).
    pub merge_workgroups: usize,
    /// Invocations per merge workgroup.
    pub merge_invocations: u32,
}

impl std::fmt::Display for DecodeGeometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} workgroups x {} invocations, {} B workgroup memory, {} registers/lane, {} B loads, {} lanes/row, {} splits; merge {} x {}",
            self.workgroups,
            self.invocations,
            self.workgroup_bytes,
            self.registers_per_lane,
            self.bytes_per_load,
            self.lanes_per_row,
            self.splits,
            self.merge_workgroups,
            self.merge_invocations
        )
    }
}

impl Plan {
    /// The launch geometry of this plan for a call of sizes `d`, for the decode kinds (`None`
    /// for prefill).
    pub fn decode_geometry(&self, d: &Dims) -> Option<DecodeGeometry> {
        let v = &self.variant;
        let rows_total = d.batch * d.n_kv_heads * self.rows;
        let workgroups = d.batch * d.n_kv_heads * self.row_blocks * self.splits;
        // The element merge (`attn_decode_merge`): one invocation per 4 output elements.
        let element_merge = |wg: u32| ((rows_total * v.hd4 as usize).div_ceil(wg as usize), wg);
        let max_hd4 = MAX_HEAD_DIM as u32 / 4;
        let g = match v.kind {
            Kind::DecodeSubgroup => {
                let sh = v.sg_shape();
                let (merge_workgroups, merge_invocations) = match self.splits {
                    1 => (0, 0),
                    _ => (rows_total, MERGE_WG),
                };
                DecodeGeometry {
                    workgroups,
                    invocations: sh.wg,
                    workgroup_bytes: sh.workgroup_bytes(),
                    // q and acc rows, the V units and the next key's K units, m and l.
                    registers_per_lane: 4 * sh.sv() * (2 * v.kr + 2) + 2 * v.kr,
                    bytes_per_load: 16,
                    lanes_per_row: sh.lg,
                    splits: self.splits,
                    merge_workgroups,
                    merge_invocations,
                }
            }
            Kind::DecodeKeys => {
                let (merge_workgroups, merge_invocations) = element_merge(KEYS_WG);
                DecodeGeometry {
                    workgroups,
                    invocations: KEYS_WG,
                    workgroup_bytes: 0,
                    // Four q rows of the largest head (`attention_keys.wgsl`), as declared.
                    registers_per_lane: 4 * 4 * max_hd4,
                    bytes_per_load: 16,
                    lanes_per_row: 1,
                    splits: self.splits,
                    merge_workgroups,
                    merge_invocations,
                }
            }
            Kind::Decode => {
                let (merge_workgroups, merge_invocations) = element_merge(DECODE_WG);
                DecodeGeometry {
                    workgroups,
                    invocations: DECODE_WG,
                    workgroup_bytes: 2 * v.tile_v4 * 16,
                    // q and acc of the largest head and the tile's scores, as declared.
                    registers_per_lane: 2 * 4 * max_hd4 + MAX_BK as u32,
                    // 32-bit words (`load4`), staged through workgroup memory.
                    bytes_per_load: 4,
                    lanes_per_row: 1,
                    splits: self.splits,
                    merge_workgroups,
                    merge_invocations,
                }
            }
            Kind::Prefill | Kind::PrefillKeys => return None,
        };
        Some(g)
    }
}

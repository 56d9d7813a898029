//! The launch geometry of a plan ([`Plan::decode_geometry`], [`Plan::prefill_geometry`]): what a
//! call asks of the device, computed from the plan alone, so tests pin it for described devices
//! and `llama-kernels info` prints it.

use super::{
    prefill_class, prefill_sg_shape, Dims, Kind, Plan, DECODE_WG, KEYS_TRIPS, KEYS_WG, MAX_BK,
    MAX_HEAD_DIM, MERGE_WG, PREFILL_ROWS_PER_INVOCATION, PREFILL_WG,
};

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
                    // The staged q rows, the trips' partial scores, the lanes' maxima and p
                    // (`attention_keys.wgsl`), as declared.
                    workgroup_bytes: (4 * max_hd4 + KEYS_TRIPS as u32 * (KEYS_WG + 1) + KEYS_WG)
                        * 16,
                    // The lane's head slices of four q rows and four accumulators, as declared.
                    registers_per_lane: 2 * 4 * 16 * 4,
                    bytes_per_load: 16,
                    // The lanes own head slices of every row.
                    lanes_per_row: KEYS_WG,
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
            Kind::Prefill | Kind::PrefillKeys | Kind::PrefillSubgroup => return None,
        };
        Some(g)
    }
}

/// What one prefill call launches (the main pass and, split over the keys, the merge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillGeometry {
    /// Workgroups of the main pass.
    pub workgroups: usize,
    /// Invocations per workgroup of the main pass.
    pub invocations: u32,
    /// Workgroup memory the main pass declares, in bytes.
    pub workgroup_bytes: u32,
    /// 32-bit values of an invocation's private arrays and per-row state (q, accumulators,
    /// scores, the rows' softmax state): what must fit the lane's registers.
    pub registers_per_lane: u32,
    /// f32 output accumulators per invocation (the share of `registers_per_lane` that lives
    /// through the whole key loop).
    pub accumulators_per_lane: u32,
    /// Bytes of each K/V load instruction.
    pub bytes_per_load: u32,
    /// Invocations that split one query row's head (1: each invocation holds whole rows).
    pub lanes_per_row: u32,
    /// Query rows per workgroup (each staged K/V element is read by all of them).
    pub rows_per_workgroup: usize,
    /// Key splits.
    pub splits: usize,
    /// Workgroups of the merge pass (0: the main pass writes the output).
    pub merge_workgroups: usize,
    /// Invocations per merge workgroup.
    pub merge_invocations: u32,
}

impl std::fmt::Display for PrefillGeometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} workgroups x {} invocations, {} B workgroup memory, {} registers/lane ({} accumulators), {} B loads, {} lanes/row, {} rows/workgroup, {} splits; merge {} x {}",
            self.workgroups,
            self.invocations,
            self.workgroup_bytes,
            self.registers_per_lane,
            self.accumulators_per_lane,
            self.bytes_per_load,
            self.lanes_per_row,
            self.rows_per_workgroup,
            self.splits,
            self.merge_workgroups,
            self.merge_invocations
        )
    }
}

impl Plan {
    /// The launch geometry of this plan for a call of sizes `d`, for the GPU-shaped prefill
    /// kinds ([`Kind::PrefillSubgroup`], and [`Kind::Prefill`] for comparison); `None` for
    /// decode and for [`Kind::PrefillKeys`], the CPU-adapter kernel, whose lanes hold named
    /// vectors and matrices rather than arrays.
    pub fn prefill_geometry(&self, d: &Dims) -> Option<PrefillGeometry> {
        let v = &self.variant;
        let rows_total = d.batch * d.n_kv_heads * self.rows;
        // `attn_prefill_merge`: one invocation per 4 output elements.
        let (merge_workgroups, merge_invocations) = match v.split_kv {
            true => (
                (rows_total * v.hd4 as usize).div_ceil(PREFILL_WG as usize),
                PREFILL_WG,
            ),
            false => (0, 0),
        };
        let (invocations, workgroup_bytes, registers_per_lane, acc, bytes_per_load, lanes) =
            match v.kind {
                Kind::PrefillSubgroup => {
                    let sh = prefill_sg_shape(v.hd4, v.sg_min);
                    let rows = sh.rows_per_group;
                    // q and acc slots; per row (m, l, lo, hi, pos, slope) and a vec4 of scores
                    // and of probabilities.
                    let regs = 2 * sh.acc_f32() + 6 * rows + 8 * rows;
                    let tiles = 2 * v.tile_v4 * 16;
                    (
                        sh.invocations,
                        tiles,
                        regs,
                        sh.acc_f32(),
                        16,
                        sh.lanes_per_row,
                    )
                }
                Kind::Prefill => {
                    // q and acc: PR rows of the head_dim class each (q in halves with f16
                    // arithmetic); the tile's scores: MAX_BK vec4s.
                    let acc = PREFILL_ROWS_PER_INVOCATION * prefill_class(v.hd4);
                    let q = if v.f16 { acc / 2 } else { acc };
                    let tiles = 2 * v.tile_v4 * if v.f16 { 8 } else { 16 };
                    let regs = q + acc + 4 * MAX_BK as u32;
                    (
                        PREFILL_WG / PREFILL_ROWS_PER_INVOCATION,
                        tiles,
                        regs,
                        acc,
                        4,
                        1,
                    )
                }
                _ => return None,
            };
        Some(PrefillGeometry {
            workgroups: d.batch * d.n_kv_heads * self.row_blocks * self.splits,
            invocations,
            workgroup_bytes,
            registers_per_lane,
            accumulators_per_lane: acc,
            bytes_per_load,
            lanes_per_row: lanes,
            rows_per_workgroup: self.rows_per_wg,
            splits: self.splits,
            merge_workgroups,
            merge_invocations,
        })
    }
}

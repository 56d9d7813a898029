//! The launch geometry of a plan ([`Plan::geometry`]): what a described device would run, so it
//! can be pinned by tests and printed by `llama-kernels info --device`.

use super::{
    prefill_keys_workgroup_bytes, prefill_sg_shape, Dims, Kind, Plan, MAX_BK,
    PREFILL_ROWS_PER_INVOCATION,
};

/// The launch geometry of a plan's main pass (the split-KV merge, where there is one, is one
/// invocation per 4 output elements), as the shaders declare it, so that it can be pinned and
/// printed for devices this machine does not have (`llama-kernels info --device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Workgroups of the main pass.
    pub workgroups: usize,
    /// Invocations per workgroup.
    pub invocations: u32,
    /// Workgroup memory the main pass declares, in bytes.
    pub workgroup_bytes: u32,
    /// f32 of private arrays per invocation: q, the accumulators, per-row state and scores
    /// (`None` for the CPU-adapter kernels, whose per-lane values are named vectors and
    /// matrices, no arrays).
    pub private_f32: Option<u32>,
    /// f32 of output accumulators per invocation (`None` as for `private_f32`).
    pub acc_f32: Option<u32>,
    /// Bytes one K/V load instruction reads from storage.
    pub load_bytes: u32,
}

impl Plan {
    /// The launch geometry of this plan for a call of sizes `d`.
    pub fn geometry(&self, d: &Dims) -> Geometry {
        let v = &self.variant;
        let tiles = 2 * v.tile_v4 * 16;
        let half_tiles = 2 * v.tile_v4 * if v.f16 { 8 } else { 16 };
        let (workgroup_bytes, private_f32, acc_f32, load_bytes) = match v.kind {
            Kind::Prefill => {
                // q and acc: 4 rows x the head_dim class each; scores: MAX_BK vec4s.
                let q_acc = PREFILL_ROWS_PER_INVOCATION * super::prefill_class(v.hd4);
                let q_f32 = if v.f16 { q_acc / 2 } else { q_acc };
                (
                    half_tiles,
                    Some(q_f32 + q_acc + 4 * MAX_BK as u32),
                    Some(q_acc),
                    4,
                )
            }
            Kind::PrefillKeys => (prefill_keys_workgroup_bytes(v.hd4), None, None, 16),
            Kind::Decode => {
                // q and acc: the largest head (MAX_HEAD_DIM f32) each; scores: MAX_BK.
                let acc = super::MAX_HEAD_DIM as u32;
                (tiles, Some(2 * acc + MAX_BK as u32), Some(acc), 4)
            }
            Kind::DecodeKeys => (0, None, None, 16),
            Kind::DecodeSubgroup => {
                let (slots, _) = v.sg_shape();
                let acc = 4 * v.kr * slots;
                // q and acc; m, l and the position per row; a vec4 of scores and of
                // probabilities per row.
                let private = 2 * acc + 3 * v.kr + 8 * v.kr;
                (
                    0,
                    Some(private),
                    Some(acc),
                    if v.native_f16 { 8 } else { 4 },
                )
            }
            Kind::PrefillSubgroup => {
                let sh = prefill_sg_shape(v.hd4, v.sg_min);
                let rows = sh.rows_per_group;
                // q and acc, the per-row state (m, l, lo, hi), a vec4 of scores and of
                // probabilities per row.
                let private = 2 * sh.acc_f32() + 4 * rows + 8 * rows;
                (tiles, Some(private), Some(sh.acc_f32()), 16)
            }
        };
        Geometry {
            workgroups: d.batch * d.n_kv_heads * self.row_blocks * self.splits,
            invocations: v.wg(),
            workgroup_bytes,
            private_f32,
            acc_f32,
            load_bytes,
        }
    }
}

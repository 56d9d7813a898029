//! What the planner reads of a device ([`DeviceDesc`]): a live one or a described one, with the
//! loop caps of CPU adapters.

use super::subgroup_decode::{sg_reads_rows, sg_rows_max_kv};
use super::{
    prefill_sg_shape, sg_shape, KEYS_WG, PREFILL_KEYS_ROWS, PREFILL_KEYS_TILE, PREFILL_WG,
};
use crate::context::Context;
use crate::kv_format::KvFormat;

/// What the planner reads of a device: a live one ([`DeviceDesc::of`]) or a described one (the
/// presets), so the choice can be shown and tested for devices this machine does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceDesc {
    /// CPU adapters (llvmpipe) get the CPU kernels and the loop caps.
    pub device_type: wgpu::DeviceType,
    /// The device has `wgpu::Features::SUBGROUP`.
    pub subgroups: bool,
    /// The adapter's smallest subgroup size (0 when unknown).
    pub subgroup_min_size: u32,
    /// The device has `wgpu::Features::SHADER_F16`.
    pub shader_f16: bool,
    /// `max_compute_workgroup_storage_size` in bytes.
    pub max_workgroup_storage: u32,
    /// Compute units (NVIDIA SMs, AMD CUs, Apple GPU cores): the decode's split count aims at
    /// [`DeviceDesc::resident_workgroups`] over them. A preset's is the described device's; a
    /// live device's is [`DEFAULT_COMPUTE_UNITS`], as wgpu does not report it.
    pub compute_units: u32,
}

/// Compute units the planner assumes for a live device (wgpu reports none): about a
/// data-centre GPU's (H100 132 SMs, MI250X 110 CUs per die). The error is cheap one way and dear
/// the other: too many for a small GPU (10-40 units) costs its decode a few more partials,
/// merged in parallel (at 32k keys for Llama-3-8B: 64 splits, 1 MB of partials beside 134 MB of
/// K/V); too few for a large one leaves part of it idle (half the bandwidth at half the
/// resident workgroups). Chunks hold at least 256 keys either way.
pub const DEFAULT_COMPUTE_UNITS: u32 = 128;
/// Invocations of the subgroup decode the planner counts as resident on one compute unit at a
/// time: its lanes hold about a hundred 32-bit registers (64 accumulators, the q rows, the K/V
/// units), which lets an NVIDIA SM (64K registers) or an AMD CU keep about 512 of them.
pub const RESIDENT_INVOCATIONS_PER_CU: u32 = 512;

impl DeviceDesc {
    /// What `ctx`'s device offers.
    pub fn of(ctx: &Context) -> Self {
        DeviceDesc {
            device_type: ctx.adapter_info().device_type,
            subgroups: ctx.caps().subgroups,
            subgroup_min_size: ctx.adapter_info().subgroup_min_size,
            shader_f16: ctx.caps().shader_f16,
            max_workgroup_storage: ctx.limits().max_compute_workgroup_storage_size,
            compute_units: DEFAULT_COMPUTE_UNITS,
        }
    }
    /// An NVIDIA GPU on Vulkan: subgroups of 32, f16, 48 KiB of workgroup memory, 132 SMs (H100
    /// SXM).
    pub fn nvidia() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::DiscreteGpu,
            subgroups: true,
            subgroup_min_size: 32,
            shader_f16: true,
            max_workgroup_storage: 49152,
            compute_units: 132,
        }
    }
    /// An AMD GCN/CDNA GPU: subgroups of 64, f16, 64 KiB of workgroup memory, 120 CUs (MI100).
    pub fn amd() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::DiscreteGpu,
            subgroups: true,
            subgroup_min_size: 64,
            shader_f16: true,
            max_workgroup_storage: 65536,
            compute_units: 120,
        }
    }
    /// An Apple GPU on Metal: subgroups (SIMD groups) of 32, f16, 32 KiB of workgroup memory,
    /// 38 GPU cores (M2 Max).
    pub fn apple() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::IntegratedGpu,
            subgroups: true,
            subgroup_min_size: 32,
            shader_f16: true,
            max_workgroup_storage: 32768,
            compute_units: 38,
        }
    }
    /// A device with WebGPU's default limits and no optional feature: 16 KiB of workgroup
    /// memory, no subgroups, no f16, compute units unknown ([`DEFAULT_COMPUTE_UNITS`]).
    pub fn webgpu_default() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::Other,
            subgroups: false,
            subgroup_min_size: 0,
            shader_f16: false,
            max_workgroup_storage: 16384,
            compute_units: DEFAULT_COMPUTE_UNITS,
        }
    }
    /// Mesa's lavapipe (llvmpipe on Vulkan), a CPU adapter: subgroups of 8, f16, 32 KiB, one
    /// compute unit per CPU thread (8 described).
    pub fn lavapipe() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::Cpu,
            subgroups: true,
            subgroup_min_size: 8,
            shader_f16: true,
            max_workgroup_storage: 32768,
            compute_units: 8,
        }
    }
    /// The presets, named.
    pub fn presets() -> [(&'static str, DeviceDesc); 5] {
        [
            ("nvidia", Self::nvidia()),
            ("amd", Self::amd()),
            ("apple", Self::apple()),
            ("webgpu_default", Self::webgpu_default()),
            ("lavapipe", Self::lavapipe()),
        ]
    }

    fn is_cpu(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }
    /// Workgroups of `wg` invocations the device keeps resident at once:
    /// [`RESIDENT_INVOCATIONS_PER_CU`] / `wg` per compute unit times the compute units.
    pub fn resident_workgroups(&self, wg: u32) -> usize {
        (RESIDENT_INVOCATIONS_PER_CU / wg.max(1)).max(1) as usize
            * self.compute_units.max(1) as usize
    }
    /// See [`subgroup_decode_wanted`](super::subgroup_decode_wanted).
    pub fn subgroup_decode_wanted(&self) -> bool {
        self.subgroups && !self.is_cpu()
    }
    /// Whether prefill with 16-byte aligned K/V rows takes
    /// [`Kind::PrefillSubgroup`](super::Kind::PrefillSubgroup) where it would take
    /// [`Kind::Prefill`](super::Kind::Prefill): the device has `SUBGROUP` with subgroups of at
    /// least 4 lanes (its smallest lane groups) and is not a CPU adapter.
    pub fn subgroup_prefill_wanted(&self) -> bool {
        self.subgroup_decode_wanted() && self.subgroup_min_size >= 4
    }
    /// The kernel the choice rule (steps 1-3 of the module doc's "Choosing a kernel") gives a
    /// call of `q_len` queries on this device: [`default_kind`](super::default_kind), with
    /// decode upgraded to [`Kind::DecodeSubgroup`](super::Kind::DecodeSubgroup) where
    /// [`DeviceDesc::subgroup_decode_wanted`] and the K/V rows are 16-byte aligned, and prefill
    /// over aligned K/V rows to [`Kind::PrefillSubgroup`](super::Kind::PrefillSubgroup) where
    /// [`DeviceDesc::subgroup_prefill_wanted`]. The contiguous and the paged planners both start
    /// from it; the contiguous one also falls back from PrefillKeys and PrefillSubgroup to
    /// Prefill (f16 arithmetic, small workgroup memory, fp8 rows that are not whole 16-byte
    /// units).
    pub fn default_kind(&self, q_len: usize, kv_aligned: bool) -> super::Kind {
        use super::Kind;
        match super::default_kind(self.device_type, q_len, kv_aligned) {
            Kind::Decode if self.subgroup_decode_wanted() && kv_aligned => Kind::DecodeSubgroup,
            Kind::Prefill if kv_aligned && self.subgroup_prefill_wanted() => Kind::PrefillSubgroup,
            k => k,
        }
    }
    /// See [`crate::ops::native_f16_wanted`].
    pub fn native_f16_wanted(&self) -> bool {
        self.shader_f16 && !self.is_cpu()
    }
    /// See [`loop_cap_keys`](super::loop_cap_keys).
    pub fn loop_cap_keys(&self, head_dim: usize) -> Option<usize> {
        if !self.is_cpu() {
            return None;
        }
        let hd4 = head_dim / 4;
        let per_key = 4 + 2 * hd4 + hd4.div_ceil(PREFILL_WG as usize);
        Some(50_000 / per_key)
    }
    /// See [`prefill_keys_loop_cap_keys`](super::prefill_keys_loop_cap_keys).
    pub fn prefill_keys_loop_cap_keys(&self, head_dim: usize) -> Option<usize> {
        if !self.is_cpu() {
            return None;
        }
        let hd4 = head_dim / 4;
        // Under a boolean mask each tile also loops over the tile vote's mask words and over
        // each lane's logits (`pk_mask_step`). Masks are bound after planning, and a plan must
        // hold for every call, so every plan counts them.
        let masked = 1
            + PREFILL_KEYS_TILE / 32
            + 1
            + PREFILL_KEYS_ROWS * PREFILL_KEYS_TILE / KEYS_WG as usize;
        let per_tile = 1 + hd4 + KEYS_WG as usize + PREFILL_KEYS_TILE + masked;
        let staging = PREFILL_KEYS_ROWS * hd4 / KEYS_WG as usize;
        Some((50_000 - staging - 64) / per_tile * PREFILL_KEYS_TILE)
    }
    /// Keys one [`Kind::PrefillSubgroup`](super::Kind::PrefillSubgroup) split may hold, if
    /// limited (see [`loop_cap_keys`](super::loop_cap_keys)): per block of 4 keys, the block
    /// loop, the Q K^T and P V loops (4 keys x `slots` x (1 + rows)), the reduction and softmax
    /// loop over the rows with a rescale (`slots`) each, counted as if the compiler unrolled
    /// nothing; the q load, staging (below one trip per key) and store loops come off the budget.
    pub fn prefill_sg_cap_keys(&self, hd4: u32, sg_min: u32) -> Option<usize> {
        if !self.is_cpu() {
            return None;
        }
        let sh = prefill_sg_shape(hd4, sg_min);
        let (slots, rows) = (sh.slots as usize, sh.rows_per_group as usize);
        let per_block = 1 + 8 * (1 + slots * (1 + rows)) + rows * (2 + slots);
        Some(4 * (40_000 / per_block))
    }
    /// Keys one [`Kind::DecodeSubgroup`](super::Kind::DecodeSubgroup) split with `rs` rows per
    /// workgroup at `hd4`, subgroups of at least `sg_min`, may hold, if limited (see
    /// [`loop_cap_keys`](super::loop_cap_keys)): per key of a lane group, the unit loads (K, V),
    /// the dots (rows x vec4s), the butterfly, and the softmax and accumulator loops per row,
    /// counted as if the compiler unrolled nothing, in whichever K/V format loops most per lane
    /// group (a quantized one taking the `rs` rows [`sg_rows_max_kv`] at a time, as the paged
    /// kernel does), so that the cap is one for every format; the lane groups share the split's
    /// keys.
    pub fn sg_cap_keys(&self, hd4: u32, sg_min: u32, rs: u32) -> Option<usize> {
        if !self.is_cpu() {
            return None;
        }
        let keys = |kv: KvFormat| {
            let sh = sg_shape(hd4, sg_min, kv);
            let r = rs.min(sg_rows_max_kv(hd4, sg_min, kv)).max(1);
            let blocks = rs.div_ceil(r) as usize;
            let (r, sv) = (r as usize, sh.sv() as usize);
            let butterfly = sh.lg.trailing_zeros() as usize * r.div_ceil(4);
            let per_key = 4 + 2 * sh.slots as usize + r * (1 + sv) + butterfly + r * (2 + 2 * sv);
            // The float formats share one count (the worst of f32 and halves), as before the
            // quantized ones read 16-byte units.
            (sh.nlg as usize, blocks * per_key)
        };
        let float = [KvFormat::F32, KvFormat::F16].map(keys);
        let float = (
            float.iter().map(|f| f.0).min().unwrap_or(1),
            float.iter().map(|f| f.1).max().unwrap_or(1),
        );
        KvFormat::QUANTIZED
            .into_iter()
            .filter(|&kv| sg_reads_rows(kv, 4 * hd4 as usize))
            .map(keys)
            .chain([float])
            .map(|(nlg, per_key)| nlg * (40_000 / per_key))
            .min()
    }
}

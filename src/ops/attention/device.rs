//! What the planner reads of a device ([`DeviceDesc`]): a live one or a described one, with the
//! loop caps of CPU adapters.

use super::{prefill_sg_shape, sg_shape, KEYS_WG, PREFILL_KEYS_TILE, PREFILL_WG};
use crate::context::Context;

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
}

impl DeviceDesc {
    /// What `ctx`'s device offers.
    pub fn of(ctx: &Context) -> Self {
        DeviceDesc {
            device_type: ctx.adapter_info().device_type,
            subgroups: ctx.caps().subgroups,
            subgroup_min_size: ctx.adapter_info().subgroup_min_size,
            shader_f16: ctx.caps().shader_f16,
            max_workgroup_storage: ctx.limits().max_compute_workgroup_storage_size,
        }
    }
    /// An NVIDIA GPU on Vulkan: subgroups of 32, f16, 48 KiB of workgroup memory.
    pub fn nvidia() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::DiscreteGpu,
            subgroups: true,
            subgroup_min_size: 32,
            shader_f16: true,
            max_workgroup_storage: 49152,
        }
    }
    /// An AMD GCN/CDNA GPU: subgroups of 64, f16, 64 KiB of workgroup memory.
    pub fn amd() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::DiscreteGpu,
            subgroups: true,
            subgroup_min_size: 64,
            shader_f16: true,
            max_workgroup_storage: 65536,
        }
    }
    /// An Apple GPU on Metal: subgroups (SIMD groups) of 32, f16, 32 KiB of workgroup memory.
    pub fn apple() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::IntegratedGpu,
            subgroups: true,
            subgroup_min_size: 32,
            shader_f16: true,
            max_workgroup_storage: 32768,
        }
    }
    /// A device with WebGPU's default limits and no optional feature: 16 KiB of workgroup
    /// memory, no subgroups, no f16.
    pub fn webgpu_default() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::Other,
            subgroups: false,
            subgroup_min_size: 0,
            shader_f16: false,
            max_workgroup_storage: 16384,
        }
    }
    /// Mesa's lavapipe (llvmpipe on Vulkan), a CPU adapter: subgroups of 8, f16, 32 KiB.
    pub fn lavapipe() -> Self {
        DeviceDesc {
            device_type: wgpu::DeviceType::Cpu,
            subgroups: true,
            subgroup_min_size: 8,
            shader_f16: true,
            max_workgroup_storage: 32768,
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
    /// [`DeviceDesc::subgroup_decode_wanted`] and prefill over aligned K/V rows to
    /// [`Kind::PrefillSubgroup`](super::Kind::PrefillSubgroup) where
    /// [`DeviceDesc::subgroup_prefill_wanted`]. The contiguous and the paged planners both start
    /// from it; the contiguous one also falls back from PrefillKeys and PrefillSubgroup to
    /// Prefill (f16 arithmetic, small workgroup memory).
    pub fn default_kind(&self, q_len: usize, kv_aligned: bool) -> super::Kind {
        use super::Kind;
        match super::default_kind(self.device_type, q_len, kv_aligned) {
            Kind::Decode if self.subgroup_decode_wanted() => Kind::DecodeSubgroup,
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
        let per_tile = 1 + hd4 + KEYS_WG as usize + PREFILL_KEYS_TILE;
        Some((50_000 - 2 * hd4 - 64) / per_tile * PREFILL_KEYS_TILE)
    }
    /// See [`keys_loop_cap_keys`](super::keys_loop_cap_keys).
    pub fn keys_loop_cap_keys(&self, head_dim: usize, kr: usize) -> Option<usize> {
        if !self.is_cpu() {
            return None;
        }
        let hd4 = head_dim / 4;
        Some((50_000 - 2 * kr * (hd4 + 1)) * 2 * KEYS_WG as usize)
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
    /// Keys one [`Kind::DecodeSubgroup`](super::Kind::DecodeSubgroup) split may hold, if limited (see [`loop_cap_keys`](super::loop_cap_keys)): per
    /// block of 4 keys of a key lane, the K and V loops (4 keys x `slots` x (1 + rows)) and the
    /// softmax loop per row, counted as if the compiler unrolled nothing; every key lane runs
    /// on its own subgroup on CPU adapters (the smallest subgroup is the only one there).
    pub fn sg_cap_keys(&self, hd4: u32, sg_min: u32, rs: u32) -> Option<usize> {
        if !self.is_cpu() {
            return None;
        }
        let (slots, nsg) = sg_shape(hd4, sg_min);
        let (slots, nsg, rs) = (slots as usize, nsg as usize, rs as usize);
        let per_block = 2 + rs + 8 * (1 + slots * (1 + rs)) + rs * (1 + slots);
        Some(4 * nsg * (45_000 / per_block))
    }
}

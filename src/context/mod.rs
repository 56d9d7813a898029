//! The device, its queue, what it can do, and the pipeline cache.
//!
//! A [`Context`] either creates its own device ([`Context::new`]) or wraps the `wgpu::Device` and
//! `wgpu::Queue` of the application that calls us ([`Context::from_device`]). Kernels only ever
//! record into encoders; nothing here owns the user's command stream.

mod bind_group;
mod buffers;
#[cfg(feature = "capture")]
mod capture;
mod device;
mod hash;
mod launch;
mod params;
mod scope;

pub use bind_group::BIND_GROUP_SWEEP;
#[cfg(feature = "capture")]
pub use capture::Capture;
pub use device::NO_ADAPTER_HELP;
pub use params::PARAM_SLAB_BYTES;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::pipeline::{Kernel, PipelineKey};
use bind_group::BindGroupCache;
use hash::FastMap;
use params::{ConstantPool, ParamSlots};

/// Optional adapter capabilities that kernels may use; none is required.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// `SHADER_F16`: native `f16` arithmetic in WGSL.
    pub shader_f16: bool,
    /// `SUBGROUP`: subgroup operations.
    pub subgroups: bool,
    /// `TIMESTAMP_QUERY`: GPU timestamps (the benchmark uses them).
    pub timestamps: bool,
    /// The downlevel flag `SHADER_F16_IN_F32`: WGSL's `pack2x16float` / `unpack2x16float`,
    /// which naga only takes with it (capability `SHADER_FLOAT16_IN_FLOAT32`). wgpu sets it on
    /// every backend but llvmpipe without `SHADER_F16`. Read from the adapter by
    /// [`Context::new`]; a wrapped device ([`Context::from_device`]) cannot be asked, so there
    /// it is assumed except on Vulkan CPU adapters without `SHADER_F16`.
    pub f16_in_f32: bool,
}

/// Device, queue, limits, optional features and the pipeline cache. `Send + Sync`; share it
/// behind an `Arc` across threads.
pub struct Context {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    caps: Caps,
    cache: Mutex<FastMap<PipelineKey, Arc<Kernel>>>,
    /// One lock per key ever requested, held while that key's pipeline is built.
    building: Mutex<HashMap<PipelineKey, Arc<Mutex<()>>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// Bound to binding slots a variant does not read, so one layout serves all variants.
    dummy: wgpu::Buffer,
    /// One per unused `read_write` slot of a dispatch (a buffer is bound writable only once).
    dummy_rw: Vec<wgpu::Buffer>,
    constants: Mutex<ConstantPool>,
    params: Mutex<ParamSlots>,
    scratch: Mutex<Option<wgpu::Buffer>>,
    bind_groups: Mutex<BindGroupCache>,
    /// Records launches instead of running them (tools only, see [`Capture`]).
    #[cfg(feature = "capture")]
    capture: std::sync::OnceLock<Capture>,
}

/// Unfilled `read_write` slots one dispatch may have.
const DUMMY_RW: usize = 8;

impl Context {
    /// The `wgpu::Device` (to create buffers and encoders on).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }
    /// The `wgpu::Queue` (to submit encoders to).
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }
    /// The adapter's name, backend and device type.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }
    /// The device's limits (the adapter's own for [`Context::new`]).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }
    /// The optional features this device has.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// One line describing the adapter and its capabilities.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}), f16={}, subgroups={}, timestamps={}, workgroup memory {} B, storage binding {} MiB",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.caps.shader_f16,
            self.caps.subgroups,
            self.caps.timestamps,
            self.limits.max_compute_workgroup_storage_size,
            self.limits.max_storage_buffer_binding_size >> 20
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn context_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Context>();
    }
}

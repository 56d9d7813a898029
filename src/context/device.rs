//! Creating the device: adapter choice, requested features and limits, or the caller's device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::bind_group::BindGroupCache;
use super::hash::FastMap;
use super::params::{ConstantPool, ParamSlots};
use super::{Caps, Context, DUMMY_RW};
use crate::error::{Error, Result};

/// The backends to search: `WGPU_BACKEND` when set, all otherwise.
fn backends_from_env() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

/// Help text for the most common failure on a fresh CI machine.
pub const NO_ADAPTER_HELP: &str = "no GPU adapter found. On Debian/Ubuntu, `apt-get install -y mesa-vulkan-drivers` \
gives Mesa's software Vulkan device (lavapipe); WGPU_BACKEND and WGPU_ADAPTER_NAME choose among adapters";

impl Context {
    /// Create a context on the default adapter, honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// Async form of [`Context::new`].
    pub async fn new_async() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = Self::pick_adapter(&instance).await?;
        Self::from_adapter(&adapter).await
    }

    async fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
        let backends = backends_from_env();
        if let Ok(name) = std::env::var("WGPU_ADAPTER_NAME") {
            let want = name.to_lowercase();
            let adapters = instance.enumerate_adapters(backends).await;
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            return adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&want))
                .ok_or_else(|| {
                    Error::NoDevice(format!(
                        "WGPU_ADAPTER_NAME={name:?} matches none of the adapters found: {names:?}"
                    ))
                });
        }
        let opts = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        };
        match instance.request_adapter(&opts).await {
            Ok(a) => Ok(a),
            Err(e) => Err(Error::NoDevice(format!("{NO_ADAPTER_HELP} ({e})"))),
        }
    }

    /// Create a device on `adapter` with its real limits and the optional features it has.
    pub async fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let wanted =
            wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let features = adapter.features() & wanted;
        let desc = wgpu::DeviceDescriptor {
            label: Some("llama-kernels"),
            required_features: features,
            // wgpu's defaults (16 KiB workgroup memory, 128 MiB bindings) are below what most
            // adapters offer; ask for everything the adapter has.
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = adapter.request_device(&desc).await.map_err(|e| {
            Error::NoDevice(format!(
                "request_device on {}: {e}",
                adapter.get_info().name
            ))
        })?;
        let lost = Arc::new(Mutex::new(None));
        let lost2 = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut g) = lost2.lock() {
                *g = Some(format!("{reason:?}: {msg}"));
            }
        });
        let f16_in_f32 = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32);
        Ok(Self::build(
            device,
            queue,
            adapter.get_info(),
            lost,
            Some(f16_in_f32),
        ))
    }

    /// Wrap a device and queue that the application already has. Kernels use whatever limits
    /// and features the device was created with (`SHADER_F16`, `SUBGROUP` are used if enabled).
    /// Our device-lost callback is not installed: the application keeps its own.
    /// `pack2x16float` stores ([`Caps::f16_in_f32`](super::Caps::f16_in_f32)) are assumed
    /// available except on Vulkan CPU adapters without `SHADER_F16` (wgpu has no device-level
    /// query of the downlevel flags).
    pub fn from_device(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let info = device.adapter_info();
        Self::build(
            device.clone(),
            queue.clone(),
            info,
            Arc::new(Mutex::new(None)),
            None,
        )
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        lost: Arc<Mutex<Option<String>>>,
        f16_in_f32: Option<bool>,
    ) -> Self {
        let f = device.features();
        let shader_f16 = f.contains(wgpu::Features::SHADER_F16);
        let caps = Caps {
            shader_f16,
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            f16_in_f32: f16_in_f32.unwrap_or_else(|| f16_in_f32_of_device(&info, shader_f16)),
        };
        let limits = device.limits();
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("llama-kernels dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Context {
            dummy_rw: (0..DUMMY_RW)
                .map(|_| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("llama-kernels dummy rw"),
                        size: 16,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    })
                })
                .collect(),
            constants: Mutex::new(ConstantPool::default()),
            params: Mutex::new(ParamSlots::default()),
            scratch: Mutex::new(None),
            bind_groups: Mutex::new(BindGroupCache::default()),
            device,
            queue,
            info,
            limits,
            caps,
            cache: Mutex::new(FastMap::default()),
            building: Mutex::new(HashMap::new()),
            lost,
            dummy,
            #[cfg(feature = "capture")]
            capture: std::sync::OnceLock::new(),
        }
    }
}

/// `SHADER_F16_IN_F32` of a device whose adapter cannot be asked (wgpu 30 has no device-level
/// query of the downlevel flags): wgpu-hal sets it on every backend but Vulkan on llvmpipe, where
/// it equals the adapter's `SHADER_F16`. The adapter's support is unknown here, only the
/// device's feature, so every Vulkan CPU adapter without `SHADER_F16` on the device counts as
/// lacking it (at worst the integer encoder runs where `pack2x16float` could have).
pub(crate) fn f16_in_f32_of_device(info: &wgpu::AdapterInfo, shader_f16: bool) -> bool {
    shader_f16
        || !(info.backend == wgpu::Backend::Vulkan && info.device_type == wgpu::DeviceType::Cpu)
}

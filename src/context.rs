//! The device, its queue, what it can do, and the pipeline cache.
//!
//! A [`Context`] either creates its own device ([`Context::new`]) or wraps the `wgpu::Device` and
//! `wgpu::Queue` of the application that calls us ([`Context::from_device`]). Kernels only ever
//! record into encoders; nothing here owns the user's command stream.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::pipeline::{Kernel, PipelineKey};
use crate::tensor::{DType, Element, Tensor};

/// Optional adapter capabilities that kernels may use; none is required.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// `SHADER_F16`: native `f16` arithmetic in WGSL.
    pub shader_f16: bool,
    /// `SUBGROUP`: subgroup operations.
    pub subgroups: bool,
    /// `TIMESTAMP_QUERY`: GPU timestamps (the benchmark uses them).
    pub timestamps: bool,
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
}

/// A multiply-rotate hasher (the one rustc uses for its own tables) for the per-call lookups:
/// their keys are a few machine words or a small parameter block, where std's SipHash costs
/// more than the lookup. Collisions only cost time, and every key is compared in full.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.add(v as u64)
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64)
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v)
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64)
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Bind groups already created, keyed by the pipeline and every entry (binding, buffer, offset,
/// size), so a repeated call (every layer of a model step that binds the same buffers) binds
/// the group it bound before instead of creating and validating a new one; creating a bind
/// group is most of what a dispatch costs the host.
///
/// Why this is sound: a bind group is immutable and wgpu allows binding it in any number of
/// passes and command buffers; an entry compares equal only for the same buffer object (the
/// cache holds a handle, so its identity cannot be reused), offset and size, and the pipeline
/// (kernels are never evicted), so a hit is exactly the group a new creation would make. Only
/// groups that were created without a wgpu error are kept.
///
/// The cost: a cached group keeps its buffers alive. Groups unused for [`BIND_GROUP_SWEEP`]
/// launches through this context are dropped, and [`Context::release_bind_groups`] drops all
/// of them at once, so a buffer the application drops is freed at the latest after that many
/// further launches (or at that call).
#[derive(Default)]
struct BindGroupCache {
    /// By the hash of the key; each bucket holds the full keys.
    map: FastMap<u64, Vec<CachedBindGroup>>,
    len: usize,
    /// Launches looked up so far (the clock of the sweep).
    tick: u64,
}

struct CachedBindGroup {
    /// Held so that the pipeline's address stays its identity.
    kernel: Arc<Kernel>,
    entries: Vec<BindKeyEntry>,
    group: wgpu::BindGroup,
    last_used: u64,
}

/// One buffer entry of a bind group as the cache compares it.
#[derive(Clone, PartialEq, Eq)]
struct BindKeyEntry {
    binding: u32,
    buffer: wgpu::Buffer,
    offset: u64,
    size: Option<std::num::NonZeroU64>,
}

impl CachedBindGroup {
    fn matches(&self, kernel: &Arc<Kernel>, entries: &[wgpu::BindGroupEntry<'_>]) -> bool {
        Arc::ptr_eq(&self.kernel, kernel)
            && self.entries.len() == entries.len()
            && self
                .entries
                .iter()
                .zip(entries)
                .all(|(k, e)| match &e.resource {
                    wgpu::BindingResource::Buffer(b) => {
                        k.binding == e.binding
                            && k.offset == b.offset
                            && k.size == b.size
                            && k.buffer == *b.buffer
                    }
                    _ => false,
                })
    }
}

/// Launches after which a cached bind group that was not used again is dropped.
pub const BIND_GROUP_SWEEP: u64 = 4096;

/// Cached bind groups kept at most (the cache starts over past it).
const BIND_GROUP_ENTRIES: usize = 4096;

/// Immutable small storage buffers (RoPE frequency tables, paged-attention maps) keyed by their
/// bytes: created on first use, shared by every later call with the same bytes. Kernel
/// parameters use `ParamSlots` instead. Evicting drops only the pool's handle: wgpu keeps a
/// buffer alive while recorded commands use it.
#[derive(Default)]
struct ConstantPool {
    // By usage, then by the bytes (looked up by slice: no key allocation on a hit).
    map: FastMap<u32, FastMap<Vec<u8>, wgpu::Buffer>>,
    len: usize,
}

/// Kernel parameter blocks: slots of a uniform slab, each written once with
/// `queue.write_buffer` and bound at a dynamic offset, keyed by their bytes.
///
/// Why this is sound although kernels record into the caller's encoder, whose submission the
/// crate never sees: a slot is written only when it is handed out, and never again. wgpu performs
/// a `write_buffer` before the commands of the next submission, and every encoder that reads the
/// slot was recorded after the write was queued, so it is submitted in that submission or a
/// later one and reads the written bytes; nothing can overwrite them later. A full slab is
/// replaced by a new one; the old one lives while this map, a cached bind group or recorded
/// commands hold it. A call with the same parameters as an earlier one (every layer of a model
/// step) reuses that slot, writing nothing; a new position in a decode loop writes one slot and
/// keeps the bind group, which names the slab, not the slot.
#[derive(Default)]
struct ParamSlots {
    map: FastMap<Vec<u8>, (wgpu::Buffer, u32)>,
    slab: Option<wgpu::Buffer>,
    /// The next free byte of `slab`.
    next: u64,
}

/// Bytes of one parameter slab: 1024 slots at the common 256-byte uniform offset alignment, more
/// where the alignment is smaller; one buffer is created per that many new parameter blocks.
pub const PARAM_SLAB_BYTES: u64 = 1 << 18;

/// Bytes of the params binding: a parameter block padded to 16 bytes (uniform layout rules).
pub(crate) fn params_binding_size(bytes: usize) -> u64 {
    (bytes.max(16) as u64).div_ceil(16) * 16
}

/// Unfilled `read_write` slots one dispatch may have.
const DUMMY_RW: usize = 8;

/// Entries the constant pool keeps before it starts over (a few hundred KiB of small buffers).
const CONSTANT_POOL_ENTRIES: usize = 4096;

/// The backends to search: `WGPU_BACKEND` when set, all otherwise.
fn backends_from_env() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

/// The output of `f`: polled once, since wgpu's native backends answer error-scope pops at
/// once, and waited for with `pollster` only if it is not ready (a per-call cost otherwise:
/// every `encode` pops three scopes).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => pollster::block_on(f),
    }
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
        Ok(Self::build(device, queue, adapter.get_info(), lost))
    }

    /// Wrap a device and queue that the application already has. Kernels use whatever limits
    /// and features the device was created with (`SHADER_F16`, `SUBGROUP` are used if enabled).
    /// Our device-lost callback is not installed: the application keeps its own.
    pub fn from_device(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let info = device.adapter_info();
        Self::build(
            device.clone(),
            queue.clone(),
            info,
            Arc::new(Mutex::new(None)),
        )
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        lost: Arc<Mutex<Option<String>>>,
    ) -> Self {
        let f = device.features();
        let caps = Caps {
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
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
        }
    }

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
    /// A 16-byte storage buffer bound to slots that a variant never reads.
    pub fn dummy_buffer(&self) -> &wgpu::Buffer {
        &self.dummy
    }

    /// The `i`-th dummy for unused `read_write` slots (a buffer cannot be bound both ways in a
    /// dispatch, nor writable twice).
    pub fn dummy_rw_buffer(&self, i: usize) -> Result<&wgpu::Buffer> {
        self.dummy_rw.get(i).ok_or_else(|| {
            Error::gpu(
                "dummy",
                format!("an entry point leaves more than {DUMMY_RW} read_write bindings unfilled"),
            )
        })
    }

    /// An immutable buffer holding `bytes` with `usage`, from the constant pool (see
    /// `ConstantPool`): created on first use, shared by every later call with the same bytes.
    pub fn constant_buffer(
        &self,
        op: &'static str,
        usage: wgpu::BufferUsages,
        bytes: &[u8],
    ) -> Result<wgpu::Buffer> {
        let mut pool = self
            .constants
            .lock()
            .map_err(|_| Error::gpu(op, "constant pool poisoned"))?;
        if let Some(b) = pool.map.get(&usage.bits()).and_then(|m| m.get(bytes)) {
            return Ok(b.clone());
        }
        if pool.len >= CONSTANT_POOL_ENTRIES {
            pool.map.clear();
            pool.len = 0;
        }
        let mut contents = bytes.to_vec();
        contents.resize(contents.len().max(16).div_ceil(16) * 16, 0);
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(op),
                contents: &contents,
                usage,
            });
        pool.map
            .entry(usage.bits())
            .or_default()
            .insert(bytes.to_vec(), buffer.clone());
        pool.len += 1;
        Ok(buffer)
    }

    /// The params slot holding `bytes` (see `ParamSlots`): the slab and the slot's byte offset,
    /// the slot written on first use of these bytes and shared by every later call with them.
    pub(crate) fn param_slot(&self, op: &'static str, bytes: &[u8]) -> Result<(wgpu::Buffer, u32)> {
        let mut slots = self
            .params
            .lock()
            .map_err(|_| Error::gpu(op, "parameter slots poisoned"))?;
        if let Some((b, offset)) = slots.map.get(bytes) {
            return Ok((b.clone(), *offset));
        }
        let size = params_binding_size(bytes.len());
        let align = u64::from(self.limits.min_uniform_buffer_offset_alignment).max(16);
        let stride = size.div_ceil(align) * align;
        crate::ensure!(
            stride <= PARAM_SLAB_BYTES && size <= self.limits.max_uniform_buffer_binding_size,
            Gpu,
            op,
            "a parameter block of {} bytes exceeds the uniform binding limit ({} bytes)",
            bytes.len(),
            self.limits.max_uniform_buffer_binding_size
        );
        if slots.map.len() >= CONSTANT_POOL_ENTRIES {
            slots.map.clear();
        }
        let slab = match slots.slab.clone() {
            Some(b) if slots.next + stride <= PARAM_SLAB_BYTES => b,
            _ => {
                let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("llama-kernels params"),
                    size: PARAM_SLAB_BYTES,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                slots.slab = Some(b.clone());
                slots.next = 0;
                b
            }
        };
        let offset = slots.next;
        let mut contents = bytes.to_vec();
        contents.resize(size as usize, 0);
        self.queue.write_buffer(&slab, offset, &contents);
        slots.next += stride;
        // The slab is 256 KiB, so the offset fits the u32 dynamic offset.
        let offset = offset as u32;
        slots.map.insert(bytes.to_vec(), (slab.clone(), offset));
        Ok((slab, offset))
    }

    /// Number of distinct parameter blocks and constant buffers pooled (tests use it to see
    /// that parameters are reused).
    pub fn pooled_constants(&self) -> usize {
        self.constants.lock().map(|p| p.len).unwrap_or(0)
            + self.params.lock().map(|p| p.map.len()).unwrap_or(0)
    }

    /// The context's scratch storage buffer, at least `bytes` long (grown to a power of two).
    ///
    /// Shared by every call: a kernel that uses it writes it and reads it back within the
    /// dispatches of one `encode`, and wgpu orders the passes of a command buffer and the
    /// command buffers of its one queue, so calls never see each other's contents. A grown
    /// buffer replaces the old one; commands already recorded keep the old one alive.
    pub fn scratch(&self, op: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let mut s = self
            .scratch
            .lock()
            .map_err(|_| Error::gpu(op, "scratch buffer poisoned"))?;
        if let Some(b) = s.as_ref().filter(|b| b.size() >= bytes) {
            return Ok(b.clone());
        }
        let size = bytes
            .max(256)
            .next_power_of_two()
            .min(self.limits.max_storage_buffer_binding_size.max(bytes));
        let b = self.create_buffer(op, size)?;
        *s = Some(b.clone());
        Ok(b)
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

    fn check_lost(&self, op: &'static str) -> Result<()> {
        if let Some(msg) = self.lost.lock().ok().and_then(|g| g.clone()) {
            return Err(Error::DeviceLost { op, msg });
        }
        Ok(())
    }

    /// Get (or build and cache) the pipeline for `key`. Shader compile and pipeline validation
    /// errors come back as `Err`, not through wgpu's uncaptured-error handler.
    pub fn kernel(&self, op: &'static str, key: &PipelineKey) -> Result<Arc<Kernel>> {
        if let Some(k) = self
            .cache
            .lock()
            .map_err(|_| Error::gpu(op, "pipeline cache poisoned"))?
            .get(key)
        {
            return Ok(k.clone());
        }
        // One build per key: threads that miss together wait for the first builder instead of
        // each compiling the key (seconds on a CPU driver) and holding different pipelines.
        // Builds of different keys still run in parallel.
        let _building = self
            .building
            .lock()
            .map_err(|_| Error::gpu(op, "pipeline cache poisoned"))?
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = _building
            .lock()
            .map_err(|_| Error::gpu(op, "pipeline cache poisoned"))?;
        if let Some(k) = self
            .cache
            .lock()
            .map_err(|_| Error::gpu(op, "pipeline cache poisoned"))?
            .get(key)
        {
            return Ok(k.clone());
        }
        let kernel = Arc::new(self.scoped(op, || key.build(&self.device))?);
        self.cache
            .lock()
            .map_err(|_| Error::gpu(op, "pipeline cache poisoned"))?
            .insert(key.clone(), kernel.clone());
        Ok(kernel)
    }

    /// The one launch path: record one dispatch of the pipeline for `key` with `params` in its
    /// `params` uniform (a slot of the parameter slab), the `named` bindings (WGSL names, see
    /// [`crate::pipeline`]), a dummy in every other slot the entry point uses, and `workgroups`
    /// spread over the 2-D grid. Records nothing if any step fails. Opens no error scope: each
    /// op's `encode` runs its whole recording inside one ([`Context::scoped`]).
    pub fn encode_kernel<P: bytemuck::Pod>(
        &self,
        op: &'static str,
        encoder: &mut wgpu::CommandEncoder,
        key: &PipelineKey,
        params: &P,
        named: &[(&str, wgpu::BindingResource<'_>)],
        workgroups: u64,
    ) -> Result<()> {
        let kernel = self.kernel(op, key)?;
        let grid = self.grid(op, workgroups)?;
        let (bind_group, offset) =
            self.bind_params(op, &kernel, bytemuck::bytes_of(params), named)?;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(key.entry_point),
            timestamp_writes: None,
        });
        kernel.bind(&mut pass, &bind_group, offset);
        pass.dispatch_workgroups(grid.0, grid.1, grid.2);
        Ok(())
    }

    /// The bind group of one launch of `kernel` (cached, see `BindGroupCache`) and the dynamic
    /// offset of its params slot holding `params` (see `ParamSlots`); `named` and the dummies
    /// as [`Context::encode_kernel`] describes. Set both with `Kernel::bind`.
    pub(crate) fn bind_params(
        &self,
        op: &'static str,
        kernel: &Arc<Kernel>,
        params: &[u8],
        named: &[(&str, wgpu::BindingResource<'_>)],
    ) -> Result<(wgpu::BindGroup, u32)> {
        let (slab, offset) = self.param_slot(op, params)?;
        let binding = wgpu::BufferBinding {
            buffer: &slab,
            offset: 0,
            size: std::num::NonZeroU64::new(params_binding_size(params.len())),
        };
        let entries = kernel.entries(self, op, &binding, named)?;
        Ok((self.bind_group(op, kernel, &entries)?, offset))
    }

    /// The bind group of `kernel` with `entries`: the cached one when every entry matches (see
    /// `BindGroupCache`), else a new one, created under its own error scopes so that only a
    /// valid group is kept (a failure is this call's `Err`, and nothing is recorded).
    fn bind_group(
        &self,
        op: &'static str,
        kernel: &Arc<Kernel>,
        entries: &[wgpu::BindGroupEntry<'_>],
    ) -> Result<wgpu::BindGroup> {
        let mut h = FastHasher::default();
        (Arc::as_ptr(kernel) as usize).hash(&mut h);
        let mut key = Vec::new();
        for e in entries {
            let wgpu::BindingResource::Buffer(b) = &e.resource else {
                // Only buffer bindings are compared; anything else is created every time.
                return self.scoped(op, || self.create_bind_group(op, kernel, entries));
            };
            h.write_u32(e.binding);
            b.buffer.hash(&mut h);
            h.write_u64(b.offset);
            h.write_u64(b.size.map_or(0, |s| s.get()));
        }
        let hash = h.finish();
        let poisoned = || Error::gpu(op, "bind group cache poisoned");
        {
            let mut cache = self.bind_groups.lock().map_err(|_| poisoned())?;
            cache.tick += 1;
            let tick = cache.tick;
            if tick.is_multiple_of(BIND_GROUP_SWEEP) {
                let mut len = 0;
                cache.map.retain(|_, bucket| {
                    bucket.retain(|c| c.last_used + BIND_GROUP_SWEEP > tick);
                    len += bucket.len();
                    !bucket.is_empty()
                });
                cache.len = len;
            }
            if let Some(c) = cache
                .map
                .get_mut(&hash)
                .and_then(|bucket| bucket.iter_mut().find(|c| c.matches(kernel, entries)))
            {
                c.last_used = tick;
                return Ok(c.group.clone());
            }
        }
        let group = self.scoped(op, || self.create_bind_group(op, kernel, entries))?;
        for e in entries {
            if let wgpu::BindingResource::Buffer(b) = &e.resource {
                key.push(BindKeyEntry {
                    binding: e.binding,
                    buffer: b.buffer.clone(),
                    offset: b.offset,
                    size: b.size,
                });
            }
        }
        let mut cache = self.bind_groups.lock().map_err(|_| poisoned())?;
        if cache.len >= BIND_GROUP_ENTRIES {
            cache.map.clear();
            cache.len = 0;
        }
        let tick = cache.tick;
        cache.map.entry(hash).or_default().push(CachedBindGroup {
            kernel: kernel.clone(),
            entries: key,
            group: group.clone(),
            last_used: tick,
        });
        cache.len += 1;
        Ok(group)
    }

    fn create_bind_group(
        &self,
        op: &'static str,
        kernel: &Kernel,
        entries: &[wgpu::BindGroupEntry<'_>],
    ) -> wgpu::BindGroup {
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(op),
            layout: &kernel.layout,
            entries,
        })
    }

    /// Drop every cached bind group (see `BindGroupCache`), releasing the buffers they hold:
    /// for an application that has dropped a large buffer and wants its memory back before
    /// [`BIND_GROUP_SWEEP`] further launches would release it.
    pub fn release_bind_groups(&self) {
        if let Ok(mut cache) = self.bind_groups.lock() {
            cache.map.clear();
            cache.len = 0;
        }
    }

    /// Number of cached bind groups (tests use it to see that repeated calls reuse them).
    pub fn cached_bind_groups(&self) -> usize {
        self.bind_groups.lock().map(|c| c.len).unwrap_or(0)
    }

    /// Number of cached pipelines (tests use this to see that variants are reused).
    pub fn cached_pipelines(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Run `f` inside validation, out-of-memory and internal error scopes and turn anything they
    /// catch into `Error::Gpu` for `op`.
    pub fn scoped<T>(&self, op: &'static str, f: impl FnOnce() -> T) -> Result<T> {
        // After a loss wgpu objects come back invalid, and some wgpu helpers panic on them
        // (create_buffer_init maps its new buffer): refuse before calling into wgpu at all.
        self.check_lost(op)?;
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let errs = [
            ready(validation.pop()),
            ready(oom.pop()),
            ready(internal.pop()),
        ];
        if let Some(e) = errs.into_iter().flatten().next() {
            return Err(Error::gpu(op, e.to_string()));
        }
        self.check_lost(op)?;
        Ok(out)
    }

    /// Record with `f` into a fresh encoder, submit, and wait for the GPU. Errors from recording
    /// and from wgpu validation come back as `Err`.
    pub fn submit_and_wait(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<()> {
        let idx = self.scoped(op, || -> Result<wgpu::SubmissionIndex> {
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
            f(&mut enc)?;
            Ok(self.queue.submit([enc.finish()]))
        })??;
        self.wait(op, Some(idx))
    }

    /// Block until the queue has finished `idx` (or everything submitted, with `None`).
    pub fn wait(&self, op: &'static str, idx: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: idx,
                timeout: None,
            })
            .map_err(|e| Error::gpu(op, format!("waiting for the GPU: {e}")))?;
        self.check_lost(op)
    }

    /// A new buffer usable as kernel storage, upload target and readback source.
    pub fn create_buffer(&self, op: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let size = bytes.max(4).div_ceil(4) * 4;
        crate::ensure!(
            size <= self.limits.max_buffer_size,
            Limit,
            op,
            "buffer of {size} bytes exceeds the device's max_buffer_size {}",
            self.limits.max_buffer_size
        );
        self.scoped(op, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(op),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// A new contiguous tensor (contents unspecified: zeroed by wgpu).
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = shape
            .iter()
            .try_fold(dtype.size(), |b, &d| b.checked_mul(d))
            .ok_or_else(|| {
                Error::limit(
                    "empty",
                    format!("a {dtype} tensor of shape {shape:?} overflows usize bytes"),
                )
            })?;
        let buf = self.create_buffer("empty", bytes as u64)?;
        Ok(Tensor::new(&buf, 0, shape, dtype))
    }

    /// Upload host values of any [`Element`] type into a new contiguous tensor.
    pub fn upload<T: Element>(&self, data: &[T], shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        crate::ensure!(
            n == data.len(),
            Shape,
            "upload",
            "shape {shape:?} holds {n} elements but {} were given",
            data.len()
        );
        let mut bytes = bytemuck::cast_slice::<T, u8>(data).to_vec();
        bytes.resize(bytes.len().max(4).div_ceil(4) * 4, 0);
        let buf = self.scoped("upload", || {
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("upload"),
                    contents: &bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                })
        })?;
        Ok(Tensor::new(&buf, 0, shape, T::DTYPE))
    }

    /// Upload f32 values converted to `dtype` (round to nearest even).
    pub fn upload_as(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        match dtype {
            DType::F32 => self.upload(data, shape),
            DType::F16 => self.upload(
                &data
                    .iter()
                    .map(|&v| half::f16::from_f32(v))
                    .collect::<Vec<_>>(),
                shape,
            ),
            DType::BF16 => self.upload(
                &data
                    .iter()
                    .map(|&v| half::bf16::from_f32(v))
                    .collect::<Vec<_>>(),
                shape,
            ),
        }
    }

    /// Write raw bytes into `buffer` at `byte_offset` (both multiples of 4).
    pub fn write_bytes(&self, buffer: &wgpu::Buffer, byte_offset: u64, bytes: &[u8]) -> Result<()> {
        crate::ensure!(
            byte_offset.is_multiple_of(4) && bytes.len().is_multiple_of(4),
            Bounds,
            "write",
            "writes must start and end on 4-byte boundaries (offset {byte_offset}, {} bytes)",
            bytes.len()
        );
        crate::ensure!(
            byte_offset + bytes.len() as u64 <= buffer.size(),
            Bounds,
            "write",
            "write of {} bytes at {byte_offset} passes the end of a {}-byte buffer",
            bytes.len(),
            buffer.size()
        );
        self.scoped("write", || {
            self.queue.write_buffer(buffer, byte_offset, bytes)
        })?;
        self.wait("write", None)
    }

    /// Read the raw bytes `range` of `buffer` (rounded out to 4-byte boundaries internally).
    pub fn read_bytes(
        &self,
        buffer: &wgpu::Buffer,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>> {
        let op = "readback";
        crate::ensure!(
            range.start <= range.end && range.end <= buffer.size(),
            Bounds,
            op,
            "byte range {range:?} is outside a {}-byte buffer",
            buffer.size()
        );
        let start = range.start / 4 * 4;
        let end = (range.end.div_ceil(4) * 4).min(buffer.size());
        let len = (end - start).max(4);
        let staging = self.scoped(op, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: len,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        if end > start {
            self.submit_and_wait(op, |enc| {
                enc.copy_buffer_to_buffer(buffer, start, &staging, 0, end - start);
                Ok(())
            })?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait(op, None)?;
        rx.recv()
            .map_err(|_| Error::gpu(op, "map callback never ran"))?
            .map_err(|e| Error::gpu(op, format!("map_async: {e}")))?;
        let data = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::gpu(op, format!("get_mapped_range: {e}")))?;
            let s = (range.start - start) as usize;
            view[s..s + (range.end - range.start) as usize].to_vec()
        };
        staging.unmap();
        Ok(data)
    }

    /// Read a view back as f32 values in logical (row-major) order, whatever its dtype/strides.
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        t.validate("readback", "tensor")?;
        let span = t.byte_span();
        let bytes = self.read_bytes(t.buffer(), span.clone())?;
        let flat = crate::tensor::decode_f32(&bytes, t.dtype());
        if t.is_contiguous() {
            return Ok(flat[..t.numel()].to_vec());
        }
        let base = t.element_span().start;
        let mut out = Vec::with_capacity(t.numel());
        let shape = t.shape();
        let strides = t.strides();
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..t.numel() {
            let off: usize =
                t.offset() + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
            out.push(flat[off - base]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(out)
    }

    /// Read a contiguous view back as host elements of its own dtype.
    pub fn read<T: Element>(&self, t: &Tensor) -> Result<Vec<T>> {
        t.expect_dtype("readback", "tensor", T::DTYPE)?;
        Ok(self.read_f32(t)?.into_iter().map(T::from_f32).collect())
    }

    /// Fill a contiguous view with `value` (converted to its dtype).
    pub fn fill(&self, t: &Tensor, value: f32) -> Result<()> {
        t.validate("fill", "tensor")?;
        crate::ensure!(
            t.is_contiguous(),
            Shape,
            "fill",
            "fill needs a contiguous view"
        );
        let span = t.byte_span();
        let mut bytes = crate::tensor::encode_f32(&vec![value; t.numel()], t.dtype());
        // Keep neighbouring half elements that share the first/last word intact.
        let start = span.start / 4 * 4;
        let end = span.end.div_ceil(4) * 4;
        if start != span.start || end != span.end {
            let mut word = self.read_bytes(t.buffer(), start..end.min(t.buffer().size()))?;
            word.resize((end - start) as usize, 0);
            let s = (span.start - start) as usize;
            word[s..s + bytes.len()].copy_from_slice(&bytes);
            bytes = word;
        }
        self.write_bytes(t.buffer(), start, &bytes)
    }

    /// Pick a 2-D grid for `n` workgroups within `max_compute_workgroups_per_dimension`; shaders
    /// linearise it as `wid.x + wid.y * num_workgroups.x` and skip ids `>= n`.
    pub fn grid(&self, op: &'static str, n: u64) -> Result<(u32, u32, u32)> {
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        if n <= max {
            return Ok((n.max(1) as u32, 1, 1));
        }
        let y = n.div_ceil(max);
        crate::ensure!(
            y <= max,
            Limit,
            op,
            "{n} workgroups exceed the device's {max} x {max} dispatch grid"
        );
        let x = n.div_ceil(y);
        Ok((x as u32, y as u32, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Context>();
    }

    /// A repeated call binds the group it created before; a call on other buffers gets its own,
    /// and both compute the right values (a stale group would write the first call's output).
    #[test]
    fn repeated_calls_reuse_bind_groups_and_stay_correct() {
        let ctx = Context::new().expect("an adapter");
        let norm = crate::RmsNorm::new(0.0);
        let w = ctx.upload(&[1.0f32; 8], &[8]).unwrap();
        let x1 = ctx.upload(&[2.0f32; 8], &[1, 8]).unwrap();
        let x2 = ctx.upload(&[-3.0f32; 8], &[1, 8]).unwrap();
        let o1 = ctx.upload(&[f32::NAN; 8], &[1, 8]).unwrap();
        let o2 = ctx.upload(&[f32::NAN; 8], &[1, 8]).unwrap();
        let before = ctx.cached_bind_groups();
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        for _ in 0..5 {
            norm.encode(&ctx, &mut enc, &x1, &w, &o1).unwrap();
        }
        assert_eq!(ctx.cached_bind_groups(), before + 1);
        norm.encode(&ctx, &mut enc, &x2, &w, &o2).unwrap();
        assert_eq!(ctx.cached_bind_groups(), before + 2);
        ctx.queue().submit([enc.finish()]);
        assert_eq!(ctx.read_f32(&o1).unwrap(), vec![1.0; 8]);
        assert_eq!(ctx.read_f32(&o2).unwrap(), vec![-1.0; 8]);
        ctx.release_bind_groups();
        assert_eq!(ctx.cached_bind_groups(), 0);
    }

    /// A bind group wgpu refuses (a buffer without STORAGE usage) is an `Err` every time, and
    /// is never cached.
    #[test]
    fn refused_bind_groups_are_errors_and_not_cached() {
        let ctx = Context::new().expect("an adapter");
        let norm = crate::RmsNorm::new(0.0);
        let w = ctx.upload(&[1.0f32; 8], &[8]).unwrap();
        let out = ctx.empty(&[1, 8], DType::F32).unwrap();
        let plain = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 32,
            usage: wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let x = Tensor::new(&plain, 0, &[1, 8], DType::F32);
        let before = ctx.cached_bind_groups();
        for _ in 0..2 {
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            let r = norm.encode(&ctx, &mut enc, &x, &w, &out);
            assert!(
                matches!(&r, Err(Error::Gpu { op: "rms_norm", .. })),
                "{r:?}"
            );
            assert_eq!(ctx.cached_bind_groups(), before);
        }
    }

    #[test]
    fn fast_hasher_separates_nearby_keys() {
        let hash = |v: &[u8]| {
            let mut h = FastHasher::default();
            v.hash(&mut h);
            h.finish()
        };
        assert_ne!(hash(&[0; 16]), hash(&[0; 17]));
        assert_ne!(hash(&[1, 0, 0]), hash(&[0, 1, 0]));
        assert_eq!(hash(&[5; 33]), hash(&[5; 33]));
    }
}

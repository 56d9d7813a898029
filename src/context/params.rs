//! Small immutable buffers: the constant pool and the kernel parameter slab.

use wgpu::util::DeviceExt;

use super::hash::FastMap;
use super::Context;
use crate::error::{Error, Result};

/// Immutable small storage buffers (RoPE frequency tables, paged-attention maps) keyed by their
/// bytes: created on first use, shared by every later call with the same bytes. Kernel
/// parameters use `ParamSlots` instead. Evicting drops only the pool's handle: wgpu keeps a
/// buffer alive while recorded commands use it.
#[derive(Default)]
pub(super) struct ConstantPool {
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
pub(super) struct ParamSlots {
    map: FastMap<Vec<u8>, (wgpu::Buffer, u32)>,
    slab: Option<wgpu::Buffer>,
    /// The next free byte of `slab`.
    next: u64,
}

/// Bytes of one parameter slab: 1024 slots at the common 256-byte uniform offset alignment, more
/// where the alignment is smaller; one buffer is created per that many new parameter blocks.
pub const PARAM_SLAB_BYTES: u64 = 1 << 18;

/// Bytes of the params binding: a parameter block padded to 16 bytes (uniform layout rules).
pub(super) fn params_binding_size(bytes: usize) -> u64 {
    (bytes.max(16) as u64).div_ceil(16) * 16
}

/// Entries the constant pool keeps before it starts over (a few hundred KiB of small buffers).
const CONSTANT_POOL_ENTRIES: usize = 4096;

impl Context {
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
        #[cfg(feature = "capture")]
        if let Some(capture) = self.capture.get() {
            capture.created(&buffer, &contents)?;
        }
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
}

//! The bind-group cache of the launch path.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::hash::{FastHasher, FastMap};
use super::Context;
use crate::error::{Error, Result};
use crate::pipeline::Kernel;

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
pub(super) struct BindGroupCache {
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

impl Context {
    /// The bind group of `kernel` with `entries`: the cached one when every entry matches (see
    /// `BindGroupCache`), else a new one, created under its own error scopes so that only a
    /// valid group is kept (a failure is this call's `Err`, and nothing is recorded).
    pub(super) fn bind_group(
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
}

#[cfg(test)]
mod tests {
    use crate::context::Context;
    use crate::error::Error;
    use crate::tensor::{DType, Tensor};

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
}

//! The launch path: the pipeline cache, [`Context::encode_kernel`], the dummy bindings and the
//! dispatch grid.

use std::sync::Arc;

use super::params::params_binding_size;
use super::{Context, DUMMY_RW};
use crate::error::{Error, Result};
use crate::pipeline::{Kernel, PipelineKey};

impl Context {
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
        let kernel = Arc::new(
            self.scoped(op, || key.build(&self.device))?
                .map_err(|e| Error::gpu(op, e))?,
        );
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
    /// op's `encode` runs its whole recording inside one ([`Context::scoped`]). With a capture
    /// set (feature `capture`, tools only), the launch is recorded there instead.
    pub fn encode_kernel<P: bytemuck::Pod>(
        &self,
        op: &'static str,
        encoder: &mut wgpu::CommandEncoder,
        key: &PipelineKey,
        params: &P,
        named: &[(&str, wgpu::BindingResource<'_>)],
        workgroups: u64,
    ) -> Result<()> {
        let grid = self.grid(op, workgroups)?;
        #[cfg(feature = "capture")]
        if let Some(capture) = self.capture.get() {
            return capture.dispatch(self, op, key, bytemuck::bytes_of(params), named, grid);
        }
        let kernel = self.kernel(op, key)?;
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

    /// Number of cached pipelines (tests use this to see that variants are reused).
    pub fn cached_pipelines(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
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

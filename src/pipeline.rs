//! Typed pipeline keys -> shader source, entry point and override constants; binding windows.
//!
//! An op derives one [`PipelineKey`] from its "decisions" (dtype, vector width, workgroup size,
//! flags). The key *is* the list of override constants handed to wgpu, so what is cached and what
//! is compiled cannot drift apart.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Helpers shared by every shader: packed f16/bf16 decode and encode, grid linearisation.
pub const COMMON_WGSL: &str = include_str!("../shaders/common.wgsl");

/// Shared by the two attention shaders: overrides, params, input bindings, load/mask helpers.
pub const ATTENTION_COMMON_WGSL: &str = include_str!("../shaders/attention_common.wgsl");

/// One WGSL source file (a kernel family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shader {
    RmsNorm,
    AttentionPrefill,
    AttentionDecode,
    KvCache,
    Cast,
    Rope,
    /// Streaming copies, the benchmark's WGSL bandwidth ceiling.
    Copy,
    /// Unfused baselines that only the benchmark runs.
    Baseline,
}

impl Shader {
    /// Every shader, for the portability tests.
    pub const ALL: &'static [Shader] = &[
        Shader::RmsNorm,
        Shader::Cast,
        Shader::Rope,
        Shader::AttentionPrefill,
        Shader::AttentionDecode,
        Shader::KvCache,
        Shader::Copy,
        Shader::Baseline,
    ];

    /// The file name under `shaders/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Shader::RmsNorm => "rms_norm.wgsl",
            Shader::AttentionPrefill => "attention_prefill.wgsl",
            Shader::AttentionDecode => "attention_decode.wgsl",
            Shader::KvCache => "kv_cache.wgsl",
            Shader::Cast => "cast.wgsl",
            Shader::Rope => "rope.wgsl",
            Shader::Copy => "copy.wgsl",
            Shader::Baseline => "baseline.wgsl",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Shader::RmsNorm => include_str!("../shaders/rms_norm.wgsl"),
            Shader::AttentionPrefill => include_str!("../shaders/attention_prefill.wgsl"),
            Shader::AttentionDecode => include_str!("../shaders/attention_decode.wgsl"),
            Shader::KvCache => include_str!("../shaders/kv_cache.wgsl"),
            Shader::Cast => include_str!("../shaders/cast.wgsl"),
            Shader::Rope => include_str!("../shaders/rope.wgsl"),
            Shader::Copy => include_str!("../shaders/copy.wgsl"),
            Shader::Baseline => include_str!("../shaders/baseline.wgsl"),
        }
    }

    /// The full WGSL module: `common.wgsl`, then for the attention kernels `attention_common.wgsl`,
    /// then the kernel file. This concatenation is the only source transformation in the crate.
    pub fn source(self) -> String {
        match self {
            Shader::AttentionPrefill | Shader::AttentionDecode => {
                format!("{COMMON_WGSL}\n{ATTENTION_COMMON_WGSL}\n{}", self.body())
            }
            _ => format!("{COMMON_WGSL}\n{}", self.body()),
        }
    }

    /// Entry points and constant sets that the portability tests compile. Each op lists the
    /// variants it can dispatch.
    pub fn variants(self) -> Vec<PipelineKey> {
        match self {
            Shader::RmsNorm => crate::ops::rms_norm::all_variant_keys(),
            Shader::AttentionPrefill => crate::ops::attention::all_variant_keys()
                .into_iter()
                .filter(|k| k.shader == Shader::AttentionPrefill)
                .collect(),
            Shader::AttentionDecode => crate::ops::attention::all_variant_keys()
                .into_iter()
                .filter(|k| k.shader == Shader::AttentionDecode)
                .collect(),
            Shader::KvCache => crate::ops::kv_cache::all_variant_keys(),
            Shader::Cast => crate::ops::cast::all_variant_keys(),
            Shader::Rope => crate::ops::rope::all_variant_keys(),
            Shader::Copy => crate::ops::copy::all_variant_keys(),
            Shader::Baseline => crate::bench::baseline::all_variant_keys(),
        }
    }
}

/// Everything that changes the compiled code of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub shader: Shader,
    pub entry_point: &'static str,
    /// WGSL `override` constants by name. Every knob that changes code lives here.
    pub constants: Vec<(&'static str, u32)>,
}

impl PipelineKey {
    pub fn new(
        shader: Shader,
        entry_point: &'static str,
        constants: Vec<(&'static str, u32)>,
    ) -> Self {
        PipelineKey {
            shader,
            entry_point,
            constants,
        }
    }

    /// The value of constant `name`, if the key sets it.
    pub fn constant(&self, name: &str) -> Option<u32> {
        self.constants
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }

    /// Compile the pipeline (call through [`Context::kernel`], which caches and scopes errors).
    pub(crate) fn build(&self, device: &wgpu::Device) -> Kernel {
        let src = self.shader.source();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(self.shader.file_name()),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let constants: Vec<(&str, f64)> =
            self.constants.iter().map(|&(n, v)| (n, v as f64)).collect();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(self.entry_point),
            layout: None,
            module: &module,
            entry_point: Some(self.entry_point),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                // Kernels never read workgroup memory before writing it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        Kernel {
            key: self.clone(),
            pipeline,
            layout,
        }
    }
}

/// A compiled, cached pipeline and its bind group layout.
#[derive(Debug)]
pub struct Kernel {
    pub key: PipelineKey,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// Create the bind group for `entries` (binding index, resource) in group 0.
    pub fn bind_group(
        &self,
        ctx: &Context,
        op: &'static str,
        entries: &[(u32, wgpu::BindingResource<'_>)],
    ) -> Result<wgpu::BindGroup> {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
            .iter()
            .map(|(b, r)| wgpu::BindGroupEntry {
                binding: *b,
                resource: r.clone(),
            })
            .collect();
        ctx.scoped(op, || {
            ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(op),
                layout: &self.layout,
                entries: &entries,
            })
        })
    }

    /// Record one dispatch of this kernel into `enc`.
    pub fn dispatch(
        &self,
        enc: &mut wgpu::CommandEncoder,
        bind_group: &wgpu::BindGroup,
        grid: (u32, u32, u32),
    ) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.key.entry_point),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(grid.0, grid.1, grid.2);
    }
}

/// The aligned part of a buffer that one storage binding covers, and where views start in it.
#[derive(Clone, Debug)]
pub struct Window {
    pub buffer: wgpu::Buffer,
    /// First byte of the binding (a multiple of `min_storage_buffer_offset_alignment`).
    pub byte_start: u64,
    pub byte_len: u64,
}

impl Window {
    /// The binding window covering all `views`, which must share one buffer.
    pub fn covering(ctx: &Context, op: &'static str, views: &[&Tensor]) -> Result<Window> {
        let first = views
            .first()
            .ok_or_else(|| Error::shape(op, "no views to bind"))?;
        let buffer = first.buffer().clone();
        let mut lo = u64::MAX;
        let mut hi = 0u64;
        for v in views {
            if v.buffer() != &buffer {
                return Err(Error::alias(op, "views bound together must share a buffer"));
            }
            let s = v.byte_span();
            lo = lo.min(s.start);
            hi = hi.max(s.end);
        }
        let align = ctx.limits().min_storage_buffer_offset_alignment.max(4) as u64;
        let byte_start = lo / align * align;
        let byte_end = (hi.div_ceil(4) * 4).min(buffer.size()).max(byte_start + 4);
        let byte_len = byte_end - byte_start;
        let max = ctx.limits().max_storage_buffer_binding_size;
        crate::ensure!(
            byte_len <= max,
            Limit,
            op,
            "binding of {byte_len} bytes exceeds the device's max_storage_buffer_binding_size of {max} bytes"
        );
        Ok(Window {
            buffer,
            byte_start,
            byte_len,
        })
    }

    /// The offset of `view`'s first element inside this window, in elements of its dtype.
    pub fn elem_offset(&self, view: &Tensor) -> u32 {
        ((view.offset() as u64 * view.dtype().size() as u64 - self.byte_start)
            / view.dtype().size() as u64) as u32
    }

    pub fn resource(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.byte_start,
            size: std::num::NonZeroU64::new(self.byte_len),
        })
    }
}

/// A binding resource for the whole of a small buffer (uniform params, the dummy slot).
pub fn whole(buffer: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    buffer.as_entire_binding()
}

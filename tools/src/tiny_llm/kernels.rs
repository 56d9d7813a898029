//! The model's own small kernels (`kernels.wgsl`), compiled with plain wgpu on the crate's
//! device, as any application would next to the crate's ops.

use std::collections::HashMap;
use std::sync::Mutex;

use llama_kernels::{Context, DType, Tensor};
use wgpu::util::DeviceExt;

use super::model::{Error, Result};

const SOURCE: &str = include_str!("kernels.wgsl");
const WG: u64 = 64;
const MAX_GROUPS: u64 = 65535;

/// Mirrors `struct Params` in `kernels.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub inner: u32,
    pub groups_x: u32,
    pub scale: f32,
    pub _pad: [u32; 3],
}

/// One dispatch: the entry point, its specialisation and its buffers. Unused slots get the
/// crate's dummy buffers, so one bind group layout serves every entry point.
pub struct Call<'a> {
    pub entry: &'static str,
    pub act: u32,
    pub bias: Option<&'a Tensor>,
    pub a: Option<&'a Tensor>,
    pub b: Option<&'a Tensor>,
    pub ids: Option<&'a wgpu::Buffer>,
    pub y: &'a Tensor,
    pub params: Params,
    /// Invocations: each writes two adjacent elements of `y`.
    pub pairs: u64,
}

/// Entry point, dtype code, activation, bias: one specialisation.
type PipelineKey = (&'static str, u32, u32, u32);

pub struct Kernels {
    module: wgpu::ShaderModule,
    bgl: wgpu::BindGroupLayout,
    layout: wgpu::PipelineLayout,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
}

fn code(d: DType) -> u32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    }
}

impl Kernels {
    pub fn new(ctx: &Context) -> Result<Kernels> {
        let device = ctx.device();
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        ctx.scoped("tiny_llm kernels", || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("tiny_llm kernels"),
                source: wgpu::ShaderSource::Wgsl(SOURCE.into()),
            });
            let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("tiny_llm"),
                entries: &[
                    wgpu::BindGroupLayoutEntry {
                        binding: 0,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    },
                    storage(1, true),
                    storage(2, true),
                    storage(3, true),
                    storage(4, false),
                    storage(5, true),
                ],
            });
            let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("tiny_llm"),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
            (module, bgl, layout)
        })
        .map(|(module, bgl, layout)| Kernels {
            module,
            bgl,
            layout,
            pipelines: Mutex::new(HashMap::new()),
        })
        .map_err(Error::from)
    }

    fn pipeline(
        &self,
        ctx: &Context,
        entry: &'static str,
        dtype: DType,
        act: u32,
        bias: u32,
    ) -> Result<wgpu::ComputePipeline> {
        let key = (entry, code(dtype), act, bias);
        let mut cache = self
            .pipelines
            .lock()
            .map_err(|_| Error("tiny_llm: pipeline cache poisoned".into()))?;
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let constants = [
            ("DTYPE", code(dtype) as f64),
            ("ACT", act as f64),
            ("BIAS", bias as f64),
        ];
        let p = ctx.scoped("tiny_llm pipeline", || {
            ctx.device()
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&self.layout),
                    module: &self.module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        ..Default::default()
                    },
                    cache: None,
                })
        })?;
        cache.insert(key, p.clone());
        Ok(p)
    }

    /// Record one dispatch into `enc`.
    pub fn record(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        call: Call<'_>,
    ) -> Result<()> {
        let dtype = call.y.dtype();
        for (name, t) in [
            ("a", call.a),
            ("b", call.b),
            ("bias", call.bias),
            ("y", Some(call.y)),
        ] {
            if let Some(t) = t {
                if t.offset() != 0 || t.dtype() != dtype {
                    return Err(Error(format!(
                        "tiny_llm {}: tensor {name} must start at element 0 and be {dtype} (got offset {}, {})",
                        call.entry,
                        t.offset(),
                        t.dtype()
                    )));
                }
            }
        }
        let pipeline =
            self.pipeline(ctx, call.entry, dtype, call.act, call.bias.is_some() as u32)?;
        let groups = call.pairs.div_ceil(WG).max(1);
        let (gx, gy) = if groups <= MAX_GROUPS {
            (groups, 1)
        } else {
            (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
        };
        if gy > MAX_GROUPS {
            return Err(Error(format!(
                "tiny_llm {}: {} invocations are too many",
                call.entry, call.pairs
            )));
        }
        let params = Params {
            groups_x: gx as u32,
            ..call.params
        };
        let device = ctx.device();
        let dummy = ctx.dummy_buffer();
        fn buf<'b>(t: Option<&'b Tensor>, dummy: &'b wgpu::Buffer) -> &'b wgpu::Buffer {
            t.map(|t| t.buffer()).unwrap_or(dummy)
        }
        ctx.scoped("tiny_llm dispatch", || {
            let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("tiny_llm params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(call.entry),
                layout: &self.bgl,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniform.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: buf(call.a, dummy).as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: buf(call.b, dummy).as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: buf(call.bias, dummy).as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: call.y.buffer().as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 5,
                        resource: call.ids.unwrap_or(dummy).as_entire_binding(),
                    },
                ],
            });
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(call.entry),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(gx as u32, gy as u32, 1);
        })
        .map_err(Error::from)
    }
}

//! RoPE bandwidth against the device's own copy ceilings, measured in the same run:
//! (a) `copy_buffer_to_buffer` of the rotated bytes, (b) WGSL streaming-copy kernels (u32 x4 and
//! vec4 x1/x4/x16 per invocation, each from a checked and from a trusted shader module; the best
//! is the ceiling), (c) the RoPE kernel on Llama-3-8B Q+K inside a fused QKV buffer, on a plain
//! in-place `[tokens, 32, 128]` view (half and interleaved), and on the same rows 2 elements off
//! 16-byte alignment (the general `rope` entry point), for f32, f16 and bf16, >= 64 MiB each.
//!
//! Bytes counted: the rotated elements, read once and written once (the kernel moves nothing
//! else in place). Times come from GPU timestamps (empty timestamped passes around the work)
//! when the adapter has them, else from submit-and-wait wall time; two warm-ups, then the median,
//! with all cases run round-robin so that load from other processes hits them alike.
//!
//! ```sh
//! cargo run --release --example rope_speed [-- reps]      # ROPE_SPEED_DTYPE=f16 for one dtype
//! ```

use llama_kernels::ops::rope::qkv_views;
use llama_kernels::{Context, DType, Layout, Positions, Rope, Tensor};

const COPY_WGSL: &str = r#"
override PER: u32 = 1u;
struct P { n_vec4: u32, stride: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> src1: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst1: array<u32>;
@compute @workgroup_size(64)
fn copy_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid;
    for (var k = 0u; k < PER; k++) {
        let i = g + k * p.stride;
        if i < p.n_vec4 * 4u {
            dst1[i] = src1[i];
        }
    }
}
@compute @workgroup_size(64)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid;
    for (var k = 0u; k < PER; k++) {
        let i = g + k * p.stride;
        if i < p.n_vec4 {
            dst[i] = src[i];
        }
    }
}
"#;

struct Timer<'a> {
    ctx: &'a Context,
    qs: Option<wgpu::QuerySet>,
    resolve: Option<wgpu::Buffer>,
    read: Option<wgpu::Buffer>,
    reps: usize,
}

impl<'a> Timer<'a> {
    fn new(ctx: &'a Context, reps: usize) -> Self {
        let ts = ctx.caps().timestamps;
        let dev = ctx.device();
        Timer {
            ctx,
            qs: ts.then(|| {
                dev.create_query_set(&wgpu::QuerySetDescriptor {
                    label: None,
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                })
            }),
            resolve: ts.then(|| {
                dev.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            }),
            read: ts.then(|| {
                dev.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: 16,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }),
            reps,
        }
    }

    fn mark(&self, enc: &mut wgpu::CommandEncoder, idx: u32, begin: bool) {
        if let Some(qs) = &self.qs {
            let _ = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: qs,
                    beginning_of_pass_write_index: begin.then_some(idx),
                    end_of_pass_write_index: (!begin).then_some(idx),
                }),
            });
        }
    }

    /// Median milliseconds of each of `fs` (timestamps when available) and the wall-time
    /// medians, running them round-robin so that load from other processes hits all alike.
    #[allow(clippy::type_complexity)]
    fn time_all(
        &self,
        fs: &mut [Box<dyn FnMut(&mut wgpu::CommandEncoder) + '_>],
    ) -> Vec<(f64, f64)> {
        let mut gpu = vec![Vec::new(); fs.len()];
        let mut wall = vec![Vec::new(); fs.len()];
        for rep in 0..self.reps + 2 {
            for (i, f) in fs.iter_mut().enumerate() {
                let t0 = std::time::Instant::now();
                self.ctx
                    .submit_and_wait("bench", |enc| {
                        self.mark(enc, 0, false);
                        f(enc);
                        self.mark(enc, 1, true);
                        if let (Some(qs), Some(r), Some(rd)) = (&self.qs, &self.resolve, &self.read)
                        {
                            enc.resolve_query_set(qs, 0..2, r, 0);
                            enc.copy_buffer_to_buffer(r, 0, rd, 0, 16);
                        }
                        Ok(())
                    })
                    .unwrap();
                let w = t0.elapsed().as_secs_f64() * 1e3;
                if let Some(rd) = &self.read {
                    let slice = rd.slice(..);
                    slice.map_async(wgpu::MapMode::Read, |_| {});
                    self.ctx.wait("bench", None).unwrap();
                    let t: Vec<u64> =
                        bytemuck::cast_slice(&slice.get_mapped_range().unwrap()).to_vec();
                    rd.unmap();
                    let period = self.ctx.queue().get_timestamp_period() as f64;
                    if rep >= 2 {
                        gpu[i].push(t[1].wrapping_sub(t[0]) as f64 * period / 1e6);
                    }
                }
                if rep >= 2 {
                    wall[i].push(w);
                }
            }
        }
        let med = |v: &mut Vec<f64>| {
            if v.is_empty() {
                return f64::NAN;
            }
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        (0..fs.len())
            .map(|i| {
                let w = med(&mut wall[i]);
                let g = med(&mut gpu[i]);
                (if g.is_nan() { w } else { g }, w)
            })
            .collect()
    }
}

fn main() -> Result<(), llama_kernels::Error> {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.describe());
    println!(
        "timing: {} (median of {reps} after 2 warm-ups); wall time in brackets",
        if ctx.caps().timestamps {
            "GPU timestamps"
        } else {
            "wall"
        }
    );
    let timer = Timer::new(&ctx, reps);
    let dev = ctx.device();
    let checked = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("copy"),
        source: wgpu::ShaderSource::Wgsl(COPY_WGSL.into()),
    });
    // SAFETY: every access is guarded by `i < n`, and n fits both bindings.
    let trusted = unsafe {
        dev.create_shader_module_trusted(
            wgpu::ShaderModuleDescriptor {
                label: Some("copy trusted"),
                source: wgpu::ShaderSource::Wgsl(COPY_WGSL.into()),
            },
            wgpu::ShaderRuntimeChecks::unchecked(),
        )
    };
    let copy_pipe = |module: &wgpu::ShaderModule, entry: &str, per: u32| {
        dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("copy"),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("PER", per as f64)],
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    };
    // (name, words per element, elements per invocation, pipeline)
    let mut pipes = Vec::new();
    for (tname, module) in [("", &checked), (" trusted", &trusted)] {
        pipes.push((
            format!("u32 x4{tname}"),
            1u32,
            4u32,
            copy_pipe(module, "copy_scalar", 4),
        ));
        for per in [1u32, 4, 16] {
            pipes.push((
                format!("vec4 x{per}{tname}"),
                4,
                per,
                copy_pipe(module, "copy", per),
            ));
        }
    }

    let llama = Rope::new(500000.0, Layout::Half);
    let inter = Rope::new(500000.0, Layout::Interleaved);
    let only = std::env::var("ROPE_SPEED_DTYPE").ok();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        if only.as_ref().is_some_and(|o| *o != dtype.to_string()) {
            continue;
        }
        // >= 64 MiB of rotated elements per case.
        let tokens = (64usize << 20)
            .div_ceil(40 * 128 * dtype.size())
            .next_multiple_of(1024);
        // Llama-3-8B: 32 q heads, 8 kv heads, head_dim 128, Q and K in a fused QKV buffer.
        let (nh, nkv, hd) = (32usize, 8usize, 128usize);
        let row = (nh + 2 * nkv) * hd;
        let data: Vec<f32> = (0..tokens * row)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let qkv = ctx.upload_as(&data, &[tokens * row], dtype)?;
        drop(data);
        let (q, k, _) = qkv_views(qkv.buffer(), 0, tokens, nh, nkv, hd, dtype);
        let rot_bytes = (tokens * (nh + nkv) * hd * dtype.size()) as u64;
        // Plain [tokens, 32, 128] in place, same element count as Q.
        let plain_tokens = 64 * 1024 * 1024 / (32 * 128 * dtype.size());
        let plain = ctx.upload_as(
            &vec![0.5f32; plain_tokens * 32 * 128],
            &[plain_tokens, 32, 128],
            dtype,
        )?;
        let plain_bytes = (plain_tokens * 32 * 128 * dtype.size()) as u64;
        // The same rows 2 elements off 16-byte alignment: the general `rope` entry point.
        let general_tokens = plain_tokens - 1;
        let general = Tensor::new(plain.buffer(), 2, &[general_tokens, 32, 128], dtype);
        let general_bytes = (general_tokens * 32 * 128 * dtype.size()) as u64;

        println!("\n== {dtype}: fused QKV {tokens} tokens (Q+K {} MiB), plain [{plain_tokens}, 32, 128] ({} MiB)",
            rot_bytes >> 20, plain_bytes >> 20);
        // Ceilings on the Q+K byte count.
        let a = ctx.create_buffer("bench", rot_bytes)?;
        let b = ctx.create_buffer("bench", rot_bytes)?;
        let gbps = |bytes: u64, ms: f64| 2.0 * bytes as f64 / ms / 1e6;
        let n_vec4 = (rot_bytes / 16) as u32;
        let mut names: Vec<(String, u64)> = vec![("copy_buffer_to_buffer".into(), rot_bytes)];
        let mut fs: Vec<Box<dyn FnMut(&mut wgpu::CommandEncoder)>> =
            vec![Box::new(|enc: &mut wgpu::CommandEncoder| {
                enc.copy_buffer_to_buffer(&a, 0, &b, 0, rot_bytes)
            })];
        for (name, words, per, pipe) in &pipes {
            let threads = (n_vec4 as u64 * 4 / *words as u64).div_ceil(*per as u64);
            let grid = ctx.grid("bench", threads.div_ceil(64))?;
            let stride = (threads.div_ceil(64) * 64) as u32;
            let uni = ctx.constant_buffer(
                "bench",
                wgpu::BufferUsages::UNIFORM,
                bytemuck::cast_slice(&[n_vec4, stride, 0, 0]),
            )?;
            let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipe.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uni.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: if *words == 4 { 1 } else { 3 },
                        resource: a.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: if *words == 4 { 2 } else { 4 },
                        resource: b.as_entire_binding(),
                    },
                ],
            });
            names.push((format!("wgsl copy {name}"), rot_bytes));
            fs.push(Box::new(move |enc: &mut wgpu::CommandEncoder| {
                let _keep = &uni;
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(pipe);
                pass.set_bind_group(0, &bg, &[]);
                pass.dispatch_workgroups(grid.0, grid.1, grid.2);
            }));
        }
        let n_copies = fs.len();
        names.push(("rope fused Q+K".into(), rot_bytes));
        fs.push(Box::new(|enc: &mut wgpu::CommandEncoder| {
            llama
                .encode_qk(&ctx, enc, &q, &k, Positions::Start(0))
                .unwrap()
        }));
        names.push(("rope plain in place".into(), plain_bytes));
        fs.push(Box::new(|enc: &mut wgpu::CommandEncoder| {
            llama
                .encode(&ctx, enc, &plain, Positions::Start(0))
                .unwrap()
        }));
        names.push(("rope plain, general path".into(), general_bytes));
        fs.push(Box::new(|enc: &mut wgpu::CommandEncoder| {
            llama
                .encode(&ctx, enc, &general, Positions::Start(0))
                .unwrap()
        }));
        names.push(("rope plain interleaved".into(), plain_bytes));
        fs.push(Box::new(|enc: &mut wgpu::CommandEncoder| {
            inter
                .encode(&ctx, enc, &plain, Positions::Start(0))
                .unwrap()
        }));
        let times = timer.time_all(&mut fs);
        drop(fs);
        let best_copy = times[0].0;
        let best_wgsl = times[1..n_copies]
            .iter()
            .map(|t| t.0)
            .fold(f64::INFINITY, f64::min);
        for ((name, bytes), (t, w)) in names.iter().zip(&times) {
            // Compare per-byte rates, since the plain view moves a different byte count.
            let g = gbps(*bytes, *t);
            println!(
                "{name:<28} {t:>8.2} ms [{w:>8.2}]  {g:>6.2} GB/s  {:>5.1}% of best WGSL copy, {:>5.1}% of copy_buffer_to_buffer",
                100.0 * g / gbps(rot_bytes, best_wgsl),
                100.0 * g / gbps(rot_bytes, best_copy)
            );
        }
        let _: &Tensor = &plain;
    }
    Ok(())
}

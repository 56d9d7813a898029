//! Attention speed against the device's own copy ceilings, measured in the same run on the same
//! device: `copy_buffer_to_buffer` and an inline vec4 WGSL streaming-copy kernel over the K+V byte
//! count, then decode (one token; kv_len 4096 and 32768; MHA and Llama-3-8B's GQA 32/8; f32 and
//! f16) and prefill (512 and 2048 tokens, causal). GPU timestamps around each call when the
//! adapter has them, wall time of submit-and-wait otherwise; one warm-up, median of `REPS`.
//!
//! ```sh
//! cargo run --release --example attention_speed              # everything
//! cargo run --release --example attention_speed -- decode    # only decode (or: copy, prefill)
//! cargo run --release --example attention_speed -- decode 4096   # one kv_len
//! cargo run --release --example attention_speed -- probe     # load-cost probe (below)
//! ```
//!
//! Copy GB/s count the bytes copied (read once, written once). Decode runs the dispatcher's
//! choice next to the forced workgroup-memory `Decode` kernel. The probe reads 64 MiB with
//! 8-invocation workgroups: per-lane scalar loads, workgroup-uniform scalar loads (every lane the
//! same address), per-lane vec4 loads, and vec4 loads plus a dynamically indexed private array
//! (and the same with a fixed-trip inner loop): on lavapipe it shows that a uniform address costs
//! a full load per invocation, a vec4 load about as much as a scalar one, and a dynamically
//! indexed private array about as much as a load.
//!
//! Decode bytes count K and V once (what a GQA-aware kernel must read); prefill FLOPs are
//! `4 · q_len · kv_len · head_dim · n_heads`, halved for causal.

use llama_kernels::ops::attention::Kind;
use llama_kernels::{Attention, Context, DType, Error};

const REPS: usize = 5;

struct Timer {
    ctx: Context,
    qs: Option<wgpu::QuerySet>,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

impl Timer {
    fn new() -> Result<Self, Error> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| Error::NoDevice(e.to_string()))?;
        let wanted = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let features = adapter.features() & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("attention_speed"),
            required_features: features,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| Error::NoDevice(e.to_string()))?;
        let ctx = Context::from_device(&device, &queue);
        let ts = features.contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
        );
        let qs = ts.then(|| {
            device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("t"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            })
        });
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Timer {
            ctx,
            qs,
            resolve,
            read,
        })
    }

    fn kind(&self) -> &'static str {
        if self.qs.is_some() {
            "timestamp"
        } else {
            "wall"
        }
    }

    /// Milliseconds of one recorded call (median of REPS after one warm-up).
    fn time(
        &self,
        f: impl FnMut(&mut wgpu::CommandEncoder) -> Result<(), Error>,
    ) -> Result<f64, Error> {
        self.time_n(REPS, f)
    }

    /// Milliseconds of one recorded call (median of `reps` after one warm-up).
    fn time_n(
        &self,
        reps: usize,
        mut f: impl FnMut(&mut wgpu::CommandEncoder) -> Result<(), Error>,
    ) -> Result<f64, Error> {
        let ctx = &self.ctx;
        let mut times = Vec::new();
        for rep in 0..=reps {
            let t0 = std::time::Instant::now();
            let mut enc = ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            if let Some(qs) = &self.qs {
                enc.write_timestamp(qs, 0);
            }
            f(&mut enc)?;
            if let Some(qs) = &self.qs {
                enc.write_timestamp(qs, 1);
                enc.resolve_query_set(qs, 0..2, &self.resolve, 0);
                enc.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, 16);
            }
            let idx = ctx.queue().submit([enc.finish()]);
            ctx.wait("bench", Some(idx))?;
            let wall = t0.elapsed().as_secs_f64() * 1e3;
            let ms = if self.qs.is_some() {
                self.read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
                ctx.wait("bench", None)?;
                let v = self.read.slice(..).get_mapped_range().unwrap().to_vec();
                self.read.unmap();
                let t: &[u64] = bytemuck::cast_slice(&v);
                t[1].saturating_sub(t[0]) as f64 * ctx.queue().get_timestamp_period() as f64 / 1e6
            } else {
                wall
            };
            if rep > 0 {
                times.push(ms);
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(times[times.len() / 2])
    }
}

const COPY_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;
override PER: u32 = 4u;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = arrayLength(&src);
    let stride = nwg.x * 256u;
    let base = gid.x + gid.y * stride;
    let threads = stride * nwg.y;
    for (var k = 0u; k < PER; k++) {
        let i = base + k * threads;
        if i < n {
            dst[i] = src[i];
        }
    }
}
"#;

/// GB/s of copy_buffer_to_buffer and of the best vec4 WGSL copy (1, 4 or 16 vec4 per
/// invocation), over `bytes` read (and written).
fn copy_ceilings(t: &Timer, bytes: u64) -> Result<(f64, f64), Error> {
    let ctx = &t.ctx;
    // One storage binding at most (128 MiB on lavapipe); bandwidth does not depend on it here.
    let bytes = bytes.min(ctx.limits().max_storage_buffer_binding_size);
    let dev = ctx.device();
    let mk = |u| {
        dev.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: u,
            mapped_at_creation: false,
        })
    };
    let src = mk(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
    let dst = mk(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
    let ms = t.time(|enc| {
        enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
        Ok(())
    })?;
    let copy = bytes as f64 / ms / 1e6;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("copy"),
        source: wgpu::ShaderSource::Wgsl(COPY_WGSL.into()),
    });
    let mut best = 0.0f64;
    for per in [1u32, 4, 16] {
        let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("copy"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("PER", per as f64)],
                ..Default::default()
            },
            cache: None,
        });
        let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: src.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: dst.as_entire_binding(),
                },
            ],
        });
        let wgs = (bytes / 16).div_ceil(256 * per as u64);
        let grid = ctx.grid("copy", wgs)?;
        let ms = t.time(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(grid.0, grid.1, grid.2);
            Ok(())
        })?;
        let gbps = bytes as f64 / ms / 1e6;
        println!("  wgsl copy vec4 x{per:<2}: {ms:>8.2} ms {gbps:>7.2} GB/s");
        best = best.max(gbps);
    }
    println!("  copy_buffer_to_buffer: {copy:>7.2} GB/s; best wgsl copy {best:.2} GB/s");
    Ok((copy, best))
}

const PROBE_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> src4: array<vec4<u32>>;
override UNIFORM: u32 = 0u;
// Each workgroup of 8 reads 4096 words; uniform: all 8 read the same word at once (each
// workgroup's 4096 words once); per-lane: lane l reads word 8i + l.
@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var acc = 0u;
    let base = wid.x * 4096u;
    if UNIFORM == 2u {
        // 512 vec4 loads per lane (each lane 2048 words), no private array.
        var a = vec4<u32>(0u);
        for (var i = 0u; i < 512u; i++) {
            a += src4[wid.x * 4096u + 8u * i + lid];
        }
        acc = a.x + a.y + a.z + a.w;
    } else if UNIFORM == 3u {
        // 512 vec4 loads per lane plus a private array access (dynamic index) per load.
        var arr: array<vec4<u32>, 32>;
        for (var i = 0u; i < 32u; i++) {
            arr[i] = vec4<u32>(i);
        }
        for (var i = 0u; i < 512u; i++) {
            arr[i % 32u] += src4[wid.x * 4096u + 8u * i + lid];
        }
        for (var i = 0u; i < 32u; i++) {
            acc += arr[i].x + arr[i].y;
        }
    } else if UNIFORM == 4u {
        // As 3 with the array loop unrollable: 16 trips of 32 constant-count steps.
        var arr: array<vec4<u32>, 32>;
        for (var i = 0u; i < 32u; i++) {
            arr[i] = vec4<u32>(i);
        }
        for (var o = 0u; o < 16u; o++) {
            for (var i = 0u; i < 32u; i++) {
                arr[i] += src4[wid.x * 4096u + 8u * (o * 32u + i) + lid];
            }
        }
        for (var i = 0u; i < 32u; i++) {
            acc += arr[i].x + arr[i].y;
        }
    } else if UNIFORM != 0u {
        for (var i = 0u; i < 4096u; i++) {
            acc += src[base + i];
        }
    } else {
        for (var i = 0u; i < 512u; i++) {
            acc += src[base + 8u * i + lid];
        }
    }
    dst[wid.x * 8u + lid] = acc;
}
"#;

fn probe(t: &Timer) -> Result<(), Error> {
    let dev = t.ctx.device();
    let words = 1u64 << 24;
    let mk = |size, u| {
        dev.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: u,
            mapped_at_creation: false,
        })
    };
    let src = mk(words * 4, wgpu::BufferUsages::STORAGE);
    let dst = mk(words / 4096 * 32, wgpu::BufferUsages::STORAGE);
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("probe"),
        source: wgpu::ShaderSource::Wgsl(PROBE_WGSL.into()),
    });
    for uniform in [0u32, 1, 2, 3, 4] {
        let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("UNIFORM", uniform as f64)],
                ..Default::default()
            },
            cache: None,
        });
        let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: src.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: dst.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: src.as_entire_binding(),
                },
            ],
        });
        let wgs = if uniform >= 2 {
            words / 16384
        } else {
            words / 4096
        };
        let ms = t.time(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(wgs as u32, 1, 1);
            Ok(())
        })?;
        // Loads issued per invocation: 4096 (uniform) or 512 (per-lane).
        let per_inv = if uniform == 1 { 4096.0 } else { 512.0 };
        let loads = wgs as f64 * 8.0 * per_inv;
        let unique = if uniform >= 2 {
            wgs * 16384 * 4
        } else {
            wgs * 4096 * 4
        };
        println!(
            "probe mode {uniform}: {ms:.2} ms, {:.2} G lane-load instructions/s, {:.2} GB/s unique",
            loads / ms / 1e6,
            unique as f64 / ms / 1e6
        );
    }
    Ok(())
}

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104729) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

fn main() -> Result<(), Error> {
    let only: Option<String> = std::env::args().nth(1);
    let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
    let t = Timer::new()?;
    let ctx = &t.ctx;
    println!("adapter: {}; timing: {}", ctx.describe(), t.kind());
    let hd = 128usize;
    if want("probe") {
        probe(&t)?;
    }
    if want("decode") || want("copy") {
        // Optional second argument: only this kv_len.
        let kv_only: Option<usize> = std::env::args().nth(2).and_then(|a| a.parse().ok());
        for kv_len in [4096usize, 32768] {
            if kv_only.is_some_and(|k| k != kv_len) {
                continue;
            }
            for dtype in [DType::F32, DType::F16] {
                let kv_bytes = (2 * kv_len * 8 * hd * dtype.size()) as u64;
                println!(
                    "kv_len {kv_len} {} (K+V of 8 kv heads = {} MiB):",
                    dtype.name(),
                    kv_bytes >> 20
                );
                let (copy, wcopy) = copy_ceilings(&t, kv_bytes)?;
                if !want("decode") {
                    continue;
                }
                // MHA 8/8 and GQA 32/8 read the same K/V bytes; MHA 32/32 (4x the bytes) where
                // it fits one storage binding.
                for (nh, nkv) in [(8usize, 8usize), (32, 8)] {
                    let bytes = (2 * kv_len * nkv * hd * dtype.size()) as u64;
                    if bytes / 2 > ctx.limits().max_storage_buffer_binding_size {
                        continue;
                    }
                    let q = ctx.upload_as(&data(nh * hd, 1), &[1, nh, hd], dtype)?;
                    let k =
                        ctx.upload_as(&data(kv_len * nkv * hd, 2), &[kv_len, nkv, hd], dtype)?;
                    let v =
                        ctx.upload_as(&data(kv_len * nkv * hd, 3), &[kv_len, nkv, hd], dtype)?;
                    let o = ctx.empty(&[1, nh, hd], dtype)?;
                    for kind in [None, Some(Kind::Decode)] {
                        let op = Attention {
                            kind,
                            ..Attention::causal()
                        };
                        let plan = op.plan(ctx, op.dims(&q, &k, &v)?, dtype)?;
                        let ms = t.time(|enc| op.encode(ctx, enc, &q, &k, &v, None, &o))?;
                        let gbps = bytes as f64 / ms / 1e6;
                        println!(
                        "  decode {nh:>2}/{nkv:<2} {:<6}: {ms:>8.2} ms {gbps:>7.2} GB/s = {:>5.1}% of copy, {:>5.1}% of wgsl copy (splits {}, lanes {})",
                        format!("{:?}", plan.variant.kind),
                        100.0 * gbps / copy,
                        100.0 * gbps / wcopy,
                        plan.splits,
                        plan.lanes
                    );
                    }
                }
            }
        }
    }
    if want("prefill") {
        for seq in [512usize, 2048] {
            let dtype = DType::F16;
            let (nh, nkv) = (32usize, 8usize);
            let q = ctx.upload_as(&data(seq * nh * hd, 1), &[seq, nh, hd], dtype)?;
            let k = ctx.upload_as(&data(seq * nkv * hd, 2), &[seq, nkv, hd], dtype)?;
            let v = ctx.upload_as(&data(seq * nkv * hd, 3), &[seq, nkv, hd], dtype)?;
            let o = ctx.empty(&[seq, nh, hd], dtype)?;
            let op = Attention::causal();
            let plan = op.plan(ctx, op.dims(&q, &k, &v)?, dtype)?;
            // Prefill takes seconds on a CPU adapter: median of 3.
            let ms = t.time_n(3, |enc| op.encode(ctx, enc, &q, &k, &v, None, &o))?;
            let flops = 4.0 * (seq * seq * hd * nh) as f64 / 2.0;
            println!(
                "prefill {seq} tokens {nh}/{nkv} f16 causal: {ms:>9.2} ms {:>7.2} GFLOP/s ({:?}, split_kv {}, splits {})",
                flops / ms / 1e6,
                plan.variant.kind,
                plan.variant.split_kv,
                plan.splits
            );
        }
    }
    Ok(())
}

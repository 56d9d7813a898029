//! Attention speed against the device's own copy ceilings, measured in the same run on the same
//! device: `copy_buffer_to_buffer` and the benchmark's WGSL streaming copies (`bench::copy`; the
//! best is the ceiling) over the K+V byte count, then decode (one token; kv_len 4096 and 32768;
//! MHA and Llama-3-8B's GQA 32/8; f32 and f16) and prefill (512 and 2048 tokens, causal). Timed
//! by the benchmark's timer (`bench::measure`): GPU timestamps when the adapter has them, wall
//! time of submit-and-wait otherwise; one warm-up, median of `REPS`.
//!
//! ```sh
//! cargo run --release --example attention_speed              # everything
//! cargo run --release --example attention_speed -- decode    # only decode (or: copy, prefill)
//! cargo run --release --example attention_speed -- decode 4096   # one kv_len
//! cargo run --release --example attention_speed -- probe     # load-cost probe (below)
//! ```
//!
//! Copy GB/s count the bytes copied (read once, written once). Decode runs the dispatcher's
//! choice next to the forced workgroup-memory `Decode` kernel. The probe, which the benchmark has
//! no case for, reads 64 MiB with 8-invocation workgroups: per-lane scalar loads,
//! workgroup-uniform scalar loads (every lane the same address), per-lane vec4 loads, and vec4
//! loads plus a dynamically indexed private array: on lavapipe it shows that a uniform address
//! costs a full load per invocation, a vec4 load about as much as a scalar one, and a dynamically
//! indexed private array about as much as a load.
//!
//! Decode bytes count K and V once (what a GQA-aware kernel must read); prefill FLOPs are
//! `4 · q_len · kv_len · head_dim · n_heads`, halved for causal.

use llama_kernels::bench::{self, copy, Encode, Settings, Timing};
use llama_kernels::ops::attention::Kind;
use llama_kernels::{Attention, Context, DType, Error, Tensor};

const REPS: usize = 5;

/// Median milliseconds of `encode` after one warm-up, by the benchmark's timer.
fn time(ctx: &Context, runs: usize, mut encode: Encode) -> Result<f64, Error> {
    let settings = Settings {
        warmup: 1,
        runs,
        ..Settings::new(false)
    };
    bench::measure(ctx, &mut encode, Timing::of(ctx), &settings)
}

/// GB/s of copy_buffer_to_buffer and of the best WGSL copy over `bytes` read (and written).
fn copy_ceilings(ctx: &Context, bytes: u64) -> Result<(f64, f64), Error> {
    // One storage binding at most (128 MiB on lavapipe); bandwidth does not depend on it here.
    let bytes = bytes.min(ctx.limits().max_storage_buffer_binding_size) / 16 * 16;
    let src = ctx.empty(&[(bytes / 4) as usize], DType::F32)?;
    let dst = ctx.empty(&[(bytes / 4) as usize], DType::F32)?;
    let (s, d) = (src.buffer().clone(), dst.buffer().clone());
    let ms = time(
        ctx,
        REPS,
        Box::new(move |_, enc| {
            enc.copy_buffer_to_buffer(&s, 0, &d, 0, bytes);
            Ok(())
        }),
    )?;
    let copy = bytes as f64 / ms / 1e6;
    let mut best = 0.0f64;
    for v in copy::bench_variants() {
        let (s, d) = (src.clone(), dst.clone());
        let ms = time(
            ctx,
            REPS,
            Box::new(move |ctx, enc| v.encode(ctx, enc, &s, &d)),
        )?;
        let gbps = bytes as f64 / ms / 1e6;
        println!("  {:<22}: {ms:>8.2} ms {gbps:>7.2} GB/s", v.name());
        best = best.max(gbps);
    }
    println!("  copy_buffer_to_buffer: {copy:>7.2} GB/s; best wgsl copy {best:.2} GB/s");
    Ok((copy, best))
}

const PROBE_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> src4: array<vec4<u32>>;
override MODE: u32 = 0u;
// Scalar modes: each workgroup of 8 reads its 4096 words; per-lane (0): lane l reads word
// 8i + l; uniform (1): all 8 read the same word at once. Vec4 modes: 512 vec4 loads per lane.
@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var acc = 0u;
    let base = wid.x * 4096u;
    if MODE == 2u {
        var a = vec4<u32>(0u);
        for (var i = 0u; i < 512u; i++) {
            a += src4[base + 8u * i + lid];
        }
        acc = a.x + a.y + a.z + a.w;
    } else if MODE == 3u {
        // Plus a private array access with a dynamic index per load.
        var arr: array<vec4<u32>, 32>;
        for (var i = 0u; i < 32u; i++) {
            arr[i] = vec4<u32>(i);
        }
        for (var i = 0u; i < 512u; i++) {
            arr[i % 32u] += src4[base + 8u * i + lid];
        }
        for (var i = 0u; i < 32u; i++) {
            acc += arr[i].x + arr[i].y;
        }
    } else if MODE == 1u {
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

fn entry(binding: u32, t: &Tensor) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: t.buffer().as_entire_binding(),
    }
}

fn probe(ctx: &Context) -> Result<(), Error> {
    let dev = ctx.device();
    let words = 1usize << 24;
    let src = ctx.empty(&[words], DType::F32)?;
    let dst = ctx.empty(&[words / 4096 * 8], DType::F32)?;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("probe"),
        source: wgpu::ShaderSource::Wgsl(PROBE_WGSL.into()),
    });
    for mode in [0u32, 1, 2, 3] {
        let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("probe"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("MODE", mode as f64)],
                ..Default::default()
            },
            cache: None,
        });
        let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("probe"),
            layout: &pipe.get_bind_group_layout(0),
            entries: &[entry(0, &src), entry(1, &dst), entry(2, &src)],
        });
        // Vec4 modes read 4x the bytes per workgroup: a quarter of the workgroups.
        let wgs = (words / if mode >= 2 { 16384 } else { 4096 }) as u32;
        let ms = time(
            ctx,
            REPS,
            Box::new(move |_, enc| {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                pass.set_pipeline(&pipe);
                pass.set_bind_group(0, &bg, &[]);
                pass.dispatch_workgroups(wgs, 1, 1);
                Ok(())
            }),
        )?;
        // Loads issued per invocation: 4096 (uniform) or 512 (per-lane).
        let per_inv = if mode == 1 { 4096.0 } else { 512.0 };
        let loads = wgs as f64 * 8.0 * per_inv;
        println!(
            "probe mode {mode}: {ms:.2} ms, {:.2} G lane-load instructions/s, {:.2} GB/s unique",
            loads / ms / 1e6,
            (words * 4) as f64 / ms / 1e6
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
    let ctx = &Context::new()?;
    println!(
        "adapter: {}; timing: {}",
        ctx.describe(),
        Timing::of(ctx).name()
    );
    let hd = 128usize;
    if want("probe") {
        probe(ctx)?;
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
                let (copy, wcopy) = copy_ceilings(ctx, kv_bytes)?;
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
                        let (q, k, v, o) = (q.clone(), k.clone(), v.clone(), o.clone());
                        let ms = time(
                            ctx,
                            REPS,
                            Box::new(move |ctx, enc| op.encode(ctx, enc, &q, &k, &v, None, &o)),
                        )?;
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
            let ms = time(
                ctx,
                3,
                Box::new(move |ctx, enc| op.encode(ctx, enc, &q, &k, &v, None, &o)),
            )?;
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

//! Host cost of recording: CPU microseconds per `encode` call of each op (record only, nothing
//! submitted), on warm pipeline caches, beside the floor: what wgpu alone costs for one bind group
//! plus one dispatch of a trivial cached pipeline. A GPU finishes a decode step's kernels in about
//! a millisecond, so this is what a fast GPU waits on.
//!
//! ```sh
//! cargo run --release --example host_cost
//! ```
//!
//! Uses only the public API, so the same file measures any version of the crate.

use std::time::Instant;

use llama_kernels::ops::rope::qkv_views;
use llama_kernels::{Attention, Context, DType, KvCache, Layout, Positions, RmsNorm, Rope};

/// Median over `batches` of the mean µs per call over `per_batch` calls, each batch recorded
/// into a fresh encoder that is dropped unsubmitted.
fn time_calls(
    ctx: &Context,
    batches: usize,
    per_batch: usize,
    mut f: impl FnMut(&mut wgpu::CommandEncoder),
) -> f64 {
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    for _ in 0..per_batch {
        f(&mut enc);
    }
    drop(enc);
    let mut means = Vec::with_capacity(batches);
    for _ in 0..batches {
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        let t0 = Instant::now();
        for _ in 0..per_batch {
            f(&mut enc);
        }
        means.push(t0.elapsed().as_secs_f64() * 1e6 / per_batch as f64);
        drop(enc);
    }
    means.sort_by(|a, b| a.total_cmp(b));
    means[means.len() / 2]
}

const FLOOR_WGSL: &str = "
@group(0) @binding(0) var<storage, read_write> buf: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&buf)) { buf[id.x] = buf[id.x] + 1u; }
}";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.describe());
    let (batches, per) = (15, 200);
    let dev = ctx.device();

    // Floor: one bind group + one dispatch of a cached trivial pipeline, through wgpu alone.
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(FLOOR_WGSL.into()),
    });
    let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let layout = pipe.get_bind_group_layout(0);
    let fbuf = ctx.empty(&[1024], DType::F32)?;
    let floor_dispatch = |enc: &mut wgpu::CommandEncoder| {
        let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: fbuf.buffer().as_entire_binding(),
            }],
        });
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipe);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(16, 1, 1);
    };
    let floor = time_calls(&ctx, batches, per, floor_dispatch);

    // Llama-3-8B shapes, one decode token (bf16).
    let (nh, nkv, hd, hidden) = (32usize, 8usize, 128usize, 4096usize);
    let dt = DType::BF16;
    let x = ctx.empty(&[1, hidden], dt)?;
    let w = ctx.empty(&[hidden], dt)?;
    let out = ctx.empty(&[1, hidden], dt)?;
    let res = ctx.empty(&[1, hidden], dt)?;
    let norm = RmsNorm::new(1e-5);
    let rms = time_calls(&ctx, batches, per, |enc| {
        norm.encode(&ctx, enc, &x, &w, &out).unwrap()
    });
    let rms_res = time_calls(&ctx, batches, per, |enc| {
        norm.encode_residual(&ctx, enc, &x, &res, &w, &out, &res)
            .unwrap()
    });
    let qkv = ctx.empty(&[(nh + 2 * nkv) * hd], dt)?;
    let (q, k, _) = qkv_views(qkv.buffer(), 0, 1, nh, nkv, hd, dt);
    let rope = Rope::new(500000.0, Layout::Half);
    let rope_qk = time_calls(&ctx, batches, per, |enc| {
        rope.encode_qk(&ctx, enc, &q, &k, Positions::Start(100))
            .unwrap()
    });
    // Rank-4 views of the new K/V rows (`[batch 1, 1 token, n_kv_heads, head_dim]`).
    let row = (nh + 2 * nkv) * hd;
    let k4 = llama_kernels::Tensor::with_strides(
        qkv.buffer(),
        nh * hd,
        &[1, 1, nkv, hd],
        &[row, row, hd, 1],
        dt,
    );
    let v4 = llama_kernels::Tensor::with_strides(
        qkv.buffer(),
        (nh + nkv) * hd,
        &[1, 1, nkv, hd],
        &[row, row, hd, 1],
        dt,
    );
    let cap = 4096;
    let mut cache = KvCache::new(&ctx, 1, nkv, cap, hd, dt)?;
    let append = time_calls(&ctx, batches, per, |enc| {
        cache.clear();
        cache.set_len(cap / 2).unwrap();
        cache.append_rope(&ctx, enc, &k4, &v4, &rope, None).unwrap()
    });
    cache.set_len(cap / 2)?;
    let qd = ctx.empty(&[1, nh, hd], dt)?;
    let od = ctx.empty(&[1, nh, hd], dt)?;
    let attn = Attention::default();
    let decode = time_calls(&ctx, batches, per, |enc| {
        attn.encode_cached(&ctx, enc, &qd, &cache, None, &od)
            .unwrap()
    });
    let qp = ctx.empty(&[64, nh, hd], dt)?;
    let kp = ctx.empty(&[64, nkv, hd], dt)?;
    let vp = ctx.empty(&[64, nkv, hd], dt)?;
    let op = ctx.empty(&[64, nh, hd], dt)?;
    let prefill = time_calls(&ctx, batches, per, |enc| {
        attn.encode(&ctx, enc, &qp, &kp, &vp, None, &op).unwrap()
    });
    // One decode step of a 32-layer Llama-3-8B: per layer two norms (one fused with the
    // residual), RoPE on Q+K, cache append with RoPE, attention; then the final norm.
    let step = time_calls(&ctx, 5, 4, |enc| {
        for _ in 0..32 {
            norm.encode_residual(&ctx, enc, &x, &res, &w, &out, &res)
                .unwrap();
            rope.encode(&ctx, enc, &q, Positions::Start(100)).unwrap();
            cache.set_len(cap / 2).unwrap();
            cache.append_rope(&ctx, enc, &k4, &v4, &rope, None).unwrap();
            attn.encode_cached(&ctx, enc, &qd, &cache, None, &od)
                .unwrap();
            norm.encode_residual(&ctx, enc, &x, &res, &w, &out, &res)
                .unwrap();
        }
        norm.encode(&ctx, enc, &x, &w, &out).unwrap();
    });
    let step_floor = time_calls(&ctx, 5, 4, |enc| {
        for _ in 0..32 * 7 + 1 {
            floor_dispatch(enc);
        }
    });
    println!("| call | dispatches | host µs | ratio to floor per dispatch |");
    println!("|---|---|---|---|");
    for (name, us, n) in [
        ("floor: bind group + dispatch", floor, 1),
        ("rms_norm", rms, 1),
        ("rms_norm + residual", rms_res, 1),
        ("rope q+k (fused QKV)", rope_qk, 1),
        ("kv_cache append_rope", append, 2),
        ("attention decode (cached, kv 2048)", decode, 2),
        ("attention prefill 64", prefill, 1),
    ] {
        println!(
            "| {name} | {n} | {us:.1} | {:.2} |",
            us / (floor * n as f64)
        );
    }
    println!(
        "| decode step, 32-layer Llama-3-8B | {} | {step:.0} | {:.2} (floor for as many dispatches: {step_floor:.0} µs) |",
        32 * 7 + 1,
        step / step_floor
    );
    Ok(())
}

//! Host cost of recording: CPU microseconds per `encode` call of each op (record only, nothing
//! submitted) on warm pipeline and parameter caches, beside the floor: what wgpu alone costs for
//! one bind group plus one dispatch of a trivial cached pipeline. A GPU finishes a decode step's
//! kernels in about a millisecond, so on a fast GPU this is what the step waits on.
//!
//! Method: each op records into a fresh encoder that is dropped unsubmitted; one untimed batch
//! warms the pipeline cache, the parameter slots and the bind groups, then the median over `batches` of the mean
//! per call over `per_batch` calls is reported. `ratio_to_floor` is per dispatch: the op's µs
//! over (its dispatches x the floor's µs).

use std::time::Instant;

use serde_json::{json, Value};

use crate::context::Context;
use crate::error::Result;
use crate::ops::attention::{Attention, Dims};
use crate::ops::rope::qkv_views;
use crate::tensor::{DType, Tensor};
use crate::{KvCache, KvCacheConfig, Layout, Positions, Residual, RmsNorm, Rope};

/// One host-cost measurement (`kernel: "host"` in the JSON).
#[derive(Clone, Debug)]
pub struct HostRecord {
    /// The op (`rms_norm`, `rms_norm_residual`, `rope_qk_fused_qkv`, `kv_cache_append_rope`,
    /// `attention_decode_cached`, `attention_prefill`), `decode_step_llama3_8b`, or `floor`.
    pub variant: String,
    /// Median CPU microseconds per call (per step for `decode_step_llama3_8b`).
    pub host_us: f64,
    /// Dispatches one call records.
    pub dispatches: u32,
    /// `host_us / (dispatches x floor µs per dispatch)`; for the decode step the floor is the
    /// same number of floor dispatches timed as one step.
    pub ratio_to_floor: f64,
    /// Floor µs for as many dispatches as this call records (measured, for the decode step).
    pub floor_us: f64,
}

impl HostRecord {
    /// The record as a JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "kernel": "host",
            "variant": self.variant,
            "host_us": self.host_us,
            "dispatches": self.dispatches,
            "ratio_to_floor": self.ratio_to_floor,
            "floor_us": self.floor_us,
            "timing": "cpu",
        })
    }
}

/// Calls per measurement.
#[derive(Clone, Copy, Debug)]
pub struct HostSettings {
    /// Batches; the median of their per-call means is reported.
    pub batches: usize,
    /// Calls per batch of a single op.
    pub per_batch: usize,
    /// Decode steps per batch.
    pub steps_per_batch: usize,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            batches: 15,
            per_batch: 200,
            steps_per_batch: 4,
        }
    }
}

/// Median over `batches` of the mean µs per call over `per_batch` calls, each batch recorded into
/// a fresh encoder that is dropped unsubmitted; one untimed batch first warms every cache.
pub fn time_calls(
    ctx: &Context,
    batches: usize,
    per_batch: usize,
    mut f: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<f64> {
    let per_batch = per_batch.max(1);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    for _ in 0..per_batch {
        f(&mut enc)?;
    }
    drop(enc);
    let mut means = Vec::with_capacity(batches.max(1));
    for _ in 0..batches.max(1) {
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        let t0 = Instant::now();
        for _ in 0..per_batch {
            f(&mut enc)?;
        }
        means.push(t0.elapsed().as_secs_f64() * 1e6 / per_batch as f64);
        drop(enc);
    }
    Ok(super::harness::median(&mut means))
}

const FLOOR_WGSL: &str = "
@group(0) @binding(0) var<storage, read_write> buf: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&buf)) { buf[id.x] = buf[id.x] + 1u; }
}";

/// wgpu alone: a trivial pipeline built once, and per call one bind group and one dispatch.
struct Floor {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    buf: Tensor,
}

impl Floor {
    fn new(ctx: &Context) -> Result<Floor> {
        let dev = ctx.device();
        let (pipeline, layout) = ctx.scoped(OP, || {
            let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("host floor"),
                source: wgpu::ShaderSource::Wgsl(FLOOR_WGSL.into()),
            });
            let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("host floor"),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            let layout = pipeline.get_bind_group_layout(0);
            (pipeline, layout)
        })?;
        let buf = ctx.empty(&[1024], DType::F32)?;
        Ok(Floor {
            pipeline,
            layout,
            buf,
        })
    }

    // Not inlined, so that a profiler (callgrind's `--toggle-collect`) can find it by name.
    #[inline(never)]
    fn dispatch(&self, ctx: &Context, enc: &mut wgpu::CommandEncoder) {
        let bg = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: self.buf.buffer().as_entire_binding(),
            }],
        });
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(16, 1, 1);
    }
}

const OP: &str = "bench host";

/// Dispatches of one attention call: split-KV and `DecodeKeys` add a merge pass.
fn attention_dispatches(ctx: &Context, attn: &Attention, d: Dims, dtype: DType) -> Result<u32> {
    let plan = attn.plan(ctx, d, dtype)?;
    let two = plan.variant.split_kv || plan.variant.kind == crate::ops::attention::Kind::DecodeKeys;
    Ok(if two { 2 } else { 1 })
}

/// Measure the host cost of every op on Llama-3-8B's decode shapes (bf16, one token; prefill of
/// 64 tokens), the floor, and one 32-layer decode step. `keep(variant)` selects what runs beside
/// the floor, which always runs.
pub fn measure(
    ctx: &Context,
    s: &HostSettings,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<HostRecord>> {
    let floor = Floor::new(ctx)?;
    let floor_us = time_calls(ctx, s.batches, s.per_batch, |enc| {
        floor.dispatch(ctx, enc);
        Ok(())
    })?;
    let mut out = vec![HostRecord {
        variant: "floor".into(),
        host_us: floor_us,
        dispatches: 1,
        ratio_to_floor: 1.0,
        floor_us,
    }];
    let mut push = |variant: &str, host_us: f64, dispatches: u32| {
        let f = floor_us * dispatches as f64;
        out.push(HostRecord {
            variant: variant.into(),
            host_us,
            dispatches,
            ratio_to_floor: host_us / f,
            floor_us: f,
        });
    };

    // Llama-3-8B: 32 q heads over 8 kv heads, head_dim 128, hidden 4096; one decode token, bf16.
    let (nh, nkv, hd, hidden) = (32usize, 8usize, 128usize, 4096usize);
    let dt = DType::BF16;
    let x = ctx.empty(&[1, hidden], dt)?;
    let w = ctx.empty(&[hidden], dt)?;
    let out_t = ctx.empty(&[1, hidden], dt)?;
    let res = ctx.empty(&[1, hidden], dt)?;
    let norm = RmsNorm::new(1e-5);
    let (b, p) = (s.batches, s.per_batch);
    if keep("rms_norm") {
        let us = time_calls(ctx, b, p, |enc| norm.encode(ctx, enc, &x, &w, &out_t))?;
        push("rms_norm", us, 1);
    }
    if keep("rms_norm_residual") {
        let us = time_calls(ctx, b, p, |enc| {
            norm.encode_residual(ctx, enc, &x, &w, &out_t, Residual::in_place(&res))
        })?;
        push("rms_norm_residual", us, 1);
    }
    let qkv = ctx.empty(&[(nh + 2 * nkv) * hd], dt)?;
    let (q, k, _) = qkv_views(qkv.buffer(), 0, 1, nh, nkv, hd, dt);
    let rope = Rope::new(500000.0, Layout::Half);
    if keep("rope_qk_fused_qkv") {
        let us = time_calls(ctx, b, p, |enc| {
            rope.encode_qk(ctx, enc, &q, &k, Positions::Start(100))
        })?;
        push("rope_qk_fused_qkv", us, 1);
    }
    // Rank-4 views of the new K/V rows in the fused QKV buffer: [batch 1, 1 token, kv heads, hd].
    let row = (nh + 2 * nkv) * hd;
    let k4 = Tensor::with_strides(
        qkv.buffer(),
        nh * hd,
        &[1, 1, nkv, hd],
        &[row, row, hd, 1],
        dt,
    );
    let v4 = Tensor::with_strides(
        qkv.buffer(),
        (nh + nkv) * hd,
        &[1, 1, nkv, hd],
        &[row, row, hd, 1],
        dt,
    );
    let cap = 4096;
    let kv_len = cap / 2;
    let mut cache = KvCache::new(
        ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: nkv,
            capacity: cap,
            head_dim: hd,
            dtype: dt,
            kv_format: None,
        },
    )?;
    if keep("kv_cache_append_rope") {
        // Same position every call, so the parameters stay in the pool as in a warm model.
        let us = time_calls(ctx, b, p, |enc| {
            cache.set_len(kv_len)?;
            cache
                .append_rope(ctx, enc, &k4, &v4, &rope, None)
                .map(|_| ())
        })?;
        push("kv_cache_append_rope", us, 2);
    }
    cache.set_len(kv_len)?;
    let qd = ctx.empty(&[1, nh, hd], dt)?;
    let od = ctx.empty(&[1, nh, hd], dt)?;
    let attn = Attention::default();
    let dims = |q_len: usize, kv_len: usize| Dims {
        batch: 1,
        q_len,
        kv_len,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    };
    let decode_dispatches = attention_dispatches(ctx, &attn, dims(1, kv_len), dt)?;
    if keep("attention_decode_cached") {
        let us = time_calls(ctx, b, p, |enc| {
            attn.encode_cached(ctx, enc, &qd, &cache, None, &od)
        })?;
        push("attention_decode_cached", us, decode_dispatches);
    }
    if keep("attention_prefill") {
        let n = 64;
        let qp = ctx.empty(&[n, nh, hd], dt)?;
        let kp = ctx.empty(&[n, nkv, hd], dt)?;
        let vp = ctx.empty(&[n, nkv, hd], dt)?;
        let op = ctx.empty(&[n, nh, hd], dt)?;
        let dispatches = attention_dispatches(ctx, &attn, dims(n, n), dt)?;
        let us = time_calls(ctx, b, p, |enc| {
            attn.encode(ctx, enc, &qp, &kp, &vp, None, &op)
        })?;
        push("attention_prefill", us, dispatches);
    }
    if keep("decode_step_llama3_8b") {
        // One decode step of a 32-layer Llama-3-8B: per layer the attention norm (fused with the
        // residual), RoPE on Q (K is rotated by the cache append), the cache append with RoPE,
        // attention over the cache, the MLP norm (fused with the residual); then the final norm.
        // The matmuls are the application's and not counted.
        let layers = 32;
        let per_layer = 1 + 1 + 2 + decode_dispatches + 1;
        let dispatches = layers * per_layer + 1;
        // Each step is one token further on, as in a real decode loop: RoPE's position, the
        // append row and the attention length are new every step, so their parameters are
        // new too (a repeated position would only measure cache hits).
        let mut pos = kv_len;
        let step = time_calls(ctx, b.div_ceil(3), s.steps_per_batch, |enc| {
            pos = if pos + 1 < cap { pos + 1 } else { kv_len };
            for _ in 0..layers {
                norm.encode_residual(ctx, enc, &x, &w, &out_t, Residual::in_place(&res))?;
                rope.encode(ctx, enc, &q, Positions::Start(pos as i32))?;
                cache.set_len(pos)?;
                cache.append_rope(ctx, enc, &k4, &v4, &rope, None)?;
                attn.encode_cached(ctx, enc, &qd, &cache, None, &od)?;
                norm.encode_residual(ctx, enc, &x, &w, &out_t, Residual::in_place(&res))?;
            }
            norm.encode(ctx, enc, &x, &w, &out_t)
        })?;
        let step_floor = time_calls(ctx, b.div_ceil(3), s.steps_per_batch, |enc| {
            for _ in 0..dispatches {
                floor.dispatch(ctx, enc);
            }
            Ok(())
        })?;
        out.push(HostRecord {
            variant: "decode_step_llama3_8b".into(),
            host_us: step,
            dispatches,
            ratio_to_floor: step / step_floor,
            floor_us: step_floor,
        });
    }
    Ok(out)
}

/// The host-cost table (markdown-style, as BENCHMARKS.md shows it).
pub fn table(records: &[HostRecord]) -> String {
    let mut s = String::from(
        "host cost per encode call (CPU µs, record only, warm caches; floor = wgpu alone, one bind group + one dispatch)\n",
    );
    s.push_str(&format!(
        "{:<26} {:>10} {:>10} {:>10} {:>16}\n",
        "variant", "dispatches", "host_us", "floor_us", "ratio_to_floor"
    ));
    for r in records {
        s.push_str(&format!(
            "{:<26} {:>10} {:>10.1} {:>10.1} {:>16.2}\n",
            r.variant, r.dispatches, r.host_us, r.floor_us, r.ratio_to_floor
        ));
    }
    s
}

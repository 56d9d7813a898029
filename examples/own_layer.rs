//! One Llama decoder layer on the application's own device and buffers: the first thing a port
//! writes. Your matmul and SiLU shaders, the crate's RMSNorm (plain and fused with the residual
//! add), RoPE, KV cache and attention, all recorded into your command encoder; a warm-up
//! (`prepare`) before the first token; every step checked against a plain f64 CPU layer.
//!
//! A 7-token prefill, then 3 decode steps, on a small Llama-3-style layer (hidden 256, 4 query
//! heads and 2 KV heads of 64, FFN 512, theta 500000). Exits non-zero on a mismatch, or if a call
//! after the warm-up still had to build a pipeline.
//!
//! ```sh
//! cargo run --release --example own_layer
//! ```

use std::process::ExitCode;

use llama_kernels::ops::attention::Dims;
use llama_kernels::{
    Attention, Context, DType, KvCache, KvCacheConfig, Layout, Positions, Residual, RmsNorm, Rope,
    Tensor,
};
use wgpu::util::DeviceExt;

const HIDDEN: usize = 256;
const N_HEADS: usize = 4;
const N_KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const FFN: usize = 512;
const THETA: f64 = 500000.0;
const EPS: f32 = 1e-5;
const PREFILL: usize = 7;
const DECODE_STEPS: usize = 3;
const CAPACITY: usize = 16;
const Q_DIM: usize = N_HEADS * HEAD_DIM;
const KV_DIM: usize = N_KV_HEADS * HEAD_DIM;
/// f32 storage and arithmetic against f64: a few 1e-14 in practice.
const MAX_NMSE: f64 = 1e-10;

/// Your matmul: `out[t, j] (+)= sum_i x[t, i] * w[j, i]` (w row-major `[n_out, n_in]`, as a
/// PyTorch `Linear` stores it); `accumulate` 1 adds into `out` (the residual add of the FFN).
const MATMUL_WGSL: &str = r#"
struct Dims { tokens: u32, n_in: u32, n_out: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let idx = id.x;
    if (idx >= dims.tokens * dims.n_out) { return; }
    let t = idx / dims.n_out;
    let j = idx % dims.n_out;
    var acc = 0.0;
    for (var i = 0u; i < dims.n_in; i++) {
        acc += x[t * dims.n_in + i] * w[j * dims.n_in + i];
    }
    if (dims.accumulate == 1u) { acc += out[idx]; }
    out[idx] = acc;
}
"#;

/// Your SwiGLU activation, in place: `gate = silu(gate) * up`.
const SILU_WGSL: &str = r#"
struct Dims { n: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= dims.n) { return; }
    let g = gate[i];
    gate[i] = g / (1.0 + exp(-g)) * up[i];
}
"#;

fn values(seed: u64, n: usize, center: f32, spread: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            center + spread * ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        })
        .collect()
}

/// The layer's weights (f32, as uploaded; the CPU layer widens them to f64).
struct Weights {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    ffn_norm: Vec<f32>,
    w_gate: Vec<f32>,
    w_up: Vec<f32>,
    w_down: Vec<f32>,
}

impl Weights {
    fn new() -> Self {
        let lin = |seed, n_out: usize, n_in: usize| {
            values(seed, n_out * n_in, 0.0, 1.5 / (n_in as f32).sqrt())
        };
        Weights {
            attn_norm: values(1, HIDDEN, 1.0, 0.2),
            wq: lin(2, Q_DIM, HIDDEN),
            wk: lin(3, KV_DIM, HIDDEN),
            wv: lin(4, KV_DIM, HIDDEN),
            wo: lin(5, HIDDEN, Q_DIM),
            ffn_norm: values(6, HIDDEN, 1.0, 0.2),
            w_gate: lin(7, FFN, HIDDEN),
            w_up: lin(8, FFN, HIDDEN),
            w_down: lin(9, HIDDEN, FFN),
        }
    }
}

/// The plain CPU layer in f64, with its own KV cache (rotated K rows and V rows per position).
struct CpuLayer<'w> {
    w: &'w Weights,
    k_rows: Vec<Vec<f64>>,
    v_rows: Vec<Vec<f64>>,
}

impl CpuLayer<'_> {
    fn rms_norm(x: &[f64], w: &[f32]) -> Vec<f64> {
        x.chunks(HIDDEN)
            .flat_map(|row| {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / HIDDEN as f64;
                let r = 1.0 / (ms + EPS as f64).sqrt();
                row.iter().zip(w).map(move |(v, &w)| v * r * w as f64)
            })
            .collect()
    }

    fn matmul(x: &[f64], w: &[f32], n_in: usize, n_out: usize) -> Vec<f64> {
        x.chunks(n_in)
            .flat_map(|row| {
                (0..n_out).map(move |j| {
                    let wr = &w[j * n_in..(j + 1) * n_in];
                    row.iter().zip(wr).map(|(a, &b)| a * b as f64).sum::<f64>()
                })
            })
            .collect()
    }

    /// `rotate_half` RoPE of one head at position `pos`.
    fn rope(head: &mut [f64], pos: usize) {
        let half = HEAD_DIM / 2;
        for i in 0..half {
            let inv_freq = THETA.powf(-((2 * i) as f64) / HEAD_DIM as f64);
            let (s, c) = (pos as f64 * inv_freq).sin_cos();
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * c - b * s;
            head[i + half] = b * c + a * s;
        }
    }

    /// One step over `x` (`[tokens, HIDDEN]`), the new tokens at the cache's next positions.
    fn step(&mut self, x: &[f64]) -> Vec<f64> {
        let w = self.w;
        let tokens = x.len() / HIDDEN;
        let start = self.k_rows.len();
        let h = Self::rms_norm(x, &w.attn_norm);
        let mut q = Self::matmul(&h, &w.wq, HIDDEN, Q_DIM);
        let mut k = Self::matmul(&h, &w.wk, HIDDEN, KV_DIM);
        let v = Self::matmul(&h, &w.wv, HIDDEN, KV_DIM);
        for t in 0..tokens {
            for head in q[t * Q_DIM..(t + 1) * Q_DIM].chunks_mut(HEAD_DIM) {
                Self::rope(head, start + t);
            }
            for head in k[t * KV_DIM..(t + 1) * KV_DIM].chunks_mut(HEAD_DIM) {
                Self::rope(head, start + t);
            }
            self.k_rows.push(k[t * KV_DIM..(t + 1) * KV_DIM].to_vec());
            self.v_rows.push(v[t * KV_DIM..(t + 1) * KV_DIM].to_vec());
        }
        // Causal GQA attention over the cache.
        let scale = 1.0 / (HEAD_DIM as f64).sqrt();
        let mut attn = vec![0.0; tokens * Q_DIM];
        for t in 0..tokens {
            let pos = start + t;
            for hq in 0..N_HEADS {
                let kv = hq / (N_HEADS / N_KV_HEADS) * HEAD_DIM;
                let qh = &q[t * Q_DIM + hq * HEAD_DIM..][..HEAD_DIM];
                let scores: Vec<f64> = (0..=pos)
                    .map(|j| {
                        let kj = &self.k_rows[j][kv..kv + HEAD_DIM];
                        qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                let out = &mut attn[t * Q_DIM + hq * HEAD_DIM..][..HEAD_DIM];
                for (j, ej) in e.iter().enumerate() {
                    for (o, vj) in out.iter_mut().zip(&self.v_rows[j][kv..kv + HEAD_DIM]) {
                        *o += ej / sum * vj;
                    }
                }
            }
        }
        let o = Self::matmul(&attn, &w.wo, Q_DIM, HIDDEN);
        let x2: Vec<f64> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
        let h2 = Self::rms_norm(&x2, &w.ffn_norm);
        let gate = Self::matmul(&h2, &w.w_gate, HIDDEN, FFN);
        let up = Self::matmul(&h2, &w.w_up, HIDDEN, FFN);
        let act: Vec<f64> = gate
            .iter()
            .zip(&up)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        let down = Self::matmul(&act, &w.w_down, FFN, HIDDEN);
        x2.iter().zip(&down).map(|(a, b)| a + b).collect()
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    // The application's own device (wgpu's default limits), shared with the crate.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))?;
    println!("adapter: {}", adapter.get_info().name);
    let ctx = Context::from_device(&device, &queue);

    // Your buffers. The crate's views need STORAGE; COPY_SRC to read them back, COPY_DST to
    // write inputs with queue.write_buffer.
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let init = |data: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(data),
            usage,
        })
    };
    let empty = |elements: usize| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (elements * 4) as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    let w = Weights::new();
    let (attn_norm, ffn_norm) = (init(&w.attn_norm), init(&w.ffn_norm));
    let (wq, wk, wv, wo) = (init(&w.wq), init(&w.wk), init(&w.wv), init(&w.wo));
    let (w_gate, w_up, w_down) = (init(&w.w_gate), init(&w.w_up), init(&w.w_down));
    // Activations, sized for the longest step (the prefill).
    let x_buf = empty(PREFILL * HIDDEN); // the residual stream, updated in place
    let h_buf = empty(PREFILL * HIDDEN);
    let q_buf = empty(PREFILL * Q_DIM);
    let k_buf = empty(PREFILL * KV_DIM);
    let v_buf = empty(PREFILL * KV_DIM);
    let attn_buf = empty(PREFILL * Q_DIM);
    let o_buf = empty(PREFILL * HIDDEN);
    let gate_buf = empty(PREFILL * FFN);
    let up_buf = empty(PREFILL * FFN);

    // Your pipelines.
    let pipeline = |src: &str| {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let (matmul_p, silu_p) = (pipeline(MATMUL_WGSL), pipeline(SILU_WGSL));
    let dispatch = |enc: &mut wgpu::CommandEncoder,
                    p: &wgpu::ComputePipeline,
                    dims: [u32; 4],
                    bufs: &[&wgpu::Buffer],
                    threads: usize| {
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&dims),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &p.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(p);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups((threads as u32).div_ceil(64), 1, 1);
    };
    let matmul = |enc: &mut wgpu::CommandEncoder,
                  x: &wgpu::Buffer,
                  w: &wgpu::Buffer,
                  out: &wgpu::Buffer,
                  tokens: usize,
                  n_in: usize,
                  n_out: usize,
                  accumulate: bool| {
        let dims = [tokens as u32, n_in as u32, n_out as u32, accumulate as u32];
        dispatch(enc, &matmul_p, dims, &[x, w, out], tokens * n_out);
    };

    // The crate's ops and views over your buffers.
    let f32_ = DType::F32;
    let norm = RmsNorm::new(EPS);
    let rope = Rope::new(THETA, Layout::Half);
    let attention = Attention::default();
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: N_KV_HEADS,
            capacity: CAPACITY,
            head_dim: HEAD_DIM,
            dtype: f32_,
            kv_format: None,
        },
    )?;
    let attn_norm_t = Tensor::new(&attn_norm, 0, &[HIDDEN], f32_);
    let ffn_norm_t = Tensor::new(&ffn_norm, 0, &[HIDDEN], f32_);
    let views = |tokens: usize| {
        let rows = |b: &wgpu::Buffer| Tensor::new(b, 0, &[tokens, HIDDEN], f32_);
        let heads = |b: &wgpu::Buffer, n: usize| Tensor::new(b, 0, &[tokens, n, HEAD_DIM], f32_);
        (
            rows(&x_buf),
            rows(&h_buf),
            rows(&o_buf),
            heads(&q_buf, N_HEADS),
            heads(&k_buf, N_KV_HEADS),
            heads(&v_buf, N_KV_HEADS),
            heads(&attn_buf, N_HEADS),
        )
    };

    // Warm-up, at load time: build every pipeline the prefill and the decode steps will use, so
    // the first token does not wait on shader compiles.
    let mut built = 0;
    for (tokens, start) in [(PREFILL, 0), (1, PREFILL)] {
        let (x, h, o, q, k, v, _) = views(tokens);
        built += norm.prepare(&ctx, &x, &attn_norm_t, &h, None)?;
        built += norm.prepare(&ctx, &o, &ffn_norm_t, &h, Some(Residual::in_place(&x)))?;
        built += rope.prepare(&ctx, &q, None, None, Positions::Start(start as i32))?;
        built += cache.prepare(&ctx, &k, &v, Some((&rope, None)))?;
    }
    let dims = |q_len, kv_len| Dims {
        batch: 1,
        q_len,
        kv_len,
        n_heads: N_HEADS,
        n_kv_heads: N_KV_HEADS,
        head_dim: HEAD_DIM,
    };
    let mut shapes = vec![dims(PREFILL, PREFILL)];
    shapes.extend((1..=DECODE_STEPS).map(|s| dims(1, PREFILL + s)));
    built += attention.prepare(&ctx, &shapes, f32_)?;
    let warm = ctx.cached_pipelines();
    println!("warm-up: {built} pipelines built");

    let mut cpu = CpuLayer {
        w: &w,
        k_rows: vec![],
        v_rows: vec![],
    };
    let mut all_ok = true;
    let steps = std::iter::once(PREFILL).chain(std::iter::repeat_n(1, DECODE_STEPS));
    for (step, tokens) in steps.enumerate() {
        let input = values(100 + step as u64, tokens * HIDDEN, 0.0, 1.0);
        queue.write_buffer(&x_buf, 0, bytemuck::cast_slice(&input));
        let (x, h, o, q, k, v, attn) = views(tokens);
        let mut enc = device.create_command_encoder(&Default::default());
        norm.encode(&ctx, &mut enc, &x, &attn_norm_t, &h)?;
        matmul(&mut enc, &h_buf, &wq, &q_buf, tokens, HIDDEN, Q_DIM, false);
        matmul(&mut enc, &h_buf, &wk, &k_buf, tokens, HIDDEN, KV_DIM, false);
        matmul(&mut enc, &h_buf, &wv, &v_buf, tokens, HIDDEN, KV_DIM, false);
        // K is rotated on its way into the cache; the append says which rows (positions) it
        // wrote, and q's tokens are those positions.
        let appended = cache.append_rope(&ctx, &mut enc, &k, &v, &rope, None)?;
        rope.encode(&ctx, &mut enc, &q, appended.positions())?;
        attention.encode_cached(&ctx, &mut enc, &q, &cache, None, &attn)?;
        matmul(
            &mut enc, &attn_buf, &wo, &o_buf, tokens, Q_DIM, HIDDEN, false,
        );
        // x += o; h = rms_norm(x) * ffn_norm   (x updated in place)
        norm.encode_residual(&ctx, &mut enc, &o, &ffn_norm_t, &h, Residual::in_place(&x))?;
        matmul(
            &mut enc, &h_buf, &w_gate, &gate_buf, tokens, HIDDEN, FFN, false,
        );
        matmul(&mut enc, &h_buf, &w_up, &up_buf, tokens, HIDDEN, FFN, false);
        dispatch(
            &mut enc,
            &silu_p,
            [(tokens * FFN) as u32, 0, 0, 0],
            &[&gate_buf, &up_buf],
            tokens * FFN,
        );
        // x += down(act)
        matmul(
            &mut enc, &gate_buf, &w_down, &x_buf, tokens, FFN, HIDDEN, true,
        );
        queue.submit([enc.finish()]);

        let got = ctx.read_f32(&x)?;
        let want = cpu.step(&input.iter().map(|&v| v as f64).collect::<Vec<_>>());
        let err: f64 = got
            .iter()
            .zip(&want)
            .map(|(&g, w)| (g as f64 - w).powi(2))
            .sum();
        let nmse = err / want.iter().map(|w| w * w).sum::<f64>();
        let ok = nmse <= MAX_NMSE && got.iter().all(|v| v.is_finite());
        all_ok &= ok;
        let what = if step == 0 { "prefill" } else { "decode " };
        println!(
            "{what} {tokens} tokens at position {}: NMSE {nmse:.1e} {}",
            appended.start,
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    let late = ctx.cached_pipelines() - warm;
    if late != 0 {
        println!("{late} pipelines were built after the warm-up");
        all_ok = false;
    }
    println!(
        "{}",
        if all_ok {
            "decoder layer matches the f64 CPU layer; no pipeline built after the warm-up"
        } else {
            "FAILED"
        }
    );
    Ok(all_ok)
}

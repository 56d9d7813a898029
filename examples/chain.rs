//! A decoder layer's attention block on your own buffers, in one encoder you own:
//!
//! 1. `RmsNorm` on the hidden states (the layer's `input_layernorm`);
//! 2. the QKV projection: a small WGSL matmul of the application's own, recorded into the same
//!    encoder, writing a fused `[tokens, (n_heads + 2 n_kv_heads) head_dim]` buffer as
//!    Qwen2/Phi-3's `qkv_proj` does;
//! 3. `Rope::encode_qk` rotating Q and K where they sit in that buffer, one dispatch;
//! 4. causal GQA `Attention` reading Q, K and V as strided views of the same buffer.
//!
//! One submit, one read-back of the attention output, checked against the f64 reference of the
//! whole chain; the process exits non-zero on a mismatch.
//!
//! ```sh
//! cargo run --release --example chain -- [--head-dim D]
//! ```

use std::process::ExitCode;

use llama_kernels::compare::{compare, tolerance};
use llama_kernels::ops::rope::qkv_views;
use llama_kernels::reference;
use llama_kernels::{Attention, Context, DType, Layout, Positions, RmsNorm, Rope, Tensor};
use wgpu::util::DeviceExt;

// Llama-3-8B's head_dim, GQA group and rope_theta with fewer heads and a narrower hidden size.
const TOKENS: usize = 16;
const HIDDEN: usize = 256;
const N_HEADS: usize = 4;
const N_KV_HEADS: usize = 1;
/// The default head_dim (`--head-dim` changes it).
const HEAD_DIM: usize = 128;
const THETA: f64 = 500000.0;
const EPS: f32 = 1e-5;
/// Position of the first token (a chunk of a longer prompt).
const START: i32 = 100;

/// The application's own kernel: `out[t, j] = sum_i x[t, i] * w[j, i]` (a `torch.nn.Linear`
/// without bias, weight `[out, in]`), one invocation per output element.
const MATMUL_WGSL: &str = r#"
struct Dims { tokens: u32, n_in: u32, n_out: u32, _pad: u32 }
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
    out[idx] = acc;
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

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `--head-dim D` (a multiple of 8), or the default.
fn parse_head_dim() -> Result<usize, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(HEAD_DIM),
        [flag, v] if flag == "--head-dim" => match v.parse() {
            Ok(d) if d > 0 && d % 8 == 0 => Ok(d),
            _ => Err(format!("--head-dim {v:?}: use a multiple of 8")),
        },
        _ => Err(format!(
            "unexpected arguments {args:?}; usage: chain [--head-dim D]"
        )),
    }
}

fn main() -> ExitCode {
    let head_dim = match parse_head_dim() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(head_dim) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(head_dim: usize) -> Result<bool, Box<dyn std::error::Error>> {
    // Any device works (Context::from_device wraps an application's own); this one has the
    // adapter's real limits.
    let ctx = Context::new()?;
    let (device, queue) = (ctx.device(), ctx.queue());
    println!("adapter: {}", ctx.adapter_info().name);

    let row = (N_HEADS + 2 * N_KV_HEADS) * head_dim;
    let x = values(1, TOKENS * HIDDEN, 0.0, 1.0);
    let norm_w = values(2, HIDDEN, 1.0, 0.2);
    // Scaled so that q.k logits stay O(1), as trained weights keep them.
    let w_qkv = values(3, row * HIDDEN, 0.0, 0.15);

    // The application's buffers.
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
    let x_buf = init(&x);
    let norm_w_buf = init(&norm_w);
    let w_qkv_buf = init(&w_qkv);
    let normed_buf = empty(TOKENS * HIDDEN);
    let qkv_buf = empty(TOKENS * row);
    let out_buf = empty(TOKENS * N_HEADS * head_dim);

    // Views over them.
    let f32_ = DType::F32;
    let x_t = Tensor::new(&x_buf, 0, &[TOKENS, HIDDEN], f32_);
    let norm_w_t = Tensor::new(&norm_w_buf, 0, &[HIDDEN], f32_);
    let normed_t = Tensor::new(&normed_buf, 0, &[TOKENS, HIDDEN], f32_);
    let (q, k, v) = qkv_views(&qkv_buf, 0, TOKENS, N_HEADS, N_KV_HEADS, head_dim, f32_);
    let out_t = Tensor::new(&out_buf, 0, &[TOKENS, N_HEADS, head_dim], f32_);

    // The application's own pipeline for the projection.
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("qkv_proj"),
        source: wgpu::ShaderSource::Wgsl(MATMUL_WGSL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("qkv_proj"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let dims = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&[TOKENS as u32, HIDDEN as u32, row as u32, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: dims.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: normed_buf.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: w_qkv_buf.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 3,
                resource: qkv_buf.as_entire_binding(),
            },
        ],
    });

    // Everything in one encoder; nothing runs before the submit.
    let rope = Rope::new(THETA, Layout::Half);
    let positions = Positions::Start(START);
    let mut encoder = device.create_command_encoder(&Default::default());
    RmsNorm::new(EPS).encode(&ctx, &mut encoder, &x_t, &norm_w_t, &normed_t)?;
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(((TOKENS * row) as u32).div_ceil(64), 1, 1);
    }
    rope.encode_qk(&ctx, &mut encoder, &q, &k, positions)?;
    Attention::default().encode(&ctx, &mut encoder, &q, &k, &v, None, &out_t)?;
    queue.submit([encoder.finish()]);
    let got = ctx.read_f32(&out_t)?;

    // The same chain in f64.
    let (normed, _) =
        reference::rms_norm::rms_norm(&f64s(&x), &f64s(&norm_w), None, EPS as f64, 0.0, f32_);
    let mut qkv = vec![0.0f64; TOKENS * row];
    for t in 0..TOKENS {
        for j in 0..row {
            qkv[t * row + j] = (0..HIDDEN)
                .map(|i| normed[t * HIDDEN + i] * w_qkv[j * HIDDEN + i] as f64)
                .sum();
        }
    }
    let split = |from: usize, heads: usize| -> Vec<f64> {
        qkv.chunks(row)
            .flat_map(|r| r[from..from + heads * head_dim].iter().copied())
            .collect()
    };
    let (inv_freq, attention_factor) = rope.inv_freq(head_dim, START as usize + TOKENS)?;
    let pos: Vec<i64> = (0..TOKENS as i64).map(|t| START as i64 + t).collect();
    let rotate = |x: &[f64], heads: usize| {
        reference::rope::rope(
            x,
            [1, TOKENS, heads, head_dim],
            &pos,
            &inv_freq,
            attention_factor,
            Layout::Half,
            head_dim,
        )
    };
    let q_ref = rotate(&split(0, N_HEADS), N_HEADS);
    let k_ref = rotate(&split(N_HEADS * head_dim, N_KV_HEADS), N_KV_HEADS);
    let v_ref = split((N_HEADS + N_KV_HEADS) * head_dim, N_KV_HEADS);
    let want = reference::attention::attention(
        &q_ref,
        &k_ref,
        &v_ref,
        None,
        reference::attention::Dims {
            batch: 1,
            q_len: TOKENS,
            kv_len: TOKENS,
            n_heads: N_HEADS,
            n_kv_heads: N_KV_HEADS,
            head_dim,
        },
        &Default::default(),
    );
    let c = compare(&got, &want);
    let tol = tolerance(f32_);
    let ok = c.passes(tol);
    println!(
        "rms_norm -> qkv_proj -> rope q+k -> attention, {TOKENS} tokens, {N_HEADS} q heads over \
         {N_KV_HEADS} kv head(s), head_dim {head_dim}: {c} (limit {tol:.0e}) {}",
        if ok { "ok" } else { "MISMATCH" }
    );
    Ok(ok)
}

//! RoPE bandwidth against the device's own copy ceilings, measured in the same run:
//! (a) `copy_buffer_to_buffer` of the rotated bytes, (b) the benchmark's WGSL streaming copies
//! (`bench::copy::bench_variants()`, u32 and vec4 items; the best is the ceiling), (c) the RoPE
//! kernel on Llama-3-8B Q+K inside a fused QKV buffer, on a plain in-place `[tokens, 32, 128]`
//! view (half and interleaved), and on the same rows 2 elements off 16-byte alignment (the
//! general `rope` entry point), for f32, f16 and bf16, >= 64 MiB each.
//!
//! Bytes counted: the rotated elements, read once and written once (the kernel moves nothing
//! else in place). Times come from the benchmark's timer (`bench::measure_round_robin`): GPU
//! timestamps when the adapter has them, else submit-and-wait wall time; two warm-ups, then the
//! median, with all cases run round-robin so that load from other processes hits them alike.
//!
//! ```sh
//! cargo run --release --example rope_speed [-- reps]      # ROPE_SPEED_DTYPE=f16 for one dtype
//! ```

use llama_kernels::bench::{self, copy, Encode, Settings, Timing};
use llama_kernels::ops::rope::qkv_views;
use llama_kernels::{Context, DType, Layout, Positions, Rope, Tensor};

/// Rotate `t` in place with `rope`, from position 0.
fn rope_case(rope: &Rope, t: &Tensor) -> Encode {
    let (rope, t) = (rope.clone(), t.clone());
    Box::new(move |ctx, enc| rope.encode(ctx, enc, &t, Positions::Start(0)))
}

fn main() -> Result<(), llama_kernels::Error> {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let ctx = Context::new()?;
    let timing = Timing::of(&ctx);
    let settings = Settings {
        warmup: 2,
        runs: reps,
        ..Settings::new(false)
    };
    println!("adapter: {}", ctx.describe());
    println!(
        "timing: {} (median of {reps} after 2 warm-ups); wall time in brackets",
        timing.name()
    );

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
        let words = (rot_bytes / 4) as usize;
        let a = ctx.empty(&[words], DType::F32)?;
        let b = ctx.empty(&[words], DType::F32)?;
        let mut names: Vec<(String, u64)> = vec![("copy_buffer_to_buffer".into(), rot_bytes)];
        let (src, dst) = (a.buffer().clone(), b.buffer().clone());
        let mut fs: Vec<Encode> = vec![Box::new(move |_, enc| {
            enc.copy_buffer_to_buffer(&src, 0, &dst, 0, rot_bytes);
            Ok(())
        })];
        for v in copy::bench_variants() {
            names.push((v.name(), rot_bytes));
            let (a, b) = (a.clone(), b.clone());
            fs.push(Box::new(move |ctx, enc| v.encode(ctx, enc, &a, &b)));
        }
        let n_copies = fs.len();
        names.push(("rope fused Q+K".into(), rot_bytes));
        let (fused, q, k) = (llama.clone(), q.clone(), k.clone());
        fs.push(Box::new(move |ctx, enc| {
            fused.encode_qk(ctx, enc, &q, &k, Positions::Start(0))
        }));
        names.push(("rope plain in place".into(), plain_bytes));
        fs.push(rope_case(&llama, &plain));
        names.push(("rope plain, general path".into(), general_bytes));
        fs.push(rope_case(&llama, &general));
        names.push(("rope plain interleaved".into(), plain_bytes));
        fs.push(rope_case(&inter, &plain));

        let times = bench::measure_round_robin(&ctx, &mut fs, timing, &settings)?;
        drop(fs);
        let gbps = |bytes: u64, ms: f64| 2.0 * bytes as f64 / ms / 1e6;
        let best_copy = times[0].ms;
        let best_wgsl = times[1..n_copies]
            .iter()
            .map(|t| t.ms)
            .fold(f64::INFINITY, f64::min);
        for ((name, bytes), t) in names.iter().zip(&times) {
            // Compare per-byte rates, since the plain view moves a different byte count.
            let g = gbps(*bytes, t.ms);
            println!(
                "{name:<28} {:>8.2} ms [{:>8.2}]  {g:>6.2} GB/s  {:>5.1}% of best WGSL copy, {:>5.1}% of copy_buffer_to_buffer",
                t.ms,
                t.wall_ms,
                100.0 * g / gbps(rot_bytes, best_wgsl),
                100.0 * g / gbps(rot_bytes, best_copy)
            );
        }
    }
    Ok(())
}

//! QK-norm fused with RoPE against the unfused pair, on Qwen3-8B's attention heads (32 query
//! heads, 8 KV heads, head_dim 128, theta 1e6, `q_norm` and `k_norm`):
//! - fused, Q and K in separate buffers: `Rope::encode_qk_norm` (one `rope_norm` dispatch each);
//! - unfused, the same buffers: `RmsNorm` over the per-head rows `[tokens * heads, 128]` of Q and
//!   of K (in place), then `Rope::encode_qk` (one rotation dispatch each);
//! - fused, Q and K inside one fused QKV buffer: `encode_qk_norm`, one dispatch (no unfused
//!   counterpart: a `[tokens, heads, 128]` view inside a QKV row does not collapse to one row
//!   stride, which `RmsNorm` needs);
//! - RoPE alone (`encode_qk`, no norm) on the fused QKV buffer, for the cost of the norm.
//!
//! Bytes counted: Q and K read once and written once (what the fused kernel must move; the
//! unfused pair moves them twice). Times from the benchmark's timer (GPU timestamps when the
//! adapter has them, else submit-and-wait wall time), two warm-ups, median, round-robin.
//!
//! ```sh
//! cargo run --release --example qk_norm_speed [-- tokens [reps]]   # QK_NORM_SPEED_DTYPE=bf16
//! ```

use llama_kernels::bench::{self, Encode, Settings, Timing};
use llama_kernels::ops::rope::{qkv_views, HeadNorm};
use llama_kernels::{Context, DType, Layout, Positions, RmsNorm, Rope};

fn main() -> Result<(), llama_kernels::Error> {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(4096);
    let reps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(7);
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
    let (nh, nkv, hd, eps) = (32usize, 8usize, 128usize, 1e-6f32);
    let rope = Rope::new(1_000_000.0, Layout::Half);
    let only = std::env::var("QK_NORM_SPEED_DTYPE").ok();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        if only.as_ref().is_some_and(|o| *o != dtype.to_string()) {
            continue;
        }
        let fill = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let q = ctx.upload_as(&fill(tokens * nh * hd), &[tokens, nh, hd], dtype)?;
        let k = ctx.upload_as(&fill(tokens * nkv * hd), &[tokens, nkv, hd], dtype)?;
        let q_rows = q.reshape("qk_norm_speed", &[tokens * nh, hd])?;
        let k_rows = k.reshape("qk_norm_speed", &[tokens * nkv, hd])?;
        let row = (nh + 2 * nkv) * hd;
        let qkv = ctx.upload_as(&fill(tokens * row), &[tokens * row], dtype)?;
        let (fq, fk, _) = qkv_views(qkv.buffer(), 0, tokens, nh, nkv, hd, dtype);
        let wq = ctx.upload_as(&fill(hd), &[hd], dtype)?;
        let wk = ctx.upload_as(&fill(hd), &[hd], dtype)?;
        let (qn, kn) = (HeadNorm::new(&wq, eps), HeadNorm::new(&wk, eps));
        let bytes = (tokens * (nh + nkv) * hd * dtype.size()) as u64;
        println!("\n== {dtype}: {tokens} tokens, Q+K {} MiB", bytes >> 20);

        let mut names: Vec<&str> = Vec::new();
        let mut fs: Vec<Encode> = Vec::new();
        {
            let (rope, q, k, qn, kn) = (rope.clone(), q.clone(), k.clone(), qn.clone(), kn.clone());
            names.push("fused norm+rope, Q and K apart");
            fs.push(Box::new(move |ctx, enc| {
                rope.encode_qk_norm(ctx, enc, &q, &k, Some(&qn), Some(&kn), Positions::Start(0))
            }));
        }
        {
            let (rope, q, k, qr, kr) = (
                rope.clone(),
                q.clone(),
                k.clone(),
                q_rows.clone(),
                k_rows.clone(),
            );
            let (wq, wk) = (wq.clone(), wk.clone());
            names.push("RmsNorm x2, then rope");
            fs.push(Box::new(move |ctx, enc| {
                let norm = RmsNorm::new(eps);
                norm.encode(ctx, enc, &qr, &wq, &qr)?;
                norm.encode(ctx, enc, &kr, &wk, &kr)?;
                rope.encode_qk(ctx, enc, &q, &k, Positions::Start(0))
            }));
        }
        {
            let (rope, q, k, qn, kn) =
                (rope.clone(), fq.clone(), fk.clone(), qn.clone(), kn.clone());
            names.push("fused norm+rope, fused QKV");
            fs.push(Box::new(move |ctx, enc| {
                rope.encode_qk_norm(ctx, enc, &q, &k, Some(&qn), Some(&kn), Positions::Start(0))
            }));
        }
        {
            let (rope, q, k) = (rope.clone(), fq.clone(), fk.clone());
            names.push("rope alone, fused QKV");
            fs.push(Box::new(move |ctx, enc| {
                rope.encode_qk(ctx, enc, &q, &k, Positions::Start(0))
            }));
        }
        let times = bench::measure_round_robin(&ctx, &mut fs, timing, &settings)?;
        drop(fs);
        for (name, t) in names.iter().zip(&times) {
            println!(
                "{name:<32} {:>8.2} ms [{:>8.2}]  {:>6.2} GB/s (Q+K read + written once)",
                t.ms,
                t.wall_ms,
                2.0 * bytes as f64 / t.ms / 1e6
            );
        }
        println!(
            "unfused / fused (Q and K apart): {:.2}x; fused QKV norm+rope / rope alone: {:.2}x",
            times[1].ms / times[0].ms,
            times[2].ms / times[3].ms
        );
    }
    Ok(())
}

//! Speed and memory of the ways the RoPE kernel can get cos and sin (`bench::SinCos`), measured
//! side by side on the same device: the exact fixed-point method the crate uses, the built-ins
//! after fixed-point reduction, the naive f32 `pos * inv_freq` with built-ins, and a host-built
//! f64 cos/sin table. Times are per call including submit-and-wait (median of 7).
//!
//! ```sh
//! cargo run --release --example rope_sincos
//! ```

use llama_kernels::bench::{with_sincos, SinCos};
use llama_kernels::ops::rope::qkv_views;
use llama_kernels::{Context, DType, Layout, Positions, Rope};

fn main() -> Result<(), llama_kernels::Error> {
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.describe());
    let methods = [
        SinCos::Exact,
        SinCos::BuiltinReduced,
        SinCos::NaiveF32,
        SinCos::HostTable,
    ];
    // Llama-3-8B Q+K in a fused QKV buffer (2048 tokens, 32 q + 8 kv heads of 128), then 65536
    // tokens of one head (nothing shared between heads).
    for (seq, nh, nkv, hd) in [(2048usize, 32usize, 8usize, 128usize), (65536, 1, 0, 128)] {
        let row = (nh + 2 * nkv) * hd;
        let data: Vec<f32> = (0..seq * row)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let buf = ctx.upload(&data, &[seq * row])?;
        let (q, k, _) = qkv_views(buf.buffer(), 0, seq, nh, nkv, hd, DType::F32);
        for method in methods {
            let op = with_sincos(Rope::new(500000.0, Layout::Half), method);
            let go = || -> Result<(), llama_kernels::Error> {
                if nkv > 0 {
                    op.run_qk(&ctx, &q, &k, Positions::Start(0))
                } else {
                    op.run(&ctx, &q, Positions::Start(0))
                }
            };
            go()?;
            let mut times = Vec::new();
            for _ in 0..7 {
                let t = std::time::Instant::now();
                go()?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            let bytes = 2.0 * seq as f64 * (nh + nkv) as f64 * hd as f64 * 4.0;
            println!(
                "seq {seq:>6} heads {:>2}: {:<15} median {:>8.2} ms ({:.2} GB/s of Q+K read+write)",
                nh + nkv,
                format!("{method:?}"),
                times[3],
                bytes / times[3] / 1e6
            );
        }
    }
    let pairs = 64u64;
    println!(
        "frequency table: {} B per call; f64-built cos/sin table: {} MiB for 1M positions, {} MiB for 2^24",
        pairs * 16,
        ((1u64 << 20) * pairs * 8) >> 20,
        ((1u64 << 24) * pairs * 8) >> 20
    );
    Ok(())
}

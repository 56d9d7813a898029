//! A generation loop's attention: prefill a prompt, then decode token by token with the KV cache.
//!
//! Each step rotates the new query with RoPE at its position, appends the new K/V rows to the
//! cache with `KvCache::append_rope` (K rotated where it lands in the cache), and runs causal GQA
//! attention over the whole cache (`Attention::encode_cached`), all in one encoder per step.
//! Every step's output is checked against the f64 reference over all positions so far; the
//! process exits non-zero on the first mismatch.
//!
//! ```sh
//! cargo run --release --example decode_loop -- [--steps N] [--dtype f32|f16|bf16] [--head-dim D]
//! ```

use std::process::ExitCode;

use llama_kernels::compare::{compare, tolerance};
use llama_kernels::reference;
use llama_kernels::{Attention, Context, DType, KvCache, KvCacheConfig, Layout, Rope};

// Llama-3-8B's head_dim, GQA group of 4 and rope_theta, with fewer heads.
const N_HEADS: usize = 8;
const N_KV_HEADS: usize = 2;
/// The default head_dim (`--head-dim` changes it).
const HEAD_DIM: usize = 128;
const THETA: f64 = 500000.0;
const PROMPT: usize = 6;

struct Args {
    steps: usize,
    dtype: DType,
    head_dim: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        steps: 10,
        dtype: DType::F32,
        head_dim: HEAD_DIM,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--steps" => {
                let v = value()?;
                args.steps = v
                    .parse()
                    .map_err(|_| format!("--steps {v:?} is not a number"))?;
            }
            "--head-dim" => {
                let v = value()?;
                args.head_dim = match v.parse() {
                    Ok(d) if d > 0 && d % 8 == 0 => d,
                    _ => return Err(format!("--head-dim {v:?}: use a multiple of 8")),
                };
            }
            "--dtype" => {
                args.dtype = match value()?.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => return Err(format!("--dtype {other:?}: use f32, f16 or bf16")),
                }
            }
            other => {
                return Err(format!(
                "unknown argument {other:?}; usage: decode_loop [--steps N] [--dtype f32|f16|bf16] [--head-dim D]"
            ))
            }
        }
    }
    Ok(args)
}

/// Deterministic values in [-1, 1), rounded to `dtype` so the reference sees what the GPU stores.
fn values(seed: u64, n: usize, dtype: DType) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            dtype.round((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
        .collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let ctx = Context::new()?;
    let (dtype, head_dim) = (args.dtype, args.head_dim);
    let total = PROMPT + args.steps;
    println!("adapter: {}", ctx.adapter_info().name);

    // What the projections would produce for every token of the sequence.
    let (q_row, kv_row) = (N_HEADS * head_dim, N_KV_HEADS * head_dim);
    let q_all = values(1, total * q_row, dtype);
    let k_all = values(2, total * kv_row, dtype);
    let v_all = values(3, total * kv_row, dtype);

    // The f64 reference: every token rotated at its own position.
    let rope = Rope::new(THETA, Layout::Half);
    let (inv_freq, attention_factor) = rope.inv_freq(head_dim, total)?;
    let positions: Vec<i64> = (0..total as i64).collect();
    let rotate = |x: &[f64], heads: usize| {
        reference::rope::rope(
            x,
            [1, total, heads, head_dim],
            &positions,
            &inv_freq,
            attention_factor,
            Layout::Half,
            head_dim,
        )
    };
    let (q_rot, k_rot) = (rotate(&q_all, N_HEADS), rotate(&k_all, N_KV_HEADS));

    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: N_KV_HEADS,
            capacity: total,
            head_dim,
            dtype,
            kv_format: None,
        },
    )?;
    let attention = Attention::default();
    let tol = tolerance(dtype);
    let mut ok = true;
    // Step 0 is the prefill of the whole prompt; then one token per step.
    let mut start = 0;
    while start < total {
        let n = if start == 0 { PROMPT } else { 1 };
        let end = start + n;
        let q = ctx.upload_as(
            &f32s(&q_all[start * q_row..end * q_row]),
            &[n, N_HEADS, head_dim],
            dtype,
        )?;
        let k_new = ctx.upload_as(
            &f32s(&k_all[start * kv_row..end * kv_row]),
            &[1, n, N_KV_HEADS, head_dim],
            dtype,
        )?;
        let v_new = ctx.upload_as(
            &f32s(&v_all[start * kv_row..end * kv_row]),
            &[1, n, N_KV_HEADS, head_dim],
            dtype,
        )?;
        let out = ctx.empty(&[n, N_HEADS, head_dim], dtype)?;

        let mut enc = ctx.device().create_command_encoder(&Default::default());
        // Positions default to the cache length (start .. end); the append returns them, and
        // q's tokens are rotated at the same positions.
        let appended = cache.append_rope(&ctx, &mut enc, &k_new, &v_new, &rope, None)?;
        rope.encode(&ctx, &mut enc, &q, appended.positions())?;
        attention.encode_cached(&ctx, &mut enc, &q, &cache, None, &out)?;
        ctx.queue().submit([enc.finish()]);
        let got = ctx.read_f32(&out)?;

        // Queries start .. end against keys 0 .. end, causal (bottom-right aligned).
        let want = reference::attention::attention(
            &q_rot[start * q_row..end * q_row],
            &k_rot[..end * kv_row],
            &v_all[..end * kv_row],
            None,
            reference::attention::Dims {
                batch: 1,
                q_len: n,
                kv_len: end,
                n_heads: N_HEADS,
                n_kv_heads: N_KV_HEADS,
                head_dim,
            },
            &Default::default(),
        );
        let c = compare(&got, &want);
        let pass = c.passes(tol);
        ok &= pass;
        let what = if start == 0 {
            format!("prefill {n} tokens")
        } else {
            format!("decode at position {start}")
        };
        println!(
            "{what:<24} kv_len {end:>3}: {c} {}",
            if pass { "ok" } else { "MISMATCH" }
        );
        if !pass {
            break;
        }
        start = end;
    }
    println!(
        "{} ({dtype}, {N_HEADS} q heads over {N_KV_HEADS} kv heads, head_dim {head_dim}, limit {tol:.0e})",
        if ok { "all steps match the f64 reference" } else { "MISMATCH" }
    );
    Ok(ok)
}

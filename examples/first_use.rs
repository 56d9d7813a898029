//! First-use cost of one attention kernel: the first `run` (pipeline creation and, on lavapipe,
//! the LLVM compile at the first dispatch) and one warm run, wall time, with the NMSE against
//! the f64 reference. Run it with an empty Mesa cache to see what a fresh machine pays:
//!
//! ```sh
//! MESA_SHADER_CACHE_DISABLE=true cargo run --release --example first_use -- decode_keys f32 4 1
//! ```
//!
//! Arguments: kind (`decode`, `decode_keys`, `decode_subgroup`, `prefill`, `prefill_keys`,
//! `prefill_subgroup`, `paged`), dtype (`f32`, `f16`, `bf16`), GQA group (query heads per KV
//! head; 8 KV heads, head_dim 128), q_len.
//! The KV length is 4096 for decode and q_len for prefill. `paged` times the parts of the
//! self-test's paged row one by one (no NMSE): `append_rope` into pages of 16 (HND), then paged
//! attention over a batch of the decode sequence alone (1 query over 40 keys), of the prompt
//! alone (12 queries), and of both.

use llama_kernels::ops::attention::Kind;
use llama_kernels::ops::paged::Heads;
use llama_kernels::{compare, reference, Attention, Context, DType, Error};
use llama_kernels::{Layout, PageTable, PagedBatch, PagedKvCache, PagedKvConfig, Rope};
use std::time::Instant;

/// Deterministic values in [-0.5, 0.5).
fn gen(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0)
                - 0.5
        })
        .collect()
}

/// The `paged` kind: first use of each part of the self-test's paged row.
fn paged(ctx: &Context, dtype: DType, group: usize) -> Result<(), Error> {
    let (n_kv, hd) = (8usize, 128usize);
    let heads = Heads {
        n_heads: n_kv * group,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    let mut table = PageTable::new(8, 16)?;
    let cache = PagedKvCache::new(
        ctx,
        PagedKvConfig {
            n_pages: 8,
            page_size: 16,
            n_kv_heads: n_kv,
            head_dim: hd,
            dtype,
            layout: llama_kernels::PageLayout::Hnd,
            kv_format: None,
        },
    )?;
    let (a, b) = (table.add_sequence(), table.add_sequence());
    let rope = Rope::new(500000.0, Layout::Half).with_seq_len(64);
    table.append(&[(b, 39)])?;
    let batch = PagedBatch::new(ctx, &table, &[(b, 39)], heads)?;
    let k = ctx.upload_as(&gen(39 * n_kv * hd, 2), &[39, n_kv, hd], dtype)?;
    let v = ctx.upload_as(&gen(39 * n_kv * hd, 3), &[39, n_kv, hd], dtype)?;
    let t = Instant::now();
    ctx.submit_and_wait("first_use", |enc| {
        cache.append_rope(ctx, enc, &batch, &k, &v, &rope, None, None)
    })?;
    println!(
        "append_rope {dtype}: first use {:.2} s",
        t.elapsed().as_secs_f64()
    );
    table.append(&[(a, 12), (b, 1)])?;
    let op = Attention::default();
    for (name, entries) in [
        ("decode 1 over 40", vec![(b, 1)]),
        ("prompt 12", vec![(a, 12)]),
        ("both", vec![(a, 12), (b, 1)]),
    ] {
        let batch = PagedBatch::new(ctx, &table, &entries, heads)?;
        let rows: usize = entries.iter().map(|e| e.1).sum();
        let shape = [rows, heads.n_heads, hd];
        let q = ctx.upload_as(&gen(shape.iter().product(), 1), &shape, dtype)?;
        let out = ctx.empty(&shape, dtype)?;
        let t = Instant::now();
        let built = op.prepare_paged(ctx, &q, &cache, &batch, None, &out)?;
        let prepare = t.elapsed().as_secs_f64();
        let t = Instant::now();
        op.run_paged(ctx, &q, &cache, &batch, None, &out)?;
        let first = t.elapsed().as_secs_f64();
        let t = Instant::now();
        op.run_paged(ctx, &q, &cache, &batch, None, &out)?;
        println!(
            "paged {dtype} g{group} {name} ({:?}): prepare {prepare:.2} s ({built} built), first run {first:.2} s, warm {:.1} ms",
            batch.kinds(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let kind = match arg(0, "decode_keys").as_str() {
        "decode" => Kind::Decode,
        "decode_subgroup" => Kind::DecodeSubgroup,
        "prefill" => Kind::Prefill,
        "prefill_keys" => Kind::PrefillKeys,
        "prefill_subgroup" => Kind::PrefillSubgroup,
        _ => Kind::DecodeKeys,
    };
    let dtype = match arg(1, "f32").as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let group: usize = arg(2, "4").parse().unwrap_or(4);
    let q_len: usize = arg(3, "1").parse().unwrap_or(1);
    let (n_kv, hd) = (8usize, 128usize);
    let n_heads = n_kv * group;
    let kv_len = if q_len > 8 { q_len } else { 4096 };
    let ctx = Context::new()?;
    if arg(0, "") == "paged" {
        return paged(&ctx, dtype, group);
    }
    let qd = gen(q_len * n_heads * hd, 1);
    let kd = gen(kv_len * n_kv * hd, 2);
    let vd = gen(kv_len * n_kv * hd, 3);
    let q = ctx.upload_as(&qd, &[q_len, n_heads, hd], dtype)?;
    let k = ctx.upload_as(&kd, &[kv_len, n_kv, hd], dtype)?;
    let v = ctx.upload_as(&vd, &[kv_len, n_kv, hd], dtype)?;
    let out = ctx.empty(&[q_len, n_heads, hd], dtype)?;
    let op = Attention {
        kind: Some(kind),
        ..Attention::causal()
    };
    let t = Instant::now();
    let dims = op.dims(&q, &k, &v)?;
    // A fifth argument stores K/V in a KV cache of that format (q8_0, q4_0, fp8_e4m3, ...).
    let format = args.get(4).and_then(|f| llama_kernels::KvFormat::parse(f));
    let cache = match format {
        Some(f) => {
            let mut c = llama_kernels::KvCache::new(
                &ctx,
                llama_kernels::KvCacheConfig {
                    n_kv_heads: n_kv,
                    capacity: kv_len,
                    head_dim: hd,
                    dtype,
                    kv_format: Some(f),
                    ..Default::default()
                },
            )?;
            let k4 = ctx.upload_as(&kd, &[1, kv_len, n_kv, hd], dtype)?;
            let v4 = ctx.upload_as(&vd, &[1, kv_len, n_kv, hd], dtype)?;
            c.append_run(&ctx, &k4, &v4)?;
            Some(c)
        }
        None => None,
    };
    let built = match format {
        Some(f) => op.prepare_kv(&ctx, &[dims], dtype, f)?,
        None => op.prepare(&ctx, &[dims], dtype)?,
    };
    let prepare = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let run = |out: &llama_kernels::Tensor| match &cache {
        Some(c) => op.run_cached(&ctx, &q, c, None, out),
        None => op.run(&ctx, &q, &k, &v, None, out),
    };
    run(&out)?;
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    run(&out)?;
    let warm = t.elapsed().as_secs_f64();
    let got = ctx.read_f32(&out)?;
    let f64s = |x: &[f32]| -> Vec<f64> {
        let t = ctx
            .upload_as(x, &[x.len()], dtype)
            .and_then(|t| ctx.read_f32(&t));
        t.unwrap_or_default().iter().map(|&v| v as f64).collect()
    };
    let want = reference::attention::attention(
        &f64s(&qd),
        &f64s(&kd),
        &f64s(&vd),
        None,
        dims,
        &Default::default(),
    );
    let r = compare::compare(&got, &want);
    println!(
        "{kind:?} {dtype} g{group} q_len {q_len}: prepare {prepare:.2} s ({built} built), first run {first:.2} s, warm {:.1} ms, nmse {:.2e}",
        warm * 1e3,
        r.nmse
    );
    Ok(())
}

//! `llama-kernels` with no arguments: report the adapter, run every kernel family once per dtype
//! on Llama-3-8B's head layout against the f64 reference, then one committed tiny model.
//!
//! Sizes are kept small on purpose: on a CPU Vulkan device (lavapipe) every distinct pipeline
//! specialisation is compiled by LLVM the first time it is used, so the self-test uses one shape
//! per family and dtype, and the families share specialisations where the library allows it
//! (plain RoPE and fused-QKV RoPE run the same `rope_vec4` pipeline).

use std::time::Instant;

use llama_kernels::compare::{compare, tolerance};
use llama_kernels::ops::attention::{Attention, Kind, Plan};
use llama_kernels::ops::kv_cache::{KvCache, KvCacheConfig};
use llama_kernels::ops::rms_norm::{Residual, RmsNorm, Strategy};
use llama_kernels::ops::rope::{qkv_views, Layout, Positions, Rope, Scaling};
use llama_kernels::reference;
use llama_kernels::{Context, DType, Result};

use super::Row;

const OP: &str = "selftest";

// Llama-3-8B: hidden 4096, 32 query heads over 8 KV heads, head_dim 128, rope_theta 500000 with
// Llama 3.1's rope_scaling, rms_norm_eps 1e-5.
const HIDDEN: usize = 4096;
const N_HEADS: usize = 32;
const N_KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const THETA: f64 = 500000.0;
const EPS: f32 = 1e-5;

/// Token counts: a few rows each, enough to cover every workgroup of the kernels' grids.
const NORM_ROWS: usize = 4;
const ROPE_TOKENS: usize = 8;
/// First RoPE position: far from 0, so a wrong angle reduction cannot hide behind small angles.
const ROPE_START: i32 = 70_000;
/// Prefill: more query rows than the decode threshold, so the prefill kernel runs.
const PREFILL_TOKENS: usize = 16;
/// Decode: one query over more keys than one chunk, so the split-KV merge runs too.
const DECODE_KEYS: usize = 1100;
/// KV cache: a prefill of this many rows, then one decode row, into a larger cache.
const CACHE_PREFILL: usize = 12;
const CACHE_CAPACITY: usize = 32;

/// Llama 3.1's `rope_scaling`.
fn llama31_rope() -> Rope {
    Rope::new(THETA, Layout::Half).with_scaling(Scaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    })
}

/// How GPU time is taken: timestamp queries around the recorded work when the adapter has them,
/// otherwise the wall time of submit + wait (which then includes the submission overhead).
pub struct Timer {
    timestamps: bool,
}

impl Timer {
    /// The timer `ctx` supports.
    pub fn new(ctx: &Context) -> Timer {
        Timer {
            timestamps: llama_kernels::bench::Timing::of(ctx)
                == llama_kernels::bench::Timing::Timestamp,
        }
    }

    /// The column header, saying which clock is used.
    pub fn header(&self) -> &'static str {
        if self.timestamps {
            "warm GPU ms (timestamps)"
        } else {
            "warm ms (wall: submit+wait)"
        }
    }

    /// Record with `f` into a fresh encoder, submit, wait, and return the milliseconds taken.
    pub fn run(
        &self,
        ctx: &Context,
        f: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<f64> {
        let stamps = if self.timestamps {
            Some(ctx.scoped(OP, || {
                let set = ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("selftest timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                });
                let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("selftest timestamps"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                (set, buf)
            })?)
        } else {
            None
        };
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(OP) });
        if let Some((set, _)) = &stamps {
            llama_kernels::bench::timestamp_pass(&mut enc, set, 0, true);
        }
        f(&mut enc)?;
        if let Some((set, buf)) = &stamps {
            llama_kernels::bench::timestamp_pass(&mut enc, set, 1, false);
            enc.resolve_query_set(set, 0..2, buf, 0);
        }
        let t0 = Instant::now();
        let idx = ctx.scoped(OP, || ctx.queue().submit([enc.finish()]))?;
        ctx.wait(OP, Some(idx))?;
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        let Some((_, buf)) = &stamps else {
            return Ok(wall);
        };
        let raw = ctx.read_bytes(buf, 0..16)?;
        let t: &[u64] = bytemuck::cast_slice(&raw);
        Ok(t[1].saturating_sub(t[0]) as f64 * ctx.queue().get_timestamp_period() as f64 * 1e-6)
    }
}

/// A small deterministic generator (xorshift64*), so every run checks the same inputs.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    /// `n` values `center + spread * U(-1, 1)`, rounded to `dtype` so the reference sees exactly
    /// what the GPU stores.
    fn values(&mut self, n: usize, center: f64, spread: f64, dtype: DType) -> Vec<f64> {
        (0..n)
            .map(|_| dtype.round(center + spread * self.uniform()))
            .collect()
    }
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn dims(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Judge GPU outputs against reference outputs; the row reports the worst of them.
/// What an op's `prepare` did before the row's first run: its milliseconds and the pipelines it
/// built.
#[derive(Clone, Copy)]
struct Warm {
    ms: f64,
    built: usize,
}

/// Run an op's `prepare` (the warm-up a model does at load time), timed.
fn warm_up(prepare: impl FnOnce() -> Result<usize>) -> Result<Warm> {
    let t0 = Instant::now();
    let built = prepare()?;
    Ok(Warm {
        ms: t0.elapsed().as_secs_f64() * 1e3,
        built,
    })
}

fn judge(
    kernel: &str,
    variant: String,
    dtype: DType,
    shape: String,
    (warm, first_ms, ms): (Warm, f64, f64),
    outputs: &[(Vec<f32>, Vec<f64>)],
) -> Row {
    let tol = tolerance(dtype);
    let (mut nmse, mut max_abs, mut pass) = (0.0f64, 0.0f64, true);
    let mut notes = Vec::new();
    for (gpu, cpu) in outputs {
        let c = compare(gpu, cpu);
        nmse = nmse.max(c.nmse);
        max_abs = max_abs.max(c.max_abs);
        pass &= c.passes(tol);
        if c.nan_mismatch > 0 || c.inf_mismatch > 0 || c.len_mismatch {
            notes.push(c.to_string());
        }
    }
    if !pass && notes.is_empty() {
        notes.push(format!(
            "NMSE {nmse:.2e} is above the {dtype} limit {tol:.0e}"
        ));
    }
    Row {
        kernel: kernel.into(),
        variant,
        dtype: dtype.name().into(),
        shape,
        nmse,
        max_abs,
        tolerance: tol,
        prepare: Some((warm.ms, warm.built)),
        first_ms: Some(first_ms),
        gpu_ms: Some(ms),
        pass,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

fn rms_norm(ctx: &Context, timer: &Timer, dtype: DType, residual: bool) -> Result<Row> {
    let shape = [NORM_ROWS, HIDDEN];
    let n = NORM_ROWS * HIDDEN;
    let mut rng = Rng(0x5eed_0001 + residual as u64);
    let x = rng.values(n, 0.0, 2.0, dtype);
    let w = rng.values(HIDDEN, 1.0, 0.5, dtype);
    let xt = ctx.upload_as(&f32s(&x), &shape, dtype)?;
    let wt = ctx.upload_as(&f32s(&w), &[HIDDEN], dtype)?;
    let out = ctx.empty(&shape, dtype)?;
    // NaN everywhere the kernel should write, so an unwritten element fails the comparison.
    ctx.fill(&out, f32::NAN)?;
    let op = RmsNorm::new(EPS);
    if !residual {
        let variant = op.variant(ctx, &xt, &wt, &out, None, Strategy::Auto)?;
        let warm = warm_up(|| op.prepare(ctx, &xt, &wt, &out, None))?;
        let mut rec = |enc: &mut wgpu::CommandEncoder| op.encode(ctx, enc, &xt, &wt, &out);
        let first = timer.run(ctx, &mut rec)?;
        let got = ctx.read_f32(&out)?;
        let ms = timer.run(ctx, &mut rec)?;
        let (cpu, _) = reference::rms_norm::rms_norm(&x, &w, None, EPS as f64, 0.0, dtype);
        return Ok(judge(
            "rms_norm",
            variant.name(),
            dtype,
            dims(&shape),
            (warm, first, ms),
            &[(got, cpu)],
        ));
    }
    let r = rng.values(n, 0.0, 2.0, dtype);
    let rt = ctx.upload_as(&f32s(&r), &shape, dtype)?;
    let r_out = ctx.empty(&shape, dtype)?;
    ctx.fill(&r_out, f32::NAN)?;
    let residual = Residual {
        residual: &rt,
        residual_out: &r_out,
    };
    let variant = op.variant(ctx, &xt, &wt, &out, Some(residual), Strategy::Auto)?;
    let warm = warm_up(|| op.prepare(ctx, &xt, &wt, &out, Some(residual)))?;
    let mut rec =
        |enc: &mut wgpu::CommandEncoder| op.encode_residual(ctx, enc, &xt, &wt, &out, residual);
    let first = timer.run(ctx, &mut rec)?;
    let got = (ctx.read_f32(&out)?, ctx.read_f32(&r_out)?);
    let ms = timer.run(ctx, &mut rec)?;
    let (cpu, h) = reference::rms_norm::rms_norm(&x, &w, Some(&r), EPS as f64, 0.0, dtype);
    Ok(judge(
        "rms_norm+residual",
        variant.name(),
        dtype,
        dims(&shape),
        (warm, first, ms),
        &[(got.0, cpu), (got.1, h.unwrap_or_default())],
    ))
}

fn rope_variant_name(v: llama_kernels::ops::rope::Variant) -> String {
    if v.vec4 { "rope_vec4" } else { "rope" }.into()
}

/// The f64 reference rotation of `x: [tokens, heads, HEAD_DIM]` at positions `start ..`.
fn rope_reference(
    rope: &Rope,
    x: &[f64],
    tokens: usize,
    heads: usize,
    start: i64,
) -> Result<Vec<f64>> {
    let (inv, attn) = rope.inv_freq(HEAD_DIM, start as usize + tokens)?;
    let positions: Vec<i64> = (0..tokens as i64).map(|s| start + s).collect();
    Ok(reference::rope::rope(
        x,
        [1, tokens, heads, HEAD_DIM],
        &positions,
        &inv,
        attn,
        rope.layout,
        HEAD_DIM,
    ))
}

fn rope_plain(ctx: &Context, timer: &Timer, dtype: DType) -> Result<Row> {
    let shape = [ROPE_TOKENS, N_HEADS, HEAD_DIM];
    let x = Rng(0x5eed_0010).values(shape.iter().product(), 0.0, 1.0, dtype);
    let xt = ctx.upload_as(&f32s(&x), &shape, dtype)?;
    let rope = llama31_rope();
    let pos = Positions::Start(ROPE_START);
    let variant = rope.variant(ctx, &xt, None, None, pos)?;
    let warm = warm_up(|| rope.prepare(ctx, &xt, None, None, pos))?;
    // In place: the checked result is the first run's; the timed run rotates it again.
    let mut rec = |enc: &mut wgpu::CommandEncoder| rope.encode(ctx, enc, &xt, pos);
    let first = timer.run(ctx, &mut rec)?;
    let got = ctx.read_f32(&xt)?;
    let ms = timer.run(ctx, &mut rec)?;
    let cpu = rope_reference(&rope, &x, ROPE_TOKENS, N_HEADS, ROPE_START as i64)?;
    Ok(judge(
        "rope",
        rope_variant_name(variant) + " in place",
        dtype,
        dims(&shape),
        (warm, first, ms),
        &[(got, cpu)],
    ))
}

fn rope_qkv(ctx: &Context, timer: &Timer, dtype: DType) -> Result<Row> {
    let row = (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM;
    let shape = [ROPE_TOKENS, row];
    let data = Rng(0x5eed_0011).values(ROPE_TOKENS * row, 0.0, 1.0, dtype);
    let buf = ctx.upload_as(&f32s(&data), &shape, dtype)?;
    let (q, k, _) = qkv_views(
        buf.buffer(),
        buf.offset(),
        ROPE_TOKENS,
        N_HEADS,
        N_KV_HEADS,
        HEAD_DIM,
        dtype,
    );
    let rope = llama31_rope();
    let pos = Positions::Start(ROPE_START);
    let variant = rope.variant(ctx, &q, Some(&k), None, pos)?;
    let warm = warm_up(|| rope.prepare(ctx, &q, Some(&k), None, pos))?;
    let mut rec = |enc: &mut wgpu::CommandEncoder| rope.encode_qk(ctx, enc, &q, &k, pos);
    let first = timer.run(ctx, &mut rec)?;
    let got = ctx.read_f32(&buf)?;
    let ms = timer.run(ctx, &mut rec)?;
    // Expected: Q and K of every token rotated, V untouched.
    let (q_w, k_w) = (N_HEADS * HEAD_DIM, N_KV_HEADS * HEAD_DIM);
    let part = |from: usize, width: usize| -> Vec<f64> {
        data.chunks(row)
            .flat_map(|t| t[from..from + width].iter().copied())
            .collect()
    };
    let start = ROPE_START as i64;
    let q_rot = rope_reference(&rope, &part(0, q_w), ROPE_TOKENS, N_HEADS, start)?;
    let k_rot = rope_reference(&rope, &part(q_w, k_w), ROPE_TOKENS, N_KV_HEADS, start)?;
    let mut cpu = data.clone();
    for t in 0..ROPE_TOKENS {
        cpu[t * row..][..q_w].copy_from_slice(&q_rot[t * q_w..][..q_w]);
        cpu[t * row + q_w..][..k_w].copy_from_slice(&k_rot[t * k_w..][..k_w]);
    }
    Ok(judge(
        "rope q+k (fused qkv)",
        rope_variant_name(variant) + " encode_qk",
        dtype,
        dims(&shape),
        (warm, first, ms),
        &[(got, cpu)],
    ))
}

/// `prefill`, `decode_keys x4 splits` ...: what `Attention::plan` chose.
pub fn plan_name(p: &Plan) -> String {
    let kind = match p.variant.kind {
        Kind::Prefill => "prefill",
        Kind::PrefillKeys => "prefill_keys",
        Kind::Decode => "decode",
        Kind::DecodeKeys => "decode_keys",
        Kind::DecodeSubgroup => "decode_subgroup",
        Kind::PrefillSubgroup => "prefill_subgroup",
    };
    if p.variant.split_kv {
        format!("{kind}, {} split(s)", p.splits)
    } else {
        kind.into()
    }
}

fn attention(ctx: &Context, timer: &Timer, dtype: DType, decode: bool) -> Result<Row> {
    let (q_len, kv_len) = if decode {
        (1, DECODE_KEYS)
    } else {
        (PREFILL_TOKENS, PREFILL_TOKENS)
    };
    let q_shape = [q_len, N_HEADS, HEAD_DIM];
    let kv_shape = [kv_len, N_KV_HEADS, HEAD_DIM];
    let mut rng = Rng(0x5eed_0020 + decode as u64);
    let q = rng.values(q_shape.iter().product(), 0.0, 1.0, dtype);
    let k = rng.values(kv_shape.iter().product(), 0.0, 1.0, dtype);
    let v = rng.values(kv_shape.iter().product(), 0.0, 1.0, dtype);
    let qt = ctx.upload_as(&f32s(&q), &q_shape, dtype)?;
    let kt = ctx.upload_as(&f32s(&k), &kv_shape, dtype)?;
    let vt = ctx.upload_as(&f32s(&v), &kv_shape, dtype)?;
    let out = ctx.empty(&q_shape, dtype)?;
    ctx.fill(&out, f32::NAN)?;
    let op = Attention::default();
    let d = op.dims(&qt, &kt, &vt)?;
    let plan = op.plan(ctx, d, dtype)?;
    let warm = warm_up(|| op.prepare(ctx, &[d], dtype))?;
    let mut rec = |enc: &mut wgpu::CommandEncoder| op.encode(ctx, enc, &qt, &kt, &vt, None, &out);
    let first = timer.run(ctx, &mut rec)?;
    let got = ctx.read_f32(&out)?;
    let ms = timer.run(ctx, &mut rec)?;
    let cpu = reference::attention::attention(
        &q,
        &k,
        &v,
        None,
        d,
        &reference::attention::Options::default(),
    );
    let kernel = if decode {
        "attention decode"
    } else {
        "attention prefill"
    };
    let shape = format!("q {} kv {}", dims(&q_shape), dims(&kv_shape));
    Ok(judge(
        kernel,
        plan_name(&plan),
        dtype,
        shape,
        (warm, first, ms),
        &[(got, cpu)],
    ))
}

fn kv_cache(ctx: &Context, timer: &Timer, dtype: DType) -> Result<Row> {
    let mut cache = KvCache::new(
        ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: N_KV_HEADS,
            capacity: CACHE_CAPACITY,
            head_dim: HEAD_DIM,
            dtype,
        },
    )?;
    let rope = llama31_rope();
    let row = N_KV_HEADS * HEAD_DIM;
    let total = CACHE_PREFILL + 1;
    let mut rng = Rng(0x5eed_0030);
    let k = rng.values(total * row, 0.0, 1.0, dtype);
    let v = rng.values(total * row, 0.0, 1.0, dtype);
    let upload = |x: &[f64], rows: std::ops::Range<usize>| {
        ctx.upload_as(
            &f32s(&x[rows.start * row..rows.end * row]),
            &[1, rows.len(), N_KV_HEADS, HEAD_DIM],
            dtype,
        )
    };
    let (k1, v1) = (upload(&k, 0..CACHE_PREFILL)?, upload(&v, 0..CACHE_PREFILL)?);
    let (k2, v2) = (
        upload(&k, CACHE_PREFILL..total)?,
        upload(&v, CACHE_PREFILL..total)?,
    );
    let variant = if cache.rope_fused_for(dtype) {
        "rope written into the cache"
    } else {
        "append, then rope in the cache"
    };
    let warm = warm_up(|| cache.prepare(ctx, &k1, &v1, Some((&rope, None))))?;
    // A prefill and one decode step in one encoder: positions 0..12, then 12.
    let rec = |enc: &mut wgpu::CommandEncoder, cache: &mut KvCache| {
        cache.append_rope(ctx, enc, &k1, &v1, &rope, None)?;
        cache.append_rope(ctx, enc, &k2, &v2, &rope, None)?;
        Ok(())
    };
    let first = timer.run(ctx, &mut |enc| rec(enc, &mut cache))?;
    let got = (ctx.read_f32(&cache.k())?, ctx.read_f32(&cache.v())?);
    // The timed run writes the same rows again.
    cache.clear();
    let ms = timer.run(ctx, &mut |enc| rec(enc, &mut cache))?;
    let k_rot = rope_reference(&rope, &k, total, N_KV_HEADS, 0)?;
    Ok(judge(
        "kv_cache append_rope",
        variant.into(),
        dtype,
        format!("{CACHE_PREFILL}+1 rows x{N_KV_HEADS}x{HEAD_DIM}, capacity {CACHE_CAPACITY}"),
        (warm, first, ms),
        &[(got.0, k_rot), (got.1, v)],
    ))
}

/// The paged cache: two sequences in one batch (a 12-token prompt and a decode token over 40
/// keys, on pages handed out in turn), their K/V appended with RoPE into the pages, then one
/// variable-length attention call, all in one encoder. Judged: the attention output against the
/// reference over each sequence's rotated history.
fn paged(ctx: &Context, timer: &Timer, dtype: DType) -> Result<Row> {
    use llama_kernels::ops::paged::Heads;
    use llama_kernels::{PageTable, PagedBatch, PagedKvCache, PagedKvConfig};
    const PAGE: usize = 16;
    let heads = Heads {
        n_heads: N_HEADS,
        n_kv_heads: N_KV_HEADS,
        head_dim: HEAD_DIM,
    };
    let mut table = PageTable::new(8, PAGE)?;
    let cache = PagedKvCache::new(
        ctx,
        PagedKvConfig {
            n_pages: 8,
            page_size: PAGE,
            n_kv_heads: N_KV_HEADS,
            head_dim: HEAD_DIM,
            dtype,
            layout: llama_kernels::PageLayout::Hnd,
        },
    )?;
    let (a, b) = (table.add_sequence(), table.add_sequence());
    // b's first 39 tokens are already in the cache (written here in the same way first).
    let lens = [(a, 12usize), (b, 39usize)];
    let row = N_KV_HEADS * HEAD_DIM;
    let mut rng = Rng(0x5eed_0040);
    let rope = llama31_rope().with_seq_len(64);
    let hist: Vec<(Vec<f64>, Vec<f64>)> = lens
        .iter()
        .map(|&(_, n)| {
            let n = n + usize::from(n == 39);
            (
                rng.values(n * row, 0.0, 1.0, dtype),
                rng.values(n * row, 0.0, 1.0, dtype),
            )
        })
        .collect();
    let upload = |x: &[f64], t: std::ops::Range<usize>| {
        ctx.upload_as(
            &f32s(&x[t.start * row..t.end * row]),
            &[t.len(), N_KV_HEADS, HEAD_DIM],
            dtype,
        )
    };
    // Step 1 (not judged): b's first 39 tokens.
    table.append(&[(b, 39)])?;
    let batch = PagedBatch::new(ctx, &table, &[(b, 39)], heads)?;
    let (kb, vb) = (upload(&hist[1].0, 0..39)?, upload(&hist[1].1, 0..39)?);
    ctx.submit_and_wait(OP, |enc| {
        cache.append_rope(ctx, enc, &batch, &kb, &vb, &rope, None, None)
    })?;
    // Step 2 (judged): a's prompt and b's next token.
    let entries = [(a, 12), (b, 1)];
    table.append(&entries)?;
    let batch = PagedBatch::new(ctx, &table, &entries, heads)?;
    let cat = |i: usize| -> Result<llama_kernels::Tensor> {
        let (x0, x1) = (&hist[0], &hist[1]);
        let src = if i == 0 {
            (&x0.0, &x1.0)
        } else {
            (&x0.1, &x1.1)
        };
        let mut v: Vec<f64> = src.0.clone();
        v.extend_from_slice(&src.1[39 * row..40 * row]);
        upload(&v, 0..13)
    };
    let (kn, vn) = (cat(0)?, cat(1)?);
    let q = rng.values(13 * N_HEADS * HEAD_DIM, 0.0, 1.0, dtype);
    let q_shape = [13, N_HEADS, HEAD_DIM];
    let qt = ctx.upload_as(&f32s(&q), &q_shape, dtype)?;
    let out = ctx.empty(&q_shape, dtype)?;
    ctx.fill(&out, f32::NAN)?;
    let op = Attention::default();
    let warm = warm_up(|| op.prepare_paged(ctx, &qt, &cache, &batch, None, &out))?;
    let mut rec = |enc: &mut wgpu::CommandEncoder| -> Result<()> {
        cache.append_rope(ctx, enc, &batch, &kn, &vn, &rope, None, None)?;
        op.encode_paged(ctx, enc, &qt, &cache, &batch, None, &out)
    };
    let first = timer.run(ctx, &mut rec)?;
    let got = ctx.read_f32(&out)?;
    // The timed run writes the same slots again.
    let ms = timer.run(ctx, &mut rec)?;
    let mut want = Vec::new();
    for (i, (q_len, kv_len)) in [(12usize, 12usize), (1, 40)].into_iter().enumerate() {
        let k_rot = rope_reference(&rope, &hist[i].0, kv_len, N_KV_HEADS, 0)?;
        let k_rot: Vec<f64> = k_rot.iter().map(|&x| dtype.round(x)).collect();
        let q0 = if i == 0 { 0 } else { 12 * N_HEADS * HEAD_DIM };
        want.extend(reference::attention::attention(
            &q[q0..q0 + q_len * N_HEADS * HEAD_DIM],
            &k_rot,
            &hist[i].1,
            None,
            llama_kernels::ops::attention::Dims {
                batch: 1,
                q_len,
                kv_len,
                n_heads: N_HEADS,
                n_kv_heads: N_KV_HEADS,
                head_dim: HEAD_DIM,
            },
            &reference::attention::Options::default(),
        ));
    }
    Ok(judge(
        "paged append_rope + attention",
        format!("pages of {PAGE}, splits {:?}", batch.splits()),
        dtype,
        "prompt 12 + decode 1 over 40".into(),
        (warm, first, ms),
        &[(got, want)],
    ))
}

/// One kernel family on one dtype.
type Case = fn(&Context, &Timer, DType) -> Result<Row>;

/// The families in table order, with the name a failed row gets.
const CASES: &[(&str, Case)] = &[
    ("rms_norm", |c, t, d| rms_norm(c, t, d, false)),
    ("rms_norm+residual", |c, t, d| rms_norm(c, t, d, true)),
    ("rope", rope_plain),
    ("rope q+k (fused qkv)", rope_qkv),
    ("attention prefill", |c, t, d| attention(c, t, d, false)),
    ("attention decode", |c, t, d| attention(c, t, d, true)),
    ("kv_cache append_rope", kv_cache),
    ("paged append_rope + attention", paged),
];

/// Number of kernel rows [`run`] produces (for the progress bar).
pub fn kernel_rows() -> usize {
    CASES.len() * DType::ALL.len()
}

/// Run every family in every dtype; `step` is called after each row with its name.
pub fn run(ctx: &Context, mut step: impl FnMut(&str)) -> Vec<Row> {
    let timer = Timer::new(ctx);
    let mut rows = Vec::new();
    for (name, case) in CASES {
        for dtype in DType::ALL {
            let row = case(ctx, &timer, dtype)
                .unwrap_or_else(|e| Row::failed(name, dtype.name(), "-", e.to_string()));
            step(&format!("{name} {dtype}"));
            rows.push(row);
        }
    }
    rows
}

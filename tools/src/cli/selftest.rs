//! `llama-kernels` with no arguments: report the adapter, run every kernel family once per dtype
//! on Llama-3-8B's head layout against the f64 reference (and decode over a KV cache in each
//! quantized format), then one committed tiny model. The Dawn check replays the same rows on
//! Llama-3.2-1B's smaller heads ([`Model`]).
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
use llama_kernels::{Context, DType, KvFormat, Result};

use super::Row;

const OP: &str = "selftest";

/// The model whose layout the rows take: hidden size, heads, head_dim and RoPE (Llama 3's
/// rope_theta 500000 and `rope_scaling` with low/high frequency factors 1 and 4 over 8192
/// original positions; rms_norm_eps 1e-5).
#[derive(Clone, Copy, Debug)]
pub struct Model {
    pub name: &'static str,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// `rope_scaling.factor`.
    pub rope_factor: f64,
}

/// Llama-3-8B (Llama 3.1's `rope_scaling`): the self-test's layout.
pub const LLAMA3_8B: Model = Model {
    name: "Llama-3-8B",
    hidden: 4096,
    n_heads: 32,
    n_kv_heads: 8,
    head_dim: 128,
    rope_factor: 8.0,
};

/// Llama-3.2-1B: head_dim 64, the smallest head-dim class, whose specialisations compile
/// fastest; the Dawn check's layout (scripts/dawn-check.sh).
pub const LLAMA32_1B: Model = Model {
    name: "Llama-3.2-1B",
    hidden: 2048,
    n_heads: 32,
    n_kv_heads: 8,
    head_dim: 64,
    rope_factor: 32.0,
};

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

/// The model's RoPE with Llama 3's `rope_scaling`.
fn llama3_rope(m: &Model) -> Rope {
    Rope::new(THETA, Layout::Half).with_scaling(Scaling::Llama3 {
        factor: m.rope_factor,
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

    /// A row's first run: [`Timer::run`] while other rows may compile (on a CPU adapter the
    /// first dispatch of a pipeline is its compile, and the workers' compiles overlap).
    pub fn first(
        &self,
        ctx: &Context,
        f: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<f64> {
        let _shared = GATE.read().unwrap_or_else(|e| e.into_inner());
        self.time(ctx, f)
    }

    /// Record with `f` into a fresh encoder, submit, wait, and return the milliseconds taken;
    /// no other worker runs anything meanwhile, so warm times are the device's alone.
    pub fn run(
        &self,
        ctx: &Context,
        f: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<f64> {
        let _alone = GATE.write().unwrap_or_else(|e| e.into_inner());
        self.time(ctx, f)
    }

    fn time(
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

/// Run an op's `prepare` (the warm-up a model does at load time), timed. Skipped while `ctx`
/// captures its launches (`llama-kernels dawn`): they run elsewhere, so pipelines built here
/// would only cost their compile.
fn warm_up(ctx: &Context, prepare: impl FnOnce() -> Result<usize>) -> Result<Warm> {
    if ctx.capture().is_some() {
        return Ok(Warm { ms: 0.0, built: 0 });
    }
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

fn rms_norm(ctx: &Context, timer: &Timer, m: &Model, dtype: DType, residual: bool) -> Result<Row> {
    let shape = [NORM_ROWS, m.hidden];
    let n = NORM_ROWS * m.hidden;
    let mut rng = Rng(0x5eed_0001 + residual as u64);
    let x = rng.values(n, 0.0, 2.0, dtype);
    let w = rng.values(m.hidden, 1.0, 0.5, dtype);
    let xt = ctx.upload_as(&f32s(&x), &shape, dtype)?;
    let wt = ctx.upload_as(&f32s(&w), &[m.hidden], dtype)?;
    let out = ctx.empty(&shape, dtype)?;
    // NaN everywhere the kernel should write, so an unwritten element fails the comparison.
    ctx.fill(&out, f32::NAN)?;
    let op = RmsNorm::new(EPS);
    if !residual {
        let variant = op.variant(ctx, &xt, &wt, &out, None, Strategy::Auto)?;
        let warm = warm_up(ctx, || op.prepare(ctx, &xt, &wt, &out, None))?;
        let mut rec = |enc: &mut wgpu::CommandEncoder| op.encode(ctx, enc, &xt, &wt, &out);
        let first = timer.first(ctx, &mut rec)?;
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
    let warm = warm_up(ctx, || op.prepare(ctx, &xt, &wt, &out, Some(residual)))?;
    let mut rec =
        |enc: &mut wgpu::CommandEncoder| op.encode_residual(ctx, enc, &xt, &wt, &out, residual);
    let first = timer.first(ctx, &mut rec)?;
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
    v.name()
}

/// The f64 reference rotation of `x: [tokens, heads, head_dim]` at positions `start ..`.
fn rope_reference(
    rope: &Rope,
    head_dim: usize,
    x: &[f64],
    tokens: usize,
    heads: usize,
    start: i64,
) -> Result<Vec<f64>> {
    let (inv, attn) = rope.inv_freq(head_dim, start as usize + tokens)?;
    let positions: Vec<i64> = (0..tokens as i64).map(|s| start + s).collect();
    Ok(reference::rope::rope(
        x,
        [1, tokens, heads, head_dim],
        &positions,
        &inv,
        attn,
        rope.layout,
        head_dim,
    ))
}

fn rope_plain(ctx: &Context, timer: &Timer, m: &Model, dtype: DType) -> Result<Row> {
    let shape = [ROPE_TOKENS, m.n_heads, m.head_dim];
    let x = Rng(0x5eed_0010).values(shape.iter().product(), 0.0, 1.0, dtype);
    let xt = ctx.upload_as(&f32s(&x), &shape, dtype)?;
    let rope = llama3_rope(m);
    let pos = Positions::Start(ROPE_START);
    let variant = rope.variant(ctx, &xt, None, None, pos)?;
    let warm = warm_up(ctx, || rope.prepare(ctx, &xt, None, None, pos))?;
    // In place: the checked result is the first run's; the timed run rotates it again.
    let mut rec = |enc: &mut wgpu::CommandEncoder| rope.encode(ctx, enc, &xt, pos);
    let first = timer.first(ctx, &mut rec)?;
    let got = ctx.read_f32(&xt)?;
    let ms = timer.run(ctx, &mut rec)?;
    let cpu = rope_reference(
        &rope,
        m.head_dim,
        &x,
        ROPE_TOKENS,
        m.n_heads,
        ROPE_START as i64,
    )?;
    Ok(judge(
        "rope",
        rope_variant_name(variant) + " in place",
        dtype,
        dims(&shape),
        (warm, first, ms),
        &[(got, cpu)],
    ))
}

fn rope_qkv(ctx: &Context, timer: &Timer, m: &Model, dtype: DType) -> Result<Row> {
    let row = (m.n_heads + 2 * m.n_kv_heads) * m.head_dim;
    let shape = [ROPE_TOKENS, row];
    let data = Rng(0x5eed_0011).values(ROPE_TOKENS * row, 0.0, 1.0, dtype);
    let buf = ctx.upload_as(&f32s(&data), &shape, dtype)?;
    let (q, k, _) = qkv_views(
        buf.buffer(),
        buf.offset(),
        ROPE_TOKENS,
        m.n_heads,
        m.n_kv_heads,
        m.head_dim,
        dtype,
    );
    let rope = llama3_rope(m);
    let pos = Positions::Start(ROPE_START);
    let variant = rope.variant(ctx, &q, Some(&k), None, pos)?;
    let warm = warm_up(ctx, || rope.prepare(ctx, &q, Some(&k), None, pos))?;
    let mut rec = |enc: &mut wgpu::CommandEncoder| rope.encode_qk(ctx, enc, &q, &k, pos);
    let first = timer.first(ctx, &mut rec)?;
    let got = ctx.read_f32(&buf)?;
    let ms = timer.run(ctx, &mut rec)?;
    // Expected: Q and K of every token rotated, V untouched.
    let (q_w, k_w) = (m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim);
    let part = |from: usize, width: usize| -> Vec<f64> {
        data.chunks(row)
            .flat_map(|t| t[from..from + width].iter().copied())
            .collect()
    };
    let start = ROPE_START as i64;
    let q_rot = rope_reference(
        &rope,
        m.head_dim,
        &part(0, q_w),
        ROPE_TOKENS,
        m.n_heads,
        start,
    )?;
    let k_rot = rope_reference(
        &rope,
        m.head_dim,
        &part(q_w, k_w),
        ROPE_TOKENS,
        m.n_kv_heads,
        start,
    )?;
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

fn attention(ctx: &Context, timer: &Timer, m: &Model, dtype: DType, decode: bool) -> Result<Row> {
    let (q_len, kv_len) = if decode {
        (1, DECODE_KEYS)
    } else {
        (PREFILL_TOKENS, PREFILL_TOKENS)
    };
    let q_shape = [q_len, m.n_heads, m.head_dim];
    let kv_shape = [kv_len, m.n_kv_heads, m.head_dim];
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
    let warm = warm_up(ctx, || op.prepare(ctx, &[d], dtype))?;
    let mut rec = |enc: &mut wgpu::CommandEncoder| op.encode(ctx, enc, &qt, &kt, &vt, None, &out);
    let first = timer.first(ctx, &mut rec)?;
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

fn kv_cache(ctx: &Context, timer: &Timer, m: &Model, dtype: DType) -> Result<Row> {
    let mut cache = KvCache::new(
        ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: m.n_kv_heads,
            capacity: CACHE_CAPACITY,
            head_dim: m.head_dim,
            dtype,
            kv_format: None,
        },
    )?;
    let rope = llama3_rope(m);
    let row = m.n_kv_heads * m.head_dim;
    let total = CACHE_PREFILL + 1;
    let mut rng = Rng(0x5eed_0030);
    let k = rng.values(total * row, 0.0, 1.0, dtype);
    let v = rng.values(total * row, 0.0, 1.0, dtype);
    let upload = |x: &[f64], rows: std::ops::Range<usize>| {
        ctx.upload_as(
            &f32s(&x[rows.start * row..rows.end * row]),
            &[1, rows.len(), m.n_kv_heads, m.head_dim],
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
    let warm = warm_up(ctx, || cache.prepare(ctx, &k1, &v1, Some((&rope, None))))?;
    // A prefill and one decode step in one encoder: positions 0..12, then 12.
    let rec = |enc: &mut wgpu::CommandEncoder, cache: &mut KvCache| {
        cache.append_rope(ctx, enc, &k1, &v1, &rope, None)?;
        cache.append_rope(ctx, enc, &k2, &v2, &rope, None)?;
        Ok(())
    };
    let first = timer.first(ctx, &mut |enc| rec(enc, &mut cache))?;
    let got = (ctx.read_f32(&cache.k())?, ctx.read_f32(&cache.v())?);
    // The timed run writes the same rows again.
    cache.clear();
    let ms = timer.run(ctx, &mut |enc| rec(enc, &mut cache))?;
    let k_rot = rope_reference(&rope, m.head_dim, &k, total, m.n_kv_heads, 0)?;
    Ok(judge(
        "kv_cache append_rope",
        variant.into(),
        dtype,
        format!(
            "{CACHE_PREFILL}+1 rows x{}x{}, capacity {CACHE_CAPACITY}",
            m.n_kv_heads, m.head_dim
        ),
        (warm, first, ms),
        &[(got.0, k_rot), (got.1, v)],
    ))
}

/// The paged cache: two sequences in one batch (a 12-token prompt and a decode token over 40
/// keys, on pages handed out in turn), their K/V appended with RoPE into the pages, then one
/// variable-length attention call, all in one encoder. Judged: the attention output against the
/// reference over each sequence's rotated history.
fn paged(ctx: &Context, timer: &Timer, m: &Model, dtype: DType) -> Result<Row> {
    use llama_kernels::ops::paged::Heads;
    use llama_kernels::{PageTable, PagedBatch, PagedKvCache, PagedKvConfig};
    const PAGE: usize = 16;
    let heads = Heads {
        n_heads: m.n_heads,
        n_kv_heads: m.n_kv_heads,
        head_dim: m.head_dim,
    };
    let mut table = PageTable::new(8, PAGE)?;
    let cache = PagedKvCache::new(
        ctx,
        PagedKvConfig {
            n_pages: 8,
            page_size: PAGE,
            n_kv_heads: m.n_kv_heads,
            head_dim: m.head_dim,
            dtype,
            layout: llama_kernels::PageLayout::Hnd,
            kv_format: None,
        },
    )?;
    let (a, b) = (table.add_sequence(), table.add_sequence());
    // b's first 39 tokens are already in the cache (written here in the same way first).
    let lens = [(a, 12usize), (b, 39usize)];
    let row = m.n_kv_heads * m.head_dim;
    let mut rng = Rng(0x5eed_0040);
    let rope = llama3_rope(m).with_seq_len(64);
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
            &[t.len(), m.n_kv_heads, m.head_dim],
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
    let q = rng.values(13 * m.n_heads * m.head_dim, 0.0, 1.0, dtype);
    let q_shape = [13, m.n_heads, m.head_dim];
    let qt = ctx.upload_as(&f32s(&q), &q_shape, dtype)?;
    let out = ctx.empty(&q_shape, dtype)?;
    ctx.fill(&out, f32::NAN)?;
    let op = Attention::default();
    let warm = warm_up(ctx, || {
        op.prepare_paged(ctx, &qt, &cache, &batch, None, &out)
    })?;
    let mut rec = |enc: &mut wgpu::CommandEncoder| -> Result<()> {
        cache.append_rope(ctx, enc, &batch, &kn, &vn, &rope, None, None)?;
        op.encode_paged(ctx, enc, &qt, &cache, &batch, None, &out)
    };
    let first = timer.first(ctx, &mut rec)?;
    let got = ctx.read_f32(&out)?;
    // The timed run writes the same slots again.
    let ms = timer.run(ctx, &mut rec)?;
    let mut want = Vec::new();
    for (i, (q_len, kv_len)) in [(12usize, 12usize), (1, 40)].into_iter().enumerate() {
        let k_rot = rope_reference(&rope, m.head_dim, &hist[i].0, kv_len, m.n_kv_heads, 0)?;
        let k_rot: Vec<f64> = k_rot.iter().map(|&x| dtype.round(x)).collect();
        let q0 = if i == 0 {
            0
        } else {
            12 * m.n_heads * m.head_dim
        };
        want.extend(reference::attention::attention(
            &q[q0..q0 + q_len * m.n_heads * m.head_dim],
            &k_rot,
            &hist[i].1,
            None,
            llama_kernels::ops::attention::Dims {
                batch: 1,
                q_len,
                kv_len,
                n_heads: m.n_heads,
                n_kv_heads: m.n_kv_heads,
                head_dim: m.head_dim,
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

/// Decode attention (f32 q and out) over a KV cache in a quantized `format`: the decode row's
/// 1100 keys appended (quantized by the append), then one query attends in place. Judged
/// against the reference over the dequantized K/V, so the f32 limit holds.
fn quantized_decode(ctx: &Context, timer: &Timer, m: &Model, format: KvFormat) -> Result<Row> {
    let dtype = DType::F32;
    let kv_shape = [1, DECODE_KEYS, m.n_kv_heads, m.head_dim];
    let q_shape = [1, m.n_heads, m.head_dim];
    let mut rng = Rng(0x5eed_0040);
    let q = rng.values(q_shape.iter().product(), 0.0, 1.0, dtype);
    let k = rng.values(kv_shape.iter().product(), 0.0, 1.0, dtype);
    let v = rng.values(kv_shape.iter().product(), 0.0, 1.0, dtype);
    let mut cache = KvCache::new(
        ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: m.n_kv_heads,
            capacity: DECODE_KEYS,
            head_dim: m.head_dim,
            dtype,
            kv_format: Some(format),
        },
    )?;
    cache.append_run(
        ctx,
        &ctx.upload_as(&f32s(&k), &kv_shape, dtype)?,
        &ctx.upload_as(&f32s(&v), &kv_shape, dtype)?,
    )?;
    let qt = ctx.upload_as(&f32s(&q), &q_shape, dtype)?;
    let out = ctx.empty(&q_shape, dtype)?;
    ctx.fill(&out, f32::NAN)?;
    let op = Attention::default();
    let d = llama_kernels::ops::attention::Dims {
        batch: 1,
        q_len: 1,
        kv_len: DECODE_KEYS,
        n_heads: m.n_heads,
        n_kv_heads: m.n_kv_heads,
        head_dim: m.head_dim,
    };
    let plan = op.plan_kv(ctx, d, dtype, format)?;
    let warm = warm_up(ctx, || op.prepare_kv(ctx, &[d], dtype, format))?;
    let mut rec =
        |enc: &mut wgpu::CommandEncoder| op.encode_cached(ctx, enc, &qt, &cache, None, &out);
    let first = timer.first(ctx, &mut rec)?;
    let got = ctx.read_f32(&out)?;
    let ms = timer.run(ctx, &mut rec)?;
    let held = |x: &[f64]| reference::quant::round_trip(format, &f32s(x), m.head_dim, 1.0);
    let cpu = reference::attention::attention(
        &q,
        &held(&k),
        &held(&v),
        None,
        d,
        &reference::attention::Options::default(),
    );
    Ok(judge(
        &format!("attention decode, {format} KV cache"),
        plan_name(&plan),
        dtype,
        format!("q {} kv {}", dims(&q_shape), dims(&kv_shape[1..])),
        (warm, first, ms),
        &[(got, cpu)],
    ))
}

/// One kernel family on one dtype.
type Case = fn(&Context, &Timer, &Model, DType) -> Result<Row>;

/// The families in table order, with the name a failed row gets.
const CASES: &[(&str, Case)] = &[
    ("rms_norm", |c, t, m, d| rms_norm(c, t, m, d, false)),
    ("rms_norm+residual", |c, t, m, d| rms_norm(c, t, m, d, true)),
    ("rope", rope_plain),
    ("rope q+k (fused qkv)", rope_qkv),
    ("attention prefill", |c, t, m, d| {
        attention(c, t, m, d, false)
    }),
    ("attention decode", |c, t, m, d| attention(c, t, m, d, true)),
    ("kv_cache append_rope", kv_cache),
    ("paged append_rope + attention", paged),
];

/// Number of kernel rows [`run`] produces (for the progress bar).
pub fn kernel_rows() -> usize {
    CASES.len() * DType::ALL.len() + KvFormat::QUANTIZED.len()
}

/// Warm runs ([`Timer::run`]) take it alone, first runs ([`Timer::first`]) shared.
static GATE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// One row of the table: its name and how to run it on a context (a failure is a failed row).
type Job<'a> = (
    String,
    Box<dyn Fn(&Context, &Timer) -> Row + Send + Sync + 'a>,
);

/// The rows whose name `keep` accepts: the family and the dtype (`attention decode f16`; the
/// quantized rows `attention decode, q8_0 KV cache f32`), on `model`'s layout.
fn jobs<'a>(model: &'a Model, keep: impl Fn(&str) -> bool) -> Vec<Job<'a>> {
    let mut jobs: Vec<Job> = Vec::new();
    for &(name, case) in CASES {
        for dtype in DType::ALL {
            let row_name = format!("{name} {dtype}");
            if !keep(&row_name) {
                continue;
            }
            jobs.push((
                row_name,
                Box::new(move |c, t| {
                    case(c, t, model, dtype)
                        .unwrap_or_else(|e| Row::failed(name, dtype.name(), "-", e.to_string()))
                }),
            ));
        }
    }
    for format in KvFormat::QUANTIZED {
        let name = format!("attention decode, {format} KV cache");
        if keep(&format!("{name} {}", DType::F32)) {
            jobs.push((
                name.clone(),
                Box::new(move |c, t| {
                    quantized_decode(c, t, model, format)
                        .unwrap_or_else(|e| Row::failed(&name, "f32", "-", e.to_string()))
                }),
            ));
        }
    }
    jobs
}

/// Run every family in every dtype on [`LLAMA3_8B`]; `step` is called after each row with its
/// name. With more than one CPU core the rows are shared by two workers, `ctx` and a second
/// context on the same adapter ([`Context::new`]), so that pipeline compiles (a CPU adapter's
/// LLVM runs at a pipeline's first dispatch, one at a time per queue) overlap; warm times are
/// still taken with the other worker idle. The table keeps its order.
pub fn run(ctx: &Context, step: impl FnMut(&str) + Send) -> Vec<Row> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let second = (cores > 1).then(Context::new).and_then(|c| c.ok());
    let mut ctxs = vec![ctx];
    ctxs.extend(second.as_ref());
    run_on(&ctxs, &LLAMA3_8B, |_| true, step)
}

/// [`run`] on one context, on `model`'s layout, for the rows whose name `keep` accepts.
pub fn run_some(
    ctx: &Context,
    model: &Model,
    keep: impl Fn(&str) -> bool,
    step: impl FnMut(&str) + Send,
) -> Vec<Row> {
    run_on(&[ctx], model, keep, step)
}

fn run_on(
    ctxs: &[&Context],
    model: &Model,
    keep: impl Fn(&str) -> bool,
    step: impl FnMut(&str) + Send,
) -> Vec<Row> {
    let jobs = jobs(model, keep);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let rows = std::sync::Mutex::new(vec![None; jobs.len()]);
    let step = std::sync::Mutex::new(step);
    std::thread::scope(|s| {
        for &ctx in ctxs {
            let (jobs, next, rows, step) = (&jobs, &next, &rows, &step);
            s.spawn(move || {
                let timer = Timer::new(ctx);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((name, job)) = jobs.get(i) else {
                        return;
                    };
                    let row = job(ctx, &timer);
                    if let Ok(mut step) = step.lock() {
                        step(name);
                    }
                    if let Ok(mut rows) = rows.lock() {
                        rows[i] = Some(row);
                    }
                }
            });
        }
    });
    let rows = rows.into_inner().unwrap_or_else(|e| e.into_inner());
    rows.into_iter()
        .zip(&jobs)
        .map(|(row, (name, _))| {
            row.unwrap_or_else(|| Row::failed(name, "-", "-", "the worker stopped".into()))
        })
        .collect()
}

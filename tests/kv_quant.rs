//! Quantized KV caches (q8_0, q4_0, fp8 e4m3): the CPU quantizers against the formats' own
//! reference code (a dump written by `scripts/gen_kv_quant_ref.py` with `gguf.quants` and an
//! e4m3 cast), the cache's append against the CPU quantizer bit for bit, and attention over a
//! quantized cache against the f64 reference over the dequantized values.

use crate::common;

use llama_kernels::kv_format::BLOCK;
use llama_kernels::reference::quant;
use llama_kernels::{KvCacheConfig, PagedKvConfig};

/// The committed dump: inputs, gguf q8_0 / q4_0 blocks, fp8 codes per scale.
struct Dump {
    x: Vec<f32>,
    q8: Vec<u8>,
    q4: Vec<u8>,
    fp8: Vec<(f32, Vec<u8>)>,
}

fn dump() -> Dump {
    let b: &[u8] = include_bytes!("data/kv_quant_ref.bin");
    assert_eq!(&b[..4], b"KVQ1");
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let n = u32_at(4);
    let mut o = 8;
    let x = b[o..o + 4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    o += 4 * n;
    let q8 = b[o..o + n / 32 * 34].to_vec();
    o += q8.len();
    let q4 = b[o..o + n / 32 * 18].to_vec();
    o += q4.len();
    let scales = u32_at(o);
    o += 4;
    let mut fp8 = Vec::new();
    for _ in 0..scales {
        let s = f32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        fp8.push((s, b[o + 4..o + 4 + n].to_vec()));
        o += 4 + n;
    }
    assert_eq!(o, b.len());
    Dump { x, q8, q4, fp8 }
}

/// q8_0 and q4_0 blocks bit for bit as llama.cpp's Python quantizers make them, fp8 codes as
/// the e4m3 cast makes them. q4_0 rounds as the reference without a fused multiply-add; the dump
/// holds two blocks built so that a fused one would truncate some values a step lower, and
/// those values are counted (the CPU quantizer matches the reference on them too).
#[test]
fn cpu_quantizers_match_the_reference_dump() {
    let d = dump();
    let mut fused_ties = 0;
    for (i, block) in d.x.chunks_exact(BLOCK).enumerate() {
        let block: &[f32; BLOCK] = block.try_into().unwrap();
        let (dq8, q8) = quant::quantize_q8_0(block);
        let want_q8 = &d.q8[i * 34..(i + 1) * 34];
        assert_eq!(dq8.to_le_bytes(), want_q8[..2], "q8_0 block {i} d");
        let got: Vec<u8> = q8.iter().map(|&q| q as u8).collect();
        assert_eq!(got, want_q8[2..], "q8_0 block {i}");
        let (dq4, q4) = quant::quantize_q4_0(block);
        let want = &d.q4[i * 18..(i + 1) * 18];
        assert_eq!(dq4.to_le_bytes(), want[..2], "q4_0 block {i} d");
        assert_eq!(quant::pack_q4_0(&q4), want[2..], "q4_0 block {i}");
        fused_ties += quant::q4_0_fused_differs(block).len();
        // Attention's packed 8-bit scoring quantizes q by q8_0's rule with d kept in f32
        // (`quant::int8_dot_q`): the dump's int8 values times that d, which rounds to the dump's
        // f16 d; pre-scaled by a power of two, the same values times the scaled d.
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d32 = amax / 127.0;
        assert_eq!(half::f16::from_f32(d32).to_le_bytes(), want_q8[..2]);
        for scale in [1.0f32, 0.125] {
            let got = quant::int8_dot_q(block, BLOCK, scale);
            let want: Vec<f64> = want_q8[2..]
                .iter()
                .map(|&q| q as i8 as f64 * (d32 * scale) as f64)
                .collect();
            assert_eq!(got, want, "int8_dot q of block {i} at scale {scale}");
        }
    }
    eprintln!("q4_0: {fused_ties} values where a fused multiply-add would round differently");
    assert!(
        fused_ties > 0,
        "the dump must hold FMA-dependent q4_0 values"
    );
    for (scale, codes) in &d.fp8 {
        for (i, (&x, &c)) in d.x.iter().zip(codes).enumerate() {
            assert_eq!(
                quant::quantize_fp8(x, *scale),
                c,
                "fp8 value {i} ({x}) at scale {scale}"
            );
        }
    }
}

/// head_dim 96: three blocks per row, so each row's scales are padded to four and a pair of
/// blocks is cut short (Phi-3's head size).
const QHD: usize = 96;

/// The dump's values as `[batch, n_new, n_kv_heads, head_dim]` rows of a 2 x 2-head cache of
/// capacity 4, in the cache's own `[batch, n_kv_heads, capacity, head_dim]` order too.
fn cache_order(rows: &[f32], batch: usize, n: usize, heads: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows.len()];
    for b in 0..batch {
        for t in 0..n {
            for h in 0..heads {
                let src = ((b * n + t) * heads + h) * QHD;
                let dst = ((b * heads + h) * n + t) * QHD;
                out[dst..dst + QHD].copy_from_slice(&rows[src..src + QHD]);
            }
        }
    }
    out
}

/// The append writes the bytes the CPU quantizer gives for the same values, for every quantized
/// format, in two appends (3 rows, then 1) that fill the cache: q8_0 and fp8 bit for bit, q4_0
/// too except values on an FMA-dependent tie ([`quant::q4_0_fused_differs`]), which are counted.
/// K holds the dump's values (zero blocks, ties, tiny and saturating fp8 values); V is random.
/// From f32 rows, and from f16 rows for q8_0 (quantizing the f16 values).
#[test]
fn append_quantizes_like_the_cpu_quantizer() {
    use llama_kernels::{DType, KvCache, KvFormat};
    let ctx = common::ctx();
    let d = dump();
    let (batch, heads, cap) = (2, 2, 4);
    let n = batch * heads * cap * QHD;
    assert_eq!(d.x.len(), n);
    let v_rows = common::Rng::new(2101).vec(n, 2.0);
    let cases = [
        (KvFormat::Q8_0, DType::F32),
        (KvFormat::Q8_0, DType::F16),
        (KvFormat::Q4_0, DType::F32),
        (KvFormat::Fp8E4M3, DType::F32),
    ];
    for (format, src) in cases {
        let mut cache = KvCache::new(
            &ctx,
            KvCacheConfig {
                batch,
                n_kv_heads: heads,
                capacity: cap,
                head_dim: QHD,
                dtype: DType::F32,
                kv_format: Some(format),
            },
        )
        .unwrap();
        let (ks, vs) = (0.0173, 4.0);
        if format == KvFormat::Fp8E4M3 {
            cache.set_scales(ks, vs).unwrap();
        }
        // The values the kernel sees: rounded to the source dtype.
        let k_in: Vec<f32> = common::rounded(&d.x, src)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let v_in: Vec<f32> = common::rounded(&v_rows, src)
            .iter()
            .map(|&v| v as f32)
            .collect();
        for (t0, nt) in [(0, 3), (3, 1)] {
            let part = |x: &[f32]| -> Vec<f32> {
                let mut out = Vec::new();
                for b in 0..batch {
                    let row = heads * QHD;
                    out.extend_from_slice(&x[(b * cap + t0) * row..(b * cap + t0 + nt) * row]);
                }
                out
            };
            let shape = [batch, nt, heads, QHD];
            let k = ctx.upload_as(&part(&k_in), &shape, src).unwrap();
            let v = ctx.upload_as(&part(&v_in), &shape, src).unwrap();
            cache.append_run(&ctx, &k, &v).unwrap();
        }
        for (name, buf, rows, scale) in [
            ("K", cache.k_buffer(), &k_in, ks),
            ("V", cache.v_buffer(), &v_in, vs),
        ] {
            let want = quant::encode(format, &cache_order(rows, batch, cap, heads), QHD, scale);
            let got = ctx.read_bytes(buf, 0..want.len() as u64).unwrap();
            assert_eq!(
                buf.size() as usize,
                want.len(),
                "{format} {name} buffer size"
            );
            let mut ties = 0;
            for (blk, x) in cache_order(rows, batch, cap, heads)
                .chunks_exact(BLOCK)
                .enumerate()
            {
                let e = blk * BLOCK;
                let (lo, hi) = match format {
                    KvFormat::Q4_0 => (e / 2, e / 2 + 16),
                    _ => (e, e + BLOCK),
                };
                if got[lo..hi] == want[lo..hi] {
                    continue;
                }
                let fused = quant::q4_0_fused_differs(x.try_into().unwrap());
                let differing = (0..BLOCK)
                    .filter(|&j| match format {
                        KvFormat::Q4_0 => {
                            let nib = |b: &[u8]| b[lo + j % 16] >> (4 * (j / 16)) & 15;
                            nib(&got) != nib(&want)
                        }
                        _ => got[lo + j] != want[lo + j],
                    })
                    .collect::<Vec<_>>();
                assert!(
                    format == KvFormat::Q4_0 && differing.iter().all(|j| fused.contains(j)),
                    "{format} from {src} {name}: block {blk} differs at {differing:?}"
                );
                ties += differing.len();
            }
            let plane = format.scale_plane_byte(batch * heads * cap, QHD);
            assert_eq!(
                got[plane..],
                want[plane..],
                "{format} from {src} {name}: scales"
            );
            eprintln!("{format} from {src} {name}: {ties} values on FMA-dependent ties");
        }
    }
}

/// Attention over a quantized cache (every format; q and out f32) equals the f64 reference over
/// the dequantized K/V within f32's tolerance: a 30-token prefill, then a decode step after one
/// more append. DecodeKeys for every format (q4_0 over the prefill's rows); for q4_0 also
/// PrefillKeys and Decode (DecodeSubgroup: `subgroup_decode_reads_quantized_caches`). GQA with
/// 4 q heads over 2, batch 2, head_dim 32 (one block per row, its scale padded to a pair); fp8
/// with scales that leave some values saturated (PrefillSubgroup:
/// `subgroup_prefill_reads_quantized_caches`).
#[test]
fn attention_reads_quantized_caches() {
    use llama_kernels::compare::tolerance;
    use llama_kernels::ops::attention::Kind;
    use llama_kernels::reference::attention as reference;
    use llama_kernels::{Attention, DType, KvCache, KvFormat};
    let ctx = common::ctx();
    let (batch, nh, nkv, cap) = (2, 4, 2, 40);
    let decode_kinds = vec![Kind::Decode];
    for format in KvFormat::QUANTIZED {
        // q8_0 at head_dim 96: DecodeKeys reads a row's 12 units of 8 values as pairs from
        // 16-byte loads in ladders of 8 units, and the second ladder stops after 4.
        let hd = if format == KvFormat::Q8_0 { QHD } else { 32 };
        let mut rng = common::Rng::new(2102);
        let mut cache = KvCache::new(
            &ctx,
            KvCacheConfig {
                batch,
                n_kv_heads: nkv,
                capacity: cap,
                head_dim: hd,
                dtype: DType::F32,
                kv_format: Some(format),
            },
        )
        .unwrap();
        let (ks, vs) = (0.004, 0.02);
        if format == KvFormat::Fp8E4M3 {
            cache.set_scales(ks, vs).unwrap();
        }
        let (mut k_all, mut v_all) = (vec![Vec::new(); batch], vec![Vec::new(); batch]);
        // Every kernel reads quantized K/V through the same kv_load4 (kv_quant.wgsl), so each
        // format runs the decode default of CPU adapters (DecodeKeys), and q4_0 (the most
        // addressing) every other kernel but Prefill, whose K/V staging is Decode's `load4`
        // (its LLVM compile alone costs more than the rest of this test).
        let all = format == KvFormat::Q4_0;
        let steps = [
            // q4_0's 30 rows per kv head take DecodeKeys with 4 rows per workgroup, as the
            // committed q4_0 case does.
            (
                30,
                if all {
                    vec![Kind::PrefillKeys, Kind::DecodeKeys]
                } else {
                    vec![]
                },
            ),
            (
                1,
                if all {
                    decode_kinds.clone()
                } else {
                    vec![Kind::DecodeKeys]
                },
            ),
        ];
        for (n_new, kinds) in steps {
            let shape = [batch, n_new, nkv, hd];
            let k_new = rng.vec(batch * n_new * nkv * hd, 1.0);
            let v_new = rng.vec(batch * n_new * nkv * hd, 1.0);
            let k = ctx.upload_as(&k_new, &shape, DType::F32).unwrap();
            let v = ctx.upload_as(&v_new, &shape, DType::F32).unwrap();
            cache.append_run(&ctx, &k, &v).unwrap();
            let row = n_new * nkv * hd;
            for b in 0..batch {
                k_all[b].extend(quant::round_trip(
                    format,
                    &k_new[b * row..(b + 1) * row],
                    hd,
                    ks,
                ));
                v_all[b].extend(quant::round_trip(
                    format,
                    &v_new[b * row..(b + 1) * row],
                    hd,
                    vs,
                ));
            }
            let q = rng.vec(batch * n_new * nh * hd, 1.0);
            let dims = reference::Dims {
                batch,
                q_len: n_new,
                kv_len: cache.len(),
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
            let want = reference::attention(
                &q64,
                &k_all.concat(),
                &v_all.concat(),
                None,
                dims,
                &Default::default(),
            );
            let qt = ctx
                .upload_as(&q, &[batch, n_new, nh, hd], DType::F32)
                .unwrap();
            for kind in kinds {
                let out = common::nan_output(&ctx, &[batch, n_new, nh, hd], DType::F32);
                let attn = Attention {
                    kind: Some(kind),
                    ..Attention::causal()
                };
                attn.run_cached(&ctx, &qt, &cache, None, &out).unwrap();
                let what = format!("{format} {kind:?} q_len {n_new}");
                common::assert_close(&ctx, &out, &want, tolerance(DType::F32), &what);
                common::assert_guards(&ctx, &out, &what);
            }
        }
    }
}

/// The fp8 K and V scales of the subgroup kernels' tests (q8_0 and q4_0 keep block scales).
const SG_SCALES: (f32, f32) = (0.004, 0.02);

/// The f64 reference (causal, default scale) of q `[q_len, n_heads, head_dim]` over dequantized
/// K/V `[kv_len, n_kv_heads, head_dim]`; with `int8_dot` ([`llama_kernels::Attention::int8_dot`])
/// over q as the packed 8-bit scoring quantizes it ([`quant::int8_dot_q`], pre-scaled).
fn reference_over(
    q: &[f32],
    k: &[f64],
    v: &[f64],
    dims: llama_kernels::ops::attention::Dims,
    int8_dot: bool,
) -> Vec<f64> {
    use llama_kernels::reference::attention::{attention, Options};
    if int8_dot {
        let scale = 1.0 / (dims.head_dim as f32).sqrt();
        let q8 = quant::int8_dot_q(q, dims.head_dim, scale);
        let o = Options {
            scale: Some(1.0),
            ..Default::default()
        };
        return attention(&q8, k, v, None, dims, &o);
    }
    let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    attention(&q64, k, v, None, dims, &Default::default())
}

/// A one-sequence `format` cache (fp8 with [`SG_SCALES`]) holding `kv_len` random K/V rows of
/// `nkv` heads x `hd`, and those rows dequantized as the cache holds them.
fn filled_cache(
    ctx: &llama_kernels::Context,
    format: llama_kernels::KvFormat,
    nkv: usize,
    hd: usize,
    kv_len: usize,
    rng: &mut common::Rng,
) -> (llama_kernels::KvCache, Vec<f64>, Vec<f64>) {
    use llama_kernels::{DType, KvCache, KvFormat};
    let (ks, vs) = SG_SCALES;
    let mut cache = KvCache::new(
        ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: nkv,
            capacity: 48,
            head_dim: hd,
            dtype: DType::F32,
            kv_format: Some(format),
        },
    )
    .unwrap();
    if format == KvFormat::Fp8E4M3 {
        cache.set_scales(ks, vs).unwrap();
    }
    let n = kv_len * nkv * hd;
    let (k, v) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
    let shape = [1, kv_len, nkv, hd];
    let kt = ctx.upload_as(&k, &shape, DType::F32).unwrap();
    let vt = ctx.upload_as(&v, &shape, DType::F32).unwrap();
    cache.append_run(ctx, &kt, &vt).unwrap();
    (
        cache,
        quant::round_trip(format, &k, hd, ks),
        quant::round_trip(format, &v, hd, vs),
    )
}

/// The subgroup kernels' runs over quantized caches: every format, and the block formats again
/// with packed 8-bit scoring (`Attention::int8_dot`), as (format, int8_dot).
fn format_runs() -> impl Iterator<Item = (llama_kernels::KvFormat, bool)> {
    llama_kernels::KvFormat::QUANTIZED
        .into_iter()
        .flat_map(|f| {
            [false, true]
                .into_iter()
                .filter(move |&i| !i || f.is_block())
                .map(move |i| (f, i))
        })
}

/// The packed 8-bit runs' check that they can fail: quantizing q moves the output `out` past
/// f32's tolerance from the reference over the exact q (and `kv`, the dequantized K/V).
fn assert_q_quantized(
    ctx: &llama_kernels::Context,
    out: &llama_kernels::Tensor,
    q: &[f32],
    kv: (&[f64], &[f64]),
    d: llama_kernels::ops::attention::Dims,
    what: &str,
) {
    let exact = reference_over(q, kv.0, kv.1, d, false);
    let c = llama_kernels::compare::compare(&ctx.read_f32(out).unwrap(), &exact);
    assert!(
        !c.passes(llama_kernels::compare::tolerance(llama_kernels::DType::F32)),
        "{what}: {c}, within f32's tolerance of the reference over the exact q"
    );
}

/// Pages of the subgroup kernels' paged tests.
const SG_PAGE: usize = 16;

/// An empty pool of `n_pages` pages of `page_size` tokens of `heads`' K/V in `format` and
/// `layout`, for f32 q; fp8 with the (K, V) `scales`.
fn quant_pool(
    ctx: &llama_kernels::Context,
    format: llama_kernels::KvFormat,
    layout: llama_kernels::PageLayout,
    page_size: usize,
    n_pages: usize,
    heads: llama_kernels::ops::paged::Heads,
    scales: (f32, f32),
) -> llama_kernels::PagedKvCache {
    let mut pool = llama_kernels::PagedKvCache::new(
        ctx,
        PagedKvConfig {
            n_pages,
            page_size,
            n_kv_heads: heads.n_kv_heads,
            head_dim: heads.head_dim,
            dtype: llama_kernels::DType::F32,
            kv_format: Some(format),
            layout,
        },
    )
    .unwrap();
    if format == llama_kernels::KvFormat::Fp8E4M3 {
        pool.set_scales(scales.0, scales.1).unwrap();
    }
    pool
}

/// Whether two pools of one buffer hold the same bytes.
fn same_pages(
    ctx: &llama_kernels::Context,
    a: &llama_kernels::PagedKvCache,
    b: &llama_kernels::PagedKvCache,
) -> bool {
    let size = a.buffers()[0].size();
    let read = |p: &llama_kernels::PagedKvCache| ctx.read_bytes(&p.buffers()[0], 0..size).unwrap();
    a.buffers().len() == 1 && b.buffers().len() == 1 && read(a) == read(b)
}

/// A pool of `n_pages` HND pages of [`SG_PAGE`] in `format` (fp8 with [`SG_SCALES`]), noise in
/// every page, then each sequence's K/V written into its pages (shuffled by the caller); the
/// sequences' q rows, one after another, and the reference over their dequantized K/V
/// ([`reference_over`], with `int8_dot` as there).
fn filled_pool(
    ctx: &llama_kernels::Context,
    format: llama_kernels::KvFormat,
    heads: llama_kernels::ops::paged::Heads,
    n_pages: usize,
    seqs: &[llama_kernels::ops::paged::BatchSeq],
    rng: &mut common::Rng,
    int8_dot: bool,
) -> (llama_kernels::PagedKvCache, Vec<f32>, Vec<f64>) {
    let (ks, vs) = SG_SCALES;
    let hd = heads.head_dim;
    let pool = quant_pool(
        ctx,
        format,
        llama_kernels::PageLayout::Hnd,
        SG_PAGE,
        n_pages,
        heads,
        SG_SCALES,
    );
    let row = heads.n_kv_heads * hd;
    let per = SG_PAGE * row;
    let all: Vec<u32> = (0..n_pages as u32).collect();
    pool.write_pages(
        ctx,
        &all,
        &rng.vec(n_pages * per, 3.0),
        &rng.vec(n_pages * per, 3.0),
    )
    .unwrap();
    let (mut q, mut want) = (Vec::new(), Vec::new());
    for s in seqs {
        let n = s.pages.len() * per;
        let (k, v) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
        pool.write_pages(ctx, &s.pages, &k, &v).unwrap();
        let kv = s.kv_len * row;
        let qs = rng.vec(s.q_len * heads.n_heads * hd, 1.0);
        let dims = llama_kernels::ops::attention::Dims {
            batch: 1,
            q_len: s.q_len,
            kv_len: s.kv_len,
            n_heads: heads.n_heads,
            n_kv_heads: heads.n_kv_heads,
            head_dim: hd,
        };
        want.extend(reference_over(
            &qs,
            &quant::round_trip(format, &k[..kv], hd, ks),
            &quant::round_trip(format, &v[..kv], hd, vs),
            dims,
            int8_dot,
        ));
        q.extend(qs);
    }
    (pool, q, want)
}

/// The GPU decode (`DecodeSubgroup`, forced where the adapter has subgroups) over quantized
/// caches and pools: each format read in place as whole 16-byte units (16 q8_0 or fp8 values, a
/// whole q4_0 block) equals the f64 reference over the dequantized K/V within f32's tolerance.
/// Llama-3.2-1B's head_dim 64 (two blocks per row), f32 q, one pipeline per format and layout:
/// contiguous GQA (8 q heads over 2) with one and two query tokens (two row blocks for q4_0),
/// 37 keys, one split (the partial pass writes the output) and 3 (the merge), and for q4_0 MHA
/// (2 over 2, one row per workgroup: one more pipeline); paged decode rows of one and two
/// tokens over shuffled pages with noise in the others, 37 and 50 keys, the same split counts:
/// the batch's row blocks are planned for float pages (4 and 8 rows), which the quantized
/// kernel takes in its own smaller steps (q4_0: 2 rows). fp8 with scales. With packed 8-bit
/// scoring (`Attention::int8_dot`, q8_0 and q4_0: one more pipeline each, contiguous, and
/// paged over q8_0) the GQA cases again, against the reference over q quantized as the kernel
/// quantizes it (`quant::int8_dot_q`), within the same tolerance.
#[test]
fn subgroup_decode_reads_quantized_caches() {
    use llama_kernels::compare::tolerance;
    use llama_kernels::ops::attention::{Dims, Kind};
    use llama_kernels::ops::paged::{BatchSeq, Heads, PlanOptions};
    use llama_kernels::{Attention, DType, KvFormat, PagedBatch};
    let ctx = common::ctx();
    assert!(
        ctx.caps().subgroups,
        "this adapter lacks SUBGROUP; the subgroup decode would go untested"
    );
    let (nkv, hd, kv_len) = (2, 64, 37);
    let forced = |splits, int8_dot| Attention {
        kind: Some(Kind::DecodeSubgroup),
        splits,
        int8_dot,
        ..Attention::causal()
    };
    for (format, int8_dot) in format_runs() {
        let mut rng = common::Rng::new(2121);
        let (cache, k_dq, v_dq) = filled_cache(&ctx, format, nkv, hd, kv_len, &mut rng);
        // (query heads, query tokens, splits); MHA (one row per workgroup, a pipeline of its
        // own) for q4_0 without int8_dot only: each specialisation costs lavapipe about a
        // second of LLVM cold.
        let mut cases = vec![(8, 1, None), (8, 1, Some(3)), (8, 2, Some(3))];
        if format == KvFormat::Q4_0 && !int8_dot {
            cases.extend([(2, 1, None), (2, 1, Some(3))]);
        }
        for (nh, q_len, splits) in cases {
            let q = rng.vec(q_len * nh * hd, 1.0);
            let d = Dims {
                batch: 1,
                q_len,
                kv_len,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            let want = reference_over(&q, &k_dq, &v_dq, d, int8_dot);
            let qt = ctx.upload_as(&q, &[1, q_len, nh, hd], DType::F32).unwrap();
            let out = common::nan_output(&ctx, &[1, q_len, nh, hd], DType::F32);
            let attn = forced(splits, int8_dot);
            let plan = attn.plan_kv(&ctx, d, DType::F32, format).unwrap();
            assert_eq!(
                (plan.variant.kind, plan.variant.kv, plan.variant.int8_dot),
                (Kind::DecodeSubgroup, format, int8_dot)
            );
            attn.run_cached(&ctx, &qt, &cache, None, &out).unwrap();
            let what = format!(
                "{format} DecodeSubgroup {nh}/{nkv} heads q_len {q_len} splits {splits:?} (kr {}, int8_dot {int8_dot})",
                plan.variant.kr
            );
            common::assert_close(&ctx, &out, &want, tolerance(DType::F32), &what);
            common::assert_guards(&ctx, &out, &what);
            if int8_dot {
                assert_q_quantized(&ctx, &out, &q, (&k_dq, &v_dq), d, &what);
            }
        }

        // Paged: two decode sequences over shuffled pages, noise in the other pages. The paged
        // kernel's row addressing is the same for every format and its unit reads are the
        // contiguous kernel's (above), so by default it runs over q8_0 pages only (each paged
        // specialisation costs lavapipe about two seconds of LLVM cold); every format with
        // LLAMA_KERNELS_LONG_TESTS=1.
        if format != KvFormat::Q8_0 && !common::long_tests() {
            continue;
        }
        let n_pages = 10;
        let heads = Heads {
            n_heads: 8,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let seqs = vec![
            BatchSeq {
                q_len: 1,
                kv_len: 37,
                pages: vec![6, 1, 4],
            },
            BatchSeq {
                q_len: 2,
                kv_len: 50,
                pages: vec![3, 0, 8, 2],
            },
        ];
        let (pool, q, want) = filled_pool(&ctx, format, heads, n_pages, &seqs, &mut rng, int8_dot);
        let shape = [3, heads.n_heads, hd];
        let qt = ctx.upload_as(&q, &shape, DType::F32).unwrap();
        let attn = Attention {
            int8_dot,
            ..Attention::default()
        };
        for splits in [None, Some(3)] {
            let opts = PlanOptions {
                splits,
                decode: Some(Kind::DecodeSubgroup),
                ..Default::default()
            };
            let batch =
                PagedBatch::from_parts_with(&ctx, SG_PAGE, n_pages, &seqs, heads, &opts).unwrap();
            assert_eq!(batch.kinds(), [Kind::DecodeSubgroup; 2]);
            let out = common::nan_output(&ctx, &shape, DType::F32);
            attn.run_paged(&ctx, &qt, &pool, &batch, None, &out)
                .unwrap();
            let what =
                format!("{format} paged DecodeSubgroup splits {splits:?} int8_dot {int8_dot}");
            common::assert_close(&ctx, &out, &want, tolerance(DType::F32), &what);
            common::assert_guards(&ctx, &out, &what);
        }
    }
}

/// Packed 8-bit scoring (`Attention::int8_dot`) is refused, before any GPU work, where it
/// cannot apply: K that is not q8_0 or q4_0 (a float cache, fp8; the GPU decode and prefill), a
/// kernel other than `DecodeSubgroup` and `PrefillSubgroup` (the CPU adapter's default decode
/// and prefill, forced ones), and a paged batch without `DecodeSubgroup` or `PrefillSubgroup`
/// rows or over an fp8 pool.
#[test]
fn int8_dot_rules() {
    use llama_kernels::ops::attention::{Dims, Kind};
    use llama_kernels::ops::paged::{BatchSeq, Heads, PlanOptions};
    use llama_kernels::{Attention, DType, KvFormat, PagedBatch};
    let ctx = common::ctx();
    let (nh, nkv, hd) = (8, 2, 64);
    let d = |q_len| Dims {
        batch: 1,
        q_len,
        kv_len: 37,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    };
    let attn = |kind| Attention {
        kind,
        int8_dot: true,
        ..Attention::causal()
    };
    let expect = |r: Result<(), llama_kernels::Error>, what: &str, want: &str| match r {
        Ok(_) => panic!("{what}: int8_dot accepted"),
        Err(e) => assert!(e.to_string().contains(want), "{what}: {e}"),
    };
    let sg = Some(Kind::DecodeSubgroup);
    for (kind, q_len) in [(sg, 1), (Some(Kind::PrefillSubgroup), 13)] {
        for kv in [KvFormat::F32, KvFormat::Fp8E4M3] {
            let r = attn(kind)
                .plan_kv(&ctx, d(q_len), DType::F32, kv)
                .map(|_| ());
            expect(r, kv.name(), &format!("int8_dot (packed 8-bit q·k) needs q8_0 or q4_0 K, whose values are int8 (q4_0: q - 8); K is {kv}"));
        }
    }
    let only = "int8_dot (packed 8-bit q·k) is implemented by the DecodeSubgroup and PrefillSubgroup kernels only; this call runs";
    for (kind, q_len, runs) in [
        (None, 1, "DecodeKeys"),
        (Some(Kind::Decode), 1, "Decode"),
        (Some(Kind::Prefill), 13, "Prefill"),
    ] {
        let r = attn(kind)
            .plan_kv(&ctx, d(q_len), DType::F32, KvFormat::Q8_0)
            .map(|_| ());
        expect(r, runs, &format!("{only} {runs}"));
    }
    // The same through a call: nothing is recorded.
    let mut rng = common::Rng::new(2122);
    let (cache, _, _) = filled_cache(&ctx, KvFormat::Fp8E4M3, nkv, hd, 37, &mut rng);
    let q = ctx
        .upload_as(&rng.vec(nh * hd, 1.0), &[1, 1, nh, hd], DType::F32)
        .unwrap();
    let out = common::nan_output(&ctx, &[1, 1, nh, hd], DType::F32);
    let r = attn(sg).run_cached(&ctx, &q, &cache, None, &out);
    expect(r, "fp8 cache", "K is fp8_e4m3");

    // Paged: a q8_0 pool with a batch planned for the CPU adapter's decode, and an fp8 pool.
    let heads = Heads {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    };
    let seqs = vec![BatchSeq {
        q_len: 1,
        kv_len: 37,
        pages: vec![2, 0, 1],
    }];
    let q = ctx
        .upload_as(&rng.vec(nh * hd, 1.0), &[1, nh, hd], DType::F32)
        .unwrap();
    let out = common::nan_output(&ctx, &[1, nh, hd], DType::F32);
    let paged = attn(None);
    for (format, decode, want) in [
        (
            KvFormat::Q8_0,
            Some(Kind::DecodeKeys),
            "the batch has neither kind of rows",
        ),
        (KvFormat::Fp8E4M3, sg, "the pool holds fp8_e4m3"),
    ] {
        let (pool, _, _) = filled_pool(&ctx, format, heads, 3, &seqs, &mut rng, false);
        let opts = PlanOptions {
            decode,
            ..Default::default()
        };
        let batch = PagedBatch::from_parts_with(&ctx, SG_PAGE, 3, &seqs, heads, &opts).unwrap();
        let r = paged.run_paged(&ctx, &q, &pool, &batch, None, &out);
        expect(r, &format!("paged {format}"), want);
    }
}

/// The GPU prefill (`PrefillSubgroup`, forced where the adapter has subgroups) over quantized
/// caches and a pool: K/V tiles staged from whole blocks (q8_0 two 16-byte units, q4_0 one, with
/// the block's scale; fp8 16-value units with the tensor scale) equal the f64 reference over the
/// dequantized K/V within f32's tolerance. Llama-3.2-1B's head_dim 64 and GQA (8 q heads over 2),
/// f32 q, causal, an odd q_len (13) over an odd kv_len (45), one split and 3 (the merge): one
/// pipeline per format (the split count is a run-time value) and the shared merge. With packed
/// 8-bit scoring (`Attention::int8_dot`, q8_0 and q4_0, contiguous: one more pipeline each; 4
/// lanes per row on lavapipe, so a block's amax spans two slots of each lane) the same runs
/// against the reference over q quantized as the kernel quantizes it (`quant::int8_dot_q`),
/// within the same tolerance, and beyond it from the reference over the exact q (the check can
/// fail). Paged: q8_0 only (the page addressing does not depend on the format), two prefill
/// sequences over shuffled pages with noise in the others, one split and 2; with int8_dot too
/// under LLAMA_KERNELS_LONG_TESTS=1 (one more pipeline). fp8 rows that are not whole units
/// (head_dim 40) are refused, contiguous and paged, before any GPU work.
#[test]
fn subgroup_prefill_reads_quantized_caches() {
    use llama_kernels::compare::tolerance;
    use llama_kernels::ops::attention::{Dims, Kind};
    use llama_kernels::ops::paged::{BatchSeq, Heads, PlanOptions};
    use llama_kernels::{Attention, DType, KvFormat, PageLayout, PagedBatch, PagedKvCache};
    let ctx = common::ctx();
    assert!(
        ctx.caps().subgroups,
        "this adapter lacks SUBGROUP; the subgroup prefill would go untested"
    );
    let (nh, nkv, hd, q_len, kv_len) = (8, 2, 64, 13, 45);
    let forced = |splits| Attention {
        kind: Some(Kind::PrefillSubgroup),
        splits,
        ..Attention::causal()
    };
    let d = Dims {
        batch: 1,
        q_len,
        kv_len,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    };
    for (format, int8_dot) in format_runs() {
        let mut rng = common::Rng::new(2131);
        let (cache, k_dq, v_dq) = filled_cache(&ctx, format, nkv, hd, kv_len, &mut rng);
        let q = rng.vec(q_len * nh * hd, 1.0);
        let want = reference_over(&q, &k_dq, &v_dq, d, int8_dot);
        let qt = ctx.upload_as(&q, &[1, q_len, nh, hd], DType::F32).unwrap();
        let attn = |splits| Attention {
            int8_dot,
            ..forced(splits)
        };
        // The default on GPUs; forced here, since lavapipe is a CPU adapter.
        let plan = attn(None).plan_kv(&ctx, d, DType::F32, format).unwrap();
        assert_eq!(
            (plan.variant.kind, plan.variant.kv, plan.variant.int8_dot),
            (Kind::PrefillSubgroup, format, int8_dot)
        );
        for splits in [None, Some(3)] {
            let out = common::nan_output(&ctx, &[1, q_len, nh, hd], DType::F32);
            attn(splits)
                .run_cached(&ctx, &qt, &cache, None, &out)
                .unwrap();
            let what = format!(
                "{format} PrefillSubgroup q_len {q_len} splits {splits:?} int8_dot {int8_dot}"
            );
            common::assert_close(&ctx, &out, &want, tolerance(DType::F32), &what);
            common::assert_guards(&ctx, &out, &what);
            if int8_dot {
                assert_q_quantized(&ctx, &out, &q, (&k_dq, &v_dq), d, &what);
            }
        }
    }
    let fp8 = KvFormat::Fp8E4M3;
    let hd40 = Dims { head_dim: 40, ..d };
    let e = forced(None)
        .plan_kv(&ctx, hd40, DType::F32, fp8)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the PrefillSubgroup kernel reads whole 16-byte units of a K/V row: fp8_e4m3 rows of head_dim 40 are not"),
        "{e}"
    );

    // Paged: two prefill sequences over shuffled pages, noise in the other pages.
    let n_pages = 10;
    let format = KvFormat::Q8_0;
    let mut rng = common::Rng::new(2132);
    let heads = Heads {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    };
    let seqs = vec![
        BatchSeq {
            q_len,
            kv_len,
            pages: vec![6, 1, 4],
        },
        BatchSeq {
            q_len: 9,
            kv_len: 50,
            pages: vec![3, 0, 8, 2],
        },
    ];
    let shape = [q_len + 9, nh, hd];
    let opts = |splits| PlanOptions {
        splits,
        prefill: Some(Kind::PrefillSubgroup),
        ..Default::default()
    };
    // With packed 8-bit scoring too (one more pipeline) with LLAMA_KERNELS_LONG_TESTS=1.
    for int8_dot in [false, true] {
        if int8_dot && !common::long_tests() {
            continue;
        }
        let (pool, q, want) = filled_pool(&ctx, format, heads, n_pages, &seqs, &mut rng, int8_dot);
        let qt = ctx.upload_as(&q, &shape, DType::F32).unwrap();
        let attn = Attention {
            int8_dot,
            ..Attention::default()
        };
        for splits in [None, Some(2)] {
            let batch =
                PagedBatch::from_parts_with(&ctx, SG_PAGE, n_pages, &seqs, heads, &opts(splits))
                    .unwrap();
            assert_eq!(batch.kinds(), [Kind::PrefillSubgroup; 2]);
            let out = common::nan_output(&ctx, &shape, DType::F32);
            attn.run_paged(&ctx, &qt, &pool, &batch, None, &out)
                .unwrap();
            let what =
                format!("{format} paged PrefillSubgroup splits {splits:?} int8_dot {int8_dot}");
            common::assert_close(&ctx, &out, &want, tolerance(DType::F32), &what);
            common::assert_guards(&ctx, &out, &what);
        }
    }
    // fp8 pages of head_dim 40: a batch planned with the subgroup prefill is refused.
    let heads40 = Heads {
        head_dim: 40,
        ..heads
    };
    let pool40 = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages,
            page_size: SG_PAGE,
            n_kv_heads: nkv,
            head_dim: 40,
            dtype: DType::F32,
            kv_format: Some(fp8),
            layout: PageLayout::Hnd,
        },
    )
    .unwrap();
    let batch =
        PagedBatch::from_parts_with(&ctx, SG_PAGE, n_pages, &seqs, heads40, &opts(None)).unwrap();
    let shape40 = [q_len + 9, nh, 40];
    let qt = ctx
        .upload_as(&vec![0.0; (q_len + 9) * nh * 40], &shape40, DType::F32)
        .unwrap();
    let out = common::nan_output(&ctx, &shape40, DType::F32);
    let e = Attention::default()
        .run_paged(&ctx, &qt, &pool40, &batch, None, &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the batch was planned with the PrefillSubgroup kernel, which reads whole 16-byte units of a K/V row: fp8_e4m3 rows of head_dim 40 are not"),
        "{e}"
    );
}

/// `append_rope` into a quantized cache holds exactly the CPU quantizer's blocks of the rows
/// RoPE rotates (RoPE run on its own, out of place, read back): `rope_q` normalises, rotates and
/// quantizes K in one pass from the values RoPE's float output holds, no float copy between.
/// Contiguous caches of each format: q8_0 (half layout) at the cache's own positions, q4_0 and
/// fp8 with scales (some values saturate) interleaved with a partial rotary_dim (an unrotated
/// tail) at positions from a buffer; paged caches, whose pages equal the host encoder's
/// (`write_pages`) over the rotated rows: q4_0 with a k_norm in HND pages, fp8 without in NHD
/// pages. V is quantized as it comes. (The layouts and position sources share pipelines across
/// the cases: every new one is a cold compile.)
#[test]
fn append_rope_quantizes_the_rotated_rows() {
    use llama_kernels::ops::paged::{BatchSeq, Heads};
    use llama_kernels::ops::rope::{HeadNorm, Layout, Rope};
    use llama_kernels::{DType, KvCache, KvFormat, PageLayout, PagedBatch};
    use llama_kernels::{PositionIds, Positions};
    let ctx = common::ctx();
    let (batch, heads, cap) = (2, 2, 4);
    let half = Rope::new(10000.0, Layout::Half);
    let interleaved = Rope::new(5e5, Layout::Interleaved).with_rotary_dim(64);
    // fp8: K values of up to 3 over 0.005 pass 448 and saturate.
    let (ks, vs) = (0.005, 0.03);
    let scales = |format: KvFormat| match format {
        KvFormat::Fp8E4M3 => (ks, vs),
        _ => (1.0, 1.0),
    };
    let mut rng = common::Rng::new(2103);
    let contiguous = [
        (KvFormat::Q8_0, &half, false),
        (KvFormat::Q4_0, &interleaved, true),
        (KvFormat::Fp8E4M3, &interleaved, true),
    ];
    for (format, rope, ids) in contiguous {
        let mut cache = KvCache::new(
            &ctx,
            KvCacheConfig {
                batch,
                n_kv_heads: heads,
                capacity: cap,
                head_dim: QHD,
                dtype: DType::F32,
                kv_format: Some(format),
            },
        )
        .unwrap();
        let (k_scale, v_scale) = scales(format);
        if format == KvFormat::Fp8E4M3 {
            cache.set_scales(ks, vs).unwrap();
        }
        assert!(cache.rope_fused_for(DType::F32) && cache.rope_fused_for(DType::BF16));
        let n = batch * cap * heads * QHD;
        let (k_rows, v_rows) = (rng.vec(n, 3.0), rng.vec(n, 3.0));
        let mut rotated = Vec::new();
        for (t0, nt) in [(0, 3), (3, 1)] {
            let part = |x: &[f32]| -> Vec<f32> {
                let row = heads * QHD;
                (0..batch)
                    .flat_map(|b| x[(b * cap + t0) * row..(b * cap + t0 + nt) * row].to_vec())
                    .collect()
            };
            let shape = [batch, nt, heads, QHD];
            let k = ctx.upload_as(&part(&k_rows), &shape, DType::F32).unwrap();
            let v = ctx.upload_as(&part(&v_rows), &shape, DType::F32).unwrap();
            // Each sequence at its own positions, far from the rows' indices.
            let pos: Vec<i32> = (0..batch * nt)
                .map(|i| (9000 * (i / nt) + 3 * (t0 + i % nt) + 1) as i32)
                .collect();
            let pids = PositionIds::upload(&ctx, &pos, &[batch, nt]).unwrap();
            let positions = match ids {
                true => Positions::Ids(&pids),
                false => Positions::Start(t0 as i32),
            };
            let alone = ctx.upload_as(&part(&k_rows), &shape, DType::F32).unwrap();
            let out = ctx.upload_as(&part(&k_rows), &shape, DType::F32).unwrap();
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            rope.encode_to(&ctx, &mut enc, &alone, &out, positions)
                .unwrap();
            ctx.queue().submit([enc.finish()]);
            rotated.push(ctx.read_f32(&out).unwrap());
            let given = ids.then_some(positions);
            cache.append_rope_run(&ctx, &k, &v, rope, given).unwrap();
        }
        // Back to [batch, cap, heads, QHD] order.
        let row = heads * QHD;
        let k_rot: Vec<f32> = (0..batch)
            .flat_map(|b| {
                let mut r = rotated[0][b * 3 * row..(b + 1) * 3 * row].to_vec();
                r.extend_from_slice(&rotated[1][b * row..(b + 1) * row]);
                r
            })
            .collect();
        for (name, buf, rows, scale) in [
            ("K", cache.k_buffer(), &k_rot, k_scale),
            ("V", cache.v_buffer(), &v_rows, v_scale),
        ] {
            let want = quant::encode(format, &cache_order(rows, batch, cap, heads), QHD, scale);
            let got = ctx.read_bytes(buf, 0..want.len() as u64).unwrap();
            assert!(
                got == want,
                "{format} {name}: the cache differs from the CPU quantizer"
            );
        }
    }

    // Paged: two sequences' 16 new tokens each, filling pages 3 and 2 (page 1 holds the second
    // sequence's first 16 rows, not written here).
    const PAGE: usize = 16;
    let ph = Heads {
        n_heads: 4,
        n_kv_heads: heads,
        head_dim: QHD,
    };
    let seqs = [(16, vec![3]), (32, vec![1, 2])].map(|(kv_len, pages)| BatchSeq {
        q_len: 16,
        kv_len,
        pages,
    });
    let w = ctx
        .upload_as(&rng.vec(QHD, 1.0), &[QHD], DType::F32)
        .unwrap();
    let k_norm = HeadNorm::new(&w, 1e-6);
    let paged = [
        (KvFormat::Q4_0, &interleaved, PageLayout::Hnd, Some(&k_norm)),
        (KvFormat::Fp8E4M3, &interleaved, PageLayout::Nhd, None),
    ];
    for (format, rope, layout, norm) in paged {
        let new = || quant_pool(&ctx, format, layout, PAGE, 4, ph, (ks, vs));
        let (gpu, host) = (new(), new());
        assert!(gpu.rope_fused_for(DType::F16));
        let batch = PagedBatch::from_parts(&ctx, PAGE, 4, &seqs, ph, None).unwrap();
        let shape = [2 * PAGE, heads, QHD];
        let n = 2 * PAGE * heads * QHD;
        let (k, v) = (rng.vec(n, 3.0), rng.vec(n, 3.0));
        let kt = ctx.upload_as(&k, &shape, DType::F32).unwrap();
        let vt = ctx.upload_as(&v, &shape, DType::F32).unwrap();
        let out = ctx.empty(&shape, DType::F32).unwrap();
        let pids = batch.positions();
        let positions = Positions::Ids(&pids);
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        match norm {
            Some(n) => rope.encode_norm_to(&ctx, &mut enc, &kt, &out, n, positions),
            None => rope.encode_to(&ctx, &mut enc, &kt, &out, positions),
        }
        .unwrap();
        gpu.append_rope(&ctx, &mut enc, &batch, &kt, &vt, rope, norm, None)
            .unwrap();
        ctx.queue().submit([enc.finish()]);
        host.write_pages(&ctx, &[3, 2], &ctx.read_f32(&out).unwrap(), &v)
            .unwrap();
        assert!(
            same_pages(&ctx, &gpu, &host),
            "{format} {layout:?}: pages written by append_rope differ from the host's"
        );
    }
}

/// Every rule of quantized caches, with its message.
#[test]
fn quantized_cache_rules() {
    use common::{expect_err, is_alias, is_dtype, is_param, is_shape};
    use llama_kernels::ops::attention::Dims;
    use llama_kernels::{Attention, DType, KvCache, KvFormat};
    let ctx = common::ctx();
    expect_err(
        KvCache::new(
            &ctx,
            KvCacheConfig {
                batch: 1,
                n_kv_heads: 1,
                capacity: 4,
                head_dim: 80,
                dtype: DType::F32,
                kv_format: Some(KvFormat::Q4_0),
            },
        ),
        "kv_cache",
        is_shape,
        "kv format q4_0 needs head_dim to be a multiple of 32, got head_dim 80",
    );
    expect_err(
        KvCache::new(
            &ctx,
            KvCacheConfig {
                batch: 1,
                n_kv_heads: 1,
                capacity: 4,
                head_dim: 36,
                dtype: DType::F16,
                kv_format: Some(KvFormat::Fp8E4M3),
            },
        ),
        "kv_cache",
        is_shape,
        "kv format fp8_e4m3 needs head_dim to be a multiple of 8, got head_dim 36",
    );
    expect_err(
        KvCache::new(
            &ctx,
            KvCacheConfig {
                batch: 1,
                n_kv_heads: 1,
                capacity: 4,
                head_dim: 32,
                dtype: DType::F16,
                kv_format: Some(KvFormat::F32),
            },
        ),
        "kv_cache",
        is_dtype,
        "a f32 cache is for q and out of f32, not f16",
    );
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: 1,
            capacity: 4,
            head_dim: 32,
            dtype: DType::F32,
            kv_format: Some(KvFormat::Fp8E4M3),
        },
    )
    .unwrap();
    for (k, v) in [
        (0.0, 1.0),
        (1.0, f32::NAN),
        (-2.0, 1.0),
        (1.0, f32::INFINITY),
    ] {
        expect_err(
            cache.set_scales(k, v),
            "kv_cache",
            is_param,
            "must be finite and > 0",
        );
    }
    let rows = ctx.upload_as(&[0.5; 32], &[1, 1, 32], DType::F32).unwrap();
    cache.append_run(&ctx, &rows, &rows).unwrap();
    expect_err(
        cache.set_scales(2.0, 2.0),
        "kv_cache",
        is_param,
        "the scales can only change while the cache is empty (length 1)",
    );
    // New rows are quantized from buffers of their own, never from the cache's.
    let own = llama_kernels::Tensor::new(cache.k_buffer(), 0, &[1, 1, 32], DType::F32);
    expect_err(
        cache.append_run(&ctx, &own, &rows),
        "kv_cache",
        is_alias,
        "k_new / v_new live in the cache's own K or V buffer: a fp8_e4m3 cache quantizes new rows from buffers of their own",
    );
    let rope = llama_kernels::Rope::new(1e4, llama_kernels::Layout::Half);
    expect_err(
        cache.append_rope_run(&ctx, &rows, &own, &rope, None),
        "kv_cache",
        is_alias,
        "k_new / v_new live in the cache's own K or V buffer",
    );
    assert_eq!(cache.len(), 1);
    // The planner refuses a quantized K/V format whose blocks do not fit the head.
    let d = Dims {
        batch: 1,
        q_len: 1,
        kv_len: 8,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 48,
    };
    expect_err(
        Attention::default().plan_kv(&ctx, d, DType::F32, KvFormat::Q8_0),
        "attention",
        is_shape,
        "kv format q8_0 needs head_dim to be a multiple of 32, got head_dim 48",
    );
}

/// The `attention` case op's `kv_format` rules: an unknown format, a float format other than
/// q's dtype, a scale with a format that has none, a scale that is not one value, a head_dim the
/// blocks do not fit are refused (`paged_attention` reads `kv_format` through the same code).
#[test]
fn case_kv_format_rules() {
    use llama_kernels::DType;
    let qkv = |hd: usize| {
        vec![
            ("q", DType::F32, vec![1, 2, hd]),
            ("k", DType::F32, vec![3, 1, hd]),
            ("v", DType::F32, vec![3, 1, hd]),
            ("expected.out", DType::F32, vec![1, 2, hd]),
        ]
    };
    let op = ("op", "attention");
    let e = common::case_error(&qkv(32), &[op, ("kv_format", "q5_1")], 0.5);
    assert!(
        e.contains("metadata kv_format=\"q5_1\" must be one of"),
        "{e}"
    );
    let e = common::case_error(&qkv(32), &[op, ("kv_format", "bf16")], 0.5);
    assert!(
        e.contains("kv_format=bf16 differs from q's dtype f32"),
        "{e}"
    );
    let mut t = qkv(32);
    t.push(("k_scale", DType::F32, vec![]));
    let e = common::case_error(&t, &[op, ("kv_format", "q8_0")], 0.5);
    assert!(
        e.contains("k_scale must be one F32 value, with kv_format fp8_e4m3 only"),
        "{e}"
    );
    let mut t = qkv(32);
    t.push(("v_scale", DType::F32, vec![2]));
    let e = common::case_error(&t, &[op, ("kv_format", "fp8_e4m3")], 0.5);
    assert!(e.contains("v_scale must be one F32 value"), "{e}");
    let e = common::case_error(&qkv(48), &[op, ("kv_format", "q4_0")], 0.5);
    assert!(
        e.contains("kv format q4_0 needs head_dim to be a multiple of 32"),
        "{e}"
    );
}

/// Paged caches of each quantized format: the write pass (`append`) stores exactly the pages
/// the host encoder (`write_pages`, the CPU quantizer) gives for the same rows, in both page
/// layouts; and paged attention over shuffled quantized pages (with noise in the others) equals
/// the f64 reference over the dequantized K/V, for a decode row (DecodeKeys on CPU adapters) and
/// a 9-token prefill (the tile kernel) per batch, for q4_0 and fp8 with scales (whose V rows pick
/// V's scale inside each page).
#[test]
fn paged_caches_quantize_and_attend() {
    use llama_kernels::compare::tolerance;
    use llama_kernels::ops::paged::{BatchSeq, Heads};
    use llama_kernels::reference::attention as reference;
    use llama_kernels::{Attention, DType, KvFormat, PageLayout, PagedBatch};
    const PAGE: usize = 16;
    let ctx = common::ctx();
    let heads = Heads {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 32,
    };
    let (hd, row) = (heads.head_dim, heads.n_kv_heads * heads.head_dim);
    let (ks, vs) = (0.004, 0.02);
    for format in KvFormat::QUANTIZED {
        for layout in [PageLayout::Nhd, PageLayout::Hnd] {
            let mut rng = common::Rng::new(2104);
            let n_pages = 8;
            let new = |ctx| quant_pool(ctx, format, layout, PAGE, n_pages, heads, (ks, vs));
            // Append: two whole-page prefills (pages 5, 2 and 7) written by the GPU, and by the
            // host encoder into a second cache.
            let seqs = vec![
                BatchSeq {
                    q_len: 32,
                    kv_len: 32,
                    pages: vec![5, 2],
                },
                BatchSeq {
                    q_len: 16,
                    kv_len: 16,
                    pages: vec![7],
                },
            ];
            let (k, v) = (rng.vec(48 * row, 1.5), rng.vec(48 * row, 1.5));
            let (gpu, host) = (new(&ctx), new(&ctx));
            let batch = PagedBatch::from_parts(&ctx, PAGE, n_pages, &seqs, heads, None).unwrap();
            let kt = ctx.upload_as(&k, &[48, 2, hd], DType::F32).unwrap();
            let vt = ctx.upload_as(&v, &[48, 2, hd], DType::F32).unwrap();
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            gpu.append(&ctx, &mut enc, &batch, &kt, &vt).unwrap();
            ctx.queue().submit([enc.finish()]);
            host.write_pages(&ctx, &[5, 2, 7], &k, &v).unwrap();
            assert!(
                same_pages(&ctx, &gpu, &host),
                "{format} {layout:?}: appended pages differ from the host's"
            );
            if format == KvFormat::Q8_0 || layout == PageLayout::Hnd {
                continue;
            }
            // Attention: a decode row and a prefill over shuffled pages, noise elsewhere.
            let cache = new(&ctx);
            let all: Vec<u32> = (0..n_pages as u32).collect();
            let per = PAGE * row;
            cache
                .write_pages(
                    &ctx,
                    &all,
                    &rng.vec(n_pages * per, 3.0),
                    &rng.vec(n_pages * per, 3.0),
                )
                .unwrap();
            let seqs = vec![
                BatchSeq {
                    q_len: 1,
                    kv_len: 40,
                    pages: vec![6, 1, 4],
                },
                BatchSeq {
                    q_len: 9,
                    kv_len: 30,
                    pages: vec![3, 0],
                },
            ];
            let mut want = Vec::new();
            let mut q = Vec::new();
            for s in &seqs {
                let n = s.pages.len() * per;
                let (k, v) = (rng.vec(n, 1.5), rng.vec(n, 1.5));
                cache.write_pages(&ctx, &s.pages, &k, &v).unwrap();
                let qs = rng.vec(s.q_len * heads.n_heads * hd, 1.0);
                let kv = s.kv_len * row;
                want.extend(reference::attention(
                    &qs.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                    &quant::round_trip(format, &k[..kv], hd, ks),
                    &quant::round_trip(format, &v[..kv], hd, vs),
                    None,
                    reference::Dims {
                        batch: 1,
                        q_len: s.q_len,
                        kv_len: s.kv_len,
                        n_heads: heads.n_heads,
                        n_kv_heads: heads.n_kv_heads,
                        head_dim: hd,
                    },
                    &Default::default(),
                ));
                q.extend(qs);
            }
            let batch = PagedBatch::from_parts(&ctx, PAGE, n_pages, &seqs, heads, None).unwrap();
            let shape = [10, heads.n_heads, hd];
            let qt = ctx.upload_as(&q, &shape, DType::F32).unwrap();
            let out = common::nan_output(&ctx, &shape, DType::F32);
            Attention::default()
                .run_paged(&ctx, &qt, &cache, &batch, None, &out)
                .unwrap();
            let what = format!("{format} paged attention ({:?})", batch.kinds());
            common::assert_close(&ctx, &out, &want, tolerance(DType::F32), &what);
        }
    }
}

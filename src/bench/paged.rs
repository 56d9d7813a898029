//! Continuous-batching decode over the paged KV cache, beside the contiguous kernel on the same
//! bytes, so the cost of paging is visible.
//!
//! Llama-3-8B's heads (32 query heads over 8 kv heads, head_dim 128) in bf16. Thirty-two
//! sequences, one token each: one at 32768 keys and 31 drawn log-uniformly from 100 to 2048
//! (seeded), their pages handed out page by page in turn, so every sequence's pages are spread
//! over the pool as in a server after some churn. `--quick` uses 8 sequences (one at 8192). The
//! lengths are capped so that the contiguous comparison fits one 128 MiB binding (lavapipe's
//! and WebGPU's default limit), which the paged pool itself need not.
//!
//! Variants: `paged_decode_batch` (NHD pages), `paged_decode_batch_hnd` (HND, the default), both
//! with the adapter's default decode kernel (`DecodeKeys` on CPU adapters, the workgroup-tile
//! kernel elsewhere); `paged_decode_batch_hnd_tile` (HND with the workgroup-tile kernel forced,
//! the only paged design before the CPU path); and over one sequence holding as many keys as the
//! whole batch, `contiguous_decode_same_bytes` (the contiguous tile kernel, `Kind::Decode`) and
//! `contiguous_decode_default_same_bytes` (the contiguous default, `DecodeKeys` on CPU adapters).
//!
//! Per KV format (full run only): `paged_decode_hnd_kv_{format}` for bf16 and every quantized
//! format, a batch of 8 sequences holding 4096 or 32768 keys in all (one half the keys, seven
//! sharing the rest in the proportions of the batch above), HND pages, the default decode kernel,
//! bf16 q and out. The cache is filled through its own append (quantizing), and `bytes` counts
//! the K/V as stored (data and scales), so `%wgsl` is the copy's fraction on the bytes the kernel
//! must read; the bf16 row is each group's `speedup_vs_bf16` base. The contiguous rows of the
//! same comparison are `decode_gqa4_kv_{format}` in `cases.rs`.

use super::cases::upload_pattern;
use super::Case;
use crate::ops::attention::Kind;
use crate::ops::paged::{BatchSeq, Heads, PageLayout, PlanOptions, SeqId};
use crate::{Attention, DType, KvFormat, PageTable, PagedBatch, PagedKvCache, PagedKvConfig};

const PAGE: usize = 16;
const HEADS: Heads = Heads {
    n_heads: 32,
    n_kv_heads: 8,
    head_dim: 128,
};

/// The batch's kv lengths: one long sequence and the rest log-uniform in 100 ..= 2048.
pub fn kv_lens(quick: bool) -> Vec<usize> {
    let (n, long) = if quick { (8, 8192) } else { (32, 32768) };
    let mut s = 0x5EED_u64;
    let mut lens = vec![long];
    for _ in 1..n {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (s >> 11) as f64 / (1u64 << 53) as f64;
        lens.push((100.0 * (2048.0f64 / 100.0).powf(u)).round() as usize);
    }
    lens
}

/// A page table over `lens` whose pages are handed out page by page in turn, so that every
/// sequence's pages are spread over the pool (as in a server after some churn).
fn spread_table(lens: &[usize]) -> crate::Result<(PageTable, Vec<SeqId>)> {
    let n_pages: usize = lens.iter().map(|l| l.div_ceil(PAGE)).sum();
    let mut table = PageTable::new(n_pages, PAGE)?;
    let seqs: Vec<SeqId> = lens.iter().map(|_| table.add_sequence()).collect();
    let mut left = lens.to_vec();
    while left.iter().any(|&l| l > 0) {
        for (s, l) in seqs.iter().zip(left.iter_mut()) {
            let take = (*l).min(PAGE);
            if take > 0 {
                table.append(&[(*s, take)])?;
                *l -= take;
            }
        }
    }
    Ok((table, seqs))
}

/// Every sequence of `table` as a batch part with `q_len(kv_len)` new tokens.
fn batch_parts(
    table: &PageTable,
    seqs: &[SeqId],
    q_len: impl Fn(usize) -> usize,
) -> crate::Result<Vec<BatchSeq>> {
    seqs.iter()
        .map(|&s| {
            let kv_len = table.len(s)?;
            Ok(BatchSeq {
                q_len: q_len(kv_len),
                kv_len,
                pages: table.pages(s)?.to_vec(),
            })
        })
        .collect()
}

/// The per-format batch's kv lengths: 8 sequences, `total` keys in all; one holds half, the
/// other seven share the rest in the proportions of [`kv_lens`]' draws.
pub fn format_lens(total: usize) -> Vec<usize> {
    let draws = &kv_lens(false)[1..8];
    let rest = total - total / 2;
    let sum: usize = draws.iter().sum();
    let mut lens = vec![total / 2];
    lens.extend(draws.iter().map(|d| d * rest / sum));
    let short = total - lens.iter().sum::<usize>();
    lens[0] += short;
    lens
}

/// A batch case's shape fields: its sequences, keys, longest sequence, heads and page size.
fn batch_shape(lens: &[usize]) -> Vec<(&'static str, u64)> {
    vec![
        ("sequences", lens.len() as u64),
        ("kv_tokens", lens.iter().sum::<usize>() as u64),
        ("max_kv_len", lens[0] as u64),
        ("n_heads", HEADS.n_heads as u64),
        ("n_kv_heads", HEADS.n_kv_heads as u64),
        ("head_dim", HEADS.head_dim as u64),
        ("page_size", PAGE as u64),
    ]
}

/// Paged decode over a cache of `format` (see the module docs), `total` keys over 8 sequences.
fn format_case(format: KvFormat, total: usize) -> Case {
    let dtype = DType::BF16;
    let lens = format_lens(total);
    let n = lens.len();
    let Heads {
        n_heads,
        n_kv_heads,
        head_dim,
    } = HEADS;
    let kv_bytes = 2 * format.buffer_bytes(total * n_kv_heads, head_dim) as u64;
    let q_bytes = 2 * (n * n_heads * head_dim * dtype.size()) as u64;
    Case {
        kernel: "attention",
        variant: format!("paged_decode_hnd_kv_{format}"),
        model: "Llama-3-8B",
        dtype,
        shape: batch_shape(&lens),
        bytes: kv_bytes + q_bytes,
        flops: None,
        group: format!("attention/Llama-3-8B/{dtype}/paged{n}x{total}"),
        prepare: Box::new(move |ctx| {
            let (table, seqs) = spread_table(&lens)?;
            let n_pages = table.n_pages();
            let cache = PagedKvCache::new(
                ctx,
                PagedKvConfig {
                    n_pages,
                    page_size: PAGE,
                    n_kv_heads,
                    head_dim,
                    dtype,
                    layout: PageLayout::Hnd,
                    kv_format: Some(format),
                },
            )?;
            {
                // Every sequence's keys written as one prefill step through the cache's append.
                let fill = PagedBatch::from_parts(
                    ctx,
                    PAGE,
                    n_pages,
                    &batch_parts(&table, &seqs, |kv_len| kv_len)?,
                    HEADS,
                    None,
                )?;
                let k = upload_pattern(ctx, &[total, n_kv_heads, head_dim], dtype, 9)?;
                let v = upload_pattern(ctx, &[total, n_kv_heads, head_dim], dtype, 10)?;
                ctx.submit_and_wait("bench", |enc| cache.append(ctx, enc, &fill, &k, &v))?;
            }
            let batch = PagedBatch::from_parts(
                ctx,
                PAGE,
                n_pages,
                &batch_parts(&table, &seqs, |_| 1)?,
                HEADS,
                None,
            )?;
            let q = upload_pattern(ctx, &[n, n_heads, head_dim], dtype, 8)?;
            let out = ctx.empty(&[n, n_heads, head_dim], dtype)?;
            Ok(Box::new(move |ctx, enc| {
                Attention::default().encode_paged(ctx, enc, &q, &cache, &batch, None, &out)
            }))
        }),
    }
}

/// The paged and contiguous cases on the same total bytes, then (full run) the per-format
/// batches.
pub fn cases(quick: bool) -> Vec<Case> {
    let dtype = DType::BF16;
    let lens = kv_lens(quick);
    let total: usize = lens.iter().sum();
    let n = lens.len();
    let Heads {
        n_heads,
        n_kv_heads,
        head_dim,
    } = HEADS;
    let size = dtype.size() as u64;
    let kv_bytes = 2 * (total * n_kv_heads * head_dim) as u64 * size;
    let q_bytes = 2 * (n * n_heads * head_dim) as u64 * size;
    let group = format!("attention/Llama-3-8B/{dtype}/batch{n}x{total}");
    let shape = batch_shape(&lens);
    let mut out = Vec::new();
    for (layout, decode) in [
        (PageLayout::Nhd, None),
        (PageLayout::Hnd, None),
        (PageLayout::Hnd, Some(Kind::Decode)),
    ] {
        let lens = lens.clone();
        out.push(Case {
            kernel: "attention",
            variant: match (layout, decode) {
                (PageLayout::Nhd, _) => "paged_decode_batch".into(),
                (PageLayout::Hnd, None) => "paged_decode_batch_hnd".into(),
                (PageLayout::Hnd, Some(_)) => "paged_decode_batch_hnd_tile".into(),
            },
            model: "Llama-3-8B",
            dtype,
            shape: shape.clone(),
            bytes: kv_bytes + q_bytes,
            flops: None,
            group: group.clone(),
            prepare: Box::new(move |ctx| {
                let (table, seqs) = spread_table(&lens)?;
                let n_pages = table.n_pages();
                let cache = PagedKvCache::new(
                    ctx,
                    PagedKvConfig {
                        n_pages,
                        page_size: PAGE,
                        n_kv_heads,
                        head_dim,
                        dtype,
                        layout,
                        kv_format: None,
                    },
                )?;
                for b in cache.buffers() {
                    let elems = b.size() as usize / dtype.size();
                    ctx.fill(&crate::Tensor::new(b, 0, &[elems], dtype), 0.01)?;
                }
                let parts = batch_parts(&table, &seqs, |_| 1)?;
                let plan = PlanOptions {
                    decode,
                    ..PlanOptions::default()
                };
                let batch = PagedBatch::from_parts_with(ctx, PAGE, n_pages, &parts, HEADS, &plan)?;
                let q = upload_pattern(ctx, &[n, n_heads, head_dim], dtype, 8)?;
                let out = ctx.empty(&[n, n_heads, head_dim], dtype)?;
                Ok(Box::new(move |ctx, enc| {
                    Attention::default().encode_paged(ctx, enc, &q, &cache, &batch, None, &out)
                }))
            }),
        });
    }
    for kind in [Some(Kind::Decode), None] {
        out.push(Case {
            kernel: "attention",
            variant: match kind {
                Some(_) => "contiguous_decode_same_bytes".into(),
                None => "contiguous_decode_default_same_bytes".into(),
            },
            model: "Llama-3-8B",
            dtype,
            shape: shape.clone(),
            bytes: kv_bytes + 2 * (n_heads * head_dim) as u64 * size,
            flops: None,
            group: group.clone(),
            prepare: Box::new(move |ctx| {
                let q = upload_pattern(ctx, &[1, n_heads, head_dim], dtype, 8)?;
                let k = upload_pattern(ctx, &[total, n_kv_heads, head_dim], dtype, 9)?;
                let v = upload_pattern(ctx, &[total, n_kv_heads, head_dim], dtype, 10)?;
                let out = ctx.empty(&[1, n_heads, head_dim], dtype)?;
                let op = Attention {
                    kind,
                    ..Attention::causal()
                };
                Ok(Box::new(move |ctx, enc| {
                    op.encode(ctx, enc, &q, &k, &v, None, &out)
                }))
            }),
        });
    }
    if !quick {
        for total in [4096, 32768] {
            for format in [KvFormat::BF16].into_iter().chain(KvFormat::QUANTIZED) {
                out.push(format_case(format, total));
            }
        }
    }
    out
}

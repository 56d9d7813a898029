//! `paged_attention` cases: variable-length attention over a paged KV cache, as vLLM's and
//! FlashInfer's batch kernels run it.
//!
//! Inputs: `q [total_q, n_heads, head_dim]` (every sequence's queries packed by sequence),
//! `k_pages` and `v_pages` `[n_pages, page_size, n_kv_heads, head_dim]` in token order whatever
//! the layout (the pool; `page_size` is read from this shape), `block_table [n_seqs, max_pages]`
//! (I32 or I64: each sequence's pages in token order; entries past the pages a sequence uses may
//! hold anything, e.g. -1), `cu_seqlens_q [n_seqs + 1]` and `kv_lens [n_seqs]` (I32 or I64),
//! optional `sinks [n_heads]` in any float dtype. The storage dtype is `q`'s; the pages must match
//! it. Output `out`, shaped like `q`.
//!
//! Metadata: `layout` (`nhd`, the default, or `hnd`: how the GPU pool stores a page; the file's
//! pages are token order either way) and the `attention` op's options: `causal` (true), `scale`
//! (1/sqrt(head_dim)), `window` (0 = none), `window_left` / `window_right` (-1 = unbounded),
//! `attention_chunk_size` (0 = none), `softcap` (0 = none), `alibi` (false). There is no
//! `q_offset`: sequence `s`'s query `t` sits at position `kv_lens[s] - q_len + t` (bottom-right
//! alignment), so one batch mixes prefill, chunked prefill and decode sequences; rows before
//! position 0, like every row of a sequence with no keys, see no key and are 0.
//!
//! Masks, each sequence's after the one before (as `Inputs` takes them over a paged batch):
//! optional `mask` (U8 or BOOL `[sum of q_len x kv_len]`, each sequence's `[q_len, kv_len]`
//! flattened, nonzero = visible), `bias` (F32, the same length, or `n_heads` times it with each
//! sequence's `[n_heads, q_len, kv_len]`) and `block_ids` (I32 `[sum of kv_len]`), with the
//! `attention` cases' meaning.
//!
//! Every index a file holds is checked here, before any GPU work, with an error naming the file:
//! the kernel reads pages through the block table, and the reference gathers through it.

use super::{CaseFile, HostDType, HostTensor, OpOutput, OpResult};
use crate::compare::tolerance;
use crate::context::Context;
use crate::error::Result;
use crate::ops::attention::{self, Attention};
use crate::ops::paged::{BatchSeq, Heads, PageLayout, PlanOptions};
use crate::reference::attention as reference;
use crate::reference::quant;
use crate::{KvFormat, PagedBatch, PagedKvCache, PagedKvConfig};

/// An integer input (block table, lengths), as `i64` values.
fn int_tensor<'a>(case: &'a CaseFile, name: &str) -> Result<&'a HostTensor> {
    let t = case.tensor(name)?;
    if !matches!(t.dtype, HostDType::I32 | HostDType::I64) {
        return Err(case.error(format!(
            "{name} is {:?}; it must be an integer tensor (I32 or I64)",
            t.dtype
        )));
    }
    Ok(t)
}

/// The `attention` op's options; `q_offset` does not apply here.
fn options(case: &CaseFile) -> Result<(Attention, Option<f64>, f64)> {
    if let Some(q_offset) = case.meta_opt_i64("q_offset")? {
        return Err(case.error(format!(
            "metadata q_offset={q_offset} does not apply to paged_attention: every sequence \
             aligns bottom-right (query t of a sequence sits at kv_len - q_len + t)"
        )));
    }
    super::attention::options(case)
}

/// The batch the file describes, checked against its own shapes.
struct Parsed {
    heads: Heads,
    n_pages: usize,
    page_size: usize,
    total_q: usize,
    /// Each sequence's first query row.
    q_starts: Vec<usize>,
    /// Each sequence's lengths and the block-table entries it uses.
    seqs: Vec<BatchSeq>,
}

fn check_layout(
    case: &CaseFile,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    bt: &HostTensor,
    cu: &HostTensor,
    kv: &HostTensor,
) -> Result<Parsed> {
    let [total_q, n_heads, head_dim] = q.shape[..] else {
        return Err(case.error(format!(
            "q has shape {:?}; it must be [total_q, n_heads, head_dim]",
            q.shape
        )));
    };
    let [n_pages, page_size, n_kv_heads, kd] = k.shape[..] else {
        return Err(case.error(format!(
            "k_pages has shape {:?}; it must be [n_pages, page_size, n_kv_heads, head_dim]",
            k.shape
        )));
    };
    if v.shape != k.shape {
        return Err(case.error(format!(
            "v_pages has shape {:?} but k_pages has {:?}; they must match",
            v.shape, k.shape
        )));
    }
    if kd != head_dim {
        return Err(case.error(format!(
            "k_pages has head_dim {kd} but q has {head_dim}; they must match"
        )));
    }
    if head_dim == 0 || !head_dim.is_multiple_of(4) || head_dim > attention::MAX_HEAD_DIM {
        return Err(case.error(format!(
            "head_dim {head_dim} must be a multiple of 4 from 4 to {}",
            attention::MAX_HEAD_DIM
        )));
    }
    if n_kv_heads == 0 || n_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(case.error(format!(
            "q's n_heads {n_heads} must be a positive multiple of k_pages' n_kv_heads {n_kv_heads}"
        )));
    }
    if !page_size.is_power_of_two() || !(8..=128).contains(&page_size) {
        return Err(case.error(format!(
            "page_size {page_size} (k_pages' dimension 1) must be a power of two from 8 to 128"
        )));
    }
    if n_pages == 0 {
        return Err(case.error("k_pages holds no page (n_pages 0)"));
    }
    let [n_seqs, max_pages] = bt.shape[..] else {
        return Err(case.error(format!(
            "block_table has shape {:?}; it must be [n_seqs, max_pages]",
            bt.shape
        )));
    };
    if n_seqs == 0 {
        return Err(case.error("block_table has no sequence (n_seqs 0)"));
    }
    if cu.shape != [n_seqs + 1] {
        return Err(case.error(format!(
            "cu_seqlens_q has shape {:?}; block_table's {n_seqs} sequences need [{}]",
            cu.shape,
            n_seqs + 1
        )));
    }
    if kv.shape != [n_seqs] {
        return Err(case.error(format!(
            "kv_lens has shape {:?}; block_table's {n_seqs} sequences need [{n_seqs}]",
            kv.shape
        )));
    }
    let cu = &cu.values;
    if cu[0] != 0.0 {
        return Err(case.error(format!("cu_seqlens_q[0] is {} but must be 0", cu[0] as i64)));
    }
    if let Some(i) = (0..n_seqs).find(|&i| cu[i + 1] < cu[i]) {
        return Err(case.error(format!(
            "cu_seqlens_q must not decrease: cu_seqlens_q[{}] = {} < cu_seqlens_q[{i}] = {}",
            i + 1,
            cu[i + 1] as i64,
            cu[i] as i64
        )));
    }
    if cu[n_seqs] != total_q as f64 {
        return Err(case.error(format!(
            "cu_seqlens_q ends at {} but q holds {total_q} rows (total_q)",
            cu[n_seqs] as i64
        )));
    }
    if total_q == 0 {
        return Err(case.error("the batch has no query (total_q 0): nothing to check"));
    }
    let mut seqs = Vec::with_capacity(n_seqs);
    let mut q_starts = Vec::with_capacity(n_seqs);
    // Integer tensors arrive as f64 (exact to 2^53; larger values are out of range anyway) and
    // are printed back as integers.
    for (s, &kv_len) in kv.values.iter().enumerate() {
        // Page count first: it bounds kv_len by the block table's own size.
        if kv_len < 0.0 || kv_len > (max_pages * page_size) as f64 {
            return Err(case.error(format!(
                "kv_lens[{s}] = {} must be in 0..={} (max_pages {max_pages} x page_size {page_size})",
                kv_len as i64,
                max_pages * page_size
            )));
        }
        let kv_len = kv_len as usize;
        let used = kv_len.div_ceil(page_size);
        let row = &bt.values[s * max_pages..][..used];
        if let Some(j) = row.iter().position(|&p| p < 0.0 || p >= n_pages as f64) {
            return Err(case.error(format!(
                "block_table[{s}][{j}] = {} is outside the pool of {n_pages} pages (k_pages' dimension 0); sequence {s} uses its first {used} entries for kv_len {kv_len}",
                row[j] as i64
            )));
        }
        q_starts.push(cu[s] as usize);
        seqs.push(BatchSeq {
            q_len: (cu[s + 1] - cu[s]) as usize,
            kv_len,
            pages: row.iter().map(|&p| p as u32).collect(),
        });
    }
    Ok(Parsed {
        heads: Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        },
        n_pages,
        page_size,
        total_q,
        q_starts,
        seqs,
    })
}

/// Run a `paged_attention` case on `ctx` and on the reference.
pub fn run(ctx: &Context, case: &CaseFile) -> Result<OpResult> {
    let (op, scale, softcap) = options(case)?;
    // The op checks its options again when it runs; here they are refused before the pool is
    // allocated.
    op.check_options("paged_attention")?;
    let layout = match case.meta_str("layout", "nhd").as_str() {
        "nhd" => PageLayout::Nhd,
        "hnd" => PageLayout::Hnd,
        other => {
            return Err(case.error(format!("metadata layout={other:?}; it must be nhd or hnd")))
        }
    };
    let (q, dtype) = case.storage_tensor("q")?;
    let (k, kd) = case.storage_tensor("k_pages")?;
    let (v, vd) = case.storage_tensor("v_pages")?;
    if kd != dtype || vd != dtype {
        return Err(case.error(format!(
            "k_pages is {kd} and v_pages is {vd} but q is {dtype}; they must match"
        )));
    }
    let bt = int_tensor(case, "block_table")?;
    let cu = int_tensor(case, "cu_seqlens_q")?;
    let kv = int_tensor(case, "kv_lens")?;
    let sinks = case.opt_tensor("sinks")?;
    let b = check_layout(case, q, k, v, bt, cu, kv)?;
    let h = b.heads;
    if let Some(s) = sinks {
        if !s.dtype.is_float() {
            return Err(case.error(format!(
                "sinks is {:?}; it must be a float tensor (F32, F16, BF16 or F64)",
                s.dtype
            )));
        }
        if s.shape != [h.n_heads] {
            return Err(case.error(format!(
                "sinks has shape {:?} but must be [{}] (one per query head)",
                s.shape, h.n_heads
            )));
        }
    }
    // The kernel reads sinks as f32; the reference gets the same values.
    let sinks_f32: Option<Vec<f64>> =
        sinks.map(|s| s.values.iter().map(|&v| v as f32 as f64).collect());

    // K/V pages in a quantized format are encoded by the host quantizer (`write_pages`, bit for
    // bit the write kernel's); the reference reads them dequantized.
    let quantized = super::attention::kv_format(case, dtype)?;
    let (format, k_scale, v_scale) = quantized.unwrap_or((KvFormat::from_dtype(dtype), 1.0, 1.0));
    // The op validates the options and the batch against the device before any GPU work.
    let mut cache = PagedKvCache::new(
        ctx,
        PagedKvConfig {
            n_pages: b.n_pages,
            page_size: b.page_size,
            n_kv_heads: h.n_kv_heads,
            head_dim: h.head_dim,
            dtype,
            kv_format: Some(format),
            layout,
        },
    )?;
    cache.set_scales(k_scale, v_scale)?;
    let (k_vals, v_vals) = match quantized {
        None => (k.values.clone(), v.values.clone()),
        Some(_) => (
            quant::round_trip(format, &k.to_f32(), h.head_dim, k_scale),
            quant::round_trip(format, &v.to_f32(), h.head_dim, v_scale),
        ),
    };
    // Planned with the pool's format, as a caller that knows it plans (PlanOptions::kv_format).
    let plan = PlanOptions {
        kv_format: Some(format),
        ..PlanOptions::default()
    };
    let batch = PagedBatch::from_parts_with(ctx, b.page_size, b.n_pages, &b.seqs, h, &plan)?;
    let all: Vec<u32> = (0..b.n_pages as u32).collect();
    cache.write_pages(ctx, &all, &k.to_f32(), &v.to_f32())?;
    let qt = ctx.upload_as(&q.to_f32(), &q.shape, dtype)?;
    let masks = PagedMasks::read(case, &b.seqs, h.n_heads)?;
    let sinks_host = sinks.map(|s| s.to_f32());
    let set = masks.upload(ctx, &b.seqs, sinks_host.as_deref())?;
    let out = ctx.empty(&q.shape, dtype)?;
    op.run_paged(ctx, &qt, &cache, &batch, set.inputs(), &out)?;

    // The reference: each sequence's K/V gathered from its pages in token order, then the
    // contiguous attention of that sequence alone (q_offset None: bottom-right).
    let row = h.n_kv_heads * h.head_dim;
    let q_row = h.n_heads * h.head_dim;
    let mut cpu = vec![0.0; b.total_q * q_row];
    for (s, (seq, &q0)) in b.seqs.iter().zip(&b.q_starts).enumerate() {
        if seq.q_len == 0 {
            continue;
        }
        let mut ks = Vec::with_capacity(seq.kv_len * row);
        let mut vs = Vec::with_capacity(seq.kv_len * row);
        for j in 0..seq.kv_len {
            let at = (seq.pages[j / b.page_size] as usize * b.page_size + j % b.page_size) * row;
            ks.extend_from_slice(&k_vals[at..at + row]);
            vs.extend_from_slice(&v_vals[at..at + row]);
        }
        let (mask, bias, ids) = masks.of(s);
        let o = reference::attention_masked(
            &q.values[q0 * q_row..(q0 + seq.q_len) * q_row],
            &ks,
            &vs,
            sinks_f32.as_deref(),
            reference::Dims {
                batch: 1,
                q_len: seq.q_len,
                kv_len: seq.kv_len,
                n_heads: h.n_heads,
                n_kv_heads: h.n_kv_heads,
                head_dim: h.head_dim,
            },
            &super::attention::ref_options(&op, None, scale, softcap),
            &reference::Masks {
                mask,
                bias: bias.as_deref(),
                bias_heads: masks.bias_heads,
                block_ids: ids,
            },
        );
        debug_assert_eq!(o.len(), seq.q_len * q_row, "sequence {s}");
        cpu[q0 * q_row..][..o.len()].copy_from_slice(&o);
    }
    let variant = format!(
        "paged {} pages of {} ({:?}), {} sequences, splits {:?}",
        b.n_pages,
        b.page_size,
        layout,
        b.seqs.len(),
        batch.splits()
    );
    Ok(OpResult {
        dtype,
        variant,
        shape: q.shape.clone(),
        tolerance: tolerance(dtype),
        outputs: vec![OpOutput {
            name: "out".into(),
            shape: q.shape.clone(),
            gpu: ctx.read_f32(&out)?,
            cpu,
        }],
    })
}

/// A paged case's masks: every sequence's, one after the other.
struct PagedMasks {
    mask: Option<Vec<bool>>,
    bias: Option<Vec<f32>>,
    bias_heads: bool,
    ids: Option<Vec<i32>>,
    // Where each sequence's mask (pairs), bias and ids start.
    starts: Vec<(usize, usize, usize)>,
}

impl PagedMasks {
    fn read(case: &CaseFile, seqs: &[BatchSeq], n_heads: usize) -> Result<Self> {
        let mut starts = Vec::with_capacity(seqs.len());
        let (mut qk, mut kv) = (0, 0);
        for s in seqs {
            starts.push((qk, 0, kv));
            qk += s.q_len * s.kv_len;
            kv += s.kv_len;
        }
        let mask = match case.opt_tensor("mask")? {
            None => None,
            Some(t) => {
                if !matches!(t.dtype, HostDType::U8 | HostDType::Bool) || t.shape != [qk] {
                    return Err(case.error(format!(
                        "mask is {:?} {:?}; it must be U8 or BOOL [{qk}]: every sequence's [q_len, kv_len] flattened in turn",
                        t.dtype, t.shape
                    )));
                }
                Some(t.values.iter().map(|&x| x != 0.0).collect())
            }
        };
        let (bias, bias_heads) = match case.opt_tensor("bias")? {
            None => (None, false),
            Some(t) => {
                let heads = t.shape == [n_heads * qk];
                if t.dtype != HostDType::F32 || !(heads || t.shape == [qk]) {
                    return Err(case.error(format!(
                        "bias is {:?} {:?}; it must be F32 [{qk}] (every sequence's [q_len, kv_len] in turn) or [{}] ([n_heads, q_len, kv_len] each)",
                        t.dtype,
                        t.shape,
                        n_heads * qk
                    )));
                }
                (Some(t.to_f32()), heads && n_heads > 1)
            }
        };
        let ids = match case.opt_tensor("block_ids")? {
            None => None,
            Some(t) => {
                if t.dtype != HostDType::I32 || t.shape != [kv] {
                    return Err(case.error(format!(
                        "block_ids is {:?} {:?}; it must be I32 [{kv}]: every sequence's [kv_len] in turn",
                        t.dtype, t.shape
                    )));
                }
                Some(t.values.iter().map(|&x| x as i32).collect())
            }
        };
        let per = if bias_heads { n_heads } else { 1 };
        for st in &mut starts {
            st.1 = st.0 * per;
        }
        Ok(PagedMasks {
            mask,
            bias,
            bias_heads,
            ids,
            starts,
        })
    }

    /// The masks (and sinks) in one buffer, each sequence's mask packed from a byte of its own.
    fn upload(
        &self,
        ctx: &Context,
        seqs: &[BatchSeq],
        sinks: Option<&[f32]>,
    ) -> Result<attention::MaskSet> {
        let packed = self.mask.as_ref().map(|m| {
            let parts: Vec<&[bool]> = seqs
                .iter()
                .zip(&self.starts)
                .map(|(s, st)| &m[st.0..st.0 + s.q_len * s.kv_len])
                .collect();
            attention::segment_pack_mask(&parts)
        });
        let shape = [self.bias.as_ref().map_or(0, Vec::len)];
        attention::Inputs::upload_masks(
            ctx,
            sinks,
            packed.as_deref(),
            self.bias.as_deref().map(|b| (b, &shape[..])),
            self.ids.as_deref(),
        )
    }

    /// Sequence `s`'s mask, bias (as f64) and ids.
    #[allow(clippy::type_complexity)]
    fn of(&self, s: usize) -> (Option<&[bool]>, Option<Vec<f64>>, Option<&[i32]>) {
        let st = self.starts[s];
        // Each input's end for this sequence: the next sequence's start, or its own length.
        let next = self.starts.get(s + 1);
        let end = |len: usize, f: fn(&(usize, usize, usize)) -> usize| next.map_or(len, f);
        let mask = self.mask.as_ref().map(|m| &m[st.0..end(m.len(), |n| n.0)]);
        let bias = self.bias.as_ref().map(|b| {
            b[st.1..end(b.len(), |n| n.1)]
                .iter()
                .map(|&x| x as f64)
                .collect()
        });
        let ids = self.ids.as_ref().map(|i| &i[st.2..end(i.len(), |n| n.2)]);
        (mask, bias, ids)
    }
}

//! A paged KV cache read inside the kernels, and variable-length attention over it
//! (vLLM's PagedAttention, FlashInfer's batch kernels).
//!
//! Three objects, as a continuous-batching server uses them:
//! - [`PageTable`] (host, one per model): a pool of `n_pages` pages of `page_size` tokens (a power
//!   of two from 8 to 128) and the sequences that own them. It allocates pages as sequences grow,
//!   frees them, forks a sequence (the child shares every page of the parent; the first write into
//!   a shared, partly filled page copies it first: copy-on-write) and reuses freed pages. A step
//!   that cannot get every page it needs is an `Err` that changes nothing. Rollback for
//!   speculative decoding: [`PageTable::truncate`] drops rejected tokens (pages no one else
//!   shares become free), [`PageTable::keep_path`] keeps the accepted path of a draft tree
//!   (its rows moved into place by [`PagedKvCache::copy_slots`]).
//! - [`PagedKvCache`] (GPU, one per layer): the pages' K and V storage. A page holds K then V,
//!   each `[n_kv_heads, page_size, head_dim]` ([`PageLayout::Hnd`], the default) or
//!   `[page_size, n_kv_heads, head_dim]` ([`PageLayout::Nhd`], FlashInfer's NHD), in f32, f16 or
//!   bf16.
//!   The pool spans up to [`MAX_POOL_BUFFERS`] `wgpu::Buffer`s of at most
//!   `max_storage_buffer_binding_size` bytes each, so the cache can be larger than one binding.
//! - [`PagedBatch`] (GPU, one per step, shared by every layer): which sequences run, with how
//!   many new tokens each (packed, `cu_seqlens`-style), their block-table rows, the cache slot of
//!   every new token, and the attention work plan. Built once per step, as FlashInfer's `plan`.
//!
//! Per layer and step: [`PagedKvCache::copy_pages`] applies the copy-on-write copies the table
//! returned, [`PagedKvCache::append`] / [`PagedKvCache::append_rope`] write the new K/V rows of
//! every sequence into their slots (one dispatch per pool buffer the step touches; with RoPE,
//! K's optional QK-norm, rotation and write into its page are one pass and a second moves V),
//! and [`Attention::encode_paged`] attends every sequence's queries over its pages.
//!
//! Attention (`shaders/attention_paged.wgsl`): queries `[total_q, n_heads, head_dim]` packed by
//! sequence; sequence `s` has `q_len[s]` queries aligned bottom-right to its `kv_len[s]` keys
//! (query `t` at position `kv_len - q_len + t`), so prefill, chunked prefill and decode sequences
//! mix in one call. Every [`Attention`] option applies per sequence (causal, windows, chunks,
//! softcap, sinks, scale, and the masks of [`Inputs`], each sequence's in turn; `q_offset` and
//! `kind` do not apply). K/V are read in place from the pages. The design is the split-KV decode kernel's (a workgroup per (sequence, row block,
//! split, kv head) sharing each K/V tile across the GQA group, a partial per (row, split, lane),
//! a fixed-order merge); the splits follow each sequence's own length, so one 32k sequence beside
//! thirty short ones fills the device without padding the short ones. Rows with a single partial
//! (prefill rows: one split, one lane) write their output directly, so long prefills need no
//! scratch. With the same split configuration the arithmetic is the contiguous kernel's, bit for
//! bit.
//!
//! On CPU adapters the decode sequences' rows (at most
//! [`attention::DECODE_MAX_Q_LEN`](crate::ops::attention::DECODE_MAX_Q_LEN) queries)
//! take the contiguous [`Kind::DecodeKeys`] design instead (`attn_paged_keys`): 8 lanes per
//! (sequence, row block, split, kv head), each owning 16-byte head slices and reading them from
//! each K/V row once straight from its page (a kv head's row is contiguous inside a page in both
//! layouts), serving up to 4 query rows of the GQA group with them; a partial per (row, split),
//! the same merge, or a sequence's only split writes its output. The plan picks it as the contiguous dispatcher does (CPU adapter, and
//! head_dim a multiple of 8 so that rows are 16-byte aligned in every dtype);
//! [`PlanOptions::decode`] forces either kernel. The batch keeps one work-item list per pass (the
//! tile kernel, DecodeKeys with 1, 2 and 4 rows per workgroup), and the call records one dispatch
//! per list that is not empty, then the merge. With the same split count the results equal the
//! contiguous DecodeKeys' bit for bit.
//!
//! On GPUs with `SUBGROUP` the decode rows take the contiguous [`Kind::DecodeSubgroup`] design
//! (`attn_paged_sg`, `shaders/attention_paged_subgroup.wgsl`): flash-decoding with FlashInfer's
//! paged decode layout, the lanes of a subgroup splitting head_dim and reading each K/V row of a
//! page as consecutive 16-byte pieces, one `subgroupAdd` per row for four keys, every K/V row
//! serving the GQA group's query rows; its own work-item lists (1, 2, 4, 8 rows per workgroup),
//! the same merge, and with the same split count the contiguous DecodeSubgroup's results bit for
//! bit. [`PlanOptions::decode`] forces it on any adapter with `SUBGROUP` (tests run it on
//! lavapipe). Quantized pools (q8_0, q4_0, fp8 with head_dim a multiple of 16) are read in
//! place, a whole 16-byte unit of a page's data plane per lane (16 q8_0 or fp8 values, a q4_0
//! block) with its block's scale, dequantized in registers; the batch's row blocks are planned
//! for float pages, and the quantized kernel takes a block's rows 4 (q8_0, fp8) or 2 (q4_0) at a
//! time where its registers hold fewer.
//!
//! On GPUs with `SUBGROUP` the prefill rows (more than `DECODE_MAX_Q_LEN` queries) take the
//! contiguous [`Kind::PrefillSubgroup`] design when rows are 16-byte aligned in every dtype
//! (head_dim a multiple of 8): `attn_paged_prefill_sg`
//! (`shaders/attention_paged_prefill_subgroup.wgsl`), the same step as `attn_prefill_sg`
//! (`shaders/attention_prefill_sg_step.wgsl`) staging each K/V row of a page with 16-byte
//! loads; its own work-item list, direct output for sequences with one split, else the same
//! merge. [`PlanOptions::prefill`] forces it or the tile kernel on any adapter with `SUBGROUP`.
//! Over a quantized pool (q8_0, q4_0, fp8) it stages each K/V tile from the pages in place:
//! whole 16-byte units of a row's data (a q8_0 block's two, a q4_0 block's one, with the block's
//! scale loaded once from the page's scale plane; fp8 16-value units with the tensor scale),
//! dequantized into the f32 tiles, so the scoring is the float pages' (`pf_qstage`,
//! `pool_qrows`). A batch is planned before its pool's format is known: over fp8 pages whose
//! rows are not whole units (head_dim not a multiple of 16) a batch planned with it is refused,
//! with a note to plan `PlanOptions::prefill` as `Kind::Prefill`.
//!
//! Why HND by default, by measurement (BENCHMARKS.md, the bench's `paged_decode_batch_hnd` beside
//! `paged_decode_batch`): every attention workgroup reads one kv head, whose keys of a page are
//! then one contiguous run of `page_size * head_dim` elements instead of `head_dim`-element rows
//! `n_kv_heads * head_dim` apart; HND decode was 5-15% faster on lavapipe. The append, which
//! writes a token's rows of every head, is the one that scatters, and it moves a few rows per step
//! where attention reads the whole cache. NHD is there for pages shared with NHD engines.

mod attention;
mod batch;
mod cache;
mod table;

pub use attention::{
    attention_keys, attention_variant_keys, keys_attention_key, prefill_sg_attention_key,
    prefill_sg_variant_keys, sg_attention_key, sg_variant_keys, ATTENTION_PAGED_PREFILL_SUBGROUP,
    ATTENTION_PAGED_SUBGROUP,
};
pub use batch::{BatchSeq, Heads, PagedBatch, PlanOptions};
pub use cache::{write_key, write_variant_keys, PagedKvCache, PagedKvConfig, WriteParams};
pub use table::{KeptPath, PageCopy, PageTable, SeqId, SlotCopy};

use crate::error::Result;
#[cfg(doc)]
use crate::ops::attention::{Attention, Inputs, Kind};

const OP: &str = "paged";
/// Most `wgpu::Buffer`s one cache's pool spans: the attention kernel binds each, beside q, out,
/// the partials, the plan and `aux` (sinks and masks), within WebGPU's default of 8 storage
/// buffers.
pub const MAX_POOL_BUFFERS: usize = 3;

/// How a page orders its tokens and kv heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PageLayout {
    /// `[page_size, n_kv_heads, head_dim]` for K, then the same for V.
    Nhd,
    /// `[n_kv_heads, page_size, head_dim]` for K, then the same for V.
    #[default]
    Hnd,
}

fn check_page_size(page_size: usize) -> Result<()> {
    crate::ensure!(
        page_size.is_power_of_two() && (8..=128).contains(&page_size),
        Param,
        OP,
        "page_size {page_size} must be a power of two from 8 to 128"
    );
    Ok(())
}

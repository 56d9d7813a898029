//! A paged KV cache read inside the kernels, and variable-length attention over it
//! (vLLM's PagedAttention, FlashInfer's batch kernels).
//!
//! Three objects, as a continuous-batching server uses them:
//! - [`PageTable`] (host, one per model): a pool of `n_pages` pages of `page_size` tokens (a power
//!   of two from 8 to 128) and the sequences that own them. It allocates pages as sequences grow,
//!   frees them, forks a sequence (the child shares every page of the parent; the first write into
//!   a shared, partly filled page copies it first: copy-on-write) and reuses freed pages. A step
//!   that cannot get every page it needs is an `Err` that changes nothing.
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
//! softcap, sinks, scale; `q_offset` and `kind` do not apply). K/V are read in place from the
//! pages. The design is the split-KV decode kernel's (a workgroup per (sequence, row block,
//! split, kv head) sharing each K/V tile across the GQA group, a partial per (row, split, lane),
//! a fixed-order merge); the splits follow each sequence's own length, so one 32k sequence beside
//! thirty short ones fills the device without padding the short ones. Rows with a single partial
//! (prefill rows: one split, one lane) write their output directly, so long prefills need no
//! scratch. With the same split configuration the arithmetic is the contiguous kernel's, bit for
//! bit.
//!
//! On CPU adapters the decode sequences' rows (at most [`attention::DECODE_MAX_Q_LEN`] queries)
//! take the contiguous [`Kind::DecodeKeys`] design instead (`attn_paged_keys`): 8 key lanes per
//! (sequence, row block, split, kv head), each owning whole keys and reading each K/V row once
//! with 16-byte loads straight from its page (a kv head's row is contiguous inside a page in
//! both layouts), serving up to 4 query rows of the GQA group with it; a partial per (row, split,
//! lane), the same merge. The plan picks it as the contiguous dispatcher does (CPU adapter, and
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
//! lavapipe).
//!
//! Why HND by default, by measurement (BENCHMARKS.md, the bench's `paged_decode_batch_hnd` beside
//! `paged_decode_batch`): every attention workgroup reads one kv head, whose keys of a page are
//! then one contiguous run of `page_size * head_dim` elements instead of `head_dim`-element rows
//! `n_kv_heads * head_dim` apart; HND decode was 5-15% faster on lavapipe. The append, which
//! writes a token's rows of every head, is the one that scatters, and it moves a few rows per step
//! where attention reads the whole cache. NHD is there for pages shared with NHD engines.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::ops::attention::{self, Attention, Kind};
use crate::ops::rope::{HeadNorm, PositionIds, Positions, Rope};
use crate::pipeline::{PipelineKey, Shader, Window};
use crate::tensor::{DType, Tensor};

const OP: &str = "paged";
// Workgroup size of the write pass: the contiguous cache's (the key's `WG` comes from there).
use crate::ops::kv_cache::WG;
/// Most `wgpu::Buffer`s one cache's pool spans: the attention kernel binds each, beside q, out,
/// the partials, the plan and the sinks, within WebGPU's default of 8 storage buffers.
pub const MAX_POOL_BUFFERS: usize = 3;
/// Words of a sequence record in the batch plan (mirrors `SEQ_WORDS` in the shader).
const SEQ_WORDS: usize = 12;

/// How a page orders its tokens and kv heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PageLayout {
    /// `[page_size, n_kv_heads, head_dim]` for K, then the same for V.
    Nhd,
    /// `[n_kv_heads, page_size, head_dim]` for K, then the same for V.
    #[default]
    Hnd,
}

/// A sequence of a [`PageTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(pub u32);

/// Copy page `src` to page `dst` (in every layer's cache) before the step's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageCopy {
    /// Source page.
    pub src: u32,
    /// Destination page.
    pub dst: u32,
}

#[derive(Clone, Debug, Default)]
struct SeqPages {
    pages: Vec<u32>,
    len: usize,
}

/// Host-side page allocator and block tables (see the module docs).
#[derive(Clone, Debug)]
pub struct PageTable {
    page_size: usize,
    free: Vec<u32>,
    refs: Vec<u32>,
    seqs: Vec<Option<SeqPages>>,
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

impl PageTable {
    /// A table over `n_pages` pages of `page_size` tokens, all free.
    pub fn new(n_pages: usize, page_size: usize) -> Result<Self> {
        check_page_size(page_size)?;
        crate::ensure!(
            n_pages > 0 && (n_pages as u64) * (page_size as u64) < u32::MAX as u64,
            Param,
            OP,
            "n_pages {n_pages} must be > 0 with n_pages x page_size {page_size} below 2^32 slots"
        );
        Ok(PageTable {
            page_size,
            // Popped from the back: page 0 is handed out first.
            free: (0..n_pages as u32).rev().collect(),
            refs: vec![0; n_pages],
            seqs: Vec::new(),
        })
    }

    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    /// Pages in the pool.
    pub fn n_pages(&self) -> usize {
        self.refs.len()
    }
    /// Pages no sequence holds.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// A new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = match self.seqs.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.seqs.push(None);
                self.seqs.len() - 1
            }
        };
        self.seqs[id] = Some(SeqPages::default());
        SeqId(id as u32)
    }

    fn seq(&self, id: SeqId) -> Result<&SeqPages> {
        self.seqs
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::param(OP, format!("no sequence {}", id.0)))
    }

    /// A new sequence sharing every page (and the length) of `parent`: a shared prompt prefix.
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let s = self.seq(parent)?.clone();
        for &p in &s.pages {
            self.refs[p as usize] += 1;
        }
        let id = self.add_sequence();
        self.seqs[id.0 as usize] = Some(s);
        Ok(id)
    }

    /// Drop a sequence; pages no other sequence shares become free.
    pub fn remove(&mut self, id: SeqId) -> Result<()> {
        let s = self.seq(id)?.clone();
        for &p in s.pages.iter().rev() {
            self.refs[p as usize] -= 1;
            if self.refs[p as usize] == 0 {
                self.free.push(p);
            }
        }
        self.seqs[id.0 as usize] = None;
        Ok(())
    }

    /// Tokens a sequence holds.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        Ok(self.seq(id)?.len)
    }

    /// Whether a sequence holds no tokens.
    pub fn is_empty(&self, id: SeqId) -> Result<bool> {
        Ok(self.seq(id)?.len == 0)
    }

    /// A sequence's pages, in token order (its block-table row).
    pub fn pages(&self, id: SeqId) -> Result<&[u32]> {
        Ok(&self.seq(id)?.pages)
    }

    /// Make room for `n_new` more tokens in each listed sequence (each listed once): allocate the
    /// pages they need, copy-on-write a shared, partly filled last page, and advance the
    /// lengths. Returns the page copies every layer's cache must apply
    /// ([`PagedKvCache::copy_pages`]) before this step's writes. All or nothing: when the pool
    /// cannot supply every page, nothing changes and the error names the first sequence short.
    pub fn append(&mut self, new: &[(SeqId, usize)]) -> Result<Vec<PageCopy>> {
        let ps = self.page_size;
        let mut need = 0usize;
        let mut first_short = None;
        for (i, &(id, n)) in new.iter().enumerate() {
            let s = self.seq(id)?;
            crate::ensure!(
                new[..i].iter().all(|&(o, _)| o != id),
                Param,
                OP,
                "sequence {} listed twice in one step",
                id.0
            );
            crate::ensure!(
                (s.len as u64 + n as u64) * 2 < i32::MAX as u64,
                Limit,
                OP,
                "sequence {} would hold {} tokens, past 2^30 positions",
                id.0,
                s.len + n
            );
            if n == 0 {
                continue;
            }
            let cow = !s.len.is_multiple_of(ps) && self.refs[*s.pages.last().unwrap() as usize] > 1;
            need += (s.len + n).div_ceil(ps) - s.pages.len() + cow as usize;
            if need > self.free.len() && first_short.is_none() {
                first_short = Some(id);
            }
        }
        if let Some(id) = first_short {
            return Err(Error::limit(
                OP,
                format!(
                    "out of pages: the step needs {need} new pages, {} are free (sequence {} is the first that cannot grow)",
                    self.free.len(),
                    id.0
                ),
            ));
        }
        let mut copies = Vec::new();
        for &(id, n) in new {
            if n == 0 {
                continue;
            }
            let mut s = self.seqs[id.0 as usize].take().unwrap();
            if !s.len.is_multiple_of(ps) {
                let last = *s.pages.last().unwrap();
                if self.refs[last as usize] > 1 {
                    let dst = self.free.pop().unwrap();
                    self.refs[last as usize] -= 1;
                    self.refs[dst as usize] = 1;
                    *s.pages.last_mut().unwrap() = dst;
                    copies.push(PageCopy { src: last, dst });
                }
            }
            while s.pages.len() < (s.len + n).div_ceil(ps) {
                let p = self.free.pop().unwrap();
                self.refs[p as usize] = 1;
                s.pages.push(p);
            }
            s.len += n;
            self.seqs[id.0 as usize] = Some(s);
        }
        Ok(copies)
    }
}

/// Head counts and size of the attention a batch is planned for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
}

/// One sequence of a [`PagedBatch`], as [`PagedBatch::from_parts`] takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSeq {
    /// Queries (new tokens) of the sequence in this step.
    pub q_len: usize,
    /// Keys the sequence holds, the new ones included.
    pub kv_len: usize,
    /// Its pages in token order (at least `ceil(kv_len / page_size)`).
    pub pages: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct SeqPlan {
    // Kernel of the sequence's rows: Decode or Prefill (the tile kernel), DecodeKeys or
    // DecodeSubgroup.
    kind: Kind,
    q_start: usize,
    q_len: usize,
    kv_len: usize,
    splits: usize,
    chunk: usize,
    rows_per_wg: usize,
    lanes: usize,
    row_blocks: usize,
    part_base: usize,
}

/// One step's sequences, slots and attention plan on the GPU (see the module docs).
#[derive(Debug)]
pub struct PagedBatch {
    buffer: wgpu::Buffer,
    heads: Heads,
    page_size: usize,
    n_pages: usize,
    seqs: Vec<SeqPlan>,
    total_q: usize,
    // (word offset, count) of the work items of each pass (`item_group`).
    items: [(usize, usize); ITEM_GROUPS],
    // The adapter's smallest subgroup the DecodeSubgroup rows were planned for.
    sg_min: u32,
    parts: usize,
    rowmap_off: usize,
    slots_off: usize,
    pos_off: usize,
    seqs_off: usize,
    // Host copies for the appends: the slot of every new token.
    slots: Vec<u32>,
}

impl PagedBatch {
    /// The batch for this step's `entries` (sequence, new tokens), after
    /// [`PageTable::append`] made room for them: the new tokens are the queries, at positions
    /// `len - n_new .. len` of each sequence.
    pub fn new(
        ctx: &Context,
        table: &PageTable,
        entries: &[(SeqId, usize)],
        heads: Heads,
    ) -> Result<Self> {
        let seqs = entries
            .iter()
            .map(|&(id, n)| {
                let len = table.len(id)?;
                crate::ensure!(
                    n <= len,
                    Shape,
                    OP,
                    "sequence {} has {len} tokens, fewer than its {n} new ones: call PageTable::append first",
                    id.0
                );
                Ok(BatchSeq {
                    q_len: n,
                    kv_len: len,
                    pages: table.pages(id)?.to_vec(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_parts(ctx, table.page_size(), table.n_pages(), &seqs, heads, None)
    }

    /// A batch from explicit lengths and block-table rows (a `check` case, a caller with its own
    /// allocator). `splits` forces every sequence's split count (tests compare it with the
    /// contiguous kernel at the same count); `None` plans by length.
    pub fn from_parts(
        ctx: &Context,
        page_size: usize,
        n_pages: usize,
        seqs: &[BatchSeq],
        heads: Heads,
        splits: Option<u32>,
    ) -> Result<Self> {
        let plan = PlanOptions {
            splits,
            ..PlanOptions::default()
        };
        Self::from_parts_with(ctx, page_size, n_pages, seqs, heads, &plan)
    }

    /// [`PagedBatch::from_parts`] with every planning choice that can be forced (tests,
    /// benchmarks): the split count and the decode kernel.
    pub fn from_parts_with(
        ctx: &Context,
        page_size: usize,
        n_pages: usize,
        seqs: &[BatchSeq],
        heads: Heads,
        plan: &PlanOptions,
    ) -> Result<Self> {
        let splits = plan.splits;
        check_page_size(page_size)?;
        let Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        } = heads;
        crate::ensure!(
            n_kv_heads > 0 && n_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
            Shape,
            OP,
            "n_heads {n_heads} must be a positive multiple of n_kv_heads {n_kv_heads}"
        );
        crate::ensure!(
            head_dim > 0 && head_dim.is_multiple_of(4) && head_dim <= attention::MAX_HEAD_DIM,
            Shape,
            OP,
            "unsupported head_dim {head_dim}: must be a multiple of 4 and <= {}",
            attention::MAX_HEAD_DIM
        );
        if let Some(s) = splits {
            crate::ensure!(
                (1..=65535).contains(&s),
                Param,
                OP,
                "splits must be in 1..=65535, got {s}"
            );
        }
        if let Some(k) = plan.decode {
            crate::ensure!(
                matches!(k, Kind::Decode | Kind::DecodeKeys | Kind::DecodeSubgroup),
                Param,
                OP,
                "decode kernel {k:?} does not apply to paged decode rows (Decode, DecodeKeys or DecodeSubgroup)"
            );
            crate::ensure!(
                k != Kind::DecodeSubgroup || ctx.caps().subgroups,
                Limit,
                OP,
                "the DecodeSubgroup kernel needs a device with the SUBGROUP feature (adapter {:?})",
                ctx.adapter_info().name
            );
        }
        for (i, s) in seqs.iter().enumerate() {
            crate::ensure!(
                s.pages.len() >= s.kv_len.div_ceil(page_size),
                Shape,
                OP,
                "sequence {i}: kv_len {} needs {} pages of {page_size}, its block table has {}",
                s.kv_len,
                s.kv_len.div_ceil(page_size),
                s.pages.len()
            );
            if let Some(&p) = s.pages[..s.kv_len.div_ceil(page_size)]
                .iter()
                .find(|&&p| p as usize >= n_pages)
            {
                return Err(Error::bounds(
                    OP,
                    format!("sequence {i}: page {p} is outside the pool of {n_pages} pages"),
                ));
            }
            crate::ensure!(
                s.kv_len < (i32::MAX / 2) as usize && s.q_len < (i32::MAX / 2) as usize,
                Limit,
                OP,
                "sequence {i}: q_len {} and kv_len {} must fit 30-bit positions",
                s.q_len,
                s.kv_len
            );
        }
        let group = n_heads / n_kv_heads;
        let wg = attention::DECODE_WG as usize;
        // Decode rows (q_len <= DECODE_MAX_Q_LEN) take DecodeKeys on CPU adapters, as the
        // contiguous dispatcher does, when rows are 16-byte aligned in every dtype the cache may
        // hold (head_dim a multiple of 8; page and head offsets are multiples of head_dim).
        // Elsewhere DecodeSubgroup where the device has SUBGROUP, as the contiguous one does.
        let decode_kind = plan.decode.unwrap_or(
            match attention::default_kind(
                ctx.adapter_info().device_type,
                1,
                head_dim.is_multiple_of(8),
            ) {
                Kind::Decode if attention::subgroup_decode_wanted(ctx) => Kind::DecodeSubgroup,
                k => k,
            },
        );
        let hd4 = (head_dim / 4) as u32;
        let sg_min = ctx.adapter_info().subgroup_min_size.max(4);
        let kind_of = |q_len: usize| match q_len > attention::DECODE_MAX_Q_LEN {
            true => Kind::Prefill,
            false => decode_kind,
        };
        // (rows per workgroup, lanes) of a sequence's rows, by kernel.
        let shape_of = |kind: Kind, rows: usize| match kind {
            Kind::DecodeKeys => (
                rows.next_power_of_two().min(attention::KEYS_MAX_ROWS),
                attention::KEYS_WG as usize,
            ),
            Kind::DecodeSubgroup => (
                rows.next_power_of_two()
                    .min(attention::sg_rows_max(hd4, sg_min) as usize),
                attention::sg_shape(hd4, sg_min).1 as usize,
            ),
            _ => {
                let rpw = rows.next_power_of_two().clamp(1, wg);
                (rpw, wg / rpw)
            }
        };
        // Splits: the contiguous decode's rule over the whole batch, per kernel: chunks of at
        // least its minimum, aiming at its number of workgroups over the sequences it runs
        // (DecodeSubgroup splits like the tile kernel, as in the contiguous dispatcher).
        let mut plans = Vec::with_capacity(seqs.len());
        let mut base_keys = [0usize; 2];
        for s in seqs {
            let kind = kind_of(s.q_len);
            let rows = s.q_len * group;
            let (rows_per_wg, _) = shape_of(kind, rows);
            base_keys[(kind == Kind::DecodeKeys) as usize] +=
                rows.div_ceil(rows_per_wg) * n_kv_heads * s.kv_len.max(1);
        }
        let auto_chunk = [
            base_keys[0]
                .div_ceil(attention::DECODE_TARGET_WORKGROUPS)
                .max(attention::DECODE_MIN_CHUNK),
            base_keys[1]
                .div_ceil(attention::KEYS_TARGET_WORKGROUPS)
                .max(attention::KEYS_MIN_CHUNK),
        ];
        let mut q_start = 0;
        let mut n_items = [0usize; ITEM_GROUPS];
        let mut parts = 0usize;
        for s in seqs {
            let kind = kind_of(s.q_len);
            let keys = kind == Kind::DecodeKeys;
            let rows = s.q_len * group;
            let (rows_per_wg, lanes) = shape_of(kind, rows);
            let row_blocks = rows.div_ceil(rows_per_wg);
            let cap = match kind {
                Kind::DecodeKeys => attention::keys_loop_cap_keys(ctx, head_dim, rows_per_wg),
                Kind::DecodeSubgroup => {
                    attention::sg_cap_keys(ctx, hd4, sg_min, rows_per_wg as u32)
                }
                _ => attention::loop_cap_keys(ctx, head_dim),
            };
            let min_splits = cap.map_or(1, |c| s.kv_len.div_ceil(c.max(1))).max(1);
            let (n_splits, chunk) = match splits {
                Some(f) => {
                    let n = (f as usize).max(min_splits);
                    (n, s.kv_len.div_ceil(n).max(1))
                }
                None => {
                    let chunk = auto_chunk[keys as usize].min(s.kv_len.div_ceil(min_splits).max(1));
                    (s.kv_len.div_ceil(chunk).max(1), chunk)
                }
            };
            // The subgroup kernel always leaves its rows to the merge: with one key lane (a
            // smallest subgroup of 64) it gets a second, empty split.
            let n_splits = match kind == Kind::DecodeSubgroup && lanes * n_splits == 1 {
                true => 2,
                false => n_splits,
            };
            plans.push(SeqPlan {
                kind,
                q_start,
                q_len: s.q_len,
                kv_len: s.kv_len,
                splits: n_splits,
                chunk,
                rows_per_wg,
                lanes,
                row_blocks,
                part_base: parts,
            });
            q_start += s.q_len;
            n_items[item_group(kind, rows_per_wg)] += row_blocks * n_splits;
            // Rows with a single partial write the output directly (no partials).
            if n_splits * lanes > 1 {
                parts += n_kv_heads * rows * n_splits * lanes;
            }
        }
        let total_q = q_start;
        // The plan buffer: sequence records, work items, the sequence of every query row, the
        // slot and position of every new token, block-table rows.
        let seqs_off = 0;
        let items_off = seqs_off + SEQ_WORDS * seqs.len();
        let mut groups = [(0usize, 0usize); ITEM_GROUPS];
        let mut at = items_off;
        for (g, &n) in groups.iter_mut().zip(&n_items) {
            *g = (at, n);
            at += 4 * n;
        }
        let rowmap_off = at;
        let slots_off = rowmap_off + total_q;
        let pos_off = slots_off + total_q;
        let bt_off = pos_off + total_q;
        let words_total = bt_off + seqs.iter().map(|s| s.pages.len()).sum::<usize>();
        crate::ensure!(
            (words_total as u64) * 4 <= ctx.limits().max_storage_buffer_binding_size,
            Limit,
            OP,
            "the batch plan of {} bytes exceeds the device's max_storage_buffer_binding_size",
            words_total * 4
        );
        let mut w = vec![0u32; words_total];
        let mut bt = bt_off;
        let mut slots = Vec::with_capacity(total_q);
        for (i, (s, pl)) in seqs.iter().zip(&plans).enumerate() {
            let rec = &mut w[seqs_off + i * SEQ_WORDS..][..SEQ_WORDS];
            rec[0] = pl.q_start as u32;
            rec[1] = pl.q_len as u32;
            rec[2] = pl.kv_len as u32;
            rec[3] = bt as u32;
            rec[4] = pl.splits as u32;
            rec[5] = pl.chunk as u32;
            rec[6] = pl.rows_per_wg as u32;
            rec[7] = pl.lanes as u32;
            rec[8] = pl.row_blocks as u32;
            rec[9] = pl.part_base as u32;
            rec[10] = (pl.kv_len as i32 - pl.q_len as i32) as u32;
            for (k, &p) in s.pages.iter().enumerate() {
                w[bt + k] = p;
            }
            bt += s.pages.len();
            for t in 0..s.q_len {
                w[rowmap_off + pl.q_start + t] = i as u32;
                let pos = s.kv_len as i64 - s.q_len as i64 + t as i64;
                w[pos_off + pl.q_start + t] = pos as i32 as u32;
                let slot = if pos >= 0 {
                    let pos = pos as usize;
                    s.pages[pos / page_size] * page_size as u32 + (pos % page_size) as u32
                } else {
                    u32::MAX
                };
                w[slots_off + pl.q_start + t] = slot;
                slots.push(slot);
            }
        }
        let mut next: Vec<usize> = groups.iter().map(|g| g.0).collect();
        for (i, pl) in plans.iter().enumerate() {
            let it = &mut next[item_group(pl.kind, pl.rows_per_wg)];
            for blk in 0..pl.row_blocks {
                for sp in 0..pl.splits {
                    w[*it] = i as u32;
                    w[*it + 1] = blk as u32;
                    w[*it + 2] = sp as u32;
                    *it += 4;
                }
            }
        }
        let buffer =
            ctx.constant_buffer(OP, wgpu::BufferUsages::STORAGE, bytemuck::cast_slice(&w))?;
        Ok(PagedBatch {
            buffer,
            heads,
            page_size,
            n_pages,
            seqs: plans,
            total_q,
            items: groups,
            sg_min,
            parts,
            rowmap_off,
            slots_off,
            pos_off,
            seqs_off,
            slots,
        })
    }

    /// Query rows (new tokens) of the whole batch.
    pub fn total_q(&self) -> usize {
        self.total_q
    }
    /// Sequences in the batch.
    pub fn n_seqs(&self) -> usize {
        self.seqs.len()
    }
    /// `cu_seqlens_q`: where each sequence's queries start in the packed rows, then `total_q`.
    pub fn cu_seqlens_q(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.seqs.iter().map(|s| s.q_start).collect();
        v.push(self.total_q);
        v
    }
    /// Each sequence's kv length.
    pub fn kv_lens(&self) -> Vec<usize> {
        self.seqs.iter().map(|s| s.kv_len).collect()
    }
    /// Split-KV partial results the attention call stores (`head_dim + 2` f32 each, in the
    /// context's scratch buffer); rows with one split and one lane (prefill rows) store none.
    pub fn partials(&self) -> usize {
        self.parts
    }
    /// Each sequence's split count (the attention work plan).
    pub fn splits(&self) -> Vec<usize> {
        self.seqs.iter().map(|s| s.splits).collect()
    }
    /// The kernel of each sequence's rows: [`Kind::Prefill`] for more than
    /// [`attention::DECODE_MAX_Q_LEN`] queries (the workgroup-tile kernel), else the decode
    /// kernel planned ([`Kind::Decode`], the same tile kernel, [`Kind::DecodeKeys`] or
    /// [`Kind::DecodeSubgroup`]).
    pub fn kinds(&self) -> Vec<Kind> {
        self.seqs.iter().map(|s| s.kind).collect()
    }
    /// The position of every new token, `[total_q]` i32, for RoPE.
    pub fn positions(&self) -> PositionIds {
        PositionIds::new(&self.buffer, self.pos_off, &[self.total_q])
    }
    fn plan_window(&self) -> wgpu::BindingResource<'_> {
        self.buffer.as_entire_binding()
    }
}

/// Planning choices of a [`PagedBatch`] that tests and benchmarks force
/// ([`PagedBatch::from_parts_with`]); `Default` plans by length and adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Every sequence's split count (honoured except where the adapter's loop cap needs more).
    pub splits: Option<u32>,
    /// The kernel of decode rows (sequences with at most [`attention::DECODE_MAX_Q_LEN`]
    /// queries): [`Kind::Decode`] (the workgroup-tile kernel), [`Kind::DecodeKeys`] or
    /// [`Kind::DecodeSubgroup`] (needs `SUBGROUP`); `None` picks as the contiguous dispatcher
    /// does (DecodeKeys on CPU adapters when head_dim is a multiple of 8, DecodeSubgroup on
    /// other adapters with `SUBGROUP`, Decode otherwise).
    pub decode: Option<Kind>,
}

/// Work-item lists (passes) a batch may have.
const ITEM_GROUPS: usize = 8;

/// Which work-item list (and pipeline) a sequence's rows use: 0 for the tile kernel, 1, 2, 3
/// for DecodeKeys with 1, 2, 4 rows per workgroup, 4 .. 7 for DecodeSubgroup with 1, 2, 4, 8.
fn item_group(kind: Kind, rows_per_wg: usize) -> usize {
    match kind {
        Kind::DecodeKeys => 1 + rows_per_wg.trailing_zeros() as usize,
        Kind::DecodeSubgroup => 4 + rows_per_wg.trailing_zeros() as usize,
        _ => 0,
    }
}

/// The pipeline key of the DecodeSubgroup pass over pages with `rs` rows per workgroup, for
/// subgroups of at least `sg_min` lanes.
pub fn sg_attention_key(dtype: DType, hd4: u32, rs: u32, sg_min: u32) -> PipelineKey {
    let (slots, nsg) = attention::sg_shape(hd4, sg_min);
    PipelineKey::new(
        ATTENTION_PAGED_SUBGROUP,
        "attn_paged_sg",
        vec![
            ("DTYPE", dtype.shader_code()),
            ("WG", attention::SG_WG),
            ("TILE_V4", attention::tile_v4_for(16384)),
            ("HD4", hd4),
            ("RS", rs),
            ("SLOTS", slots),
            ("NSG", nsg),
        ],
    )
}

/// `shaders/attention_paged.wgsl` with the subgroup decode step and its paged entry point
/// (`shaders/attention_subgroup.wgsl`, `shaders/attention_paged_subgroup.wgsl`): a module of its
/// own, because a module that uses subgroup operations anywhere fails validation on devices
/// without `SUBGROUP`.
pub const ATTENTION_PAGED_SUBGROUP: &Shader = &Shader {
    name: "attention_paged_subgroup.wgsl",
    parts: &[
        crate::pipeline::COMMON_WGSL,
        crate::pipeline::ATTENTION_COMMON_WGSL,
        crate::pipeline::ATTENTION_SPLIT_WGSL,
        crate::pipeline::ATTENTION_KEYS_WGSL,
        include_str!("../../shaders/attention_paged.wgsl"),
        crate::pipeline::ATTENTION_SUBGROUP_WGSL,
        include_str!("../../shaders/attention_paged_subgroup.wgsl"),
    ],
    variants: sg_variant_keys,
};

/// Every pipeline key of `attn_paged_sg`: every dtype at the head_dims of real models, for the
/// smallest subgroups of lavapipe and Intel (8) and of NVIDIA and AMD RDNA (32), every row count
/// the planner can pick.
pub fn sg_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for dtype in DType::ALL {
        for hd in [64u32, 80, 96, 128, 256] {
            for sg_min in [8, 32] {
                for rs in [1, 2, 4, 8] {
                    if rs <= attention::sg_rows_max(hd / 4, sg_min) {
                        keys.push(sg_attention_key(dtype, hd / 4, rs, sg_min));
                    }
                }
            }
        }
    }
    keys
}

/// The pipeline key of the paged write (the constants of the contiguous cache's append).
pub fn write_key(src: DType, dst: DType, write_k: bool) -> PipelineKey {
    crate::ops::kv_cache::write_key(Shader::PAGED_KV, "paged_write", src, dst, write_k)
}

/// Every pipeline key of `shaders/paged_kv.wgsl`.
pub fn write_variant_keys() -> Vec<PipelineKey> {
    crate::ops::kv_cache::write_variant_keys(Shader::PAGED_KV, "paged_write")
}

/// The pipeline keys of paged attention: partial and merge passes.
pub fn attention_keys(dtype: DType, tile_v4: u32, hd4: u32) -> [PipelineKey; 2] {
    let c = vec![
        ("DTYPE", dtype.shader_code()),
        ("WG", attention::DECODE_WG),
        ("TILE_V4", tile_v4),
        ("HD4", hd4),
    ];
    [
        PipelineKey::new(Shader::ATTENTION_PAGED, "attn_paged_partial", c.clone()),
        PipelineKey::new(Shader::ATTENTION_PAGED, "attn_paged_merge", c),
    ]
}

/// The pipeline key of the DecodeKeys pass over pages with `kr` rows per workgroup (the tile
/// size does not shape its code; it keeps the smallest).
pub fn keys_attention_key(dtype: DType, hd4: u32, kr: u32) -> PipelineKey {
    PipelineKey::new(
        Shader::ATTENTION_PAGED,
        "attn_paged_keys",
        vec![
            ("DTYPE", dtype.shader_code()),
            ("WG", attention::KEYS_WG),
            ("TILE_V4", attention::tile_v4_for(16384)),
            ("HD4", hd4),
            ("KR", kr),
        ],
    )
}

/// Every pipeline key of `shaders/attention_paged.wgsl` (for the portability tests): every dtype
/// and tile size at the head_dims of real models, and the DecodeKeys pass at each row count.
pub fn attention_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for dtype in DType::ALL {
        for hd in [64u32, 80, 96, 128, 256] {
            for limit in [16384, 32768] {
                keys.extend(attention_keys(dtype, attention::tile_v4_for(limit), hd / 4));
            }
            for kr in [1, 2, 4] {
                keys.push(keys_attention_key(dtype, hd / 4, kr));
            }
        }
    }
    keys
}

/// Uniform parameters of `shaders/paged_kv.wgsl` (80 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct WriteParams {
    /// New tokens.
    pub n_tokens: u32,
    /// Key/value heads.
    pub n_kv_heads: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// Tokens per page.
    pub page_size: u32,
    /// Pages per pool buffer.
    pub pages_per_buffer: u32,
    /// The pool buffer this dispatch writes.
    pub buffer: u32,
    /// Elements per page (K and V).
    pub page_elems: u32,
    /// Element offset of V in a page.
    pub v_in_page: u32,
    /// Token stride inside a page.
    pub tok_stride: u32,
    /// Head stride inside a page.
    pub head_stride: u32,
    /// Word offset of token 0's slot in the plan buffer.
    pub slot_off: u32,
    /// Padding.
    pub _pad0: u32,
    /// k_new: element offset, token and head strides.
    pub k: [u32; 3],
    /// Padding.
    pub _pad1: u32,
    /// v_new: element offset, token and head strides.
    pub v: [u32; 3],
    /// Padding.
    pub _pad2: u32,
}

/// K and V pages of one layer (see the module docs).
#[derive(Debug)]
pub struct PagedKvCache {
    buffers: Vec<wgpu::Buffer>,
    n_pages: usize,
    page_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    layout: PageLayout,
    pages_per_buffer: usize,
}

impl PagedKvCache {
    /// Allocate `n_pages` zero-filled pages.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &Context,
        n_pages: usize,
        page_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        layout: PageLayout,
    ) -> Result<Self> {
        check_page_size(page_size)?;
        crate::ensure!(
            n_pages > 0 && n_kv_heads > 0,
            Shape,
            OP,
            "n_pages {n_pages} and n_kv_heads {n_kv_heads} must be > 0"
        );
        crate::ensure!(
            head_dim > 0 && head_dim.is_multiple_of(4) && head_dim <= attention::MAX_HEAD_DIM,
            Shape,
            OP,
            "unsupported head_dim {head_dim}: must be a multiple of 4 and <= {}",
            attention::MAX_HEAD_DIM
        );
        let page_elems = 2 * page_size as u64 * n_kv_heads as u64 * head_dim as u64;
        let page_bytes = page_elems * dtype.size() as u64;
        let lim = ctx.limits();
        let per_buffer = lim
            .max_storage_buffer_binding_size
            .min(lim.max_buffer_size)
            .min(u32::MAX as u64 / 2 * dtype.size() as u64);
        let pages_per_buffer = (per_buffer / page_bytes) as usize;
        crate::ensure!(
            pages_per_buffer > 0,
            Limit,
            OP,
            "one page of {page_bytes} bytes exceeds the device's max_storage_buffer_binding_size {}",
            lim.max_storage_buffer_binding_size
        );
        let n_buffers = n_pages.div_ceil(pages_per_buffer);
        crate::ensure!(
            n_buffers <= MAX_POOL_BUFFERS,
            Limit,
            OP,
            "{n_pages} pages of {page_bytes} bytes need {n_buffers} buffers of at most {} pages ({} bytes per binding); the attention kernel binds at most {MAX_POOL_BUFFERS}",
            pages_per_buffer,
            lim.max_storage_buffer_binding_size
        );
        crate::ensure!(
            (n_pages as u64) * (page_size as u64) < u32::MAX as u64,
            Limit,
            OP,
            "{n_pages} pages of {page_size} tokens exceed 2^32 slots"
        );
        let mut buffers = Vec::with_capacity(n_buffers);
        for b in 0..n_buffers {
            let pages = (n_pages - b * pages_per_buffer).min(pages_per_buffer);
            buffers.push(ctx.create_buffer(OP, pages as u64 * page_bytes)?);
        }
        Ok(PagedKvCache {
            buffers,
            n_pages,
            page_size,
            n_kv_heads,
            head_dim,
            dtype,
            layout,
            pages_per_buffer,
        })
    }

    /// Pages in the pool.
    pub fn n_pages(&self) -> usize {
        self.n_pages
    }
    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    /// Key/value heads.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    /// Elements per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Storage dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Page layout.
    pub fn layout(&self) -> PageLayout {
        self.layout
    }
    /// The pool's buffers (page `p` lives in buffer `p / pages_per_buffer`).
    pub fn buffers(&self) -> &[wgpu::Buffer] {
        &self.buffers
    }
    /// Pages per pool buffer.
    pub fn pages_per_buffer(&self) -> usize {
        self.pages_per_buffer
    }
    fn page_elems(&self) -> usize {
        2 * self.page_size * self.n_kv_heads * self.head_dim
    }
    /// (token stride, head stride) inside a page, in elements.
    pub fn strides(&self) -> (usize, usize) {
        match self.layout {
            PageLayout::Nhd => (self.n_kv_heads * self.head_dim, self.head_dim),
            PageLayout::Hnd => (self.head_dim, self.page_size * self.head_dim),
        }
    }
    /// Element offset, inside its buffer, of the K row of `slot` (page * page_size + token) and
    /// kv head `h`; V is `page_elems / 2` further. Returns (buffer, offset).
    pub fn slot_offset(&self, slot: usize, h: usize) -> (usize, usize) {
        let page = slot / self.page_size;
        let (ts, hs) = self.strides();
        (
            page / self.pages_per_buffer,
            (page % self.pages_per_buffer) * self.page_elems()
                + (slot % self.page_size) * ts
                + h * hs,
        )
    }

    fn check_table(&self, page_size: usize, n_pages: usize) -> Result<()> {
        crate::ensure!(
            page_size == self.page_size && n_pages <= self.n_pages,
            Shape,
            OP,
            "the batch has pages of {page_size} tokens over a pool of {n_pages}; this cache has {} over {}",
            self.page_size,
            self.n_pages
        );
        Ok(())
    }

    /// Record the copy-on-write page copies of a step ([`PageTable::append`]'s result). A copy
    /// within one pool buffer goes through the context's scratch buffer (WebGPU copies never
    /// share a source and destination buffer).
    pub fn copy_pages(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        copies: &[PageCopy],
    ) -> Result<()> {
        let bytes = (self.page_elems() * self.dtype.size()) as u64;
        for c in copies {
            for p in [c.src, c.dst] {
                crate::ensure!(
                    (p as usize) < self.n_pages,
                    Bounds,
                    OP,
                    "page {p} is outside the pool of {} pages",
                    self.n_pages
                );
            }
        }
        if copies.is_empty() {
            return Ok(());
        }
        let staging = ctx.scratch(OP, bytes * copies.len() as u64)?;
        ctx.scoped(OP, || {
            for (i, c) in copies.iter().enumerate() {
                let (sb, so) = self.page_location(c.src);
                let (db, dof) = self.page_location(c.dst);
                let (src, dst) = (&self.buffers[sb], &self.buffers[db]);
                if sb == db {
                    let at = i as u64 * bytes;
                    encoder.copy_buffer_to_buffer(src, so * bytes, &staging, at, bytes);
                    encoder.copy_buffer_to_buffer(&staging, at, dst, dof * bytes, bytes);
                } else {
                    encoder.copy_buffer_to_buffer(src, so * bytes, dst, dof * bytes, bytes);
                }
            }
        })
    }

    fn page_location(&self, page: u32) -> (usize, u64) {
        let p = page as usize;
        (
            p / self.pages_per_buffer,
            (p % self.pages_per_buffer) as u64,
        )
    }

    /// Upload whole pages from the host (tests, `check`, restoring a saved cache): `k` and `v`
    /// hold `[pages.len(), page_size, n_kv_heads, head_dim]` values in token order, whatever
    /// the layout.
    pub fn write_pages(&self, ctx: &Context, pages: &[u32], k: &[f32], v: &[f32]) -> Result<()> {
        let per = self.page_size * self.n_kv_heads * self.head_dim;
        crate::ensure!(
            k.len() == pages.len() * per && v.len() == k.len(),
            Shape,
            OP,
            "write_pages: k has {} and v {} values; {} pages need {}",
            k.len(),
            v.len(),
            pages.len(),
            pages.len() * per
        );
        let (ts, hs) = self.strides();
        let hd = self.head_dim;
        for (i, &p) in pages.iter().enumerate() {
            crate::ensure!(
                (p as usize) < self.n_pages,
                Bounds,
                OP,
                "page {p} is outside the pool of {} pages",
                self.n_pages
            );
            let mut page = vec![0f32; self.page_elems()];
            for t in 0..self.page_size {
                for h in 0..self.n_kv_heads {
                    let src = ((i * self.page_size + t) * self.n_kv_heads + h) * hd;
                    let dst = t * ts + h * hs;
                    page[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    page[per + dst..per + dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
            let (b, off) = self.page_location(p);
            let bytes = crate::tensor::encode_f32(&page, self.dtype);
            ctx.write_bytes(&self.buffers[b], off * bytes.len() as u64, &bytes)?;
        }
        Ok(())
    }

    /// The pool buffers the batch's new tokens land in, ascending.
    fn touched_buffers(&self, batch: &PagedBatch) -> Vec<usize> {
        let mut touched: Vec<usize> = batch
            .slots
            .iter()
            .map(|&s| s as usize / self.page_size / self.pages_per_buffer)
            .collect();
        touched.sort_unstable();
        touched.dedup();
        touched
    }

    fn check_new(&self, batch: &PagedBatch, x: &Tensor, name: &str) -> Result<()> {
        x.validate(OP, name)?;
        crate::ensure!(
            x.shape() == [batch.total_q, self.n_kv_heads, self.head_dim],
            Shape,
            OP,
            "{name} has shape {:?}; the batch's new tokens need [{}, {}, {}]",
            x.shape(),
            batch.total_q,
            self.n_kv_heads,
            self.head_dim
        );
        crate::ensure!(
            x.strides()[2] == 1,
            Shape,
            OP,
            "{name}'s last dimension must be contiguous"
        );
        Ok(())
    }

    fn validate_append(&self, batch: &PagedBatch, k_new: &Tensor, v_new: &Tensor) -> Result<()> {
        self.check_table(batch.page_size, batch.n_pages)?;
        self.check_new(batch, k_new, "k_new")?;
        self.check_new(batch, v_new, "v_new")?;
        crate::ensure!(
            k_new.dtype() == v_new.dtype(),
            DType,
            OP,
            "k_new is {} but v_new is {}",
            k_new.dtype(),
            v_new.dtype()
        );
        if let Some(i) = batch.slots.iter().position(|&s| s == u32::MAX) {
            return Err(Error::shape(
                OP,
                format!(
                    "new token {i} sits before position 0 (q_len > kv_len): it has no cache slot"
                ),
            ));
        }
        for b in &self.buffers {
            crate::ensure!(
                k_new.buffer() != b && v_new.buffer() != b,
                Alias,
                OP,
                "k_new / v_new live in the cache's own pool buffer"
            );
        }
        Ok(())
    }

    /// Record the write of every sequence's new K and V rows (`[total_q, n_kv_heads, head_dim]`,
    /// packed like the batch, any dtype, any outer strides) into their cache slots.
    pub fn append(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        batch: &PagedBatch,
        k_new: &Tensor,
        v_new: &Tensor,
    ) -> Result<()> {
        self.validate_append(batch, k_new, v_new)?;
        ctx.scoped(OP, || {
            self.record_write(ctx, encoder, batch, k_new, v_new, true)
        })?
    }

    /// [`PagedKvCache::append`] with `rope` applied to K, after the per-head `k_norm` when given
    /// (QK-norm: Qwen3, Gemma 3). Positions: `None` = each new token's cache position (the
    /// batch's [`PagedBatch::positions`]; a scaling that needs the sequence length needs
    /// `rope.seq_len`), or the caller's ids: `[3, total_new]` for multimodal RoPE (Qwen2-VL's
    /// time, height and width rows, [`Rope::with_mrope_section`]) or `[total_new]`; the rows
    /// land in the batch's slots either way. When `k_new` has the cache's dtype, K's norm,
    /// rotation and write into its page are one pass ([`Rope::encode_rows`] through a row map of
    /// the slots, one dispatch per pool buffer the batch touches) and the write pass moves only V;
    /// otherwise RoPE writes K into a scratch view and the write pass converts both.
    #[allow(clippy::too_many_arguments)]
    pub fn append_rope(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        batch: &PagedBatch,
        k_new: &Tensor,
        v_new: &Tensor,
        rope: &Rope,
        k_norm: Option<&HeadNorm>,
        positions: Option<&PositionIds>,
    ) -> Result<()> {
        let own = batch.positions();
        let pos = positions.unwrap_or(&own);
        self.validate_append(batch, k_new, v_new)?;
        if batch.total_q == 0 {
            return Ok(());
        }
        if k_new.dtype() == self.dtype {
            // Row maps first (content-addressed, so every layer of a step shares them).
            let (_, hs) = self.strides();
            let mut maps = Vec::new();
            for b in self.touched_buffers(batch) {
                let rows: Vec<u32> = batch
                    .slots
                    .iter()
                    .map(|&s| {
                        let (buf, off) = self.slot_offset(s as usize, 0);
                        if buf == b {
                            off as u32
                        } else {
                            u32::MAX
                        }
                    })
                    .collect();
                let map = ctx.constant_buffer(
                    OP,
                    wgpu::BufferUsages::STORAGE,
                    bytemuck::cast_slice(&rows),
                )?;
                maps.push((b, map));
            }
            return ctx.scoped(OP, || -> Result<()> {
                for (b, map) in &maps {
                    rope.encode_rows(
                        ctx,
                        encoder,
                        k_new,
                        &self.buffers[*b],
                        map,
                        0,
                        hs,
                        Positions::Ids(pos),
                        k_norm,
                    )?;
                }
                self.record_write(ctx, encoder, batch, k_new, v_new, false)
            })?;
        }
        let bytes = (batch.total_q * self.n_kv_heads * self.head_dim * k_new.dtype().size()) as u64;
        // The context's scratch: attention's partials later in the same encoder reuse it after
        // the write pass has read it (wgpu orders the passes).
        let tmp_buf = ctx.scratch(OP, bytes)?;
        let tmp = Tensor::new(&tmp_buf, 0, k_new.shape(), k_new.dtype());
        rope.variant(ctx, k_new, None, Some(&tmp), Positions::Ids(pos))?;
        ctx.scoped(OP, || -> Result<()> {
            match k_norm {
                Some(n) => {
                    rope.encode_norm_to(ctx, encoder, k_new, &tmp, n, Positions::Ids(pos))?
                }
                None => rope.encode_to(ctx, encoder, k_new, &tmp, Positions::Ids(pos))?,
            }
            self.record_write(ctx, encoder, batch, &tmp, v_new, true)
        })?
    }

    fn record_write(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        batch: &PagedBatch,
        k_new: &Tensor,
        v_new: &Tensor,
        write_k: bool,
    ) -> Result<()> {
        if batch.total_q == 0 {
            return Ok(());
        }
        let kw = Window::covering(ctx, OP, &[k_new])?;
        let vw = Window::covering(ctx, OP, &[v_new])?;
        let key = write_key(k_new.dtype(), self.dtype, write_k);
        let (ts, hs) = self.strides();
        let ks = k_new.strides();
        let vs = v_new.strides();
        let u = |x: usize| -> Result<u32> {
            u32::try_from(x).map_err(|_| Error::limit(OP, format!("stride {x} exceeds 32 bits")))
        };
        let threads = (batch.total_q * self.n_kv_heads * self.head_dim / 4) as u64;
        for b in self.touched_buffers(batch) {
            let params = WriteParams {
                n_tokens: batch.total_q as u32,
                n_kv_heads: self.n_kv_heads as u32,
                head_dim: self.head_dim as u32,
                page_size: self.page_size as u32,
                pages_per_buffer: self.pages_per_buffer as u32,
                buffer: b as u32,
                page_elems: self.page_elems() as u32,
                v_in_page: (self.page_elems() / 2) as u32,
                tok_stride: ts as u32,
                head_stride: hs as u32,
                slot_off: batch.slots_off as u32,
                k: [kw.elem_offset(k_new), u(ks[0])?, u(ks[1])?],
                v: [vw.elem_offset(v_new), u(vs[0])?, u(vs[1])?],
                ..Default::default()
            };
            ctx.encode_kernel(
                OP,
                enc,
                &key,
                &params,
                &[
                    ("k_src", kw.resource()),
                    ("v_src", vw.resource()),
                    ("pool", self.buffers[b].as_entire_binding()),
                    ("slots", batch.plan_window()),
                ],
                threads.div_ceil(WG as u64),
            )?;
        }
        Ok(())
    }
}

impl Attention {
    /// Record attention of every sequence of `batch` over its pages: `q` and `out` are
    /// `[total_q, n_heads, head_dim]` packed like the batch (any outer strides), in the cache's
    /// dtype; `sinks` `[n_heads]` f32 as in [`Attention::encode`]. `q_offset` and `kind` must
    /// be unset (every sequence is aligned bottom-right; there is one kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_paged(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        cache: &PagedKvCache,
        batch: &PagedBatch,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<()> {
        let op = "paged_attention";
        let c = self.validate_paged(ctx, q, cache, batch, sinks, out)?;
        ctx.scoped(op, || {
            self.record_paged(ctx, encoder, &c, q, cache, batch, sinks, out)
        })?
    }

    /// [`Attention::encode_paged`], submitted and waited for.
    #[allow(clippy::too_many_arguments)]
    pub fn run_paged(
        &self,
        ctx: &Context,
        q: &Tensor,
        cache: &PagedKvCache,
        batch: &PagedBatch,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<()> {
        let c = self.validate_paged(ctx, q, cache, batch, sinks, out)?;
        ctx.submit_and_wait("paged_attention", |enc| {
            self.record_paged(ctx, enc, &c, q, cache, batch, sinks, out)
        })
    }

    fn validate_paged(
        &self,
        ctx: &Context,
        q: &Tensor,
        cache: &PagedKvCache,
        batch: &PagedBatch,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<PagedChecked> {
        let op = "paged_attention";
        q.validate(op, "q")?;
        out.validate_written(op, "out")?;
        cache.check_table(batch.page_size, batch.n_pages)?;
        let h = batch.heads;
        crate::ensure!(
            h.n_kv_heads == cache.n_kv_heads && h.head_dim == cache.head_dim,
            Shape,
            op,
            "the batch was planned for {} kv heads of {}; the cache has {} of {}",
            h.n_kv_heads,
            h.head_dim,
            cache.n_kv_heads,
            cache.head_dim
        );
        let want = [batch.total_q, h.n_heads, h.head_dim];
        for (name, t) in [("q", q), ("out", out)] {
            crate::ensure!(
                t.shape() == want,
                Shape,
                op,
                "{name} has shape {:?}; the batch needs [total_q, n_heads, head_dim] = {want:?}",
                t.shape()
            );
            t.expect_dtype(op, name, cache.dtype)?;
            crate::ensure!(
                t.strides()[2] == 1,
                Shape,
                op,
                "{name}'s last dimension must be contiguous"
            );
        }
        crate::ensure!(
            self.q_offset.is_none() && self.kind.is_none() && self.splits.is_none(),
            Param,
            op,
            "q_offset, kind and splits do not apply to paged attention (sequences align bottom-right; PagedBatch::from_parts forces splits)"
        );
        attention::check_sinks(op, sinks, h.n_heads)?;
        for (name, t) in [("q", Some(q)), ("sinks", sinks)] {
            if let Some(t) = t {
                crate::ensure!(
                    t.buffer() != out.buffer(),
                    Alias,
                    op,
                    "out shares a buffer with {name}"
                );
            }
        }
        for b in &cache.buffers {
            crate::ensure!(
                out.buffer() != b,
                Alias,
                op,
                "out lives in the cache's own pool buffer"
            );
        }
        // The options' own rules (scale, softcap, windows, chunk) are the contiguous op's.
        self.check_options(op)?;
        let limit = ctx.limits().max_compute_workgroup_storage_size;
        let tile_v4 = attention::tile_v4_for(limit);
        let hd4 = (h.head_dim / 4) as u32;
        crate::ensure!(
            tile_v4 >= hd4 && 2 * tile_v4 * 16 <= limit,
            Limit,
            op,
            "head_dim {} needs {} bytes of workgroup memory for one key of K and V, the device has {limit}",
            h.head_dim,
            2 * hd4 * 16
        );
        let part_bytes = batch.parts as u64 * (h.head_dim as u64 + 2) * 4;
        crate::ensure!(
            part_bytes <= ctx.limits().max_storage_buffer_binding_size,
            Limit,
            op,
            "split-KV scratch of {part_bytes} bytes exceeds the device's max_storage_buffer_binding_size"
        );
        // Window bounds: clamped against the longest sequence; q_offset >= -q_len.
        let max_kv = batch.seqs.iter().map(|s| s.kv_len).max().unwrap_or(0);
        let min_off = batch
            .seqs
            .iter()
            .map(|s| s.kv_len as i64 - s.q_len as i64)
            .min()
            .unwrap_or(0);
        let keys_rows_ok = (h.head_dim * cache.dtype.size()).is_multiple_of(16);
        crate::ensure!(
            keys_rows_ok || batch.items[1..4].iter().all(|g| g.1 == 0),
            Param,
            op,
            "the DecodeKeys kernel needs 16-byte aligned K/V rows: head_dim {} x {} bytes is not a multiple of 16",
            h.head_dim,
            cache.dtype.size()
        );
        crate::ensure!(
            ctx.caps().subgroups || batch.items[4..].iter().all(|g| g.1 == 0),
            Limit,
            op,
            "the batch was planned with the DecodeSubgroup kernel, which needs a device with the SUBGROUP feature (adapter {:?})",
            ctx.adapter_info().name
        );
        Ok(PagedChecked {
            keys: attention_keys(cache.dtype, tile_v4, hd4),
            bk: (tile_v4 / hd4).min(64),
            part_bytes,
            scale: self.scale.unwrap_or(1.0 / (h.head_dim as f32).sqrt()),
            bounds: self.window_bounds(max_kv, min_off),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn record_paged(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        c: &PagedChecked,
        q: &Tensor,
        cache: &PagedKvCache,
        batch: &PagedBatch,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<()> {
        let op = "paged_attention";
        if batch.total_q == 0 {
            return Ok(());
        }
        let h = batch.heads;
        let qw = Window::covering(ctx, op, &[q])?;
        let ow = Window::covering(ctx, op, &[out])?;
        let sw = match sinks {
            Some(s) => Some(Window::covering(ctx, op, &[s])?),
            None => None,
        };
        let u = |x: usize| -> Result<u32> {
            u32::try_from(x).map_err(|_| Error::limit(op, format!("stride {x} exceeds 32 bits")))
        };
        let (ts, hs) = cache.strides();
        let params = attention::Params {
            batch: batch.seqs.len() as u32,
            q_len: batch.total_q as u32,
            kv_len: cache.page_size as u32,
            n_heads: h.n_heads as u32,
            n_kv_heads: h.n_kv_heads as u32,
            head_dim: h.head_dim as u32,
            group: (h.n_heads / h.n_kv_heads) as u32,
            rows: cache.pages_per_buffer as u32,
            q: [qw.elem_offset(q), 0, u(q.strides()[0])?, u(q.strides()[1])?],
            k: [
                (cache.page_elems() / 2) as u32,
                cache.page_elems() as u32,
                ts as u32,
                hs as u32,
            ],
            v: [
                batch.items[0].0 as u32,
                batch.items[0].1 as u32,
                batch.rowmap_off as u32,
                batch.seqs_off as u32,
            ],
            o: [
                ow.elem_offset(out),
                0,
                u(out.strides()[0])?,
                u(out.strides()[1])?,
            ],
            bk: c.bk,
            ..self.logit_params(c.scale, c.bounds, &sw, sinks)
        };
        let part = ctx.scratch(op, c.part_bytes.max(16))?;
        let part_res = || {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &part,
                offset: 0,
                size: std::num::NonZeroU64::new(c.part_bytes.max(16)),
            })
        };
        // The partial passes present in the batch (tile kernel, DecodeKeys with 1, 2, 4 rows per
        // workgroup, DecodeSubgroup with 1, 2, 4, 8), each over its own list of work items; every
        // pipeline is compiled before anything is recorded, so a failure records nothing.
        let hd4 = (h.head_dim / 4) as u32;
        let mut passes = Vec::new();
        for (g, &(off, n)) in batch.items.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let key = match g {
                0 => c.keys[0].clone(),
                1..=3 => keys_attention_key(cache.dtype, hd4, 1 << (g - 1)),
                _ => sg_attention_key(cache.dtype, hd4, 1 << (g - 4), batch.sg_min),
            };
            ctx.kernel(op, &key)?;
            passes.push((key, off, n));
        }
        ctx.kernel(op, &c.keys[1])?;
        let names = ["pool0", "pool1", "pool2"];
        let mut inputs = vec![
            ("q_buf", qw.resource()),
            ("plan_buf", batch.plan_window()),
            ("part_out", part_res()),
            ("out_buf", ow.resource()),
        ];
        for (i, b) in cache.buffers.iter().enumerate() {
            inputs.push((names[i], b.as_entire_binding()));
        }
        if let Some(w) = &sw {
            inputs.push(("sinks", w.resource()));
        }
        for (key, off, n) in &passes {
            let pass = attention::Params {
                v: [*off as u32, *n as u32, params.v[2], params.v[3]],
                ..params
            };
            ctx.encode_kernel(op, enc, key, &pass, &inputs, (*n * h.n_kv_heads) as u64)?;
        }
        let mut merge = vec![
            ("part_in", part_res()),
            ("out_buf", ow.resource()),
            ("plan_buf", batch.plan_window()),
        ];
        if let Some(w) = &sw {
            merge.push(("sinks", w.resource()));
        }
        let threads = (batch.total_q * h.n_heads * h.head_dim / 4) as u64;
        ctx.encode_kernel(
            op,
            enc,
            &c.keys[1],
            &params,
            &merge,
            threads.div_ceil(attention::DECODE_WG as u64),
        )
    }
}

struct PagedChecked {
    keys: [PipelineKey; 2],
    bk: u32,
    part_bytes: u64,
    scale: f32,
    bounds: (i32, i32),
}

//! [`PagedBatch`]: one step's sequences, new-token slots and attention work plan.

use super::table::{PageTable, SeqId};
use super::{check_page_size, OP};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kv_format::KvFormat;
use crate::ops::attention::{self, DeviceDesc, Kind};
use crate::ops::rope::PositionIds;

/// Words of a sequence record in the batch plan (mirrors `SEQ_WORDS` in the shader).
const SEQ_WORDS: usize = 16;

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
pub(super) struct SeqPlan {
    // Kernel of the sequence's rows: Decode or Prefill (the tile kernel), DecodeKeys or
    // DecodeSubgroup.
    kind: Kind,
    q_start: usize,
    pub(super) q_len: usize,
    pub(super) kv_len: usize,
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
    pub(super) heads: Heads,
    pub(super) page_size: usize,
    pub(super) n_pages: usize,
    pub(super) seqs: Vec<SeqPlan>,
    pub(super) total_q: usize,
    // (word offset, count) of the work items of each pass (`item_group`).
    pub(super) items: [(usize, usize); ITEM_GROUPS],
    // The adapter's smallest subgroup the DecodeSubgroup rows were planned for.
    pub(super) sg_min: u32,
    pub(super) parts: usize,
    pub(super) rowmap_off: usize,
    pub(super) slots_off: usize,
    pos_off: usize,
    pub(super) seqs_off: usize,
    // Host copies for the appends: the slot of every new token.
    pub(super) slots: Vec<u32>,
    // The sizes the masks of a call over this batch must have: query-key pairs, keys and
    // segment-packed mask bytes, over all sequences.
    mask_sizes: (usize, usize, usize),
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
        Self::new_with(ctx, table, entries, heads, &PlanOptions::default())
    }

    /// [`PagedBatch::new`] with planning choices: among them the cache's K/V format
    /// ([`PlanOptions::kv_format`]), which keeps the default kernels to those that read it.
    pub fn new_with(
        ctx: &Context,
        table: &PageTable,
        entries: &[(SeqId, usize)],
        heads: Heads,
        plan: &PlanOptions,
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
        Self::from_parts_with(ctx, table.page_size(), table.n_pages(), &seqs, heads, plan)
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
        // Before the device checks: a format the kernel cannot read is refused on any adapter.
        if let Some(f) = plan.kv_format {
            for (k, forced) in [
                (Kind::DecodeSubgroup, plan.decode),
                (Kind::PrefillSubgroup, plan.prefill),
            ] {
                crate::ensure!(
                    forced != Some(k) || attention::sg_reads_rows(f, head_dim),
                    Param,
                    OP,
                    "the {k:?} kernel reads whole 16-byte units of a K/V row: {f} rows of head_dim {head_dim} are not (fp8 needs a multiple of 16)"
                );
            }
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
        if let Some(k) = plan.prefill {
            crate::ensure!(
                matches!(k, Kind::Prefill | Kind::PrefillSubgroup),
                Param,
                OP,
                "prefill kernel {k:?} does not apply to paged prefill rows (Prefill or PrefillSubgroup)"
            );
            crate::ensure!(
                k != Kind::PrefillSubgroup || ctx.caps().subgroups,
                Limit,
                OP,
                "the PrefillSubgroup kernel needs a device with the SUBGROUP feature (adapter {:?})",
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
        // Decode rows: q_len <= DECODE_MAX_Q_LEN.
        let dev = DeviceDesc::of(ctx);
        let (default_decode, default_prefill) = default_kinds(&dev, head_dim, plan.kv_format);
        let decode_kind = plan.decode.unwrap_or(default_decode);
        let prefill_kind = plan.prefill.unwrap_or(default_prefill);
        let hd4 = (head_dim / 4) as u32;
        let sg_min = ctx.adapter_info().subgroup_min_size.max(4);
        let kind_of = |q_len: usize| match q_len > attention::DECODE_MAX_Q_LEN {
            true => prefill_kind,
            false => decode_kind,
        };
        // (rows per workgroup, lanes) of a sequence's rows, by kernel.
        let shape_of = |kind: Kind, rows: usize| match kind {
            Kind::DecodeKeys => (rows.next_power_of_two().min(attention::KEYS_MAX_ROWS), 1),
            // One partial per (row, split): the lane groups merge inside the workgroup.
            Kind::DecodeSubgroup => (
                rows.next_power_of_two()
                    .min(attention::sg_rows_max(hd4, sg_min) as usize),
                1,
            ),
            Kind::PrefillSubgroup => (
                attention::prefill_sg_shape(hd4, sg_min).rows_per_wg() as usize,
                1,
            ),
            _ => {
                let rpw = rows.next_power_of_two().clamp(1, wg);
                (rpw, wg / rpw)
            }
        };
        // Splits: the contiguous decode's rule over the whole batch, per kernel: chunks of at
        // least its minimum, aiming at its number of workgroups over the sequences it runs
        // (DecodeSubgroup at the device's resident workgroups, `attention::sg_splits`).
        let mut plans = Vec::with_capacity(seqs.len());
        // Keys x row blocks x kv heads the tile decode (Decode, Prefill) and DecodeSubgroup run
        // over the batch. DecodeKeys takes chunks of its pass (`keys_chunk_keys`) at any batch.
        let (mut tile_keys, mut sg_keys) = (0usize, 0usize);
        for s in seqs {
            let kind = kind_of(s.q_len);
            let rows = s.q_len * group;
            let (rows_per_wg, _) = shape_of(kind, rows);
            let keys = rows.div_ceil(rows_per_wg) * n_kv_heads * s.kv_len.max(1);
            match kind {
                Kind::DecodeKeys => {}
                Kind::DecodeSubgroup => sg_keys += keys,
                _ => tile_keys += keys,
            }
        }
        let resident = attention::DeviceDesc::of(ctx).resident_workgroups(attention::SG_WG);
        let auto_chunk = |kind: Kind| match kind {
            Kind::DecodeKeys => usize::MAX,
            Kind::DecodeSubgroup => sg_keys.div_ceil(resident).max(attention::SG_MIN_CHUNK),
            _ => tile_keys
                .div_ceil(attention::DECODE_TARGET_WORKGROUPS)
                .max(attention::DECODE_MIN_CHUNK),
        };
        let mut q_start = 0;
        let mut n_items = [0usize; ITEM_GROUPS];
        let mut parts = 0usize;
        for s in seqs {
            let kind = kind_of(s.q_len);
            let rows = s.q_len * group;
            let (rows_per_wg, lanes) = shape_of(kind, rows);
            let row_blocks = rows.div_ceil(rows_per_wg);
            let cap = match kind {
                Kind::DecodeKeys => Some(attention::keys_chunk_keys(rows_per_wg)),
                Kind::DecodeSubgroup => {
                    attention::sg_cap_keys(ctx, hd4, sg_min, rows_per_wg as u32)
                }
                Kind::PrefillSubgroup => dev.prefill_sg_cap_keys(hd4, sg_min),
                _ => attention::loop_cap_keys(ctx, head_dim),
            };
            let min_splits = cap.map_or(1, |c| s.kv_len.div_ceil(c.max(1))).max(1);
            let (n_splits, chunk) = match splits {
                Some(f) => {
                    let n = (f as usize).max(min_splits);
                    (n, s.kv_len.div_ceil(n).max(1))
                }
                None => {
                    let chunk = auto_chunk(kind).min(s.kv_len.div_ceil(min_splits).max(1));
                    (s.kv_len.div_ceil(chunk).max(1), chunk)
                }
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
        // Where each sequence's mask inputs start (see `Seq` in the shader).
        let mut mask_sizes = (0usize, 0usize, 0usize);
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
            let (qk, kv, bytes) = mask_sizes;
            rec[11] = (8 * bytes) as u32;
            rec[12] = qk as u32;
            rec[13] = kv as u32;
            let pairs = pl.q_len * pl.kv_len;
            mask_sizes = (qk + pairs, kv + pl.kv_len, bytes + pairs.div_ceil(8));
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
            mask_sizes,
        })
    }

    /// What masks over this batch hold in all ([`crate::ops::attention::Inputs`]): query-key
    /// pairs (bias values per head), keys (block ids) and segment-packed mask bytes.
    pub fn mask_sizes(&self) -> (usize, usize, usize) {
        self.mask_sizes
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
    /// Split-KV partial results the attention call stores (`head_dim + 4` f32 each, in the
    /// context's scratch buffer); rows with one split and one lane (prefill rows) store none.
    pub fn partials(&self) -> usize {
        self.parts
    }
    /// Each sequence's split count (the attention work plan).
    pub fn splits(&self) -> Vec<usize> {
        self.seqs.iter().map(|s| s.splits).collect()
    }
    /// The kernel of each sequence's rows: the prefill kernel planned for more than
    /// [`attention::DECODE_MAX_Q_LEN`] queries ([`Kind::Prefill`], the workgroup-tile kernel, or
    /// [`Kind::PrefillSubgroup`]), else the decode kernel planned ([`Kind::Decode`], the same tile kernel, [`Kind::DecodeKeys`] or
    /// [`Kind::DecodeSubgroup`]).
    pub fn kinds(&self) -> Vec<Kind> {
        self.seqs.iter().map(|s| s.kind).collect()
    }
    /// The position of every new token, `[total_q]` i32, for RoPE.
    pub fn positions(&self) -> PositionIds {
        PositionIds::new(&self.buffer, self.pos_off, &[self.total_q])
    }
    pub(super) fn plan_window(&self) -> wgpu::BindingResource<'_> {
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
    /// The kernel of prefill rows (more queries): [`Kind::Prefill`] (the workgroup-tile kernel)
    /// or [`Kind::PrefillSubgroup`] (needs `SUBGROUP` and 16-byte aligned rows); `None` picks as
    /// the contiguous dispatcher does (PrefillSubgroup on adapters that are not CPU adapters with
    /// `SUBGROUP` when head_dim is a multiple of 8, Prefill otherwise).
    pub prefill: Option<Kind>,
    /// The K/V format of the cache the batch will attend over ([`super::PagedKvCache::format`]);
    /// `None` plans for any float format. The subgroup kernels read whole 16-byte units of a
    /// row, which fp8 rows are only at head_dims that are multiples of 16: with such a format
    /// the default kernels are the tile kernels instead, and forcing a subgroup kernel is
    /// refused here. (A batch planned without the format over such a cache is refused by the
    /// attention call.)
    pub kv_format: Option<KvFormat>,
}

/// The kernels of a batch's decode rows and prefill rows when [`PlanOptions`] forces none, on
/// `dev` at `head_dim` over K/V in `kv` (`None`: a float format). The one rule,
/// [`DeviceDesc::default_kind`], as the contiguous dispatcher applies it: on CPU adapters
/// DecodeKeys when rows are 16-byte aligned in every dtype the cache may hold (head_dim a
/// multiple of 8; page and head offsets are multiples of head_dim); elsewhere DecodeSubgroup
/// and PrefillSubgroup where the device has `SUBGROUP`, except over K/V rows they cannot read
/// as whole 16-byte units ([`attention::sg_reads_rows`]), which take the tile kernels.
pub(super) fn default_kinds(
    dev: &DeviceDesc,
    head_dim: usize,
    kv: Option<KvFormat>,
) -> (Kind, Kind) {
    let aligned = head_dim.is_multiple_of(8);
    let sg_ok = kv.is_none_or(|f| attention::sg_reads_rows(f, head_dim));
    let decode = match dev.default_kind(1, aligned) {
        Kind::DecodeSubgroup if !sg_ok => Kind::Decode,
        k => k,
    };
    let prefill = match dev.default_kind(attention::DECODE_MAX_Q_LEN + 1, aligned) {
        Kind::PrefillSubgroup if sg_ok => Kind::PrefillSubgroup,
        _ => Kind::Prefill,
    };
    (decode, prefill)
}

/// Work-item lists (passes) a batch may have.
const ITEM_GROUPS: usize = 9;

/// Which work-item list (and pipeline) a sequence's rows use: 0 for the tile kernel, 1, 2, 3
/// for DecodeKeys with 1, 2, 4 rows per workgroup, 4 .. 7 for DecodeSubgroup with 1, 2, 4, 8,
/// 8 for PrefillSubgroup.
fn item_group(kind: Kind, rows_per_wg: usize) -> usize {
    match kind {
        Kind::DecodeKeys => KEYS_GROUPS.start + rows_per_wg.trailing_zeros() as usize,
        Kind::DecodeSubgroup => DECODE_SG_GROUPS.start + rows_per_wg.trailing_zeros() as usize,
        Kind::PrefillSubgroup => PREFILL_SG_GROUP,
        _ => 0,
    }
}

/// The work-item lists of DecodeKeys, of DecodeSubgroup (by rows per workgroup) and of
/// PrefillSubgroup ([`item_group`]).
pub(super) const KEYS_GROUPS: std::ops::Range<usize> = 1..4;
pub(super) const DECODE_SG_GROUPS: std::ops::Range<usize> = 4..8;
pub(super) const PREFILL_SG_GROUP: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_kinds_fall_back_from_the_subgroup_kernels_over_fp8_rows_they_cannot_read() {
        let gpu = DeviceDesc::nvidia();
        let sg = (Kind::DecodeSubgroup, Kind::PrefillSubgroup);
        let tile = (Kind::Decode, Kind::Prefill);
        for (hd, kv, want) in [
            (40, None, sg),
            (40, Some(KvFormat::BF16), sg),
            (40, Some(KvFormat::Fp8E4M3), tile),
            (48, Some(KvFormat::Fp8E4M3), sg),
            (64, Some(KvFormat::Q8_0), sg),
            (64, Some(KvFormat::Q4_0), sg),
            (36, None, tile),
        ] {
            assert_eq!(default_kinds(&gpu, hd, kv), want, "head_dim {hd} {kv:?}");
        }
        // CPU adapters keep DecodeKeys (it reads 8 values at a time) and the tile prefill.
        assert_eq!(
            default_kinds(&DeviceDesc::lavapipe(), 40, Some(KvFormat::Fp8E4M3)),
            (Kind::DecodeKeys, Kind::Prefill)
        );
    }
}

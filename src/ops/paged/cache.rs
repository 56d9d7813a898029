//! [`PagedKvCache`]: one layer's K/V pages on the GPU, page copies and the appends.

use super::batch::PagedBatch;
#[cfg(doc)]
use super::table::PageTable;
use super::table::{PageCopy, SlotCopy};
use super::{check_page_size, PageLayout, MAX_POOL_BUFFERS, OP};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kv_format::KvFormat;
use crate::ops::attention;
use crate::ops::rope::{HeadNorm, PositionIds, Positions, QuantOut, Rope, RowMap};
use crate::pipeline::{PipelineKey, Shader, Window};
use crate::tensor::{DType, Tensor};

// Workgroup size of the write pass: the contiguous cache's (the key's `WG` comes from there).
use crate::ops::kv_cache::WG;

/// The pipeline key of the paged write (the constants of the contiguous cache's append).
pub fn write_key(src: DType, dst: DType, write_k: bool) -> PipelineKey {
    crate::ops::kv_cache::write_key(Shader::PAGED_KV, "paged_write", src, dst, write_k)
}

/// The pipeline key of the quantizing paged write into pages of `dst` (`paged_write_q`; K on
/// or off as the uniform `WriteParams::q_write_k`, RoPE's `rope_q` writing K).
pub fn write_key_q(src: DType, dst: KvFormat) -> PipelineKey {
    crate::ops::kv_cache::write_key_code(
        Shader::PAGED_KV,
        "paged_write_q",
        src,
        dst.shader_code(),
        None,
    )
}

/// Every pipeline key of `shaders/paged_kv.wgsl`.
pub fn write_variant_keys() -> Vec<PipelineKey> {
    let mut keys = crate::ops::kv_cache::write_variant_keys(Shader::PAGED_KV, "paged_write");
    for f in KvFormat::QUANTIZED {
        for s in DType::ALL {
            keys.push(write_key_q(s, f));
        }
    }
    keys
}

/// Uniform parameters of `shaders/paged_kv.wgsl` (96 bytes).
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
    /// Quantized pages: words per page.
    pub page_words: u32,
    /// k_new: element offset, token and head strides.
    pub k: [u32; 3],
    /// Quantized pages: word offset of the scale plane in a page.
    pub scale_word: u32,
    /// v_new: element offset, token and head strides.
    pub v: [u32; 3],
    /// `paged_write_q`: 1 to write K, 0 when RoPE writes it (a uniform, not the key's `WRITE_K`).
    pub q_write_k: u32,
    /// fp8: K's per-tensor scale.
    pub k_scale: f32,
    /// fp8: V's per-tensor scale.
    pub v_scale: f32,
    /// Padding.
    pub _pad3: [u32; 2],
}

/// The pages and storage of a [`PagedKvCache`], by name, so that no two sizes can be swapped.
/// `n_pages` and `page_size` are those of the [`PageTable`] that hands the pages out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedKvConfig {
    /// Pages in the pool.
    pub n_pages: usize,
    /// Tokens per page.
    pub page_size: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Dtype of q and out, and storage dtype of K and V unless `kv_format` says otherwise
    /// (default f32).
    pub dtype: DType,
    /// Storage format of K and V (default `None`: the float format of `dtype`).
    pub kv_format: Option<KvFormat>,
    /// Order of a page's elements (default [`PageLayout::Hnd`]).
    pub layout: PageLayout,
}

impl Default for PagedKvConfig {
    /// f32 pages in the default (HND) layout; the sizes are 0 and must be set (`PagedKvCache::new`
    /// refuses 0).
    fn default() -> Self {
        PagedKvConfig {
            n_pages: 0,
            page_size: 0,
            n_kv_heads: 0,
            head_dim: 0,
            dtype: DType::F32,
            kv_format: None,
            layout: PageLayout::default(),
        }
    }
}

/// K and V pages of one layer (see the module docs).
#[derive(Debug)]
pub struct PagedKvCache {
    pub(super) buffers: Vec<wgpu::Buffer>,
    n_pages: usize,
    pub(super) page_size: usize,
    pub(super) n_kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) dtype: DType,
    pub(super) format: KvFormat,
    pub(super) k_scale: f32,
    pub(super) v_scale: f32,
    layout: PageLayout,
    pub(super) pages_per_buffer: usize,
}

impl PagedKvCache {
    /// Allocate `config.n_pages` zero-filled pages for q and out of `config.dtype`, K/V stored
    /// in `config.kv_format` (default: `dtype`'s float format). A quantized page is laid out as
    /// a quantized buffer of its `2 x page_size x n_kv_heads` head rows (`crate::kv_format`: the
    /// data, then the rows' scales), padded to 16 bytes; fp8's scales are 1 until
    /// [`PagedKvCache::set_scales`].
    pub fn new(ctx: &Context, config: PagedKvConfig) -> Result<Self> {
        let PagedKvConfig {
            n_pages,
            page_size,
            n_kv_heads,
            head_dim,
            dtype,
            kv_format,
            layout,
        } = config;
        let format = kv_format.unwrap_or(KvFormat::from_dtype(dtype));
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
        crate::ensure!(
            format.dtype().is_none_or(|d| d == dtype),
            DType,
            OP,
            "a {format} cache is for q and out of {format}, not {dtype}: float K/V formats must equal the dtype"
        );
        format.check_head_dim(OP, head_dim)?;
        let page_elems = 2 * page_size as u64 * n_kv_heads as u64 * head_dim as u64;
        let page_bytes = page_bytes(format, page_elems as usize, head_dim);
        let lim = ctx.limits();
        let per_buffer = lim.max_storage_buffer_binding_size.min(lim.max_buffer_size);
        // Element indices within a buffer stay below 2^31.
        let pages_per_buffer =
            ((per_buffer / page_bytes) as usize).min((u32::MAX / 2) as usize / page_elems as usize);
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
            format,
            k_scale: 1.0,
            v_scale: 1.0,
            layout,
            pages_per_buffer,
        })
    }

    /// Storage format of K and V.
    pub fn format(&self) -> KvFormat {
        self.format
    }
    /// The dtype of q / out and the K/V format.
    pub(super) fn formats(&self) -> (DType, KvFormat) {
        (self.dtype, self.format)
    }
    /// Set fp8's per-tensor K and V scales (finite and > 0). The cache does not know which pages
    /// hold rows, so this is for a cache whose pages were not written yet: rows already stored
    /// keep the scales they were quantized with.
    pub fn set_scales(&mut self, k_scale: f32, v_scale: f32) -> Result<()> {
        crate::kv_format::check_scales(OP, k_scale, v_scale)?;
        self.k_scale = k_scale;
        self.v_scale = v_scale;
        Ok(())
    }
    /// Bytes per page.
    fn page_bytes(&self) -> u64 {
        page_bytes(self.format, self.page_elems(), self.head_dim)
    }
    /// Quantized pages: 32-bit words per page.
    pub(super) fn page_words(&self) -> u64 {
        self.page_bytes() / 4
    }
    /// Quantized pages: the f16 number of a page's first scale.
    pub(super) fn page_scale_half(&self) -> usize {
        self.format
            .scale_plane_byte(self.page_elems() / self.head_dim, self.head_dim)
            / 2
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
    pub(super) fn page_elems(&self) -> usize {
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

    pub(super) fn check_table(&self, page_size: usize, n_pages: usize) -> Result<()> {
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
        let bytes = self.page_bytes();
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

    /// Record the row moves of [`PageTable::keep_path`] (after its page copies): the K and V
    /// rows of every kv head of each source slot go to the destination slot. All sources are
    /// gathered into the context's scratch buffer before any destination is written, so the
    /// moves may overlap each other in any order (and share pool buffers, which WebGPU copies
    /// may not).
    pub fn copy_slots(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        moves: &[SlotCopy],
    ) -> Result<()> {
        let slots = self.n_pages * self.page_size;
        for m in moves {
            for s in [m.src, m.dst] {
                crate::ensure!(
                    (s as usize) < slots,
                    Bounds,
                    OP,
                    "slot {s} is outside the pool of {} pages of {} tokens",
                    self.n_pages,
                    self.page_size
                );
            }
        }
        if moves.is_empty() {
            return Ok(());
        }
        // One contiguous run per (K or V, kv head) in HND, per K or V in NHD.
        let (runs, run_elems) = match self.layout {
            PageLayout::Nhd => (1, self.n_kv_heads * self.head_dim),
            PageLayout::Hnd => (self.n_kv_heads, self.head_dim),
        };
        let es = self.dtype.size() as u64;
        let run_bytes = run_elems as u64 * es;
        let v_in_page = (self.page_elems() / 2) as u64;
        let per_move = 2 * runs as u64 * run_bytes;
        let staging = ctx.scratch(OP, per_move * moves.len() as u64)?;
        let pieces = |slot: u32| {
            (0..runs).flat_map(move |h| {
                let (b, off) = self.slot_offset(slot as usize, h);
                [(b, off as u64 * es), (b, (off as u64 + v_in_page) * es)]
            })
        };
        ctx.scoped(OP, || {
            for (i, m) in moves.iter().enumerate() {
                for (j, (b, at)) in pieces(m.src).enumerate() {
                    let to = i as u64 * per_move + j as u64 * run_bytes;
                    encoder.copy_buffer_to_buffer(&self.buffers[b], at, &staging, to, run_bytes);
                }
            }
            for (i, m) in moves.iter().enumerate() {
                for (j, (b, at)) in pieces(m.dst).enumerate() {
                    let from = i as u64 * per_move + j as u64 * run_bytes;
                    encoder.copy_buffer_to_buffer(&staging, from, &self.buffers[b], at, run_bytes);
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
            let bytes = self.encode_page(&page);
            ctx.write_bytes(&self.buffers[b], off * self.page_bytes(), &bytes)?;
        }
        Ok(())
    }

    /// One page's bytes from its values in page order (K rows, then V rows), quantized as the
    /// write kernel does (`reference::quant`: the kernels are tested bit for bit against it).
    fn encode_page(&self, page: &[f32]) -> Vec<u8> {
        use crate::reference::quant::encode;
        let (f, hd) = (self.format, self.head_dim);
        let mut bytes = match f {
            // fp8: K and V have their own scales (no scale plane).
            KvFormat::Fp8E4M3 => {
                let (k, v) = page.split_at(page.len() / 2);
                let mut b = encode(f, k, hd, self.k_scale);
                b.extend(encode(f, v, hd, self.v_scale));
                b
            }
            _ => encode(f, page, hd, 1.0),
        };
        bytes.resize(self.page_bytes() as usize, 0);
        bytes
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
    /// land in the batch's slots either way. When `k_new` has the cache's dtype, or the pages are
    /// quantized ([`PagedKvCache::rope_fused_for`]), K's norm, rotation (and quantization) and
    /// write into its page are one pass ([`Rope::encode_rows`] through a row map of the slots, or
    /// `rope_q` into quantized pages; one dispatch per pool buffer the batch touches) and the
    /// write pass moves only V; otherwise RoPE writes K into a scratch view and the write pass
    /// converts both.
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
        if self.rope_fused_for(k_new.dtype()) {
            // Row maps first (content-addressed, so every layer of a step shares them).
            let (_, hs) = self.strides();
            let mut plans = Vec::new();
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
                let dst = &self.buffers[b];
                let row_map = RowMap {
                    dst,
                    rows: &map,
                    rows_offset: 0,
                    head_stride: hs,
                };
                let positions = Positions::Ids(pos);
                let plan = match self.format.is_quantized() {
                    true => {
                        let out = self.quant_out(dst);
                        rope.plan_quantized(ctx, k_new, out, Some(row_map), k_norm, positions)?
                    }
                    false => rope.plan_rows(ctx, k_new, dst, &map, 0, hs, positions, k_norm)?,
                };
                plans.push(plan);
            }
            return ctx.scoped(OP, || -> Result<()> {
                for plan in plans {
                    rope.record_unscoped(
                        ctx,
                        encoder,
                        plan,
                        k_new,
                        None,
                        None,
                        Positions::Ids(pos),
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

    /// Which way [`PagedKvCache::append_rope`] records K for new rows of `dtype`: `true` when
    /// RoPE writes the rotated (and normalised) rows straight into their pages, through a row map
    /// of the slots: new rows of the cache's dtype, or any new rows into quantized pages (RoPE
    /// quantizes as it writes, `rope_q`); `false` when RoPE writes them into scratch and the write
    /// pass converts them.
    pub fn rope_fused_for(&self, dtype: DType) -> bool {
        self.format.rope_writes_k(self.dtype, dtype)
    }

    /// Where `rope_q` writes K rows into the quantized pages of pool buffer `dst`: each page a
    /// quantized buffer of its rows, K rows first.
    fn quant_out<'a>(&self, dst: &'a wgpu::Buffer) -> QuantOut<'a> {
        QuantOut {
            format: self.format,
            dst,
            page_elems: self.page_elems(),
            page_words: self.page_words() as usize,
            scale_word: self.page_scale_half() / 2,
            scale: self.k_scale,
            view: None,
        }
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
        let key = match self.format.is_quantized() {
            true => write_key_q(k_new.dtype(), self.format),
            false => write_key(k_new.dtype(), self.dtype, write_k),
        };
        let (ts, hs) = self.strides();
        let ks = k_new.strides();
        let vs = v_new.strides();
        let u = |x: usize| -> Result<u32> {
            u32::try_from(x).map_err(|_| Error::limit(OP, format!("stride {x} exceeds 32 bits")))
        };
        // Invocations per head row: pairs of blocks (q8_0, q4_0) or 4 values.
        let per_row = match self.format {
            f if f.is_block() => f.scales_per_row(self.head_dim) / 2,
            _ => self.head_dim / 4,
        };
        let threads = (batch.total_q * self.n_kv_heads * per_row) as u64;
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
                page_words: self.page_words() as u32,
                scale_word: (self.page_scale_half() / 2) as u32,
                k_scale: self.k_scale,
                v_scale: self.v_scale,
                q_write_k: write_k as u32,
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

/// Bytes per page of `page_elems` values in `format`: a float page's values, or a quantized
/// buffer of its head rows padded to 16 bytes (so every page's blocks start 16-byte aligned).
fn page_bytes(format: KvFormat, page_elems: usize, head_dim: usize) -> u64 {
    match format.dtype() {
        Some(d) => (page_elems * d.size()) as u64,
        None => format
            .buffer_bytes(page_elems / head_dim, head_dim)
            .next_multiple_of(16) as u64,
    }
}

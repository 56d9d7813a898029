//! A KV cache: K and V storage for a batch of sequences that attention reads in place.
//!
//! Layout of each of the K and V buffers: `[batch, n_kv_heads, capacity, head_dim]` in the cache's
//! dtype (f32, f16 or bf16), so one head's keys are contiguous. [`KvCache::k`] / [`KvCache::v`]
//! return `[batch, len, n_kv_heads, head_dim]` strided views over the filled rows, which
//! [`crate::Attention`] accepts directly (no copy).
//!
//! [`KvCache::append`] writes `n_new` rows per sequence at positions `len .. len + n_new` for the
//! whole batch in one dispatch (`shaders/kv_cache.wgsl`, converting from the new rows' dtype) and
//! advances `len`. All sequences of a cache share one length. Appending past `capacity` is an
//! error and writes nothing. [`KvCache::append_rope`] also rotates the new K rows with
//! [`crate::ops::rope::Rope`] at positions `len ..` (or given position ids): when the new rows
//! already have the cache's dtype (or the cache is quantized, below), RoPE writes the rotated K
//! rows straight into the cache (one pass over K) and the append kernel copies only V; otherwise
//! the append converts K and RoPE rotates it in place in the cache. Both are recorded in the same
//! encoder, no round trip.
//!
//! New rows whose views do not fit one storage binding (`max_storage_buffer_binding_size`; e.g.
//! K inside a fused QKV buffer, or f32 rows for a half cache) are appended by several
//! dispatches, one per run of tokens of one sequence whose views fit; the cache itself always
//! fits (checked at creation).
//!
//! A cache's K/V storage format ([`KvFormat`]) is an axis apart from the dtype of q and out: a
//! float format equal to that dtype ([`KvCache::new`]), or q8_0, q4_0 or fp8 e4m3
//! (`KvCacheConfig::kv_format`, layout in [`crate::kv_format`]). The append of a quantized cache
//! (`kv_append_q`) quantizes the new rows in the same pass that writes them; with RoPE, RoPE
//! itself writes K (`rope_q`: the rotated rows, from new rows of any dtype, quantized as they are
//! written, no float copy) and the quantizing append writes V only. Attention reads the
//! quantized rows in place ([`crate::Attention::encode_cached`]).

use crate::context::Context;
use crate::error::Result;
use crate::kv_format::KvFormat;
use crate::ops::rope::{Plan as RopePlan, Positions, QuantOut, Rope};
use crate::pipeline::{PipelineKey, Shader};
use crate::tensor::{DType, Tensor};

const OP: &str = "kv_cache";
pub(crate) const WG: u32 = 64;

/// Uniform parameters; mirrors `struct Params` in `shaders/kv_cache.wgsl` (80 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Sequences.
    pub batch: u32,
    /// New rows per sequence.
    pub n_new: u32,
    /// Key/value heads.
    pub n_kv_heads: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// Cache row the new rows start at.
    pub pos: u32,
    /// Rows the cache holds per sequence and head.
    pub capacity: u32,
    /// k_new: element offset, batch, token and head strides.
    pub k: [u32; 4],
    /// v_new: element offset, batch, token and head strides.
    pub v: [u32; 4],
    /// Quantized caches: word index of the scale plane in each of the K and V buffers.
    pub scale_plane: u32,
    /// fp8: K's per-tensor scale.
    pub k_scale: f32,
    /// fp8: V's per-tensor scale.
    pub v_scale: f32,
    /// `kv_append_q`: 1 to write K, 0 when RoPE writes it (a uniform, not the key's `WRITE_K`).
    pub q_write_k: u32,
    /// Padding to 16 bytes.
    pub _pad: [u32; 2],
}

/// The pipeline key for an append from `src` dtype into a cache of format `dst` (`kv_append`
/// for the float formats, `kv_append_q` quantizing); `write_k` false leaves K to RoPE's
/// out-of-place pass (`rope`). The quantizing append takes `write_k` as a uniform
/// (`Params::q_write_k`: RoPE's `rope_q` writes K) and has one key for both.
pub fn append_key(src: DType, dst: KvFormat, write_k: bool) -> PipelineKey {
    match dst.dtype() {
        Some(d) => write_key(Shader::KV_CACHE, "kv_append", src, d, write_k),
        None => write_key_code(
            Shader::KV_CACHE,
            "kv_append_q",
            src,
            dst.shader_code(),
            None,
        ),
    }
}

/// Every pipeline key `append` can produce: the float appends with and without K, and the
/// quantizing appends (K on or off at run time).
pub fn all_variant_keys() -> Vec<PipelineKey> {
    let mut keys = write_variant_keys(Shader::KV_CACHE, "kv_append");
    for f in KvFormat::QUANTIZED {
        for s in DType::ALL {
            keys.push(append_key(s, f, true));
        }
    }
    keys
}

/// A K/V write kernel's key (`kv_append` here, `paged_write` for the paged cache: the same
/// constants), converting `src` rows into a `dst` cache; `write_k` false leaves K to RoPE.
pub(crate) fn write_key(
    shader: &'static Shader,
    entry: &'static str,
    src: DType,
    dst: DType,
    write_k: bool,
) -> PipelineKey {
    write_key_code(shader, entry, src, dst.shader_code(), Some(write_k))
}

/// [`write_key`] with the destination as a [`KvFormat::shader_code`]; `write_k` `None` for the
/// quantizing kernels, which take it as a uniform.
pub(crate) fn write_key_code(
    shader: &'static Shader,
    entry: &'static str,
    src: DType,
    dst: u32,
    write_k: Option<bool>,
) -> PipelineKey {
    let mut constants = vec![
        ("SRC_DTYPE", src.shader_code()),
        ("DST_DTYPE", dst),
        ("WG", WG),
    ];
    if let Some(write_k) = write_k {
        constants.push(("WRITE_K", write_k as u32));
    }
    PipelineKey::new(shader, entry, constants)
}

/// Every key [`write_key`] can produce for one entry point.
pub(crate) fn write_variant_keys(shader: &'static Shader, entry: &'static str) -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for s in DType::ALL {
        for d in DType::ALL {
            keys.push(write_key(shader, entry, s, d, true));
            keys.push(write_key(shader, entry, s, d, false));
        }
    }
    keys
}

/// The shape and storage dtype of a [`KvCache`], by name, so that no two sizes can be swapped.
///
/// ```
/// # use llama_kernels::{DType, KvCacheConfig};
/// let config = KvCacheConfig { n_kv_heads: 8, capacity: 4096, head_dim: 128, dtype: DType::F16, ..Default::default() };
/// assert_eq!(config.batch, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Sequences (default 1).
    pub batch: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Rows (tokens) each sequence can hold.
    pub capacity: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Dtype of q and out, and storage dtype of K and V unless `kv_format` says otherwise
    /// (default f32).
    pub dtype: DType,
    /// Storage format of K and V (default `None`: the float format of `dtype`; or a quantized
    /// one, `KvFormat::Q8_0`, `Q4_0`, `Fp8E4M3`).
    pub kv_format: Option<KvFormat>,
}

impl Default for KvCacheConfig {
    /// Batch 1 and f32; the sizes are 0 and must be set (`KvCache::new` refuses 0).
    fn default() -> Self {
        KvCacheConfig {
            batch: 1,
            n_kv_heads: 0,
            capacity: 0,
            head_dim: 0,
            dtype: DType::F32,
            kv_format: None,
        }
    }
}

/// The rows an append wrote: `start .. start + n` of every sequence, which are also the token
/// positions the new rows hold. Use [`Appended::positions`] to rotate the same tokens' queries,
/// and [`KvCache::truncate`]`(appended.start)` to take the append back (for example when the
/// encoder it was recorded into is dropped instead of submitted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// First row written (the cache's length before the append).
    pub start: usize,
    /// Rows written per sequence.
    pub n: usize,
}

impl Appended {
    /// `start .. start + n`.
    pub fn rows(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.n
    }
    /// RoPE positions of the appended tokens (`Positions::Start(start)`): the positions at which
    /// [`KvCache::append_rope`] rotated K by default, so queries rotated with them match.
    pub fn positions(&self) -> Positions<'static> {
        // A cache holds fewer than 2^30 rows (capacity x head_dim, head_dim >= 4, is checked
        // below 2^32 elements at creation), so every row index is a valid i32 position.
        Positions::Start(self.start as i32)
    }
}

/// K and V storage for `batch` sequences of up to `capacity` tokens.
///
/// **Length.** [`KvCache::len`] counts the rows attention reads. An append advances it when the
/// append is *recorded*, so that attention recorded later in the same encoder sees the new rows;
/// the rows hold data once that encoder is submitted. An encoder that is dropped instead leaves
/// the length ahead of the contents: take the append back with [`KvCache::truncate`] and the
/// [`Appended`] it returned. Attention refuses queries whose tokens are not all in the cache.
#[derive(Debug)]
pub struct KvCache {
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    batch: usize,
    n_kv_heads: usize,
    capacity: usize,
    head_dim: usize,
    dtype: DType,
    format: KvFormat,
    k_scale: f32,
    v_scale: f32,
    len: usize,
}

impl KvCache {
    /// Allocate an empty cache (zero-filled storage, length 0) holding K/V in `config.kv_format`
    /// (default: the float format of `dtype`; q8_0 and q4_0 need head_dim a multiple of 32, fp8
    /// e4m3 a multiple of 8; fp8's scales are 1 until [`KvCache::set_scales`]).
    pub fn new(ctx: &Context, config: KvCacheConfig) -> Result<Self> {
        let KvCacheConfig {
            batch,
            n_kv_heads,
            capacity,
            head_dim,
            dtype,
            kv_format,
        } = config;
        let format = kv_format.unwrap_or(KvFormat::from_dtype(dtype));
        crate::ensure!(
            format.dtype().is_none_or(|d| d == dtype),
            DType,
            OP,
            "a {format} cache is for q and out of {format}, not {dtype}: float K/V formats must equal the dtype"
        );
        crate::ensure!(
            batch > 0 && n_kv_heads > 0 && capacity > 0,
            Shape,
            OP,
            "batch {batch}, n_kv_heads {n_kv_heads} and capacity {capacity} must all be > 0"
        );
        crate::ensure!(
            head_dim.is_multiple_of(4)
                && head_dim > 0
                && head_dim <= crate::ops::attention::MAX_HEAD_DIM,
            Shape,
            OP,
            "unsupported head_dim {head_dim}: must be a multiple of 4 and <= {}",
            crate::ops::attention::MAX_HEAD_DIM
        );
        format.check_head_dim(OP, head_dim)?;
        // Four usize factors can pass even u128 (2^62 * 2^62 * 16 * 4 wraps to 0): checked.
        let elems = [n_kv_heads, capacity, head_dim]
            .iter()
            .try_fold(batch as u128, |e, &n| e.checked_mul(n as u128))
            .filter(|&e| e < u32::MAX as u128)
            .ok_or_else(|| {
                crate::Error::limit(
                    OP,
                    format!(
                        "batch {batch} x n_kv_heads {n_kv_heads} x capacity {capacity} x head_dim \
                         {head_dim} elements per buffer exceed the 32-bit element indexing of the \
                         kernels"
                    ),
                )
            })?;
        let bytes = format.buffer_bytes(elems as usize / head_dim, head_dim) as u64;
        crate::ensure!(
            bytes <= ctx.limits().max_storage_buffer_binding_size,
            Limit,
            OP,
            "a {bytes}-byte K buffer exceeds the device's max_storage_buffer_binding_size {}",
            ctx.limits().max_storage_buffer_binding_size
        );
        Ok(KvCache {
            k: ctx.create_buffer(OP, bytes)?,
            v: ctx.create_buffer(OP, bytes)?,
            batch,
            n_kv_heads,
            capacity,
            head_dim,
            dtype,
            format,
            k_scale: 1.0,
            v_scale: 1.0,
            len: 0,
        })
    }

    /// Storage format of K and V.
    pub fn format(&self) -> KvFormat {
        self.format
    }
    /// fp8 e4m3: the per-tensor scales of K and V (stored value = e4m3(x / scale)).
    pub fn scales(&self) -> (f32, f32) {
        (self.k_scale, self.v_scale)
    }
    /// Set fp8's per-tensor K and V scales (finite and > 0); only while the cache is empty,
    /// since rows already stored were quantized with the old ones.
    pub fn set_scales(&mut self, k_scale: f32, v_scale: f32) -> Result<()> {
        crate::kv_format::check_scales(OP, k_scale, v_scale)?;
        crate::ensure!(
            self.len == 0,
            Param,
            OP,
            "the scales can only change while the cache is empty (length {})",
            self.len
        );
        self.k_scale = k_scale;
        self.v_scale = v_scale;
        Ok(())
    }

    /// Rows filled per sequence.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no row is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Rows the cache can hold per sequence.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Sequences.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Key/value heads.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    /// Elements per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Storage dtype of K and V.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Forget the contents (length 0); storage is reused.
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Shorten the cache to its first `len` rows per sequence (roll back an append, or rejected
    /// speculative tokens). The storage is kept; later appends overwrite the dropped rows.
    /// `len` above the current length is an error: truncation never makes rows appear.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        crate::ensure!(
            len <= self.len,
            Shape,
            OP,
            "truncate to {len} rows, but the cache holds {} (truncate only shortens; set_len \
             declares rows written by other means)",
            self.len
        );
        self.len = len;
        Ok(())
    }
    /// Declare the first `len` rows filled, for rows the application wrote into
    /// [`KvCache::k_buffer`] / [`KvCache::v_buffer`] itself; must be <= capacity. To roll back,
    /// prefer [`KvCache::truncate`], which cannot lengthen the cache by mistake.
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        crate::ensure!(
            len <= self.capacity,
            Shape,
            OP,
            "length {len} exceeds capacity {}",
            self.capacity
        );
        self.len = len;
        Ok(())
    }
    /// The K storage, `[batch, n_kv_heads, capacity, head_dim]`.
    pub fn k_buffer(&self) -> &wgpu::Buffer {
        &self.k
    }
    /// The V storage, `[batch, n_kv_heads, capacity, head_dim]`.
    pub fn v_buffer(&self) -> &wgpu::Buffer {
        &self.v
    }

    fn view(&self, buf: &wgpu::Buffer, len: usize) -> Tensor {
        let (h, c, d) = (self.n_kv_heads, self.capacity, self.head_dim);
        Tensor::with_strides(
            buf,
            0,
            &[self.batch, len, h, d],
            &[h * c * d, d, c * d, 1],
            self.dtype,
        )
    }

    /// `[batch, len, n_kv_heads, head_dim]` view of the filled K rows. For a quantized cache
    /// the view gives the elements' places only (its dtype is q's, not the storage's): read
    /// such a cache with [`crate::Attention::encode_cached`], or its bytes with
    /// [`KvCache::k_buffer`] and `reference::quant::decode`.
    pub fn k(&self) -> Tensor {
        self.view(&self.k, self.len)
    }
    /// `[batch, len, n_kv_heads, head_dim]` view of the filled V rows.
    pub fn v(&self) -> Tensor {
        self.view(&self.v, self.len)
    }

    /// How attention reads this cache's K/V when they are quantized (`None` for float formats).
    pub(crate) fn quant_reads(&self) -> Option<crate::kv_format::QuantReads> {
        let rows = self.batch * self.n_kv_heads * self.capacity;
        self.format
            .is_quantized()
            .then(|| crate::kv_format::QuantReads {
                format: self.format,
                scale_plane: (self.format.scale_plane_byte(rows, self.head_dim) / 2) as u32,
                k_scale: self.k_scale,
                v_scale: self.v_scale,
            })
    }

    /// K/V views of rank `rank` (3 needs batch 1) for attention; for a quantized cache the views
    /// give the elements' places only (attention reads them through [`KvCache::quant_reads`]).
    pub(crate) fn views_for(&self, op: &'static str, rank: usize) -> Result<(Tensor, Tensor)> {
        crate::ensure!(
            self.len > 0,
            Shape,
            op,
            "the KV cache is empty: append rows before attending to it"
        );
        let (k, v) = (self.k(), self.v());
        if rank == 4 {
            return Ok((k, v));
        }
        crate::ensure!(
            rank == 3 && self.batch == 1,
            Shape,
            op,
            "a rank-{rank} q needs a cache of batch 1, this cache has batch {}",
            self.batch
        );
        let s = k.strides().to_vec();
        let shape = [self.len, self.n_kv_heads, self.head_dim];
        Ok((
            Tensor::with_strides(&self.k, 0, &shape, &s[1..], self.dtype),
            Tensor::with_strides(&self.v, 0, &shape, &s[1..], self.dtype),
        ))
    }

    /// Record writing `k_new`, `v_new` (`[n_new, n_kv_heads, head_dim]` for batch 1, or
    /// `[batch, n_new, n_kv_heads, head_dim]`; any dtype) at positions `len .. len + n_new`, and
    /// advance `len` (see [`KvCache`] on when the rows hold data). The rows are visible to
    /// attention recorded later in the same encoder. Returns the rows written.
    pub fn append(
        &mut self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        k_new: &Tensor,
        v_new: &Tensor,
    ) -> Result<Appended> {
        let n_new = self.validate_append(k_new, v_new)?;
        self.record_append(ctx, encoder, k_new, v_new, n_new)?;
        Ok(self.advance(n_new))
    }

    fn advance(&mut self, n: usize) -> Appended {
        let appended = Appended { start: self.len, n };
        self.len += n;
        appended
    }

    /// [`KvCache::append`], then RoPE on the new K rows where they now sit in the cache, in the
    /// same encoder. `positions` defaults to `len .. len + n_new` for every sequence. RoPE's
    /// parameters are checked before anything is recorded. Returns the rows written; rotate the
    /// same tokens' queries with [`Appended::positions`] (not with `len()`, which has moved on).
    pub fn append_rope(
        &mut self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        k_new: &Tensor,
        v_new: &Tensor,
        rope: &Rope,
        positions: Option<Positions<'_>>,
    ) -> Result<Appended> {
        let n_new = self.validate_append(k_new, v_new)?;
        let positions = self.check_rope(rope, positions, n_new)?;
        self.record_append_rope(ctx, encoder, k_new, v_new, n_new, rope, positions)?;
        Ok(self.advance(n_new))
    }

    /// [`KvCache::append_rope`], submitted and waited for.
    pub fn append_rope_run(
        &mut self,
        ctx: &Context,
        k_new: &Tensor,
        v_new: &Tensor,
        rope: &Rope,
        positions: Option<Positions<'_>>,
    ) -> Result<Appended> {
        let n_new = self.validate_append(k_new, v_new)?;
        let positions = self.check_rope(rope, positions, n_new)?;
        ctx.submit_and_wait(OP, |enc| {
            self.record_append_rope(ctx, enc, k_new, v_new, n_new, rope, positions)
        })?;
        Ok(self.advance(n_new))
    }

    /// K rows are rotated on their way into the cache (RoPE out of place: one read of `k_new`, one
    /// write of the cache rows) when `k_new` already has the cache's dtype, and always into a
    /// quantized cache (`rope_q` quantizes the rotated rows as it writes them); otherwise they
    /// are converted by the append and rotated in place in the cache afterwards.
    #[allow(clippy::too_many_arguments)]
    fn record_append_rope(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        k_new: &Tensor,
        v_new: &Tensor,
        n_new: usize,
        rope: &Rope,
        positions: Positions<'_>,
    ) -> Result<()> {
        let (k_rows, fused, plan) = self.rope_plan(ctx, k_new, n_new, rope, positions)?;
        if fused && !crate::pipeline::fits_one_binding(ctx, &[k_new]) {
            // RoPE reads k_new past one binding: its own encode splits the rotation over runs of
            // tokens (under its own error scope), after the append has recorded V.
            ctx.scoped(OP, || {
                self.record_append_with(ctx, enc, k_new, v_new, n_new, false)
            })??;
            return match self.quant_out() {
                Some(out) => rope.encode_quantized(ctx, enc, k_new, out, positions),
                None => rope.encode_to(ctx, enc, k_new, &k_rows, positions),
            };
        }
        // Fused: k_new into the cache rows (a quantized cache's are the plan's, not a view);
        // else the rows the append converted, in place.
        let (x, out) = match (fused, self.format.is_quantized()) {
            (true, true) => (k_new, None),
            (true, false) => (k_new, Some(&k_rows)),
            (false, _) => (&k_rows, None),
        };
        ctx.scoped(OP, || {
            self.record_append_with(ctx, enc, k_new, v_new, n_new, !fused)?;
            rope.record_unscoped(ctx, enc, plan, x, None, out, positions)
        })?
    }

    /// Where `rope_q` writes the new K rows of a quantized cache (`None` for float formats):
    /// the K buffer as one quantized page, the rows from `len` on.
    fn quant_out(&self) -> Option<QuantOut<'_>> {
        let (h, c, d) = (self.n_kv_heads, self.capacity, self.head_dim);
        let rows = self.batch * h * c;
        self.format.is_quantized().then(|| QuantOut {
            format: self.format,
            dst: &self.k,
            page_elems: rows * d,
            page_words: 0,
            scale_word: self.format.scale_plane_byte(rows, d) / 4,
            scale: self.k_scale,
            view: Some((self.len * d, [h * c * d, d, c * d])),
        })
    }

    /// The cache rows the new K lands in, whether RoPE rotates it on the way in
    /// ([`KvCache::rope_fused_for`]) or in place afterwards, and RoPE's plan for that: everything
    /// RoPE checks, checked before anything is recorded (shared by the append and `prepare`).
    fn rope_plan(
        &self,
        ctx: &Context,
        k_new: &Tensor,
        n_new: usize,
        rope: &Rope,
        positions: Positions<'_>,
    ) -> Result<(Tensor, bool, RopePlan)> {
        let k_rows = self.rows(&self.k, self.len, n_new, k_new.rank());
        if let Some(out) = self.quant_out() {
            // rope_q writes the rotated rows quantized; k_rows only names their places.
            let plan = rope.plan_quantized(ctx, k_new, out, None, None, positions)?;
            return Ok((k_rows, true, plan));
        }
        let fused = self.rope_fused_for(k_new.dtype());
        let plan = if fused {
            rope.plan(ctx, k_new, None, Some(&k_rows), positions)?
        } else {
            rope.plan(ctx, &k_rows, None, None, positions)?
        };
        Ok((k_rows, fused, plan))
    }

    /// Build the pipelines that [`KvCache::append`] (`rope` `None`) or [`KvCache::append_rope`]
    /// (`rope` with its `positions` argument) would use for these new rows at the cache's
    /// current length, so the first append does not stall on shader compiles; the same checks,
    /// nothing recorded, `len` unchanged. Returns how many pipelines were built (0 when already
    /// cached).
    pub fn prepare(
        &self,
        ctx: &Context,
        k_new: &Tensor,
        v_new: &Tensor,
        rope: Option<(&Rope, Option<Positions<'_>>)>,
    ) -> Result<usize> {
        let n_new = self.validate_append(k_new, v_new)?;
        let before = ctx.cached_pipelines();
        match rope {
            None => {
                ctx.kernel(OP, &append_key(k_new.dtype(), self.format, true))?;
            }
            Some((rope, positions)) => {
                let positions = self.check_rope(rope, positions, n_new)?;
                // The same two kernels `record_append_rope` picks.
                let (_, fused, plan) = self.rope_plan(ctx, k_new, n_new, rope, positions)?;
                ctx.kernel(OP, &append_key(k_new.dtype(), self.format, !fused))?;
                ctx.kernel(crate::ops::rope::OP, &plan.variant.key())?;
            }
        }
        Ok(ctx.cached_pipelines().saturating_sub(before))
    }

    /// Which way [`KvCache::append_rope`] records K for new rows of `dtype`: `true` when RoPE
    /// writes the rotated rows straight into the cache (one pass over K): new rows of the
    /// cache's dtype, or any new rows into a quantized cache (RoPE quantizes as it writes).
    pub fn rope_fused_for(&self, dtype: DType) -> bool {
        self.format.rope_writes_k(self.dtype, dtype)
    }

    /// `[batch, n, n_kv_heads, head_dim]` view of rows `start .. start + n`.
    /// With `rank` 3 (batch 1, as a rank-3 `k_new` gives) the view is `[n, n_kv_heads, head_dim]`.
    fn rows(&self, buf: &wgpu::Buffer, start: usize, n: usize, rank: usize) -> Tensor {
        let (h, c, d) = (self.n_kv_heads, self.capacity, self.head_dim);
        if rank == 3 {
            return Tensor::with_strides(buf, start * d, &[n, h, d], &[d, c * d, 1], self.dtype);
        }
        Tensor::with_strides(
            buf,
            start * d,
            &[self.batch, n, h, d],
            &[h * c * d, d, c * d, 1],
            self.dtype,
        )
    }

    /// RoPE's own rules, checked up front so that a refused RoPE records nothing.
    fn check_rope<'a>(
        &self,
        rope: &Rope,
        positions: Option<Positions<'a>>,
        n_new: usize,
    ) -> Result<Positions<'a>> {
        rope.validate_for(self.head_dim, self.dtype)?;
        let next = Appended {
            start: self.len,
            n: n_new,
        };
        let positions = positions.unwrap_or(next.positions());
        match positions {
            Positions::Start(_) => {}
            Positions::Ids(ids) => {
                let s = ids.shape();
                crate::ensure!(
                    s == [n_new] || s == [self.batch, n_new],
                    Shape,
                    OP,
                    "position ids have shape {s:?} but must be [{n_new}] or [{}, {n_new}]",
                    self.batch
                );
                crate::ensure!(
                    rope.seq_len.is_some() || !rope.scaling.needs_seq_len(),
                    Param,
                    "rope",
                    "a positions buffer needs seq_len set on the Rope for this scaling"
                );
            }
        }
        Ok(positions)
    }

    /// [`KvCache::append`], submitted and waited for.
    pub fn append_run(
        &mut self,
        ctx: &Context,
        k_new: &Tensor,
        v_new: &Tensor,
    ) -> Result<Appended> {
        let n_new = self.validate_append(k_new, v_new)?;
        ctx.submit_and_wait(OP, |enc| self.record_append(ctx, enc, k_new, v_new, n_new))?;
        Ok(self.advance(n_new))
    }

    fn validate_append(&self, k_new: &Tensor, v_new: &Tensor) -> Result<usize> {
        k_new.validate(OP, "k_new")?;
        v_new.validate(OP, "v_new")?;
        let want_tail = [self.n_kv_heads, self.head_dim];
        let check = |t: &Tensor, name: &str| -> Result<usize> {
            let s = t.shape();
            let ok = match t.rank() {
                3 => self.batch == 1 && s[1..] == want_tail,
                4 => s[0] == self.batch && s[2..] == want_tail,
                _ => false,
            };
            crate::ensure!(
                ok,
                Shape,
                OP,
                "{name} has shape {s:?} but must be [batch {}, n_new, n_kv_heads {}, head_dim {}]{}",
                self.batch,
                self.n_kv_heads,
                self.head_dim,
                if self.batch == 1 { " or [n_new, n_kv_heads, head_dim]" } else { "" }
            );
            Ok(s[t.rank() - 3])
        };
        let n_new = check(k_new, "k_new")?;
        crate::ensure!(
            v_new.shape() == k_new.shape(),
            Shape,
            OP,
            "v_new has shape {:?} but k_new has {:?}",
            v_new.shape(),
            k_new.shape()
        );
        check(v_new, "v_new")?;
        crate::ensure!(
            v_new.dtype() == k_new.dtype(),
            DType,
            OP,
            "v_new is {} but k_new is {}",
            v_new.dtype(),
            k_new.dtype()
        );
        let own = |t: &Tensor| t.buffer() == &self.k || t.buffer() == &self.v;
        crate::ensure!(
            !self.format.is_quantized() || !(own(k_new) || own(v_new)),
            Alias,
            OP,
            "k_new / v_new live in the cache's own K or V buffer: a {} cache quantizes new rows from buffers of their own",
            self.format
        );
        crate::ensure!(
            self.len + n_new <= self.capacity,
            Shape,
            OP,
            "appending {n_new} rows at length {} would exceed the capacity {}",
            self.len,
            self.capacity
        );
        Ok(n_new)
    }
}

mod record;

#[cfg(test)]
mod tests {
    #[test]
    fn params_is_80_bytes() {
        assert_eq!(std::mem::size_of::<super::Params>(), 80);
    }
}

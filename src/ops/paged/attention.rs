//! Attention over the pages: [`Attention::encode_paged`], its validation and recording, and the
//! pipeline keys of the paged attention kernels.

use super::batch::{PagedBatch, DECODE_SG_GROUPS, KEYS_GROUPS, PREFILL_SG_GROUP};
use super::cache::PagedKvCache;
use super::MAX_POOL_BUFFERS;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kv_format::KvFormat;
use crate::ops::attention::{self, Attention, Inputs};
use crate::pipeline::{PipelineKey, Shader, Window};
use crate::tensor::{DType, Tensor};

/// The storage format of q / out and of the pages' K/V.
pub type Formats = (DType, KvFormat);

/// The pipeline key of the DecodeSubgroup pass over pages in `f` (q / out dtype, K/V format)
/// for work items of `rs` rows, for subgroups of at least `sg_min` lanes, over a pool of `pools`
/// buffers. The kernel's own rows per step (`RS`) are `rs`, or fewer where the K/V format's
/// registers hold fewer ([`attention::sg_rows_max_kv`]: quantized pools), the kernel then taking
/// a work item's rows in several steps.
pub fn sg_attention_key(f: Formats, hd4: u32, rs: u32, sg_min: u32, pools: u32) -> PipelineKey {
    let sh = attention::sg_shape(hd4, sg_min, f.1);
    let rs = rs.min(attention::sg_rows_max_kv(hd4, sg_min, f.1));
    let mut c = paged_constants(f, sh.wg, attention::tile_v4_for(16384), hd4, pools);
    c.extend(attention::sg_key_constants(&sh, rs));
    PipelineKey::new(ATTENTION_PAGED_SUBGROUP, "attn_paged_sg", c)
}

/// The pipeline key of the merge of a batch with DecodeSubgroup rows (`attn_paged_merge_rows`,
/// one workgroup per packed token and query head) over a pool of `pools` buffers.
pub fn merge_rows_key(dtype: DType, tile_v4: u32, hd4: u32, pools: u32) -> PipelineKey {
    let c = paged_constants(float(dtype), attention::MERGE_WG, tile_v4, hd4, pools);
    PipelineKey::new(Shader::ATTENTION_PAGED, "attn_paged_merge_rows", c)
}

/// `dtype` with its float K/V format: the merges read partials only.
fn float(dtype: DType) -> Formats {
    (dtype, KvFormat::from_dtype(dtype))
}

/// The constants every paged attention pipeline sets: storage formats, workgroup size, K/V tile
/// size, head_dim / 4 and the pool's buffer count.
fn paged_constants(
    (dtype, kv): Formats,
    wg: u32,
    tile_v4: u32,
    hd4: u32,
    pools: u32,
) -> Vec<(&'static str, u32)> {
    vec![
        ("DTYPE", dtype.shader_code()),
        ("KV_FMT", kv.shader_code()),
        ("WG", wg),
        ("TILE_V4", tile_v4),
        ("HD4", hd4),
        ("POOLS", pools),
    ]
}

/// `shaders/attention_paged.wgsl` with the subgroup decode step and its paged entry point
/// (`shaders/attention_subgroup.wgsl`, `shaders/attention_paged_subgroup.wgsl`): a module of its
/// own, because a module that uses subgroup operations anywhere fails validation on devices
/// without `SUBGROUP`.
pub const ATTENTION_PAGED_SUBGROUP: &Shader = &Shader {
    name: "attention_paged_subgroup.wgsl",
    parts: &[
        "enable subgroups;\ndiagnostic(off, subgroup_uniformity);",
        crate::pipeline::COMMON_WGSL,
        crate::pipeline::KV_QUANT_WGSL,
        crate::pipeline::ATTENTION_COMMON_WGSL,
        crate::pipeline::ATTENTION_SPLIT_WGSL,
        crate::pipeline::ATTENTION_KEYS_WGSL,
        include_str!("../../../shaders/attention_paged.wgsl"),
        crate::pipeline::ATTENTION_SUBGROUP_WGSL,
        attention::SG_ITEM_PACKED,
        include_str!("../../../shaders/attention_paged_subgroup.wgsl"),
    ],
    variants: sg_variant_keys,
};

/// Every pipeline key of `attn_paged_sg`: every dtype at the head_dims of real models, for the
/// smallest subgroups of lavapipe and Intel (8) and of NVIDIA and AMD RDNA (32), every row count
/// the planner can pick, over float pools, and over quantized ones at Llama's head_dim 128
/// (`formats`: their code differs from the float pools' only in the reads).
pub fn sg_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for hd in [64u32, 80, 96, 128, 256] {
        for f in formats(hd) {
            for sg_min in [8, 32] {
                for rs in [1, 2, 4, 8] {
                    if rs <= attention::sg_rows_max(hd / 4, sg_min) {
                        keys.push(sg_attention_key(f, hd / 4, rs, sg_min, 1));
                    }
                }
            }
        }
    }
    // Packed 8-bit q·k (`Attention::int8_dot`) over the block formats at Llama's head_dim, for
    // lavapipe's and Intel's subgroups, one row per step (the step is the contiguous kernel's).
    for f in formats(128).into_iter().filter(|f| f.1.is_block()) {
        keys.push(attention::with_int8_dot(sg_attention_key(f, 32, 1, 8, 1)));
    }
    let f16 = (DType::F16, KvFormat::F16);
    // The masked pass at Llama's head_dim.
    keys.push(attention::with_masks(sg_attention_key(f16, 32, 1, 32, 1)));
    // A pool over three buffers at Llama's head_dim.
    for rs in [1, 4] {
        keys.push(sg_attention_key(f16, 32, rs, 32, MAX_POOL_BUFFERS as u32));
    }
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

/// The pipeline key of the PrefillSubgroup pass over pages (`attn_paged_prefill_sg`) of K/V
/// format `f.1` (float or quantized, read in place) with K/V tiles of `tile_v4` vec4s, for subgroups of at least `sg_min` lanes, over a pool of `pools`
/// buffers.
pub fn prefill_sg_attention_key(
    f: Formats,
    tile_v4: u32,
    hd4: u32,
    sg_min: u32,
    pools: u32,
) -> PipelineKey {
    let sh = attention::prefill_sg_shape(hd4, sg_min);
    let mut c = paged_constants(f, sh.invocations, tile_v4, hd4, pools);
    c.extend([
        ("R", sh.rows_per_group),
        ("SLOTS", sh.slots),
        ("L", sh.lanes_per_row),
    ]);
    PipelineKey::new(ATTENTION_PAGED_PREFILL_SUBGROUP, "attn_paged_prefill_sg", c)
}

/// `key` (a subgroup pass) with packed 8-bit q·k where `int8_dot` ([`Attention::int8_dot`]).
fn int8_key(key: PipelineKey, int8_dot: bool) -> PipelineKey {
    match int8_dot {
        true => attention::with_int8_dot(key),
        false => key,
    }
}

/// `shaders/attention_paged.wgsl` with the GPU prefill step and its paged entry point
/// (`shaders/attention_prefill_sg_step.wgsl`, `shaders/attention_paged_prefill_subgroup.wgsl`):
/// a module of its own, as [`ATTENTION_PAGED_SUBGROUP`] is.
pub const ATTENTION_PAGED_PREFILL_SUBGROUP: &Shader = &Shader {
    name: "attention_paged_prefill_subgroup.wgsl",
    parts: &[
        "enable subgroups;",
        crate::pipeline::COMMON_WGSL,
        crate::pipeline::KV_QUANT_WGSL,
        crate::pipeline::ATTENTION_COMMON_WGSL,
        crate::pipeline::ATTENTION_SPLIT_WGSL,
        crate::pipeline::ATTENTION_KEYS_WGSL,
        include_str!("../../../shaders/attention_paged.wgsl"),
        crate::pipeline::ATTENTION_PREFILL_SG_STEP_WGSL,
        include_str!("../../../shaders/attention_paged_prefill_subgroup.wgsl"),
    ],
    variants: prefill_sg_variant_keys,
};

/// Every pipeline key of `attn_paged_prefill_sg`: every dtype at the head_dims of real models
/// with 32 KiB tiles, for the smallest subgroups of lavapipe and Intel (8) and of NVIDIA and AMD
/// RDNA (32), over float pools, and over quantized ones at Llama's head_dim 128 (`formats`);
/// and a pool over three buffers at Llama's head_dim.
pub fn prefill_sg_variant_keys() -> Vec<PipelineKey> {
    let tile = attention::tile_v4_for(32768);
    let mut keys = Vec::new();
    for hd in [64u32, 80, 96, 128, 256] {
        for f in formats(hd) {
            for sg_min in [8, 32] {
                keys.push(prefill_sg_attention_key(f, tile, hd / 4, sg_min, 1));
            }
        }
    }
    // Packed 8-bit q·k (`Attention::int8_dot`) over the block formats at Llama's head_dim, for
    // lavapipe's and Intel's subgroups (the step is the contiguous kernel's).
    for f in formats(128).into_iter().filter(|f| f.1.is_block()) {
        keys.push(attention::with_int8_dot(prefill_sg_attention_key(
            f, tile, 32, 8, 1,
        )));
    }
    keys.push(prefill_sg_attention_key(
        float(DType::F16),
        tile,
        32,
        32,
        MAX_POOL_BUFFERS as u32,
    ));
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

/// The pipeline keys of paged attention over a pool of `pools` buffers: partial and merge passes
/// (the merge reads partials only: one pipeline for every K/V format of a dtype).
pub fn attention_keys(f: Formats, tile_v4: u32, hd4: u32, pools: u32) -> [PipelineKey; 2] {
    let c = paged_constants(f, attention::DECODE_WG, tile_v4, hd4, pools);
    let m = paged_constants(
        (f.0, KvFormat::from_dtype(f.0)),
        attention::DECODE_WG,
        tile_v4,
        hd4,
        pools,
    );
    [
        PipelineKey::new(Shader::ATTENTION_PAGED, "attn_paged_partial", c),
        PipelineKey::new(Shader::ATTENTION_PAGED, "attn_paged_merge", m),
    ]
}

/// The (q dtype, K/V format) pairs declared at a head_dim: each dtype with its float format, and
/// at Llama's head_dim 128 with the quantized ones too (their code differs from the float
/// pools' only in the reads, which head_dim does not change).
fn formats(hd: u32) -> Vec<Formats> {
    DType::ALL
        .iter()
        .flat_map(|&d| attention::variants::kv_formats(d).map(|kv| (d, kv)))
        .filter(|f| hd == 128 || !f.1.is_quantized())
        .collect()
}

/// The pipeline key of the DecodeKeys pass over pages with `kr` rows per workgroup, over a pool
/// of `pools` buffers (the tile size does not shape its code; it keeps the smallest).
pub fn keys_attention_key(f: Formats, hd4: u32, kr: u32, pools: u32) -> PipelineKey {
    let mut c = paged_constants(
        f,
        attention::KEYS_WG,
        attention::tile_v4_for(16384),
        hd4,
        pools,
    );
    c.push(("KR", kr));
    PipelineKey::new(Shader::ATTENTION_PAGED, "attn_paged_keys", c)
}

/// Every pipeline key of `shaders/attention_paged.wgsl` (for the portability tests): every dtype
/// and tile size at the head_dims of real models, and the DecodeKeys pass at each row count,
/// over a pool in one buffer (the quantized K/V formats at head_dim 128, `formats`); and every
/// pool buffer count at Llama's head_dim.
pub fn attention_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for hd in [64u32, 80, 96, 128, 256] {
        for f in formats(hd) {
            for limit in [16384, 32768] {
                let tile_v4 = attention::tile_v4_for(limit);
                keys.extend(attention_keys(f, tile_v4, hd / 4, 1));
                if !f.1.is_quantized() {
                    keys.push(merge_rows_key(f.0, tile_v4, hd / 4, 1));
                }
            }
            for kr in [1, 2, 4] {
                keys.push(keys_attention_key(f, hd / 4, kr, 1));
            }
        }
    }
    let f16 = (DType::F16, KvFormat::F16);
    // The masked passes at Llama's head_dim, over the largest pool (the most bindings).
    let pools = MAX_POOL_BUFFERS as u32;
    keys.push(attention::with_masks(
        attention_keys(f16, attention::tile_v4_for(16384), 32, pools)[0].clone(),
    ));
    keys.push(attention::with_masks(keys_attention_key(f16, 32, 1, pools)));
    for pools in 2..=MAX_POOL_BUFFERS as u32 {
        keys.extend(attention_keys(
            f16,
            attention::tile_v4_for(16384),
            32,
            pools,
        ));
        keys.push(keys_attention_key(f16, 32, 4, pools));
        keys.push(merge_rows_key(
            DType::F16,
            attention::tile_v4_for(16384),
            32,
            pools,
        ));
    }
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

impl Attention {
    /// Record attention of every sequence of `batch` over its pages: `q` and `out` are
    /// `[total_q, n_heads, head_dim]` packed like the batch (any outer strides), in the cache's
    /// dtype; `inputs`: sinks `[n_heads]` f32 as in [`Attention::encode`], and masks, each
    /// sequence's after the one before (a tree-shaped draft chunk is a prefill chunk with a
    /// tree mask). `q_offset` and `kind` must be unset (every sequence is aligned bottom-right;
    /// there is one kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_paged<'a>(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        cache: &PagedKvCache,
        batch: &PagedBatch,
        inputs: impl Into<Inputs<'a>>,
        out: &Tensor,
    ) -> Result<()> {
        let op = "paged_attention";
        let inputs = inputs.into();
        let c = self.validate_paged(ctx, q, cache, batch, &inputs, out)?;
        ctx.scoped(op, || {
            self.record_paged(ctx, encoder, &c, q, cache, batch, &inputs, out)
        })?
    }

    /// [`Attention::encode_paged`], submitted and waited for.
    #[allow(clippy::too_many_arguments)]
    pub fn run_paged<'a>(
        &self,
        ctx: &Context,
        q: &Tensor,
        cache: &PagedKvCache,
        batch: &PagedBatch,
        inputs: impl Into<Inputs<'a>>,
        out: &Tensor,
    ) -> Result<()> {
        let inputs = inputs.into();
        let c = self.validate_paged(ctx, q, cache, batch, &inputs, out)?;
        ctx.submit_and_wait("paged_attention", |enc| {
            self.record_paged(ctx, enc, &c, q, cache, batch, &inputs, out)
        })
    }

    /// Build the pipelines that [`Attention::encode_paged`] would use for this call (the same
    /// validation, nothing recorded), so the first step of a serving loop does not stall on
    /// shader compiles. The passes depend on the batch's mix of prefill and decode rows: prepare
    /// with a batch shaped like the ones the loop will run (a prompt chunk and a decode step).
    /// Returns how many pipelines were built (0 when already cached).
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_paged<'a>(
        &self,
        ctx: &Context,
        q: &Tensor,
        cache: &PagedKvCache,
        batch: &PagedBatch,
        inputs: impl Into<Inputs<'a>>,
        out: &Tensor,
    ) -> Result<usize> {
        let op = "paged_attention";
        let c = self.validate_paged(ctx, q, cache, batch, &inputs.into(), out)?;
        let before = ctx.cached_pipelines();
        if batch.total_q > 0 {
            build_passes(ctx, op, &c, cache, batch)?;
        }
        Ok(ctx.cached_pipelines().saturating_sub(before))
    }

    fn validate_paged(
        &self,
        ctx: &Context,
        q: &Tensor,
        cache: &PagedKvCache,
        batch: &PagedBatch,
        inputs: &Inputs,
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
        inputs.check_common(op, h.n_heads, out)?;
        let masks = inputs.paged_flags(op, h.n_heads, batch.mask_sizes())?;
        crate::ensure!(
            q.buffer() != out.buffer(),
            Alias,
            op,
            "out shares a buffer with q"
        );
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
        let part_bytes = batch.parts as u64 * (h.head_dim as u64 + 4) * 4;
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
        // Quantized pages are read by words (8 values per unit), whatever the alignment.
        let keys_rows_ok =
            cache.format.is_quantized() || (h.head_dim * cache.dtype.size()).is_multiple_of(16);
        // The kernels planned that read K/V rows with 16-byte loads.
        let wide: Vec<&str> = [
            (
                batch.items[KEYS_GROUPS].iter().any(|g| g.1 > 0),
                "DecodeKeys",
            ),
            (
                batch.items[DECODE_SG_GROUPS].iter().any(|g| g.1 > 0),
                "DecodeSubgroup",
            ),
            (batch.items[PREFILL_SG_GROUP].1 > 0, "PrefillSubgroup"),
        ]
        .into_iter()
        .filter_map(|(planned, name)| planned.then_some(name))
        .collect();
        crate::ensure!(
            keys_rows_ok || wide.is_empty(),
            Param,
            op,
            "the {} {} 16-byte aligned K/V rows: head_dim {} x {} bytes is not a multiple of 16",
            wide.join(" and "),
            if wide.len() > 1 {
                "kernels need"
            } else {
                "kernel needs"
            },
            h.head_dim,
            cache.dtype.size()
        );
        // The subgroup kernels read whole 16-byte units of a row (fp8 rows at head_dims that are
        // not multiples of 16 are not); the batch was planned before the pool was known.
        let subgroup_rows = batch.items[DECODE_SG_GROUPS].iter().any(|g| g.1 > 0);
        for (planned, kernel, option) in [
            (
                subgroup_rows,
                "DecodeSubgroup",
                "decode: Some(Kind::Decode)",
            ),
            (
                batch.items[PREFILL_SG_GROUP].1 > 0,
                "PrefillSubgroup",
                "prefill: Some(Kind::Prefill)",
            ),
        ] {
            crate::ensure!(
                !planned || attention::sg_reads_rows(cache.format, h.head_dim),
                Param,
                op,
                "the batch was planned with the {kernel} kernel, which reads whole 16-byte units of a K/V row: {} rows of head_dim {} are not (fp8 needs a multiple of 16); plan the batch with PlanOptions {{ kv_format: Some(KvFormat::{:?}), .. }} or {{ {option}, .. }}",
                cache.format,
                h.head_dim,
                cache.format
            );
        }
        crate::ensure!(
            ctx.caps().subgroups || batch.items[DECODE_SG_GROUPS.start..].iter().all(|g| g.1 == 0),
            Limit,
            op,
            "the batch was planned with the DecodeSubgroup or PrefillSubgroup kernel, which needs a device with the SUBGROUP feature (adapter {:?})",
            ctx.adapter_info().name
        );
        if self.int8_dot {
            crate::ensure!(
                cache.format.is_block(),
                Param,
                op,
                "int8_dot (packed 8-bit q·k) needs q8_0 or q4_0 K, whose values are int8 (q4_0: q - 8); the pool holds {}",
                cache.format
            );
            crate::ensure!(
                subgroup_rows || batch.items[PREFILL_SG_GROUP].1 > 0,
                Param,
                op,
                "int8_dot (packed 8-bit q·k) is implemented by the DecodeSubgroup and PrefillSubgroup kernels only, and the batch has neither kind of rows (plan it with PlanOptions {{ decode: Some(Kind::DecodeSubgroup), .. }} or {{ prefill: Some(Kind::PrefillSubgroup), .. }} on a device with SUBGROUP)"
            );
        }
        let pools = cache.buffers.len() as u32;
        let mut keys = attention_keys(cache.formats(), tile_v4, hd4, pools);
        if subgroup_rows {
            keys[1] = merge_rows_key(cache.dtype, tile_v4, hd4, pools);
        }
        if masks != 0 {
            keys[0] = attention::with_masks(keys[0].clone());
        }
        Ok(PagedChecked {
            keys,
            masks,
            merge_rows: subgroup_rows,
            int8_dot: self.int8_dot,
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
        inputs: &Inputs,
        out: &Tensor,
    ) -> Result<()> {
        let op = "paged_attention";
        if batch.total_q == 0 {
            return Ok(());
        }
        let h = batch.heads;
        let qw = Window::covering(ctx, op, &[q])?;
        let ow = Window::covering(ctx, op, &[out])?;
        let aux = inputs.bind(ctx, op, c.masks)?;
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
            k_sc: cache.page_words() as u32,
            v_sc: cache.page_scale_half() as u32,
            k_scale: cache.k_scale,
            v_scale: cache.v_scale,
            ..self.logit_params(h.n_heads, c.scale, c.bounds, &aux)
        };
        let part = ctx.scratch(op, c.part_bytes.max(16))?;
        let part_res = || {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &part,
                offset: 0,
                size: std::num::NonZeroU64::new(c.part_bytes.max(16)),
            })
        };
        // Every pipeline is compiled before anything is recorded, so a failure records nothing.
        let passes = build_passes(ctx, op, c, cache, batch)?;
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
        if let Some(w) = &aux.window {
            inputs.push(("aux", w.resource()));
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
        if let Some(w) = &aux.window {
            merge.push(("aux", w.resource()));
        }
        let rows = (batch.total_q * h.n_heads) as u64;
        let merge_wgs = match c.merge_rows {
            true => rows,
            false => (rows * h.head_dim as u64 / 4).div_ceil(attention::DECODE_WG as u64),
        };
        ctx.encode_kernel(op, enc, &c.keys[1], &params, &merge, merge_wgs)
    }
}

/// The call's partial passes ([`paged_passes`]) with every pipeline they and the merge use built,
/// so that a failure records nothing (`encode_paged`) and a warm-up builds what the call will use
/// (`prepare_paged`).
fn build_passes(
    ctx: &Context,
    op: &'static str,
    c: &PagedChecked,
    cache: &PagedKvCache,
    batch: &PagedBatch,
) -> Result<Vec<(PipelineKey, usize, usize)>> {
    let passes = paged_passes(c, cache, batch);
    for (key, _, _) in &passes {
        ctx.kernel(op, key)?;
    }
    ctx.kernel(op, &c.keys[1])?;
    Ok(passes)
}

struct PagedChecked {
    keys: [PipelineKey; 2],
    // `p.masks` bits of the inputs (the partial passes' keys are the masked variants).
    masks: u32,
    // The merge is `attn_paged_merge_rows` (the batch has DecodeSubgroup rows).
    merge_rows: bool,
    // The DecodeSubgroup and PrefillSubgroup rows score by packed 8-bit products
    // (`Attention::int8_dot`).
    int8_dot: bool,
    bk: u32,
    part_bytes: u64,
    scale: f32,
    bounds: (i32, i32),
}

/// The partial passes present in `batch` (tile kernel, DecodeKeys with 1, 2, 4 rows per
/// workgroup, DecodeSubgroup with 1, 2, 4, 8, PrefillSubgroup): each pass's key and its (offset,
/// count) of work items.
fn paged_passes(
    c: &PagedChecked,
    cache: &PagedKvCache,
    batch: &PagedBatch,
) -> Vec<(PipelineKey, usize, usize)> {
    let hd4 = (batch.heads.head_dim / 4) as u32;
    let pools = cache.buffers.len() as u32;
    let mut passes = Vec::new();
    for (g, &(off, n)) in batch.items.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let key = if KEYS_GROUPS.contains(&g) {
            let rows = 1 << (g - KEYS_GROUPS.start);
            keys_attention_key(cache.formats(), hd4, rows, pools)
        } else if DECODE_SG_GROUPS.contains(&g) {
            let rows = 1 << (g - DECODE_SG_GROUPS.start);
            int8_key(
                sg_attention_key(cache.formats(), hd4, rows, batch.sg_min, pools),
                c.int8_dot,
            )
        } else if g == PREFILL_SG_GROUP {
            let tile_v4 = c.keys[0].constant("TILE_V4").unwrap_or(1);
            int8_key(
                prefill_sg_attention_key(cache.formats(), tile_v4, hd4, batch.sg_min, pools),
                c.int8_dot,
            )
        } else {
            c.keys[0].clone()
        };
        let key = match (g, c.masks) {
            (1.., 1..) => attention::with_masks(key),
            _ => key,
        };
        passes.push((key, off, n));
    }
    passes
}

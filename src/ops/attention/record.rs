//! Recording one call: the uniform parameters ([`Params`]), [`Attention::encode`]'s validation
//! (every rule before any GPU work), and the passes it records.

use super::inputs::{Aux, Inputs};
use super::{kv_rows_aligned, Dims, Kind, Plan, OP, PREFILL_WG};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kv_format::{KvFormat, QuantReads};
use crate::pipeline::Window;
use crate::tensor::{DType, Tensor};
use crate::Attention;

/// Uniform parameters; mirrors `struct Params` in both attention shaders (192 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Batch size.
    pub batch: u32,
    /// Query rows per sequence.
    pub q_len: u32,
    /// Key/value rows per sequence.
    pub kv_len: u32,
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads.
    pub n_kv_heads: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// Query heads per key/value head.
    pub group: u32,
    /// Query rows per (batch, kv head): `q_len * group`.
    pub rows: u32,
    /// q: element offset, batch, token and head strides.
    pub q: [u32; 4],
    /// k: element offset, batch, token and head strides.
    pub k: [u32; 4],
    /// v: element offset, batch, token and head strides.
    pub v: [u32; 4],
    /// out: element offset, batch, token and head strides.
    pub o: [u32; 4],
    /// Position of query 0.
    pub q_offset: i32,
    /// Keys with `pos - j > win_left` are masked (-1 = no left bound).
    pub win_left: i32,
    /// 1 for a causal mask.
    pub causal: u32,
    /// 1 when sinks are bound.
    pub has_sinks: u32,
    /// Logit scale.
    pub scale: f32,
    /// Logit softcap (0 = none).
    pub softcap: f32,
    /// Element offset of the sinks.
    pub s_off: u32,
    /// Keys per K/V tile.
    pub bk: u32,
    /// Workgroups per (batch, kv head, split).
    pub row_blocks: u32,
    /// Key chunks (split-KV).
    pub n_splits: u32,
    /// Keys per chunk.
    pub chunk: u32,
    /// Query rows per workgroup.
    pub rows_per_wg: u32,
    /// Invocations that share a row (split-KV).
    pub lanes: u32,
    /// Keys with `j - pos > win_right` are masked (-1 = no right bound).
    pub win_right: i32,
    /// Chunked local attention: chunk size in positions (0 = none).
    pub attn_chunk: u32,
    /// ALiBi: the largest power of two `<= n_heads` (0 = off), from which the shaders derive
    /// BLOOM's slopes (`alibi_slope` in `shaders/attention_common.wgsl`).
    pub alibi: u32,
    /// Quantized K: f16 number of the first scale of the scale plane (whole buffer bound).
    pub k_sc: u32,
    /// Quantized V: the same.
    pub v_sc: u32,
    /// fp8 K's per-tensor scale.
    pub k_scale: f32,
    /// fp8 V's per-tensor scale.
    pub v_scale: f32,
    /// Mask inputs bound (`MASK_*` bits of `shaders/attention_common.wgsl`).
    pub masks: u32,
    /// Word offset of the packed mask in the `aux` binding.
    pub mask_off: u32,
    /// Element offset of the bias in `aux`.
    pub bias_off: u32,
    /// Element offset of the block ids in `aux`.
    pub ids_off: u32,
}

struct Checked {
    dims: Dims,
    plan: Plan,
    q_offset: i64,
    scale: f32,
    // (left, right) window bounds for the shader (-1 = none).
    bounds: (i32, i32),
    // (offset placeholder, batch stride, token stride, head stride) per tensor.
    strides: [[usize; 3]; 4],
    // Quantized K/V of a cache.
    quant: Option<QuantReads>,
    // `p.masks` bits of the inputs.
    masks: u32,
}

/// (batch stride, token stride, head stride) of a rank-3 or rank-4 view.
fn outer_strides(t: &Tensor) -> [usize; 3] {
    let s = t.strides();
    if t.rank() == 4 {
        [if t.shape()[0] == 1 { 0 } else { s[0] }, s[1], s[2]]
    } else {
        [0, s[0], s[1]]
    }
}

impl Attention {
    /// The masking and logit fields of the shaders' parameters (shared by the contiguous and
    /// paged calls); the caller fills in the shapes.
    pub(crate) fn logit_params(
        &self,
        n_heads: usize,
        scale: f32,
        bounds: (i32, i32),
        aux: &Aux,
    ) -> Params {
        Params {
            win_left: bounds.0,
            win_right: bounds.1,
            attn_chunk: self.chunk_size,
            causal: self.causal as u32,
            has_sinks: aux.has_sinks as u32,
            scale,
            softcap: self.softcap,
            alibi: if self.alibi {
                crate::reference::attention::alibi_pow2(n_heads) as u32
            } else {
                0
            },
            s_off: aux.s_off,
            masks: aux.masks,
            mask_off: aux.mask_off,
            bias_off: aux.bias_off,
            ids_off: aux.ids_off,
            ..Params::default()
        }
    }
}

/// Sinks, when given, are `[n_heads]` f32 (shared by the contiguous and paged calls).
pub(crate) fn check_sinks(op: &'static str, sinks: Option<&Tensor>, n_heads: usize) -> Result<()> {
    if let Some(s) = sinks {
        s.validate(op, "sinks")?;
        s.expect_dtype(op, "sinks", DType::F32)?;
        crate::ensure!(
            s.shape() == [n_heads],
            Shape,
            op,
            "sinks has shape {:?} but must be [{n_heads}] (one per query head)",
            s.shape()
        );
    }
    Ok(())
}
impl Attention {
    #[allow(clippy::too_many_arguments)]
    fn validate(
        &self,
        ctx: &Context,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        inputs: &Inputs,
        out: &Tensor,
        quant: Option<QuantReads>,
    ) -> Result<Checked> {
        q.validate(OP, "q")?;
        let dtype = q.dtype();
        // A quantized cache's K/V views give the places of its elements, not float storage: the
        // cache made them, and the kernels bind its whole buffers.
        if quant.is_none() {
            k.validate(OP, "k")?;
            v.validate(OP, "v")?;
            k.expect_dtype(OP, "k", dtype)?;
            v.expect_dtype(OP, "v", dtype)?;
        }
        out.validate_written(OP, "out")?;
        let d = self.dims(q, k, v)?;
        out.expect_dtype(OP, "out", dtype)?;
        crate::ensure!(
            out.shape() == q.shape(),
            Shape,
            OP,
            "out has shape {:?} but q has {:?}",
            out.shape(),
            q.shape()
        );
        inputs.check_common(OP, d.n_heads, out)?;
        let masks = inputs.contiguous_flags(OP, &d)?;
        self.check_options(OP)?;
        if let Some(s) = self.splits {
            crate::ensure!(
                (1..=65535).contains(&s),
                Param,
                OP,
                "splits must be in 1..=65535, got {s}"
            );
        }
        let q_offset = self.q_offset.unwrap_or(d.kv_len as i64 - d.q_len as i64);
        crate::ensure!(
            q_offset + d.q_len as i64 <= d.kv_len as i64,
            Shape,
            OP,
            "q_offset {q_offset} puts the last query at position {} past the last key {} (kv_len {})",
            q_offset + d.q_len as i64 - 1,
            d.kv_len as i64 - 1,
            d.kv_len
        );
        crate::ensure!(
            q_offset >= i32::MIN as i64 / 2 && d.kv_len < i32::MAX as usize / 2,
            Limit,
            OP,
            "q_offset {q_offset} and kv_len {} must fit 31-bit positions",
            d.kv_len
        );
        // Binding rules: out is the only written tensor and must not share a buffer with inputs.
        for (name, t) in [("q", q), ("k", k), ("v", v)] {
            crate::ensure!(
                t.buffer() != out.buffer(),
                Alias,
                OP,
                "out shares a buffer with {name}; attention cannot run in place"
            );
        }
        // Quantized rows are whole blocks (or fp8 rows of a multiple of 8 values) read by words.
        let aligned = quant.is_some() || kv_rows_aligned(ctx, k, v);
        crate::ensure!(
            aligned
                || !matches!(
                    self.kind,
                    Some(Kind::DecodeKeys | Kind::PrefillKeys | Kind::PrefillSubgroup)
                ),
            Param,
            OP,
            "the {:?} kernel needs 16-byte aligned K/V rows (offsets, strides and head_dim {} x {} bytes multiples of 16)",
            self.kind.unwrap_or(Kind::DecodeKeys),
            d.head_dim,
            dtype.size()
        );
        crate::ensure!(
            self.kind != Some(Kind::DecodeSubgroup) || ctx.caps().subgroups,
            Param,
            OP,
            "the DecodeSubgroup kernel needs a device with the SUBGROUP feature"
        );
        let kv = quant.map_or(KvFormat::from_dtype(dtype), |r| r.format);
        let mut plan = self.plan_for(ctx, d, dtype, kv, aligned)?;
        plan.variant.masks = masks != 0;
        let scale = self.scale.unwrap_or(1.0 / (d.head_dim as f32).sqrt());
        Ok(Checked {
            dims: d,
            plan,
            q_offset,
            scale,
            bounds: self.window_bounds(d.kv_len, q_offset),
            strides: [
                outer_strides(q),
                outer_strides(k),
                outer_strides(v),
                outer_strides(out),
            ],
            quant,
            masks,
        })
    }

    /// Record `out = attention(q, k, v)` into `encoder`. `inputs`: sinks and masks
    /// ([`Inputs`]; `None` or `Some(&sinks)` for sinks alone).
    #[allow(clippy::too_many_arguments)]
    pub fn encode<'a>(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        inputs: impl Into<Inputs<'a>>,
        out: &Tensor,
    ) -> Result<()> {
        let inputs = inputs.into();
        let c = self.validate(ctx, q, k, v, &inputs, out, None)?;
        ctx.scoped(OP, || {
            self.record_unscoped(ctx, encoder, &c, q, k, v, &inputs, out)
        })?
    }

    /// [`Attention::encode`], submitted and waited for.
    pub fn run<'a>(
        &self,
        ctx: &Context,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        inputs: impl Into<Inputs<'a>>,
        out: &Tensor,
    ) -> Result<()> {
        let inputs = inputs.into();
        let c = self.validate(ctx, q, k, v, &inputs, out, None)?;
        ctx.submit_and_wait(OP, |enc| {
            self.record_unscoped(ctx, enc, &c, q, k, v, &inputs, out)
        })
    }

    /// Record attention over the rows `0..len` of a KV cache (`q` batched like the cache; a rank-3
    /// `q` needs a cache of batch 1).
    pub fn encode_cached<'a>(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        cache: &crate::ops::kv_cache::KvCache,
        inputs: impl Into<Inputs<'a>>,
        out: &Tensor,
    ) -> Result<()> {
        let inputs = inputs.into();
        let (k, v) = self.cached_views(q, cache)?;
        let c = self.validate(ctx, q, &k, &v, &inputs, out, cache.quant_reads())?;
        ctx.scoped(OP, || {
            self.record_unscoped(ctx, encoder, &c, q, &k, &v, &inputs, out)
        })?
    }

    /// The cache's K/V views for `q`, after the rules that only a cache call has, phrased about
    /// q and the cache rather than about the k and v views the user never built.
    fn cached_views(
        &self,
        q: &Tensor,
        cache: &crate::ops::kv_cache::KvCache,
    ) -> Result<(Tensor, Tensor)> {
        let rank = q.rank();
        crate::ensure!(
            rank == 3 || rank == 4,
            Shape,
            OP,
            "q must be rank 3 [q_len, n_heads, head_dim] or rank 4 [batch, q_len, n_heads, head_dim], got shape {:?}",
            q.shape()
        );
        let views = cache.views_for(OP, rank)?;
        crate::ensure!(
            q.dtype() == cache.dtype(),
            DType,
            OP,
            "q is {} but the KV cache holds {}: q's dtype must match the cache's",
            q.dtype(),
            cache.dtype()
        );
        // Every query must be a token whose K/V is already in the cache (append first, then
        // attend); otherwise its causal row sees no key and the output would be zeros.
        let q_len = q.shape()[rank - 3];
        let len = cache.len();
        match self.q_offset {
            None => crate::ensure!(
                q_len <= len,
                Shape,
                OP,
                "q has q_len {q_len} but the KV cache holds {len} rows: append the new tokens' K/V to the cache before attending over it"
            ),
            Some(o) => crate::ensure!(
                o >= 0,
                Shape,
                OP,
                "q_offset {o} puts q's first token before the KV cache's first row (q_len {q_len}, cache length {len})"
            ),
        }
        Ok(views)
    }

    /// [`Attention::encode_cached`], submitted and waited for.
    pub fn run_cached<'a>(
        &self,
        ctx: &Context,
        q: &Tensor,
        cache: &crate::ops::kv_cache::KvCache,
        inputs: impl Into<Inputs<'a>>,
        out: &Tensor,
    ) -> Result<()> {
        let inputs = inputs.into();
        let (k, v) = self.cached_views(q, cache)?;
        let c = self.validate(ctx, q, &k, &v, &inputs, out, cache.quant_reads())?;
        ctx.submit_and_wait(OP, |enc| {
            self.record_unscoped(ctx, enc, &c, q, &k, &v, &inputs, out)
        })
    }

    /// Record one call; runs under the caller's one error scope (`encode` opens it; `run`'s submit does).
    #[allow(clippy::too_many_arguments)]
    fn record_unscoped(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        c: &Checked,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        inputs: &Inputs,
        out: &Tensor,
    ) -> Result<()> {
        let d = c.dims;
        let plan = c.plan;
        let qw = Window::covering(ctx, OP, &[q])?;
        // Quantized K/V: the whole cache buffers (they fit one binding, checked at creation),
        // so element offsets are the views' own.
        let whole = |t: &Tensor| Window {
            buffer: t.buffer().clone(),
            byte_start: 0,
            byte_len: t.buffer().size(),
        };
        let (kw, vw) = match c.quant {
            Some(_) => (whole(k), whole(v)),
            None => (
                Window::covering(ctx, OP, &[k])?,
                Window::covering(ctx, OP, &[v])?,
            ),
        };
        let ow = Window::covering(ctx, OP, &[out])?;
        let aux = inputs.bind(ctx, OP, c.masks)?;
        let pack = |w: &Window, t: &Tensor, s: [usize; 3]| -> Result<[u32; 4]> {
            let v = [w.elem_offset(t) as usize, s[0], s[1], s[2]];
            let mut o = [0u32; 4];
            for i in 0..4 {
                o[i] = u32::try_from(v[i]).map_err(|_| {
                    Error::limit(OP, format!("stride or offset {} exceeds 32 bits", v[i]))
                })?;
            }
            Ok(o)
        };
        let params = Params {
            batch: d.batch as u32,
            q_len: d.q_len as u32,
            kv_len: d.kv_len as u32,
            n_heads: d.n_heads as u32,
            n_kv_heads: d.n_kv_heads as u32,
            head_dim: d.head_dim as u32,
            group: (d.n_heads / d.n_kv_heads) as u32,
            rows: plan.rows as u32,
            q: pack(&qw, q, c.strides[0])?,
            k: pack(&kw, k, c.strides[1])?,
            v: pack(&vw, v, c.strides[2])?,
            o: pack(&ow, out, c.strides[3])?,
            q_offset: c.q_offset as i32,
            bk: plan.bk,
            row_blocks: plan.row_blocks as u32,
            n_splits: plan.splits as u32,
            chunk: plan.chunk as u32,
            rows_per_wg: plan.rows_per_wg as u32,
            lanes: plan.lanes as u32,
            k_sc: c.quant.map_or(0, |r| r.scale_plane),
            v_sc: c.quant.map_or(0, |r| r.scale_plane),
            k_scale: c.quant.map_or(1.0, |r| r.k_scale),
            v_scale: c.quant.map_or(1.0, |r| r.v_scale),
            ..self.logit_params(d.n_heads, c.scale, c.bounds, &aux)
        };
        let keys = plan.variant.keys();
        let mut inputs = vec![
            ("q_buf", qw.resource()),
            ("k_buf", kw.resource()),
            ("v_buf", vw.resource()),
        ];
        if let Some(w) = &aux.window {
            inputs.push(("aux", w.resource()));
        }
        let base_wgs = (d.batch * d.n_kv_heads * plan.row_blocks) as u64;
        if matches!(plan.variant.kind, Kind::PrefillKeys | Kind::PrefillSubgroup) {
            // The same K/V windows, read through `vec4<u32>` bindings.
            inputs.push(("k4", kw.resource()));
            inputs.push(("v4", vw.resource()));
        }
        if plan.variant.kind != Kind::DecodeKeys && !plan.variant.split_kv {
            inputs.push(("out_buf", ow.resource()));
            return ctx.encode_kernel(OP, enc, &keys[0], &params, &inputs, base_wgs);
        }
        // Split-KV: a partial pass writes (m, l, acc) per (row, split, lane) into the context's
        // scratch buffer, a merge pass combines them in a fixed order.
        let entries = d.batch * d.n_kv_heads * plan.rows * plan.splits * plan.lanes;
        let part_bytes = entries as u64 * (d.head_dim as u64 + 4) * 4;
        crate::ensure!(
            part_bytes <= ctx.limits().max_storage_buffer_binding_size,
            Limit,
            OP,
            "split-KV scratch of {part_bytes} bytes ({} splits x {} lanes) exceeds the device's max_storage_buffer_binding_size",
            plan.splits,
            plan.lanes
        );
        let part = ctx.scratch(OP, part_bytes)?;
        let part_res = || {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &part,
                offset: 0,
                size: std::num::NonZeroU64::new(part_bytes),
            })
        };
        // Compile (and cache) both pipelines before recording either pass, so a failure records
        // nothing.
        ctx.kernel(OP, &keys[0])?;
        ctx.kernel(OP, &keys[1])?;
        inputs.push(("part_out", part_res()));
        let subgroup = plan.variant.kind == Kind::DecodeSubgroup;
        if plan.variant.native_f16 {
            // The same K/V windows, read as `array<vec4<f16>>`.
            inputs.push(("k_h", kw.resource()));
            inputs.push(("v_h", vw.resource()));
        } else if matches!(plan.variant.kind, Kind::DecodeKeys | Kind::DecodeSubgroup) {
            // The same K/V windows, read through `vec4<u32>` bindings.
            inputs.push(("k4", kw.resource()));
            inputs.push(("v4", vw.resource()));
        }
        if subgroup {
            // With one split the partial pass writes the output itself.
            inputs.push(("out_buf", ow.resource()));
        }
        ctx.encode_kernel(
            OP,
            enc,
            &keys[0],
            &params,
            &inputs,
            base_wgs * plan.splits as u64,
        )?;
        if subgroup && plan.splits == 1 {
            return Ok(());
        }
        let mut merge = vec![("part_in", part_res()), ("out_buf", ow.resource())];
        if let Some(w) = &aux.window {
            merge.push(("aux", w.resource()));
        }
        let rows_total = (d.batch * d.n_kv_heads * plan.rows) as u64;
        let merge_wgs = match plan.variant.kind {
            // One workgroup per row (`attn_decode_merge_rows`).
            Kind::DecodeSubgroup => rows_total,
            Kind::Prefill | Kind::PrefillKeys | Kind::PrefillSubgroup => {
                (rows_total * d.head_dim as u64 / 4).div_ceil(PREFILL_WG as u64)
            }
            _ => (rows_total * d.head_dim as u64 / 4).div_ceil(plan.variant.wg() as u64),
        };
        ctx.encode_kernel(OP, enc, &keys[1], &params, &merge, merge_wgs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_is_192_bytes() {
        assert_eq!(std::mem::size_of::<Params>(), 192);
        assert_eq!(std::mem::size_of::<Params>() % 16, 0);
    }
}

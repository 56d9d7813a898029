//! Validation and planning: which entry point, how invocations cover the views, the params.

use super::freq::{turns, Freq};
use super::norm::{Extra, HeadNorm};
use super::{
    Params, Positions, Rope, SinCos, Variant, FLAG_MROPE_INTERLEAVED, FLAG_NORM_A, FLAG_NORM_B,
    FLAG_ROW_MAP, GPU_HEADS_PER_INVOCATION, NORM_GROUP, NORM_TARGET_INVOCATIONS, OP,
    TARGET_INVOCATIONS, VEC4_GROUP_BYTES, WG,
};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// A validated 3- or 4-D view as `[batch, seq, heads, head_dim]` with element strides.
#[derive(Clone, Copy, Debug)]
pub(super) struct View4 {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    bstride: usize,
    sstride: usize,
    hstride: usize,
}

/// Whether a view can take the `rope_vec4` path: its first element and every stride that
/// matters are 16-byte aligned, and rotary_dim spans whole pairs of vec4s (8 f32 or 16 halves),
/// so every access is a whole, aligned vec4 inside the view.
fn vec4_aligned(ctx: &Context, rd: usize, v: &View4, offset: usize, dtype: DType) -> bool {
    let lanes = 16 / dtype.size();
    let ok = |dim: usize, stride: usize| dim <= 1 || stride.is_multiple_of(lanes);
    ctx.limits()
        .min_storage_buffer_offset_alignment
        .is_multiple_of(16)
        && rd.is_multiple_of(2 * lanes)
        && offset.is_multiple_of(lanes)
        && ok(v.batch, v.bstride)
        && ok(v.seq, v.sstride)
        && ok(v.heads, v.hstride)
}

fn view4(t: &Tensor, name: &str) -> Result<View4> {
    // Every view here may be written (in place, or as out); none may reach an element twice.
    t.validate_written(OP, name)?;
    let (s, st) = (t.shape(), t.strides());
    let v = match t.rank() {
        3 => View4 {
            batch: 1,
            seq: s[0],
            heads: s[1],
            head_dim: s[2],
            bstride: 0,
            sstride: st[0],
            hstride: st[1],
        },
        4 => View4 {
            batch: s[0],
            seq: s[1],
            heads: s[2],
            head_dim: s[3],
            bstride: st[0],
            sstride: st[1],
            hstride: st[2],
        },
        r => {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} must be [seq, heads, head_dim] or [batch, seq, heads, head_dim], got {r} dims {s:?}"
                ),
            ))
        }
    };
    Ok(v)
}

/// Everything `record` needs, decided before any GPU work.
pub(crate) struct Plan {
    pub(crate) variant: Variant,
    pub(crate) params: Params,
    pub(crate) freqs: std::sync::Arc<[Freq]>,
    pub(crate) threads: u64,
    /// Norm weights of segments A and B.
    pub(crate) norm_w: [Option<Tensor>; 2],
    /// The destination bound whole (a row map's, a quantized output's).
    pub(crate) whole_dst: Option<wgpu::Buffer>,
    /// Row map: the rows buffer and the call's first entry in it.
    pub(crate) rows: Option<(wgpu::Buffer, usize)>,
}

impl Rope {
    /// Validate and plan a plain rotation (no norm, no row map).
    pub(crate) fn plan(
        &self,
        ctx: &Context,
        a: &Tensor,
        b: Option<&Tensor>,
        out: Option<&Tensor>,
        positions: Positions<'_>,
    ) -> Result<Plan> {
        self.plan_with(ctx, a, b, out, Extra::default(), positions)
    }

    /// Validate and plan a call: `a` in place (with `b` in the same dispatch), into `out`, or
    /// through `extra.rows`; with the per-head norms of `extra`.
    pub(crate) fn plan_with(
        &self,
        ctx: &Context,
        a: &Tensor,
        b: Option<&Tensor>,
        out: Option<&Tensor>,
        extra: Extra<'_>,
        positions: Positions<'_>,
    ) -> Result<Plan> {
        let va = view4(a, "x")?;
        let dtype = a.dtype();
        let rd = self.validate_for(va.head_dim, dtype)?;
        let mut params = Params {
            n_tokens: 0,
            seq: va.seq as u32,
            half_rot: (rd / 2) as u32,
            head_dim: va.head_dim as u32,
            a_heads: va.heads as u32,
            a_bstride: va.bstride as u32,
            a_sstride: va.sstride as u32,
            a_hstride: va.hstride as u32,
            ..Default::default()
        };
        let mut vb = None;
        if let Some(b) = b {
            let v = view4(b, "k")?;
            vb = Some(v);
            let vb = v;
            b.expect_dtype(OP, "k", dtype)?;
            crate::ensure!(
                vb.batch == va.batch && vb.seq == va.seq && vb.head_dim == va.head_dim,
                Shape,
                OP,
                "k has shape {:?} but q has {:?}: batch, seq and head_dim must match",
                b.shape(),
                a.shape()
            );
            crate::ensure!(
                a.buffer() == b.buffer(),
                Alias,
                OP,
                "q and k must share a buffer to be rotated in one dispatch"
            );
            // Disjoint per token, with the same token strides, and both inside one token stride.
            let ext = |v: &View4, off: usize| (off, off + (v.heads - 1) * v.hstride + v.head_dim);
            let (qa, qe) = ext(&va, a.offset());
            let (ka, ke) = ext(&vb, b.offset());
            let lo = qa.min(ka);
            let span = qe.max(ke) - lo;
            let same_strides = (va.seq == 1 || va.sstride == vb.sstride)
                && (va.batch == 1 || va.bstride == vb.bstride);
            let fits = (va.seq == 1 || span <= va.sstride)
                && (va.batch == 1 || span + (va.seq - 1) * va.sstride <= va.bstride);
            crate::ensure!(
                same_strides && fits && (qe <= ka || ke <= qa),
                Alias,
                OP,
                "q (offset {}, strides {:?}) and k (offset {}, strides {:?}) overlap or are not laid out token by token with the same strides",
                a.offset(),
                a.strides(),
                b.offset(),
                b.strides()
            );
            params.b_heads = vb.heads as u32;
            params.b_bstride = vb.bstride as u32;
            params.b_sstride = vb.sstride as u32;
            params.b_hstride = vb.hstride as u32;
        }
        let (mut in_place, mut x_in_dst) = (true, false);
        if let Some(o) = out {
            o.expect_dtype(OP, "out", dtype)?;
            crate::ensure!(
                o.shape() == a.shape(),
                Shape,
                OP,
                "out has shape {:?} but x has {:?}",
                o.shape(),
                a.shape()
            );
            let vo = view4(o, "out")?;
            if !o.same_view(a) {
                in_place = false;
                crate::ensure!(
                    !o.overlaps(a),
                    Alias,
                    OP,
                    "out overlaps x: it must be exactly x (in place) or disjoint"
                );
                x_in_dst = o.buffer() == a.buffer();
                params.o_bstride = vo.bstride as u32;
                params.o_sstride = vo.sstride as u32;
                params.o_hstride = vo.hstride as u32;
            }
        }
        let tokens = va.batch * va.seq;
        params.n_tokens = tokens as u32;
        // A row map's or a quantized output's destination is bound whole.
        let whole_dst = extra.rows.map(|r| r.dst).or(extra.quant.map(|q| q.dst));
        if let Some(dst) = whole_dst {
            let max = ctx.limits().max_storage_buffer_binding_size;
            let rows = extra.rows.map(|r| r.rows);
            for (name, buf) in [("dst", Some(dst)), ("rows", rows)] {
                let Some(buf) = buf else { continue };
                crate::ensure!(
                    buf.usage().contains(wgpu::BufferUsages::STORAGE),
                    Param,
                    OP,
                    "{name} buffer needs STORAGE usage (it has {:?})",
                    buf.usage()
                );
            }
            crate::ensure!(
                dst != a.buffer() && rows.is_none_or(|r| r != dst),
                Alias,
                OP,
                "dst must be a buffer of its own: not x's buffer, not the rows buffer"
            );
            crate::ensure!(
                dst.size() <= max && dst.size().is_multiple_of(4),
                Limit,
                OP,
                "dst buffer has {} bytes; a row map or a quantized output binds all of it, so it must be a multiple of 4 and at most max_storage_buffer_binding_size ({max} bytes)",
                dst.size()
            );
            if let Positions::Ids(ids) = positions {
                crate::ensure!(
                    ids.buffer != *dst,
                    Alias,
                    OP,
                    "positions share a buffer with dst; they must be separate"
                );
            }
            in_place = false;
            x_in_dst = false;
        }
        if let Some(q) = extra.quant {
            // Built by the KV caches only, from their own sizes.
            debug_assert!(b.is_none() && out.is_none() && q.format.is_quantized());
            debug_assert!(extra.rows.is_none_or(|r| r.dst == q.dst) && q.page_elems > 0);
            q.format.check_head_dim(OP, va.head_dim)?;
            if let Some((off, [bs, ss, hs])) = q.view {
                params.o_off = off as u32;
                params.o_bstride = bs as u32;
                params.o_sstride = ss as u32;
                params.o_hstride = hs as u32;
            }
            params.q_page_elems = q.page_elems as u32;
            params.q_page_words = q.page_words as u32;
            params.q_scale_word = q.scale_word as u32;
            params.q_scale = q.scale;
        }
        let mut rows = None;
        if let Some(rm) = extra.rows {
            crate::ensure!(
                b.is_none() && out.is_none() && a.rank() == 3,
                Shape,
                OP,
                "a row map writes one [tokens, heads, head_dim] view, got x {:?}",
                a.shape()
            );
            let (heads, hd) = (va.heads, va.head_dim);
            crate::ensure!(
                heads == 1 || rm.head_stride >= hd,
                Shape,
                OP,
                "head_stride {} is below head_dim {hd}: the heads of a token would overlap",
                rm.head_stride
            );
            if extra.quant.is_none() {
                let size = dtype.size();
                let dst_elems = rm.dst.size() as usize / size;
                let token_span = (heads - 1)
                    .checked_mul(rm.head_stride)
                    .and_then(|v| v.checked_add(hd));
                crate::ensure!(
                    token_span.is_some_and(|v| v <= dst_elems),
                    Bounds,
                    OP,
                    "one token's {heads} heads (head_stride {}, head_dim {hd}) do not fit dst ({dst_elems} {dtype} elements)",
                    rm.head_stride
                );
                crate::ensure!(
                    !dtype.is_half() || rm.head_stride.is_multiple_of(2) || heads == 1,
                    Bounds,
                    OP,
                    "head_stride {} with {dtype} storage must be even (two elements per 32-bit word)",
                    rm.head_stride
                );
            }
            let rows_end = rm.rows_offset.checked_add(tokens).map(|n| n as u64 * 4);
            crate::ensure!(
                rows_end.is_some_and(|e| e <= rm.rows.size()),
                Bounds,
                OP,
                "rows_offset {} + {tokens} tokens passes the rows buffer ({} u32 entries)",
                rm.rows_offset,
                rm.rows.size() / 4
            );
            params.o_hstride = rm.head_stride as u32;
            params.flags |= FLAG_ROW_MAP;
            rows = Some((rm.rows.clone(), rm.rows_offset));
        }
        let mut norm_w = [None, None];
        let norms = [
            (extra.norm_a, if b.is_some() { "q_norm" } else { "norm" }),
            (extra.norm_b, "k_norm"),
        ];
        for (i, (norm, name)) in norms.into_iter().enumerate() {
            let Some(n) = norm else { continue };
            crate::ensure!(i == 0 || b.is_some(), Shape, OP, "k_norm needs a k view");
            HeadNorm::validate(n, name, va.head_dim, dtype)?;
            let wb = n.weight.buffer();
            let written = a.buffer() == wb
                || b.is_some_and(|b| b.buffer() == wb)
                || out.is_some_and(|o| o.buffer() == wb)
                || whole_dst.is_some_and(|d| d == wb);
            crate::ensure!(
                !written,
                Alias,
                OP,
                "{name} weight shares a buffer with a rotated or written view; it must be separate"
            );
            if i == 0 {
                params.flags |= FLAG_NORM_A;
                params.eps_a = n.eps;
                params.woff_a = n.weight_offset;
            } else {
                params.flags |= FLAG_NORM_B;
                params.eps_b = n.eps;
                params.woff_b = n.weight_offset;
            }
            norm_w[i] = Some(n.weight.clone());
        }
        let norm = norm_w.iter().any(Option::is_some);
        let kv_format = extra.quant.map(|q| q.format);
        let pos_buf = match positions {
            Positions::Start(start) => {
                crate::ensure!(
                    start as i64 + va.seq as i64 - 1 <= i32::MAX as i64,
                    Param,
                    OP,
                    "start {start} + seq {} passes the i32 position range",
                    va.seq
                );
                params.pos_start = start;
                false
            }
            Positions::Ids(ids) => {
                let shape = ids.shape.clone();
                if self.mrope_section.is_some() {
                    let ok = shape == [3, va.seq] || shape == [3, va.batch, va.seq];
                    crate::ensure!(
                        ok,
                        Shape,
                        OP,
                        "multimodal positions have shape {shape:?} but x has batch {} and seq {}: they must be [3, {}] or [3, {}, {}] (time, height, width)",
                        va.batch,
                        va.seq,
                        va.seq,
                        va.batch,
                        va.seq
                    );
                } else {
                    let ok = shape == [va.seq] || shape == [va.batch, va.seq];
                    crate::ensure!(
                        ok,
                        Shape,
                        OP,
                        "positions has shape {shape:?} but x has batch {} and seq {}: it must be [{}] or [{}, {}]",
                        va.batch,
                        va.seq,
                        va.seq,
                        va.batch,
                        va.seq
                    );
                }
                let words = ids.as_words();
                crate::ensure!(
                    ids.strides.len() == shape.len(),
                    Shape,
                    OP,
                    "positions has {} dims but {} strides",
                    shape.len(),
                    ids.strides.len()
                );
                let span = words.byte_span();
                crate::ensure!(
                    span.end <= ids.buffer.size(),
                    Bounds,
                    OP,
                    "positions view (offset {}, shape {shape:?}, strides {:?}) ends at byte {} but its buffer has {} bytes",
                    ids.offset,
                    ids.strides,
                    span.end,
                    ids.buffer.size()
                );
                crate::ensure!(
                    ids.buffer != *a.buffer() && out.is_none_or(|o| ids.buffer != *o.buffer()),
                    Alias,
                    OP,
                    "positions share a buffer with a rotated view; they must be separate"
                );
                // A multimodal tensor's leading dim is the position row (time, height, width).
                let mut st = &ids.strides[..];
                if self.mrope_section.is_some() {
                    params.pos_rstride = st[0] as u32;
                    st = &st[1..];
                }
                if st.len() == 2 {
                    params.pos_bstride = st[0] as u32;
                    params.pos_sstride = st[1] as u32;
                } else {
                    params.pos_sstride = st[0] as u32;
                }
                true
            }
        };
        let seq_len = match (self.seq_len, positions) {
            (Some(n), _) => n,
            (None, Positions::Start(start)) => (start.max(0) as usize) + va.seq,
            (None, Positions::Ids(_)) => {
                crate::ensure!(
                    !self.scaling.needs_seq_len(),
                    Param,
                    OP,
                    "{} scaling with a positions buffer needs seq_len (HF uses max(position_ids) + 1)",
                    self.scaling.rope_type()
                );
                0
            }
        };
        // Only the length-dependent scalings and the host cos/sin table depend on seq_len; for
        // the others one table serves every position, so a decode loop (a new start each step)
        // keeps hitting it.
        let table_len = if self.scaling.needs_seq_len() || self.sincos == SinCos::HostTable {
            seq_len
        } else {
            0
        };
        let (freqs, attn) = self.table.get_or_build(self, va.head_dim, table_len, || {
            let (inv, attn) = self.inv_freq(va.head_dim, seq_len)?;
            Ok((self.freq_table(ctx, &inv, seq_len)?, attn))
        })?;
        params.scale = attn as f32;
        (params.sec1, params.sec2) = match self.mrope_section {
            Some([_, h, w]) if self.mrope_interleaved => {
                params.flags |= FLAG_MROPE_INTERLEAVED;
                ((3 * h) as u32, (3 * w) as u32)
            }
            Some([t, h, _]) => (t as u32, (t + h) as u32),
            None => (u32::MAX, u32::MAX),
        };

        let n_quads = (rd / 2).div_ceil(2);
        let n_tail = if in_place {
            0
        } else {
            (va.head_dim - rd).div_ceil(2)
        };
        let mut n_cols = n_quads + n_tail;
        let vec4 = in_place
            && !norm
            && vec4_aligned(ctx, rd, &va, a.offset(), dtype)
            && vb.is_none_or(|vb| vec4_aligned(ctx, rd, &vb, b.map_or(0, |b| b.offset()), dtype));
        if vec4 {
            // Offsets and strides in vec4 units from here on (record converts the offsets).
            let lanes = (16 / dtype.size()) as u32;
            for v in [
                &mut params.a_bstride,
                &mut params.a_sstride,
                &mut params.a_hstride,
                &mut params.b_bstride,
                &mut params.b_sstride,
                &mut params.b_hstride,
            ] {
                *v /= lanes;
            }
            params.v_half = params.half_rot / lanes;
            n_cols = rd / 2 / lanes as usize;
        }
        let heads = va.heads + params.b_heads as usize;
        let (groups, per_group) = if kv_format.is_some() {
            // rope_q: one invocation per (token, head), which owns the head's whole row.
            (heads, 1)
        } else {
            head_groups(
                HeadWork {
                    tokens,
                    heads,
                    n_cols,
                    head_bytes: va.head_dim * dtype.size(),
                    vec4,
                    norm,
                },
                ctx.adapter_info().device_type == wgpu::DeviceType::Cpu,
            )
        };
        let threads = if norm || kv_format.is_some() {
            tokens as u64 * groups as u64
        } else {
            tokens as u64 * groups as u64 * n_cols as u64
        };
        crate::ensure!(
            threads < u32::MAX as u64 - WG as u64,
            Limit,
            OP,
            "{tokens} tokens x {n_cols} columns x {groups} head groups exceed 32-bit invocation indexing"
        );
        params.n_cols = n_cols as u32;
        params.n_quads = n_quads as u32;
        params.n_hgroups = groups as u32;
        params.heads_per_group = per_group as u32;
        // rope_q quantizes what the integer encoder rounds to (it stores no halves).
        let f16_store = kv_format.is_none()
            && f16_store_choice(
                self.native_f16_store,
                dtype,
                ctx.adapter_info().device_type,
                ctx.caps().f16_in_f32,
                &ctx.adapter_info().name,
            )?;
        Ok(Plan {
            variant: Variant {
                dtype,
                layout: self.layout,
                pos_buf,
                in_place,
                x_in_dst,
                sincos: self.sincos,
                vec4,
                // rope_q normalises through its flag.
                norm: norm && kv_format.is_none(),
                f16_store,
                kv_format,
            },
            params,
            freqs,
            threads,
            norm_w,
            whole_dst: whole_dst.cloned(),
            rows,
        })
    }
}

impl Rope {
    /// The table the shader reads for `inv` (one entry per pair): fixed-point turns, or for the
    /// benchmark's host-table mode cos/sin per (position, pair).
    fn freq_table(&self, ctx: &Context, inv: &[f64], seq_len: usize) -> Result<Vec<Freq>> {
        Ok(if self.sincos == SinCos::HostTable {
            crate::ensure!(
            seq_len > 0
                && (seq_len as u64) * (inv.len() as u64) * 16
                    <= ctx.limits().max_storage_buffer_binding_size,
            Limit,
            OP,
            "a host cos/sin table for seq_len {seq_len} x {} pairs does not fit one binding (set seq_len; positions must lie in 0..seq_len)",
            inv.len()
        );
            (0..seq_len)
                .flat_map(|p| inv.iter().map(move |&f| (p as f64 * f).sin_cos()))
                .map(|(s, c)| Freq {
                    turn_hi: (c as f32).to_bits(),
                    turn_lo: (s as f32).to_bits(),
                    inv_freq: 0.0,
                    _pad: 0,
                })
                .collect()
        } else {
            turns(inv)
        })
    }
}

/// Whether a call stores f16 through `pack2x16float` ([`Variant::f16_store`]), from
/// [`Rope::native_f16_store`] (`option`) and what the device is: `None` takes it for f16 on a
/// device that is not a CPU adapter and has the f16-in-f32 capability (`f16_in_f32`,
/// [`crate::context::Caps::f16_in_f32`]); `Some(true)` is an `Err` for other dtypes or without
/// the capability (`device` names the device in the message).
pub(crate) fn f16_store_choice(
    option: Option<bool>,
    dtype: DType,
    device_type: wgpu::DeviceType,
    f16_in_f32: bool,
    device: &str,
) -> Result<bool> {
    match option {
        None => Ok(dtype == DType::F16 && f16_in_f32 && device_type != wgpu::DeviceType::Cpu),
        Some(false) => Ok(false),
        Some(true) => {
            crate::ensure!(
                dtype == DType::F16,
                DType,
                OP,
                "native f16 stores (native_f16_store: Some(true)) are for f16 tensors, got {dtype}"
            );
            crate::ensure!(
                f16_in_f32,
                Limit,
                OP,
                "native f16 stores (native_f16_store: Some(true), pack2x16float) need the SHADER_F16_IN_F32 downlevel capability, and {device} lacks it"
            );
            Ok(true)
        }
    }
}

/// What one dispatch spreads over invocations: `tokens` tokens of `heads` heads (`head_bytes`
/// each), `n_cols` invocations per (token, head group), and which kernel (`vec4`: `rope_vec4`,
/// `norm`: `rope_norm`, else `rope`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadWork {
    pub tokens: usize,
    pub heads: usize,
    pub n_cols: usize,
    pub head_bytes: usize,
    pub vec4: bool,
    pub norm: bool,
}

/// (head groups, heads per group) of a dispatch: an invocation walks its group's heads one
/// after the other (a read-modify-write each, cos/sin computed once for the group). CPU
/// adapters group heads until the dispatch holds about [`TARGET_INVOCATIONS`] invocations (a
/// `rope_vec4` group within [`VEC4_GROUP_BYTES`] of a token; `rope_norm` up to [`NORM_GROUP`]
/// heads, aiming at [`NORM_TARGET_INVOCATIONS`]): few, long invocations suit llvmpipe, which
/// runs each as a loop over SIMD lanes. Other devices take at most
/// [`GPU_HEADS_PER_INVOCATION`] heads per invocation: a GPU hides memory latency with many
/// invocations in flight, not with a long serial walk in one.
pub(crate) fn head_groups(w: HeadWork, cpu: bool) -> (usize, usize) {
    let want = TARGET_INVOCATIONS.div_ceil(w.tokens * w.n_cols);
    let mut groups = want.clamp(1, w.heads);
    if w.vec4 {
        // Keep the heads one invocation walks within VEC4_GROUP_BYTES of a token, so that
        // consecutive SIMD batches stream through memory instead of striding across the
        // whole token (fused QKV f32 on lavapipe: 40 heads per invocation 50% of the vec4
        // copy, 8 heads 70-80%).
        let max_heads = (VEC4_GROUP_BYTES / w.head_bytes).max(1);
        groups = groups.max(w.heads.div_ceil(max_heads));
    }
    let mut per_group = w.heads.div_ceil(groups);
    if w.norm {
        // rope_norm: an invocation owns whole heads, at most NORM_GROUP (its private array
        // of inverse norms), fewer only when tokens alone would leave the device idle. Its
        // per-head work is large and cos/sin are shared across the group, so it aims for
        // fewer invocations than the rotation-only kernels (examples/qk_norm_speed.rs measures it).
        per_group = NORM_GROUP.min(w.heads.div_ceil(NORM_TARGET_INVOCATIONS.div_ceil(w.tokens)));
    }
    if !cpu {
        per_group = per_group.min(GPU_HEADS_PER_INVOCATION);
    }
    let per_group = per_group.max(1);
    (w.heads.div_ceil(per_group), per_group)
}

#[cfg(test)]
mod tests;

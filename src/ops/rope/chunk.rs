//! Views past one storage binding: RoPE rotates every token independently, so a call whose
//! views do not fit `max_storage_buffer_binding_size` is recorded as several dispatches over
//! runs of tokens whose views do.

use super::norm::Extra;
use super::{PositionIds, Positions, Rope, OP};
use crate::context::Context;
use crate::error::Result;
use crate::tensor::Tensor;

/// One dispatch's share of a call: the views of a run of tokens of one batch row.
struct Piece {
    a: Tensor,
    b: Option<Tensor>,
    out: Option<Tensor>,
    start: Option<i32>,
    ids: Option<PositionIds>,
    /// Where the run starts (a quantized destination's places follow it).
    batch_row: usize,
    s0: usize,
}

impl Piece {
    fn positions(&self) -> Positions<'_> {
        match (&self.ids, self.start) {
            (Some(ids), _) => Positions::Ids(ids),
            (None, start) => Positions::Start(start.unwrap_or(0)),
        }
    }
}

impl Rope {
    /// Plan and record a call (`a` in place, with `b` in the same dispatch, or into `out`): one
    /// dispatch when its views fit a binding, else one per run of tokens, every piece planned
    /// (and so validated) before any is recorded, all under one error scope.
    pub(super) fn encode_views(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        a: &Tensor,
        b: Option<&Tensor>,
        out: Option<&Tensor>,
        positions: Positions<'_>,
    ) -> Result<()> {
        self.encode_views_with(ctx, enc, a, b, out, Extra::default(), positions)
    }

    /// [`Rope::encode_views`] with per-head norms or a quantized destination (a row map is never
    /// split: its caller binds one view).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn encode_views_with(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        a: &Tensor,
        b: Option<&Tensor>,
        out: Option<&Tensor>,
        extra: Extra<'_>,
        positions: Positions<'_>,
    ) -> Result<()> {
        let views: Vec<&Tensor> = [Some(a), b, out].into_iter().flatten().collect();
        if !(a.rank() == 3 || a.rank() == 4)
            || extra.rows.is_some()
            || crate::pipeline::fits_one_binding(ctx, &views)
        {
            let plan = self.plan_with(ctx, a, b, out, extra, positions)?;
            return ctx.scoped(OP, || {
                self.record_unscoped(ctx, enc, plan, a, b, out, positions)
            })?;
        }
        // Validate the whole call once (shapes, dtypes, aliasing, parameters).
        self.plan_with(ctx, a, b, out, extra, positions)?;
        let rank = a.rank();
        let (batch, seq) = if rank == 4 {
            (a.shape()[0], a.shape()[1])
        } else {
            (1, a.shape()[0])
        };
        // Dynamic NTK and LongRoPE see the whole call's sequence length in every piece.
        let mut rope = self.clone();
        if rope.seq_len.is_none() {
            if let Positions::Start(p) = positions {
                rope.seq_len = Some(p.max(0) as usize + seq);
            }
        }
        let size = a.dtype().size() as u64;
        let token_bytes = views
            .iter()
            .map(|t| t.strides()[rank - 3] as u64 * size)
            .max()
            .unwrap_or(1)
            .max(1);
        let max = ctx.limits().max_storage_buffer_binding_size;
        let slack = ctx.limits().min_storage_buffer_offset_alignment as u64 + 4;
        let per = ((max.saturating_sub(slack) / token_bytes).saturating_sub(1)).max(1) as usize;
        let mut pieces = Vec::new();
        for bi in 0..batch {
            for s0 in (0..seq).step_by(per) {
                let n = per.min(seq - s0);
                let (start, ids) = match positions {
                    Positions::Start(p) => (Some(p.saturating_add(s0 as i32)), None),
                    Positions::Ids(ids) => {
                        // Multimodal positions lead with their row dim (time, height, width).
                        let rows = rope.mrope_section.is_some();
                        let (sh, st) = if rows {
                            (&ids.shape[1..], &ids.strides[1..])
                        } else {
                            (&ids.shape[..], &ids.strides[..])
                        };
                        let off = if sh.len() == 2 {
                            ids.offset + bi * st[0] + s0 * st[1]
                        } else {
                            ids.offset + s0 * st[0]
                        };
                        let (mut shape, mut strides) = if rank == 3 {
                            (vec![n], vec![*st.last().unwrap_or(&1)])
                        } else if sh.len() == 2 {
                            (vec![1, n], st.to_vec())
                        } else {
                            (vec![n], st.to_vec())
                        };
                        if rows {
                            shape.insert(0, 3);
                            strides.insert(0, ids.strides[0]);
                        }
                        (
                            None,
                            Some(PositionIds::with_strides(
                                &ids.buffer,
                                off,
                                &shape,
                                &strides,
                            )),
                        )
                    }
                };
                pieces.push(Piece {
                    a: crate::tensor::tokens_of(a, bi, s0, n),
                    b: b.map(|t| crate::tensor::tokens_of(t, bi, s0, n)),
                    out: out.map(|t| crate::tensor::tokens_of(t, bi, s0, n)),
                    start,
                    ids,
                    batch_row: bi,
                    s0,
                });
            }
        }
        let plans = pieces
            .iter()
            .map(|p| {
                let extra = Extra {
                    quant: extra.quant.map(|q| q.tokens(p.batch_row, p.s0)),
                    ..extra
                };
                rope.plan_with(
                    ctx,
                    &p.a,
                    p.b.as_ref(),
                    p.out.as_ref(),
                    extra,
                    p.positions(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        ctx.scoped(OP, || {
            for (p, plan) in pieces.iter().zip(plans) {
                rope.record_unscoped(
                    ctx,
                    enc,
                    plan,
                    &p.a,
                    p.b.as_ref(),
                    p.out.as_ref(),
                    p.positions(),
                )?;
            }
            Ok(())
        })?
    }
}

//! Recording: binding windows grouped by read source, the params, and the dispatches through
//! the launch path (several when the views pass one storage binding).

use super::plan::Checked;
use super::{Params, RmsNorm, OP, SRC_OUT, SRC_OWN, SRC_RES_OUT};
use crate::context::Context;
use crate::error::Result;
use crate::pipeline::Window;
use crate::tensor::Tensor;

impl RmsNorm {
    /// Record under one error scope (the only one of the call).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        c: Checked,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<(&Tensor, &Tensor)>,
    ) -> Result<()> {
        let chunk = rows_per_dispatch(
            ctx,
            &c,
            [
                Some(x),
                Some(out),
                residual.map(|r| r.0),
                residual.map(|r| r.1),
            ],
        );
        ctx.scoped(OP, || {
            if chunk >= c.rows {
                return self.record_unscoped(ctx, enc, c, x, weight, out, residual);
            }
            // Views larger than one storage binding: rows are independent, so record one
            // dispatch per run of rows whose views fit a binding.
            let sub = |t: &Tensor, r0: usize, rows: usize, stride: usize| {
                Tensor::with_strides(
                    t.buffer(),
                    t.offset() + r0 * stride,
                    &[rows, c.n],
                    &[stride, 1],
                    t.dtype(),
                )
            };
            for r0 in (0..c.rows).step_by(chunk) {
                let rows = chunk.min(c.rows - r0);
                let part = Checked { rows, ..c };
                let xs = sub(x, r0, rows, c.x_stride);
                let os = sub(out, r0, rows, c.out_stride);
                let rs = residual.map(|(r, ro)| {
                    (
                        sub(r, r0, rows, c.r_stride),
                        sub(ro, r0, rows, c.rout_stride),
                    )
                });
                self.record_unscoped(
                    ctx,
                    enc,
                    part,
                    &xs,
                    weight,
                    &os,
                    rs.as_ref().map(|(a, b)| (a, b)),
                )?;
            }
            Ok(())
        })?
    }

    #[allow(clippy::too_many_arguments)]
    fn record_unscoped(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        c: Checked,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<(&Tensor, &Tensor)>,
    ) -> Result<()> {
        let v = c.variant;
        // Group the views by the binding they are read through; each binding's window covers
        // all of its views.
        let reads: [(&Tensor, u32); 3] = [
            (x, v.x_src),
            (
                residual.map_or(x, |r| r.0),
                if residual.is_some() { v.r_src } else { SRC_OWN },
            ),
            (weight, v.w_src),
        ];
        let group = |base: &Tensor, which: u32| -> Result<Window> {
            let mut views = vec![base];
            views.extend(reads.iter().filter(|(_, s)| *s == which).map(|(t, _)| *t));
            Window::covering(ctx, OP, &views)
        };
        let dst_win = group(out, SRC_OUT)?;
        let rout_win = match residual {
            Some((_, rout)) => Some(group(rout, SRC_RES_OUT)?),
            None => None,
        };
        let own = |t: &Tensor, s: u32| -> Result<Option<Window>> {
            if s == SRC_OWN {
                Window::covering(ctx, OP, &[t]).map(Some)
            } else {
                Ok(None)
            }
        };
        let x_win = own(x, v.x_src)?;
        let w_win = own(weight, v.w_src)?;
        let r_win = match residual {
            Some((r, _)) => own(r, v.r_src)?,
            None => None,
        };
        let offset_in = |t: &Tensor, s: u32, own_win: &Option<Window>| -> u32 {
            match s {
                SRC_OUT => dst_win.elem_offset(t),
                SRC_RES_OUT => rout_win.as_ref().map_or(0, |w| w.elem_offset(t)),
                _ => own_win.as_ref().map_or(0, |w| w.elem_offset(t)),
            }
        };
        let x_off = offset_in(x, v.x_src, &x_win);
        let w_off = offset_in(weight, v.w_src, &w_win);
        let (r_off, rout_off) = match residual {
            Some((r, rout)) => (
                offset_in(r, v.r_src, &r_win),
                rout_win.as_ref().map_or(0, |w| w.elem_offset(rout)),
            ),
            None => (0, 0),
        };
        let params = Params {
            n_rows: c.rows as u32,
            n: c.n as u32,
            x_off,
            x_stride: c.x_stride as u32,
            w_off,
            r_off,
            r_stride: c.r_stride as u32,
            out_off: dst_win.elem_offset(out),
            out_stride: c.out_stride as u32,
            rout_off,
            rout_stride: c.rout_stride as u32,
            eps: self.eps,
            weight_offset: self.weight_offset,
            _pad: [0; 3],
        };
        // `rms_norm_rows4` reads the same windows through its `vec4<u32>` bindings.
        let names: [&str; 5] = if v.items16 {
            ["src4", "weight4", "res4", "dst4", "res_dst4"]
        } else {
            ["src", "weight", "res", "dst", "res_dst"]
        };
        // Room for every binding up front: growing the list was a reallocation per call.
        let mut named = Vec::with_capacity(names.len() + 3);
        named.push((names[3], dst_win.resource()));
        for (name, win) in [
            (names[0], &x_win),
            (names[1], &w_win),
            (names[2], &r_win),
            (names[4], &rout_win),
        ] {
            if let Some(w) = win {
                named.push((name, w.resource()));
            }
        }
        if v.native_f16 {
            // The same read-only windows, also read as `array<vec4<f16>>`.
            for (name, win) in [("src_h", &x_win), ("weight_h", &w_win), ("res_h", &r_win)] {
                if let Some(w) = win {
                    named.push((name, w.resource()));
                }
            }
        }
        ctx.encode_kernel(OP, enc, &v.key(), &params, &named, v.workgroups(c.rows))
    }
}

/// Rows one dispatch may cover so that each row view's binding window fits the device's
/// `max_storage_buffer_binding_size` (all rows when they already fit).
fn rows_per_dispatch(ctx: &Context, c: &Checked, views: [Option<&Tensor>; 4]) -> usize {
    let max = ctx.limits().max_storage_buffer_binding_size;
    let slack = ctx.limits().min_storage_buffer_offset_alignment as u64 + 4;
    let views = views.into_iter().flatten();
    if views.clone().all(|t| {
        let s = t.byte_span();
        s.end - s.start + slack <= max
    }) {
        return c.rows;
    }
    let size = views.clone().map(|t| t.dtype().size()).max().unwrap_or(4) as u64;
    let row_bytes = [c.x_stride, c.out_stride, c.r_stride, c.rout_stride, c.n]
        .into_iter()
        .max()
        .unwrap_or(1) as u64
        * size;
    (max.saturating_sub(slack) / row_bytes.max(1)).max(1) as usize
}

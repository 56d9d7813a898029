//! Recording: binding windows, offsets, and the one dispatch through the launch path.

use super::plan::Plan;
use super::{Positions, Rope, OP, WG};
use crate::context::Context;
use crate::error::Result;
use crate::pipeline::Window;
use crate::tensor::{DType, Tensor};

impl Rope {
    /// Record a planned call; the caller holds the call's one error scope (`encode_views`, and
    /// the KV cache, which fuses RoPE into its own call this way).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_unscoped(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        plan: Plan,
        a: &Tensor,
        b: Option<&Tensor>,
        out: Option<&Tensor>,
        positions: Positions<'_>,
    ) -> Result<()> {
        let Plan {
            variant: v,
            mut params,
            freqs,
            threads,
            norm_w,
            whole_dst,
            rows,
        } = plan;
        let out = out.filter(|_| !v.in_place);
        let (dst, src) = if let Some(dst_buf) = &whole_dst {
            // Row entries can point anywhere in dst, and a quantized output's addressing is its
            // own, so the whole buffer is bound (plan checked that it fits one binding).
            let dst = Window {
                buffer: dst_buf.clone(),
                byte_start: 0,
                byte_len: dst_buf.size(),
            };
            (dst, Some(Window::covering(ctx, OP, &[a])?))
        } else {
            // dst holds every written view, and x too when they share a buffer.
            let mut dst_views: Vec<&Tensor> = Vec::new();
            match out {
                Some(o) => {
                    dst_views.push(o);
                    if v.x_in_dst {
                        dst_views.push(a);
                    }
                }
                None => {
                    dst_views.push(a);
                    if let Some(b) = b {
                        dst_views.push(b);
                    }
                }
            }
            let dst = Window::covering(ctx, OP, &dst_views)?;
            let src = if out.is_some() && !v.x_in_dst {
                Some(Window::covering(ctx, OP, &[a])?)
            } else {
                None
            };
            (dst, src)
        };
        params.a_off = src.as_ref().unwrap_or(&dst).elem_offset(a);
        if let Some(b) = b {
            params.b_off = dst.elem_offset(b);
        }
        if v.vec4 {
            // plan checked that both offsets and the window start are 16-byte aligned.
            let lanes = 16 / a.dtype().size() as u32;
            params.a_off /= lanes;
            params.b_off /= lanes;
        }
        if let Some(o) = out {
            params.o_off = dst.elem_offset(o);
        }
        let pos_win = match positions {
            Positions::Ids(ids) => {
                let w = ids.as_words();
                let win = Window::covering(ctx, OP, &[&w])?;
                params.pos_off = win.elem_offset(&w);
                Some(win)
            }
            Positions::Start(_) => None,
        };
        let rows_win = match &rows {
            Some((rows, first)) => {
                let w = Tensor::new(rows, *first, &[params.n_tokens as usize], DType::F32);
                let win = Window::covering(ctx, OP, &[&w])?;
                params.rows_off = win.elem_offset(&w);
                Some(win)
            }
            None => None,
        };
        let mut w_wins = [None, None];
        for (i, w) in norm_w.iter().enumerate() {
            if let Some(w) = w {
                let win = Window::covering(ctx, OP, &[w])?;
                let off = win.elem_offset(w);
                if i == 0 {
                    params.wa_off = off;
                } else {
                    params.wb_off = off;
                }
                w_wins[i] = Some(win);
            }
        }
        let freq_buf = ctx.constant_buffer(
            OP,
            wgpu::BufferUsages::STORAGE,
            bytemuck::cast_slice(&freqs),
        )?;
        let mut named = vec![
            (if v.vec4 { "dst4" } else { "dst" }, dst.resource()),
            ("freqs", freq_buf.as_entire_binding()),
        ];
        if let Some(w) = &src {
            named.push(("src", w.resource()));
        }
        if let Some(w) = &pos_win {
            named.push(("positions", w.resource()));
        }
        if let Some(w) = &rows_win {
            named.push(("rows", w.resource()));
        }
        for (name, w) in ["wa", "wb"].into_iter().zip(&w_wins) {
            if let Some(w) = w {
                named.push((name, w.resource()));
            }
        }
        ctx.encode_kernel(
            OP,
            enc,
            &v.key(),
            &params,
            &named,
            threads.div_ceil(WG as u64),
        )
    }
}

//! Recording: binding windows, offsets, and the one dispatch through the launch path.

use super::plan::Plan;
use super::{Positions, Rope, OP, WG};
use crate::context::Context;
use crate::error::Result;
use crate::pipeline::Window;
use crate::tensor::Tensor;

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
        } = plan;
        let out = out.filter(|_| !v.in_place);
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

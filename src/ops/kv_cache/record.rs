//! Recording an append: the write kernel's dispatches, split into pieces whose views fit one
//! storage binding.

use super::{append_key, KvCache, Params, OP, WG};
use crate::context::Context;
use crate::error::Result;
use crate::pipeline::Window;
use crate::tensor::Tensor;

impl KvCache {
    pub(super) fn record_append(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        k_new: &Tensor,
        v_new: &Tensor,
        n_new: usize,
    ) -> Result<()> {
        ctx.scoped(OP, || {
            self.record_append_with(ctx, enc, k_new, v_new, n_new, true)
        })?
    }

    pub(super) fn record_append_with(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        k_new: &Tensor,
        v_new: &Tensor,
        n_new: usize,
        write_k: bool,
    ) -> Result<()> {
        let key = append_key(k_new.dtype(), self.format, write_k);
        let rows = self.batch * self.n_kv_heads * self.capacity;
        // Invocations per row: pairs of blocks (q8_0, q4_0) or 4 values.
        let per_row = match self.format {
            f if f.is_block() => f.scales_per_row(self.head_dim) / 2,
            _ => self.head_dim / 4,
        };
        for p in self.pieces(ctx, k_new, v_new, n_new)? {
            let kw = Window::covering(ctx, OP, &[&p.k])?;
            let vw = Window::covering(ctx, OP, &[&p.v])?;
            let pack = |w: &Window, t: &Tensor| -> [u32; 4] {
                let s = t.strides();
                let (sb, st, sh) = if t.rank() == 4 {
                    (s[0], s[1], s[2])
                } else {
                    (0, s[0], s[1])
                };
                [w.elem_offset(t), sb as u32, st as u32, sh as u32]
            };
            let params = Params {
                batch: p.batch as u32,
                n_new: p.n as u32,
                n_kv_heads: self.n_kv_heads as u32,
                head_dim: self.head_dim as u32,
                pos: p.dst_row as u32,
                capacity: self.capacity as u32,
                k: pack(&kw, &p.k),
                v: pack(&vw, &p.v),
                scale_plane: (self.format.scale_plane_byte(rows, self.head_dim) / 4) as u32,
                k_scale: self.k_scale,
                v_scale: self.v_scale,
                q_write_k: write_k as u32,
                _pad: [0; 2],
            };
            let threads = (p.batch * p.n * self.n_kv_heads * per_row) as u64;
            ctx.encode_kernel(
                OP,
                enc,
                &key,
                &params,
                &[
                    ("k_src", kw.resource()),
                    ("v_src", vw.resource()),
                    ("k_dst", self.k.as_entire_binding()),
                    ("v_dst", self.v.as_entire_binding()),
                ],
                threads.div_ceil(WG as u64),
            )?;
        }
        Ok(())
    }

    /// The dispatches of an append: the whole call when `k_new` and `v_new` each fit one
    /// binding, else one per run of new rows of one sequence whose views fit (rows are copied
    /// independently, so any split gives the same cache).
    fn pieces(
        &self,
        ctx: &Context,
        k_new: &Tensor,
        v_new: &Tensor,
        n_new: usize,
    ) -> Result<Vec<Piece>> {
        if crate::pipeline::fits_one_binding(ctx, &[k_new])
            && crate::pipeline::fits_one_binding(ctx, &[v_new])
        {
            return Ok(vec![Piece {
                k: k_new.clone(),
                v: v_new.clone(),
                batch: self.batch,
                n: n_new,
                dst_row: self.len,
            }]);
        }
        let max = ctx.limits().max_storage_buffer_binding_size;
        let slack = ctx.limits().min_storage_buffer_offset_alignment.max(4) as u64 + 4;
        let mut per = n_new.max(1);
        for (t, name) in [(k_new, "k_new"), (v_new, "v_new")] {
            // A view's span grows by exactly one token stride per token (positive strides).
            let one = crate::tensor::tokens_of(t, 0, 0, 1).byte_span();
            let one = one.end - one.start;
            crate::ensure!(
                one + slack <= max,
                Limit,
                OP,
                "one new row of {name} spans {one} bytes, past the device's \
                 max_storage_buffer_binding_size of {max} bytes"
            );
            let step = t.strides()[t.rank() - 3] as u64 * t.dtype().size() as u64;
            if let Some(more) = (max - slack - one).checked_div(step) {
                per = per.min(more as usize + 1);
            }
        }
        let mut pieces = Vec::new();
        for b in 0..self.batch {
            for s0 in (0..n_new).step_by(per) {
                let n = per.min(n_new - s0);
                pieces.push(Piece {
                    k: crate::tensor::tokens_of(k_new, b, s0, n),
                    v: crate::tensor::tokens_of(v_new, b, s0, n),
                    batch: 1,
                    n,
                    // The kernel writes row `pos + t` of sequence 0 at element
                    // `(h * capacity + pos + t) * head_dim`; sequence `b`'s rows start
                    // `b * n_kv_heads * capacity` rows further, so a one-sequence dispatch
                    // reaches them through `pos` alone (below 2^32: checked at creation).
                    dst_row: b * self.n_kv_heads * self.capacity + self.len + s0,
                });
            }
        }
        Ok(pieces)
    }
}

/// One dispatch of an append: new rows `k`, `v` of `batch` sequences, written from cache row
/// `dst_row` on.
struct Piece {
    k: Tensor,
    v: Tensor,
    batch: usize,
    n: usize,
    dst_row: usize,
}

//! Building attention's pipelines ahead of the first call ([`Attention::prepare`]).

use super::{Dims, OP};
use crate::context::Context;
use crate::error::Result;
use crate::kv_format::KvFormat;
use crate::tensor::DType;
use crate::Attention;

impl Attention {
    /// Build every pipeline that calls of these shapes will use, so that the first `encode`
    /// does not stall on shader compiles (about 0.5 s on a warm driver cache, tens of seconds
    /// cold on a CPU adapter). Returns how many pipelines were built (ones already in `ctx`'s
    /// cache are not counted).
    ///
    /// Give one [`Dims`] per kind of call a model makes: the prefill (`q_len` > 1) at its
    /// longest `kv_len`, and a decode step (`q_len` 1); the planner picks the kernel from
    /// `q_len`, and prefill splits the keys past a device-dependent `kv_len` (see
    /// [`Attention::plan`]). K/V are taken as contiguous views at offset 0, as a
    /// [`KvCache`](crate::KvCache) holds them. Nothing is recorded or submitted.
    pub fn prepare(&self, ctx: &Context, shapes: &[Dims], dtype: DType) -> Result<usize> {
        self.prepare_kv(ctx, shapes, dtype, KvFormat::from_dtype(dtype))
    }

    /// [`Attention::prepare`] for K/V stored in `kv` (a quantized [`crate::KvCache`]'s
    /// [`format`](crate::KvCache::format)).
    pub fn prepare_kv(
        &self,
        ctx: &Context,
        shapes: &[Dims],
        dtype: DType,
        kv: KvFormat,
    ) -> Result<usize> {
        self.prepare_variants(ctx, shapes, dtype, kv, false)
    }

    /// [`Attention::prepare_kv`] for calls with masks (a mask, bias or block ids in their
    /// [`Inputs`](super::Inputs)): their own pipelines.
    pub fn prepare_masked(
        &self,
        ctx: &Context,
        shapes: &[Dims],
        dtype: DType,
        kv: KvFormat,
    ) -> Result<usize> {
        self.prepare_variants(ctx, shapes, dtype, kv, true)
    }

    fn prepare_variants(
        &self,
        ctx: &Context,
        shapes: &[Dims],
        dtype: DType,
        kv: KvFormat,
        masks: bool,
    ) -> Result<usize> {
        self.check_options(OP)?;
        let before = ctx.cached_pipelines();
        for &d in shapes {
            crate::ensure!(
                d.batch > 0 && d.q_len > 0 && d.kv_len > 0,
                Shape,
                OP,
                "prepare: batch {}, q_len {} and kv_len {} must all be > 0",
                d.batch,
                d.q_len,
                d.kv_len
            );
            d.check_heads()?;
            // What `kv_rows_aligned` finds for contiguous K/V at offset 0 (quantized rows are
            // always read whole).
            let aligned = kv.is_quantized() || (d.head_dim * dtype.size()).is_multiple_of(16);
            let mut plan = self.plan_for(ctx, d, dtype, kv, aligned)?;
            plan.variant.masks = masks;
            for key in plan.variant.keys() {
                ctx.kernel(OP, &key)?;
            }
        }
        Ok(ctx.cached_pipelines().saturating_sub(before))
    }
}

//! Validation and planning: the views' rows and strides, the aliasing rules and read sources,
//! and the variant a call dispatches.

use super::{RmsNorm, Strategy, Variant, OP, SRC_OUT, SRC_OWN, SRC_RES_OUT};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Rows of a `[..., n]` view: (row count, row stride). Leading dims must collapse to one stride.
fn rows_of(t: &Tensor, name: &str) -> Result<(usize, usize)> {
    crate::ensure!(
        t.rank() >= 1,
        Shape,
        OP,
        "{name} must have at least 1 dimension, got a scalar"
    );
    let rank = t.rank();
    let n = t.shape()[rank - 1];
    let rows: usize = t.shape()[..rank - 1].iter().product();
    if rank == 1 {
        return Ok((1, n));
    }
    // Walk outward: each leading dim's stride must equal the next inner dim's stride * size.
    let stride = t.strides()[rank - 2];
    let mut expect = stride;
    for d in (0..rank - 1).rev() {
        if t.shape()[d] != 1 && t.strides()[d] != expect {
            return Err(Error::bounds(
                OP,
                format!(
                    "{name} has shape {:?} and strides {:?}: its leading dims must collapse to rows with one stride",
                    t.shape(),
                    t.strides()
                ),
            ));
        }
        expect = expect.saturating_mul(t.shape()[d]);
    }
    Ok((rows, if rows == 1 { n } else { stride }))
}

#[derive(Clone, Copy)]
pub(super) struct Checked {
    pub(super) rows: usize,
    pub(super) n: usize,
    pub(super) x_stride: usize,
    pub(super) out_stride: usize,
    pub(super) r_stride: usize,
    pub(super) rout_stride: usize,
    pub(super) variant: Variant,
}

impl RmsNorm {
    pub(super) fn validate(
        &self,
        ctx: &Context,
        x: &Tensor,
        weight: &Tensor,
        out: &Tensor,
        residual: Option<(&Tensor, &Tensor)>,
        strategy: Strategy,
    ) -> Result<Checked> {
        crate::ensure!(
            self.eps.is_finite() && self.eps >= 0.0,
            Param,
            OP,
            "eps must be finite and >= 0, got {}",
            self.eps
        );
        crate::ensure!(
            self.weight_offset.is_finite(),
            Param,
            OP,
            "weight_offset must be finite, got {}",
            self.weight_offset
        );
        crate::ensure!(
            strategy != Strategy::WorkgroupSubgroup || ctx.caps().subgroups,
            Limit,
            OP,
            "the subgroup reduction needs a device with SUBGROUP, and {} has none",
            ctx.adapter_info().name
        );
        x.validate(OP, "x")?;
        weight.validate(OP, "weight")?;
        out.validate_written(OP, "out")?;
        let dtype = x.dtype();
        if strategy == Strategy::WorkgroupNativeF16 {
            crate::ensure!(
                ctx.caps().shader_f16,
                Limit,
                OP,
                "native f16 reads need a device with SHADER_F16, and {} has none",
                ctx.adapter_info().name
            );
            crate::ensure!(
                ctx.caps().f16_in_f32,
                Limit,
                OP,
                "native f16 stores (pack2x16float) need the SHADER_F16_IN_F32 downlevel capability, and {} lacks it",
                ctx.adapter_info().name
            );
            crate::ensure!(
                dtype == DType::F16,
                DType,
                OP,
                "native f16 reads are for f16 tensors, got {dtype}"
            );
        }
        weight.expect_dtype(OP, "weight", dtype)?;
        out.expect_dtype(OP, "out", dtype)?;
        let (rows, x_stride) = rows_of(x, "x")?;
        let n = *x.shape().last().unwrap_or(&0);
        crate::ensure!(
            weight.rank() == 1 && weight.shape()[0] == n,
            Shape,
            OP,
            "weight has shape {:?} but must be [{n}] to match x {:?}",
            weight.shape(),
            x.shape()
        );
        crate::ensure!(
            out.shape() == x.shape(),
            Shape,
            OP,
            "out has shape {:?} but x has {:?}",
            out.shape(),
            x.shape()
        );
        let (_, out_stride) = rows_of(out, "out")?;

        let (mut r_stride, mut rout_stride) = (0, 0);
        if let Some((r, rout)) = residual {
            r.validate(OP, "residual")?;
            rout.validate_written(OP, "residual_out")?;
            r.expect_dtype(OP, "residual", dtype)?;
            rout.expect_dtype(OP, "residual_out", dtype)?;
            crate::ensure!(
                r.shape() == x.shape() && rout.shape() == x.shape(),
                Shape,
                OP,
                "residual {:?} and residual_out {:?} must both have x's shape {:?}",
                r.shape(),
                rout.shape(),
                x.shape()
            );
            r_stride = rows_of(r, "residual")?.1;
            rout_stride = rows_of(rout, "residual_out")?.1;
        }
        let src = read_sources(x, weight, out, residual)?;
        crate::ensure!(
            rows <= u32::MAX as usize && n <= u32::MAX as usize,
            Limit,
            OP,
            "{rows} rows of {n} elements exceed 32-bit indexing"
        );
        // 16-byte items need 16-byte aligned row starts in every view.
        let size = dtype.size();
        let aligned = |t: &Tensor, stride: usize| {
            (t.offset() * size).is_multiple_of(16)
                && (rows == 1 || (stride * size).is_multiple_of(16))
        };
        let mut aligned16 = (n * size).is_multiple_of(16)
            && aligned(x, x_stride)
            && aligned(out, out_stride)
            && aligned(weight, 0);
        if let Some((r, rout)) = residual {
            aligned16 = aligned16 && aligned(r, r_stride) && aligned(rout, rout_stride);
        }
        crate::ensure!(
            aligned16 || strategy != Strategy::WorkgroupNativeF16,
            Param,
            OP,
            "native f16 reads need 16-byte aligned rows (n {n} x 2 bytes, every view's offset and row stride multiples of 16)"
        );
        Ok(Checked {
            rows,
            n,
            x_stride,
            out_stride,
            r_stride,
            rout_stride,
            variant: Variant::choose_for(
                ctx,
                strategy,
                rows,
                dtype,
                n,
                residual.is_some(),
                src,
                aligned16,
            ),
        })
    }
}

/// Where each read tensor is bound, and the aliasing rules.
///
/// A buffer cannot be bound read-only and read-write in one dispatch, so a read tensor that
/// shares a buffer with `out` (or `residual_out`) is read through that output's binding. Outputs
/// may be exactly their in-place input (`out == x`, `residual_out == residual`); every other
/// overlap between a written view and any other view is refused.
fn read_sources(
    x: &Tensor,
    weight: &Tensor,
    out: &Tensor,
    residual: Option<(&Tensor, &Tensor)>,
) -> Result<[u32; 3]> {
    let rout = residual.map(|r| r.1);
    let source = |t: &Tensor| {
        if t.buffer() == out.buffer() {
            SRC_OUT
        } else if rout.is_some_and(|ro| t.buffer() == ro.buffer()) {
            SRC_RES_OUT
        } else {
            SRC_OWN
        }
    };
    if x.overlaps(out) && !x.same_view(out) {
        return Err(Error::alias(
            OP,
            "out partially overlaps x: it must be exactly x (in place) or disjoint",
        ));
    }
    crate::ensure!(!weight.overlaps(out), Alias, OP, "weight and out overlap");
    let mut src = [source(x), SRC_OWN, source(weight)];
    if let Some((r, rout)) = residual {
        if r.overlaps(rout) && !r.same_view(rout) {
            return Err(Error::alias(
                OP,
                "residual_out partially overlaps residual: it must be exactly residual (in place) or disjoint",
            ));
        }
        crate::ensure!(
            !rout.overlaps(out),
            Alias,
            OP,
            "residual_out and out overlap; they must be disjoint"
        );
        crate::ensure!(
            !rout.overlaps(x) && !r.overlaps(out),
            Alias,
            OP,
            "residual_out must not overlap x, and out must not overlap residual"
        );
        crate::ensure!(
            !weight.overlaps(rout),
            Alias,
            OP,
            "weight and residual_out overlap"
        );
        src[1] = source(r);
    }
    Ok(src)
}

//! `rms_norm` cases: inputs `x [..., hidden]`, `weight [hidden]`, optional `residual` shaped like
//! `x`; metadata `eps` (default 1e-6) and `weight_offset` (default 0); outputs `out` and, with a
//! residual, `residual_out`. The storage dtype is `x`'s; `weight` and `residual` must match it.

use super::{CaseFile, OpOutput, OpResult};
use crate::compare::tolerance;
use crate::context::Context;
use crate::error::Result;
use crate::ops::rms_norm::{Residual, RmsNorm, Strategy};

/// Run an `rms_norm` case on `ctx` and on the reference.
pub fn run(ctx: &Context, case: &CaseFile) -> Result<OpResult> {
    let eps = case.meta_f64("eps", 1e-6)?;
    let weight_offset = case.meta_f64("weight_offset", 0.0)?;
    let (x, dtype) = case.storage_tensor("x")?;
    let (w, wd) = case.storage_tensor("weight")?;
    if wd != dtype {
        return Err(case.error(format!("weight is {wd} but x is {dtype}; they must match")));
    }
    let residual = match case.opt_tensor("residual")? {
        Some(r) => {
            let rd = r.dtype.storage();
            if rd != Some(dtype) {
                return Err(case.error(format!(
                    "residual is {:?} but x is {dtype}; they must match",
                    r.dtype
                )));
            }
            if r.shape != x.shape {
                return Err(case.error(format!(
                    "residual has shape {:?} but x has {:?}",
                    r.shape, x.shape
                )));
            }
            Some(r)
        }
        None => None,
    };
    let op = RmsNorm {
        eps: eps as f32,
        weight_offset: weight_offset as f32,
    };
    // Shapes are checked by the op before any GPU work.
    let xt = ctx.upload_as(&x.to_f32(), &x.shape, dtype)?;
    let wt = ctx.upload_as(&w.to_f32(), &w.shape, dtype)?;
    let out = ctx.empty(&x.shape, dtype)?;
    let mut outputs = Vec::new();
    let variant;
    let cpu_out = if let Some(r) = residual {
        let rt = ctx.upload_as(&r.to_f32(), &r.shape, dtype)?;
        let rout = ctx.empty(&x.shape, dtype)?;
        variant = op
            .variant(
                ctx,
                &xt,
                &wt,
                &out,
                Some(Residual {
                    residual: &rt,
                    residual_out: &rout,
                }),
                Strategy::Auto,
            )?
            .name();
        op.run_residual(
            ctx,
            &xt,
            &wt,
            &out,
            Residual {
                residual: &rt,
                residual_out: &rout,
            },
        )?;
        let (o, h) = crate::reference::rms_norm::rms_norm(
            &x.values,
            &w.values,
            Some(&r.values),
            eps,
            weight_offset,
            dtype,
        );
        outputs.push(OpOutput {
            name: "residual_out".into(),
            shape: x.shape.clone(),
            gpu: ctx.read_f32(&rout)?,
            cpu: h.unwrap_or_default(),
        });
        o
    } else {
        variant = op
            .variant(ctx, &xt, &wt, &out, None, Strategy::Auto)?
            .name();
        op.run(ctx, &xt, &wt, &out)?;
        let (o, _) = crate::reference::rms_norm::rms_norm(
            &x.values,
            &w.values,
            None,
            eps,
            weight_offset,
            dtype,
        );
        o
    };
    outputs.insert(
        0,
        OpOutput {
            name: "out".into(),
            shape: x.shape.clone(),
            gpu: ctx.read_f32(&out)?,
            cpu: cpu_out,
        },
    );
    Ok(OpResult {
        dtype,
        variant,
        shape: x.shape.clone(),
        tolerance: tolerance(dtype),
        outputs,
    })
}

//! `attention` cases: inputs `q [q_len, n_heads, head_dim]` or `[batch, q_len, n_heads,
//! head_dim]`, `k` and `v` `[kv_len, n_kv_heads, head_dim]` (batched likewise), optional
//! `sinks [n_heads]` (any float dtype: gpt-oss stores them in bf16; the kernel reads them as
//! f32); metadata `causal` (default true), `q_offset` (default `kv_len - q_len`), `scale`
//! (default `1/sqrt(head_dim)`), `window` (default 0 = none), `window_left` / `window_right` (a
//! two-sided window, FlashAttention's `window_size`; absent or -1 = unbounded),
//! `attention_chunk_size` (default 0 = none), `softcap` (default 0 = none) and `alibi` (default
//! false; BLOOM's per-head linear bias, `Attention::alibi`); output `out`, shaped like `q`. The
//! storage dtype is `q`'s; `k` and `v` must match it.
//!
//! Metadata `kv_format` (`q8_0`, `q4_0`, `fp8_e4m3`; absent = q's dtype) stores K/V in a
//! [`KvCache`] of that format: they are appended (quantized by the cache's append) and attention
//! reads the cache; fp8 takes optional F32 scalar tensors `k_scale` / `v_scale` (default 1). The
//! reference attends over the dequantized K/V (`reference::quant::round_trip`).
//!
//! Masks (`Inputs`, `ops::attention` module docs): optional `mask` (U8 or BOOL `[q_len, kv_len]`
//! or `[batch, q_len, kv_len]`, nonzero = visible), `bias` (F32 `[q_len, kv_len]`, `[n_heads,
//! q_len, kv_len]` or `[batch, 1 or n_heads, q_len, kv_len]`, added to the logits) and
//! `block_ids` (I32 `[kv_len]` or `[batch, kv_len]`: a key after the query stays visible under
//! causal masking when both positions carry the same id >= 0, Gemma 3's image blocks).

use super::{CaseFile, HostDType, OpOutput, OpResult};
use crate::compare::tolerance;
use crate::context::Context;
use crate::error::Result;
use crate::kv_format::KvFormat;
use crate::ops::attention::{pack_mask, Attention, Dims, Inputs, MaskSet};
use crate::ops::kv_cache::{KvCache, KvCacheConfig};
use crate::reference::attention as reference;
use crate::reference::quant;
use crate::tensor::{DType, Tensor};

/// The case's quantized K/V format and fp8 scales, or `None` for K/V stored as q's dtype
/// (shared with `paged_attention`).
pub(super) fn kv_format(case: &CaseFile, dtype: DType) -> Result<Option<(KvFormat, f32, f32)>> {
    let name = case.meta_str("kv_format", dtype.name());
    let format = KvFormat::parse(&name).ok_or_else(|| {
        case.error(format!(
            "metadata kv_format={name:?} must be one of {:?}",
            KvFormat::ALL.map(KvFormat::name)
        ))
    })?;
    let scale = |key: &str| -> Result<f32> {
        let Some(t) = case.opt_tensor(key)? else {
            return Ok(1.0);
        };
        if format != KvFormat::Fp8E4M3
            || t.dtype.storage() != Some(DType::F32)
            || t.values.len() != 1
        {
            return Err(case.error(format!(
                "{key} must be one F32 value, with kv_format fp8_e4m3 only (kv_format is {format})"
            )));
        }
        Ok(t.values[0] as f32)
    };
    let (k_scale, v_scale) = (scale("k_scale")?, scale("v_scale")?);
    match format.dtype() {
        Some(d) if d == dtype => Ok(None),
        Some(d) => Err(case.error(format!(
            "metadata kv_format={d} differs from q's dtype {dtype}: float K/V are stored as q's dtype"
        ))),
        None => Ok(Some((format, k_scale, v_scale))),
    }
}

/// K/V appended to a cache of `format` (one sequence per batch entry, capacity kv_len), for
/// attention to read in place.
fn quantized_cache(
    ctx: &Context,
    (k, v): (&Tensor, &Tensor),
    d: crate::ops::attention::Dims,
    dtype: DType,
    (format, k_scale, v_scale): (KvFormat, f32, f32),
) -> Result<KvCache> {
    let mut cache = KvCache::new(
        ctx,
        KvCacheConfig {
            batch: d.batch,
            n_kv_heads: d.n_kv_heads,
            capacity: d.kv_len,
            head_dim: d.head_dim,
            dtype,
            kv_format: Some(format),
        },
    )?;
    cache.set_scales(k_scale, v_scale)?;
    cache.append_run(ctx, k, v)?;
    Ok(cache)
}

/// A case's masks as host values: the boolean mask, the bias with its shape, the block ids.
struct CaseMasks {
    mask: Option<Vec<bool>>,
    bias: Option<(Vec<f32>, Vec<usize>)>,
    ids: Option<Vec<i32>>,
}

impl CaseMasks {
    fn read(case: &CaseFile, d: &Dims) -> Result<Self> {
        let (b, q, kv) = (d.batch, d.q_len, d.kv_len);
        let mask = match case.opt_tensor("mask")? {
            None => None,
            Some(t) => {
                if !matches!(t.dtype, HostDType::U8 | HostDType::Bool) {
                    return Err(case.error(format!("mask is {:?}; it must be U8 or BOOL", t.dtype)));
                }
                if t.shape != [q, kv] && t.shape != [b, q, kv] {
                    return Err(case.error(format!(
                        "mask has shape {:?}; it must be [q_len, kv_len] = [{q}, {kv}] or [batch, q_len, kv_len] = [{b}, {q}, {kv}]",
                        t.shape
                    )));
                }
                Some(t.values.iter().map(|&x| x != 0.0).collect())
            }
        };
        let bias = match case.opt_tensor("bias")? {
            None => None,
            Some(t) => {
                if t.dtype != HostDType::F32 {
                    return Err(case.error(format!("bias is {:?}; it must be F32", t.dtype)));
                }
                Some((t.to_f32(), t.shape.clone()))
            }
        };
        let ids = match case.opt_tensor("block_ids")? {
            None => None,
            Some(t) => {
                if t.dtype != HostDType::I32 || (t.shape != [kv] && t.shape != [b, kv]) {
                    return Err(case.error(format!(
                        "block_ids is {:?} {:?}; it must be I32 [kv_len] = [{kv}] or [batch, kv_len] = [{b}, {kv}]",
                        t.dtype, t.shape
                    )));
                }
                Some(t.values.iter().map(|&x| x as i32).collect())
            }
        };
        Ok(CaseMasks { mask, bias, ids })
    }

    /// The masks (and sinks) in one buffer, as the kernel binds them.
    fn upload(&self, ctx: &Context, sinks: Option<&[f32]>) -> Result<MaskSet> {
        let packed = self.mask.as_deref().map(pack_mask);
        Inputs::upload_masks(
            ctx,
            sinks,
            packed.as_deref(),
            self.bias.as_ref().map(|(v, s)| (&v[..], &s[..])),
            self.ids.as_deref(),
        )
    }
}

/// Run an `attention` case on `ctx` and on the reference.
pub fn run(ctx: &Context, case: &CaseFile) -> Result<OpResult> {
    let (mut op, scale, softcap) = options(case)?;
    let q_offset = case.meta_opt_i64("q_offset")?;
    op.q_offset = q_offset;
    let (q, dtype) = case.storage_tensor("q")?;
    let (k, kd) = case.storage_tensor("k")?;
    let (v, vd) = case.storage_tensor("v")?;
    if kd != dtype || vd != dtype {
        return Err(case.error(format!(
            "k is {kd} and v is {vd} but q is {dtype}; they must match"
        )));
    }
    let sinks = case.opt_tensor("sinks")?;
    if let Some(s) = sinks {
        if !s.dtype.is_float() {
            return Err(case.error(format!(
                "sinks is {:?}; it must be a float tensor (F32, F16, BF16 or F64)",
                s.dtype
            )));
        }
    }
    // The kernel reads sinks as f32; the reference gets the same values.
    let sinks_f32: Option<Vec<f64>> =
        sinks.map(|s| s.values.iter().map(|&v| v as f32 as f64).collect());
    // Shapes and parameters are checked by the op before any GPU work, and before the reference
    // (which assumes consistent shapes) runs.
    let qt = ctx.upload_as(&q.to_f32(), &q.shape, dtype)?;
    let kt = ctx.upload_as(&k.to_f32(), &k.shape, dtype)?;
    let vt = ctx.upload_as(&v.to_f32(), &v.shape, dtype)?;
    let out = ctx.empty(&q.shape, dtype)?;
    let d = op.dims(&qt, &kt, &vt)?;
    let masks = CaseMasks::read(case, &d)?;
    let sinks_host = sinks.map(|s| s.to_f32());
    let set = masks.upload(ctx, sinks_host.as_deref())?;
    let quantized = kv_format(case, dtype)?;
    let kv = quantized.map_or(KvFormat::from_dtype(dtype), |f| f.0);
    let plan = op.plan_kv(ctx, d, dtype, kv)?;
    let variant = match plan.variant.split_kv {
        true => format!("{:?}, {} split(s)", plan.variant.kind, plan.splits),
        false => format!("{:?}", plan.variant.kind),
    };
    let (k_ref, v_ref) = match quantized {
        None => {
            op.run(ctx, &qt, &kt, &vt, set.inputs(), &out)?;
            (k.values.clone(), v.values.clone())
        }
        Some(f) => {
            let cache = quantized_cache(ctx, (&kt, &vt), d, dtype, f)?;
            op.run_cached(ctx, &qt, &cache, set.inputs(), &out)?;
            (
                quant::round_trip(f.0, &k.to_f32(), d.head_dim, f.1),
                quant::round_trip(f.0, &v.to_f32(), d.head_dim, f.2),
            )
        }
    };
    let bias64: Option<Vec<f64>> = masks
        .bias
        .as_ref()
        .map(|b| b.0.iter().map(|&x| x as f64).collect());
    let bias_heads = masks
        .bias
        .as_ref()
        .is_some_and(|(_, s)| s.len() == 3 || (s.len() == 4 && s[1] == d.n_heads && d.n_heads > 1));
    let cpu = reference::attention_masked(
        &q.values,
        &k_ref,
        &v_ref,
        sinks_f32.as_deref(),
        reference::Dims {
            batch: d.batch,
            q_len: d.q_len,
            kv_len: d.kv_len,
            n_heads: d.n_heads,
            n_kv_heads: d.n_kv_heads,
            head_dim: d.head_dim,
        },
        &ref_options(&op, q_offset, scale, softcap),
        &reference::Masks {
            mask: masks.mask.as_deref(),
            bias: bias64.as_deref(),
            bias_heads,
            block_ids: masks.ids.as_deref(),
        },
    );
    Ok(OpResult {
        dtype,
        variant,
        shape: q.shape.clone(),
        tolerance: tolerance(dtype),
        outputs: vec![OpOutput {
            name: "out".into(),
            shape: q.shape.clone(),
            gpu: ctx.read_f32(&out)?,
            cpu,
        }],
    })
}

/// The reference's options for `op`, with `scale` and `softcap` as the case wrote them.
pub(super) fn ref_options(
    op: &Attention,
    q_offset: Option<i64>,
    scale: Option<f64>,
    softcap: f64,
) -> reference::Options {
    reference::Options {
        causal: op.causal,
        q_offset,
        scale,
        window: op.window as usize,
        window_left: op.window_left.map(|w| w as usize),
        window_right: op.window_right.map(|w| w as usize),
        chunk: op.chunk_size as usize,
        softcap,
        alibi: op.alibi,
    }
}

/// The options shared by the `attention` and `paged_attention` ops, read from the metadata
/// (`q_offset` left unset); with `scale` and `softcap` as written (the reference takes them in
/// f64, the kernel in f32).
pub(super) fn options(case: &CaseFile) -> Result<(Attention, Option<f64>, f64)> {
    let causal = case.meta_bool("causal", true)?;
    let scale = case.meta_opt_f64("scale")?;
    let softcap = case.meta_f64("softcap", 0.0)?;
    let window = case.meta_i64("window", 0)?;
    if !(0..=i32::MAX as i64).contains(&window) {
        return Err(case.error(format!(
            "metadata window={window} must be in 0..={} (0 = none)",
            i32::MAX
        )));
    }
    let side = |key: &str| -> Result<Option<u32>> {
        match case.meta_i64(key, -1)? {
            -1 => Ok(None),
            w if (0..=i32::MAX as i64).contains(&w) => Ok(Some(w as u32)),
            w => Err(case.error(format!(
                "metadata {key}={w} must be -1 (unbounded) or in 0..={}",
                i32::MAX
            ))),
        }
    };
    let window_left = side("window_left")?;
    let window_right = side("window_right")?;
    let chunk = case.meta_i64("attention_chunk_size", 0)?;
    let max_chunk = crate::ops::attention::MAX_CHUNK_SIZE as i64;
    if !(0..=max_chunk).contains(&chunk) {
        return Err(case.error(format!(
            "metadata attention_chunk_size={chunk} must be in 0..={max_chunk} (0 = none)"
        )));
    }
    let op = Attention {
        causal,
        q_offset: None,
        scale: scale.map(|s| s as f32),
        window: window as u32,
        window_left,
        window_right,
        chunk_size: chunk as u32,
        softcap: softcap as f32,
        alibi: case.meta_bool("alibi", false)?,
        kind: None,
        splits: None,
        f16_arithmetic: false,
        native_f16: None,
        subgroup_min_size: None,
        int8_dot: false,
    };
    Ok((op, scale, softcap))
}

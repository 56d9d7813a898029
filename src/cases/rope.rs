//! `rope` cases: input `x [seq, heads, head_dim]` or `[batch, seq, heads, head_dim]`, rotated in
//! place (the `rope_vec4` fast path when the view allows), output `out`; or inputs `q` and `k`
//! (same batch, seq and head_dim, head counts may differ), placed token by token in one buffer as
//! a fused QKV projection leaves them and rotated together by `Rope::encode_qk` in one dispatch,
//! outputs `q` and `k`. Optional `positions [seq]` or `[batch, seq]` (I32 or I64).
//!
//! Metadata: `theta` (default 10000), `layout` (`half` or `interleaved`, default `half`),
//! `rotary_dim` (default head_dim), `offset` (first position when there is no `positions`
//! tensor, default 0), `seq_len` (what dynamic NTK and LongRoPE see; default
//! `max(positions) + 1`, as HF), and `rope_type` (default `default`) with HF's `rope_scaling`
//! keys under their own names:
//! - `linear`: `factor`
//! - `llama3`: `factor`, `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`
//! - `yarn`: `factor`, `original_max_position_embeddings` (or `max_position_embeddings`),
//!   `beta_fast` (32), `beta_slow` (1), `attention_factor`, `mscale`, `mscale_all_dim`,
//!   `truncate` (true)
//! - `dynamic`: `factor`, `original_max_position_embeddings` (or `max_position_embeddings`)
//! - `longrope`: `short_factor`, `long_factor` (lists), `original_max_position_embeddings`,
//!   `factor` (or `max_position_embeddings`, giving `max / original`), `attention_factor`
//! - `inv_freq`: `inv_freq` (a list, one per pair), `attention_factor` (1)
//!
//! A key that the chosen `rope_type` does not use is refused as unknown.
//!
//! Multimodal RoPE (Qwen2-VL, Qwen2.5-VL): metadata `mrope_section` (`[t, h, w]` pair counts
//! summing to rotary_dim / 2) and `positions [3, seq]` or `[3, batch, seq]` (time, height,
//! width rows); without positions every row counts from `offset`. `mrope_interleaved: true`
//! (Qwen3-VL) cycles the rows over the pairs as HF's `apply_interleaved_mrope` does.
//!
//! QK-norm (Qwen3, Gemma 3): optional per-head RMSNorm weights `[head_dim]` in the input's
//! dtype, applied before the rotation in the same dispatch (`Rope::encode_norm` /
//! `Rope::encode_qk_norm`): `norm_weight` with `x`; `q_norm_weight` and/or `k_norm_weight` with
//! `q` and `k`. Metadata with a weight: `norm_eps` (default 1e-6) and `norm_weight_offset`
//! (default 0; 1 for Gemma 3's `1 + w`).

use super::{CaseFile, HostDType, HostTensor, OpOutput, OpResult};
use crate::compare::tolerance;
use crate::context::Context;
use crate::error::Result;
use crate::ops::rope::{HeadNorm, Layout, PositionIds, Positions, Rope, Scaling, Variant};
use crate::tensor::Tensor;

fn required(case: &CaseFile, rope_type: &str, key: &str) -> Result<f64> {
    case.meta_opt_f64(key)?.ok_or_else(|| {
        case.error(format!(
            "rope_type {rope_type} needs metadata {key} (as in the model's rope_scaling)"
        ))
    })
}

/// `original_max_position_embeddings`, or `max_position_embeddings` as HF falls back to.
fn original_max(case: &CaseFile, rope_type: &str) -> Result<f64> {
    match case.meta_opt_f64("original_max_position_embeddings")? {
        Some(v) => Ok(v),
        None => case
            .meta_opt_f64("max_position_embeddings")?
            .ok_or_else(|| {
                case.error(format!(
                    "rope_type {rope_type} needs metadata original_max_position_embeddings"
                ))
            }),
    }
}

fn list(case: &CaseFile, rope_type: &str, key: &str) -> Result<Vec<f64>> {
    case.meta_f64_list(key)?.ok_or_else(|| {
        case.error(format!(
            "rope_type {rope_type} needs metadata {key} (a list of numbers)"
        ))
    })
}

fn scaling(case: &CaseFile, rope_type: &str) -> Result<Scaling> {
    let t = rope_type;
    Ok(match t {
        "default" => Scaling::Default,
        "linear" => Scaling::Linear {
            factor: required(case, t, "factor")?,
        },
        "llama3" => Scaling::Llama3 {
            factor: required(case, t, "factor")?,
            low_freq_factor: required(case, t, "low_freq_factor")?,
            high_freq_factor: required(case, t, "high_freq_factor")?,
            original_max_position_embeddings: required(case, t, "original_max_position_embeddings")?,
        },
        "yarn" => Scaling::Yarn {
            factor: required(case, t, "factor")?,
            original_max_position_embeddings: original_max(case, t)?,
            beta_fast: case.meta_f64("beta_fast", 32.0)?,
            beta_slow: case.meta_f64("beta_slow", 1.0)?,
            attention_factor: case.meta_opt_f64("attention_factor")?,
            mscale: case.meta_opt_f64("mscale")?,
            mscale_all_dim: case.meta_opt_f64("mscale_all_dim")?,
            truncate: case.meta_bool("truncate", true)?,
        },
        "dynamic" => Scaling::Dynamic {
            factor: required(case, t, "factor")?,
            original_max_position_embeddings: original_max(case, t)?,
        },
        "longrope" => {
            let orig = required(case, t, "original_max_position_embeddings")?;
            let factor = match case.meta_opt_f64("factor")? {
                Some(f) => f,
                None => case
                    .meta_opt_f64("max_position_embeddings")?
                    .map_or(1.0, |m| m / orig),
            };
            Scaling::LongRope {
                short_factor: list(case, t, "short_factor")?,
                long_factor: list(case, t, "long_factor")?,
                factor,
                original_max_position_embeddings: orig,
                attention_factor: case.meta_opt_f64("attention_factor")?,
            }
        }
        "inv_freq" => Scaling::InvFreq {
            inv_freq: list(case, t, "inv_freq")?,
            attention_factor: case.meta_f64("attention_factor", 1.0)?,
        },
        other => {
            return Err(case.error(format!(
                "unknown rope_type {other:?}; known: default, linear, llama3, yarn, dynamic, longrope, inv_freq"
            )))
        }
    })
}

/// `[batch, seq, heads, head_dim]` of a rank-3 or rank-4 input.
fn shape_of(case: &CaseFile, name: &str, t: &HostTensor) -> Result<[usize; 4]> {
    match t.shape[..] {
        [s, h, d] => Ok([1, s, h, d]),
        [b, s, h, d] => Ok([b, s, h, d]),
        _ => Err(case.error(format!(
            "{name} has shape {:?}; it must be [seq, heads, head_dim] or [batch, seq, heads, head_dim]",
            t.shape
        ))),
    }
}

fn variant_name(v: &Variant, what: &str) -> String {
    format!("{} {what}", v.name())
}

/// Run a `rope` case on `ctx` and on the reference.
pub fn run(ctx: &Context, case: &CaseFile) -> Result<OpResult> {
    let inputs: Vec<&str> =
        match (
            case.opt_tensor("x")?.is_some(),
            case.opt_tensor("q")?.is_some(),
            case.opt_tensor("k")?.is_some(),
        ) {
            (true, false, false) => vec!["x"],
            (false, true, true) => vec!["q", "k"],
            _ => return Err(case.error(
                "rope needs either x, or both q and k (rotated together by the fused encode_qk)",
            )),
        };
    let (x, dtype) = case.storage_tensor(inputs[0])?;
    let shape4 = shape_of(case, inputs[0], x)?;
    let k_input = match inputs.get(1) {
        Some(&name) => {
            let (k, kd) = case.storage_tensor(name)?;
            if kd != dtype {
                return Err(case.error(format!("k is {kd} but q is {dtype}; they must match")));
            }
            let ks = shape_of(case, name, k)?;
            if k.shape.len() != x.shape.len()
                || ks[0] != shape4[0]
                || ks[1] != shape4[1]
                || ks[3] != shape4[3]
            {
                return Err(case.error(format!(
                    "k has shape {:?} but q has {:?}: batch, seq and head_dim must match",
                    k.shape, x.shape
                )));
            }
            Some((k, ks))
        }
        None => None,
    };
    let [batch, seq, _, head_dim] = shape4;
    let theta = case.meta_f64("theta", 10000.0)?;
    let layout = match case.meta_str("layout", "half").as_str() {
        "half" => Layout::Half,
        "interleaved" => Layout::Interleaved,
        other => {
            return Err(case.error(format!(
                "metadata layout={other:?}; it must be half or interleaved"
            )))
        }
    };
    let rotary_dim = match case.meta_opt_i64("rotary_dim")? {
        Some(r) if r < 0 => {
            return Err(case.error(format!("metadata rotary_dim={r} must be >= 0")));
        }
        r => r.map(|r| r as usize),
    };
    let rope_type = case.meta_str("rope_type", "default");
    let scaling = scaling(case, &rope_type)?;
    let offset = case.meta_opt_i64("offset")?;

    let mrope_section = match case.meta_f64_list("mrope_section")? {
        None => None,
        Some(v) => {
            let ok = v.len() == 3 && v.iter().all(|&e| e >= 0.0 && e.fract() == 0.0 && e < 1e9);
            if !ok {
                return Err(case.error(format!(
                    "metadata mrope_section={v:?}; it must be three pair counts [t, h, w]"
                )));
            }
            Some([v[0] as usize, v[1] as usize, v[2] as usize])
        }
    };
    let mrope_interleaved = case.meta_bool("mrope_interleaved", false)?;
    // Rows of positions: 3 (time, height, width) for multimodal RoPE.
    let rows = if mrope_section.is_some() { 3 } else { 1 };

    // Host positions, `[rows, batch * seq]`, for the reference; and the GPU form.
    let pos_tensor = case.opt_tensor("positions")?;
    let (host_pos, ids): (Vec<i64>, Option<PositionIds>) = match pos_tensor {
        Some(p) => {
            if !matches!(p.dtype, HostDType::I32 | HostDType::I64) {
                return Err(
                    case.error(format!("positions is {:?}; it must be I32 or I64", p.dtype))
                );
            }
            if offset.is_some() {
                return Err(
                    case.error("metadata offset and a positions tensor are both given; use one")
                );
            }
            let mut p32 = Vec::with_capacity(p.numel());
            for &v in &p.values {
                if v < i32::MIN as f64 || v > i32::MAX as f64 {
                    return Err(case.error(format!(
                        "position {v} does not fit the kernel's 32-bit positions"
                    )));
                }
                p32.push(v as i32);
            }
            // The op checks the shape; the reference needs it right first.
            let lead: &[usize] = if rows == 3 { &[3] } else { &[] };
            let per_seq = [lead, &[seq]].concat();
            let per_batch = [lead, &[batch, seq]].concat();
            let host: Vec<i64> = if p.shape == per_seq {
                p32.chunks(seq)
                    .flat_map(|row| (0..batch).flat_map(move |_| row.iter().map(|&v| v as i64)))
                    .collect()
            } else if p.shape == per_batch {
                p32.iter().map(|&v| v as i64).collect()
            } else {
                return Err(case.error(format!(
                    "positions has shape {:?}; {} {:?} needs {per_seq:?} or {per_batch:?}",
                    p.shape, inputs[0], x.shape
                )));
            };
            (host, Some(PositionIds::upload(ctx, &p32, &p.shape)?))
        }
        None => {
            let start = offset.unwrap_or(0);
            let last = start.checked_add(seq as i64 - 1);
            if start < i32::MIN as i64 || last.is_none_or(|l| l > i32::MAX as i64) {
                return Err(case.error(format!(
                    "metadata offset={start} does not fit the kernel's 32-bit positions"
                )));
            }
            let host = (0..rows * batch)
                .flat_map(|_| (0..seq as i64).map(move |s| start + s))
                .collect();
            (host, None)
        }
    };
    let seq_len = match case.meta_opt_i64("seq_len")? {
        Some(n) if n < 0 => {
            return Err(case.error(format!("metadata seq_len={n} must be >= 0")));
        }
        Some(n) => n as usize,
        None => (host_pos.iter().copied().max().unwrap_or(0).max(-1) + 1) as usize,
    };
    let op = Rope {
        layout,
        rotary_dim,
        theta,
        scaling,
        seq_len: Some(seq_len),
        mrope_section,
        mrope_interleaved,
        ..Rope::default()
    };
    let positions = match &ids {
        Some(p) => Positions::Ids(p),
        None => Positions::Start(offset.unwrap_or(0) as i32),
    };
    // Validated by the op before the reference runs (it assumes a valid rotary_dim).
    op.validate_for(head_dim, dtype)?;
    let (inv, attn) = op.inv_freq(head_dim, seq_len)?;
    let rd = rotary_dim.unwrap_or(head_dim);
    // Per-head norm weights, for the inputs in order (x; or q, k).
    let names: &[&str] = if k_input.is_some() {
        &["q_norm_weight", "k_norm_weight"]
    } else {
        &["norm_weight"]
    };
    let mut norm_w: Vec<Option<&HostTensor>> = Vec::new();
    for &name in names {
        let w = match case.opt_tensor(name)? {
            Some(_) => {
                let (w, wd) = case.storage_tensor(name)?;
                if wd != dtype {
                    return Err(case.error(format!(
                        "{name} is {wd} but {} is {dtype}; they must match",
                        inputs[0]
                    )));
                }
                if w.shape != [head_dim] {
                    return Err(case.error(format!(
                        "{name} has shape {:?}; it must be [{head_dim}] (head_dim)",
                        w.shape
                    )));
                }
                Some(w)
            }
            None => None,
        };
        norm_w.push(w);
    }
    let (norm_eps, norm_offset) = if norm_w.iter().any(Option::is_some) {
        (
            case.meta_f64("norm_eps", 1e-6)? as f32,
            case.meta_f64("norm_weight_offset", 0.0)? as f32,
        )
    } else {
        (0.0, 0.0)
    };
    let norm_w_gpu = norm_w
        .iter()
        .map(|w| {
            w.map(|w| -> Result<HeadNorm> {
                let t = ctx.upload_as(&w.to_f32(), &w.shape, dtype)?;
                Ok(HeadNorm {
                    weight: t,
                    eps: norm_eps,
                    weight_offset: norm_offset,
                })
            })
            .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let reference = |t: &HostTensor, s4: [usize; 4], w: Option<&HostTensor>| {
        let normed = match w {
            Some(w) => crate::reference::rope::head_norm(
                &t.values,
                &w.values,
                norm_eps as f64,
                norm_offset as f64,
            ),
            None => t.values.clone(),
        };
        match mrope_section {
            Some(section) => {
                let mrope = crate::reference::rope::Mrope {
                    section,
                    interleaved: mrope_interleaved,
                };
                crate::reference::rope::rope_mrope(
                    &normed, s4, &host_pos, mrope, &inv, attn, layout, rd,
                )
            }
            None => crate::reference::rope::rope(&normed, s4, &host_pos, &inv, attn, layout, rd),
        }
    };
    let Some((k, k4)) = k_input else {
        // In place, as a model runs it.
        let xt = ctx.upload_as(&x.to_f32(), &x.shape, dtype)?;
        let (variant, cpu) = match &norm_w_gpu[0] {
            Some(norm) => {
                op.run_norm(ctx, &xt, norm, positions)?;
                (
                    "rope_norm in place".to_string(),
                    reference(x, shape4, norm_w[0]),
                )
            }
            None => {
                let v = op.variant(ctx, &xt, None, None, positions)?;
                op.run(ctx, &xt, positions)?;
                (variant_name(&v, "in place"), reference(x, shape4, None))
            }
        };
        return Ok(OpResult {
            dtype,
            variant,
            shape: x.shape.clone(),
            tolerance: tolerance(dtype),
            outputs: vec![OpOutput {
                name: "out".into(),
                shape: x.shape.clone(),
                gpu: ctx.read_f32(&xt)?,
                cpu,
            }],
        });
    };
    // q and k side by side in one buffer, token by token, as a fused QKV projection writes them.
    let (hq, hk) = (shape4[2], k4[2]);
    let row = (hq + hk) * head_dim;
    let tokens = batch * seq;
    let mut fused = Vec::with_capacity(tokens * row);
    let (qv, kv) = (x.to_f32(), k.to_f32());
    for t in 0..tokens {
        fused.extend_from_slice(&qv[t * hq * head_dim..][..hq * head_dim]);
        fused.extend_from_slice(&kv[t * hk * head_dim..][..hk * head_dim]);
    }
    let buf = ctx.upload_as(&fused, &[tokens, row], dtype)?;
    let view = |offset: usize, shape: &[usize]| {
        let strides: Vec<usize> = if shape.len() == 4 {
            vec![seq * row, row, head_dim, 1]
        } else {
            vec![row, head_dim, 1]
        };
        Tensor::with_strides(buf.buffer(), offset, shape, &strides, dtype)
    };
    let (qt, kt) = (view(0, &x.shape), view(hq * head_dim, &k.shape));
    let (qn, kn) = (norm_w_gpu[0].as_ref(), norm_w_gpu[1].as_ref());
    let variant = if qn.is_some() || kn.is_some() {
        "rope_norm encode_qk_norm (q and k in one buffer)".to_string()
    } else {
        let v = op.variant(ctx, &qt, Some(&kt), None, positions)?;
        variant_name(&v, "encode_qk (q and k in one buffer)")
    };
    op.run_qk_norm(ctx, &qt, &kt, qn, kn, positions)?;
    Ok(OpResult {
        dtype,
        variant,
        shape: x.shape.clone(),
        tolerance: tolerance(dtype),
        outputs: vec![
            OpOutput {
                name: "q".into(),
                shape: x.shape.clone(),
                gpu: ctx.read_f32(&qt)?,
                cpu: reference(x, shape4, norm_w[0]),
            },
            OpOutput {
                name: "k".into(),
                shape: k.shape.clone(),
                gpu: ctx.read_f32(&kt)?,
                cpu: reference(k, k4, norm_w[1]),
            },
        ],
    })
}

//! The benchmark's cases: the copy ceilings, then every kernel and variant on shapes from real
//! models, each beside its unfused (`naive`) baseline where it has one.

use super::harness::{Case, TENSOR_BYTES};
use super::{baseline, copy, matmul, paged};
use crate::context::Context;
use crate::error::Result;
use crate::ops::attention::Attention;
use crate::ops::rms_norm;
use crate::ops::rms_norm::Strategy;
use crate::ops::rope::qkv_views;
use crate::tensor::{DType, Tensor};
use crate::{KvCache, KvCacheConfig, KvFormat, Layout, Positions, Residual, RmsNorm, Rope};

/// Deterministic, cheap test data in [-1, 1): values do not change the speed of these kernels,
/// but denormals, NaN and infinities could, so there are none.
fn pattern(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed).wrapping_mul(2_654_435_761).rotate_right(13);
            (h & 0xffff) as f32 / 32768.0 - 1.0
        })
        .collect()
}

pub(super) fn upload_pattern(
    ctx: &Context,
    shape: &[usize],
    dtype: DType,
    seed: u32,
) -> Result<Tensor> {
    let n = shape.iter().product();
    ctx.upload_as(&pattern(n, seed), shape, dtype)
}

// ---------------------------------------------------------------- the ceilings

fn copy_cases() -> Vec<Case> {
    let bytes = TENSOR_BYTES;
    let words = (bytes / 4) as usize;
    let mut cases = Vec::new();
    let shape = vec![("bytes", bytes)];
    cases.push(Case {
        kernel: "copy",
        variant: "buffer_copy".into(),
        model: "ceiling",
        dtype: DType::F32,
        shape: shape.clone(),
        bytes: 2 * bytes,
        flops: None,
        group: "copy".into(),
        prepare: Box::new(move |ctx| {
            let src = upload_pattern(ctx, &[words], DType::F32, 1)?;
            let dst = ctx.empty(&[words], DType::F32)?;
            Ok(Box::new(move |_ctx, enc| {
                enc.copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, bytes);
                Ok(())
            }))
        }),
    });
    for v in copy::bench_variants() {
        cases.push(Case {
            kernel: "copy",
            variant: v.name(),
            model: "ceiling",
            dtype: DType::F32,
            shape: shape.clone(),
            bytes: 2 * bytes,
            flops: None,
            group: "copy".into(),
            prepare: Box::new(move |ctx| {
                let src = upload_pattern(ctx, &[words], DType::F32, 2)?;
                let dst = ctx.empty(&[words], DType::F32)?;
                Ok(Box::new(move |ctx, enc| v.encode(ctx, enc, &src, &dst)))
            }),
        });
    }
    cases
}

// ---------------------------------------------------------------- RMSNorm

/// (model, hidden, Gemma-style `(1 + w)`)
const NORM_MODELS: &[(&str, usize, bool)] = &[
    ("Llama-3-8B", 4096, false),
    ("Llama-3-70B", 8192, false),
    ("Qwen2.5-7B", 3584, false),
    ("Gemma-2-9B", 3584, true),
    ("Mistral-7B", 4096, false),
];

fn rms_norm_variant_name(
    ctx: &Context,
    strategy: Strategy,
    rows: usize,
    dtype: DType,
    n: usize,
    residual: bool,
) -> String {
    let v = rms_norm::Variant::choose_for(
        ctx,
        strategy,
        rows,
        dtype,
        n,
        residual,
        [rms_norm::SRC_OWN; 3],
        true,
    );
    let prefix = if residual {
        "fused_residual_"
    } else {
        "fused_"
    };
    format!("{prefix}{}", v.name())
}

fn rms_norm_cases(ctx: &Context, quick: bool) -> Vec<Case> {
    // (model index, dtype, residual, with naive baseline)
    let mut plan: Vec<(usize, DType, bool, bool)> = Vec::new();
    if quick {
        plan.extend([
            (0, DType::F32, false, true),
            (0, DType::BF16, false, true),
            (1, DType::F32, false, true),
            (2, DType::F32, false, false),
            (3, DType::F16, false, false),
            (0, DType::F16, false, false),
            (0, DType::F32, true, false),
            (0, DType::BF16, true, false),
            (0, DType::F16, true, false),
        ]);
    } else {
        for m in 0..NORM_MODELS.len() {
            for dtype in DType::ALL {
                plan.push((m, dtype, false, true));
                plan.push((m, dtype, true, false));
            }
        }
    }
    let mut cases = Vec::new();
    for (m, dtype, residual, naive) in plan {
        let (model, hidden, gemma) = NORM_MODELS[m];
        let row_bytes = (hidden * dtype.size()) as u64;
        let rows = TENSOR_BYTES.div_ceil(row_bytes) as usize;
        let tensor = rows as u64 * row_bytes;
        let op = if gemma {
            RmsNorm::gemma(1e-6)
        } else {
            RmsNorm::new(1e-5)
        };
        let shape = vec![("rows", rows as u64), ("hidden", hidden as u64)];
        let group = format!("rms_norm/{model}/{dtype}/{rows}x{hidden}/res{residual}");
        let weight_bytes = row_bytes;
        // The dispatcher's choice, plus the other strategy where it differs, so the effect of
        // the per-adapter choice shows.
        let auto = rms_norm::Variant::choose_for(
            ctx,
            Strategy::Auto,
            rows,
            dtype,
            hidden,
            residual,
            [rms_norm::SRC_OWN; 3],
            true,
        );
        let mut strategies = vec![Strategy::Auto];
        // The other strategy beside the dispatcher's choice shows what the choice buys (in
        // --quick only on the first shape: it is slow on lavapipe).
        if auto.per_invocation && (!quick || cases.is_empty()) {
            strategies.push(Strategy::WorkgroupPerRow);
        }
        // f16 read natively (GPUs with SHADER_F16) beside the integer decode of the same
        // kernel and reduction, so one run on such a GPU measures what the native reads buy.
        if auto.native_f16 {
            strategies.push(if auto.subgroup {
                Strategy::WorkgroupSubgroup
            } else {
                Strategy::WorkgroupTree
            });
        }
        if residual {
            for strategy in strategies {
                cases.push(Case {
                    kernel: "rms_norm",
                    variant: rms_norm_variant_name(ctx, strategy, rows, dtype, hidden, true),
                    model,
                    dtype,
                    shape: shape.clone(),
                    // x and residual read, out and residual_out written, weight read
                    bytes: 4 * tensor + weight_bytes,
                    flops: None,
                    group: group.clone(),
                    prepare: Box::new(move |ctx| {
                        let x = upload_pattern(ctx, &[rows, hidden], dtype, 3)?;
                        let r = upload_pattern(ctx, &[rows, hidden], dtype, 4)?;
                        let w = upload_pattern(ctx, &[hidden], dtype, 5)?;
                        let out = ctx.empty(&[rows, hidden], dtype)?;
                        let rout = ctx.empty(&[rows, hidden], dtype)?;
                        Ok(Box::new(move |ctx, enc| {
                            op.encode_with(
                                ctx,
                                enc,
                                &x,
                                &w,
                                &out,
                                Some(Residual {
                                    residual: &r,
                                    residual_out: &rout,
                                }),
                                strategy,
                            )
                        }))
                    }),
                });
            }
            continue;
        }
        for strategy in strategies {
            cases.push(Case {
                kernel: "rms_norm",
                variant: rms_norm_variant_name(ctx, strategy, rows, dtype, hidden, false),
                model,
                dtype,
                shape: shape.clone(),
                bytes: 2 * tensor + weight_bytes,
                flops: None,
                group: group.clone(),
                prepare: Box::new(move |ctx| {
                    let x = upload_pattern(ctx, &[rows, hidden], dtype, 3)?;
                    let w = upload_pattern(ctx, &[hidden], dtype, 5)?;
                    let out = ctx.empty(&[rows, hidden], dtype)?;
                    Ok(Box::new(move |ctx, enc| {
                        op.encode_with(ctx, enc, &x, &w, &out, None, strategy)
                    }))
                }),
            });
        }
        if naive {
            cases.push(Case {
                kernel: "rms_norm",
                variant: "naive_reduce_then_scale".into(),
                model,
                dtype,
                shape,
                bytes: 2 * tensor + weight_bytes,
                flops: None,
                group,
                prepare: Box::new(move |ctx| {
                    let x = upload_pattern(ctx, &[rows, hidden], dtype, 3)?;
                    let w = upload_pattern(ctx, &[hidden], dtype, 5)?;
                    let out = ctx.empty(&[rows, hidden], dtype)?;
                    let scratch = ctx.empty(&[rows], DType::F32)?;
                    Ok(Box::new(move |ctx, enc| {
                        baseline::rms_norm_naive(
                            ctx,
                            enc,
                            &x,
                            &w,
                            &out,
                            &scratch,
                            op.eps,
                            op.weight_offset,
                        )
                    }))
                }),
            });
        }
    }
    cases
}

// ---------------------------------------------------------------- RoPE

/// (model, q heads, kv heads, head_dim, rope_theta)
const ROPE_MODELS: &[(&str, usize, usize, usize, f64)] = &[
    ("Llama-3-8B", 32, 8, 128, 500_000.0),
    ("Llama-3-70B", 64, 8, 128, 500_000.0),
    ("Qwen2.5-7B", 28, 4, 128, 1_000_000.0),
    ("Gemma-2-9B", 16, 8, 256, 10_000.0),
    ("Mistral-7B", 32, 8, 128, 1_000_000.0),
];

fn rope_cases(quick: bool) -> Vec<Case> {
    // (model index, dtype, fused-QKV Q+K variant, naive baseline)
    let plan: Vec<(usize, DType, bool, bool)> = if quick {
        vec![
            (0, DType::F32, true, true),
            (0, DType::BF16, false, true),
            (2, DType::F32, false, false),
            (3, DType::F32, false, false),
        ]
    } else {
        (0..ROPE_MODELS.len())
            .flat_map(|m| DType::ALL.into_iter().map(move |d| (m, d, true, true)))
            .collect()
    };
    let mut cases = Vec::new();
    for (m, dtype, qkv, naive) in plan {
        let (model, n_heads, n_kv, head_dim, theta) = ROPE_MODELS[m];
        // Q and K heads of every token, rotated in place: each element read and written once.
        let heads = n_heads + n_kv;
        let token_bytes = (heads * head_dim * dtype.size()) as u64;
        let seq = (TENSOR_BYTES.div_ceil(token_bytes) as usize).div_ceil(256) * 256;
        let bytes = 2 * seq as u64 * token_bytes;
        let shape = vec![
            ("seq", seq as u64),
            ("heads", heads as u64),
            ("head_dim", head_dim as u64),
        ];
        let group = format!("rope/{model}/{dtype}/{seq}");
        let op = Rope::new(theta, Layout::Half);
        let op2 = op.clone();
        cases.push(Case {
            kernel: "rope",
            variant: "exact".into(),
            model,
            dtype,
            shape: shape.clone(),
            bytes,
            flops: None,
            group: group.clone(),
            prepare: Box::new(move |ctx| {
                let x = upload_pattern(ctx, &[seq, heads, head_dim], dtype, 6)?;
                Ok(Box::new(move |ctx, enc| {
                    op2.encode(ctx, enc, &x, Positions::Start(0))
                }))
            }),
        });
        if qkv {
            let op2 = op.clone();
            cases.push(Case {
                kernel: "rope",
                variant: "exact_qk_in_fused_qkv".into(),
                model,
                dtype,
                shape: shape.clone(),
                bytes,
                flops: None,
                group: group.clone(),
                prepare: Box::new(move |ctx| {
                    let row = (n_heads + 2 * n_kv) * head_dim;
                    let buf = upload_pattern(ctx, &[seq * row], dtype, 7)?;
                    let (q, k, _) = qkv_views(buf.buffer(), 0, seq, n_heads, n_kv, head_dim, dtype);
                    Ok(Box::new(move |ctx, enc| {
                        op2.encode_qk(ctx, enc, &q, &k, Positions::Start(0))
                    }))
                }),
            });
        }
        if naive {
            cases.push(Case {
                kernel: "rope",
                variant: "naive_table_then_rotate".into(),
                model,
                dtype,
                shape,
                bytes,
                flops: None,
                group,
                prepare: Box::new(move |ctx| {
                    let x = upload_pattern(ctx, &[seq, heads, head_dim], dtype, 6)?;
                    let (inv, _) = op.inv_freq(head_dim, seq)?;
                    let inv: Vec<f32> = inv.iter().map(|&v| v as f32).collect();
                    let inv = ctx.upload(&inv, &[head_dim / 2])?;
                    let table = ctx.empty(&[seq * head_dim], DType::F32)?;
                    Ok(Box::new(move |ctx, enc| {
                        baseline::rope_naive(ctx, enc, &x, &inv, &table, 0)
                    }))
                }),
            });
        }
    }
    cases
}

// ---------------------------------------------------------------- attention

/// The attention shapes of the benchmark: (model, q heads, kv heads, head_dim, softcap,
/// sliding window); public so that a peer benchmark builds the same problems.
pub const ATTN_MODELS: &[(&str, usize, usize, usize, f32, u32)] = &[
    ("Llama-3-8B", 32, 8, 128, 0.0, 0),
    ("Llama-3-70B", 64, 8, 128, 0.0, 0),
    ("Qwen2.5-7B", 28, 4, 128, 0.0, 0),
    ("Gemma-2-9B", 16, 8, 256, 50.0, 0),
    ("Mistral-7B", 32, 8, 128, 0.0, 4096),
];

#[allow(clippy::too_many_arguments)]
fn attention_case(
    variant: String,
    model: &'static str,
    dtype: DType,
    (q_len, kv_len, n_heads, n_kv, head_dim): (usize, usize, usize, usize, usize),
    softcap: f32,
    window: u32,
    naive: bool,
    native_f16: Option<bool>,
) -> Case {
    let size = dtype.size() as u64;
    // A sliding window reads only the keys it can see (decode: the last `window`).
    let visible = if window > 0 && q_len == 1 {
        kv_len.min(window as usize)
    } else {
        kv_len
    };
    let kv_bytes = 2 * (visible * n_kv * head_dim) as u64 * size;
    let q_bytes = 2 * (q_len * n_heads * head_dim) as u64 * size;
    let prefill = variant.contains("prefill");
    // 4 q_len kv_len head_dim n_heads (two matmuls), halved for causal prefill; decode counts
    // the keys it reads, so its GFLOP/s sits beside the matmul ceiling (GQA decode does g x the
    // arithmetic per K/V byte of MHA).
    let flops = Some(match prefill {
        true => 4.0 * (q_len * kv_len * head_dim * n_heads) as f64 / 2.0,
        false => 4.0 * (q_len * visible * head_dim * n_heads) as f64,
    });
    let mut shape = vec![
        ("q_len", q_len as u64),
        ("kv_len", kv_len as u64),
        ("n_heads", n_heads as u64),
        ("n_kv_heads", n_kv as u64),
        ("head_dim", head_dim as u64),
    ];
    if window > 0 {
        shape.push(("window", window as u64));
    }
    Case {
        kernel: "attention",
        group: format!("attention/{model}/{dtype}/{q_len}x{kv_len}x{n_heads}x{n_kv}"),
        variant,
        model,
        dtype,
        shape,
        // K and V read once (the visible part), q read and out written once.
        bytes: kv_bytes + q_bytes,
        flops,
        prepare: Box::new(move |ctx| {
            let q = upload_pattern(ctx, &[q_len, n_heads, head_dim], dtype, 8)?;
            let k = upload_pattern(ctx, &[kv_len, n_kv, head_dim], dtype, 9)?;
            let v = upload_pattern(ctx, &[kv_len, n_kv, head_dim], dtype, 10)?;
            let out = ctx.empty(&[q_len, n_heads, head_dim], dtype)?;
            if naive {
                let scratch =
                    baseline::AttentionScratch::new(ctx, q_len, kv_len, n_heads, head_dim)?;
                return Ok(Box::new(move |ctx, enc| {
                    baseline::attention_naive(ctx, enc, &q, &k, &v, &out, &scratch, true)
                }));
            }
            let op = Attention {
                softcap,
                window,
                native_f16,
                ..Attention::causal()
            };
            Ok(Box::new(move |ctx, enc| {
                op.encode(ctx, enc, &q, &k, &v, None, &out)
            }))
        }),
    }
}

/// Decode over a KV cache of `format` (Llama-3-8B heads, bf16 q and out) at `kv_len` keys: variant
/// `decode_gqa4_kv_{format}`, in the bf16 decode's group, its bytes the K/V's as stored (data and
/// scales) and q's and out's. The bf16 cache's row (`decode_gqa4_kv_bf16`) is the group's
/// `speedup_vs_bf16` base.
fn quantized_decode_case(format: KvFormat, kv_len: usize) -> Case {
    let (model, nh, nkv, hd, _, _) = ATTN_MODELS[0];
    let dtype = DType::BF16;
    let kv_bytes = 2 * format.buffer_bytes(kv_len * nkv, hd) as u64;
    let q_bytes = 2 * (nh * hd * dtype.size()) as u64;
    Case {
        kernel: "attention",
        group: format!("attention/{model}/{dtype}/1x{kv_len}x{nh}x{nkv}"),
        variant: format!("decode_gqa{}_kv_{format}", nh / nkv),
        model,
        dtype,
        shape: vec![
            ("q_len", 1),
            ("kv_len", kv_len as u64),
            ("n_heads", nh as u64),
            ("n_kv_heads", nkv as u64),
            ("head_dim", hd as u64),
        ],
        bytes: kv_bytes + q_bytes,
        flops: Some(4.0 * (kv_len * hd * nh) as f64),
        prepare: Box::new(move |ctx| {
            let q = upload_pattern(ctx, &[1, nh, hd], dtype, 8)?;
            let k = upload_pattern(ctx, &[1, kv_len, nkv, hd], dtype, 9)?;
            let v = upload_pattern(ctx, &[1, kv_len, nkv, hd], dtype, 10)?;
            let mut cache = KvCache::new(
                ctx,
                KvCacheConfig {
                    batch: 1,
                    n_kv_heads: nkv,
                    capacity: kv_len,
                    head_dim: hd,
                    dtype,
                    kv_format: Some(format),
                },
            )?;
            cache.append_run(ctx, &k, &v)?;
            let out = ctx.empty(&[1, nh, hd], dtype)?;
            let op = Attention::causal();
            Ok(Box::new(move |ctx, enc| {
                op.encode_cached(ctx, enc, &q, &cache, None, &out)
            }))
        }),
    }
}

fn attention_cases(ctx: &Context, quick: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    // f16 decode where the subgroup decode reads f16 natively (GPUs with SHADER_F16), beside the
    // same kernel with the integer decode, so one run measures what the native reads buy.
    if crate::ops::attention::subgroup_decode_wanted(ctx) && crate::ops::native_f16_wanted(ctx) {
        let (model, nh, nkv, hd, softcap, window) = ATTN_MODELS[0];
        for (name, native) in [
            ("decode_gqa4", None),
            ("decode_gqa4_integer_f16", Some(false)),
        ] {
            cases.push(attention_case(
                name.to_string(),
                model,
                DType::F16,
                (1, 4096, nh, nkv, hd),
                softcap,
                window,
                false,
                native,
            ));
        }
    }
    let decode = |m: usize, dtype: DType, kv_len: usize, mha: bool| {
        let (model, nh, nkv, hd, softcap, window) = ATTN_MODELS[m];
        let nkv = if mha { nh } else { nkv };
        let name = if mha {
            "decode_mha".to_string()
        } else {
            format!("decode_gqa{}", nh / nkv)
        };
        attention_case(
            name,
            model,
            dtype,
            (1, kv_len, nh, nkv, hd),
            softcap,
            window,
            false,
            None,
        )
    };
    // Prefill on one GQA group (g query heads over one kv head): the naive baseline's score
    // matrix for all heads would pass the 128 MiB binding limit, and lavapipe would need minutes.
    // `--quick` uses a single query head to stay within its time budget.
    let prefill = |m: usize, dtype: DType, len: usize, naive: bool| {
        let (model, nh, nkv, hd, softcap, window) = ATTN_MODELS[m];
        let g = if quick { 1 } else { nh / nkv };
        let name = if naive {
            "naive_prefill_unfused".to_string()
        } else {
            "prefill".to_string()
        };
        let (softcap, window) = if naive { (0.0, 0) } else { (softcap, window) };
        attention_case(
            name,
            model,
            dtype,
            (len, len, g, 1, hd),
            softcap,
            window,
            naive,
            None,
        )
    };
    if quick {
        // Decode at kv_len 4096: MHA, GQA-4 (Llama-3-8B) and GQA-8 (Llama-3-70B), f32 and bf16.
        for dtype in [DType::F32, DType::BF16] {
            cases.push(decode(0, dtype, 4096, true));
            cases.push(decode(0, dtype, 4096, false));
            cases.push(decode(1, dtype, 4096, false));
        }
        cases.push(prefill(0, DType::F32, 2048, false));
        cases.push(prefill(0, DType::F32, 2048, true));
    } else {
        for m in 0..ATTN_MODELS.len() {
            for (dtype, lens) in [
                (DType::F32, [512, 4096, 16384]),
                (DType::BF16, [512, 4096, 32768]),
            ] {
                for kv_len in lens {
                    cases.push(decode(m, dtype, kv_len, false));
                }
            }
        }
        cases.push(decode(0, DType::F32, 4096, true));
        cases.push(decode(0, DType::BF16, 4096, true));
        // Llama-3-8B decode over a bf16 cache and the quantized ones, in the group of the bf16
        // decode of the same shape.
        for kv_len in [4096, 32768] {
            for format in [KvFormat::BF16].into_iter().chain(KvFormat::QUANTIZED) {
                cases.push(quantized_decode_case(format, kv_len));
            }
        }
        for len in [512, 2048] {
            cases.push(prefill(0, DType::F32, len, false));
            cases.push(prefill(0, DType::F32, len, true));
        }
        cases.push(prefill(0, DType::F32, 4096, false));
        cases.push(prefill(0, DType::BF16, 2048, false));
        cases.push(prefill(3, DType::F32, 2048, false));
        cases.push(prefill(4, DType::F32, 2048, false));
    }
    cases
}

// ---------------------------------------------------------------- the matmul ceiling

/// The matmul tilings on the two products of one 2048-token prefill head with head_dim 128:
/// QK^T (`[2048, 128] x [128, 2048]`) and PV (`[2048, 2048] x [2048, 128]`).
fn matmul_cases(quick: bool) -> Vec<Case> {
    let shapes: &[(&str, usize, usize, usize)] = if quick {
        &[("qk", 2048, 2048, 128)]
    } else {
        &[("qk", 2048, 2048, 128), ("pv", 2048, 128, 2048)]
    };
    let mut cases = Vec::new();
    for &(product, m, n, k) in shapes {
        for v in matmul::Variant::BENCH {
            cases.push(Case {
                kernel: "matmul",
                variant: v.name(),
                model: product,
                dtype: DType::F32,
                shape: vec![("m", m as u64), ("n", n as u64), ("k", k as u64)],
                bytes: 4 * (m * k + k * n + m * n) as u64,
                flops: Some(2.0 * (m * n * k) as f64),
                group: format!("matmul/{m}x{n}x{k}"),
                prepare: Box::new(move |ctx| {
                    let a = upload_pattern(ctx, &[m, k], DType::F32, 11)?;
                    let b = upload_pattern(ctx, &[k, n], DType::F32, 12)?;
                    let c = ctx.empty(&[m, n], DType::F32)?;
                    Ok(Box::new(move |ctx, enc| v.encode(ctx, enc, &a, &b, &c)))
                }),
            });
        }
    }
    cases
}

/// Every case of the benchmark, ceilings first; the matmul ceiling runs right before prefill
/// attention, so the two see the same host load as nearly as possible.
pub fn cases(ctx: &Context, quick: bool) -> Vec<Case> {
    let mut c = copy_cases();
    c.extend(rms_norm_cases(ctx, quick));
    c.extend(rope_cases(quick));
    let (prefill, decode): (Vec<Case>, Vec<Case>) = attention_cases(ctx, quick)
        .into_iter()
        .partition(|c| c.variant.contains("prefill"));
    c.extend(decode);
    c.extend(matmul_cases(quick));
    c.extend(prefill);
    c.extend(paged::cases(quick));
    c
}

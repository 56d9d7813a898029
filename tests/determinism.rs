//! Determinism: the same inputs give bitwise-identical outputs across runs for every kernel
//! family and dtype and across `Context`s for every family, and decode attention repeats bitwise at every
//! split count (its merge adds the partial results in a fixed order).

use crate::common;

use common::{ctx, Rng};
use llama_kernels::compare::{compare, tolerance};
use llama_kernels::ops::attention::Kind;
use llama_kernels::{
    Attention, Context, DType, KvCache, KvCacheConfig, Layout, PositionIds, Positions, Residual,
    RmsNorm, Rope, Scaling,
};

/// head_dim of the attention and KV-cache shapes. Bitwise repeatability does not depend on the
/// head size, and every head size is a pipeline of its own that a CPU adapter compiles on first
/// use, on each `Context`: the smallest keeps this file cheap cold.
const HD: usize = 16;

/// Output bits of every kernel family on `ctx` in `dtypes`, one entry per (family, dtype,
/// variant).
fn outputs(ctx: &Context, dtypes: &[DType]) -> Vec<(String, Vec<u32>)> {
    let mut all = Vec::new();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for &dtype in dtypes {
        let mut rng = Rng::new(7);
        let up = |rng: &mut Rng, shape: &[usize]| {
            let n: usize = shape.iter().product();
            ctx.upload_as(&rng.vec(n, 1.0), shape, dtype).unwrap()
        };
        // RMSNorm, plain (a workgroup per row) and fused residual (many rows: per invocation).
        for rows in [3usize, 100] {
            let x = up(&mut rng, &[rows, 1000]);
            let r = up(&mut rng, &[rows, 1000]);
            let w = up(&mut rng, &[1000]);
            let out = ctx.empty(&[rows, 1000], dtype).unwrap();
            let rout = ctx.empty(&[rows, 1000], dtype).unwrap();
            RmsNorm::new(1e-5).run(ctx, &x, &w, &out).unwrap();
            all.push((
                format!("rms_norm {dtype} rows {rows}"),
                bits(ctx.read_f32(&out).unwrap()),
            ));
            RmsNorm::gemma(1e-6)
                .run_residual(
                    ctx,
                    &x,
                    &w,
                    &out,
                    Residual {
                        residual: &r,
                        residual_out: &rout,
                    },
                )
                .unwrap();
            all.push((
                format!("rms_norm residual {dtype} rows {rows}"),
                bits(ctx.read_f32(&out).unwrap()),
            ));
            all.push((
                format!("residual_out {dtype} rows {rows}"),
                bits(ctx.read_f32(&rout).unwrap()),
            ));
        }
        // RoPE: both layouts, start and id positions, YaRN.
        for layout in [Layout::Half, Layout::Interleaved] {
            let x = up(&mut rng, &[2, 5, 4, 64]);
            let ids = PositionIds::upload(ctx, &[0, 7, 9, 100, 4095, 3, 1, 2, 1 << 20, 5], &[2, 5])
                .unwrap();
            let op = Rope::new(1e4, layout)
                .with_scaling(Scaling::yarn(4.0, 4096.0))
                .with_seq_len(1 << 21);
            op.run(ctx, &x, Positions::Ids(&ids)).unwrap();
            op.run(ctx, &x, Positions::Start(123_456)).unwrap();
            all.push((
                format!("rope {dtype} {layout:?}"),
                bits(ctx.read_f32(&x).unwrap()),
            ));
        }
        // Attention: prefill, decode and the CPU decode kernel, with sinks and softcap.
        let k = up(&mut rng, &[300, 2, HD]);
        let v = up(&mut rng, &[300, 2, HD]);
        let sinks = ctx.upload(&rng.vec(8, 1.0), &[8]).unwrap();
        for (q_len, kind) in [
            (20, Some(Kind::Prefill)),
            (1, Some(Kind::Decode)),
            (2, Some(Kind::DecodeKeys)),
            (1, None),
        ] {
            let q = up(&mut rng, &[q_len, 8, HD]);
            let out = ctx.empty(&[q_len, 8, HD], dtype).unwrap();
            let op = Attention {
                kind,
                softcap: 30.0,
                ..Attention::causal()
            };
            op.run(ctx, &q, &k, &v, Some(&sinks), &out).unwrap();
            all.push((
                format!("attention {dtype} {kind:?} q_len {q_len}"),
                bits(ctx.read_f32(&out).unwrap()),
            ));
        }
        // KV cache: append with RoPE, then decode over the cache.
        let mut cache = KvCache::new(
            ctx,
            KvCacheConfig {
                batch: 1,
                n_kv_heads: 2,
                capacity: 64,
                head_dim: HD,
                dtype,
                kv_format: None,
            },
        )
        .unwrap();
        let kn = up(&mut rng, &[40, 2, HD]);
        let vn = up(&mut rng, &[40, 2, HD]);
        cache
            .append_rope_run(ctx, &kn, &vn, &Rope::new(5e5, Layout::Half), None)
            .unwrap();
        all.push((
            format!("kv_cache k {dtype}"),
            bits(ctx.read_f32(&cache.k()).unwrap()),
        ));
    }
    all
}

fn assert_same(a: &[(String, Vec<u32>)], b: &[(String, Vec<u32>)], how: &str) {
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let diff = x.iter().zip(y).filter(|(p, q)| p != q).count();
        assert!(
            diff == 0,
            "{name}: {diff} of {} elements differ {how}",
            x.len()
        );
    }
}

/// Every family in every dtype twice on one context, then in f32 on a second context (what could
/// differ between contexts is the device's scheduling, which the dtype does not change; each
/// pipeline is compiled again there, which costs minutes cold on a CPU adapter).
#[test]
fn same_inputs_same_bits_across_runs_and_contexts() {
    let shared = ctx();
    let first = outputs(&shared, &DType::ALL);
    assert_same(
        &first,
        &outputs(&shared, &DType::ALL),
        "between two runs on one context",
    );
    let other = Context::new().unwrap();
    let f32_rows = first.len() / DType::ALL.len();
    assert_eq!(DType::ALL[0], DType::F32);
    assert_same(
        &first[..f32_rows],
        &outputs(&other, &[DType::F32]),
        "between two contexts",
    );
}

/// Decode attention is bitwise repeatable at every split count, for both decode kernels, in
/// every dtype, with and without a window. Different split counts add the partial sums in a
/// different association, so across counts the results agree to the dtype's tolerance, not
/// bitwise (the merge's fixed order promises repeatability per split count).
#[test]
fn decode_bits_repeat_at_every_split_count() {
    let ctx = ctx();
    for dtype in DType::ALL {
        let mut rng = Rng::new(11);
        let up = |rng: &mut Rng, shape: &[usize]| {
            let n: usize = shape.iter().product();
            ctx.upload_as(&rng.vec(n, 1.0), shape, dtype).unwrap()
        };
        let kv_len = 400;
        let k = up(&mut rng, &[kv_len, 2, HD]);
        let v = up(&mut rng, &[kv_len, 2, HD]);
        for (kind, q_len) in [
            (Kind::Decode, 1usize),
            (Kind::Decode, 3),
            (Kind::DecodeKeys, 1),
        ] {
            let q = up(&mut rng, &[q_len, 8, HD]);
            for window in [0u32, 300] {
                let mut first: Option<Vec<f32>> = None;
                for splits in [None, Some(1), Some(3), Some(16)] {
                    let what =
                        format!("{dtype} {kind:?} q_len {q_len} window {window} splits {splits:?}");
                    let op = Attention {
                        kind: Some(kind),
                        splits,
                        window,
                        ..Attention::causal()
                    };
                    let run = || {
                        let out = ctx.empty(&[q_len, 8, HD], dtype).unwrap();
                        op.run(&ctx, &q, &k, &v, None, &out).unwrap();
                        ctx.read_f32(&out).unwrap()
                    };
                    let (a, b) = (run(), run());
                    let diff = a
                        .iter()
                        .zip(&b)
                        .filter(|(x, y)| x.to_bits() != y.to_bits())
                        .count();
                    assert_eq!(diff, 0, "{what}: two runs differ in {diff} elements");
                    match &first {
                        None => first = Some(a),
                        Some(f) => {
                            let want: Vec<f64> = f.iter().map(|&x| x as f64).collect();
                            let c = compare(&a, &want);
                            assert!(
                                c.passes(tolerance(dtype)),
                                "{what} vs the first split count: {c}"
                            );
                        }
                    }
                }
            }
        }
    }
}

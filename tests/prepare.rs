//! Warm-up: `prepare` builds, before the first call, every pipeline the calls of a model's
//! shapes will use (attention's first `encode` otherwise stalls on pipeline builds), so the
//! calls themselves add none to the context's cache.

use crate::common;

use common::*;
use llama_kernels::ops::attention::Dims;
use llama_kernels::{Attention, Context, DType, KvCache, KvCacheConfig, Positions, RmsNorm, Rope};

// A small Llama-style layer: 4 q heads, 2 kv heads, head_dim 16 (hidden 64); a 7-token prefill
// and one decode step. Each test builds its pipelines on fresh contexts, so the smallest head size
// keeps the compiles a CPU adapter does on first use cheap.
const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const PREFILL: usize = 7;

fn fresh() -> Context {
    Context::new().expect("GPU tests need an adapter and must not skip")
}

#[test]
fn prepared_calls_build_no_pipeline() {
    for dtype in [DType::F32, DType::F16] {
        let ctx = fresh();
        let t = |shape: &[usize]| {
            ctx.upload_as(&vec![0.5; shape.iter().product()], shape, dtype)
                .unwrap()
        };
        let norm = RmsNorm::new(1e-5);
        let rope = Rope::default();
        let attn = Attention::default();
        let w = t(&[HIDDEN]);
        let (x7, o7, x1, o1) = (
            t(&[PREFILL, HIDDEN]),
            t(&[PREFILL, HIDDEN]),
            t(&[1, HIDDEN]),
            t(&[1, HIDDEN]),
        );
        let (q7, q1) = (t(&[PREFILL, HEADS, HEAD_DIM]), t(&[1, HEADS, HEAD_DIM]));
        let (a7, a1) = (t(&[PREFILL, HEADS, HEAD_DIM]), t(&[1, HEADS, HEAD_DIM]));
        let dims = |q_len, kv_len| Dims {
            batch: 1,
            q_len,
            kv_len,
            n_heads: HEADS,
            n_kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
        };

        let start = ctx.cached_pipelines();
        let mut built = 0;
        built += norm.prepare(&ctx, &x7, &w, &o7, None).unwrap();
        built += norm.prepare(&ctx, &x1, &w, &o1, None).unwrap();
        built += rope
            .prepare(&ctx, &q7, None, None, Positions::Start(0))
            .unwrap();
        built += rope
            .prepare(&ctx, &q1, None, None, Positions::Start(PREFILL as i32))
            .unwrap();
        let attn_built = attn
            .prepare(&ctx, &[dims(PREFILL, PREFILL), dims(1, PREFILL + 1)], dtype)
            .unwrap();
        // The cache's append with RoPE on K: new K/V rows in f32, as a model's matmul writes them.
        let cache0 = KvCache::new(
            &ctx,
            KvCacheConfig {
                batch: 1,
                n_kv_heads: KV_HEADS,
                capacity: 16,
                head_dim: HEAD_DIM,
                dtype,
                kv_format: None,
            },
        )
        .unwrap();
        let kv = |n: usize| {
            ctx.upload(
                &vec![0.25f32; n * KV_HEADS * HEAD_DIM],
                &[n, KV_HEADS, HEAD_DIM],
            )
            .unwrap()
        };
        let (k7, v7, k1, v1) = (kv(PREFILL), kv(PREFILL), kv(1), kv(1));
        let append_built = cache0.prepare(&ctx, &k7, &v7, Some((&rope, None))).unwrap();
        assert!(append_built >= 1, "{dtype}: {append_built}");
        built += append_built;
        assert!(
            attn_built >= 2,
            "{dtype}: prefill and decode need their own kernels, built {attn_built}"
        );
        built += attn_built;
        assert!(built >= 4, "{dtype}: {built}");
        assert_eq!(
            ctx.cached_pipelines() - start,
            built,
            "{dtype}: prepare reports what it built"
        );
        // Preparing again builds nothing.
        assert_eq!(norm.prepare(&ctx, &x7, &w, &o7, None).unwrap(), 0);
        assert_eq!(
            attn.prepare(&ctx, &[dims(PREFILL, PREFILL)], dtype)
                .unwrap(),
            0
        );
        let prepared = ctx.cached_pipelines();

        // The calls: prefill, then one decode step, through the cache.
        let mut cache = cache0;
        norm.run(&ctx, &x7, &w, &o7).unwrap();
        rope.run(&ctx, &q7, Positions::Start(0)).unwrap();
        cache.append_rope_run(&ctx, &k7, &v7, &rope, None).unwrap();
        attn.run_cached(&ctx, &q7, &cache, None, &a7).unwrap();
        norm.run(&ctx, &x1, &w, &o1).unwrap();
        rope.run(&ctx, &q1, Positions::Start(PREFILL as i32))
            .unwrap();
        cache.append_rope_run(&ctx, &k1, &v1, &rope, None).unwrap();
        attn.run_cached(&ctx, &q1, &cache, None, &a1).unwrap();
        assert_eq!(
            ctx.cached_pipelines(),
            prepared,
            "{dtype}: a prepared call must not build a pipeline"
        );
    }
}

#[test]
fn prepare_checks_its_shapes() {
    let ctx = ctx();
    let d = Dims {
        batch: 1,
        q_len: 1,
        kv_len: 8,
        n_heads: 4,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let a = Attention::default();
    expect_err(
        a.prepare(&ctx, &[d], DType::F32),
        "attention",
        is_shape,
        "n_heads 4 is not divisible by n_kv_heads 3",
    );
    expect_err(
        a.prepare(
            &ctx,
            &[Dims {
                n_kv_heads: 2,
                head_dim: 0,
                ..d
            }],
            DType::F32,
        ),
        "attention",
        is_shape,
        "unsupported head_dim 0",
    );
    expect_err(
        a.prepare(
            &ctx,
            &[Dims {
                n_kv_heads: 2,
                kv_len: 0,
                ..d
            }],
            DType::F32,
        ),
        "attention",
        is_shape,
        "kv_len 0 must all be > 0",
    );
    let x = ctx.empty(&[2, 4, 33], DType::F32).unwrap();
    expect_err(
        Rope::default().prepare(&ctx, &x, None, None, Positions::Start(0)),
        "rope",
        is_param,
        "head_dim 33 must be even",
    );
}

/// Warm-up on a background thread (a `Context` is `Send + Sync`: the application loads its
/// weights meanwhile), and `prepare_paged` for a serving batch: the paged call afterwards builds
/// nothing, and the count each returns is what it added to the cache.
#[test]
fn warm_up_on_a_thread_and_paged_prepare() {
    use llama_kernels::ops::paged::Heads;
    use llama_kernels::{PageTable, PagedBatch, PagedKvCache, PagedKvConfig};
    use std::sync::Arc;
    let ctx = Arc::new(fresh());
    let attn = Attention::default();
    let start = ctx.cached_pipelines();
    let worker = {
        let ctx = Arc::clone(&ctx);
        std::thread::spawn(move || {
            let d = Dims {
                batch: 1,
                q_len: PREFILL,
                kv_len: PREFILL,
                n_heads: HEADS,
                n_kv_heads: KV_HEADS,
                head_dim: HEAD_DIM,
            };
            Attention::default().prepare(&ctx, &[d, Dims { q_len: 1, ..d }], DType::F32)
        })
    };
    let built = worker.join().unwrap().unwrap();
    assert!(built >= 2, "prefill and decode kernels: built {built}");
    assert_eq!(ctx.cached_pipelines() - start, built);

    // A batch of a 7-token prompt and a decode step over 20 keys, on pages of 16.
    let page = 16;
    let heads = Heads {
        n_heads: HEADS,
        n_kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
    };
    let mut table = PageTable::new(8, page).unwrap();
    let cache = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages: 8,
            page_size: page,
            n_kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
            ..Default::default()
        },
    )
    .unwrap();
    let (a, b) = (table.add_sequence(), table.add_sequence());
    table.append(&[(a, PREFILL), (b, 20)]).unwrap();
    let batch = PagedBatch::new(&ctx, &table, &[(a, PREFILL), (b, 1)], heads).unwrap();
    let q = ctx
        .empty(&[PREFILL + 1, HEADS, HEAD_DIM], DType::F32)
        .unwrap();
    let out = ctx
        .empty(&[PREFILL + 1, HEADS, HEAD_DIM], DType::F32)
        .unwrap();
    let before = ctx.cached_pipelines();
    let built = attn
        .prepare_paged(&ctx, &q, &cache, &batch, None, &out)
        .unwrap();
    assert!(built >= 2, "partial and merge passes: built {built}");
    assert_eq!(ctx.cached_pipelines() - before, built);
    assert_eq!(
        attn.prepare_paged(&ctx, &q, &cache, &batch, None, &out)
            .unwrap(),
        0
    );
    let prepared = ctx.cached_pipelines();
    attn.run_paged(&ctx, &q, &cache, &batch, None, &out)
        .unwrap();
    assert_eq!(
        ctx.cached_pipelines(),
        prepared,
        "a prepared paged call must not build a pipeline"
    );
    // The same validation as the call: a q of the wrong length is refused.
    let short = ctx.empty(&[PREFILL, HEADS, HEAD_DIM], DType::F32).unwrap();
    expect_err(
        attn.prepare_paged(&ctx, &short, &cache, &batch, None, &out),
        "paged_attention",
        is_shape,
        "q",
    );
}

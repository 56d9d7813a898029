//! One `Context` shared by 8 threads, as in an inference server: each thread records every op
//! family into its own encoders, on its own buffers, submits and checks the results, while the
//! others do the same. Every result must match the f64 reference, nothing may deadlock, and the
//! pipeline cache must build each key once (threads asking for the same new key at the same time
//! get the same pipeline).
//!
//! `LLAMA_KERNELS_THREAD_ITERS` sets the iterations per thread (default 25).

use crate::common;

use std::sync::{Arc, Barrier};

use common::{rounded, Rng};
use llama_kernels::compare::{compare, tolerance};
use llama_kernels::ops::rms_norm::Variant;
use llama_kernels::reference;
use llama_kernels::{
    Attention, Context, DType, KvCache, KvCacheConfig, Layout, Positions, Residual, RmsNorm, Rope,
    Tensor,
};

const THREADS: usize = 8;

fn iters() -> usize {
    std::env::var("LLAMA_KERNELS_THREAD_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25)
}

/// Inputs and f64 expectations of one thread's work: RMSNorm with residual, RoPE in place, a
/// KV-cache append with RoPE, decode attention over the cache and prefill attention.
struct Work {
    dtype: DType,
    x: Vec<f32>,
    res: Vec<f32>,
    w: Vec<f32>,
    want_norm: Vec<f64>,
    q: Vec<f32>,
    want_rope: Vec<f64>,
    k_new: Vec<f32>,
    v_new: Vec<f32>,
    want_decode: Vec<f64>,
    pq: Vec<f32>,
    pk: Vec<f32>,
    pv: Vec<f32>,
    want_prefill: Vec<f64>,
}

// Llama-3-8B-like proportions at test size: 4 query heads over 2 kv heads. head_dim 16: what is
// under test is the sharing, and each head size is a pipeline that the three contexts here each
// compile on first use.
const ROWS: usize = 5;
const HIDDEN: usize = 1000;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 16;
const KV_LEN: usize = 40;
const PREFILL: usize = 12;
/// The threads' dtypes, alternating: a full and a half type, so that threads race on different
/// keys as well as on the same ones. Each dtype's pipelines compile on first use, one at a time on
/// lavapipe's queue, so a third dtype adds seconds and nothing to what is under test.
const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

fn work(seed: u64) -> Work {
    let dtype = DTYPES[seed as usize % DTYPES.len()];
    let mut rng = Rng::new(seed);
    let x = rng.vec(ROWS * HIDDEN, 1.0);
    let res = rng.vec(ROWS * HIDDEN, 1.0);
    let w = rng.vec(HIDDEN, 0.5);
    let (want_norm, _) = reference::rms_norm::rms_norm(
        &rounded(&x, dtype),
        &rounded(&w, dtype),
        Some(&rounded(&res, dtype)),
        1e-5,
        0.0,
        dtype,
    );
    let rope = Rope::new(10000.0, Layout::Half);
    let (inv, attn) = rope.inv_freq(HD, KV_LEN).unwrap();
    // One decode token at position KV_LEN - 1.
    let q = rng.vec(HEADS * HD, 1.0);
    let pos = [KV_LEN as i64 - 1];
    let want_rope = reference::rope::rope(
        &rounded(&q, dtype),
        [1, 1, HEADS, HD],
        &pos,
        &inv,
        attn,
        Layout::Half,
        HD,
    );
    let k_new = rng.vec(KV_LEN * KV_HEADS * HD, 1.0);
    let v_new = rng.vec(KV_LEN * KV_HEADS * HD, 1.0);
    let all_pos: Vec<i64> = (0..KV_LEN as i64).collect();
    let k_rot = reference::rope::rope(
        &rounded(&k_new, dtype),
        [1, KV_LEN, KV_HEADS, HD],
        &all_pos,
        &inv,
        attn,
        Layout::Half,
        HD,
    );
    // The decode query is the rotated q as the GPU stored it (rounded to the dtype).
    let q_rot: Vec<f64> = want_rope.iter().map(|&v| dtype.round(v)).collect();
    let k_stored: Vec<f64> = k_rot.iter().map(|&v| dtype.round(v)).collect();
    let dims = |q_len, kv_len| reference::attention::Dims {
        batch: 1,
        q_len,
        kv_len,
        n_heads: HEADS,
        n_kv_heads: KV_HEADS,
        head_dim: HD,
    };
    let opts = reference::attention::Options {
        causal: true,
        q_offset: None,
        scale: None,
        ..Default::default()
    };
    let want_decode = reference::attention::attention(
        &q_rot,
        &k_stored,
        &rounded(&v_new, dtype),
        None,
        dims(1, KV_LEN),
        &opts,
    );
    let pq = rng.vec(PREFILL * HEADS * HD, 1.0);
    let pk = rng.vec(PREFILL * KV_HEADS * HD, 1.0);
    let pv = rng.vec(PREFILL * KV_HEADS * HD, 1.0);
    let want_prefill = reference::attention::attention(
        &rounded(&pq, dtype),
        &rounded(&pk, dtype),
        &rounded(&pv, dtype),
        None,
        dims(PREFILL, PREFILL),
        &opts,
    );
    Work {
        dtype,
        x,
        res,
        w,
        want_norm,
        q,
        want_rope,
        k_new,
        v_new,
        want_decode,
        pq,
        pk,
        pv,
        want_prefill,
    }
}

fn check(ctx: &Context, t: &Tensor, want: &[f64], what: &str) {
    let got = ctx.read_f32(t).unwrap_or_else(|e| panic!("{what}: {e}"));
    let c = compare(&got, want);
    let tol = tolerance(t.dtype());
    assert!(c.passes(tol), "{what}: {c} (tolerance {tol:e})");
}

/// One iteration: everything recorded into one encoder, submitted, waited for and checked.
fn iteration(ctx: &Context, wk: &Work, what: &str) {
    let d = wk.dtype;
    let up = |v: &[f32], shape: &[usize]| ctx.upload_as(v, shape, d).unwrap();
    let x = up(&wk.x, &[ROWS, HIDDEN]);
    let res = up(&wk.res, &[ROWS, HIDDEN]);
    let w = up(&wk.w, &[HIDDEN]);
    let out = ctx.empty(&[ROWS, HIDDEN], d).unwrap();
    let q = up(&wk.q, &[1, HEADS, HD]);
    let k_new = up(&wk.k_new, &[KV_LEN, KV_HEADS, HD]);
    let v_new = up(&wk.v_new, &[KV_LEN, KV_HEADS, HD]);
    let mut cache = KvCache::new(
        ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: KV_HEADS,
            capacity: KV_LEN,
            head_dim: HD,
            dtype: d,
            kv_format: None,
        },
    )
    .unwrap();
    let dec = ctx.empty(&[1, HEADS, HD], d).unwrap();
    let pq = up(&wk.pq, &[PREFILL, HEADS, HD]);
    let pk = up(&wk.pk, &[PREFILL, KV_HEADS, HD]);
    let pv = up(&wk.pv, &[PREFILL, KV_HEADS, HD]);
    let pout = ctx.empty(&[PREFILL, HEADS, HD], d).unwrap();
    let rope = Rope::new(10000.0, Layout::Half);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    RmsNorm::new(1e-5)
        .encode_residual(ctx, &mut enc, &x, &w, &out, Residual::in_place(&res))
        .unwrap();
    rope.encode(ctx, &mut enc, &q, Positions::Start(KV_LEN as i32 - 1))
        .unwrap();
    cache
        .append_rope(ctx, &mut enc, &k_new, &v_new, &rope, None)
        .unwrap();
    Attention::causal()
        .encode_cached(ctx, &mut enc, &q, &cache, None, &dec)
        .unwrap();
    Attention::causal()
        .encode(ctx, &mut enc, &pq, &pk, &pv, None, &pout)
        .unwrap();
    let idx = ctx.queue().submit([enc.finish()]);
    ctx.wait("test", Some(idx)).unwrap();
    check(ctx, &out, &wk.want_norm, &format!("{what} rms_norm"));
    check(ctx, &q, &wk.want_rope, &format!("{what} rope"));
    check(ctx, &dec, &wk.want_decode, &format!("{what} decode"));
    check(ctx, &pout, &wk.want_prefill, &format!("{what} prefill"));
}

#[test]
fn eight_threads_share_one_context() {
    let ctx = Arc::new(Context::new().unwrap());
    let n = iters();
    let start = Arc::new(Barrier::new(THREADS));
    let t0 = std::time::Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (ctx, start) = (ctx.clone(), start.clone());
            std::thread::spawn(move || {
                let wk = work(t as u64);
                start.wait(); // all threads hit the cold cache together
                for i in 0..n {
                    iteration(&ctx, &wk, &format!("thread {t} iteration {i}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a thread failed");
    }
    eprintln!(
        "concurrency: {THREADS} threads x {n} iterations x 5 ops in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // The threads ran the same work as one thread running one iteration per dtype: afterwards
    // that iteration finds every pipeline it needs in the shared cache (nothing built by the
    // threads is missing). (A reference count from a context of its own would compile every op
    // family again; `racing_threads_get_one_pipeline_per_key` checks that a key racing threads
    // ask for is built once.)
    let built = ctx.cached_pipelines();
    for s in 0..DTYPES.len() as u64 {
        iteration(&ctx, &work(s), "single-threaded, after the threads");
    }
    assert_eq!(
        ctx.cached_pipelines(),
        built,
        "one thread's iteration built pipelines that the 8 threads' shared cache lacked"
    );
}

/// Threads that ask for the same new pipeline at once must all get the one that was built
/// (a race here compiles a key several times, and callers hold different pipelines).
#[test]
fn racing_threads_get_one_pipeline_per_key() {
    let ctx = Arc::new(Context::new().unwrap());
    let key = Variant::choose(DType::F32, 64, false, [0, 0, 0]).key();
    let start = Arc::new(Barrier::new(THREADS));
    let kernels: Vec<_> = (0..THREADS)
        .map(|_| {
            let (ctx, start, key) = (ctx.clone(), start.clone(), key.clone());
            std::thread::spawn(move || {
                start.wait();
                ctx.kernel("test", &key).unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(ctx.cached_pipelines(), 1);
    for k in &kernels[1..] {
        assert!(
            Arc::ptr_eq(k, &kernels[0]),
            "threads got different pipelines for one key"
        );
    }
}

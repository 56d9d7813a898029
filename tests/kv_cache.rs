//! The KV cache on a real adapter: appends in every dtype pair (with and without RoPE on K),
//! attention read straight from the cache in the same encoder, capacity, and every validation
//! rule of the cache and of attention over it.

use crate::common;

use common::*;
use llama_kernels::compare::tolerance;
use llama_kernels::reference::attention as reference;
use llama_kernels::{Attention, DType, KvCache, KvCacheConfig, Tensor};

fn tol(dtype: DType) -> f64 {
    tolerance(dtype)
}

/// `out` holds default (causal) attention of `q` over all of `k` and `v` (`[batch, len, n_kv_heads,
/// head_dim]` rows as the cache stores them), with `heads` = [batch, n_heads, n_kv_heads,
/// head_dim].
fn assert_attends(out: &Tensor, q: &[f64], k: &[f64], v: &[f64], heads: [usize; 4], what: &str) {
    let [batch, n_heads, n_kv_heads, head_dim] = heads;
    let dims = reference::Dims {
        batch,
        q_len: q.len() / (batch * n_heads * head_dim),
        kv_len: k.len() / (batch * n_kv_heads * head_dim),
        n_heads,
        n_kv_heads,
        head_dim,
    };
    let want = reference::attention(q, k, v, None, dims, &Default::default());
    assert_close(&ctx(), out, &want, tol(out.dtype()), what);
}

/// The head_dim of the cache tests: attention compiles one specialisation per head_dim, and
/// tests/attention.rs runs every kernel and dtype at 16 (and the real sizes once each), so the
/// cache tests add no compile of their own.
const HD: usize = 16;

/// Every append variant (each source dtype into each cache dtype, with and without K) compiles
/// on this adapter.
#[test]
fn every_append_variant_compiles() {
    let ctx = ctx();
    for key in llama_kernels::ops::kv_cache::all_variant_keys() {
        ctx.kernel("test", &key)
            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
    }
}

/// The KV cache: chunked appends (prefill, then single tokens, then a chunk) for a batch of 2,
/// an f16 cache filled from f32 rows, attention read straight from the cache after every append,
/// and the append recorded in the same encoder as the attention that reads it.
#[test]
fn kv_cache_append_and_attend() {
    let ctx = ctx();
    let (batch, nh, nkv, hd, cap) = (2, 8, 2, HD, 40);
    for dtype in DType::ALL {
        let mut cache = KvCache::new(
            &ctx,
            KvCacheConfig {
                batch,
                n_kv_heads: nkv,
                capacity: cap,
                head_dim: hd,
                dtype,
                kv_format: None,
            },
        )
        .unwrap();
        let mut rng = Rng::new(9400);
        let mut k_all = vec![Vec::new(); batch];
        let mut v_all = vec![Vec::new(); batch];
        for (step, &n_new) in [5usize, 1, 1, 3, 17].iter().enumerate() {
            let kn = rng.vec(batch * n_new * nkv * hd, 1.0);
            let vn = rng.vec(batch * n_new * nkv * hd, 1.0);
            let q = rng.vec(batch * n_new * nh * hd, 1.0);
            for b in 0..batch {
                let r = n_new * nkv * hd;
                k_all[b].extend_from_slice(&kn[b * r..(b + 1) * r]);
                v_all[b].extend_from_slice(&vn[b * r..(b + 1) * r]);
            }
            let kt = ctx.upload(&kn, &[batch, n_new, nkv, hd]).unwrap();
            let vt = ctx.upload(&vn, &[batch, n_new, nkv, hd]).unwrap();
            let qt = ctx.upload_as(&q, &[batch, n_new, nh, hd], dtype).unwrap();
            let out = nan_output(&ctx, &[batch, n_new, nh, hd], dtype);
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            cache.append(&ctx, &mut enc, &kt, &vt).unwrap();
            Attention::default()
                .encode_cached(&ctx, &mut enc, &qt, &cache, None, &out)
                .unwrap();
            ctx.queue().submit([enc.finish()]);
            let kf: Vec<f32> = k_all.concat();
            let vf: Vec<f32> = v_all.concat();
            let (kr, vr) = (rounded(&kf, dtype), rounded(&vf, dtype));
            let what = format!("{dtype} step {step}");
            assert_attends(
                &out,
                &rounded(&q, dtype),
                &kr,
                &vr,
                [batch, nh, nkv, hd],
                &what,
            );
            // The cache views read back exactly the rounded rows.
            let kc = ctx.read_f32(&cache.k()).unwrap();
            let kr: Vec<f32> = rounded(&kf, dtype).iter().map(|&x| x as f32).collect();
            assert_eq!(kc, kr, "{dtype} step {step}: cache K contents");
            let vc = ctx.read_f32(&cache.v()).unwrap();
            let vr: Vec<f32> = rounded(&vf, dtype).iter().map(|&x| x as f32).collect();
            assert_eq!(vc, vr, "{dtype} step {step}: cache V contents");
        }
        assert_eq!(cache.len(), 27);
        // Filling exactly to capacity works; one more row is refused and writes nothing.
        let k13 = ctx
            .upload(&vec![0.5f32; batch * 13 * nkv * hd], &[batch, 13, nkv, hd])
            .unwrap();
        cache.append_run(&ctx, &k13, &k13).unwrap();
        assert_eq!(cache.len(), cap);
        let k1 = ctx
            .upload(&vec![0.5f32; batch * nkv * hd], &[batch, 1, nkv, hd])
            .unwrap();
        let e = cache.append_run(&ctx, &k1, &k1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kv_cache: appending 1 rows at length 40 would exceed the capacity 40"
        );
        assert_eq!(cache.len(), cap);
    }
    // Rank-3 rows for a batch-1 cache, and a rank-3 q.
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: 1,
            capacity: 8,
            head_dim: 4,
            dtype: DType::F32,
            kv_format: None,
        },
    )
    .unwrap();
    let kt = ctx
        .upload(&[1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], &[2, 1, 4])
        .unwrap();
    let vt = ctx
        .upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[2, 1, 4])
        .unwrap();
    cache.append_run(&ctx, &kt, &vt).unwrap();
    let q = ctx.upload(&[0.0f32, 0.0, 0.0, 0.0], &[1, 1, 4]).unwrap();
    let out = nan_output(&ctx, &[1, 1, 4], DType::F32);
    Attention::default()
        .run_cached(&ctx, &q, &cache, None, &out)
        .unwrap();
    // Equal logits: the mean of the two V rows.
    assert_eq!(ctx.read_f32(&out).unwrap(), vec![3.0, 4.0, 5.0, 6.0]);
    // ALiBi through the cache: a zero q leaves only the bias; one head's slope is 2^-8, so key 0,
    // one position back, weighs exp(-2^-8) against key 1.
    let alibi = Attention {
        alibi: true,
        ..Default::default()
    };
    alibi.run_cached(&ctx, &q, &cache, None, &out).unwrap();
    let w = (-2f64.powi(-8)).exp();
    let want: Vec<f64> = (1..=4)
        .map(|i| (w * i as f64 + (i + 4) as f64) / (w + 1.0))
        .collect();
    assert_close(
        &ctx,
        &out,
        &want,
        tol(DType::F32),
        "alibi through the cache",
    );
}

/// KV cache append with RoPE on K (Llama-3 rope: theta 5e5, llama3 scaling, half layout) for a
/// batch of 2: prefill 6 rows, then single tokens, each step rotated at positions len.. in the
/// same encoder, then attention over the cache; explicit position ids too. K in the cache matches
/// the f64 RoPE reference, V is copied exactly, and attention matches the reference on rotated K.
#[test]
fn kv_cache_append_with_rope() {
    use llama_kernels::ops::rope::{Layout, PositionIds, Positions, Rope, Scaling};
    let ctx = ctx();
    let (batch, nh, nkv, hd, cap) = (2, 8, 2, HD, 16);
    let rope = Rope::new(500000.0, Layout::Half).with_scaling(Scaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    });
    let (inv_freq, att) = rope.inv_freq(hd, 0).unwrap();
    // New rows in the cache's dtype take the fused path (RoPE writes K into the cache); f32 rows
    // into a half cache are converted by the append and rotated in place.
    let pairs = [
        (DType::F32, DType::F32),
        (DType::F16, DType::F16),
        (DType::BF16, DType::BF16),
        (DType::F32, DType::F16),
        (DType::F32, DType::BF16),
    ];
    for (src, dtype) in pairs {
        let mut cache = KvCache::new(
            &ctx,
            KvCacheConfig {
                batch,
                n_kv_heads: nkv,
                capacity: cap,
                head_dim: hd,
                dtype,
                kv_format: None,
            },
        )
        .unwrap();
        assert_eq!(cache.rope_fused_for(src), src == dtype);
        let stored =
            |x: &[f32]| -> Vec<f64> { rounded(x, src).iter().map(|&v| dtype.round(v)).collect() };
        let mut rng = Rng::new(9600);
        let mut k_rot: Vec<Vec<f64>> = vec![Vec::new(); batch];
        let mut v_all: Vec<Vec<f64>> = vec![Vec::new(); batch];
        for (step, &n_new) in [6usize, 1, 1, 3].iter().enumerate() {
            let kn = rng.vec(batch * n_new * nkv * hd, 1.0);
            let vn = rng.vec(batch * n_new * nkv * hd, 1.0);
            let q = rng.vec(batch * n_new * nh * hd, 1.0);
            let start = cache.len();
            // Step 2 passes explicit ids (the same positions), the others the default.
            let pos: Vec<i32> = (0..n_new).map(|s| (start + s) as i32).collect();
            let ids = PositionIds::upload(&ctx, &pos, &[n_new]).unwrap();
            let positions = (step == 2).then_some(Positions::Ids(&ids));
            let kt = ctx.upload_as(&kn, &[batch, n_new, nkv, hd], src).unwrap();
            let vt = ctx.upload_as(&vn, &[batch, n_new, nkv, hd], src).unwrap();
            let qt = ctx.upload_as(&q, &[batch, n_new, nh, hd], dtype).unwrap();
            let out = nan_output(&ctx, &[batch, n_new, nh, hd], dtype);
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            let appended = cache
                .append_rope(&ctx, &mut enc, &kt, &vt, &rope, positions)
                .unwrap();
            assert_eq!(appended.rows(), start..start + n_new);
            Attention::default()
                .encode_cached(&ctx, &mut enc, &qt, &cache, None, &out)
                .unwrap();
            ctx.queue().submit([enc.finish()]);
            let kr = stored(&kn);
            let positions64: Vec<i64> = (0..batch)
                .flat_map(|_| pos.iter().map(|&p| p as i64))
                .collect();
            let rotated = llama_kernels::reference::rope::rope(
                &kr,
                [batch, n_new, nkv, hd],
                &positions64,
                &inv_freq,
                att,
                Layout::Half,
                hd,
            );
            let r = n_new * nkv * hd;
            for b in 0..batch {
                k_rot[b].extend(rotated[b * r..(b + 1) * r].iter().map(|&x| dtype.round(x)));
                v_all[b].extend_from_slice(&stored(&vn)[b * r..(b + 1) * r]);
            }
            let kf: Vec<f64> = k_rot.concat();
            let vf: Vec<f64> = v_all.concat();
            assert_close(
                &ctx,
                &cache.k(),
                &kf,
                tol(dtype),
                &format!("{src} -> {dtype} step {step}: rotated K"),
            );
            assert_eq!(
                ctx.read_f32(&cache.v()).unwrap(),
                vf.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                "{src} -> {dtype} step {step}: V"
            );
            let what = format!("{dtype} step {step}: attention");
            assert_attends(
                &out,
                &rounded(&q, dtype),
                &kf,
                &vf,
                [batch, nh, nkv, hd],
                &what,
            );
        }
        // A RoPE the cache cannot apply is refused before anything is recorded.
        let bad = Rope::new(10000.0, Layout::Half).with_rotary_dim(70);
        let kt = ctx
            .upload_as(&vec![0.0; batch * nkv * hd], &[batch, 1, nkv, hd], dtype)
            .unwrap();
        let len = cache.len();
        expect_err(
            cache.append_rope_run(&ctx, &kt, &kt, &bad, None),
            "rope",
            is_param,
            "rotary_dim 70 must be even, > 0 and <= head_dim 16",
        );
        let ids = PositionIds::upload(&ctx, &[1, 2], &[2]).unwrap();
        expect_err(
            cache.append_rope_run(&ctx, &kt, &kt, &rope, Some(Positions::Ids(&ids))),
            "kv_cache",
            is_shape,
            "position ids have shape [2] but must be [1] or [2, 1]",
        );
        assert_eq!(cache.len(), len);
    }
}

#[test]
fn every_validation_rule_has_an_error() {
    let ctx = ctx();
    let t = |shape: &[usize]| ctx.empty(shape, DType::F32).unwrap();
    let a = Attention::default();
    let k = t(&[6, 2, 16]);
    expect_err(
        KvCache::new(
            &ctx,
            KvCacheConfig {
                batch: 1,
                n_kv_heads: 2,
                capacity: 8,
                head_dim: 10,
                dtype: DType::F16,
                kv_format: None,
            },
        )
        .map(|_| ()),
        "kv_cache",
        is_shape,
        "unsupported head_dim 10: must be a multiple of 4 and <= 256",
    );
    expect_err(
        KvCache::new(
            &ctx,
            KvCacheConfig {
                batch: 1,
                n_kv_heads: 0,
                capacity: 8,
                head_dim: 16,
                dtype: DType::F16,
                kv_format: None,
            },
        )
        .map(|_| ()),
        "kv_cache",
        is_shape,
        "must all be > 0",
    );
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: 2,
            n_kv_heads: 2,
            capacity: 4,
            head_dim: 16,
            dtype: DType::F16,
            kv_format: None,
        },
    )
    .unwrap();
    expect_err(
        cache.append_run(&ctx, &t(&[3, 2, 16]), &t(&[3, 2, 16])),
        "kv_cache",
        is_shape,
        "k_new has shape [3, 2, 16] but must be [batch 2, n_new, n_kv_heads 2, head_dim 16]",
    );
    expect_err(
        cache.append_run(&ctx, &t(&[2, 5, 2, 16]), &t(&[2, 5, 2, 16])),
        "kv_cache",
        is_shape,
        "appending 5 rows at length 0 would exceed the capacity 4",
    );
    expect_err(
        cache.append_run(&ctx, &t(&[2, 1, 2, 16]), &t(&[2, 2, 2, 16])),
        "kv_cache",
        is_shape,
        "v_new has shape [2, 2, 2, 16] but k_new has [2, 1, 2, 16]",
    );
    expect_err(
        cache.append_run(
            &ctx,
            &t(&[2, 1, 2, 16]),
            &ctx.empty(&[2, 1, 2, 16], DType::F16).unwrap(),
        ),
        "kv_cache",
        is_dtype,
        "v_new is f16 but k_new is f32",
    );
    expect_err(
        cache.append_run(
            &ctx,
            &Tensor::new(k.buffer(), 0, &[2, 1, 2, 16], DType::F32).clone(),
            &Tensor::new(k.buffer(), 150, &[2, 1, 2, 16], DType::F32),
        ),
        "kv_cache",
        is_bounds,
        "v_new view",
    );
    assert_eq!(cache.len(), 0);
    let q4 = t(&[2, 1, 8, 16]);
    expect_err(
        a.run_cached(&ctx, &q4, &cache, None, &t(&[2, 1, 8, 16])),
        "attention",
        is_shape,
        "the KV cache is empty",
    );
    expect_err(
        cache.set_len(5),
        "kv_cache",
        is_shape,
        "length 5 exceeds capacity 4",
    );
    cache.set_len(1).unwrap();
    expect_err(
        a.run_cached(&ctx, &t(&[1, 8, 16]), &cache, None, &t(&[1, 8, 16])),
        "attention",
        is_shape,
        "a rank-3 q needs a cache of batch 1, this cache has batch 2",
    );
    let h = |shape: &[usize]| ctx.empty(shape, DType::F16).unwrap();
    // Cache heads must divide q heads like any k/v.
    expect_err(
        a.run_cached(&ctx, &h(&[2, 1, 5, 16]), &cache, None, &h(&[2, 1, 5, 16])),
        "attention",
        is_shape,
        "n_heads 5 is not divisible by n_kv_heads 2",
    );
    // q's dtype is q's and the cache's business: the k and v views are the cache's own.
    expect_err(
        a.run_cached(&ctx, &q4, &cache, None, &t(&[2, 1, 8, 16])),
        "attention",
        is_dtype,
        "q is f32 but the KV cache holds f16: q's dtype must match the cache's",
    );
}

/// The messages a porting engineer met on a batch-1 cache: each names the argument that was wrong, and a q with tokens the cache does not hold is refused instead of attending
/// to nothing.
#[test]
fn cached_attention_blames_q_and_the_cache_length() {
    let ctx = ctx();
    let a = Attention::default();
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: 2,
            capacity: 8,
            head_dim: 64,
            dtype: DType::F32,
            kv_format: None,
        },
    )
    .unwrap();
    cache.set_len(1).unwrap();
    let t = |shape: &[usize], dtype| ctx.empty(shape, dtype).unwrap();
    // A flat q: the rank is what is wrong, not the cache's batch.
    let flat = t(&[7, 256], DType::F32);
    expect_err(
        a.run_cached(&ctx, &flat, &cache, None, &t(&[7, 256], DType::F32)),
        "attention",
        is_shape,
        "q must be rank 3 [q_len, n_heads, head_dim] or rank 4 [batch, q_len, n_heads, head_dim], got shape [7, 256]",
    );
    // An f16 q over an f32 cache: q is blamed, not the cache's k.
    let q16 = t(&[1, 4, 64], DType::F16);
    expect_err(
        a.run_cached(&ctx, &q16, &cache, None, &t(&[1, 4, 64], DType::F16)),
        "attention",
        is_dtype,
        "q is f16 but the KV cache holds f32: q's dtype must match the cache's",
    );
    // 7 queries over a cache of 1 row: an error naming both, not Ok with 6 rows of zeros.
    let q7 = t(&[7, 4, 64], DType::F32);
    let out7 = t(&[7, 4, 64], DType::F32);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    expect_err(
        a.encode_cached(&ctx, &mut enc, &q7, &cache, None, &out7),
        "attention",
        is_shape,
        "q has q_len 7 but the KV cache holds 1 rows",
    );
    expect_err(
        Attention {
            q_offset: Some(-1),
            ..a
        }
        .run_cached(
            &ctx,
            &t(&[1, 4, 64], DType::F32),
            &cache,
            None,
            &t(&[1, 4, 64], DType::F32),
        ),
        "attention",
        is_shape,
        "q_offset -1 puts q's first token before the KV cache's first row",
    );
    // Once the cache holds the 7 rows, the same call is valid.
    cache.set_len(7).unwrap();
    a.run_cached(&ctx, &q7, &cache, None, &out7).unwrap();
}

/// An append returns the rows (positions) it wrote; queries rotated at `Appended::positions`
/// match K rotated by the append; an append recorded into an encoder that is then dropped is
/// taken back with `truncate`, after which the next append lands where the dropped one would
/// have; `truncate` never lengthens the cache.
#[test]
fn append_returns_its_rows_and_truncate_takes_them_back() {
    use llama_kernels::ops::rope::{Layout, Rope};
    use llama_kernels::Appended;
    let ctx = ctx();
    let (nkv, hd) = (2, HD);
    let rope = Rope::new(500000.0, Layout::Half);
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            n_kv_heads: nkv,
            capacity: 8,
            head_dim: hd,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = Rng::new(2424);
    let rows = |n: usize, rng: &mut Rng| rng.vec(n * nkv * hd, 1.0);
    let (k0, v0) = (rows(3, &mut rng), rows(3, &mut rng));
    let up = |x: &[f32], n: usize| ctx.upload(x, &[n, nkv, hd]).unwrap();
    let first = cache.append_run(&ctx, &up(&k0, 3), &up(&v0, 3)).unwrap();
    assert_eq!(first, Appended { start: 0, n: 3 });

    // Recorded, never submitted: the length moved on, nothing was written; truncate to the
    // returned start takes it back.
    let (kd, vd) = (rows(2, &mut rng), rows(2, &mut rng));
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let dropped = cache
        .append_rope(&ctx, &mut enc, &up(&kd, 2), &up(&vd, 2), &rope, None)
        .unwrap();
    drop(enc);
    assert_eq!((dropped.rows(), cache.len()), (3..5, 5));
    cache.truncate(dropped.start).unwrap();
    assert_eq!(cache.len(), 3);
    expect_err(
        cache.truncate(4),
        "kv_cache",
        is_shape,
        "truncate to 4 rows, but the cache holds 3",
    );
    assert_eq!(cache.len(), 3);

    // The next append writes rows 3 and 4 at positions 3 and 4; q rotated at the positions the
    // append returns matches K, which the f64 reference rotates at 3 and 4.
    let (k1, v1) = (rows(2, &mut rng), rows(2, &mut rng));
    let q = up(&k1, 2);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let next = cache
        .append_rope(&ctx, &mut enc, &up(&k1, 2), &up(&v1, 2), &rope, None)
        .unwrap();
    rope.encode(&ctx, &mut enc, &q, next.positions()).unwrap();
    ctx.queue().submit([enc.finish()]);
    assert_eq!(next, Appended { start: 3, n: 2 });
    let (inv_freq, att) = rope.inv_freq(hd, 0).unwrap();
    let rotated = llama_kernels::reference::rope::rope(
        &rounded(&k1, DType::F32),
        [1, 2, nkv, hd],
        &[3, 4],
        &inv_freq,
        att,
        Layout::Half,
        hd,
    );
    assert_close(
        &ctx,
        &q,
        &rotated,
        tol(DType::F32),
        "q at the append's positions",
    );
    let k_want: Vec<f64> = rounded(&k0, DType::F32)
        .into_iter()
        .chain(rotated)
        .collect();
    assert_close(
        &ctx,
        &cache.k(),
        &k_want,
        tol(DType::F32),
        "K after truncate and append",
    );
    let v_want: Vec<f64> = rounded(&v0, DType::F32)
        .into_iter()
        .chain(rounded(&v1, DType::F32))
        .collect();
    assert_close(
        &ctx,
        &cache.v(),
        &v_want,
        0.0,
        "V after truncate and append",
    );
}

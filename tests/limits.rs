//! Tensors past one storage binding (`max_storage_buffer_binding_size`, 128 MiB on lavapipe and
//! on WebGPU's default limits): RMSNorm, RoPE and the KV-cache append split their work into
//! dispatches over windows that fit; attention refuses with `Error::Limit` naming the size and the
//! limit.

use crate::common;

use common::*;
use llama_kernels::compare::{compare, tolerance};
use llama_kernels::{
    reference, Attention, DType, Error, KvCache, KvCacheConfig, KvFormat, Layout, PositionIds,
    Positions, Residual, RmsNorm, Rope, Tensor,
};

/// Rows of `n` f32 elements that make a view just over one binding.
fn rows_past_limit(max: u64, n: usize) -> usize {
    (max as usize) / (n * 4) + 1
}

/// Fused-residual RMSNorm on f32 views of just over one binding each: every row, including those
/// of the last dispatch, matches the f64 reference.
#[test]
fn rms_norm_past_one_binding() {
    let ctx = ctx();
    let max = ctx.limits().max_storage_buffer_binding_size;
    let n = 4096;
    let rows = rows_past_limit(max, n);
    assert!((rows * n * 4) as u64 > max);
    let mut rng = Rng::new(71);
    let x = rng.vec(rows * n, 1.0);
    let r = rng.vec(rows * n, 1.0);
    let w = rng.vec(n, 1.0);
    let xt = ctx.upload(&x, &[rows, n]).unwrap();
    let rt = ctx.upload(&r, &[rows, n]).unwrap();
    let wt = ctx.upload(&w, &[n]).unwrap();
    let out = ctx.empty(&[rows, n], DType::F32).unwrap();
    ctx.fill(&out, f32::NAN).unwrap();
    // residual_out in place over residual.
    RmsNorm::new(1e-5)
        .run_residual(&ctx, &xt, &wt, &out, Residual::in_place(&rt))
        .unwrap();
    let (want, want_h) = reference::rms_norm::rms_norm(
        &rounded(&x, DType::F32),
        &rounded(&w, DType::F32),
        Some(&rounded(&r, DType::F32)),
        1e-5,
        0.0,
        DType::F32,
    );
    let got = ctx.read_f32(&out).unwrap();
    let got_h = ctx.read_f32(&rt).unwrap();
    let tol = tolerance(DType::F32);
    let c = compare(&got, &want);
    assert!(c.passes(tol), "out: {c}");
    let c = compare(&got_h, want_h.as_ref().unwrap());
    assert!(c.passes(tol), "residual_out: {c}");
    // The last row sits in the second dispatch.
    let last = compare(&got[(rows - 1) * n..], &want[(rows - 1) * n..]);
    assert!(last.passes(tol), "last row: {last}");
}

/// In-place RoPE with a positions buffer on a bf16 `[batch, seq, heads, head_dim]` view of just
/// over one binding, and Q+K in a fused f32 QKV buffer past it: both match the reference.
#[test]
fn rope_past_one_binding() {
    let ctx = ctx();
    let max = ctx.limits().max_storage_buffer_binding_size as usize;
    // bf16, 2 sequences: heads 8 x head_dim 128 = 2 KiB per token.
    let (batch, heads, hd) = (2usize, 8usize, 128usize);
    let seq = max / (batch * heads * hd * 2) + 3;
    let n = batch * seq * heads * hd;
    assert!(n * 2 > max);
    let mut rng = Rng::new(72);
    let x = rng.vec(n, 1.0);
    let dt = DType::BF16;
    let xt = ctx.upload_as(&x, &[batch, seq, heads, hd], dt).unwrap();
    let pos: Vec<i32> = (0..batch * seq)
        .map(|i| (i as i32 * 7919) % 100_000)
        .collect();
    let pt = PositionIds::upload(&ctx, &pos, &[batch, seq]).unwrap();
    let rope = Rope::new(500000.0, Layout::Half);
    rope.run(&ctx, &xt, Positions::Ids(&pt)).unwrap();
    let (inv, attn) = rope.inv_freq(hd, 0).unwrap();
    let got = ctx.read_f32(&xt).unwrap();
    let token = heads * hd;
    let tokens = sampled_tokens(batch * seq);
    let pick = |src: &[f32]| -> Vec<f64> {
        tokens
            .iter()
            .flat_map(|&t| src[t * token..(t + 1) * token].iter().map(|&v| v as f64))
            .collect()
    };
    let want = reference::rope::rope(
        &pick(&x).iter().map(|&v| dt.round(v)).collect::<Vec<_>>(),
        [1, tokens.len(), heads, hd],
        &tokens.iter().map(|&t| pos[t] as i64).collect::<Vec<_>>(),
        &inv,
        attn,
        Layout::Half,
        hd,
    );
    let got_s: Vec<f32> = pick(&got).into_iter().map(|v| v as f32).collect();
    let c = compare(&got_s, &want);
    assert!(
        c.passes(tolerance(dt)),
        "bf16 4-D, {} sampled tokens: {c}",
        tokens.len()
    );

    // Fused QKV, f32: Llama-3-8B-like row of (4 + 2 * 2) heads x 64.
    let (nh, nkv, hd) = (4usize, 2usize, 64usize);
    let row = (nh + 2 * nkv) * hd;
    let tokens = max / (row * 4) + 5;
    let data = rng.vec(tokens * row, 1.0);
    let buf = ctx.upload(&data, &[tokens * row]).unwrap();
    let (q, k, _) =
        llama_kernels::ops::rope::qkv_views(buf.buffer(), 0, tokens, nh, nkv, hd, DType::F32);
    let rope = Rope::new(10000.0, Layout::Interleaved);
    rope.run_qk(&ctx, &q, &k, Positions::Start(5)).unwrap();
    let all = ctx
        .read_f32(&Tensor::new(buf.buffer(), 0, &[tokens * row], DType::F32))
        .unwrap();
    let (inv, attn) = rope.inv_freq(hd, 0).unwrap();
    let sample = sampled_tokens(tokens);
    let positions: Vec<i64> = sample.iter().map(|&t| t as i64 + 5).collect();
    for (rotated, heads, off) in [
        (true, nh, 0),
        (true, nkv, nh * hd),
        (false, nkv, (nh + nkv) * hd),
    ] {
        let pick = |src: &[f32]| -> Vec<f64> {
            sample
                .iter()
                .flat_map(|&t| src[t * row + off..t * row + off + heads * hd].to_vec())
                .map(|v| v as f64)
                .collect()
        };
        let before = pick(&data);
        let want = if rotated {
            reference::rope::rope(
                &before,
                [1, sample.len(), heads, hd],
                &positions,
                &inv,
                attn,
                Layout::Interleaved,
                hd,
            )
        } else {
            before
        };
        let got: Vec<f32> = pick(&all).into_iter().map(|v| v as f32).collect();
        let c = compare(&got, &want);
        assert!(
            c.passes(tolerance(DType::F32)),
            "fused QKV at offset {off}: {c}"
        );
    }
}

/// Every 61st token and the last 40 tokens of `n`: a wrong piece offset or position anywhere
/// shows in the sample, at a fraction of a full f64 reference's cost.
fn sampled_tokens(n: usize) -> Vec<usize> {
    let mut t: Vec<usize> = (0..n).step_by(61).chain(n.saturating_sub(40)..n).collect();
    t.sort();
    t.dedup();
    t
}

/// Attention cannot split K/V over bindings: a K view past one binding is refused before any GPU
/// work, with the size and the limit in the message.
#[test]
fn attention_past_one_binding_is_a_limit_error() {
    let ctx = ctx();
    let max = ctx.limits().max_storage_buffer_binding_size;
    let (nkv, hd) = (1usize, 128usize);
    let kv_len = (max as usize) / (nkv * hd * 4) + 1;
    let k = ctx
        .create_buffer("test", (kv_len * nkv * hd * 4) as u64)
        .unwrap();
    let kt = Tensor::new(&k, 0, &[kv_len, nkv, hd], DType::F32);
    let q = ctx.empty(&[1, 2, hd], DType::F32).unwrap();
    let o = ctx.empty(&[1, 2, hd], DType::F32).unwrap();
    let e = Attention::default()
        .run(&ctx, &q, &kt, &kt, None, &o)
        .unwrap_err();
    assert!(matches!(e, Error::Limit { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("attention:")
            && msg.contains(&format!("max_storage_buffer_binding_size of {max} bytes")),
        "{msg}"
    );
}

/// `KvCache::append` and `append_rope` with new rows past one binding. K and V come interleaved
/// per token and sequence (`[seq, batch, K|V, n_kv_heads, head_dim]` f32, as a fused KV
/// projection writes them), so each sequence's K view spans the whole buffer, just over one
/// binding: the append splits per sequence and run of tokens, and RoPE on the fused path splits
/// its own reads. Every row lands in its sequence's place (V bitwise, K rotated within the f32
/// tolerance) and the NaN rows before and after the new ones stay NaN.
#[test]
fn kv_cache_append_past_one_binding() {
    let ctx = ctx();
    let max = ctx.limits().max_storage_buffer_binding_size as usize;
    let (batch, nkv, hd) = (2usize, 2usize, 64usize);
    let row = nkv * hd;
    let step = batch * 2 * row;
    let seq = max / (step * 4) + 3;
    let mut rng = Rng::new(73);
    let data = rng.vec(seq * step, 1.0);
    let buf = ctx.upload(&data, &[seq * step]).unwrap();
    let view = |off: usize| {
        Tensor::with_strides(
            buf.buffer(),
            off,
            &[batch, seq, nkv, hd],
            &[2 * row, step, hd, 1],
            DType::F32,
        )
    };
    let (k_new, v_new) = (view(0), view(row));
    let span = k_new.byte_span();
    assert!(span.end - span.start > max as u64);
    // One NaN row before (len 1) and after (capacity) the new rows of each sequence.
    let cap = seq + 2;
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch,
            n_kv_heads: nkv,
            capacity: cap,
            head_dim: hd,
            dtype: DType::F32,
            kv_format: None,
        },
    )
    .unwrap();
    let whole = |b: &wgpu::Buffer| Tensor::new(b, 0, &[batch * nkv * cap * hd], DType::F32);
    // Source element of cache row `c` (1 ..= seq), sequence `b`, head `h`, of K (0) or V (1).
    let src =
        |c: usize, b: usize, kv: usize, h: usize| (c - 1) * step + (b * 2 + kv) * row + h * hd;
    let tokens = sampled_tokens(seq);
    let rope = Rope::new(10000.0, Layout::Half);
    let (inv, attn) = rope.inv_freq(hd, 0).unwrap();
    for with_rope in [false, true] {
        for b in [cache.k_buffer(), cache.v_buffer()] {
            ctx.fill(&whole(b), f32::NAN).unwrap();
        }
        cache.set_len(1).unwrap();
        if with_rope {
            cache
                .append_rope_run(&ctx, &k_new, &v_new, &rope, None)
                .unwrap();
        } else {
            cache.append_run(&ctx, &k_new, &v_new).unwrap();
        }
        assert_eq!(cache.len(), seq + 1);
        let got_k = ctx.read_f32(&whole(cache.k_buffer())).unwrap();
        let got_v = ctx.read_f32(&whole(cache.v_buffer())).unwrap();
        let at = |b: usize, h: usize, c: usize| ((b * nkv + h) * cap + c) * hd;
        for b in 0..batch {
            for h in 0..nkv {
                for c in [0, cap - 1] {
                    let guard = &got_k[at(b, h, c)..at(b, h, c) + hd];
                    assert!(guard.iter().all(|x| x.is_nan()), "K row {c} written");
                    let guard = &got_v[at(b, h, c)..at(b, h, c) + hd];
                    assert!(guard.iter().all(|x| x.is_nan()), "V row {c} written");
                }
            }
        }
        // V (and K without RoPE) is a copy: bitwise, at every row.
        let copied: &[(&[f32], usize)] = if with_rope {
            &[(&got_v, 1)]
        } else {
            &[(&got_k, 0), (&got_v, 1)]
        };
        for &(got, kv) in copied {
            for b in 0..batch {
                for h in 0..nkv {
                    for c in 1..=seq {
                        let (g, s) = (at(b, h, c), src(c, b, kv, h));
                        assert!(
                            got[g..g + hd]
                                .iter()
                                .zip(&data[s..s + hd])
                                .all(|(x, y)| x.to_bits() == y.to_bits()),
                            "rope {with_rope}: {} row {c} of sequence {b}, head {h}",
                            ["K", "V"][kv]
                        );
                    }
                }
            }
        }
        if !with_rope {
            continue;
        }
        // Rotated K at sampled tokens of both sequences, at positions 1 .. (the cache length).
        let (mut got, mut input, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for b in 0..batch {
            for &t in &tokens {
                for h in 0..nkv {
                    let (g, s) = (at(b, h, t + 1), src(t + 1, b, 0, h));
                    got.extend_from_slice(&got_k[g..g + hd]);
                    input.extend(data[s..s + hd].iter().map(|&x| x as f64));
                }
                positions.push(t as i64 + 1);
            }
        }
        let want = reference::rope::rope(
            &input,
            [1, positions.len(), nkv, hd],
            &positions,
            &inv,
            attn,
            Layout::Half,
            hd,
        );
        let c = compare(&got, &want);
        assert!(c.passes(tolerance(DType::F32)), "rotated K: {c}");
    }
    // A q8_0 cache takes the same split (`rope_q` over runs of tokens, the quantizing append of
    // V per run) for the first sequence, whose views alone pass one binding: it holds the CPU
    // quantizer's blocks of the rows the f32 cache holds (RoPE's f32 output and V's copy), the
    // guard rows, NaN there, empty here.
    let first = |off: usize| {
        let t = view(off);
        Tensor::with_strides(
            buf.buffer(),
            off,
            &[1, seq, nkv, hd],
            t.strides(),
            DType::F32,
        )
    };
    let (k0, v0) = (first(0), first(row));
    assert!(k0.byte_span().end - k0.byte_span().start > max as u64);
    let mut q8 = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: nkv,
            capacity: cap,
            head_dim: hd,
            dtype: DType::F32,
            kv_format: Some(KvFormat::Q8_0),
        },
    )
    .unwrap();
    q8.set_len(1).unwrap();
    q8.append_rope_run(&ctx, &k0, &v0, &rope, None).unwrap();
    for (name, float, quantized) in [
        ("K", cache.k_buffer(), q8.k_buffer()),
        ("V", cache.v_buffer(), q8.v_buffer()),
    ] {
        let seq0 = Tensor::new(float, 0, &[nkv * cap * hd], DType::F32);
        let rows: Vec<f32> = ctx
            .read_f32(&seq0)
            .unwrap()
            .into_iter()
            .map(|x| if x.is_nan() { 0.0 } else { x })
            .collect();
        let want = reference::quant::encode(KvFormat::Q8_0, &rows, hd, 1.0);
        let got = ctx.read_bytes(quantized, 0..want.len() as u64).unwrap();
        assert!(
            got == want,
            "q8_0 {name}: the split append differs from the CPU quantizer"
        );
    }
}

/// Sizes at the edge of the kernels' 32-bit element indexing are refused on the host before
/// anything is allocated or dispatched, never wrapped. A KV cache of 2^32 elements per buffer is
/// one past the last index a kernel can address; 2^32 - 4 is addressable and refused only by the
/// binding limit; factors whose product passes u64 (and, at 2^130, u128) are refused, not
/// wrapped to a small cache. RMSNorm over 2^32 broadcast rows (row stride 0, a 32-byte buffer)
/// is one row past the u32 row count.
#[test]
fn u32_size_edges_are_refused_not_wrapped() {
    let ctx = ctx();
    let binding = ctx.limits().max_storage_buffer_binding_size;
    let kv = |b: usize, h: usize, c: usize, d: usize| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            KvCache::new(
                &ctx,
                KvCacheConfig {
                    batch: b,
                    n_kv_heads: h,
                    capacity: c,
                    head_dim: d,
                    dtype: DType::F16,
                    kv_format: None,
                },
            )
            .map(|_| ())
        }))
        .unwrap_or_else(|_| panic!("KvCache::new({b}, {h}, {c}, {d}) panicked"))
    };
    let indexing = "elements per buffer exceed the 32-bit element indexing";
    for (b, h, c, d) in [
        (1, 1 << 12, 1 << 18, 4),
        (1, 1, 1 << 30, 4),
        (1 << 62, 1 << 62, 16, 4),
        (usize::MAX, usize::MAX, usize::MAX, 4),
    ] {
        match kv(b, h, c, d) {
            Err(Error::Limit { msg, .. }) => assert!(msg.contains(indexing), "{msg}"),
            other => panic!("KvCache::new({b}, {h}, {c}, {d}): {other:?}"),
        }
    }
    // 2^32 - 4 elements: addressable, so the binding limit is what refuses it on this device.
    if binding < (1 << 33) {
        match kv(1, 1, (1 << 30) - 1, 4) {
            Err(Error::Limit { msg, .. }) => {
                assert!(
                    msg.contains("max_storage_buffer_binding_size") && !msg.contains(indexing),
                    "{msg}"
                )
            }
            other => panic!("KvCache of 2^32 - 4 elements: {other:?}"),
        }
    }
    let buf = ctx.create_buffer("test", 4096).unwrap();
    let rows = 1usize << 32;
    let x = Tensor::with_strides(&buf, 0, &[rows, 8], &[0, 1], DType::F32);
    let w = Tensor::new(&buf, 64, &[8], DType::F32);
    let out = Tensor::with_strides(&buf, 128, &[rows, 8], &[0, 1], DType::F32);
    match RmsNorm::new(1e-5).run(&ctx, &x, &w, &out) {
        Err(Error::Limit { msg, .. }) => {
            assert!(
                msg.contains("x has shape [4294967296, 8]: its element count is past the 32-bit"),
                "{msg}"
            )
        }
        other => panic!("rms_norm over 2^32 rows: {other:?}"),
    }
}

/// A decode step's new K/V row inside a big buffer whose unit dimensions (batch and token) have
/// strides past u32: the kernel's 32-bit strides only ever multiply index 0 there, so the row
/// lands whole and bitwise in its place, for rank-4 and rank-3 views.
#[test]
fn kv_cache_append_unit_dims_with_strides_past_u32() {
    let ctx = ctx();
    let (nkv, hd) = (2usize, 16usize);
    let data: Vec<f32> = (0..2 * nkv * hd).map(|i| i as f32 * 0.5 - 7.0).collect();
    let buf = ctx.upload(&data, &[data.len()]).unwrap();
    let huge = (1usize << 32) + 8;
    let k4 = Tensor::with_strides(
        buf.buffer(),
        0,
        &[1, 1, nkv, hd],
        &[huge, huge + 16, hd, 1],
        DType::F32,
    );
    let v3 = Tensor::with_strides(
        buf.buffer(),
        nkv * hd,
        &[1, nkv, hd],
        &[huge, hd, 1],
        DType::F32,
    );
    let v4 = Tensor::with_strides(
        buf.buffer(),
        nkv * hd,
        &[1, 1, nkv, hd],
        &[huge, huge + 16, hd, 1],
        DType::F32,
    );
    let k3 = Tensor::with_strides(buf.buffer(), 0, &[1, nkv, hd], &[huge, hd, 1], DType::F32);
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: nkv,
            capacity: 4,
            head_dim: hd,
            dtype: DType::F32,
            kv_format: None,
        },
    )
    .unwrap();
    cache.set_len(1).unwrap();
    cache.append_run(&ctx, &k4, &v4).unwrap();
    cache.append_run(&ctx, &k3, &v3).unwrap();
    let (k, v) = (&data[..nkv * hd], &data[nkv * hd..]);
    let got_k = ctx.read_f32(&cache.k()).unwrap();
    let got_v = ctx.read_f32(&cache.v()).unwrap();
    // Rows 1 and 2 hold the new row ([len, n_kv_heads, head_dim] order); row 0 was never written.
    for (got, want, name) in [(&got_k, k, "K"), (&got_v, v, "V")] {
        assert!(got[..nkv * hd].iter().all(|&x| x == 0.0), "{name} row 0");
        for row in 1..3 {
            let r = &got[row * nkv * hd..(row + 1) * nkv * hd];
            assert!(
                r.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name} row {row}: {r:?}"
            );
        }
    }
}

/// A written view that reaches one element twice (stride 0 over rows) is refused by every op
/// that writes it, before any GPU work; a view whose element count overflows 64 bits (broadcast
/// strides over huge dims) is refused by validation instead of wrapping.
#[test]
fn self_overlapping_and_overflowing_views_are_refused() {
    let ctx = ctx();
    let x = filled(&ctx, &[4, 8], 1.0);
    let w = filled(&ctx, &[8], 1.0);
    let buf = ctx.empty(&[8], DType::F32).unwrap();
    let out = Tensor::with_strides(buf.buffer(), 0, &[4, 8], &[0, 1], DType::F32);
    expect_err(
        RmsNorm::new(1e-5).run(&ctx, &x, &w, &out),
        "rms_norm",
        is_bounds,
        "out (shape [4, 8], strides [0, 1]) reaches some elements twice",
    );
    let q = filled(&ctx, &[2, 4, 8], 1.0);
    let kv = filled(&ctx, &[3, 4, 8], 1.0);
    let obuf = ctx.empty(&[32], DType::F32).unwrap();
    let o = Tensor::with_strides(obuf.buffer(), 0, &[2, 4, 8], &[0, 8, 1], DType::F32);
    expect_err(
        Attention::default().run(&ctx, &q, &kv, &kv, None, &o),
        "attention",
        is_bounds,
        "reaches some elements twice",
    );
    let huge = Tensor::with_strides(
        buf.buffer(),
        0,
        &[1 << 40, 1 << 30, 2],
        &[0, 0, 1],
        DType::F32,
    );
    expect_err(
        huge.validate("probe", "x"),
        "probe",
        |e| matches!(e, Error::Limit { .. }),
        "element count is past the 32-bit indexing",
    );
    expect_err(
        x.reshape("probe", &[(1 << 61) + 1, 8]),
        "probe",
        is_shape,
        "cannot reshape [4, 8]",
    );
}

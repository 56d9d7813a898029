//! Tensors past one storage binding (`max_storage_buffer_binding_size`, 128 MiB on lavapipe and
//! on WebGPU's default limits): RMSNorm and RoPE split their work into dispatches over windows
//! that fit; attention refuses with `Error::Limit` naming the size and the limit.

mod common;

use common::*;
use llama_kernels::compare::{compare, tolerance};
use llama_kernels::{
    reference, Attention, DType, Error, Layout, PositionIds, Positions, RmsNorm, Rope, Tensor,
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
        .run_residual(&ctx, &xt, &rt, &wt, &out, &rt)
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

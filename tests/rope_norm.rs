//! QK-norm fused with RoPE (`Rope::encode_norm`, `encode_norm_to`, `encode_qk_norm`) and RoPE
//! through a row map (`Rope::encode_rows`, paged KV-cache writes), against the f64 reference
//! (`reference::rope::head_norm` then `reference::rope::rope`), with NaN-filled outputs, guard
//! regions, and every validation rule.
//!
//! Lavapipe compiles each pipeline specialisation once per cold run, so the cases share a small
//! set: `rope_norm` in place and out of place with a positions buffer in every dtype, the
//! interleaved layout and a start offset in a few.

use crate::common;

use common::*;
use llama_kernels::compare::tolerance;
use llama_kernels::ops::rope::{qkv_views, HeadNorm};
use llama_kernels::reference::rope as reference;
use llama_kernels::{Context, DType, Error, Layout, PositionIds, Positions, Rope, Scaling, Tensor};

/// `norm(x)` then RoPE, in f64, for `x: [tokens, heads, head_dim]` at `pos` (one per token).
#[allow(clippy::too_many_arguments)]
fn want(
    x: &[f64],
    heads: usize,
    head_dim: usize,
    pos: &[i64],
    op: &Rope,
    norm: Option<(&[f64], f32, f32)>,
) -> Vec<f64> {
    let normed = match norm {
        Some((w, eps, off)) => reference::head_norm(x, w, eps as f64, off as f64),
        None => x.to_vec(),
    };
    let rd = op.rotary_dim.unwrap_or(head_dim);
    let (inv, attn) = op.inv_freq(head_dim, 0).unwrap();
    reference::rope(
        &normed,
        [1, pos.len(), heads, head_dim],
        pos,
        &inv,
        attn,
        op.layout,
        rd,
    )
}

/// A `[head_dim]` weight near 1 (Qwen3) or near 0 (Gemma 3 stores `w` for `1 + w`).
fn weight(
    rng: &mut Rng,
    ctx: &Context,
    hd: usize,
    dtype: DType,
    gemma: bool,
) -> (Tensor, Vec<f64>) {
    let base = if gemma { 0.0 } else { 1.0 };
    let w: Vec<f32> = (0..hd).map(|_| base + rng.normal(0.3)).collect();
    let t = upload_guarded(ctx, &w, &[hd], dtype);
    (t, rounded(&w, dtype))
}

/// Q and K of a fused QKV buffer `[seq, (nh + 2 nkv) head_dim]`, normalised (each with its own
/// weight, or none) and rotated in one dispatch; V and the guards untouched.
#[allow(clippy::too_many_arguments)]
fn fused_case(
    seed: u64,
    dtype: DType,
    op: &Rope,
    hd: usize,
    q_norm: bool,
    k_norm: bool,
    gemma: bool,
    scale: f32,
) {
    fused_case_sized(seed, dtype, op, hd, q_norm, k_norm, gemma, scale, (5, 4, 2));
}

/// [`fused_case`] with `(seq, n_heads, n_kv_heads)`.
#[allow(clippy::too_many_arguments)]
fn fused_case_sized(
    seed: u64,
    dtype: DType,
    op: &Rope,
    hd: usize,
    q_norm: bool,
    k_norm: bool,
    gemma: bool,
    scale: f32,
    (seq, nh, nkv): (usize, usize, usize),
) {
    let ctx = ctx();
    let mut rng = Rng::new(seed);
    let what = format!(
        "{dtype} {:?} rd {:?} hd {hd} q_norm {q_norm} k_norm {k_norm} gemma {gemma} x{scale}",
        op.layout, op.rotary_dim
    );
    let row = (nh + 2 * nkv) * hd;
    let data = rng.vec(seq * row, scale);
    let buf = upload_at(&ctx, &data, &[seq * row], dtype, GUARD_BEFORE);
    let (q, k, v) = qkv_views(buf.buffer(), GUARD_BEFORE, seq, nh, nkv, hd, dtype);
    let pos: Vec<i32> = (0..seq).map(|_| rng.below(1 << 24) as i32).collect();
    let pt = PositionIds::upload(&ctx, &pos, &[seq]).unwrap();
    let (qw, qwv) = weight(&mut rng, &ctx, hd, dtype, gemma);
    let (kw, kwv) = weight(&mut rng, &ctx, hd, dtype, gemma);
    let (eps, off) = (1e-6f32, if gemma { 1.0 } else { 0.0 });
    let mk = |w: &Tensor| HeadNorm {
        weight: w.clone(),
        eps,
        weight_offset: off,
    };
    let (qn, kn) = (mk(&qw), mk(&kw));
    op.run_qk_norm(
        &ctx,
        &q,
        &k,
        q_norm.then_some(&qn),
        k_norm.then_some(&kn),
        Positions::Ids(&pt),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let dr = rounded(&data, dtype);
    let part = |off: usize, heads: usize| -> Vec<f64> {
        (0..seq)
            .flat_map(|s| dr[s * row + off..s * row + off + heads * hd].to_vec())
            .collect()
    };
    let p64: Vec<i64> = pos.iter().map(|&p| p as i64).collect();
    let want_q = want(
        &part(0, nh),
        nh,
        hd,
        &p64,
        op,
        q_norm.then_some((&qwv[..], eps, off)),
    );
    let want_k = want(
        &part(nh * hd, nkv),
        nkv,
        hd,
        &p64,
        op,
        k_norm.then_some((&kwv[..], eps, off)),
    );
    let tol = tolerance(dtype);
    assert_close(&ctx, &q, &want_q, tol, &format!("{what} q"));
    assert_close(&ctx, &k, &want_k, tol, &format!("{what} k"));
    let got_v = ctx.read_f32(&v).unwrap();
    let want_v = part((nh + nkv) * hd, nkv);
    assert!(
        got_v.iter().zip(&want_v).all(|(&g, &w)| g as f64 == w),
        "{what}: v changed"
    );
    assert_guards(&ctx, &buf, &what);
}

/// Qwen3 (offset 0) and Gemma 3 (offset 1) QK-norm on a fused QKV buffer in every dtype: both
/// norms, one of them, full and partial rotary, both layouts, values large enough that an f16
/// sum of squares would overflow.
#[test]
fn fused_qk_norm_against_reference() {
    let mut seed = 100;
    for dtype in DType::ALL {
        // Qwen3-8B heads (head_dim 128, theta 1e6), both norms.
        let qwen = Rope::new(1_000_000.0, Layout::Half);
        for (q_norm, k_norm, gemma) in [
            (true, true, false),
            (true, false, true),
            (false, true, false),
        ] {
            seed += 1;
            fused_case(seed, dtype, &qwen, 128, q_norm, k_norm, gemma, 1.0);
        }
        // Partial rotary (head_dim 80, rotary_dim 32): the normalised tail stays unrotated.
        seed += 1;
        let partial = Rope::new(10000.0, Layout::Half).with_rotary_dim(32);
        fused_case(seed, dtype, &partial, 80, true, true, true, 1.0);
        // |x| ~ 300: x² sums past the f16 range (65504); the norm accumulates in f32.
        seed += 1;
        fused_case(seed, dtype, &qwen, 64, true, true, false, 300.0);
    }
    // Interleaved pairs, with YaRN's attention factor folded in after the norm.
    for dtype in [DType::F32, DType::BF16] {
        seed += 1;
        let op =
            Rope::new(1_000_000.0, Layout::Interleaved).with_scaling(Scaling::yarn(4.0, 32768.0));
        fused_case(seed, dtype, &op, 64, true, true, false, 1.0);
        seed += 1;
        let odd = Rope::new(10000.0, Layout::Interleaved).with_rotary_dim(6);
        fused_case(seed, dtype, &odd, 12, true, false, true, 1.0);
    }
}

/// Standalone `[tokens, heads, head_dim]` views: in place by start offset, out of place into a
/// NaN-filled view (the input untouched), and `[batch, seq, heads, head_dim]` in place.
#[test]
fn standalone_views_against_reference() {
    let ctx = ctx();
    let mut rng = Rng::new(200);
    let (seq, heads, hd) = (3, 3, 64);
    let op = Rope::new(500000.0, Layout::Half);
    // In place, start offset (f32 only: one more specialisation).
    let x = rng.vec(seq * heads * hd, 1.0);
    let xt = upload_guarded(&ctx, &x, &[seq, heads, hd], DType::F32);
    let (w, wv) = weight(&mut rng, &ctx, hd, DType::F32, false);
    op.run_norm(&ctx, &xt, &HeadNorm::new(&w, 1e-5), Positions::Start(4090))
        .unwrap();
    let pos: Vec<i64> = (4090..4090 + seq as i64).collect();
    let expect = want(
        &rounded(&x, DType::F32),
        heads,
        hd,
        &pos,
        &op,
        Some((&wv, 1e-5, 0.0)),
    );
    assert_close(&ctx, &xt, &expect, 1e-10, "in place, start");
    assert_guards(&ctx, &xt, "in place, start");
    for dtype in DType::ALL {
        let what = format!("{dtype} out of place");
        let x = rng.vec(seq * heads * hd, 1.0);
        let xt = upload_guarded(&ctx, &x, &[seq, heads, hd], dtype);
        let out = nan_output(&ctx, &[seq, heads, hd], dtype);
        let (w, wv) = weight(&mut rng, &ctx, hd, dtype, true);
        let p: Vec<i32> = vec![7, -3, 1_000_000];
        let pt = PositionIds::upload(&ctx, &p, &[seq]).unwrap();
        let partial = op.clone().with_rotary_dim(32);
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        partial
            .encode_norm_to(
                &ctx,
                &mut enc,
                &xt,
                &out,
                &HeadNorm::gemma(&w, 1e-6),
                Positions::Ids(&pt),
            )
            .unwrap();
        ctx.queue().submit([enc.finish()]);
        let xr = rounded(&x, dtype);
        let p64: Vec<i64> = p.iter().map(|&v| v as i64).collect();
        let expect = want(&xr, heads, hd, &p64, &partial, Some((&wv, 1e-6, 1.0)));
        assert_close(&ctx, &out, &expect, tolerance(dtype), &what);
        assert_guards(&ctx, &out, &what);
        let back = ctx.read_f32(&xt).unwrap();
        assert!(
            back.iter().zip(&xr).all(|(&g, &w)| g as f64 == w),
            "{what}: x changed"
        );
        // The same in place on a [batch, seq, heads, head_dim] view with [batch, seq] ids.
        let b4 = upload_guarded(&ctx, &x, &[1, seq, heads, hd], dtype);
        let pb = PositionIds::upload(&ctx, &p, &[1, seq]).unwrap();
        partial
            .run_norm(&ctx, &b4, &HeadNorm::gemma(&w, 1e-6), Positions::Ids(&pb))
            .unwrap();
        assert_close(
            &ctx,
            &b4,
            &expect,
            tolerance(dtype),
            &format!("{dtype} batched in place"),
        );
    }
}

/// Every norm validation rule, with the op and the values in the message; nothing is written.
#[test]
fn norm_validation_errors() {
    let ctx = ctx();
    let err = |r: Result<(), Error>, kind: fn(&Error) -> bool, needle: &str| {
        expect_err(r, "rope", kind, needle)
    };
    let x = filled(&ctx, &[2, 2, 64], 1.0);
    let w = filled(&ctx, &[64], 1.0);
    let op = Rope::default();
    let s0 = Positions::Start(0);
    let w63 = filled(&ctx, &[63], 1.0);
    err(
        op.run_norm(&ctx, &x, &HeadNorm::new(&w63, 1e-6), s0),
        is_shape,
        "norm weight has shape [63] but must be [64]",
    );
    let w2 = filled(&ctx, &[2, 32], 1.0);
    err(
        op.run_norm(&ctx, &x, &HeadNorm::new(&w2, 1e-6), s0),
        is_shape,
        "norm weight has shape [2, 32] but must be [64]",
    );
    let wh = ctx.upload_as(&[1.0; 64], &[64], DType::BF16).unwrap();
    err(
        op.run_norm(&ctx, &x, &HeadNorm::new(&wh, 1e-6), s0),
        is_dtype,
        "norm weight is bf16 but must be f32",
    );
    for eps in [-1e-6, f32::NAN, f32::INFINITY] {
        err(
            op.run_norm(&ctx, &x, &HeadNorm::new(&w, eps), s0),
            is_param,
            "norm eps must be finite and >= 0",
        );
    }
    let mut bad = HeadNorm::gemma(&w, 1e-6);
    bad.weight_offset = f32::NAN;
    err(
        op.run_norm(&ctx, &x, &bad, s0),
        is_param,
        "norm weight_offset must be finite, got NaN",
    );
    let short = Tensor::new(w.buffer(), 8, &[64], DType::F32);
    err(
        op.run_norm(&ctx, &x, &HeadNorm::new(&short, 1e-6), s0),
        is_bounds,
        "norm weight view (offset 8, shape [64]",
    );
    let in_x = Tensor::new(x.buffer(), 0, &[64], DType::F32);
    err(
        op.run_norm(&ctx, &x, &HeadNorm::new(&in_x, 1e-6), s0),
        is_alias,
        "norm weight shares a buffer with a rotated or written view",
    );
    // q_norm and k_norm are named apart, in one buffer and in two.
    let qkv = filled(&ctx, &[2 * (4 + 2 * 2) * 64], 1.0);
    let (q, k, _) = qkv_views(qkv.buffer(), 0, 2, 4, 2, 64, DType::F32);
    err(
        op.run_qk_norm(&ctx, &q, &k, None, Some(&HeadNorm::new(&w63, 1e-6)), s0),
        is_shape,
        "k_norm weight has shape [63]",
    );
    err(
        op.run_qk_norm(&ctx, &q, &k, Some(&HeadNorm::new(&w, -1.0)), None, s0),
        is_param,
        "q_norm eps must be finite and >= 0, got -1",
    );
    let q_alone = filled(&ctx, &[2, 4, 64], 1.0);
    let k_alone = filled(&ctx, &[2, 2, 64], 1.0);
    err(
        op.run_qk_norm(
            &ctx,
            &q_alone,
            &k_alone,
            Some(&HeadNorm::new(&w, 1e-6)),
            Some(&HeadNorm::new(&w63, 1e-6)),
            s0,
        ),
        is_shape,
        "norm weight has shape [63]",
    );
    // Nothing was written by the refused calls.
    assert!(ctx.read_f32(&q_alone).unwrap().iter().all(|&v| v == 1.0));
    assert!(ctx.read_f32(&x).unwrap().iter().all(|&v| v == 1.0));
}

/// A row map `rows` (u32 entries, `u32::MAX` = skip) in a buffer of its own, from i32 values.
fn rows_buffer(ctx: &Context, rows: &[u32]) -> wgpu::Buffer {
    let as_i32: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
    PositionIds::upload(ctx, &as_i32, &[rows.len()])
        .unwrap()
        .buffer()
        .clone()
}

/// RoPE (with and without the K norm) written through a row map into a NaN-filled page pool,
/// NHD (`[page, token, kv_head, head_dim]`, head_stride head_dim) and HND
/// (`[page, kv_head, token, head_dim]`, head_stride page_size * head_dim) layouts: rows that
/// scatter out of order across pages, skipped tokens, an entry past the pool (skipped by the
/// kernel), a nonzero rows_offset. Every element not written must still be NaN.
#[test]
fn row_map_into_pages_against_reference() {
    let ctx = ctx();
    let mut rng = Rng::new(300);
    let (n, heads, hd, pages, page_size) = (6, 2, 64, 3, 4);
    let pool = pages * page_size * heads * hd;
    // (page, slot) of each token; None = skipped (another buffer's page).
    let slots: [Option<(usize, usize)>; 6] = [
        Some((2, 1)),
        None,
        Some((0, 3)),
        Some((1, 0)),
        Some((0, 0)),
        Some((2, 3)),
    ];
    let mut case = 0;
    for dtype in DType::ALL {
        for hnd in [false, true] {
            for with_norm in [true, false] {
                case += 1;
                let what = format!(
                    "{dtype} {} norm {with_norm}",
                    if hnd { "HND" } else { "NHD" }
                );
                let (row_of, head_stride) = if hnd {
                    (
                        Box::new(move |(p, s): (usize, usize)| p * heads * page_size * hd + s * hd)
                            as Box<dyn Fn((usize, usize)) -> usize>,
                        page_size * hd,
                    )
                } else {
                    (
                        Box::new(move |(p, s): (usize, usize)| (p * page_size + s) * heads * hd)
                            as Box<dyn Fn((usize, usize)) -> usize>,
                        hd,
                    )
                };
                let mut rows: Vec<u32> = vec![7, 7]; // rows_offset 2: entries of another call
                rows.extend(
                    slots
                        .iter()
                        .map(|s| s.map_or(u32::MAX, |s| row_of(s) as u32)),
                );
                // The last token's entry points past the pool: the kernel skips it.
                let last = rows.len() - 1;
                if case % 2 == 0 {
                    rows[last] = (pool - hd / 2) as u32;
                }
                let rows_buf = rows_buffer(&ctx, &rows);
                let dst = ctx
                    .upload_as(&vec![f32::NAN; pool], &[pool], dtype)
                    .unwrap();
                let x = rng.vec(n * heads * hd, 1.0);
                let xt = upload_guarded(&ctx, &x, &[n, heads, hd], dtype);
                let pos: Vec<i32> = (0..n).map(|_| rng.below(1 << 20) as i32).collect();
                let pt = PositionIds::upload(&ctx, &pos, &[n]).unwrap();
                let (w, wv) = weight(&mut rng, &ctx, hd, dtype, false);
                let norm = HeadNorm::new(&w, 1e-6);
                let op = Rope::new(1_000_000.0, Layout::Half);
                let mut enc = ctx.device().create_command_encoder(&Default::default());
                op.encode_rows(
                    &ctx,
                    &mut enc,
                    &xt,
                    dst.buffer(),
                    &rows_buf,
                    2,
                    head_stride,
                    Positions::Ids(&pt),
                    with_norm.then_some(&norm),
                )
                .unwrap_or_else(|e| panic!("{what}: {e}"));
                ctx.queue().submit([enc.finish()]);
                let p64: Vec<i64> = pos.iter().map(|&p| p as i64).collect();
                let expect = want(
                    &rounded(&x, dtype),
                    heads,
                    hd,
                    &p64,
                    &op,
                    with_norm.then_some((&wv[..], 1e-6, 0.0)),
                );
                let got = ctx.read_f32(&dst).unwrap();
                let mut image = vec![f64::NAN; pool];
                let mut written = vec![false; pool];
                for (t, &r) in rows[2..].iter().enumerate() {
                    if r == u32::MAX {
                        continue;
                    }
                    for h in 0..heads {
                        // A head that would end past the pool is skipped.
                        if r as usize + h * head_stride + hd > pool {
                            continue;
                        }
                        for e in 0..hd {
                            let i = r as usize + h * head_stride + e;
                            image[i] = expect[(t * heads + h) * hd + e];
                            written[i] = true;
                        }
                    }
                }
                let (g, w): (Vec<f32>, Vec<f64>) = got
                    .iter()
                    .zip(&image)
                    .zip(&written)
                    .filter(|(_, &wr)| wr)
                    .map(|((&g, &w), _)| (g, w))
                    .unzip();
                let c = llama_kernels::compare::compare(&g, &w);
                assert!(c.passes(tolerance(dtype)), "{what}: {c}");
                assert!(
                    got.iter().zip(&written).all(|(v, &wr)| wr || v.is_nan()),
                    "{what}: an element outside the mapped rows was written"
                );
                assert_guards(&ctx, &xt, &what);
            }
        }
    }
}

/// Every row-map validation rule.
#[test]
fn row_map_validation_errors() {
    let ctx = ctx();
    let err = |r: Result<(), Error>, kind: fn(&Error) -> bool, needle: &str| {
        expect_err(r, "rope", kind, needle)
    };
    let (n, heads, hd) = (3, 2, 64);
    let x = filled(&ctx, &[n, heads, hd], 1.0);
    let dst = filled(&ctx, &[4 * heads * hd], 0.0);
    let rows = rows_buffer(&ctx, &[0, 128, 256]);
    let op = Rope::default();
    let s0 = Positions::Start(0);
    let go = |x: &Tensor, dst: &wgpu::Buffer, rows: &wgpu::Buffer, off: usize, hs: usize| {
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        op.encode_rows(&ctx, &mut enc, x, dst, rows, off, hs, s0, None)
    };
    err(
        go(&x, dst.buffer(), &rows, 0, 32),
        is_shape,
        "head_stride 32 is below head_dim 64",
    );
    err(
        go(&x, dst.buffer(), &rows, 1, 64),
        is_bounds,
        "rows_offset 1 + 3 tokens passes the rows buffer (3 u32 entries)",
    );
    let small = filled(&ctx, &[100], 0.0);
    err(
        go(&x, small.buffer(), &rows, 0, 64),
        is_bounds,
        "one token's 2 heads (head_stride 64, head_dim 64) do not fit dst (100 f32 elements)",
    );
    err(
        go(&x, x.buffer(), &rows, 0, 64),
        is_alias,
        "dst must be a buffer of its own",
    );
    err(
        go(&x, &rows, &rows, 0, 64),
        is_alias,
        "dst must be a buffer of its own",
    );
    let xh = ctx
        .upload_as(&[0.0; 3 * 2 * 64], &[n, heads, hd], DType::BF16)
        .unwrap();
    let dh = ctx.upload_as(&[0.0; 1024], &[1024], DType::BF16).unwrap();
    err(
        go(&xh, dh.buffer(), &rows, 0, 65),
        is_bounds,
        "head_stride 65 with bf16 storage must be even",
    );
    let no_storage = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4096,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    err(
        go(&x, &no_storage, &rows, 0, 64),
        is_param,
        "dst buffer needs STORAGE usage",
    );
    let x4 = filled(&ctx, &[1, n, heads, hd], 1.0);
    err(
        go(&x4, dst.buffer(), &rows, 0, 64),
        is_shape,
        "a row map writes one [tokens, heads, head_dim] view",
    );
    let pos_in_dst = PositionIds::new(dst.buffer(), 0, &[n]);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    err(
        op.encode_rows(
            &ctx,
            &mut enc,
            &x,
            dst.buffer(),
            &rows,
            0,
            64,
            Positions::Ids(&pos_in_dst),
            None,
        ),
        is_alias,
        "positions share a buffer",
    );
    assert!(
        ctx.read_f32(&dst).unwrap().iter().all(|&v| v == 0.0),
        "a refused call wrote dst"
    );
}

/// `check`'s rope op with norm weights: wrong dtype, wrong shape, norm metadata without a
/// weight, and a weight name that does not fit the inputs are refused with clear errors.
#[test]
fn check_norm_cases_are_refused_when_mistyped() {
    let x = ("x", DType::F32, vec![2, 2, 8]);
    let rope = [("op", "rope")];
    let e = case_error(
        &[x.clone(), ("norm_weight", DType::BF16, vec![8])],
        &rope,
        1.0,
    );
    assert!(e.contains("norm_weight is bf16 but x is f32"), "{e}");
    let e = case_error(
        &[x.clone(), ("norm_weight", DType::F32, vec![7])],
        &rope,
        1.0,
    );
    assert!(
        e.contains("norm_weight has shape [7]; it must be [8]"),
        "{e}"
    );
    let e = case_error(
        std::slice::from_ref(&x),
        &[("op", "rope"), ("norm_eps", "1e-6")],
        1.0,
    );
    assert!(e.contains("norm_eps"), "{e}");
    let e = case_error(
        &[x.clone(), ("q_norm_weight", DType::F32, vec![8])],
        &rope,
        1.0,
    );
    assert!(e.contains("q_norm_weight"), "{e}");
    let e = case_error(
        &[x, ("norm_weight", DType::F32, vec![8])],
        &[("op", "rope"), ("norm_eps", "-1")],
        1.0,
    );
    assert!(
        e.contains("norm eps must be finite and >= 0, got -1"),
        "{e}"
    );
}

/// A device whose storage bindings hold only 64 KiB: a `[batch, seq, heads, head_dim]` call past
/// one binding is split into runs of tokens, and every piece keeps its norm and its slice of
/// `[3, batch, seq]` multimodal positions (the pieces of a row and of the second batch row).
#[test]
fn norm_and_multimodal_positions_survive_the_split_past_one_binding() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: wgpu::Limits {
            max_storage_buffer_binding_size: 1 << 16,
            ..wgpu::Limits::default()
        },
        ..Default::default()
    }))
    .expect("device");
    let ctx = Context::from_device(&device, &queue);
    assert_eq!(ctx.limits().max_storage_buffer_binding_size, 1 << 16);
    let mut rng = Rng::new(400);
    let (b, seq, heads, hd, section) = (2, 80, 4, 64, [8, 12, 12]);
    let n = b * seq * heads * hd;
    assert!(n * 4 > 1 << 16);
    let x = rng.vec(n, 1.0);
    let xt = ctx.upload(&x, &[b, seq, heads, hd]).unwrap();
    let pos: Vec<i32> = (0..3 * b * seq)
        .map(|_| rng.below(1 << 20) as i32)
        .collect();
    let pt = PositionIds::upload(&ctx, &pos, &[3, b, seq]).unwrap();
    let w: Vec<f32> = (0..hd).map(|_| 1.0 + rng.normal(0.3)).collect();
    let wt = ctx.upload(&w, &[hd]).unwrap();
    let op = Rope::new(1_000_000.0, Layout::Half).with_mrope_section(section);
    op.run_norm(&ctx, &xt, &HeadNorm::new(&wt, 1e-6), Positions::Ids(&pt))
        .unwrap();
    let normed = reference::head_norm(
        &rounded(&x, DType::F32),
        &rounded(&w, DType::F32),
        1e-6,
        0.0,
    );
    let (inv, attn) = op.inv_freq(hd, 0).unwrap();
    let p64: Vec<i64> = pos.iter().map(|&p| p as i64).collect();
    let expect = reference::rope_multimodal(
        &normed,
        [b, seq, heads, hd],
        &p64,
        section,
        &inv,
        attn,
        Layout::Half,
        hd,
    );
    assert_close(&ctx, &xt, &expect, 1e-10, "split past one binding");
}

/// Enough tokens that an invocation owns several heads (32768 tokens: one group holds all 4 Q
/// and 2 K heads; a row map over 10 heads in groups of 8 and a short one of 2), so cos/sin are
/// shared across heads of both segments.
#[test]
fn head_groups_at_many_tokens() {
    let qwen = Rope::new(1_000_000.0, Layout::Half);
    for (seed, dtype) in [(600, DType::F32), (601, DType::BF16)] {
        fused_case_sized(
            seed,
            dtype,
            &qwen,
            16,
            true,
            true,
            false,
            1.0,
            (32768, 4, 2),
        );
        fused_case_sized(
            seed + 10,
            dtype,
            &qwen,
            16,
            false,
            true,
            true,
            1.0,
            (32768, 4, 2),
        );
    }
    // Row map: every token to its own row of a [n, heads, head_dim] destination, reversed.
    let ctx = ctx();
    let mut rng = Rng::new(602);
    let (n, heads, hd) = (32768, 10, 8);
    let x = rng.vec(n * heads * hd, 1.0);
    let xt = upload_guarded(&ctx, &x, &[n, heads, hd], DType::F32);
    let rows: Vec<u32> = (0..n).map(|t| ((n - 1 - t) * heads * hd) as u32).collect();
    let rows_buf = rows_buffer(&ctx, &rows);
    let dst = ctx
        .upload_as(
            &vec![f32::NAN; n * heads * hd],
            &[n * heads * hd],
            DType::F32,
        )
        .unwrap();
    let (w, wv) = weight(&mut rng, &ctx, hd, DType::F32, false);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    qwen.encode_rows(
        &ctx,
        &mut enc,
        &xt,
        dst.buffer(),
        &rows_buf,
        0,
        hd,
        Positions::Start(5),
        Some(&HeadNorm::new(&w, 1e-6)),
    )
    .unwrap();
    ctx.queue().submit([enc.finish()]);
    let pos: Vec<i64> = (5..5 + n as i64).collect();
    let expect = want(
        &rounded(&x, DType::F32),
        heads,
        hd,
        &pos,
        &qwen,
        Some((&wv, 1e-6, 0.0)),
    );
    let reversed: Vec<f64> = expect.chunks(heads * hd).rev().flatten().copied().collect();
    assert_close(&ctx, &dst, &reversed, 1e-10, "row map, 32768 tokens");
}

//! RoPE on a real adapter against the f64 reference: the cross-check grid (layouts, dtypes, head
//! sizes, partial rotary, every rope_type, positions up to 2^24 - 1, batch, fused QKV and
//! out-of-place views), the properties the math guarantees, the accuracy at large positions, and
//! every validation rule.

use crate::common;

use common::*;
use llama_kernels::bench::{with_sincos, SinCos};
use llama_kernels::compare::{compare, tolerance};
use llama_kernels::ops::rope::qkv_views;
use llama_kernels::reference::rope as reference;
use llama_kernels::{Context, DType, Error, Layout, PositionIds, Positions, Rope, Scaling, Tensor};

const POSITIONS: [i64; 7] = [0, 1, 4095, 65535, 131071, 1_000_000, (1 << 24) - 1];
const HEAD_DIMS: [usize; 5] = [64, 80, 96, 128, 256];

/// Every rope_type, with parameters from real configs where there is one.
fn scalings(pairs: usize) -> Vec<(f64, Scaling)> {
    vec![
        // Llama-2-7B
        (10000.0, Scaling::Default),
        // linear position interpolation x4
        (10000.0, Scaling::Linear { factor: 4.0 }),
        // Llama-3.1-8B
        (
            500000.0,
            Scaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        ),
        // Qwen2.5 with YaRN x4 over 32k
        (1_000_000.0, Scaling::yarn(4.0, 32768.0)),
        // dynamic NTK x2 over 4k
        (
            10000.0,
            Scaling::Dynamic {
                factor: 2.0,
                original_max_position_embeddings: 4096.0,
            },
        ),
        // Phi-3-mini-128k style factors (synthetic values of the right shape)
        (
            10000.0,
            Scaling::LongRope {
                short_factor: (0..pairs).map(|i| 1.0 + 0.02 * i as f64).collect(),
                long_factor: (0..pairs).map(|i| 1.0 + 0.9 * i as f64).collect(),
                factor: 32.0,
                original_max_position_embeddings: 4096.0,
                attention_factor: None,
            },
        ),
        // a user table
        (
            10000.0,
            Scaling::InvFreq {
                inv_freq: (0..pairs)
                    .map(|i| 1.3 / (1.0 + i as f64).powf(1.7))
                    .collect(),
                attention_factor: 0.9,
            },
        ),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ViewKind {
    /// `[seq, heads, head_dim]`, in place, start offset.
    Plain,
    /// `[batch, seq, heads, head_dim]`, in place, `[batch, seq]` positions.
    Batch,
    /// Q and K inside a fused QKV buffer, in place, one dispatch, `[seq]` positions.
    FusedQkv,
    /// Out of place into a NaN-filled view, `[seq]` positions.
    OutOfPlace,
}
const VIEWS: [ViewKind; 4] = [
    ViewKind::Plain,
    ViewKind::Batch,
    ViewKind::FusedQkv,
    ViewKind::OutOfPlace,
];

#[derive(Clone, Debug)]
struct Case {
    dtype: DType,
    layout: Layout,
    head_dim: usize,
    rotary_dim: usize,
    theta: f64,
    scaling: Scaling,
    /// The largest position in the case.
    max_pos: i64,
    view: ViewKind,
}

/// Positions for `batch x seq` tokens ending at `max_pos`: contiguous for a start offset,
/// shuffled (non-monotonic, different per batch row) for a positions buffer.
fn make_positions(rng: &mut Rng, batch: usize, seq: usize, max_pos: i64, ids: bool) -> Vec<i64> {
    let start = (max_pos - (seq as i64 - 1)).max(0);
    if !ids {
        return (0..batch)
            .flat_map(|_| (0..seq as i64).map(move |s| start + s))
            .collect();
    }
    let mut out = Vec::new();
    for b in 0..batch {
        for s in 0..seq {
            // The first token of row 0 is max_pos itself; the others fall anywhere below.
            if b == 0 && s == 0 {
                out.push(max_pos);
            } else {
                out.push(rng.below(max_pos as usize + 1) as i64);
            }
        }
    }
    out
}

fn expected(c: &Case, x: &[f64], shape: [usize; 4], pos: &[i64], seq_len: usize) -> Vec<f64> {
    let (inv, attn) = reference::frequencies(c.theta, c.rotary_dim, &c.scaling, seq_len);
    reference::rope(x, shape, pos, &inv, attn, c.layout, c.rotary_dim)
}

/// Whether `rope_vec4` should take a view at element offset `off` (strides already aligned).
fn vec4_expected(dtype: DType, rotary_dim: usize, off: usize) -> bool {
    let lanes = 16 / dtype.size();
    off.is_multiple_of(lanes) && rotary_dim.is_multiple_of(2 * lanes)
}

fn run_case(c: &Case, seed: u64) {
    for guard in [GUARD_BEFORE, ALIGNED_GUARD] {
        run_case_at(c, seed, guard);
        if c.view == ViewKind::OutOfPlace {
            break;
        }
    }
}

fn run_case_at(c: &Case, seed: u64, guard: usize) {
    let ctx = ctx();
    let mut rng = Rng::new(seed);
    let hd = c.head_dim;
    let tol = tolerance(c.dtype);
    let what = format!("{c:?} guard {guard}");
    let mut op = Rope::new(c.theta, c.layout)
        .with_scaling(c.scaling.clone())
        .with_rotary_dim(c.rotary_dim);
    match c.view {
        ViewKind::Plain | ViewKind::Batch => {
            let (batch, seq, heads) = if c.view == ViewKind::Plain {
                (1, 3, 4)
            } else {
                (2, 3, 2)
            };
            let ids = c.view == ViewKind::Batch;
            let pos = make_positions(&mut rng, batch, seq, c.max_pos, ids);
            let seq_len = (*pos.iter().max().unwrap() + 1) as usize;
            let n = batch * seq * heads * hd;
            let x = rng.vec(n, 1.0);
            let want = expected(
                c,
                &rounded(&x, c.dtype),
                [batch, seq, heads, hd],
                &pos,
                seq_len,
            );
            let vec4 = vec4_expected(c.dtype, c.rotary_dim, guard)
                && hd.is_multiple_of(16 / c.dtype.size());
            if ids {
                let xt = upload_at(&ctx, &x, &[batch, seq, heads, hd], c.dtype, guard);
                let p32: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
                let pt = PositionIds::upload(&ctx, &p32, &[batch, seq]).unwrap();
                op = op.with_seq_len(seq_len);
                let v = op
                    .variant(&ctx, &xt, None, None, Positions::Ids(&pt))
                    .unwrap();
                assert_eq!(v.vec4, vec4, "{what}: path");
                op.run(&ctx, &xt, Positions::Ids(&pt))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_close(&ctx, &xt, &want, tol, &what);
                assert_guards_at(&ctx, &xt, guard, &what);
            } else {
                let xt = upload_at(&ctx, &x, &[seq, heads, hd], c.dtype, guard);
                let start = Positions::Start(pos[0] as i32);
                assert_eq!(
                    op.variant(&ctx, &xt, None, None, start).unwrap().vec4,
                    vec4,
                    "{what}: path"
                );
                op.run(&ctx, &xt, start)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_close(&ctx, &xt, &want, tol, &what);
                assert_guards_at(&ctx, &xt, guard, &what);
            }
        }
        ViewKind::FusedQkv => {
            // GQA group of 2, scaled down: 4 q heads, 2 kv heads.
            let (seq, nh, nkv) = (3, 4, 2);
            let pos = make_positions(&mut rng, 1, seq, c.max_pos, true);
            let seq_len = (*pos.iter().max().unwrap() + 1) as usize;
            let row = (nh + 2 * nkv) * hd;
            let data = rng.vec(seq * row, 1.0);
            let buf = upload_at(&ctx, &data, &[seq * row], c.dtype, guard);
            let (q, k, v) = qkv_views(buf.buffer(), guard, seq, nh, nkv, hd, c.dtype);
            let p32: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
            let pt = PositionIds::upload(&ctx, &p32, &[seq]).unwrap();
            op = op.with_seq_len(seq_len);
            let vec4 = vec4_expected(c.dtype, c.rotary_dim, guard)
                && hd.is_multiple_of(16 / c.dtype.size());
            let var = op
                .variant(&ctx, &q, Some(&k), None, Positions::Ids(&pt))
                .unwrap();
            assert_eq!(var.vec4, vec4, "{what}: path");
            op.run_qk(&ctx, &q, &k, Positions::Ids(&pt))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let dr = rounded(&data, c.dtype);
            let part = |off: usize, heads: usize| -> Vec<f64> {
                (0..seq)
                    .flat_map(|s| dr[s * row + off..s * row + off + heads * hd].to_vec())
                    .collect()
            };
            let want_q = expected(c, &part(0, nh), [1, seq, nh, hd], &pos, seq_len);
            let want_k = expected(c, &part(nh * hd, nkv), [1, seq, nkv, hd], &pos, seq_len);
            assert_close(&ctx, &q, &want_q, tol, &format!("{what} q"));
            assert_close(&ctx, &k, &want_k, tol, &format!("{what} k"));
            let got_v = ctx.read_f32(&v).unwrap();
            let want_v = part((nh + nkv) * hd, nkv);
            assert!(
                got_v.iter().zip(&want_v).all(|(&g, &w)| g as f64 == w),
                "{what}: v changed"
            );
            assert_guards_at(&ctx, &buf, guard, &what);
        }
        ViewKind::OutOfPlace => {
            let (seq, heads) = (2, 3);
            let pos = make_positions(&mut rng, 1, seq, c.max_pos, true);
            let seq_len = (*pos.iter().max().unwrap() + 1) as usize;
            let x = rng.vec(seq * heads * hd, 1.0);
            let xt = upload_guarded(&ctx, &x, &[seq, heads, hd], c.dtype);
            let out = nan_output(&ctx, &[seq, heads, hd], c.dtype);
            let p32: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
            let pt = PositionIds::upload(&ctx, &p32, &[seq]).unwrap();
            op = op.with_seq_len(seq_len);
            op.run_to(&ctx, &xt, &out, Positions::Ids(&pt))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let xr = rounded(&x, c.dtype);
            let want = expected(c, &xr, [1, seq, heads, hd], &pos, seq_len);
            assert_close(&ctx, &out, &want, tol, &what);
            assert_guards(&ctx, &out, &what);
            let back = ctx.read_f32(&xt).unwrap();
            assert!(
                back.iter().zip(&xr).all(|(&g, &w)| g as f64 == w),
                "{what}: x changed"
            );
        }
    }
}

/// Layouts x dtypes x head_dim, each with four cases; the scaling, the largest position, the view
/// kind and full/partial rotary rotate so that every value of each of the seven dimensions meets
/// every value of each other one (asserted at the end), in 120 cases instead of 58,800.
#[test]
fn grid_against_reference() {
    let mut i = 0usize;
    let mut seen: Vec<[usize; 7]> = Vec::new();
    for (li, layout) in [Layout::Half, Layout::Interleaved].into_iter().enumerate() {
        for (di, dtype) in DType::ALL.into_iter().enumerate() {
            for (hi, &hd) in HEAD_DIMS.iter().enumerate() {
                for k in 0..4 {
                    let partial = (i + k) % 2 == 1;
                    // Phi-2: head_dim 80, rotary_dim 32.
                    let rd = match (partial, hd) {
                        (false, _) => hd,
                        (true, 80) => 32,
                        (true, _) => hd / 2,
                    };
                    let si = (i * 3 + k) % 7;
                    let pi = (i + 3 * k + 2 * (i / 7)) % 7;
                    let vi = (i + 2 * k + i / 4) % 4;
                    seen.push([li, di, hi, partial as usize, si, pi, vi]);
                    let (theta, scaling) = scalings(rd / 2).swap_remove(si);
                    let c = Case {
                        dtype,
                        layout,
                        head_dim: hd,
                        rotary_dim: rd,
                        theta,
                        scaling,
                        max_pos: POSITIONS[pi],
                        view: VIEWS[vi],
                    };
                    run_case(&c, 1000 + i as u64 * 4 + k as u64);
                }
                i += 1;
            }
        }
    }
    let sizes = [2, 3, 5, 2, 7, 7, 4];
    for a in 0..7 {
        for b in a + 1..7 {
            let pairs: std::collections::HashSet<(usize, usize)> =
                seen.iter().map(|c| (c[a], c[b])).collect();
            assert_eq!(
                pairs.len(),
                sizes[a] * sizes[b],
                "grid dimensions {a} and {b} do not meet in every combination"
            );
        }
    }
}

/// Every rope_type at every position, f32, head_dim 128, both layouts.
#[test]
fn every_rope_type_at_every_position() {
    let mut i = 0u64;
    for s in 0..7 {
        for (p, &max_pos) in POSITIONS.iter().enumerate() {
            i += 1;
            let rotary_dim = if p % 3 == 2 { 64 } else { 128 };
            let (theta, scaling) = scalings(rotary_dim / 2).swap_remove(s);
            run_case(
                &Case {
                    dtype: DType::F32,
                    layout: if (s + p) % 2 == 0 {
                        Layout::Half
                    } else {
                        Layout::Interleaved
                    },
                    head_dim: 128,
                    rotary_dim,
                    theta,
                    scaling,
                    max_pos,
                    view: VIEWS[(s + p) % 4],
                },
                i,
            );
        }
    }
}

/// Odd pair counts and tiny rotary parts: rotary_dim 2 and 6 (f32 and interleaved halves),
/// odd head_dim with f32, and the YaRN DeepSeek mscale form.
#[test]
fn odd_sizes_and_rare_parameters() {
    let yarn_ds = Scaling::Yarn {
        factor: 40.0,
        original_max_position_embeddings: 4096.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention_factor: None,
        mscale: Some(0.707),
        mscale_all_dim: Some(1.0),
        truncate: false,
    };
    let mut seed = 7000;
    for (dtype, layout, hd, rd) in [
        (DType::F32, Layout::Half, 65, 6),
        (DType::F32, Layout::Interleaved, 7, 2),
        (DType::F32, Layout::Half, 10, 10),
        (DType::F16, Layout::Interleaved, 64, 6),
        (DType::BF16, Layout::Interleaved, 12, 2),
        (DType::BF16, Layout::Half, 12, 4),
    ] {
        for view in VIEWS {
            for scaling in [Scaling::Default, yarn_ds.clone()] {
                seed += 1;
                run_case(
                    &Case {
                        dtype,
                        layout,
                        head_dim: hd,
                        rotary_dim: rd,
                        theta: 10000.0,
                        scaling,
                        max_pos: 70000,
                        view,
                    },
                    seed,
                );
            }
        }
    }
}

/// Dynamic NTK and LongRoPE on both sides of original_max_position_embeddings (4095/4096/4097
/// tokens seen, i.e. max position 4094/4095/4096): the table switches exactly where HF's does.
#[test]
fn length_dependent_scalings_switch_at_the_threshold() {
    let mut seed = 8000;
    for (theta, scaling) in scalings(32).into_iter().filter(|(_, s)| s.needs_seq_len()) {
        for max_pos in [4094, 4095, 4096] {
            for view in [ViewKind::Plain, ViewKind::Batch] {
                seed += 1;
                run_case(
                    &Case {
                        dtype: DType::F32,
                        layout: Layout::Half,
                        head_dim: 64,
                        rotary_dim: 64,
                        theta,
                        scaling: scaling.clone(),
                        max_pos,
                        view,
                    },
                    seed,
                );
            }
        }
    }
    // The threshold is real: 4096 and 4097 tokens give different tables.
    let s = &scalings(32)[5].1;
    let a = reference::frequencies(10000.0, 64, s, 4096).0;
    let b = reference::frequencies(10000.0, 64, s, 4097).0;
    assert_ne!(a, b);
}

/// Llama-4-Scout's llama3 scaling (factor 16, low_freq_factor = high_freq_factor = 1): HF warns
/// and computes a step table (frequencies whose wavelength passes 8192 divided by 16, the rest
/// kept), and so does the op; with low_freq_factor 4 > high_freq_factor 1 the wavelengths
/// between 2048 and 8192 are divided too (HF tests the long side first).
#[test]
fn llama3_with_an_empty_smoothing_band_is_a_step() {
    let llama3 = |lo: f64, hi: f64| {
        Rope::new(500000.0, Layout::Half).with_scaling(Scaling::Llama3 {
            factor: 16.0,
            low_freq_factor: lo,
            high_freq_factor: hi,
            original_max_position_embeddings: 8192.0,
        })
    };
    for (lo, hi) in [(1.0, 1.0), (4.0, 1.0)] {
        let (inv, attn) = llama3(lo, hi).inv_freq(128, 0).unwrap();
        assert_eq!(attn, 1.0);
        let mut divided = 0;
        for (i, &got) in inv.iter().enumerate() {
            let f = 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0);
            let long = 2.0 * std::f64::consts::PI / f > 8192.0 / lo;
            let want = if long { f / 16.0 } else { f };
            divided += long as usize;
            assert!(
                (got - want).abs() <= 1e-15 * want,
                "lo {lo} hi {hi} pair {i}: {got} vs {want}"
            );
        }
        // Both sides of the step are present.
        assert!(
            divided > 0 && divided < 64,
            "lo {lo}: {divided} pairs divided"
        );
    }
}

/// A decode step: K of one new token, inside a fused QKV buffer, rotated out of place into its
/// slot of a strided KV cache `[max_len, n_kv_heads, head_dim]`, positions by start offset.
#[test]
fn k_into_a_kv_cache_slot() {
    let ctx = ctx();
    let mut rng = Rng::new(21);
    let (nh, nkv, hd, max_len) = (8, 2, 128, 40);
    for (dtype, pos) in [(DType::F32, 37), (DType::BF16, 5)] {
        let row = (nh + 2 * nkv) * hd;
        let qkv = rng.vec(row, 1.0);
        let buf = ctx.upload_as(&qkv, &[row], dtype).unwrap();
        let (_, k, _) = qkv_views(buf.buffer(), 0, 1, nh, nkv, hd, dtype);
        let cache = nan_output(&ctx, &[max_len, nkv, hd], dtype);
        let slot = Tensor::new(
            cache.buffer(),
            cache.offset() + pos * nkv * hd,
            &[1, nkv, hd],
            dtype,
        );
        let op = Rope::new(500000.0, Layout::Half);
        op.run_to(&ctx, &k, &slot, Positions::Start(pos as i32))
            .unwrap();
        let kr = rounded(&qkv[nh * hd..(nh + nkv) * hd], dtype);
        let (inv, attn) = reference::frequencies(500000.0, hd, &Scaling::Default, 0);
        let want = reference::rope(
            &kr,
            [1, 1, nkv, hd],
            &[pos as i64],
            &inv,
            attn,
            Layout::Half,
            hd,
        );
        assert_close(&ctx, &slot, &want, tolerance(dtype), "kv slot");
        // The rest of the cache is still NaN.
        let all = ctx.read_f32(&cache).unwrap();
        let nan = all
            .iter()
            .enumerate()
            .filter(|(i, _)| i / (nkv * hd) != pos)
            .all(|(_, v)| v.is_nan());
        assert!(nan, "rope wrote outside the cache slot");
        assert_guards(&ctx, &cache, "kv cache");
    }
}

/// Rotation preserves the norm of every pair (attention_factor 1), at random positions.
#[test]
fn pair_norms_are_preserved() {
    let ctx = ctx();
    let mut rng = Rng::new(31);
    let (seq, heads, hd) = (16, 3, 128);
    let x = rng.vec(seq * heads * hd, 2.0);
    let pos: Vec<i32> = (0..seq).map(|_| rng.below(1 << 24) as i32).collect();
    for layout in [Layout::Half, Layout::Interleaved] {
        let xt = ctx.upload(&x, &[seq, heads, hd]).unwrap();
        let pt = PositionIds::upload(&ctx, &pos, &[seq]).unwrap();
        Rope::new(10000.0, layout)
            .run(&ctx, &xt, Positions::Ids(&pt))
            .unwrap();
        let y = ctx.read_f32(&xt).unwrap();
        let mut worst = 0.0f64;
        for head in 0..seq * heads {
            for i in 0..hd / 2 {
                let (a, b) = layout.pair(i, hd);
                let n0 = (x[head * hd + a] as f64).hypot(x[head * hd + b] as f64);
                let n1 = (y[head * hd + a] as f64).hypot(y[head * hd + b] as f64);
                worst = worst.max((n1 - n0).abs() / n0.max(1e-3));
            }
        }
        assert!(worst < 1e-6, "{layout:?}: pair norm changed by {worst:e}");
    }
}

/// Default RoPE: rope(q, m) . rope(k, n) depends only on m - n, also near 2^24.
#[test]
fn dot_products_depend_only_on_distance() {
    let ctx = ctx();
    let mut rng = Rng::new(41);
    let hd = 128;
    let q = rng.vec(hd, 1.0);
    let k = rng.vec(hd, 1.0);
    for layout in [Layout::Half, Layout::Interleaved] {
        for d in [0i32, 1, 7, 4096, 100_000] {
            let ms = [d + 3, d + 1_000_000, (1 << 24) - 1, 2_000_000_000];
            let n = ms.len();
            let qs: Vec<f32> = (0..n).flat_map(|_| q.clone()).collect();
            let ks: Vec<f32> = (0..n).flat_map(|_| k.clone()).collect();
            let qt = ctx.upload(&qs, &[n, 1, hd]).unwrap();
            let kt = ctx.upload(&ks, &[n, 1, hd]).unwrap();
            let qp = PositionIds::upload(&ctx, &ms, &[n]).unwrap();
            let kp: Vec<i32> = ms.iter().map(|&m| m - d).collect();
            let kp = PositionIds::upload(&ctx, &kp, &[n]).unwrap();
            let op = Rope::new(10000.0, layout);
            op.run(&ctx, &qt, Positions::Ids(&qp)).unwrap();
            op.run(&ctx, &kt, Positions::Ids(&kp)).unwrap();
            let (qr, kr) = (ctx.read_f32(&qt).unwrap(), ctx.read_f32(&kt).unwrap());
            let dots: Vec<f64> = (0..n)
                .map(|t| {
                    (0..hd)
                        .map(|e| qr[t * hd + e] as f64 * kr[t * hd + e] as f64)
                        .sum()
                })
                .collect();
            let scale: f64 = (q.iter().map(|v| (v * v) as f64).sum::<f64>()
                * k.iter().map(|v| (v * v) as f64).sum::<f64>())
            .sqrt();
            for t in 1..n {
                assert!(
                    (dots[t] - dots[0]).abs() < 1e-5 * scale,
                    "{layout:?} distance {d}: dot at m={} is {} but at m={} is {}",
                    ms[t],
                    dots[t],
                    ms[0],
                    dots[0]
                );
            }
        }
    }
}

/// The half and interleaved layouts are the same rotation after the pair permutation
/// (x_int[2i] = x_half[i], x_int[2i + 1] = x_half[i + r/2]), including partial rotary.
#[test]
fn half_and_interleaved_agree_after_permutation() {
    let ctx = ctx();
    let mut rng = Rng::new(51);
    for dtype in DType::ALL {
        let (seq, heads, hd, rd) = (5, 2, 80, 32);
        let x = rng.vec(seq * heads * hd, 1.0);
        let perm = |i: usize| -> usize {
            // element of the interleaved head taken from element perm(i) of the half head
            if i >= rd {
                i
            } else if i.is_multiple_of(2) {
                i / 2
            } else {
                i / 2 + rd / 2
            }
        };
        let xi: Vec<f32> = (0..seq * heads)
            .flat_map(|h| (0..hd).map(move |i| (h, i)))
            .map(|(h, i)| x[h * hd + perm(i)])
            .collect();
        let th = ctx.upload_as(&x, &[seq, heads, hd], dtype).unwrap();
        let ti = ctx.upload_as(&xi, &[seq, heads, hd], dtype).unwrap();
        let pos: Vec<i32> = vec![0, 9, 65535, 1_000_000, (1 << 24) - 1];
        let pt = PositionIds::upload(&ctx, &pos, &[seq]).unwrap();
        let base = Rope::new(10000.0, Layout::Half).with_rotary_dim(rd);
        base.run(&ctx, &th, Positions::Ids(&pt)).unwrap();
        let mut interleaved = base.clone();
        interleaved.layout = Layout::Interleaved;
        interleaved.run(&ctx, &ti, Positions::Ids(&pt)).unwrap();
        let (yh, yi) = (ctx.read_f32(&th).unwrap(), ctx.read_f32(&ti).unwrap());
        let yh_perm: Vec<f64> = (0..seq * heads)
            .flat_map(|h| (0..hd).map(move |i| (h, i)))
            .map(|(h, i)| yh[h * hd + perm(i)] as f64)
            .collect();
        let c = compare(&yi, &yh_perm);
        assert!(c.passes(1e-13), "{dtype}: {c}");
    }
}

/// In place gives bit for bit what out of place gives, for every dtype and both positions forms.
#[test]
fn in_place_equals_out_of_place() {
    let ctx = ctx();
    let mut rng = Rng::new(61);
    for dtype in DType::ALL {
        for ids in [false, true] {
            let (b, seq, heads, hd) = (2, 4, 3, 96);
            let x = rng.vec(b * seq * heads * hd, 1.0);
            let xt = ctx.upload_as(&x, &[b, seq, heads, hd], dtype).unwrap();
            let src = ctx.upload_as(&x, &[b, seq, heads, hd], dtype).unwrap();
            let out = nan_output(&ctx, &[b, seq, heads, hd], dtype);
            let pos: Vec<i32> = (0..b * seq).map(|_| rng.below(1 << 24) as i32).collect();
            let pt = PositionIds::upload(&ctx, &pos, &[b, seq]).unwrap();
            let p = if ids {
                Positions::Ids(&pt)
            } else {
                Positions::Start(123_456)
            };
            let op = Rope::new(10000.0, Layout::Half).with_rotary_dim(64);
            op.run(&ctx, &xt, p).unwrap();
            op.run_to(&ctx, &src, &out, p).unwrap();
            let (a, o) = (ctx.read_f32(&xt).unwrap(), ctx.read_f32(&out).unwrap());
            assert!(
                a.iter().zip(&o).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{dtype} ids={ids}: in place and out of place differ"
            );
            // out == x (same view) is in place too.
            let again = ctx.upload_as(&x, &[b, seq, heads, hd], dtype).unwrap();
            op.run_to(&ctx, &again, &again, p).unwrap();
            assert_eq!(ctx.read_f32(&again).unwrap(), a);
        }
    }
}

/// x and out in one buffer, disjoint (the `X_IN_DST` variant), and Q/K in separate buffers
/// (two dispatches behind one call), recorded into one encoder.
#[test]
fn shared_buffers_and_one_encoder() {
    let ctx = ctx();
    let mut rng = Rng::new(71);
    let (seq, heads, hd) = (3, 2, 64);
    let n = seq * heads * hd;
    let data = rng.vec(2 * n, 1.0);
    let buf = ctx.upload(&data, &[2 * n]).unwrap();
    let x = Tensor::new(buf.buffer(), 0, &[seq, heads, hd], DType::F32);
    let out = Tensor::new(buf.buffer(), n, &[seq, heads, hd], DType::F32);
    let q = ctx.upload(&data[..n], &[seq, heads, hd]).unwrap();
    let k = ctx.upload(&data[n..], &[seq, heads, hd]).unwrap();
    let op = Rope::new(10000.0, Layout::Interleaved);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    op.encode_to(&ctx, &mut enc, &x, &out, Positions::Start(77))
        .unwrap();
    op.encode_qk(&ctx, &mut enc, &q, &k, Positions::Start(77))
        .unwrap();
    ctx.queue().submit([enc.finish()]);
    let (inv, _) = reference::frequencies(10000.0, hd, &Scaling::Default, 0);
    let pos: Vec<i64> = (77..77 + seq as i64).collect();
    let xr = rounded(&data[..n], DType::F32);
    let kr = rounded(&data[n..], DType::F32);
    let rotate = |x: &[f64]| {
        reference::rope(
            x,
            [1, seq, heads, hd],
            &pos,
            &inv,
            1.0,
            Layout::Interleaved,
            hd,
        )
    };
    let (want, want_k) = (rotate(&xr), rotate(&kr));
    assert_close(&ctx, &out, &want, 1e-10, "out in x's buffer");
    assert_close(&ctx, &q, &want, 1e-10, "q alone");
    assert_close(&ctx, &k, &want_k, 1e-10, "k alone");
    assert_eq!(ctx.read_f32(&x).unwrap(), data[..n].to_vec(), "x changed");
}

/// Negative and extreme positions (arbitrary i32 values are allowed): the fixed-point angle
/// handles the sign and i32::MIN.
#[test]
fn negative_and_extreme_positions() {
    let ctx = ctx();
    let mut rng = Rng::new(75);
    let pos: Vec<i32> = vec![-1, -5, -1_000_000, -(1 << 24) + 1, i32::MIN, i32::MAX, 3];
    let (seq, heads, hd) = (pos.len(), 2, 64);
    for layout in [Layout::Half, Layout::Interleaved] {
        let x = rng.vec(seq * heads * hd, 1.0);
        let xt = ctx.upload(&x, &[seq, heads, hd]).unwrap();
        let pt = PositionIds::upload(&ctx, &pos, &[seq]).unwrap();
        Rope::new(10000.0, layout)
            .run(&ctx, &xt, Positions::Ids(&pt))
            .unwrap();
        let (inv, _) = reference::frequencies(10000.0, hd, &Scaling::Default, 0);
        let p64: Vec<i64> = pos.iter().map(|&p| p as i64).collect();
        let want = reference::rope(
            &rounded(&x, DType::F32),
            [1, seq, heads, hd],
            &p64,
            &inv,
            1.0,
            layout,
            hd,
        );
        assert_close(
            &ctx,
            &xt,
            &want,
            1e-10,
            &format!("{layout:?} negative positions"),
        );
    }
    // A start offset below zero too.
    let x = rng.vec(4 * 64, 1.0);
    let xt = ctx.upload(&x, &[4, 1, 64]).unwrap();
    Rope::default()
        .run(&ctx, &xt, Positions::Start(-2))
        .unwrap();
    let (inv, _) = reference::frequencies(10000.0, 64, &Scaling::Default, 0);
    let want = reference::rope(
        &rounded(&x, DType::F32),
        [1, 4, 1, 64],
        &[-2, -1, 0, 1],
        &inv,
        1.0,
        Layout::Half,
        64,
    );
    assert_close(&ctx, &xt, &want, 1e-10, "start -2");
}

/// More tokens than one grid dimension of workgroups holds.
#[test]
fn many_tokens_use_the_2d_grid() {
    let ctx = ctx();
    let mut rng = Rng::new(81);
    // 4.3M invocations = 67,188 workgroups of 64, past the 65,535 of one grid dimension.
    let (seq, heads, hd) = (4_300_000, 1, 2);
    let x = rng.vec(seq * heads * hd, 1.0);
    let xt = ctx.upload(&x, &[seq, heads, hd]).unwrap();
    let op = Rope::new(10000.0, Layout::Half);
    op.run(&ctx, &xt, Positions::Start(16_000_000)).unwrap();
    let (inv, _) = reference::frequencies(10000.0, hd, &Scaling::Default, 0);
    let pos: Vec<i64> = (16_000_000..16_000_000 + seq as i64).collect();
    let want = reference::rope(
        &rounded(&x, DType::F32),
        [1, seq, heads, hd],
        &pos,
        &inv,
        1.0,
        Layout::Half,
        hd,
    );
    assert_close(&ctx, &xt, &want, 1e-10, "4.3M tokens");
}

/// Unit pairs (1, 0) come out as (cos, sin) * attention_factor: the per-element angle error of
/// each sin/cos method, at positions up to 2^31 - 1.
fn sincos_error(ctx: &Context, method: SinCos, positions: &[i32], theta: f64) -> (f64, f64) {
    let hd = 128;
    let seq = positions.len();
    let mut x = vec![0.0f32; seq * hd];
    for t in 0..seq {
        for i in 0..hd / 2 {
            x[t * hd + 2 * i] = 1.0;
        }
    }
    let xt = ctx.upload(&x, &[seq, 1, hd]).unwrap();
    let pt = PositionIds::upload(ctx, positions, &[seq]).unwrap();
    let op = with_sincos(Rope::new(theta, Layout::Interleaved), method);
    op.run(ctx, &xt, Positions::Ids(&pt)).unwrap();
    let got = ctx.read_f32(&xt).unwrap();
    let pos: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
    let (inv, _) = reference::frequencies(theta, hd, &Scaling::Default, 0);
    let want = reference::rope(
        &rounded(&x, DType::F32),
        [1, seq, 1, hd],
        &pos,
        &inv,
        1.0,
        Layout::Interleaved,
        hd,
    );
    let c = compare(&got, &want);
    (c.max_abs, c.nmse)
}

/// The accuracy target: f32 output within NMSE 1e-10 of the exact f64 rotation at every position
/// up to 2^24 - 1 (and beyond), with theta from Llama 2, Llama 3 and Qwen. The built-in paths are
/// measured and printed; the naive f32 angle is shown to miss the target at 1M.
#[test]
fn accuracy_at_large_positions() {
    let ctx = ctx();
    let mut rng = Rng::new(91);
    let bands: [(&str, i32, i32); 6] = [
        ("0..4096", 0, 4096),
        ("~65536", 60_000, 70_000),
        ("~1M", 990_000, 1_010_000),
        ("~2^24", (1 << 24) - 20_000, (1 << 24) - 1),
        ("~2^28", (1 << 28) - 20_000, (1 << 28) - 1),
        ("~2^31", i32::MAX - 20_000, i32::MAX),
    ];
    for theta in [10000.0, 500000.0, 1_000_000.0] {
        for (name, lo, hi) in bands {
            let mut pos: Vec<i32> = (0..64)
                .map(|_| lo + rng.below((hi - lo) as usize + 1) as i32)
                .collect();
            pos[0] = hi;
            let (exact_abs, exact) = sincos_error(&ctx, SinCos::Exact, &pos, theta);
            let (red_abs, red) = sincos_error(&ctx, SinCos::BuiltinReduced, &pos, theta);
            let (naive_abs, naive) = sincos_error(&ctx, SinCos::NaiveF32, &pos, theta);
            eprintln!(
                "theta {theta:>9} positions {name:>8}: exact nmse {exact:.2e} (max abs {exact_abs:.1e}) | \
                 builtin reduced {red:.2e} ({red_abs:.1e}) | naive f32 {naive:.2e} ({naive_abs:.1e})"
            );
            assert!(exact <= 1e-10, "theta {theta} {name}: exact nmse {exact:e}");
            assert!(
                exact_abs < 1e-6,
                "theta {theta} {name}: exact max abs {exact_abs:e}"
            );
            if lo >= 990_000 {
                assert!(
                    naive > 1e-10,
                    "the naive f32 angle should miss the target at {name}: {naive:e}"
                );
            }
        }
    }
    // Random data at 2^24 - 1 in every dtype-free sense: plain f32 heads, full pipeline.
    let c = Case {
        dtype: DType::F32,
        layout: Layout::Half,
        head_dim: 128,
        rotary_dim: 128,
        theta: 500000.0,
        scaling: Scaling::Default,
        max_pos: (1 << 24) - 1,
        view: ViewKind::Plain,
    };
    run_case(&c, 92);
}

#[test]
fn every_validation_rule_has_an_error() {
    let ctx = ctx();
    let f32v = |shape: &[usize]| filled(&ctx, shape, 1.0);
    let expect_err = |r: Result<(), Error>, kind: fn(&Error) -> bool, needle: &str| {
        expect_err(r, "rope", kind, needle)
    };
    let x = f32v(&[4, 2, 128]);
    let s0 = Positions::Start(0);
    let def = Rope::default();
    let with = |s: Scaling| Rope::default().with_scaling(s);

    // rotary_dim
    expect_err(
        def.clone().with_rotary_dim(33).run(&ctx, &x, s0),
        is_param,
        "rotary_dim 33 must be even, > 0 and <= head_dim 128",
    );
    expect_err(
        def.clone().with_rotary_dim(130).run(&ctx, &x, s0),
        is_param,
        "rotary_dim 130 must be even, > 0 and <= head_dim 128",
    );
    expect_err(
        def.clone().with_rotary_dim(0).run(&ctx, &x, s0),
        is_param,
        "rotary_dim 0",
    );
    let h = ctx
        .upload_as(&[0.0; 2 * 12], &[2, 1, 12], DType::F16)
        .unwrap();
    expect_err(
        def.clone().with_rotary_dim(6).run(&ctx, &h, s0),
        is_param,
        "rotary_dim 6 with f16 storage and the half layout must be a multiple of 4",
    );
    // With rotary_dim left at its default (the whole head), the messages name head_dim, the
    // argument the user passed (issue 24), not a rotary_dim they never set.
    expect_err(
        def.run(&ctx, &f32v(&[4, 2, 33]), s0),
        is_param,
        "head_dim 33 must be even and > 0 (RoPE rotates pairs; rotary_dim is not set",
    );
    let h6 = ctx
        .upload_as(&[0.0; 2 * 6], &[2, 1, 6], DType::F16)
        .unwrap();
    expect_err(
        def.run(&ctx, &h6, s0),
        is_param,
        "head_dim (rotary_dim not set) 6 with f16 storage and the half layout must be a multiple of 4",
    );
    // theta and scaling parameters
    for theta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        expect_err(
            Rope::new(theta, Layout::Half).run(&ctx, &x, s0),
            is_param,
            "theta must be finite and > 0",
        );
    }
    for f in [0.0, -2.0, f64::NAN] {
        expect_err(
            with(Scaling::Linear { factor: f }).run(&ctx, &x, s0),
            is_param,
            "factor must be finite and > 0",
        );
        expect_err(
            with(Scaling::yarn(f, 4096.0)).run(&ctx, &x, s0),
            is_param,
            "factor must be finite and > 0",
        );
        expect_err(
            with(Scaling::Dynamic {
                factor: f,
                original_max_position_embeddings: 4096.0,
            })
            .run(&ctx, &x, s0),
            is_param,
            "factor must be finite and > 0",
        );
    }
    let llama3 = |lo: f64, hi: f64, orig: f64| Scaling::Llama3 {
        factor: 8.0,
        low_freq_factor: lo,
        high_freq_factor: hi,
        original_max_position_embeddings: orig,
    };
    // An empty smoothing band (low_freq_factor >= high_freq_factor) is HF's step table, but a
    // wavelength exactly on its edge is 0/0 in HF's formula: refused, not NaN. inv_freq[0] = 1
    // has wavelength 2pi, so an original length of 2pi puts it there.
    expect_err(
        with(llama3(1.0, 1.0, std::f64::consts::TAU)).run(&ctx, &x, s0),
        is_param,
        "with llama3 scaling and rotary_dim 128 gives inv_freq[0] = NaN",
    );
    expect_err(
        with(llama3(1.0, 4.0, 0.0)).run(&ctx, &x, s0),
        is_param,
        "original_max_position_embeddings must be finite and > 0, got 0",
    );
    expect_err(
        with(llama3(0.0, 4.0, 8192.0)).run(&ctx, &x, s0),
        is_param,
        "low_freq_factor must be finite and > 0",
    );
    let mut yarn = Scaling::yarn(4.0, 32768.0);
    if let Scaling::Yarn { beta_fast, .. } = &mut yarn {
        *beta_fast = -1.0;
    }
    expect_err(
        with(yarn).run(&ctx, &x, s0),
        is_param,
        "beta_fast must be finite and > 0",
    );
    let mut yarn = Scaling::yarn(4.0, 32768.0);
    if let Scaling::Yarn {
        attention_factor, ..
    } = &mut yarn
    {
        *attention_factor = Some(f64::NAN);
    }
    expect_err(
        with(yarn).run(&ctx, &x, s0),
        is_param,
        "attention_factor must be finite and > 0",
    );
    expect_err(
        Rope::new(1.0, Layout::Half)
            .with_scaling(Scaling::yarn(4.0, 32768.0))
            .run(&ctx, &x, s0),
        is_param,
        "yarn needs theta != 1",
    );
    let lr = |short: usize, long: usize, bad: f64| Scaling::LongRope {
        short_factor: vec![1.0; short],
        long_factor: (0..long).map(|i| if i == 3 { bad } else { 1.0 }).collect(),
        factor: 32.0,
        original_max_position_embeddings: 4096.0,
        attention_factor: None,
    };
    expect_err(
        with(lr(63, 64, 1.0)).run(&ctx, &x, s0),
        is_param,
        "longrope short_factor has 63 entries but rotary_dim 128 needs 64",
    );
    expect_err(
        with(lr(64, 64, 0.0)).run(&ctx, &x, s0),
        is_param,
        "longrope long_factor entries must be finite and > 0, got 0",
    );
    expect_err(
        with(Scaling::InvFreq {
            inv_freq: vec![1.0; 10],
            attention_factor: 1.0,
        })
        .run(&ctx, &x, s0),
        is_param,
        "inv_freq table has 10 entries but rotary_dim 128 needs 64",
    );
    let mut table = vec![1.0; 64];
    table[5] = f64::INFINITY;
    expect_err(
        with(Scaling::InvFreq {
            inv_freq: table,
            attention_factor: 1.0,
        })
        .run(&ctx, &x, s0),
        is_param,
        "inv_freq entries must be finite, got inf",
    );
    expect_err(
        with(Scaling::Dynamic {
            factor: 2.0,
            original_max_position_embeddings: 4096.0,
        })
        .with_rotary_dim(2)
        .run(&ctx, &x, s0),
        is_param,
        "dynamic NTK needs rotary_dim > 2",
    );
    // positions
    let p5 = PositionIds::upload(&ctx, &[0, 1, 2, 3, 4], &[5]).unwrap();
    expect_err(
        def.run(&ctx, &x, Positions::Ids(&p5)),
        is_shape,
        "positions has shape [5] but x has batch 1 and seq 4: it must be [4] or [1, 4]",
    );
    let xb = f32v(&[2, 4, 2, 128]);
    let p24 = PositionIds::upload(&ctx, &[0; 8], &[4, 2]).unwrap();
    expect_err(
        def.run(&ctx, &xb, Positions::Ids(&p24)),
        is_shape,
        "positions has shape [4, 2] but x has batch 2 and seq 4",
    );
    let past = PositionIds::new(p5.buffer(), 2, &[4]);
    expect_err(
        def.run(&ctx, &x, Positions::Ids(&past)),
        is_bounds,
        "positions view (offset 2, shape [4], strides [1]) ends at byte 24 but its buffer has 20 bytes",
    );
    let p4 = PositionIds::upload(&ctx, &[0, 1, 2, 3], &[4]).unwrap();
    expect_err(
        with(Scaling::Dynamic {
            factor: 2.0,
            original_max_position_embeddings: 4096.0,
        })
        .run(&ctx, &x, Positions::Ids(&p4)),
        is_param,
        "dynamic scaling with a positions buffer needs seq_len",
    );
    expect_err(
        def.run(&ctx, &x, Positions::Start(i32::MAX - 2)),
        is_param,
        "passes the i32 position range",
    );
    let xin = PositionIds::new(x.buffer(), 0, &[4]);
    expect_err(
        def.run(&ctx, &x, Positions::Ids(&xin)),
        is_alias,
        "positions share a buffer with a rotated view",
    );
    // views
    expect_err(
        def.run(&ctx, &f32v(&[4, 128]), s0),
        is_shape,
        "x must be [seq, heads, head_dim] or [batch, seq, heads, head_dim], got 2 dims",
    );
    let outside = Tensor::new(x.buffer(), 10, &[4, 2, 128], DType::F32);
    expect_err(
        def.run(&ctx, &outside, s0),
        is_bounds,
        "x view (offset 10, shape [4, 2, 128], strides [256, 128, 1], f32) ends at byte 4136 but its buffer has 4096 bytes",
    );
    let self_overlap = Tensor::with_strides(x.buffer(), 0, &[4, 2, 128], &[128, 64, 1], DType::F32);
    expect_err(
        def.run(&ctx, &self_overlap, s0),
        is_bounds,
        "reaches some elements twice",
    );
    let hodd = ctx.upload_as(&[0.0; 24], &[2, 1, 12], DType::BF16).unwrap();
    let hodd = Tensor::new(hodd.buffer(), 1, &[1, 1, 12], DType::BF16);
    expect_err(
        def.run(&ctx, &hodd, s0),
        is_bounds,
        "must start at an even element",
    );
    // out-of-place
    expect_err(
        def.run_to(&ctx, &x, &f32v(&[4, 2, 64]), s0),
        is_shape,
        "out has shape [4, 2, 64] but x has [4, 2, 128]",
    );
    let xh = ctx
        .upload_as(&[0.0; 1024], &[4, 2, 128], DType::F16)
        .unwrap();
    expect_err(
        def.run_to(&ctx, &x, &xh, s0),
        is_dtype,
        "out is f16 but must be f32",
    );
    let shifted = Tensor::new(x.buffer(), 2, &[3, 2, 128], DType::F32);
    let x3 = Tensor::new(x.buffer(), 0, &[3, 2, 128], DType::F32);
    expect_err(
        def.run_to(&ctx, &x3, &shifted, s0),
        is_alias,
        "out overlaps x",
    );
    // q and k
    let qkv = f32v(&[4 * (4 + 2 * 2) * 64]);
    let (q, k, _) = qkv_views(qkv.buffer(), 0, 4, 4, 2, 64, DType::F32);
    let q2 = Tensor::with_strides(qkv.buffer(), 0, &[4, 6, 64], &[512, 64, 1], DType::F32);
    expect_err(
        def.run_qk(&ctx, &q2, &k, s0),
        is_alias,
        "q (offset 0, strides [512, 64, 1]) and k (offset 256, strides [512, 64, 1]) overlap",
    );
    let k3 = Tensor::with_strides(qkv.buffer(), 256, &[3, 2, 64], &[512, 64, 1], DType::F32);
    expect_err(
        def.run_qk(&ctx, &q, &k3, s0),
        is_shape,
        "k has shape [3, 2, 64] but q has [4, 4, 64]",
    );
    let kh = ctx.upload_as(&[0.0; 512], &[4, 2, 64], DType::F16).unwrap();
    expect_err(
        def.run_qk(&ctx, &q, &kh, s0),
        is_dtype,
        "k is f16 but q is f32",
    );
}

/// The `rope_vec4` switch: each alignment rule at its threshold -1 / = / +1 step (rotary_dim around
/// 2 x lanes, the view offset around lanes, the head stride around a multiple of lanes), each
/// checked against the reference on the path the dispatcher reports.
#[test]
fn vec4_path_switches_at_each_alignment_rule() {
    let ctx = ctx();
    let mut rng = Rng::new(77);
    for dtype in DType::ALL {
        let lanes = 16 / dtype.size();
        for layout in [Layout::Half, Layout::Interleaved] {
            // (rotary_dim, head_dim, head stride, offset, vec4 expected)
            let mut cases = Vec::new();
            for rd in [2 * lanes - 2, 2 * lanes, 2 * lanes + 2] {
                // A half-layout f16/bf16 rotary_dim must be a multiple of 4.
                if dtype.is_half() && layout == Layout::Half && rd % 4 != 0 {
                    continue;
                }
                cases.push((rd, 4 * lanes, 4 * lanes, 0, rd % (2 * lanes) == 0));
            }
            // Half-precision views start at even elements, so their step is 2.
            let step = if dtype.is_half() { 2 } else { 1 };
            for off in [lanes - step, lanes, lanes + step] {
                cases.push((2 * lanes, 4 * lanes, 4 * lanes, off, off % lanes == 0));
            }
            for hs in [4 * lanes - 2, 4 * lanes, 4 * lanes + 2] {
                cases.push((2 * lanes, 4 * lanes - 2, hs, 0, hs % lanes == 0));
            }
            for (rd, hd, hs, off, want_vec4) in cases {
                let (seq, heads) = (3, 5);
                let what = format!("{dtype} {layout:?} rd {rd} hd {hd} hstride {hs} offset {off}");
                let n = off + seq * heads * hs;
                let data = rng.vec(n, 1.0);
                let buf = ctx.upload_as(&data, &[n], dtype).unwrap();
                let x = Tensor::with_strides(
                    buf.buffer(),
                    off,
                    &[seq, heads, hd],
                    &[heads * hs, hs, 1],
                    dtype,
                );
                let op = Rope::new(10000.0, layout).with_rotary_dim(rd);
                let pos = Positions::Start(1000);
                let v = op.variant(&ctx, &x, None, None, pos).unwrap();
                assert_eq!(v.vec4, want_vec4, "{what}: path");
                op.run(&ctx, &x, pos).unwrap();
                let xr = rounded(&data, dtype);
                let xs: Vec<f64> = (0..seq * heads)
                    .flat_map(|t| xr[off + t * hs..off + t * hs + hd].to_vec())
                    .collect();
                let positions: Vec<i64> = (1000..1000 + seq as i64).collect();
                let (inv, attn) = reference::frequencies(10000.0, rd, &Scaling::Default, 0);
                let want =
                    reference::rope(&xs, [1, seq, heads, hd], &positions, &inv, attn, layout, rd);
                assert_close(&ctx, &x, &want, tolerance(dtype), &what);
                // The gaps between heads are untouched.
                let all = ctx.read_f32(&buf).unwrap();
                for t in 0..seq * heads {
                    for i in off + t * hs + hd..off + (t + 1) * hs {
                        assert_eq!(all[i] as f64, xr[i], "{what}: gap element {i}");
                    }
                }
            }
        }
    }
}

/// The vec4 path's branch-free f16 and bf16 conversions: every finite f16 value (and every
/// normal bf16 value) at position 0, where the rotation is `x * attention_factor`, must come back
/// as exactly the round-to-nearest-even of the f32 product (±0 compared equal), including
/// results that overflow to inf and f16 subnormals.
#[test]
fn vec4_half_conversions_are_exact() {
    let ctx = ctx();
    for dtype in [DType::F16, DType::BF16] {
        let f16_ok = |b: u16| (b >> 10) & 0x1f != 0x1f;
        let bf16_ok = |b: u16| {
            let e = (b >> 7) & 0xff;
            e != 0xff && (e != 0 || b & 0x7fff == 0)
        };
        let mut bits: Vec<u16> = (0..=u16::MAX)
            .filter(|&b| {
                if dtype == DType::F16 {
                    f16_ok(b)
                } else {
                    bf16_ok(b)
                }
            })
            .collect();
        while !bits.len().is_multiple_of(16) {
            bits.push(0);
        }
        let to_f32 = |b: u16| {
            if dtype == DType::F16 {
                half::f16::from_bits(b).to_f32()
            } else {
                half::bf16::from_bits(b).to_f32()
            }
        };
        let round = |v: f32| {
            if dtype == DType::F16 {
                half::f16::from_f32(v).to_f32()
            } else {
                half::bf16::from_f32(v).to_f32()
            }
        };
        let x: Vec<f32> = bits.iter().map(|&b| to_f32(b)).collect();
        for (layout, factor) in [
            (Layout::Half, 1.0),
            (Layout::Interleaved, 1.3),
            (Layout::Half, 0.7),
        ] {
            let what = format!("{dtype} {layout:?} factor {factor}");
            let t = ctx.upload_as(&x, &[1, x.len() / 16, 16], dtype).unwrap();
            let op = Rope::new(10000.0, layout).with_scaling(Scaling::InvFreq {
                inv_freq: vec![0.5; 8],
                attention_factor: factor,
            });
            let pos = Positions::Start(0);
            assert!(
                op.variant(&ctx, &t, None, None, pos).unwrap().vec4,
                "{what}: path"
            );
            op.run(&ctx, &t, pos).unwrap();
            let got = ctx.read_f32(&t).unwrap();
            let f = factor as f32;
            for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
                let want = round(v * f);
                assert!(
                    g == want,
                    "{what}: element {i} ({v:e}) gave {g:e}, want {want:e}"
                );
            }
        }
    }
}

/// theta and scalings whose frequencies are not finite or not representable are refused with
/// the op, theta and the offending value; the largest accepted frequency still runs.
#[test]
fn unrepresentable_frequencies_are_refused() {
    let ctx = ctx();
    let x = filled(&ctx, &[2, 1, 128], 1.0);
    let s0 = Positions::Start(3);
    let err = |r: Result<(), Error>, needle: &str| expect_err(r, "rope", is_param, needle);
    // Subnormal theta: finite and > 0, but not the number a config means.
    for theta in [1e-320, f64::MIN_POSITIVE / 2.0] {
        err(
            Rope::new(theta, Layout::Half).run(&ctx, &x, s0),
            "theta must be a normal f64 (>= 2.2250738585072014e-308)",
        );
    }
    // A tiny but normal theta: theta^(-2i/128) passes 2^22 from i = 36 on.
    err(
        Rope::new(1e-12, Layout::Half).run(&ctx, &x, s0),
        "theta 1e-12 with default scaling and rotary_dim 128 gives inv_freq[36] = 5.623413251903491e6",
    );
    err(
        Rope::new(1e-300, Layout::Half).with_rotary_dim(4).run(&ctx, &x, s0),
        "gives inv_freq[1] = 1e150 rad per position; frequencies must be finite and at most 2^22 = 4194304",
    );
    // Through a scaling: linear factor 1e-10 divides inv_freq[0] = 1 into 1e10.
    err(
        Rope::default()
            .with_scaling(Scaling::Linear { factor: 1e-10 })
            .run(&ctx, &x, s0),
        "with linear scaling and rotary_dim 128 gives inv_freq[0] = 1e10",
    );
    let mut table = vec![1.0; 64];
    table[9] = -1e7;
    err(
        Rope::default()
            .with_scaling(Scaling::InvFreq {
                inv_freq: table.clone(),
                attention_factor: 1.0,
            })
            .run(&ctx, &x, s0),
        "inv_freq[9] = -1e7",
    );
    // The bound itself is accepted and rotates exactly like the reference.
    table[9] = llama_kernels::ops::rope::MAX_INV_FREQ;
    let op = Rope::default().with_scaling(Scaling::InvFreq {
        inv_freq: table.clone(),
        attention_factor: 1.0,
    });
    let data: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
    let xt = ctx.upload(&data, &[2, 1, 128]).unwrap();
    op.run(&ctx, &xt, s0).unwrap();
    let want = reference::rope(
        &rounded(&data, DType::F32),
        [1, 2, 1, 128],
        &[3, 4],
        &table,
        1.0,
        Layout::Half,
        128,
    );
    assert_close(&ctx, &xt, &want, 1e-10, "inv_freq at the bound");
}

/// Multimodal RoPE (Qwen2-VL `mrope_section`) against the f64 reference: every dtype and layout,
/// on the vec4 path (aligned) and the general one (unaligned), `[3, seq]` and `[3, batch, seq]`
/// positions whose rows differ, sections whose borders fall inside one invocation's pairs
/// ([5, 6, 5]), Q+K in a fused QKV buffer, out of place, and after a QK-norm.
#[test]
fn multimodal_rope_against_reference() {
    use llama_kernels::ops::rope::HeadNorm;
    let ctx = ctx();
    let mut rng = Rng::new(501);
    // Three position rows (time, height, width) that differ from each other.
    let rows3 = |rng: &mut Rng, n: usize| -> Vec<i32> {
        (0..3 * n)
            .map(|i| rng.below(1 << 20) as i32 + i as i32 % 3)
            .collect()
    };
    for dtype in DType::ALL {
        for layout in [Layout::Half, Layout::Interleaved] {
            // Qwen2-VL: head_dim 128, [16, 24, 24]; and a small head with odd section borders.
            // Interleaved: Qwen3-VL's [24, 20, 20]; and [5, 6, 5] on 16 pairs, where the
            // height pairs (3h = 18) run past the last pair and the width pairs (3w = 15) stop
            // one short.
            for (hd, section, interleaved) in [
                (128, [16, 24, 24], false),
                (32, [5, 6, 5], false),
                (128, [24, 20, 20], true),
                (32, [5, 6, 5], true),
            ] {
                let op = Rope::new(1_000_000.0, layout);
                let op = if interleaved {
                    op.with_mrope_interleaved(section)
                } else {
                    op.with_mrope_section(section)
                };
                let (inv, attn) = op.inv_freq(hd, 0).unwrap();
                let mrope = reference::Mrope {
                    section,
                    interleaved,
                };
                for guard in [GUARD_BEFORE, ALIGNED_GUARD] {
                    let what = format!(
                        "{dtype} {layout:?} hd {hd} {section:?} interleaved {interleaved} guard {guard}"
                    );
                    let (seq, heads) = (5, 3);
                    let x = rng.vec(seq * heads * hd, 1.0);
                    let xt = upload_at(&ctx, &x, &[seq, heads, hd], dtype, guard);
                    let pos = rows3(&mut rng, seq);
                    let pt = PositionIds::upload(&ctx, &pos, &[3, seq]).unwrap();
                    let v = op.variant(&ctx, &xt, None, None, Positions::Ids(&pt));
                    assert_eq!(v.unwrap().vec4, guard == ALIGNED_GUARD, "{what}: path");
                    op.run(&ctx, &xt, Positions::Ids(&pt))
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let p64: Vec<i64> = pos.iter().map(|&p| p as i64).collect();
                    let want = reference::rope_mrope(
                        &rounded(&x, dtype),
                        [1, seq, heads, hd],
                        &p64,
                        mrope,
                        &inv,
                        attn,
                        layout,
                        hd,
                    );
                    assert_close(&ctx, &xt, &want, tolerance(dtype), &what);
                    assert_guards_at(&ctx, &xt, guard, &what);
                }
            }
        }
        // [3, batch, seq] positions on a batched view; out of place; fused Q+K; with a norm.
        let (b, seq, heads, hd, section) = (2, 3, 2, 64, [8, 12, 12]);
        let op = Rope::new(10000.0, Layout::Half).with_mrope_section(section);
        let (inv, attn) = op.inv_freq(hd, 0).unwrap();
        let x = rng.vec(b * seq * heads * hd, 1.0);
        let xr = rounded(&x, dtype);
        let pos = rows3(&mut rng, b * seq);
        let p64: Vec<i64> = pos.iter().map(|&p| p as i64).collect();
        let want = |x: &[f64], shape: [usize; 4], p: &[i64]| {
            reference::rope_multimodal(x, shape, p, section, &inv, attn, Layout::Half, hd)
        };
        let pb = PositionIds::upload(&ctx, &pos, &[3, b, seq]).unwrap();
        let xt = upload_guarded(&ctx, &x, &[b, seq, heads, hd], dtype);
        op.run(&ctx, &xt, Positions::Ids(&pb)).unwrap();
        let expect = want(&xr, [b, seq, heads, hd], &p64);
        assert_close(
            &ctx,
            &xt,
            &expect,
            tolerance(dtype),
            &format!("{dtype} batched"),
        );
        // Out of place, batch row 0 only ([3, seq] positions: rows 0..seq of each position row).
        let p0: Vec<i32> = (0..3)
            .flat_map(|r| pos[r * b * seq..][..seq].to_vec())
            .collect();
        let p0_64: Vec<i64> = p0.iter().map(|&p| p as i64).collect();
        let pt0 = PositionIds::upload(&ctx, &p0, &[3, seq]).unwrap();
        let x0 = upload_guarded(&ctx, &x[..seq * heads * hd], &[seq, heads, hd], dtype);
        let out = nan_output(&ctx, &[seq, heads, hd], dtype);
        op.run_to(&ctx, &x0, &out, Positions::Ids(&pt0)).unwrap();
        let want0 = want(&xr[..seq * heads * hd], [1, seq, heads, hd], &p0_64);
        assert_close(
            &ctx,
            &out,
            &want0,
            tolerance(dtype),
            &format!("{dtype} out of place"),
        );
        assert_guards(&ctx, &out, &format!("{dtype} out of place"));
        // Q (2 heads) and K (1 head) in one fused buffer, one dispatch, Q normalised.
        let (nh, nkv) = (2, 1);
        let row = (nh + 2 * nkv) * hd;
        let data = rng.vec(seq * row, 1.0);
        let buf = upload_guarded(&ctx, &data, &[seq * row], dtype);
        let (q, k, _) = qkv_views(buf.buffer(), GUARD_BEFORE, seq, nh, nkv, hd, dtype);
        let w: Vec<f32> = (0..hd).map(|i| 1.0 + 0.01 * i as f32).collect();
        let wt = ctx.upload_as(&w, &[hd], dtype).unwrap();
        let norm = HeadNorm::new(&wt, 1e-6);
        op.run_qk_norm(&ctx, &q, &k, Some(&norm), None, Positions::Ids(&pt0))
            .unwrap();
        let dr = rounded(&data, dtype);
        let part = |off: usize, h: usize| -> Vec<f64> {
            (0..seq)
                .flat_map(|s| dr[s * row + off..s * row + off + h * hd].to_vec())
                .collect()
        };
        let qn = reference::head_norm(&part(0, nh), &rounded(&w, dtype), 1e-6, 0.0);
        let want_q = want(&qn, [1, seq, nh, hd], &p0_64);
        let want_k = want(&part(nh * hd, nkv), [1, seq, nkv, hd], &p0_64);
        assert_close(
            &ctx,
            &q,
            &want_q,
            tolerance(dtype),
            &format!("{dtype} fused q"),
        );
        assert_close(
            &ctx,
            &k,
            &want_k,
            tolerance(dtype),
            &format!("{dtype} fused k"),
        );
        assert_guards(&ctx, &buf, &format!("{dtype} fused"));
    }
}

/// With equal position rows (text tokens) multimodal RoPE is 1-D RoPE, bit for bit, and a start
/// offset gives every row the same positions; every multimodal validation rule.
#[test]
fn multimodal_rope_reduces_to_1d_and_validates() {
    let ctx = ctx();
    let mut rng = Rng::new(502);
    let (seq, heads, hd) = (4, 2, 128);
    let x = rng.vec(seq * heads * hd, 1.0);
    let plain = Rope::new(1_000_000.0, Layout::Half);
    let mm = plain.clone().with_mrope_section([16, 24, 24]);
    let pos: Vec<i32> = vec![9, 4096, 77, 1 << 22];
    let p1 = PositionIds::upload(&ctx, &pos, &[seq]).unwrap();
    let same: Vec<i32> = (0..3).flat_map(|_| pos.clone()).collect();
    let p3 = PositionIds::upload(&ctx, &same, &[3, seq]).unwrap();
    let a = ctx.upload(&x, &[seq, heads, hd]).unwrap();
    let b = ctx.upload(&x, &[seq, heads, hd]).unwrap();
    let c = ctx.upload(&x, &[seq, heads, hd]).unwrap();
    let d = ctx.upload(&x, &[seq, heads, hd]).unwrap();
    plain.run(&ctx, &a, Positions::Ids(&p1)).unwrap();
    mm.run(&ctx, &b, Positions::Ids(&p3)).unwrap();
    plain.run(&ctx, &c, Positions::Start(70)).unwrap();
    mm.run(&ctx, &d, Positions::Start(70)).unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        ctx.read_f32(t)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits(&a), bits(&b), "equal rows must equal 1-D RoPE");
    assert_eq!(bits(&c), bits(&d), "a start offset must equal 1-D RoPE");
    assert_ne!(bits(&a), bits(&c));

    let err = |r: Result<(), Error>, kind: fn(&Error) -> bool, needle: &str| {
        expect_err(r, "rope", kind, needle)
    };
    err(
        plain
            .clone()
            .with_mrope_section([16, 24, 23])
            .run(&ctx, &a, Positions::Ids(&p3)),
        is_param,
        "mrope_section [16, 24, 23] must sum to rotary_dim / 2 = 64 pairs (rotary_dim 128)",
    );
    err(
        plain
            .clone()
            .with_mrope_section([usize::MAX, 2, 0])
            .run(&ctx, &a, Positions::Start(0)),
        is_param,
        "must sum to rotary_dim / 2 = 64",
    );
    err(
        mm.run(&ctx, &a, Positions::Ids(&p1)),
        is_shape,
        "multimodal positions have shape [4] but x has batch 1 and seq 4: they must be [3, 4] or [3, 1, 4] (time, height, width)",
    );
    err(
        plain.run(&ctx, &a, Positions::Ids(&p3)),
        is_shape,
        "positions has shape [3, 4] but x has batch 1 and seq 4",
    );
}

/// The frequency table is reused between calls of one `Rope` (a decode loop), but never when
/// anything it depends on changed: a public field edited between calls (theta, scaling,
/// rotary_dim), another head size, another sequence length for dynamic scaling, or a clone edited
/// afterwards. Each call is checked against the reference built from the state at that call.
#[test]
fn the_cached_frequency_table_follows_every_change() {
    let ctx = ctx();
    let check = |rope: &Rope, head_dim: usize, start: i32, what: &str| {
        let (seq, heads) = (5, 3);
        let x = rng_vec(4243 + head_dim as u64, seq * heads * head_dim);
        let t = ctx.upload(&x, &[seq, heads, head_dim]).unwrap();
        rope.run(&ctx, &t, Positions::Start(start)).unwrap();
        let rd = rope.rotary_dim.unwrap_or(head_dim);
        let (inv, attn) = rope.inv_freq(head_dim, start as usize + seq).unwrap();
        let pos: Vec<i64> = (0..seq as i64).map(|s| start as i64 + s).collect();
        let want = reference::rope(
            &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            [1, seq, heads, head_dim],
            &pos,
            &inv,
            attn,
            rope.layout,
            rd,
        );
        let got = ctx.read_f32(&t).unwrap();
        let c = compare(&got, &want);
        assert!(c.passes(tolerance(DType::F32)), "{what}: {c}");
    };
    let mut rope = Rope::new(10000.0, Layout::Half);
    check(&rope, 64, 100, "first call");
    check(&rope, 64, 100, "the same call again (cached)");
    rope.theta = 500000.0;
    check(&rope, 64, 100, "theta edited");
    check(&rope, 128, 100, "another head_dim");
    rope.rotary_dim = Some(32);
    check(&rope, 64, 100, "rotary_dim edited");
    rope.rotary_dim = None;
    rope.scaling = Scaling::Dynamic {
        factor: 4.0,
        original_max_position_embeddings: 64.0,
    };
    check(&rope, 64, 100, "dynamic scaling");
    check(&rope, 64, 300, "dynamic scaling, longer sequence");
    let mut other = rope.clone();
    other.theta = 10000.0;
    check(&other, 64, 300, "an edited clone");
    check(&rope, 64, 300, "the original after its clone ran");
}

fn rng_vec(seed: u64, n: usize) -> Vec<f32> {
    Rng::new(seed).vec(n, 1.0)
}

/// Whether `ctx` is Mesa's lavapipe (llvmpipe), where `pack2x16float` was found to round to
/// nearest even and overflow to inf, as the integer encoder does.
fn is_lavapipe(ctx: &Context) -> bool {
    ctx.adapter_info().name.contains("llvmpipe")
}

/// f16 results of `f(op)` with `pack2x16float` stores (`Rope::native_f16_store` forced on) and
/// with the integer encoder (forced off), for the same input: each against `want` with the f16
/// tolerance; bit for bit equal to each other on lavapipe only. WGSL leaves `pack2x16float`'s
/// rounding (either neighbour) and out-of-range results open, so another device may differ from
/// the exact integer encoder in the last bit of some values, and only the tolerance holds
/// there; the repo's rule keeps bit equality to runs of one module.
fn native_store_pair(
    ctx: &Context,
    what: &str,
    op: &Rope,
    want: &[f64],
    run: impl Fn(&Rope) -> (llama_kernels::ops::rope::Variant, Tensor),
) {
    let mut outs = Vec::new();
    for native in [true, false] {
        let op = op.clone().with_native_f16_store(native);
        let (v, out) = run(&op);
        assert_eq!(v.f16_store, native, "{what}: variant {v:?}");
        assert_close(
            ctx,
            &out,
            want,
            tolerance(DType::F16),
            &format!("{what} native {native}"),
        );
        outs.push(ctx.read_f32(&out).unwrap());
    }
    if is_lavapipe(ctx) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&outs[0]),
            bits(&outs[1]),
            "{what}: pack2x16float vs integer encoder"
        );
    }
}

/// f16 stores through `pack2x16float` (`Rope::native_f16_store`, the default on GPUs with the
/// f16-in-f32 capability, forced here) on each entry point, against the f64 reference and the
/// integer encoder (see `native_store_pair`): `rope_vec4` (half layout, in place, every finite
/// f16 value at position 0, so each output is one conversion of `x * 1.3`: round to nearest
/// even, subnormals and overflow to inf on lavapipe; elsewhere either f16 neighbour of a result
/// in range, as WGSL allows), `rope` (interleaved, 3 pairs of an 18-wide head, out of place
/// with the unrotated tail copied, positions buffer), and `rope_norm` (QK-norm of Q and K in a
/// fused QKV buffer). Three specialisations of `rope_f16_store.wgsl`. Forcing it for another
/// dtype is an error naming the op and the dtype (the missing capability:
/// `ops::rope::plan`'s unit tests, on described devices).
#[test]
fn native_f16_stores_agree_with_the_integer_encoder() {
    let ctx = ctx();
    let auto = Rope::new(10000.0, Layout::Half);
    // rope_vec4: every finite f16 value at position 0.
    let bits: Vec<u16> = (0..=u16::MAX)
        .filter(|b| (b >> 10) & 0x1f != 0x1f)
        .collect();
    let mut x: Vec<f32> = bits
        .iter()
        .map(|&b| half::f16::from_bits(b).to_f32())
        .collect();
    x.resize(x.len().next_multiple_of(16), 0.0);
    let factor = 1.3f32;
    let op = Rope::new(10000.0, Layout::Half).with_scaling(Scaling::InvFreq {
        inv_freq: vec![0.5; 8],
        attention_factor: factor as f64,
    });
    let mut outs = Vec::new();
    for native in [true, false] {
        let op = op.clone().with_native_f16_store(native);
        let t = ctx
            .upload_as(&x, &[1, x.len() / 16, 16], DType::F16)
            .unwrap();
        let v = op
            .variant(&ctx, &t, None, None, Positions::Start(0))
            .unwrap();
        assert!(v.vec4 && v.f16_store == native, "{v:?}");
        op.run(&ctx, &t, Positions::Start(0)).unwrap();
        outs.push(ctx.read_f32(&t).unwrap());
    }
    let f16 = |v: f32| half::f16::from_f32(v).to_f32();
    for (i, ((&g, &b), &v)) in outs[0].iter().zip(&outs[1]).zip(&x).enumerate() {
        let exact = v * factor;
        // The integer encoder: exactly round to nearest even, overflow to inf (the sign of a
        // zero result depends on the rotation's `- y * 0`, so ±0 compare equal).
        assert!(
            b == f16(exact),
            "integer encoder, element {i} ({v:e}) gave {b:e}"
        );
        if is_lavapipe(&ctx) {
            assert_eq!(
                g.to_bits(),
                b.to_bits(),
                "pack2x16float, element {i} ({v:e})"
            );
        } else if exact.abs() <= 65504.0 {
            // WGSL: one of the two f16 values around the exact result.
            let ulp = if exact.abs() < 2f32.powi(-14) {
                2f32.powi(-24)
            } else {
                2f32.powi(exact.abs().log2().floor() as i32 - 10)
            };
            assert!(
                (g - exact).abs() < ulp,
                "pack2x16float, element {i}: {v:e} x {factor} gave {g:e}"
            );
        }
    }
    // rope_vec4 at a large position, random data, against the reference.
    let mut rng = Rng::new(9500);
    let (seq, heads, hd) = (3, 4, 64);
    let xs = rng.vec(seq * heads * hd, 1.0);
    let pos: Vec<i64> = (0..seq as i64).map(|s| 1_000_000 + s).collect();
    let (inv, attn) = reference::frequencies(10000.0, hd, &Scaling::Default, 0);
    let shape = [1, seq, heads, hd];
    let want = reference::rope(
        &rounded(&xs, DType::F16),
        shape,
        &pos,
        &inv,
        attn,
        Layout::Half,
        hd,
    );
    native_store_pair(&ctx, "rope_vec4", &auto, &want, |op| {
        let t = upload_at(&ctx, &xs, &[seq, heads, hd], DType::F16, ALIGNED_GUARD);
        let start = Positions::Start(pos[0] as i32);
        let v = op.variant(&ctx, &t, None, None, start).unwrap();
        assert!(v.vec4, "{v:?}");
        op.run(&ctx, &t, start).unwrap();
        assert_guards_at(&ctx, &t, ALIGNED_GUARD, "rope_vec4");
        (v, t)
    });

    // rope: interleaved, rotary_dim 6 of head_dim 18, out of place, a positions buffer.
    let (seq, heads, hd, rd) = (5, 3, 18, 6);
    let xs = rng.vec(seq * heads * hd, 2.0);
    let p32: Vec<i32> = (0..seq).map(|_| rng.below(1 << 20) as i32).collect();
    let pos: Vec<i64> = p32.iter().map(|&p| p as i64).collect();
    let pt = PositionIds::upload(&ctx, &p32, &[seq]).unwrap();
    let op = Rope::new(500000.0, Layout::Interleaved)
        .with_rotary_dim(rd)
        .with_seq_len(1 << 20);
    let (inv, attn) = reference::frequencies(500000.0, rd, &Scaling::Default, 1 << 20);
    let shape = [1, seq, heads, hd];
    let xr = rounded(&xs, DType::F16);
    let want = reference::rope(&xr, shape, &pos, &inv, attn, Layout::Interleaved, rd);
    let xt = upload_guarded(&ctx, &xs, &[seq, heads, hd], DType::F16);
    native_store_pair(&ctx, "rope", &op, &want, |op| {
        let out = nan_output(&ctx, &[seq, heads, hd], DType::F16);
        let v = op
            .variant(&ctx, &xt, None, Some(&out), Positions::Ids(&pt))
            .unwrap();
        assert!(!v.vec4 && !v.norm && !v.in_place, "{v:?}");
        op.run_to(&ctx, &xt, &out, Positions::Ids(&pt)).unwrap();
        assert_guards(&ctx, &out, "rope");
        (v, out)
    });

    // rope_norm: Qwen3-style QK-norm of Q and K in a fused QKV buffer, in place.
    let (seq, nh, nkv, hd) = (3, 4, 2, 64);
    let row = (nh + 2 * nkv) * hd;
    let data = rng.vec(seq * row, 3.0);
    let w: Vec<f32> = (0..hd).map(|_| 1.0 + rng.normal(0.3)).collect();
    let wt = upload_guarded(&ctx, &w, &[hd], DType::F16);
    let p32: Vec<i32> = (0..seq).map(|_| rng.below(1 << 24) as i32).collect();
    let pos: Vec<i64> = p32.iter().map(|&p| p as i64).collect();
    let pt = PositionIds::upload(&ctx, &p32, &[seq]).unwrap();
    let norm = llama_kernels::ops::rope::HeadNorm::new(&wt, 1e-6);
    let dr = rounded(&data, DType::F16);
    let wr = rounded(&w, DType::F16);
    let (inv, attn) = reference::frequencies(10000.0, hd, &Scaling::Default, 0);
    let mut want = Vec::new();
    for s in 0..seq {
        let heads = reference::head_norm(&dr[s * row..s * row + (nh + nkv) * hd], &wr, 1e-6, 0.0);
        want.extend(reference::rope(
            &heads,
            [1, 1, nh + nkv, hd],
            &pos[s..s + 1],
            &inv,
            attn,
            Layout::Half,
            hd,
        ));
    }
    native_store_pair(&ctx, "rope_norm", &auto, &want, |op| {
        let buf = upload_at(&ctx, &data, &[seq * row], DType::F16, GUARD_BEFORE);
        let (q, k, _) = qkv_views(buf.buffer(), GUARD_BEFORE, seq, nh, nkv, hd, DType::F16);
        op.run_qk_norm(&ctx, &q, &k, Some(&norm), Some(&norm), Positions::Ids(&pt))
            .unwrap();
        assert_guards(&ctx, &buf, "rope_norm");
        // Q and K of each token are adjacent: read them as one [seq, nh + nkv, hd] view.
        let qk = Tensor::with_strides(
            buf.buffer(),
            GUARD_BEFORE,
            &[seq, nh + nkv, hd],
            &[row, hd, 1],
            DType::F16,
        );
        // `Rope::variant` reports the plain rotation's plan; the store is chosen the same way
        // with a norm.
        let v = op
            .variant(&ctx, &q, Some(&k), None, Positions::Ids(&pt))
            .unwrap();
        (v, qk)
    });

    // Misuse: forced for another dtype.
    let t = ctx.upload_as(&[1.0; 64], &[1, 1, 64], DType::BF16).unwrap();
    let e = auto
        .clone()
        .with_native_f16_store(true)
        .variant(&ctx, &t, None, None, Positions::Start(0))
        .unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("rope") && msg.contains("native_f16_store") && msg.contains("bf16"),
        "{msg}"
    );
}

//! Property tests: seeded random shapes, strides, offsets, dtypes and parameters within the
//! supported ranges, for every op and variant, against the f64 reference at the per-dtype NMSE
//! limit, with NaN-prefilled outputs and sentinel guards around (and between the rows of) every
//! view; and draws just outside the ranges, which must give `Err`, never a panic.
//!
//! The seed is fixed, so CI sees the same cases on every run; a failure shrinks to a small case,
//! which goes into the `pinned_*` tests at the end. Shapes are drawn freely, but sizes that
//! change the compiled code (RMSNorm's vector width and workgroup size, attention's head_dim)
//! stay on values the other test files already compile: lavapipe compiles each distinct
//! pipeline with LLVM, and that, not the cases, is what a cold CI run pays for.
//!
//! `LLAMA_KERNELS_PROPTEST_CASES` sets the cases per property (default 12) for a longer sweep;
//! `LLAMA_KERNELS_PROPTEST_SEED` changes the seed.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{
    assert_close, assert_guards, ctx, nan_output, rounded, softcap_tolerance, upload_guarded, Rng,
    GUARD_AFTER, GUARD_BEFORE, SENTINEL,
};
use llama_kernels::compare::tolerance;
use llama_kernels::ops::attention::Kind;
use llama_kernels::reference;
use llama_kernels::{
    Attention, Context, DType, KvCache, KvCacheConfig, Layout, PositionIds, Positions, Residual,
    RmsNorm, Rope, Scaling, Tensor,
};
use proptest::prelude::{any, prop, prop_oneof, proptest, BoxedStrategy, Just, Strategy};
use proptest::test_runner::{Config, RngSeed};

static CASES_RUN: AtomicUsize = AtomicUsize::new(0);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn config() -> Config {
    Config {
        cases: env_u64("LLAMA_KERNELS_PROPTEST_CASES", 12) as u32,
        rng_seed: RngSeed::Fixed(env_u64("LLAMA_KERNELS_PROPTEST_SEED", 10)),
        // Nothing is written next to the sources; failures are pinned by hand below.
        failure_persistence: None,
        // Each case is a GPU round trip: bound the shrinking.
        max_shrink_iters: 200,
        ..Config::default()
    }
}

/// Counts cases; `LLAMA_KERNELS_PROPTEST_VERBOSE=1` prints the running total (for the log of a
/// sweep).
fn counted() {
    let n = CASES_RUN.fetch_add(1, Ordering::Relaxed) + 1;
    if std::env::var_os("LLAMA_KERNELS_PROPTEST_VERBOSE").is_some() {
        eprintln!("proptest_ops: case {n}");
    }
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

/// `rows` rows of `n` values at row stride `stride`, starting `before` elements into a
/// sentinel-filled buffer with `GUARD_AFTER` sentinels after the last row.
struct Strided {
    t: Tensor,
    before: usize,
    stride: usize,
    total: usize,
}

fn strided(
    ctx: &Context,
    data: &[f32],
    lead: &[usize],
    n: usize,
    stride: usize,
    before: usize,
    dtype: DType,
) -> Strided {
    let rows: usize = lead.iter().product();
    let total = before + rows.saturating_sub(1) * stride + n + GUARD_AFTER;
    let mut all = vec![SENTINEL; total];
    for r in 0..rows {
        all[before + r * stride..before + r * stride + n]
            .copy_from_slice(&data[r * n..(r + 1) * n]);
    }
    let full = ctx.upload_as(&all, &[total], dtype).expect("upload");
    let mut shape = lead.to_vec();
    shape.push(n);
    let mut strides = vec![0; shape.len()];
    strides[shape.len() - 1] = 1;
    let mut s = stride;
    for d in (0..lead.len()).rev() {
        strides[d] = s;
        s *= lead[d];
    }
    Strided {
        t: Tensor::with_strides(full.buffer(), before, &shape, &strides, dtype),
        before,
        stride,
        total,
    }
}

impl Strided {
    /// Every element outside the view's rows (before, between and after them) is the sentinel.
    fn assert_untouched_outside(&self, ctx: &Context, what: &str) {
        let dtype = self.t.dtype();
        let full = Tensor::new(self.t.buffer(), 0, &[self.total], dtype);
        let all = ctx.read_f32(&full).expect("readback");
        let n = *self.t.shape().last().unwrap();
        let rows = self.t.numel() / n.max(1);
        let s = dtype.round(SENTINEL as f64) as f32;
        let mut inside = vec![false; self.total];
        for r in 0..rows {
            for i in 0..n {
                inside[self.before + r * self.stride + i] = true;
            }
        }
        for (i, (&v, &ins)) in all.iter().zip(&inside).enumerate() {
            if !ins {
                assert_eq!(
                    v, s,
                    "{what}: element {i} outside the view was overwritten with {v}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

#[derive(Clone, Debug)]
struct NormCase {
    dtype: DType,
    rows: usize,
    n: usize,
    pad: usize,
    before: usize,
    eps: f32,
    gemma: bool,
    residual: bool,
    in_place: bool,
    seed: u64,
}

/// Row lengths whose vector width and workgroup size the RMSNorm grid already compiles: any
/// length up to 32 and any non-multiple of 4 up to 64 (f32), multiples of 4 up to 128 and from
/// 1028 to 1200 (every dtype).
fn norm_len(dtype: DType) -> BoxedStrategy<usize> {
    let v4 = prop_oneof![
        (1usize..=32).prop_map(|k| 4 * k),
        (257usize..=300).prop_map(|k| 4 * k)
    ];
    if dtype.is_half() {
        v4.boxed()
    } else {
        prop_oneof![
            1usize..=32,
            (33usize..=64).prop_filter("v1", |n| n % 4 != 0),
            v4
        ]
        .boxed()
    }
}

fn norm_case() -> impl Strategy<Value = NormCase> {
    dtype()
        .prop_flat_map(|d| (Just(d), norm_len(d)))
        .prop_flat_map(|(dtype, n)| {
            (
                Just(dtype),
                1usize..=80, // both sides of the per-invocation threshold (64 rows)
                Just(n),
                0usize..=6,
                0usize..=40,
                prop_oneof![Just(0.0f32), Just(1e-6), 1e-6f32..0.5],
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<u64>(),
            )
        })
        .prop_map(
            |(dtype, rows, n, pad, before, eps, gemma, residual, in_place, seed)| {
                // Half types are packed two per word: even offsets and strides.
                let even = |v: usize| if dtype.is_half() { v & !1 } else { v };
                NormCase {
                    dtype,
                    rows,
                    n,
                    pad: even(pad),
                    before: even(before),
                    eps,
                    gemma,
                    residual,
                    in_place,
                    seed,
                }
            },
        )
}

fn run_norm(c: &NormCase) {
    counted();
    let ctx = ctx();
    let mut rng = Rng::new(c.seed);
    let (rows, n, d) = (c.rows, c.n, c.dtype);
    let x = rng.vec(rows * n, 1.0);
    let w = rng.vec(n, 0.5);
    let r = rng.vec(rows * n, 1.0);
    let op = RmsNorm {
        eps: c.eps,
        weight_offset: if c.gemma { 1.0 } else { 0.0 },
    };
    let (want, want_res) = reference::rms_norm::rms_norm(
        &rounded(&x, d),
        &rounded(&w, d),
        c.residual.then(|| rounded(&r, d)).as_deref(),
        c.eps as f64,
        op.weight_offset as f64,
        d,
    );
    let stride = n + c.pad;
    let lead = [rows];
    let xs = strided(&ctx, &x, &lead, n, stride, c.before, d);
    let ws = strided(&ctx, &w, &[1], n, n, c.before, d);
    let wt = Tensor::new(ws.t.buffer(), c.before, &[n], d);
    let nan = vec![f32::NAN; rows * n];
    let outs = (!c.in_place).then(|| strided(&ctx, &nan, &lead, n, stride, c.before, d));
    let out = outs.as_ref().map_or(&xs, |o| o);
    let tol = tolerance(d);
    let what = format!("{c:?}");
    if c.residual {
        let rs = strided(&ctx, &r, &lead, n, stride, c.before, d);
        let routs = (!c.in_place).then(|| strided(&ctx, &nan, &lead, n, stride, c.before, d));
        let rout = routs.as_ref().map_or(&rs, |o| o);
        op.run_residual(
            &ctx,
            &xs.t,
            &wt,
            &out.t,
            Residual {
                residual: &rs.t,
                residual_out: &rout.t,
            },
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(
            &ctx,
            &rout.t,
            want_res.as_ref().unwrap(),
            tol,
            &format!("{what} residual_out"),
        );
        rout.assert_untouched_outside(&ctx, &format!("{what} residual_out"));
    } else {
        op.run(&ctx, &xs.t, &wt, &out.t)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    assert_close(&ctx, &out.t, &want, tol, &format!("{what} out"));
    out.assert_untouched_outside(&ctx, &format!("{what} out"));
    ws.assert_untouched_outside(&ctx, &format!("{what} weight"));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rms_norm_matches_reference(c in norm_case()) {
        run_norm(&c);
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE

#[derive(Clone, Debug)]
enum Scale {
    Default,
    Linear(f64),
    Llama3,
    Yarn(f64),
    Dynamic(f64),
}

impl Scale {
    fn scaling(&self) -> Scaling {
        match *self {
            Scale::Default => Scaling::Default,
            Scale::Linear(factor) => Scaling::Linear { factor },
            // Llama-3.1-8B
            Scale::Llama3 => Scaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
            Scale::Yarn(factor) => Scaling::yarn(factor, 4096.0),
            Scale::Dynamic(factor) => Scaling::Dynamic {
                factor,
                original_max_position_embeddings: 2048.0,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum RopeView {
    /// In place on a `[batch, seq, heads, head_dim]` view with padded token rows.
    InPlace,
    /// Out of place (`encode_to`) into a NaN-filled view.
    OutOfPlace,
    /// Q and K inside one fused QKV buffer (`encode_qk`).
    FusedQkv,
}

#[derive(Clone, Debug)]
struct RopeCase {
    dtype: DType,
    layout: Layout,
    view: RopeView,
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    pad: usize,
    before: usize,
    theta: f64,
    scale: Scale,
    /// `Some(start)`: `Positions::Start`; `None`: random position ids per batch row.
    start: Option<i32>,
    max_pos: i32,
    seed: u64,
}

fn rope_case() -> impl Strategy<Value = RopeCase> {
    (
        dtype(),
        prop_oneof![Just(Layout::Half), Just(Layout::Interleaved)],
        prop_oneof![
            Just(RopeView::InPlace),
            Just(RopeView::OutOfPlace),
            Just(RopeView::FusedQkv)
        ],
        (1usize..=2, 1usize..=5, 1usize..=4, 1usize..=2),
        (1usize..=40, 1usize..=40), // head_dim / 4, rotary_dim / 4 (clamped to head_dim)
        (0usize..=8, 0usize..=40),
        prop_oneof![Just(10000.0f64), Just(500000.0), 100.0f64..1e6],
        prop_oneof![
            Just(Scale::Default),
            (1.0f64..8.0).prop_map(Scale::Linear),
            Just(Scale::Llama3),
            (1.0f64..16.0).prop_map(Scale::Yarn),
            (1.0f64..4.0).prop_map(Scale::Dynamic),
        ],
        (any::<bool>(), 0i32..(1 << 24)),
        any::<u64>(),
    )
        .prop_map(
            |(
                dtype,
                layout,
                view,
                (batch, seq, heads, kv_heads),
                (hd4, rd4),
                (pad, before),
                theta,
                scale,
                (start, max_pos),
                seed,
            )| {
                let even = |v: usize| if dtype.is_half() { v & !1 } else { v };
                let head_dim = 4 * hd4;
                RopeCase {
                    dtype,
                    layout,
                    view,
                    batch: if view == RopeView::FusedQkv { 1 } else { batch },
                    seq,
                    heads,
                    kv_heads,
                    head_dim,
                    // Even always; a multiple of 4 keeps half-layout halves word-aligned.
                    rotary_dim: 4 * rd4.min(hd4),
                    pad: even(pad),
                    before: even(before),
                    theta,
                    scale,
                    start: start.then_some(max_pos.saturating_sub(seq as i32 - 1).max(0)),
                    max_pos,
                    seed,
                }
            },
        )
}

fn run_rope(c: &RopeCase) {
    counted();
    let ctx = ctx();
    let mut rng = Rng::new(c.seed);
    let (b, s, hd, d) = (c.batch, c.seq, c.head_dim, c.dtype);
    let pos: Vec<i64> = match c.start {
        Some(p) => (0..b * s).map(|t| p as i64 + (t % s) as i64).collect(),
        None => (0..b * s)
            .map(|_| rng.below(c.max_pos as usize + 1) as i64)
            .collect(),
    };
    let seq_len = (*pos.iter().max().unwrap() + 1) as usize;
    let op = Rope::new(c.theta, c.layout)
        .with_scaling(c.scale.scaling())
        .with_rotary_dim(c.rotary_dim)
        .with_seq_len(seq_len);
    let (inv, attn) = op.inv_freq(hd, seq_len).expect("inv_freq");
    let ids = c.start.is_none().then(|| {
        PositionIds::upload(
            &ctx,
            &pos.iter().map(|&p| p as i32).collect::<Vec<_>>(),
            &[b, s],
        )
        .unwrap()
    });
    let positions = match (&ids, c.start) {
        (Some(p), _) => Positions::Ids(p),
        (None, Some(p)) => Positions::Start(p),
        (None, None) => unreachable!(),
    };
    let tol = tolerance(d);
    let what = format!("{c:?}");
    let rotate = |x: &[f32], heads: usize| {
        reference::rope::rope(
            &rounded(x, d),
            [b, s, heads, hd],
            &pos,
            &inv,
            attn,
            c.layout,
            c.rotary_dim,
        )
    };
    match c.view {
        RopeView::InPlace | RopeView::OutOfPlace => {
            let h = c.heads;
            let x = rng.vec(b * s * h * hd, 1.0);
            let want = rotate(&x, h);
            // Token rows padded by `pad` elements: views with a non-contiguous sequence stride.
            let row = h * hd + c.pad;
            let xs = strided(&ctx, &x, &[b * s], h * hd, row, c.before, d);
            let view = |st: &Strided| {
                Tensor::with_strides(
                    st.t.buffer(),
                    st.before,
                    &[b, s, h, hd],
                    &[s * row, row, hd, 1],
                    d,
                )
            };
            if c.view == RopeView::InPlace {
                op.run(&ctx, &view(&xs), positions)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_close(&ctx, &view(&xs), &want, tol, &what);
                xs.assert_untouched_outside(&ctx, &what);
            } else {
                let nan = vec![f32::NAN; x.len()];
                let os = strided(&ctx, &nan, &[b * s], h * hd, row, c.before, d);
                op.run_to(&ctx, &view(&xs), &view(&os), positions)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_close(&ctx, &view(&os), &want, tol, &what);
                assert_close(
                    &ctx,
                    &view(&xs),
                    &rounded(&x, d),
                    0.0,
                    &format!("{what} input"),
                );
                os.assert_untouched_outside(&ctx, &what);
            }
        }
        RopeView::FusedQkv => {
            let (hq, hk) = (c.heads * c.kv_heads, c.kv_heads);
            let row = (hq + 2 * hk) * hd;
            let qkv = rng.vec(s * row, 1.0);
            let all = strided(&ctx, &qkv, &[s], row, row, c.before, d);
            let (q, k, _) =
                llama_kernels::ops::rope::qkv_views(all.t.buffer(), c.before, s, hq, hk, hd, d);
            let part = |from: usize, heads: usize| -> Vec<f32> {
                (0..s)
                    .flat_map(|t| qkv[t * row + from..t * row + from + heads * hd].to_vec())
                    .collect()
            };
            let (xq, xk, xv) = (part(0, hq), part(hq * hd, hk), part((hq + hk) * hd, hk));
            op.run_qk(&ctx, &q, &k, positions)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let (q, k, v) =
                llama_kernels::ops::rope::qkv_views(all.t.buffer(), c.before, s, hq, hk, hd, d);
            assert_close(&ctx, &q, &rotate(&xq, hq), tol, &format!("{what} q"));
            assert_close(&ctx, &k, &rotate(&xk, hk), tol, &format!("{what} k"));
            assert_close(
                &ctx,
                &v,
                &rounded(&xv, d),
                0.0,
                &format!("{what} v untouched"),
            );
            all.assert_untouched_outside(&ctx, &what);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rope_matches_reference(c in rope_case()) {
        run_rope(&c);
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

#[derive(Clone, Debug)]
struct AttnCase {
    dtype: DType,
    batch: usize,
    q_len: usize,
    kv_len: usize,
    n_kv_heads: usize,
    group: usize,
    head_dim: usize,
    causal: bool,
    q_offset: Option<i64>,
    window: u32,
    window_left: Option<u32>,
    window_right: Option<u32>,
    chunk: u32,
    softcap: f32,
    sinks: bool,
    kind: Option<Kind>,
    splits: Option<u32>,
    seed: u64,
}

fn attn_case() -> impl Strategy<Value = AttnCase> {
    (
        dtype(),
        (
            1usize..=2,
            1usize..=12,
            0usize..=120,
            1usize..=2,
            1usize..=4,
        ),
        // The head sizes tests/attention.rs compiles by default (HD and Llama-3.2-1B's).
        prop_oneof![Just(16usize), Just(64)],
        (
            any::<bool>(),
            any::<bool>(),
            0u32..=40,
            prop_oneof![Just(0.0f32), 5.0f32..50.0],
            any::<bool>(),
        ),
        (
            0usize..4,
            prop_oneof![Just(None), (1u32..=8).prop_map(Some)],
        ),
        (0.0f64..1.0, any::<u64>()),
        // Two-sided window (mode 1: each side bounded or not) or chunked attention (mode 2).
        (
            0u8..3,
            0u32..=40,
            0u32..=40,
            any::<(bool, bool)>(),
            1u32..=40,
        ),
    )
        .prop_map(
            |(
                dtype,
                (batch, q_len, extra, n_kv_heads, group),
                head_dim,
                (causal, has_offset, window, softcap, sinks),
                (kind, splits),
                (offset_frac, seed),
                (mask_mode, left, right, (has_left, has_right), chunk),
            )| {
                let (window, window_left, window_right, chunk) = match mask_mode {
                    1 => (0, has_left.then_some(left), has_right.then_some(right), 0),
                    2 => (window, None, None, chunk),
                    _ => (window, None, None, 0),
                };
                let kv_len = q_len + extra;
                // Decode kernels serve q_len <= 8 (DECODE_MAX_Q_LEN); prefill any.
                let kind = match kind {
                    1 => Some(Kind::Prefill),
                    2 if q_len <= 8 => Some(Kind::Decode),
                    3 if q_len <= 4 => Some(Kind::DecodeKeys),
                    _ => None,
                };
                // q_offset in -q_len ..= kv_len - q_len: rows before the first key see nothing.
                let span = kv_len as f64;
                let q_offset = has_offset.then(|| (offset_frac * span) as i64 - q_len as i64);
                AttnCase {
                    dtype,
                    batch,
                    q_len,
                    kv_len,
                    n_kv_heads,
                    group,
                    head_dim,
                    causal,
                    q_offset,
                    window,
                    window_left,
                    window_right,
                    chunk,
                    softcap,
                    sinks,
                    kind,
                    splits,
                    seed,
                }
            },
        )
}

fn attn_shapes(c: &AttnCase) -> (Vec<usize>, Vec<usize>) {
    let h = c.n_kv_heads * c.group;
    let mut qs = vec![c.q_len, h, c.head_dim];
    let mut ks = vec![c.kv_len, c.n_kv_heads, c.head_dim];
    if c.batch > 1 {
        qs.insert(0, c.batch);
        ks.insert(0, c.batch);
    }
    (qs, ks)
}

/// ALiBi on a quarter of the cases (a uniform flag: the same pipelines).
fn attn_alibi(c: &AttnCase) -> bool {
    c.seed % 4 == 1
}

fn attn_op(c: &AttnCase) -> Attention {
    Attention {
        causal: c.causal,
        q_offset: c.q_offset,
        scale: None,
        window: c.window,
        window_left: c.window_left,
        window_right: c.window_right,
        chunk_size: c.chunk,
        softcap: c.softcap,
        alibi: attn_alibi(c),
        kind: c.kind,
        splits: c.splits,
        f16_arithmetic: false,
        native_f16: None,
        subgroup_min_size: None,
        int8_dot: false,
    }
}

fn attn_want(c: &AttnCase, q: &[f32], k: &[f32], v: &[f32], sinks: &[f32]) -> Vec<f64> {
    let d = c.dtype;
    let s: Vec<f64> = sinks.iter().map(|&x| x as f64).collect();
    reference::attention::attention(
        &rounded(q, d),
        &rounded(k, d),
        &rounded(v, d),
        c.sinks.then_some(&s[..]),
        reference::attention::Dims {
            batch: c.batch,
            q_len: c.q_len,
            kv_len: c.kv_len,
            n_heads: c.n_kv_heads * c.group,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        },
        &reference::attention::Options {
            causal: c.causal,
            q_offset: c.q_offset,
            scale: None,
            window: c.window as usize,
            window_left: c.window_left.map(|w| w as usize),
            window_right: c.window_right.map(|w| w as usize),
            chunk: c.chunk as usize,
            softcap: c.softcap as f64,
            alibi: attn_alibi(c),
        },
    )
}

fn run_attn(c: &AttnCase) {
    counted();
    let ctx = ctx();
    let mut rng = Rng::new(c.seed);
    let (qs, ks) = attn_shapes(c);
    let d = c.dtype;
    let q = rng.vec(qs.iter().product(), 1.0);
    let k = rng.vec(ks.iter().product(), 1.0);
    let v = rng.vec(ks.iter().product(), 1.0);
    let sinks = rng.vec(c.n_kv_heads * c.group, 1.0);
    let want = attn_want(c, &q, &k, &v, &sinks);
    // DecodeKeys reads 16-byte rows: its views start on a 16-byte boundary (64 elements in).
    let before = if c.kind == Some(Kind::DecodeKeys) {
        64
    } else {
        GUARD_BEFORE
    };
    let up = |data: &[f32], shape: &[usize]| {
        let n = *shape.last().unwrap();
        let lead = &shape[..shape.len() - 1];
        strided(&ctx, data, lead, n, n, before, d)
    };
    let (qt, kt, vt) = (up(&q, &qs), up(&k, &ks), up(&v, &ks));
    let st = c
        .sinks
        .then(|| upload_guarded(&ctx, &sinks, &[sinks.len()], DType::F32));
    let out = nan_output(&ctx, &qs, d);
    let what = format!("{c:?}");
    attn_op(c)
        .run(&ctx, &qt.t, &kt.t, &vt.t, st.as_ref(), &out)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let limit = match c.softcap > 0.0 {
        true => softcap_tolerance(&ctx, d),
        false => tolerance(d),
    };
    assert_close(&ctx, &out, &want, limit, &what);
    assert_guards(&ctx, &out, &what);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn attention_matches_reference(c in attn_case()) {
        run_attn(&c);
    }
}

// ---------------------------------------------------------------------------------------------
// KV cache: append and append_rope, then attention over the cache

#[derive(Clone, Debug)]
struct CacheCase {
    src: DType,
    dtype: DType,
    batch: usize,
    n_kv_heads: usize,
    head_dim: usize,
    steps: Vec<usize>,
    spare: usize,
    rope: Option<Layout>,
    rank3: bool,
    seed: u64,
}

fn cache_case() -> impl Strategy<Value = CacheCase> {
    (
        dtype(),
        dtype(),
        (
            1usize..=2,
            1usize..=3,
            prop_oneof![Just(64usize), Just(128)],
        ),
        prop::collection::vec(1usize..=6, 1..=3),
        0usize..=5,
        prop_oneof![
            Just(None),
            Just(Some(Layout::Half)),
            Just(Some(Layout::Interleaved))
        ],
        (any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |(src, dtype, (batch, n_kv_heads, head_dim), steps, spare, rope, (rank3, seed))| {
                CacheCase {
                    src,
                    dtype,
                    batch,
                    n_kv_heads,
                    head_dim,
                    steps,
                    spare,
                    rope,
                    rank3,
                    seed,
                }
            },
        )
}

fn run_cache(c: &CacheCase) {
    counted();
    let ctx = ctx();
    let mut rng = Rng::new(c.seed);
    let (b, h, hd) = (c.batch, c.n_kv_heads, c.head_dim);
    let total: usize = c.steps.iter().sum();
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: b,
            n_kv_heads: h,
            capacity: total + c.spare,
            head_dim: hd,
            dtype: c.dtype,
            kv_format: None,
        },
    )
    .unwrap();
    let rope = c.rope.map(|l| Rope::new(10000.0, l));
    let what = format!("{c:?}");
    // Expected cache contents, [batch, len, heads, head_dim], built step by step.
    let mut want_k = vec![Vec::new(); b];
    let mut want_v = vec![Vec::new(); b];
    for &n_new in &c.steps {
        let kn = rng.vec(b * n_new * h * hd, 1.0);
        let vn = rng.vec(b * n_new * h * hd, 1.0);
        let shape = [b, n_new, h, hd];
        // Batch 1 also takes rank-3 rows (`[n_new, n_kv_heads, head_dim]`).
        let given: &[usize] = if b == 1 && c.rank3 {
            &shape[1..]
        } else {
            &shape
        };
        let kt = upload_guarded(&ctx, &kn, given, c.src);
        let vt = upload_guarded(&ctx, &vn, given, c.src);
        let start = cache.len();
        let kr = rounded(&kn, c.src);
        let k_rot = match &rope {
            Some(op) => {
                cache
                    .append_rope_run(&ctx, &kt, &vt, op, None)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let pos: Vec<i64> = (0..b)
                    .flat_map(|_| (0..n_new).map(move |t| (start + t) as i64))
                    .collect();
                let (inv, attn) = op.inv_freq(hd, start + n_new).unwrap();
                reference::rope::rope(&kr, shape, &pos, &inv, attn, op.layout, hd)
            }
            None => {
                cache
                    .append_run(&ctx, &kt, &vt)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                kr
            }
        };
        let per = n_new * h * hd;
        for bi in 0..b {
            want_k[bi].extend_from_slice(&k_rot[bi * per..(bi + 1) * per]);
            want_v[bi].extend(rounded(&vn[bi * per..(bi + 1) * per], c.src));
        }
        assert_guards(&ctx, &kt, &format!("{what} k_new"));
    }
    assert_eq!(cache.len(), total);
    // Storage rounds to the cache dtype: compare at the coarser of the two tolerances.
    let tol = tolerance(c.src).max(tolerance(c.dtype));
    let wk: Vec<f64> = want_k.concat();
    let wv: Vec<f64> = want_v.concat();
    assert_close(&ctx, &cache.k(), &wk, tol, &format!("{what} k"));
    assert_close(&ctx, &cache.v(), &wv, tol, &format!("{what} v"));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn kv_cache_append_matches_reference(c in cache_case()) {
        run_cache(&c);
    }
}

// ---------------------------------------------------------------------------------------------
// Just outside the ranges: Err, never a panic

fn expect_refused(what: &str, r: std::thread::Result<llama_kernels::Result<()>>) {
    counted();
    match r {
        Err(_) => panic!("{what}: panicked instead of returning Err"),
        Ok(Ok(())) => panic!("{what}: accepted"),
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains(e.op()),
                "{what}: message does not name the op: {msg}"
            );
        }
    }
}

fn catch<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

#[derive(Clone, Debug)]
enum Outside {
    /// RMSNorm: eps < 0 or not finite.
    NormEps(f32),
    /// RMSNorm: weight of the wrong length.
    NormWeight(usize, usize),
    /// RMSNorm: half type with an odd row length.
    NormOddHalf(usize),
    /// RoPE: odd rotary_dim, or rotary_dim past head_dim.
    RopeRotary(usize, usize),
    /// RoPE: theta <= 0 or not finite.
    RopeTheta(f64),
    /// RoPE: positions past i32.
    RopeStart(i64),
    /// Attention: head_dim not a multiple of 4, or above 256.
    AttnHeadDim(usize),
    /// Attention: n_heads not a multiple of n_kv_heads.
    AttnGroup(usize, usize),
    /// Attention: q_offset + q_len > kv_len.
    AttnOffset(usize, usize, i64),
    /// KV cache: appending past the capacity.
    CacheOverflow(usize, usize),
}

fn outside() -> impl Strategy<Value = Outside> {
    prop_oneof![
        prop_oneof![
            Just(-1e-30f32),
            -10.0f32..-1e-6,
            Just(f32::NAN),
            Just(f32::INFINITY)
        ]
        .prop_map(Outside::NormEps),
        (1usize..=64, 1usize..=64)
            .prop_filter("differ", |(a, b)| a != b)
            .prop_map(|(a, b)| Outside::NormWeight(a, b)),
        (0usize..=40).prop_map(|k| Outside::NormOddHalf(2 * k + 1)),
        (1usize..=32, 0usize..=80)
            .prop_filter("bad", |(hd4, rd)| rd % 2 == 1 || *rd > 4 * hd4 || *rd == 0)
            .prop_map(|(hd4, rd)| Outside::RopeRotary(4 * hd4, rd)),
        prop_oneof![
            Just(0.0f64),
            -1e4f64..0.0,
            Just(f64::NAN),
            Just(f64::INFINITY)
        ]
        .prop_map(Outside::RopeTheta),
        prop_oneof![
            (i32::MAX as i64 - 2)..=(i32::MAX as i64),
            Just(i32::MAX as i64)
        ]
        .prop_map(Outside::RopeStart),
        prop_oneof![
            (1usize..=64).prop_filter("not 4k", |d| d % 4 != 0),
            257usize..=300
        ]
        .prop_map(Outside::AttnHeadDim),
        (2usize..=4, 1usize..=8)
            .prop_filter("indivisible", |(kv, h)| h % kv != 0)
            .prop_map(|(kv, h)| Outside::AttnGroup(h, kv)),
        (1usize..=8, 1usize..=30, 1i64..=5).prop_map(|(q, kv, over)| Outside::AttnOffset(
            q,
            kv.max(q),
            (kv.max(q) - q) as i64 + over
        )),
        (1usize..=8, 1usize..=4).prop_map(|(cap, over)| Outside::CacheOverflow(cap, cap + over)),
    ]
}

fn run_outside(o: &Outside) {
    let ctx = ctx();
    let what = format!("{o:?}");
    let f32s = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        ctx.upload_as(&vec![0.5; n], shape, DType::F32).unwrap()
    };
    let r = match *o {
        Outside::NormEps(eps) => {
            let (x, w) = (f32s(&[2, 8]), f32s(&[8]));
            catch(|| RmsNorm::new(eps).run(&ctx, &x, &w, &x))
        }
        Outside::NormWeight(n, wn) => {
            let (x, w) = (f32s(&[3, n]), f32s(&[wn]));
            catch(|| RmsNorm::new(1e-6).run(&ctx, &x, &w, &x))
        }
        Outside::NormOddHalf(n) => {
            // A buffer big enough for the view, so only the packing rule can refuse it.
            let buf = ctx
                .upload_as(&vec![0.5; 4 * n + 8], &[4 * n + 8], DType::F16)
                .unwrap();
            let x = Tensor::new(buf.buffer(), 0, &[2, n], DType::F16);
            let w = Tensor::new(buf.buffer(), 2 * n + 2, &[n], DType::F16);
            let out = ctx.empty(&[2, n + 1], DType::F16).unwrap();
            let out = Tensor::new(out.buffer(), 0, &[2, n], DType::F16);
            catch(|| RmsNorm::new(1e-6).run(&ctx, &x, &w, &out))
        }
        Outside::RopeRotary(hd, rd) => {
            let x = f32s(&[2, 2, hd]);
            catch(|| {
                Rope::new(1e4, Layout::Half)
                    .with_rotary_dim(rd)
                    .run(&ctx, &x, Positions::Start(0))
            })
        }
        Outside::RopeTheta(theta) => {
            let x = f32s(&[2, 2, 8]);
            catch(|| Rope::new(theta, Layout::Half).run(&ctx, &x, Positions::Start(0)))
        }
        Outside::RopeStart(p) => {
            // seq 4 from a start within 2 of i32::MAX: the last positions do not fit.
            let x = f32s(&[4, 1, 8]);
            let start = p as i32;
            catch(|| Rope::new(1e4, Layout::Half).run(&ctx, &x, Positions::Start(start)))
        }
        Outside::AttnHeadDim(hd) => {
            let (q, k) = (f32s(&[1, 2, hd]), f32s(&[3, 1, hd]));
            let out = f32s(&[1, 2, hd]);
            catch(|| Attention::causal().run(&ctx, &q, &k, &k, None, &out))
        }
        Outside::AttnGroup(h, kv) => {
            let (q, k) = (f32s(&[1, h, 16]), f32s(&[3, kv, 16]));
            let out = f32s(&[1, h, 16]);
            catch(|| Attention::causal().run(&ctx, &q, &k, &k, None, &out))
        }
        Outside::AttnOffset(ql, kv, off) => {
            let (q, k) = (f32s(&[ql, 2, 16]), f32s(&[kv, 1, 16]));
            let out = f32s(&[ql, 2, 16]);
            let op = Attention {
                q_offset: Some(off),
                ..Attention::causal()
            };
            catch(|| op.run(&ctx, &q, &k, &k, None, &out))
        }
        Outside::CacheOverflow(cap, n) => {
            let mut cache = KvCache::new(
                &ctx,
                KvCacheConfig {
                    batch: 1,
                    n_kv_heads: 1,
                    capacity: cap,
                    head_dim: 16,
                    dtype: DType::F32,
                    kv_format: None,
                },
            )
            .unwrap();
            let k = f32s(&[n, 1, 16]);
            let r = catch(|| cache.append_run(&ctx, &k, &k).map(|_| ()));
            assert_eq!(cache.len(), 0, "{what}: a refused append moved the length");
            r
        }
    };
    expect_refused(&what, r);
}

proptest! {
    #![proptest_config(Config { cases: 4 * config().cases, ..config() })]

    #[test]
    fn just_outside_the_ranges_is_refused(o in outside()) {
        run_outside(&o);
    }
}

//! GQA attention and the KV cache on a real adapter against the f64 reference: the cross-check
//! grid, forced variants at every threshold, edge cases, properties, and every validation rule.

use crate::common;

use common::*;
use llama_kernels::compare::{compare, tolerance};
use llama_kernels::ops::attention::{
    Kind, DECODE_MAX_Q_LEN, DECODE_MIN_CHUNK, DECODE_TARGET_WORKGROUPS, KEYS_MAX_ROWS, KEYS_TRIPS,
};
use llama_kernels::reference::attention as reference;
use llama_kernels::{Attention, DType, Error, Tensor};

#[derive(Clone, Copy, Debug)]
struct Case {
    dtype: DType,
    batch: usize,
    q_len: usize,
    kv_len: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    causal: bool,
    q_offset: Option<i64>,
    window: u32,
    window_left: Option<u32>,
    window_right: Option<u32>,
    chunk: u32,
    softcap: f32,
    alibi: bool,
    sinks: bool,
    scale: Option<f32>,
    kind: Option<Kind>,
    splits: Option<u32>,
    native_f16: Option<bool>,
    subgroup_min_size: Option<u32>,
}

impl Case {
    fn new(
        q_len: usize,
        kv_len: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Case {
            dtype: DType::F32,
            batch: 1,
            q_len,
            kv_len,
            n_heads,
            n_kv_heads,
            head_dim,
            causal: true,
            q_offset: None,
            window: 0,
            window_left: None,
            window_right: None,
            chunk: 0,
            softcap: 0.0,
            alibi: false,
            sinks: false,
            scale: None,
            kind: None,
            splits: None,
            native_f16: None,
            subgroup_min_size: None,
        }
    }
    fn op(&self) -> Attention {
        Attention {
            causal: self.causal,
            q_offset: self.q_offset,
            scale: self.scale,
            window: self.window,
            window_left: self.window_left,
            window_right: self.window_right,
            chunk_size: self.chunk,
            softcap: self.softcap,
            alibi: self.alibi,
            kind: self.kind,
            splits: self.splits,
            f16_arithmetic: false,
            native_f16: self.native_f16,
            subgroup_min_size: self.subgroup_min_size,
            int8_dot: false,
        }
    }
    fn dims(&self) -> reference::Dims {
        reference::Dims {
            batch: self.batch,
            q_len: self.q_len,
            kv_len: self.kv_len,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }
    fn ref_opts(&self) -> reference::Options {
        reference::Options {
            causal: self.causal,
            q_offset: self.q_offset,
            scale: self.scale.map(|s| s as f64),
            window: self.window as usize,
            window_left: self.window_left.map(|w| w as usize),
            window_right: self.window_right.map(|w| w as usize),
            chunk: self.chunk as usize,
            softcap: self.softcap as f64,
            alibi: self.alibi,
        }
    }
    fn shapes(&self) -> (Vec<usize>, Vec<usize>) {
        let mut qs = vec![self.q_len, self.n_heads, self.head_dim];
        let mut ks = vec![self.kv_len, self.n_kv_heads, self.head_dim];
        if self.batch > 1 {
            qs.insert(0, self.batch);
            ks.insert(0, self.batch);
        }
        (qs, ks)
    }
}

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    sinks: Vec<f32>,
}

fn data(c: &Case, seed: u64, q_scale: f32) -> Data {
    let mut rng = Rng::new(seed);
    let nq = c.batch * c.q_len * c.n_heads * c.head_dim;
    let nk = c.batch * c.kv_len * c.n_kv_heads * c.head_dim;
    Data {
        q: rng.vec(nq, q_scale),
        k: rng.vec(nk, 1.0),
        v: rng.vec(nk, 1.0),
        sinks: rng.vec(c.n_heads, 1.0),
    }
}

/// Run `c` on the GPU; returns the output values.
fn gpu(c: &Case, d: &Data) -> Vec<f32> {
    gpu_on(&ctx(), c, d)
}

/// Guard elements before the inputs of a case: 16-byte aligned rows for the dispatcher's own
/// choice and for a forced DecodeKeys (so that the CPU adapter's default decode path runs),
/// the unaligned common guard for the other forced kernels.
fn guard_before(c: &Case) -> usize {
    if c.native_f16 == Some(true) {
        return ALIGNED_GUARD;
    }
    match c.kind {
        None
        | Some(
            Kind::DecodeKeys | Kind::PrefillKeys | Kind::DecodeSubgroup | Kind::PrefillSubgroup,
        ) => ALIGNED_GUARD,
        _ => GUARD_BEFORE,
    }
}

fn gpu_on(ctx: &llama_kernels::Context, c: &Case, d: &Data) -> Vec<f32> {
    let (qs, ks) = c.shapes();
    let before = guard_before(c);
    let q = upload_at(ctx, &d.q, &qs, c.dtype, before);
    let k = upload_at(ctx, &d.k, &ks, c.dtype, before);
    let v = upload_at(ctx, &d.v, &ks, c.dtype, before);
    let sinks = c
        .sinks
        .then(|| upload_guarded(ctx, &d.sinks, &[c.n_heads], DType::F32));
    let out = nan_output(ctx, &qs, c.dtype);
    c.op()
        .run(ctx, &q, &k, &v, sinks.as_ref(), &out)
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert_guards(ctx, &out, &format!("{c:?}"));
    ctx.read_f32(&out).unwrap()
}

/// Run `c` (aligned inputs as in `gpu_on`) and return the op's result instead of panicking.
fn try_run(c: &Case) -> Result<(), Error> {
    let ctx = ctx();
    let d = data(c, 1, 1.0);
    let (qs, ks) = c.shapes();
    let before = guard_before(c);
    let q = upload_at(&ctx, &d.q, &qs, c.dtype, before);
    let k = upload_at(&ctx, &d.k, &ks, c.dtype, before);
    let v = upload_at(&ctx, &d.v, &ks, c.dtype, before);
    let out = nan_output(&ctx, &qs, c.dtype);
    c.op().run(&ctx, &q, &k, &v, None, &out)
}

fn want(c: &Case, d: &Data) -> Vec<f64> {
    let sinks: Vec<f64> = d.sinks.iter().map(|&s| s as f64).collect();
    reference::attention(
        &rounded(&d.q, c.dtype),
        &rounded(&d.k, c.dtype),
        &rounded(&d.v, c.dtype),
        c.sinks.then_some(&sinks[..]),
        c.dims(),
        &c.ref_opts(),
    )
}

fn tol(dtype: DType) -> f64 {
    tolerance(dtype)
}

fn check(c: Case, seed: u64) {
    let d = data(&c, seed, 1.0);
    let got = gpu(&c, &d);
    let w = want(&c, &d);
    let cmp = compare(&got, &w);
    let limit = match c.softcap > 0.0 {
        true => softcap_tolerance(&ctx(), c.dtype),
        false => tol(c.dtype),
    };
    assert!(cmp.passes(limit), "{c:?}: {cmp}");
}

/// Visible (query, key) pairs of a case, to keep the grid within its time budget.
fn visible_pairs(c: &Case) -> usize {
    let off = c.q_offset.unwrap_or(c.kv_len as i64 - c.q_len as i64);
    (0..c.q_len)
        .map(|t| {
            let pos = off + t as i64;
            let hi = if c.causal {
                (pos + 1).min(c.kv_len as i64)
            } else {
                c.kv_len as i64
            };
            let lo = if c.window > 0 {
                (pos - c.window as i64 + 1).max(0)
            } else {
                0
            };
            (hi - lo).max(0) as usize
        })
        .sum()
}

fn cost(c: &Case) -> usize {
    c.batch * c.n_heads * c.head_dim * visible_pairs(c).max(c.q_len)
}

const HEAD_DIMS: [usize; 5] = [64, 80, 96, 128, 256];
const GROUPS: [usize; 6] = [1, 2, 4, 8, 16, 32];
const Q_LENS: [usize; 5] = [1, 3, 16, 75, 128];
const KV_LENS: [usize; 6] = [1, 7, 113, 512, 1000, 4097];
const KINDS: [Option<Kind>; 4] = [
    None,
    Some(Kind::Prefill),
    Some(Kind::Decode),
    Some(Kind::DecodeKeys),
];
/// Every kernel, forced.
const FORCED: [Kind; 4] = [
    Kind::Prefill,
    Kind::PrefillKeys,
    Kind::Decode,
    Kind::DecodeKeys,
];

/// The head_dim of the tests whose point is not the head size. Every head_dim is its own pipeline
/// specialisation (`HD4`, with the head loops unrolled), and lavapipe compiles each at its first
/// dispatch, which at head_dim 16 costs a small fraction of what 64..256 cost. So the kernel x
/// dtype x masking-mode coverage and the edge cases run at this size, and every real head size
/// runs in `every_kernel_at_real_head_dims`.
const HD: usize = 16;

/// A real model's attention shape, with the dtype its head size runs in (the dtypes rotate so
/// that every kernel also meets every dtype at a real head size) and the decode length that
/// picks DecodeKeys' query rows per workgroup (rows = decode_q_len x group, rounded up to 1, 2
/// or 4).
struct Model {
    name: &'static str,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    decode_q_len: usize,
    keys_rows: u32,
}

/// The specialisations at real head sizes that the default tests run (the other tests reuse them:
/// a second test on the same head_dim, dtype and kernel costs no compile). Llama-3.2-1B's and
/// Phi-2's DecodeKeys are also what the committed attention cases of `check` compile.
const MODELS: [Model; 5] = [
    // Llama-3.2-1B: 32 q heads, 8 kv heads, head_dim 64; one token, 4 rows of a group.
    Model {
        name: "Llama-3.2-1B",
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 64,
        dtype: DType::F32,
        decode_q_len: 1,
        keys_rows: 4,
    },
    // Phi-2: 32 heads (MHA), head_dim 80; three draft tokens.
    Model {
        name: "Phi-2",
        n_heads: 32,
        n_kv_heads: 32,
        head_dim: 80,
        dtype: DType::F16,
        decode_q_len: 3,
        keys_rows: 4,
    },
    // Phi-3-mini: 32 heads (MHA), head_dim 96; two tokens.
    Model {
        name: "Phi-3-mini",
        n_heads: 32,
        n_kv_heads: 32,
        head_dim: 96,
        dtype: DType::BF16,
        decode_q_len: 2,
        keys_rows: 2,
    },
    // Llama-2-7B: 32 heads (MHA), head_dim 128; one token.
    Model {
        name: "Llama-2-7B",
        n_heads: 32,
        n_kv_heads: 32,
        head_dim: 128,
        dtype: DType::F16,
        decode_q_len: 1,
        keys_rows: 1,
    },
    // Gemma-7B: 16 heads (MHA), head_dim 256; two tokens.
    Model {
        name: "Gemma-7B",
        n_heads: 16,
        n_kv_heads: 16,
        head_dim: 256,
        dtype: DType::F32,
        decode_q_len: 2,
        keys_rows: 2,
    },
];

/// The model of `MODELS` whose head size runs in `dtype` and is also a Llama-style GQA or the
/// largest MHA one: f32 -> head_dim 64, f16 -> 128, bf16 -> 96.
fn model_for(dtype: DType) -> &'static Model {
    let hd = match dtype {
        DType::F32 => 64,
        DType::F16 => 128,
        DType::BF16 => 96,
    };
    MODELS.iter().find(|m| m.head_dim == hd).unwrap()
}

/// Masking / logit options number `m` (of 8) for a case, rotated through the grid.
fn with_mode(mut c: Case, m: usize) -> Case {
    match m % 8 {
        0 => {}
        1 => c.causal = false,
        2 => {
            // Chunked prefill: queries in the middle of the keys (or further before the first
            // key when there are more queries than keys).
            let room = c.kv_len as i64 - c.q_len as i64;
            c.q_offset = Some(if room >= 0 { room / 2 } else { room - 3 });
        }
        3 => c.window = (c.kv_len as u32 / 3).max(1),
        4 => c.softcap = 5.0,
        5 => c.sinks = true,
        6 => {
            c.causal = false;
            c.window = 50;
            c.sinks = true;
            c.scale = Some(0.3);
        }
        _ => {
            c.window = 17;
            c.softcap = 2.0;
            c.sinks = true;
        }
    }
    c
}

/// Every (q_len, kv_len) pair of the grid, each with rotating group size, dtype, masking
/// mode and variant (forced or the dispatcher's own), at head_dim `HD`; shapes too expensive for
/// lavapipe take the next cheaper head/group combination (cost = heads x head_dim x visible
/// pairs). With `LLAMA_KERNELS_LONG_TESTS=1` the head_dim rotates over the real sizes too.
#[test]
fn grid_against_reference() {
    const BUDGET: usize = 200_000_000;
    let long = long_tests();
    let mut i = 0usize;
    let mut ran = 0;
    for &q_len in &Q_LENS {
        for &kv_len in &KV_LENS {
            for rep in 0..2 {
                i += 1;
                let mut picked = None;
                for tryk in 0..30 {
                    let hd = if long { HEAD_DIMS[(i + tryk) % 5] } else { HD };
                    let g = GROUPS[(i * 5 + rep * 3 + tryk * 7) % 6];
                    let n_kv = if g >= 8 || tryk > 5 { 1 } else { 2 };
                    let mut c = Case::new(q_len, kv_len, g * n_kv, n_kv, hd);
                    c.dtype = DType::ALL[(i + rep) % 3];
                    c.kind = KINDS[(i + rep) % 4];
                    c.batch = if i % 7 == 3 { 2 } else { 1 };
                    let c = with_mode(c, i + i / 8);
                    if cost(&c) <= BUDGET {
                        picked = Some(c);
                        break;
                    }
                }
                let c = picked.unwrap_or_else(|| {
                    let hd = if long { 64 } else { HD };
                    let mut c = with_mode(Case::new(q_len, kv_len, 1, 1, hd), i + i / 8);
                    c.kind = KINDS[(i + rep) % 4];
                    c
                });
                eprintln!("grid: {c:?} cost {}", cost(&c));
                check(c, 1000 + i as u64 * 2 + rep as u64);
                ran += 1;
            }
        }
    }
    assert_eq!(ran, 60);
}

/// Every kernel variant (prefill, prefill split over the keys, split-KV decode, DecodeKeys with 1,
/// 2 and 4 query rows per workgroup) x every dtype x every masking mode, at head_dim `HD`, with
/// the group size, KV heads and batch rotating; each case first checks that the plan is the
/// variant it stands for. Then ALiBi on every kernel ([`alibi_on_every_kernel`]).
#[test]
fn every_kernel_dtype_and_mode() {
    let ctx = ctx();
    let (split_len, split_force) = prefill_split_case(&ctx);
    // (kind, split over keys, DecodeKeys rows per workgroup, q_len, group (0: rotating), kv_len,
    // forced split count). PrefillKeys splits only past a cap of tens of thousands of keys on
    // this adapter, so its split pass runs with a forced count (the same pipeline either way).
    let variants = [
        (Kind::Prefill, false, 1, 20, 0, 150, None),
        (Kind::Prefill, true, 1, 2, 0, split_len, split_force),
        (Kind::PrefillKeys, false, 1, 20, 0, 150, None),
        (Kind::PrefillKeys, true, 1, 11, 0, 200, Some(3)),
        (Kind::Decode, true, 1, 3, 0, 300, None),
        (Kind::DecodeKeys, true, 1, 1, 1, 300, None),
        (Kind::DecodeKeys, true, 2, 2, 1, 300, None),
        (Kind::DecodeKeys, true, 4, 3, 0, 300, None),
    ];
    let mut i = 0;
    for (kind, split_kv, kr, q_len, group, kv_len, splits) in variants {
        for dtype in DType::ALL {
            for mode in 0..8 {
                i += 1;
                let g = if group == 0 { GROUPS[i % 6] } else { group };
                let n_kv = if g >= 8 { 1 } else { 1 + i % 2 };
                let mut c = Case::new(q_len, kv_len, g * n_kv, n_kv, HD);
                c.dtype = dtype;
                c.kind = Some(kind);
                c.splits = splits;
                c.batch = if i % 5 == 2 { 2 } else { 1 };
                let c = with_mode(c, mode);
                let v = c.op().plan(&ctx, dims_of(&c), dtype).unwrap().variant;
                assert_eq!(
                    (v.kind, v.split_kv, v.kr),
                    (kind, split_kv, kr),
                    "{c:?}: {v:?}"
                );
                check(c, 3000 + i as u64);
            }
        }
    }
    alibi_on_every_kernel();
}

/// `kinds` at the real head size of `model`, with the model's heads and dtype and the masking
/// modes rotating. With `LLAMA_KERNELS_LONG_TESTS=1`, also this head size x every group size x
/// dtype, with the variant and the masking mode rotating. `decode_q_len` replaces the model's
/// tokens per decode step.
fn kernels_at_head_dim_of(model: usize, kinds: &[Kind], decode_q_len: Option<usize>) {
    let ctx = ctx();
    let m = &MODELS[model];
    for (j, &kind) in FORCED.iter().enumerate() {
        if !kinds.contains(&kind) {
            continue;
        }
        let q_len = if matches!(kind, Kind::Prefill | Kind::PrefillKeys) {
            24
        } else {
            decode_q_len.unwrap_or(m.decode_q_len)
        };
        let mut c = Case::new(q_len, 200, m.n_heads, m.n_kv_heads, m.head_dim);
        c.dtype = m.dtype;
        c.kind = Some(kind);
        let c = with_mode(c, 3 * model + j);
        let v = c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap().variant;
        assert_eq!(
            v.split_kv,
            !matches!(kind, Kind::Prefill | Kind::PrefillKeys),
            "{}: {v:?}",
            m.name
        );
        if kind == Kind::DecodeKeys && decode_q_len.is_none() {
            assert_eq!(v.kr, m.keys_rows, "{}: {v:?}", m.name);
        }
        check(c, 3500 + (3 * model + j) as u64);
    }
    if !long_tests() {
        return;
    }
    let mut i = 0;
    for &g in &GROUPS {
        for dtype in DType::ALL {
            i += 1;
            let n_kv = 1 + i % 2;
            let (q_len, kv_len) = [(1, 113), (3, 7), (16, 40), (5, 200)][i % 4];
            let mut c = Case::new(q_len, kv_len, g * n_kv, n_kv, m.head_dim);
            c.dtype = dtype;
            c.kind = KINDS[i % 4];
            check(with_mode(c, i), 3000 + i as u64);
        }
    }
}

/// Every kernel at real head sizes. Each head size is a pipeline of its own per kernel and dtype
/// (`HD4`), which a CPU adapter compiles on first use, so the default set is the smallest that
/// covers the largest per-lane state: all kernels at Llama-3.2-1B's 64 (the self-test's and the
/// committed cases' layout), and DecodeKeys, whose per-lane state is the whole head, at the
/// largest size, Gemma-7B's 256. `LLAMA_KERNELS_LONG_TESTS=1` runs every kernel at every size of
/// `MODELS`, among them PrefillKeys' 8-slot specialisation (head_dim > 224), the slowest
/// pipeline of the suite to compile on lavapipe.
#[test]
fn every_kernel_at_real_head_dims() {
    if long_tests() {
        for model in 0..MODELS.len() {
            kernels_at_head_dim_of(model, &FORCED, None);
        }
        return;
    }
    kernels_at_head_dim_of(0, &FORCED, None);
    // Head_dim 256's whole unit ladder (64 f32 units) with one row per workgroup: the model's
    // two tokens would take KR 2, which other head sizes cover, at twice the compile.
    kernels_at_head_dim_of(4, &[Kind::DecodeKeys], Some(1));
}

/// head_dims that are multiples of 4 but none of the usual sizes, and the smallest one: each runs
/// one kernel (the kernels and dtypes rotate; with `LLAMA_KERNELS_LONG_TESTS=1`, every kernel),
/// and DecodeKeys refuses each of them in half precision (16-byte loads need head_dim x 2 bytes
/// to be a multiple of 16).
#[test]
fn unusual_head_dims() {
    use DType::{BF16, F16, F32};
    use Kind::{Decode, DecodeKeys, Prefill, PrefillKeys};
    // PrefillKeys: one vec4 of the head per invocation and slot, so head_dims that leave the last
    // slot partly empty (44: 11 vec4s over 8 invocations; 120: 30). Its 8-slot specialisation
    // (head_dim > 224) compiles several times longer than these; it runs at head_dim 256 only.
    let runs = [
        (4usize, DecodeKeys, F32),
        (12, Prefill, F16),
        (36, Decode, BF16),
        (44, PrefillKeys, F32),
        (68, DecodeKeys, F32),
        (100, Prefill, F32),
        (132, Decode, F16),
        (120, PrefillKeys, BF16),
        (252, Prefill, BF16),
    ];
    for (i, (hd, kind, dtype)) in runs.into_iter().enumerate() {
        // By default the four smallest sizes (each a pipeline LLVM compiles on lavapipe: the
        // smallest are the cheapest), one per kernel; the rest with LLAMA_KERNELS_LONG_TESTS=1.
        let kinds = if long_tests() {
            FORCED.to_vec()
        } else if hd <= 44 {
            vec![kind]
        } else {
            vec![]
        };
        for kind in kinds {
            if matches!(kind, DecodeKeys | PrefillKeys) && dtype.is_half() && hd % 8 != 0 {
                continue; // refused, checked below
            }
            // One row per DecodeKeys workgroup (its cheapest specialisation); PrefillKeys: 18
            // rows, two row blocks of 16, and two key tiles of 64.
            let mut c = match kind {
                DecodeKeys => Case::new(1, 70, 3, 3, hd),
                PrefillKeys => Case::new(9, 70, 6, 3, hd),
                _ => Case::new(5, 70, 6, 3, hd),
            };
            c.dtype = dtype;
            c.kind = Some(kind);
            check(with_mode(c, i), 4000 + i as u64);
        }
        // Half rows of head_dim 4 (mod 8) are not 16-byte aligned.
        for dtype in [F16, BF16].into_iter().filter(|_| hd % 8 != 0) {
            let mut c = Case::new(1, 70, 3, 3, hd);
            c.dtype = dtype;
            c.kind = Some(DecodeKeys);
            let e = try_run(&c).unwrap_err().to_string();
            assert!(
                e.contains("DecodeKeys kernel needs 16-byte aligned K/V rows"),
                "{hd} {dtype}: {e}"
            );
        }
    }
}

/// The dispatcher's thresholds at -1, = and +1: decode vs prefill by q_len, one split vs two by
/// kv_len, and the row-block size of each kernel.
#[test]
fn thresholds() {
    let ctx = ctx();
    let t = DECODE_MAX_Q_LEN;
    // The pure choice: GPUs by q_len; CPU adapters take DecodeKeys for decode when K/V rows are
    // 16-byte aligned, Decode when not.
    use llama_kernels::ops::attention::default_kind;
    use wgpu::DeviceType::{Cpu, DiscreteGpu};
    for (q_len, gpu_kind, cpu_kind) in [
        (t - 1, Kind::Decode, Kind::DecodeKeys),
        (t, Kind::Decode, Kind::DecodeKeys),
        (t + 1, Kind::Prefill, Kind::PrefillKeys),
    ] {
        assert_eq!(default_kind(DiscreteGpu, q_len, true), gpu_kind);
        assert_eq!(default_kind(Cpu, q_len, true), cpu_kind);
        assert_eq!(
            default_kind(Cpu, q_len, false),
            if q_len <= t {
                Kind::Decode
            } else {
                Kind::Prefill
            }
        );
    }
    // This adapter with aligned rows: on a CPU adapter (lavapipe) the CPU kernels; on a GPU the
    // subgroup decode and prefill where it has SUBGROUP, else Decode and Prefill.
    let cpu = ctx.adapter_info().device_type == Cpu;
    let (gpu_decode, gpu_prefill) = match ctx.caps().subgroups {
        true => (Kind::DecodeSubgroup, Kind::PrefillSubgroup),
        false => (Kind::Decode, Kind::Prefill),
    };
    for (q_len, cpu_expect, gpu_expect) in [
        (t - 1, Kind::DecodeKeys, gpu_decode),
        (t, Kind::DecodeKeys, gpu_decode),
        (t + 1, Kind::PrefillKeys, gpu_prefill),
    ] {
        let expect = if cpu { cpu_expect } else { gpu_expect };
        let mut c = Case::new(q_len, 300, 8, 2, HD);
        c.dtype = DType::F16;
        let dims = Attention::default()
            .dims(
                &ctx.empty(&c.shapes().0, c.dtype).unwrap(),
                &ctx.empty(&c.shapes().1, c.dtype).unwrap(),
                &ctx.empty(&c.shapes().1, c.dtype).unwrap(),
            )
            .unwrap();
        let plan = c.op().plan(&ctx, dims, c.dtype).unwrap();
        assert_eq!(plan.variant.kind, expect, "q_len {q_len}");
        check(c, 5000 + q_len as u64);
    }
    // One token, 16 kv heads x 32 groups = 512 workgroups already: splits only by chunk size.
    let m = DECODE_MIN_CHUNK;
    for (kv_len, expect_splits) in [(m - 1, 1), (m, 1), (m + 1, 2)] {
        let mut c = Case::new(1, kv_len, 4, 1, HD);
        c.kind = Some(Kind::Decode);
        let dims = dims_of(&c);
        let plan = c.op().plan(&ctx, dims, c.dtype).unwrap();
        assert_eq!(plan.splits, expect_splits, "kv_len {kv_len}");
        check(c, 5100 + kv_len as u64);
    }
    // Prefill on a CPU adapter: one pass up to the loop cap, split-KV passes beyond it. GPUs
    // have no loop caps, so these thresholds run on CPU adapters only.
    if let Some(cap) = llama_kernels::ops::attention::loop_cap_keys(&ctx, HD) {
        for (kv_len, split) in [(cap - 1, false), (cap, false), (cap + 1, true)] {
            let mut c = Case::new(20, kv_len, 2, 1, HD);
            c.window = 3000;
            c.kind = Some(Kind::Prefill);
            let plan = c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap();
            assert_eq!(plan.variant.kind, Kind::Prefill);
            assert_eq!(plan.variant.split_kv, split, "kv_len {kv_len}");
            assert_eq!(plan.splits, if split { 2 } else { 1 });
            check(c, 5050 + kv_len as u64);
        }
        // PrefillKeys (the default here) at its own cap, causal without a window, so that the
        // last rows' loops run over every key: one pass at the cap, split passes beyond it.
        let kcap = llama_kernels::ops::attention::prefill_keys_loop_cap_keys(&ctx, HD)
            .expect("a CPU adapter caps every loop");
        for (kv_len, split) in [(kcap, false), (kcap + 1, true)] {
            let c = Case::new(20, kv_len, 2, 1, HD);
            let plan = c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap();
            assert_eq!(plan.variant.kind, Kind::PrefillKeys);
            assert_eq!(plan.variant.split_kv, split, "kv_len {kv_len}");
            assert_eq!(plan.splits, if split { 2 } else { 1 });
            check(c, 5060 + kv_len as u64);
        }
    }
    // Enough kv heads that the target is reached with one split.
    let heads = DECODE_TARGET_WORKGROUPS;
    let mut c = Case::new(1, 1000, heads, heads, 4);
    c.kind = Some(Kind::Decode);
    assert_eq!(c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap().splits, 1);
    // DecodeKeys: chunks of KEYS_TRIPS trips of 4 / kr keys, at the cap -1, =, +1 (one row per
    // workgroup: 4 keys a trip; the last trip of cap - 1 is partial), one partial per split.
    let m = KEYS_TRIPS * 4;
    for (kv_len, expect_splits) in [(m - 1, 1), (m, 1), (m + 1, 2)] {
        let mut c = Case::new(1, kv_len, 2, 2, HD);
        c.kind = Some(Kind::DecodeKeys);
        let plan = c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap();
        assert_eq!(plan.splits, expect_splits, "kv_len {kv_len}");
        assert_eq!(plan.lanes, 1);
        check(c, 5400 + kv_len as u64);
    }
    // DecodeKeys rows per workgroup: rows = g (one token) at KEYS_MAX_ROWS -1, =, +1.
    for rows in [KEYS_MAX_ROWS - 1, KEYS_MAX_ROWS, KEYS_MAX_ROWS + 1] {
        let mut c = Case::new(1, 77, rows, 1, HD);
        c.kind = Some(Kind::DecodeKeys);
        c.sinks = true;
        let plan = c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap();
        assert_eq!(
            plan.rows_per_wg,
            rows.next_power_of_two().min(KEYS_MAX_ROWS)
        );
        assert_eq!(plan.variant.kr as usize, plan.rows_per_wg);
        assert_eq!(plan.row_blocks, rows.div_ceil(plan.rows_per_wg));
        check(c, 5500 + rows as u64);
    }
    // DecodeKeys' chunk (every adapter): a forced single split is raised to two beyond it; the
    // window keeps the reference short.
    {
        let kcap = llama_kernels::ops::attention::keys_chunk_keys(1);
        for (kv_len, splits) in [(kcap - 1, 1), (kcap, 1), (kcap + 1, 2)] {
            let mut c = Case::new(1, kv_len, 1, 1, HD);
            c.kind = Some(Kind::DecodeKeys);
            c.splits = Some(1);
            c.window = 300;
            let plan = c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap();
            assert_eq!(plan.splits, splits, "kv_len {kv_len}");
            check(c, 5600 + kv_len as u64);
        }
    }
    // Rows per workgroup: 64 (prefill) and 32 (decode) at -1, =, +1.
    for (kind, wg) in [(Kind::Prefill, 64usize), (Kind::Decode, 32)] {
        for rows in [wg - 1, wg, wg + 1] {
            // rows = q_len * g with g = 1.
            let mut c = Case::new(rows, rows + 5, 1, 1, HD);
            c.kind = Some(kind);
            assert_eq!(
                c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap().row_blocks,
                rows.div_ceil(wg)
            );
            check(c, 5200 + rows as u64);
            // rows = q_len * g with one token.
            let mut c = Case::new(1, 90, rows, 1, HD);
            c.kind = Some(kind);
            check(c, 5300 + rows as u64);
        }
    }
}

/// A prefill that runs split over the keys: past the loop cap on CPU adapters (where the split
/// is the dispatcher's own choice), forced into two splits on GPUs, which have no loop cap.
fn prefill_split_case(ctx: &llama_kernels::Context) -> (usize, Option<u32>) {
    match llama_kernels::ops::attention::loop_cap_keys(ctx, HD) {
        Some(cap) => (cap + 50, None),
        None => (300, Some(2)),
    }
}

fn dims_of(c: &Case) -> llama_kernels::ops::attention::Dims {
    llama_kernels::ops::attention::Dims {
        batch: c.batch,
        q_len: c.q_len,
        kv_len: c.kv_len,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
    }
}

/// Every tile kernel and dtype builds its pipelines on this adapter with the 16 KiB tiles it
/// would not pick (a device with WebGPU's default limits picks them), at head_dim `HD` (with
/// `LLAMA_KERNELS_LONG_TESTS=1` also DecodeKeys with each row count, at 128 too, and with the
/// 32 KiB tiles as well: by default `every_kernel_dtype_and_mode` builds and runs those, the same
/// variants). Building a
/// pipeline unrolls its head loops, so at 128 this alone takes lavapipe longer than the tests
/// that run every real head size; all head_dims of every variant go through naga in
/// tests/portability.rs.
#[test]
fn every_variant_compiles() {
    use llama_kernels::ops::attention::{tile_v4_for, Variant};
    let ctx = ctx();
    let (hds, limits): (Vec<usize>, &[u32]) = if long_tests() {
        (vec![HD, 128], &[16384, 32768])
    } else {
        (vec![HD], &[16384])
    };
    let kinds = [
        (Kind::Prefill, false, 1),
        (Kind::Prefill, true, 1),
        (Kind::Decode, true, 1),
        (Kind::DecodeKeys, true, 1),
        (Kind::DecodeKeys, true, 2),
        (Kind::DecodeKeys, true, 4),
    ];
    let mut n = 0;
    for hd in hds {
        for (kind, split_kv, kr) in kinds {
            // DecodeKeys and the merges use no K/V tile (their code is the same at either tile
            // size; only the key differs), so by default only the tile kernels run here.
            if kind == Kind::DecodeKeys && !long_tests() {
                continue;
            }
            for dtype in DType::ALL {
                for &limit in limits {
                    let v = Variant {
                        kind,
                        dtype,
                        kv: llama_kernels::KvFormat::from_dtype(dtype),
                        tile_v4: tile_v4_for(limit),
                        hd4: hd as u32 / 4,
                        split_kv,
                        kr,
                        f16: false,
                        native_f16: false,
                        sg_min: 0,
                        masks: false,
                        int8_dot: false,
                    };
                    for key in v.keys() {
                        ctx.kernel("test", &key)
                            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
                        n += 1;
                    }
                }
            }
        }
    }
    assert!(n >= 3 * 3 * limits.len(), "{n} pipelines");
}

/// Rows that see no key output exactly 0 (not NaN), with and without sinks, in both kernels:
/// causal queries before the first key (negative q_offset) and decode splits that are empty.
#[test]
fn fully_masked_rows_are_zero() {
    for kind in FORCED {
        for sinks in [false, true] {
            for dtype in DType::ALL {
                // q_len 6 over kv_len 3: default q_offset -3, rows 0..3 see nothing.
                let mut c = Case::new(6, 3, 4, 2, HD);
                c.kind = Some(kind);
                c.sinks = sinks;
                c.dtype = dtype;
                let d = data(&c, 6000, 1.0);
                let got = gpu(&c, &d);
                let w = want(&c, &d);
                let row = c.n_heads * c.head_dim;
                assert!(
                    got[..3 * row].iter().all(|&x| x == 0.0),
                    "{c:?}: {:?}",
                    &got[..8]
                );
                let cmp = compare(&got, &w);
                assert!(cmp.passes(tol(dtype)), "{c:?}: {cmp}");
            }
        }
    }
    // Window 1 with many splits: most chunks of every row are empty.
    let mut c = Case::new(2, 500, 4, 1, HD);
    c.window = 1;
    c.kind = Some(Kind::Decode);
    c.splits = Some(40);
    check(c, 6100);
    // Windows at kv_len - 1, kv_len and far beyond (i32::MAX with a very negative offset must
    // not overflow the position arithmetic).
    for (window, q_offset) in [
        (99u32, None),
        (100, None),
        (i32::MAX as u32, Some(-1_000_000_000i64)),
    ] {
        for kind in FORCED {
            let mut c = Case::new(3, 100, 4, 2, HD);
            c.window = window;
            c.q_offset = q_offset;
            c.causal = false;
            c.kind = Some(kind);
            check(c, 6300);
        }
    }
    // Explicit negative offset: every query sits before the first key.
    let mut c = Case::new(4, 10, 2, 2, HD);
    c.q_offset = Some(-20);
    c.window = 3;
    for kind in FORCED {
        c.kind = Some(kind);
        let d = data(&c, 6200, 1.0);
        let got = gpu(&c, &d);
        assert!(got.iter().all(|&x| x == 0.0), "{c:?}");
    }
}

/// Two-sided windows (FlashAttention's `window_size`) and chunked local attention (Llama 4), on
/// every kernel and dtype at `HD`: bidirectional windows (ModernBERT), one-sided bounds, chunks
/// with splits that cross chunk borders, chunks before the first key, and bounds at the i32
/// edges. The causal window W is the two-sided window (W - 1, 0), bit for bit.
#[test]
fn two_sided_windows_and_chunks() {
    // (q_len, kv_len, causal, left, right, chunk, q_offset, splits)
    type M = (
        usize,
        usize,
        bool,
        Option<u32>,
        Option<u32>,
        u32,
        Option<i64>,
        Option<u32>,
    );
    let masks: [M; 10] = [
        (3, 150, false, Some(20), Some(20), 0, Some(60), None),
        (3, 150, false, None, Some(5), 0, Some(10), Some(7)),
        (3, 150, false, Some(0), Some(0), 0, None, None),
        (3, 150, true, Some(30), None, 0, None, Some(5)),
        (3, 150, true, None, None, 16, None, None),
        (3, 300, true, None, None, 64, Some(200), Some(9)),
        (3, 150, false, Some(10), Some(3), 32, Some(-40), None),
        (3, 150, true, Some(7), None, 40, None, Some(4)),
        (
            2,
            100,
            false,
            Some(i32::MAX as u32),
            Some(u32::MAX),
            0,
            Some(-1_000_000_000),
            None,
        ),
        (
            2,
            100,
            false,
            None,
            None,
            1 << 29,
            Some(-1_000_000_000),
            None,
        ),
    ];
    let mut i = 0;
    for kind in FORCED {
        for (q_len, kv_len, causal, left, right, chunk, q_offset, splits) in masks {
            for q_len in [q_len, 24] {
                if kind != Kind::Prefill && q_len > 8 {
                    continue;
                }
                i += 1;
                let mut c = Case::new(q_len, kv_len, 4, 2, HD);
                c.dtype = DType::ALL[i % 3];
                c.kind = Some(kind);
                c.causal = causal;
                c.window_left = left;
                c.window_right = right;
                c.chunk = chunk;
                c.q_offset = q_offset.map(|o| o.min(kv_len as i64 - q_len as i64));
                c.splits = splits;
                c.sinks = i % 4 == 1;
                check(c, 7000 + i as u64);
            }
        }
    }
    // The causal window W and the two-sided (W - 1, 0) are one mask.
    for kind in FORCED {
        let mut a = Case::new(2, 200, 4, 2, HD);
        a.kind = Some(kind);
        a.window = 33;
        let mut b = a;
        b.window = 0;
        b.window_left = Some(32);
        b.window_right = Some(0);
        let d = data(&a, 7500, 1.0);
        assert_eq!(gpu(&a, &d), gpu(&b, &d), "{kind:?}");
    }
}

/// ALiBi (BLOOM's slopes) on every kernel and dtype at `HD`: 6 query heads (not a power of two:
/// heads 4 and 5 take the odd powers of the next base) in GQA groups of 3 and MHA, causal,
/// non-causal with a two-sided window, chunked prefill offsets, splits, sinks and a softcap
/// beside it. The bias changes the result: the reference without it is far off. Part of
/// [`every_kernel_dtype_and_mode`]: ALiBi is a run-time parameter, so on that test's context it
/// runs on the pipelines that test built (as a test of its own, on whichever context it got, it
/// compiled most of them again).
fn alibi_on_every_kernel() {
    let mut i = 0;
    for kind in FORCED {
        let q_len = if matches!(kind, Kind::Prefill | Kind::PrefillKeys) {
            20
        } else {
            3
        };
        for dtype in DType::ALL {
            for (n_kv, mode) in [(2, 0), (6, 1), (2, 2), (6, 7)] {
                i += 1;
                let mut c = Case::new(q_len, 150, 6, n_kv, HD);
                c.dtype = dtype;
                c.kind = Some(kind);
                c.alibi = true;
                let mut c = with_mode(c, mode);
                if mode == 1 {
                    c.window_left = Some(40);
                    c.window_right = Some(9);
                }
                if i % 3 == 0 {
                    c.splits = Some(5);
                }
                let d = data(&c, 8000 + i, 1.0);
                let plain = want(&Case { alibi: false, ..c }, &d);
                let want = want(&c, &d);
                let off = compare(&plain.iter().map(|&x| x as f32).collect::<Vec<_>>(), &want);
                assert!(off.nmse > 1e-3, "{c:?}: ALiBi changes nothing ({off})");
                let cmp = compare(&gpu(&c, &d), &want);
                let limit = match c.softcap > 0.0 {
                    true => softcap_tolerance(&ctx(), dtype),
                    false => tol(dtype),
                };
                assert!(cmp.passes(limit), "{c:?}: {cmp}");
            }
        }
    }
    // BLOOM's slopes for 12 heads: 2^-1 .. 2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    let s = reference::alibi_slopes(12);
    for (h, &e) in [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 0.5, 1.5, 2.5, 3.5]
        .iter()
        .enumerate()
    {
        assert!((s[h] - 2f64.powf(-e)).abs() < 1e-15, "head {h}: {}", s[h]);
    }
    assert_eq!(reference::alibi_slopes(1), vec![2f64.powi(-8)]);
}

/// q scaled x30: logits in the hundreds overflow a naive exp; the online softmax must not. The
/// logit scale 1/sqrt(head_dim) makes their size independent of head_dim, so `HD` shows it (with
/// `LLAMA_KERNELS_LONG_TESTS=1`, head_dim 128 too).
#[test]
fn large_logits_do_not_overflow() {
    let hds = if long_tests() {
        vec![HD, 128]
    } else {
        vec![HD]
    };
    for (i, (kind, hd)) in FORCED
        .into_iter()
        .flat_map(|k| hds.iter().map(move |&hd| (k, hd)))
        .enumerate()
    {
        for dtype in DType::ALL {
            for softcap in [0.0f32, 30.0] {
                let mut c = Case::new(9, 300, 8, 2, hd);
                c.kind = Some(kind);
                c.dtype = dtype;
                c.softcap = softcap;
                c.sinks = softcap > 0.0;
                let d = data(&c, 7000 + i as u64, 30.0);
                let got = gpu(&c, &d);
                assert!(
                    got.iter().all(|x| x.is_finite()),
                    "{c:?}: non-finite output"
                );
                let w = want(&c, &d);
                let cmp = compare(&got, &w);
                // Near-one-hot softmax: logit rounding (x30) is amplified; still close.
                let t = match softcap > 0.0 {
                    true => softcap_tolerance(&ctx(), dtype),
                    false => tol(dtype),
                }
                .max(1e-8);
                assert!(cmp.passes(t), "{c:?}: {cmp}");
            }
        }
    }
}

/// Decoding the last token equals the last row of the full prefill (both kernels on the GPU), in
/// each dtype (at head_dim `HD`: the property does not depend on the head size, and the kernels at
/// real sizes run in `every_kernel_at_real_head_dims`). With `LLAMA_KERNELS_LONG_TESTS=1`, at the
/// real head size that `MODELS` runs in each dtype.
#[test]
fn decode_equals_last_row_of_prefill() {
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        // Llama-3-8B heads (32 over 8), with and without sinks and window.
        let n = 333;
        let hd = if long_tests() {
            model_for(dtype).head_dim
        } else {
            HD
        };
        let mut full = Case::new(n, n, 32, 8, hd);
        full.dtype = dtype;
        full.kind = Some(Kind::Prefill);
        full.window = [0, 100, 0][i];
        full.sinks = i == 2;
        let d = data(&full, 8000 + i as u64, 1.0);
        let all = gpu(&full, &d);
        let row = full.n_heads * full.head_dim;
        let mut last = full;
        last.q_len = 1;
        last.kind = Some(Kind::Decode);
        let dl = Data {
            q: d.q[(n - 1) * row..].to_vec(),
            k: d.k.clone(),
            v: d.v.clone(),
            sinks: d.sinks.clone(),
        };
        let one = gpu(&last, &dl);
        let want_row: Vec<f64> = all[(n - 1) * row..].iter().map(|&x| x as f64).collect();
        let cmp = compare(&one, &want_row);
        assert!(cmp.passes(tol(dtype)), "{dtype}: {cmp}");
    }
}

/// Split-KV results do not depend on the number of splits (beyond f32 rounding), and a given
/// split count is bitwise repeatable.
#[test]
fn split_count_does_not_matter() {
    // PrefillKeys honours a forced count like decode (one pass at 1).
    for (kind, q_len, counts) in [
        (Kind::Decode, 2, &[2u32, 3, 7, 16, 64, 999, 1000, 1500][..]),
        (Kind::PrefillKeys, 20, &[2u32, 3, 7, 64, 1500][..]),
    ] {
        let mut c = Case::new(q_len, 1000, 8, 2, 64);
        c.kind = Some(kind);
        c.sinks = true;
        let d = data(&c, 9000, 1.0);
        c.splits = Some(1);
        let base = gpu(&c, &d);
        let base64: Vec<f64> = base.iter().map(|&x| x as f64).collect();
        for &s in counts {
            c.splits = Some(s);
            let a = gpu(&c, &d);
            let cmp = compare(&a, &base64);
            assert!(cmp.passes(1e-12), "{kind:?} splits {s}: {cmp}");
            let b = gpu(&c, &d);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{kind:?} splits {s}: two runs differ"
            );
        }
        check(c, 9000);
    }
}

/// GQA equals MHA with each K/V head repeated g times.
#[test]
fn gqa_equals_mha_with_repeated_kv() {
    for kind in FORCED {
        let (g, n_kv, hd, q_len, kv_len) = (4, 2, 64, 20, 150);
        let mut c = Case::new(q_len, kv_len, g * n_kv, n_kv, hd);
        c.kind = Some(kind);
        let d = data(&c, 9100, 1.0);
        let gqa = gpu(&c, &d);
        let rep = |x: &[f32]| -> Vec<f32> {
            let mut o = Vec::new();
            for j in 0..kv_len {
                for h in 0..g * n_kv {
                    let s = (j * n_kv + h / g) * hd;
                    o.extend_from_slice(&x[s..s + hd]);
                }
            }
            o
        };
        let mut m = Case::new(q_len, kv_len, g * n_kv, g * n_kv, hd);
        m.kind = Some(kind);
        let dm = Data {
            q: d.q.clone(),
            k: rep(&d.k),
            v: rep(&d.v),
            sinks: d.sinks.clone(),
        };
        let mha = gpu(&m, &dm);
        let cmp = compare(&gqa, &mha.iter().map(|&x| x as f64).collect::<Vec<_>>());
        assert!(cmp.passes(1e-13), "{kind:?}: {cmp}");
    }
}

/// Prefill at q_len = kv_len = 8192: a q_len x kv_len f32 score matrix (256 MiB) could not even
/// be bound on this adapter; the kernel streams K/V tiles instead. Checked on sampled rows.
#[test]
fn prefill_8192_without_score_matrix() {
    let ctx = ctx();
    let n = 8192;
    let mut c = Case::new(n, n, 2, 1, HD);
    c.kind = None;
    assert!(
        (n * n * 4) as u64 > ctx.limits().max_storage_buffer_binding_size,
        "this adapter could bind a full score matrix; the test proves nothing here"
    );
    let d = data(&c, 9200, 1.0);
    let t0 = std::time::Instant::now();
    let got = gpu(&c, &d);
    eprintln!(
        "prefill 8192x8192, 2 heads over 1, head_dim 32: {:?}",
        t0.elapsed()
    );
    let q: Vec<f64> = rounded(&d.q, c.dtype);
    let k: Vec<f64> = rounded(&d.k, c.dtype);
    let v: Vec<f64> = rounded(&d.v, c.dtype);
    let mut want_rows = Vec::new();
    let mut got_rows = Vec::new();
    for &t in &[0usize, 1, 63, 64, 4095, 4096, 7000, 8191] {
        for h in 0..c.n_heads {
            want_rows.extend(reference::attention_row(
                &q,
                &k,
                &v,
                None,
                c.dims(),
                &c.ref_opts(),
                0,
                t,
                h,
            ));
            let s = (t * c.n_heads + h) * c.head_dim;
            got_rows.extend_from_slice(&got[s..s + c.head_dim]);
        }
    }
    let cmp = compare(&got_rows, &want_rows);
    assert!(cmp.passes(tol(c.dtype)), "{cmp}");
    assert!(got.iter().all(|x| x.is_finite()));
}

/// q/k/v as strided views into one fused QKV buffer ([q_len, n_heads + 2 n_kv_heads, head_dim]).
#[test]
fn fused_qkv_views() {
    let ctx = ctx();
    let (q_len, nh, nkv, hd) = (12, 4, 2, 32);
    let w = nh + 2 * nkv;
    let mut rng = Rng::new(9300);
    let all = rng.vec(q_len * w * hd, 1.0);
    let buf = ctx.upload(&all, &[all.len()]).unwrap();
    let st = [w * hd, hd, 1];
    let q = Tensor::with_strides(buf.buffer(), 0, &[q_len, nh, hd], &st, DType::F32);
    let k = Tensor::with_strides(buf.buffer(), nh * hd, &[q_len, nkv, hd], &st, DType::F32);
    let v = Tensor::with_strides(
        buf.buffer(),
        (nh + nkv) * hd,
        &[q_len, nkv, hd],
        &st,
        DType::F32,
    );
    let out = nan_output(&ctx, &[q_len, nh, hd], DType::F32);
    let pick = |off: usize, n: usize| -> Vec<f64> {
        (0..q_len)
            .flat_map(|t| {
                all[t * w * hd + off * hd..][..n * hd]
                    .iter()
                    .map(|&x| x as f64)
            })
            .collect()
    };
    let dims = reference::Dims {
        batch: 1,
        q_len,
        kv_len: q_len,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    };
    let want = reference::attention(
        &pick(0, nh),
        &pick(nh, nkv),
        &pick(nh + nkv, nkv),
        None,
        dims,
        &Default::default(),
    );
    for kind in FORCED {
        let op = Attention {
            kind: Some(kind),
            ..Default::default()
        };
        op.run(&ctx, &q, &k, &v, None, &out).unwrap();
        assert_close(
            &ctx,
            &out,
            &want,
            tol(DType::F32),
            &format!("fused qkv {kind:?}"),
        );
    }
}

#[test]
fn every_validation_rule_has_an_error() {
    let ctx = ctx();
    let t = |shape: &[usize]| ctx.empty(shape, DType::F32).unwrap();
    let a = Attention::default();
    let q = t(&[4, 8, 16]);
    let k = t(&[6, 2, 16]);
    let v = t(&[6, 2, 16]);
    let out = t(&[4, 8, 16]);
    let run =
        |op: Attention, q: &Tensor, k: &Tensor, v: &Tensor, s: Option<&Tensor>, o: &Tensor| {
            op.run(&ctx, q, k, v, s, o)
        };
    // The valid call works.
    run(a, &q, &k, &v, None, &out).unwrap();
    expect_err(
        run(
            a,
            &t(&[4, 8, 16]),
            &t(&[6, 3, 16]),
            &t(&[6, 3, 16]),
            None,
            &out,
        ),
        "attention",
        is_shape,
        "n_heads 8 is not divisible by n_kv_heads 3",
    );
    expect_err(
        run(a, &q, &t(&[6, 2, 12]), &v, None, &out),
        "attention",
        is_shape,
        "head_dim mismatch: q has 16, k has 12, v has 16",
    );
    expect_err(
        run(a, &q, &k, &t(&[6, 2, 20]), None, &out),
        "attention",
        is_shape,
        "head_dim mismatch: q has 16, k has 16, v has 20",
    );
    expect_err(
        run(
            Attention {
                q_offset: Some(3),
                ..a
            },
            &q,
            &k,
            &v,
            None,
            &out,
        ),
        "attention",
        is_shape,
        "q_offset 3 puts the last query at position 6 past the last key 5 (kv_len 6)",
    );
    for hd in [6usize, 260] {
        expect_err(
            run(
                a,
                &t(&[1, 1, hd]),
                &t(&[2, 1, hd]),
                &t(&[2, 1, hd]),
                None,
                &t(&[1, 1, hd]),
            ),
            "attention",
            is_shape,
            &format!("unsupported head_dim {hd}: must be a multiple of 4 and <= 256"),
        );
    }
    // Views outside their buffers.
    let past = Tensor::new(k.buffer(), 4, &[6, 2, 16], DType::F32);
    expect_err(
        run(a, &q, &past, &v, None, &out),
        "attention",
        is_bounds,
        "k view (offset 4, shape [6, 2, 16], strides [32, 16, 1], f32) ends at byte 784 but its buffer has 768 bytes",
    );
    let past_out = Tensor::with_strides(out.buffer(), 0, &[4, 8, 16], &[256, 16, 1], DType::F32);
    expect_err(
        run(a, &q, &k, &v, None, &past_out),
        "attention",
        is_bounds,
        "out view",
    );
    expect_err(
        run(a, &t(&[8, 16]), &t(&[6, 16]), &t(&[6, 16]), None, &t(&[8, 16])),
        "attention",
        is_shape,
        "q must be [q_len, n_heads, head_dim] or [batch, q_len, n_heads, head_dim], got shape [8, 16]",
    );
    expect_err(
        run(a, &q, &t(&[1, 6, 2, 16]), &v, None, &out),
        "attention",
        is_shape,
        "must have q's rank 3",
    );
    expect_err(
        run(
            a,
            &t(&[2, 4, 8, 16]),
            &t(&[3, 6, 2, 16]),
            &t(&[3, 6, 2, 16]),
            None,
            &t(&[2, 4, 8, 16]),
        ),
        "attention",
        is_shape,
        "batch mismatch: q has 2, k has 3, v has 3",
    );
    expect_err(
        run(a, &q, &k, &t(&[7, 2, 16]), None, &out),
        "attention",
        is_shape,
        "must have the same shape",
    );
    expect_err(
        run(a, &q, &k, &v, None, &t(&[4, 8, 8])),
        "attention",
        is_shape,
        "out has shape [4, 8, 8] but q has [4, 8, 16]",
    );
    let h = ctx.empty(&[6, 2, 16], DType::F16).unwrap();
    expect_err(
        run(a, &q, &h, &v, None, &out),
        "attention",
        is_dtype,
        "k is f16 but must be f32",
    );
    expect_err(
        run(a, &q, &k, &v, Some(&t(&[7])), &out),
        "attention",
        is_shape,
        "sinks has shape [7] but must be [8]",
    );
    expect_err(
        run(
            a,
            &q,
            &k,
            &v,
            Some(&ctx.empty(&[8], DType::F16).unwrap()),
            &out,
        ),
        "attention",
        is_dtype,
        "sinks is f16 but must be f32",
    );
    expect_err(
        run(
            a,
            &q,
            &k,
            &v,
            None,
            &Tensor::new(q.buffer(), 0, &[4, 8, 16], DType::F32),
        ),
        "attention",
        is_alias,
        "out shares a buffer with q",
    );
    // Options out of range.
    let bad_options = [
        (
            Attention {
                scale: Some(f32::NAN),
                ..a
            },
            "scale must be finite",
        ),
        (
            Attention { softcap: -1.0, ..a },
            "softcap must be finite and >= 0 (0 = none), got -1",
        ),
        (
            Attention {
                splits: Some(0),
                ..a
            },
            "splits must be in 1..=65535, got 0",
        ),
        (
            Attention {
                window: 8,
                window_left: Some(7),
                ..a
            },
            "window 8 and window_left Some(7) both set",
        ),
        (
            Attention {
                chunk_size: (1 << 29) + 1,
                ..a
            },
            "chunk_size 536870913 exceeds 536870912",
        ),
    ];
    for (op, needle) in bad_options {
        expect_err(
            run(op, &q, &k, &v, None, &out),
            "attention",
            is_param,
            needle,
        );
    }
}

/// A device created with WebGPU's default limits (16 KiB of workgroup memory): the tiles shrink
/// to fit and the results still match, for every kernel and dtype.
#[test]
fn fits_webgpu_default_limits() {
    let ctx0 = ctx();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: wgpu::Limits::default(),
        ..Default::default()
    }))
    .expect("device");
    let small = llama_kernels::Context::from_device(&device, &queue);
    assert_eq!(small.limits().max_compute_workgroup_storage_size, 16384);
    // Every kernel x dtype at head_dim `HD` (run at one dtype per kernel, below). With `LLAMA_KERNELS_LONG_TESTS=1` also the tiled
    // kernels at real head sizes whose 16 KiB tiles hold fewer keys than 32 KiB ones (Gemma-7B's
    // 256 in f32: 8 keys, Phi-3-mini's 96 in bf16: 21), and every kernel x dtype at head_dim 64
    // and 256 (each a pipeline this second device compiles again).
    let mut cases: Vec<(Kind, DType, usize)> = FORCED
        .into_iter()
        .flat_map(|k| DType::ALL.map(|d| (k, d, HD)))
        .collect();
    if long_tests() {
        cases.extend([
            (Kind::Prefill, DType::F32, 256),
            (Kind::Decode, DType::BF16, 96),
        ]);
        for (j, (kind, dtype)) in FORCED
            .into_iter()
            .flat_map(|k| DType::ALL.map(|d| (k, d)))
            .enumerate()
        {
            cases.push((kind, dtype, [64, 256][j % 2]));
        }
    }
    for (i, (kind, dtype, hd)) in cases.into_iter().enumerate() {
        let mut c = with_mode(Case::new(70, 300, 8, 2, hd), i);
        c.dtype = dtype;
        c.kind = Some(kind);
        let plan = c.op().plan(&small, dims_of(&c), dtype).unwrap();
        assert_eq!(plan.variant.tile_v4, 512);
        assert_eq!(plan.bk as usize, (512 / (hd / 4)).min(64));
        // Every pipeline is created under the default limits (wgpu checks its workgroup memory
        // there); by default each kernel runs at one dtype of the three (a different one per
        // kernel), since every run on this second device compiles its pipeline again.
        assert!(
            c.op().prepare(&small, &[dims_of(&c)], dtype).unwrap() > 0,
            "{c:?}"
        );
        let n = DType::ALL.len();
        if !long_tests() && i % n != (i / n) % n {
            continue;
        }
        let d = data(&c, 9500 + i as u64, 1.0);
        let got = gpu_on(&small, &c, &d);
        let cmp = compare(&got, &want(&c, &d));
        assert!(cmp.passes(tol(dtype)), "{c:?}: {cmp}");
        // Same answer as the 32 KiB tiles up to f32 arithmetic and storage rounding.
        let big = gpu_on(&ctx0, &c, &d);
        let cmp = compare(&got, &big.iter().map(|&x| x as f64).collect::<Vec<_>>());
        assert!(cmp.passes(tol(dtype)), "{c:?} vs 32 KiB tiles: {cmp}");
    }
}

/// DecodeKeys reads K/V with 16-byte loads: forced on rows that do not start on a 16-byte
/// boundary it is an error naming the rule; the dispatcher falls back to Decode for them. The
/// same for PrefillKeys and, where the adapter has SUBGROUP, PrefillSubgroup.
#[test]
fn decode_keys_needs_aligned_rows() {
    let ctx = ctx();
    // Both CPU-adapter kernels and the subgroup prefill read K/V through 16-byte views: forced
    // on unaligned rows they are refused; by default those rows take Decode / Prefill.
    let mut kinds = vec![(1, Kind::DecodeKeys), (20, Kind::PrefillKeys)];
    if ctx.caps().subgroups {
        kinds.push((20, Kind::PrefillSubgroup));
    }
    for (q_len, kind) in kinds {
        let c = Case::new(q_len, 50, 4, 2, HD);
        let d = data(&c, 9900, 1.0);
        let (qs, ks) = c.shapes();
        // GUARD_BEFORE (70) f32 elements put the views 24 bytes past a 256-byte window start.
        let q = upload_guarded(&ctx, &d.q, &qs, c.dtype);
        let k = upload_guarded(&ctx, &d.k, &ks, c.dtype);
        let v = upload_guarded(&ctx, &d.v, &ks, c.dtype);
        let out = nan_output(&ctx, &qs, c.dtype);
        assert!(!llama_kernels::ops::attention::kv_rows_aligned(
            &ctx, &k, &v
        ));
        let forced = Attention {
            kind: Some(kind),
            ..Default::default()
        };
        let e = forced
            .run(&ctx, &q, &k, &v, None, &out)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("attention")
                && e.contains(&format!("{kind:?} kernel needs 16-byte aligned K/V rows")),
            "{e}"
        );
        Attention::default()
            .run(&ctx, &q, &k, &v, None, &out)
            .unwrap();
        let cmp = compare(&ctx.read_f32(&out).unwrap(), &want(&c, &d));
        assert!(cmp.passes(tol(c.dtype)), "{cmp}");
        if kind == Kind::PrefillSubgroup {
            // Its aligned runs: prefill_subgroup_kernel (head_dim 64, no specialisation here).
            continue;
        }
        // Aligned views of the same data take the CPU-adapter kernel by default and agree.
        let k2 = upload_at(&ctx, &d.k, &ks, c.dtype, ALIGNED_GUARD);
        let v2 = upload_at(&ctx, &d.v, &ks, c.dtype, ALIGNED_GUARD);
        assert!(llama_kernels::ops::attention::kv_rows_aligned(
            &ctx, &k2, &v2
        ));
        forced.run(&ctx, &q, &k2, &v2, None, &out).unwrap();
        let cmp = compare(&ctx.read_f32(&out).unwrap(), &want(&c, &d));
        assert!(cmp.passes(tol(c.dtype)), "{cmp}");
    }
}

/// Run `c` like `gpu_on`, with `Attention::f16_arithmetic`.
fn gpu_f16_arithmetic(ctx: &llama_kernels::Context, c: &Case, d: &Data) -> Vec<f32> {
    let (qs, ks) = c.shapes();
    let q = upload_at(ctx, &d.q, &qs, c.dtype, GUARD_BEFORE);
    let k = upload_at(ctx, &d.k, &ks, c.dtype, GUARD_BEFORE);
    let v = upload_at(ctx, &d.v, &ks, c.dtype, GUARD_BEFORE);
    let sinks = c
        .sinks
        .then(|| upload_guarded(ctx, &d.sinks, &[c.n_heads], DType::F32));
    let out = nan_output(ctx, &qs, c.dtype);
    let op = Attention {
        f16_arithmetic: true,
        ..c.op()
    };
    op.run(ctx, &q, &k, &v, sinks.as_ref(), &out)
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert_guards(ctx, &out, &format!("{c:?}"));
    ctx.read_f32(&out).unwrap()
}

/// The opt-in f16-arithmetic prefill (`Attention::f16_arithmetic`, its own `enable f16` module),
/// forced on this adapter (lavapipe has `SHADER_F16`): every storage dtype x masking mode, in one
/// pass and split over the keys, with the group size rotating, against the f64 reference with
/// its own limit (`F16_ARITHMETIC_NMSE`); one case at Llama-3-8B's head size; rows that see no
/// key output exactly 0. Its results differ from the f32 path's (checked in f32 storage), so the
/// f16 module is what ran.
#[test]
fn prefill_f16_arithmetic() {
    use llama_kernels::ops::attention::F16_ARITHMETIC_NMSE;
    let ctx = ctx();
    assert!(
        ctx.caps().shader_f16,
        "this adapter lacks SHADER_F16; the f16-arithmetic prefill would go untested"
    );
    let (split_len, split_force) = prefill_split_case(&ctx);
    let mut i = 0;
    let mut worst = 0.0f64;
    for (q_len, kv_len, split) in [(20, 150, false), (12, split_len, true)] {
        for dtype in DType::ALL {
            for mode in 0..8 {
                i += 1;
                let g = GROUPS[i % 6];
                let n_kv = if g >= 8 { 1 } else { 1 + i % 2 };
                let mut c = Case::new(q_len, kv_len, g * n_kv, n_kv, HD);
                c.dtype = dtype;
                c.kind = Some(Kind::Prefill);
                c.splits = if split { split_force } else { None };
                c.batch = if i % 5 == 2 { 2 } else { 1 };
                let c = with_mode(c, mode);
                let op = Attention {
                    f16_arithmetic: true,
                    ..c.op()
                };
                let v = op.plan(&ctx, dims_of(&c), dtype).unwrap().variant;
                assert!(v.f16 && v.split_kv == split, "{c:?}: {v:?}");
                let d = data(&c, 7000 + i as u64, 1.0);
                let got = gpu_f16_arithmetic(&ctx, &c, &d);
                let cmp = compare(&got, &want(&c, &d));
                assert!(
                    cmp.passes(tol(dtype).max(F16_ARITHMETIC_NMSE)),
                    "{c:?}: {cmp}"
                );
                worst = worst.max(cmp.nmse);
                // The f16 module ran (its results differ from the f32 path's): checked in f32
                // storage, in one pass and split (the module choice does not depend on the
                // storage dtype, and each f32 comparison compiles the f32 pipeline).
                if mode == 0 && dtype == DType::F32 {
                    assert_ne!(
                        got,
                        gpu(&c, &d),
                        "{c:?}: f16 arithmetic gave the f32 result"
                    );
                }
            }
        }
    }
    eprintln!("f16 arithmetic: worst NMSE {worst:.2e} (limit {F16_ARITHMETIC_NMSE:.0e})");
    // Llama-3-8B's head layout (one kv head's group of 4 heads), f16 storage.
    let mut c = Case::new(24, 200, 4, 1, 128);
    c.dtype = DType::F16;
    c.kind = Some(Kind::Prefill);
    c.sinks = true;
    let d = data(&c, 7100, 1.0);
    let cmp = compare(&gpu_f16_arithmetic(&ctx, &c, &d), &want(&c, &d));
    eprintln!("f16 arithmetic at head_dim 128: {cmp}");
    assert!(cmp.passes(F16_ARITHMETIC_NMSE), "{c:?}: {cmp}");
    // q_len 6 over kv_len 3: the default q_offset -3 leaves rows 0..3 without a key.
    for sinks in [false, true] {
        for dtype in DType::ALL {
            let mut c = Case::new(6, 3, 4, 2, HD);
            c.kind = Some(Kind::Prefill);
            c.sinks = sinks;
            c.dtype = dtype;
            let d = data(&c, 7200, 1.0);
            let got = gpu_f16_arithmetic(&ctx, &c, &d);
            let row = c.n_heads * c.head_dim;
            assert!(
                got[..3 * row].iter().all(|&x| x == 0.0),
                "{c:?}: {:?}",
                &got[..8]
            );
            let cmp = compare(&got, &want(&c, &d));
            assert!(
                cmp.passes(tol(dtype).max(F16_ARITHMETIC_NMSE)),
                "{c:?}: {cmp}"
            );
        }
    }
}

/// Without `SHADER_F16` on the device, `f16_arithmetic` is an error naming the op and the
/// feature, before any GPU work; the decode kernels ignore the option.
#[test]
fn prefill_f16_arithmetic_needs_shader_f16() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("adapter");
    // A device created without optional features, as an application may create it.
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .expect("device");
    let plain = llama_kernels::Context::from_device(&device, &queue);
    assert!(!plain.caps().shader_f16);
    let mut c = Case::new(20, 40, 4, 2, HD);
    c.kind = Some(Kind::Prefill);
    let op = Attention {
        f16_arithmetic: true,
        ..c.op()
    };
    let err = op.plan(&plain, dims_of(&c), c.dtype).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Limit { .. })
            && msg.starts_with("attention:")
            && msg.contains("SHADER_F16"),
        "{msg}"
    );
    let (qs, ks) = c.shapes();
    let d = data(&c, 7300, 1.0);
    let q = upload_at(&plain, &d.q, &qs, c.dtype, GUARD_BEFORE);
    let k = upload_at(&plain, &d.k, &ks, c.dtype, GUARD_BEFORE);
    let v = upload_at(&plain, &d.v, &ks, c.dtype, GUARD_BEFORE);
    let out = nan_output(&plain, &qs, c.dtype);
    let err = op.run(&plain, &q, &k, &v, None, &out).unwrap_err();
    assert!(err.to_string().contains("SHADER_F16"), "{err}");
    // Decode ignores the option: no error, and the f32 result.
    let mut c = Case::new(1, 40, 4, 2, HD);
    c.kind = Some(Kind::Decode);
    let op = Attention {
        f16_arithmetic: true,
        ..c.op()
    };
    assert!(!op.plan(&plain, dims_of(&c), c.dtype).unwrap().variant.f16);
}

/// The register-tiled prefill stays within lavapipe's loop cap at a real head size: one pass
/// at exactly `loop_cap_keys` keys of head_dim 128 (Llama-2-7B's f16 prefill specialisation),
/// checked against the reference. (One key
/// more splits: `thresholds` checks that at head_dim `HD`.)
#[test]
fn prefill_loop_cap_at_head_dim_128() {
    let ctx = ctx();
    let Some(cap) = llama_kernels::ops::attention::loop_cap_keys(&ctx, 128) else {
        eprintln!("no loop cap on this adapter (not a CPU): nothing to check");
        return;
    };
    let mut c = Case::new(20, cap, 2, 1, 128);
    c.dtype = DType::F16;
    c.kind = Some(Kind::Prefill);
    c.causal = false;
    let plan = c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap();
    assert!(!plan.variant.split_kv, "kv_len {cap}: {plan:?}");
    check(c, 7400);
}

/// Whether this adapter has `SUBGROUP`; without it, checks that `kind` forced on `q_len` queries
/// is refused, naming the feature.
fn subgroups_else_refused(kind: Kind, q_len: usize) -> bool {
    if ctx().caps().subgroups {
        return true;
    }
    let mut c = Case::new(q_len, 40, 4, 1, 64);
    c.kind = Some(kind);
    let e = try_run(&c).unwrap_err().to_string();
    assert!(
        e.contains("needs a device with the SUBGROUP feature"),
        "{e}"
    );
    false
}

/// The GPU decode kernel (`Kind::DecodeSubgroup`: lane groups reading 16-byte units of a row,
/// scores reduced by shuffle butterflies, lane groups on different keys merged inside the
/// workgroup) forced on this adapter (lavapipe: subgroups of 8, so 8-lane groups, 16 per
/// workgroup) against the f64 reference: MHA and GQA groups of 2, 4 and 8 (1, 2, 4 and 8 rows
/// per workgroup; 3 tokens of GQA-4: two row blocks of 8), key counts that are not multiples of
/// the 16 lane groups, one split written directly and two merged on both sides of 512 keys,
/// forced splits with empty chunks, head_dims 64, 80, 128 and 256 in every dtype, every masking
/// and logit option, batch > 1; bitwise repeatable; unaligned rows refused. The dispatcher
/// itself picks it on GPUs only.
#[test]
fn decode_subgroup_kernel() {
    let ctx = ctx();
    if !subgroups_else_refused(Kind::DecodeSubgroup, 1) {
        return;
    }
    let sg = |mut c: Case| {
        c.kind = Some(Kind::DecodeSubgroup);
        c
    };
    // One dtype per shape but GQA-4 at head_dim 64 (every dtype), to keep the specialisations
    // LLVM compiles on lavapipe few: (q_len, kv_len, n_heads, n_kv_heads, head_dim, dtype).
    let mut cases = Vec::new();
    for (q_len, kv_len, nh, nkv, hd, dtype) in [
        (1, 300, 8, 2, 64, DType::F32),
        (1, 37, 8, 2, 64, DType::F16),
        (1, 53, 8, 2, 64, DType::BF16),
        (1, 37, 2, 2, 64, DType::F32),
        (1, 129, 4, 2, 128, DType::BF16),
        (3, 70, 8, 2, 64, DType::F32),
        (2, 33, 4, 4, 80, DType::F16),
        (1, 45, 2, 2, 256, DType::F32),
        // GQA-8: 8 rows in one block (the pipeline of the 3-token GQA-4 case).
        (1, 77, 16, 2, 64, DType::F32),
        // One split written directly (511 keys: chunks of at least 256) and two merged (513).
        (1, 511, 8, 2, 64, DType::F32),
        (1, 513, 8, 2, 64, DType::F32),
        // head_dim 128 in f16 (the pipeline of the integer-read GQA-4 case of the native f16
        // test) and f32 (MHA: 32 units per row, 4 per lane on subgroups of 8).
        (1, 129, 8, 2, 128, DType::F16),
        (1, 301, 2, 2, 128, DType::F32),
    ] {
        let mut c = sg(Case::new(q_len, kv_len, nh, nkv, hd));
        c.dtype = dtype;
        cases.push(c);
    }
    let mut c = sg(Case::new(1, 90, 8, 2, 64));
    c.splits = Some(7);
    cases.push(c);
    c.splits = Some(200);
    cases.push(c);
    let mut c = sg(Case::new(2, 150, 8, 2, 64));
    c.batch = 2;
    c.sinks = true;
    c.softcap = 4.0;
    c.window = 30;
    cases.push(c);
    let mut c = sg(Case::new(4, 120, 8, 2, 64));
    c.causal = false;
    c.chunk = 32;
    c.window_right = Some(5);
    c.scale = Some(0.3);
    cases.push(c);
    let mut c = sg(Case::new(1, 60, 8, 2, 64));
    c.q_offset = Some(-1);
    cases.push(c);
    // ALiBi over 6 heads (not a power of two) in groups of 3, with a softcap.
    let mut c = sg(Case::new(3, 70, 6, 2, 64));
    c.alibi = true;
    c.softcap = 4.0;
    cases.push(c);
    for (i, c) in cases.iter().enumerate() {
        check(*c, 900 + i as u64);
    }
    // Bitwise repeatable, and the plan the kernel ran with: rows of the group per workgroup,
    // one partial per (row, split) (the lane groups merge inside the workgroup).
    let c = cases[0];
    let d = data(&c, 5, 1.0);
    assert!(
        gpu(&c, &d) == gpu(&c, &d),
        "DecodeSubgroup is not repeatable"
    );
    let plan = c
        .op()
        .plan(&ctx, dims_of(&c), c.dtype)
        .expect("subgroup plan");
    assert_eq!(plan.variant.kind, Kind::DecodeSubgroup);
    assert_eq!((plan.rows_per_wg, plan.lanes), (4, 1));
    // Chunks of at least 256 keys: one split below 512 keys (the output written by the partial
    // pass), two at 513.
    for (i, splits) in [(9, 1), (10, 2)] {
        let p = cases[i].op().plan(&ctx, dims_of(&cases[i]), cases[i].dtype);
        assert_eq!(p.unwrap().splits, splits, "{:?}", cases[i]);
    }
    // Unaligned K/V rows (head_dim 36 in f16: 72 bytes): the kernel reads 16-byte units, so a
    // forced call is refused and the dispatcher's own choice on a GPU is the tile decode.
    let dims = llama_kernels::ops::attention::Dims {
        batch: 1,
        q_len: 1,
        kv_len: 37,
        n_heads: 8,
        n_kv_heads: 2,
        head_dim: 36,
    };
    let nvidia = llama_kernels::ops::attention::DeviceDesc::nvidia();
    let e = c
        .op()
        .plan_for_device(&nvidia, dims, DType::F16, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("16-byte aligned K/V rows"), "{e}");
    let p = Attention::default().plan_for_device(&nvidia, dims, DType::F16, true);
    assert_eq!(p.unwrap().variant.kind, Kind::Decode);
    let mut auto = c;
    auto.kind = None;
    let auto_kind = auto
        .op()
        .plan(&ctx, dims_of(&auto), c.dtype)
        .unwrap()
        .variant
        .kind;
    let gpu_adapter = ctx.adapter_info().device_type != wgpu::DeviceType::Cpu;
    assert_eq!(auto_kind == Kind::DecodeSubgroup, gpu_adapter);
}

/// The subgroup decode assuming smaller subgroups than the device runs
/// (`Attention::subgroup_min_size`): every smaller power of two down to 4 that the adapter
/// allows (on lavapipe, which runs subgroups of 8: 4; the adapter's own 8 is the test above),
/// with lane groups of that many lanes (twice the units per lane of 8's), against the f64 reference at
/// the GQA-4 head_dim-64 shape the test above compiles; more than the adapter's smallest is an
/// `Err`. What larger sizes (16 to 128) get is pinned on described devices in the planner's unit
/// tests.
#[test]
fn decode_subgroup_at_smaller_assumed_subgroups() {
    let ctx = ctx();
    if !ctx.caps().subgroups {
        return;
    }
    let min = ctx.adapter_info().subgroup_min_size.max(4);
    let mut c = Case::new(1, 300, 8, 2, 64);
    c.kind = Some(Kind::DecodeSubgroup);
    let mut n = 4;
    while n < min {
        c.subgroup_min_size = Some(n);
        let plan = c.op().plan(&ctx, dims_of(&c), c.dtype).expect("plan");
        // Lane groups of at most n lanes: a head_dim-64 row (16 units of f32) over n lanes.
        let sh = plan.variant.sg_shape();
        assert_eq!((plan.variant.sg_min, sh.lg), (n, n), "{c:?}");
        check(c, 990 + n as u64);
        n *= 2;
    }
    for bad in [min * 2, 12, 2] {
        c.subgroup_min_size = Some(bad);
        let e = try_run(&c).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "subgroup_min_size {bad} must be a power of two from 4 to"
            )),
            "{e}"
        );
    }
}

/// Native f16 K/V reads in the subgroup decode (`Attention::native_f16`, the default on GPUs
/// with SHADER_F16; forced here): against the f64 reference, and bit for bit equal to the integer
/// decode (widening f16 is exact), at MHA and GQA shapes, several splits, head_dim 64 and 128.
/// Misuse is an error naming what is wrong: another dtype, another kernel, unaligned rows, and
/// (on devices without them) SHADER_F16 or SUBGROUP.
#[test]
fn decode_subgroup_native_f16_reads() {
    let ctx = ctx();
    let native = |q_len, kv_len, nh, nkv, hd| {
        let mut c = Case::new(q_len, kv_len, nh, nkv, hd);
        c.dtype = DType::F16;
        c.kind = Some(Kind::DecodeSubgroup);
        c.native_f16 = Some(true);
        c
    };
    if !ctx.caps().subgroups || !ctx.caps().shader_f16 {
        let e = try_run(&native(1, 40, 4, 1, 64)).unwrap_err().to_string();
        assert!(e.contains("SUBGROUP") || e.contains("SHADER_F16"), "{e}");
        return;
    }
    let mut cases = vec![
        native(1, 37, 8, 2, 64),
        native(1, 300, 4, 4, 64),
        native(2, 129, 4, 1, 128),
    ];
    let mut c = native(1, 90, 8, 2, 64);
    c.splits = Some(7);
    c.sinks = true;
    c.window = 40;
    cases.push(c);
    for (i, c) in cases.iter().enumerate() {
        let plan = c.op().plan(&ctx, dims_of(c), c.dtype).expect("plan");
        assert!(plan.variant.native_f16, "{c:?} {:?}", plan.variant);
        check(*c, 950 + i as u64);
        let d = data(c, 60 + i as u64, 1.0);
        let integer = Case {
            native_f16: Some(false),
            ..*c
        };
        assert!(
            !integer
                .op()
                .plan(&ctx, dims_of(c), c.dtype)
                .unwrap()
                .variant
                .native_f16,
            "{c:?}"
        );
        assert_same_arithmetic(
            &ctx,
            &gpu(c, &d),
            &gpu(&integer, &d),
            &format!("{c:?}: native and integer f16 reads"),
        );
    }
    // Misuse.
    let mut bf = native(1, 37, 8, 2, 64);
    bf.dtype = DType::BF16;
    let e = try_run(&bf).unwrap_err().to_string();
    assert!(
        e.contains("DecodeSubgroup kernel over f16") && e.contains("bf16"),
        "{e}"
    );
    let mut keys = native(1, 37, 8, 2, 64);
    keys.kind = Some(Kind::DecodeKeys);
    let e = try_run(&keys).unwrap_err().to_string();
    assert!(e.contains("DecodeKeys"), "{e}");
    // head_dim 36 (72-byte rows) is not 16-byte aligned: the kernel itself needs aligned rows.
    let e = try_run(&native(1, 37, 8, 2, 36)).unwrap_err().to_string();
    assert!(
        e.contains("DecodeSubgroup kernel reads 16-byte units") && e.contains("head_dim 36 x 2"),
        "{e}"
    );
}

/// The GPU prefill (`Kind::PrefillSubgroup`: groups of lanes split head_dim, scores finished by
/// `subgroupShuffleXor` within the group, q and accumulators in registers, 16-byte K/V loads)
/// forced on this adapter (lavapipe: subgroups of 8, so groups of 4 lanes at head_dim 64)
/// against the f64 reference: odd sizes on both sides of the 4-key block and of the row block,
/// MHA, GQA and MQA, every masking and logit option, ALiBi, batch 2, split over the keys
/// (forced, and past the loop cap on CPU adapters), bitwise repeatable (unaligned rows:
/// `decode_keys_needs_aligned_rows`). Two specialisations only (f32 and f16 at Llama-3.2-1B's head_dim 64, which the paged
/// subgroup prefill test shares): the dtype changes only the staging loads. The dispatcher
/// picks it on GPUs with subgroups.
#[test]
fn prefill_subgroup_kernel() {
    let ctx = ctx();
    if !subgroups_else_refused(Kind::PrefillSubgroup, 20) {
        return;
    }
    const SG_HD: usize = 64;
    let sg = |q_len, kv_len, nh, nkv, dtype| {
        let mut c = Case::new(q_len, kv_len, nh, nkv, SG_HD);
        c.kind = Some(Kind::PrefillSubgroup);
        c.dtype = dtype;
        c
    };
    let mut cases = Vec::new();
    // Every option in f32 with GQA 4 and odd sizes (rows 4 x 75 = 300: three row blocks of
    // 128, the last short; kv 113: a short last tile and 4-key block); two in f16.
    for mode in 0..8 {
        cases.push(with_mode(sg(75, 113, 8, 2, DType::F32), mode));
    }
    for mode in [3, 5] {
        cases.push(with_mode(sg(75, 113, 8, 2, DType::F16), mode));
    }
    // MHA, MQA, batch 2 with sinks, ALiBi.
    cases.push(sg(9, 9, 3, 3, DType::F32));
    cases.push(sg(33, 70, 8, 1, DType::F16));
    let mut c = sg(13, 200, 4, 2, DType::F32);
    c.batch = 2;
    c.sinks = true;
    cases.push(c);
    let mut c = sg(24, 90, 12, 4, DType::F32);
    c.alibi = true;
    cases.push(c);
    // Two-sided window and chunks, a negative offset (the first rows see nothing).
    let mut c = sg(40, 90, 4, 2, DType::F32);
    c.causal = false;
    c.window_left = Some(7);
    c.window_right = Some(3);
    c.chunk = 32;
    cases.push(c);
    let mut c = sg(20, 30, 4, 2, DType::F32);
    c.q_offset = Some(-5);
    cases.push(c);
    // Forced splits (trailing empty chunks too): partials through attn_prefill_merge.
    for splits in [3, 40] {
        let mut c = sg(21, 150, 4, 2, DType::F32);
        c.splits = Some(splits);
        c.sinks = true;
        cases.push(c);
    }
    for (i, c) in cases.iter().enumerate() {
        let plan = c.op().plan(&ctx, dims_of(c), c.dtype).expect("plan");
        assert_eq!(plan.variant.kind, Kind::PrefillSubgroup, "{c:?}");
        assert_eq!(
            plan.variant.split_kv,
            c.splits.is_some_and(|s| s > 1),
            "{c:?}"
        );
        check(*c, 9700 + i as u64);
    }
    // Past the loop cap of a CPU adapter the keys are split by the planner.
    let sg_min = ctx.adapter_info().subgroup_min_size.max(4);
    let desc = llama_kernels::ops::attention::DeviceDesc::of(&ctx);
    if let Some(cap) = desc.prefill_sg_cap_keys(SG_HD as u32 / 4, sg_min) {
        for (kv_len, split) in [(cap, false), (cap + 1, true)] {
            let mut c = sg(9, kv_len, 2, 1, DType::F32);
            c.window = 3000;
            let plan = c.op().plan(&ctx, dims_of(&c), c.dtype).unwrap();
            assert_eq!(plan.variant.split_kv, split, "kv_len {kv_len}");
            check(c, 9800 + kv_len as u64);
        }
    }
    // Bitwise repeatable.
    let c = cases[0];
    let d = data(&c, 5, 1.0);
    assert!(
        gpu(&c, &d) == gpu(&c, &d),
        "PrefillSubgroup is not repeatable"
    );
}

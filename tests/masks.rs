//! Attention masks (a packed boolean mask, an additive bias, block ids) in every entry point
//! against the f64 reference: each kernel kind (forced as the other tests do), f32 and bf16,
//! with causal masking, windows, split-KV, a fully masked row, a batch with per-row masks, the
//! KV cache, a paged batch with a draft tree's mask, and every validation rule; tiles the mask
//! hides are skipped (NaN in their K/V rows must not reach the output), contiguous and paged.
//!
//! One masked pipeline per kernel kind, at head_dim 16.

use crate::common;

use common::*;
use llama_kernels::compare::{compare, tolerance};
use llama_kernels::ops::attention::{
    pack_mask, segment_pack_mask, BlockIds, Inputs, Kind, MaskBits,
};
use llama_kernels::ops::paged::{BatchSeq, Heads, PlanOptions};
use llama_kernels::reference::attention as reference;
use llama_kernels::{
    Attention, Context, DType, KvCache, KvCacheConfig, KvFormat, PagedBatch, PagedKvCache,
    PagedKvConfig, Tensor,
};

const HD: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Case {
    dtype: DType,
    batch: usize,
    q_len: usize,
    kv_len: usize,
    n_heads: usize,
    n_kv_heads: usize,
    causal: bool,
    window_left: Option<u32>,
    kind: Option<Kind>,
    splits: Option<u32>,
    mask: bool,
    // Some(per head)
    bias: Option<bool>,
    ids: bool,
    sinks: bool,
    // A query row whose every key the mask hides.
    hidden_row: Option<usize>,
    // The masks have a batch dimension.
    batched: bool,
}

fn case(q_len: usize, kv_len: usize) -> Case {
    Case {
        dtype: DType::F32,
        batch: 1,
        q_len,
        kv_len,
        n_heads: 4,
        n_kv_heads: 2,
        causal: true,
        window_left: None,
        kind: None,
        splits: None,
        mask: true,
        bias: Some(true),
        ids: true,
        sinks: false,
        hidden_row: None,
        batched: false,
    }
}

/// Gemma 3's block ids from token types (1 = image): `get_block_sequence_ids_for_mask`, each
/// run of image tokens one block, numbered from 0, text -1.
fn block_ids_of(types: &[u8]) -> Vec<i32> {
    let mut ids = Vec::with_capacity(types.len());
    let mut next = 0;
    for (i, &t) in types.iter().enumerate() {
        if t == 1 {
            if i == 0 || types[i - 1] != 1 {
                next += 1;
            }
            ids.push(next - 1);
        } else {
            ids.push(-1);
        }
    }
    ids
}

/// Masks of a case: (mask bools, bias, block ids), each with the batch dimension when batched.
fn masks_of(c: &Case, rng: &mut Rng) -> (Vec<bool>, Vec<f32>, Vec<i32>) {
    let rows = if c.batched { c.batch } else { 1 };
    let mut mask: Vec<bool> = (0..rows * c.q_len * c.kv_len)
        .map(|_| rng.uniform(0.0, 1.0) < 0.75)
        .collect();
    if let Some(t) = c.hidden_row {
        for b in 0..rows {
            let base = (b * c.q_len + t) * c.kv_len;
            mask[base..base + c.kv_len].fill(false);
        }
    }
    let heads = if c.bias == Some(true) { c.n_heads } else { 1 };
    let mut bias = rng.vec(rows * heads * c.q_len * c.kv_len, 1.0);
    // A few keys the bias alone hides.
    for i in (3..bias.len()).step_by(17) {
        bias[i] = f32::NEG_INFINITY;
    }
    let mut ids = Vec::new();
    for b in 0..rows {
        // Image runs at positions 2 .. 9 and from two thirds on, shifted per batch row, so
        // queries inside a block see keys past their position.
        let types: Vec<u8> = (0..c.kv_len)
            .map(|j| {
                let j = j + b;
                ((2..9).contains(&j) || (j >= 2 * c.kv_len / 3 && j < 2 * c.kv_len / 3 + 6)) as u8
            })
            .collect();
        ids.extend(block_ids_of(&types));
    }
    (mask, bias, ids)
}

fn op_of(c: &Case) -> Attention {
    Attention {
        causal: c.causal,
        window_left: c.window_left,
        kind: c.kind,
        splits: c.splits,
        ..Attention::default()
    }
}

fn ref_opts(c: &Case) -> reference::Options {
    reference::Options {
        causal: c.causal,
        window_left: c.window_left.map(|w| w as usize),
        ..reference::Options::default()
    }
}

fn dims(c: &Case) -> reference::Dims {
    reference::Dims {
        batch: c.batch,
        q_len: c.q_len,
        kv_len: c.kv_len,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: HD,
    }
}

fn bias_shape(c: &Case) -> Vec<usize> {
    match (c.bias == Some(true), c.batched) {
        (false, false) => vec![c.q_len, c.kv_len],
        (true, false) => vec![c.n_heads, c.q_len, c.kv_len],
        (false, true) => vec![c.batch, 1, c.q_len, c.kv_len],
        (true, true) => vec![c.batch, c.n_heads, c.q_len, c.kv_len],
    }
}

/// Run a case through `Attention::run` and compare with the reference; returns the output.
fn run_case(ctx: &Context, c: Case, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let d = dims(&c);
    let qn = c.batch * c.q_len * c.n_heads * HD;
    let kn = c.batch * c.kv_len * c.n_kv_heads * HD;
    let (q, k, v) = (rng.vec(qn, 1.0), rng.vec(kn, 1.0), rng.vec(kn, 1.0));
    let (mask, bias, ids) = masks_of(&c, &mut rng);
    let sinks = rng.vec(c.n_heads, 1.0);
    let (qs, ks) = if c.batch > 1 {
        (
            vec![c.batch, c.q_len, c.n_heads, HD],
            vec![c.batch, c.kv_len, c.n_kv_heads, HD],
        )
    } else {
        (
            vec![c.q_len, c.n_heads, HD],
            vec![c.kv_len, c.n_kv_heads, HD],
        )
    };
    let qt = upload_at(ctx, &q, &qs, c.dtype, ALIGNED_GUARD);
    let kt = upload_at(ctx, &k, &ks, c.dtype, ALIGNED_GUARD);
    let vt = upload_at(ctx, &v, &ks, c.dtype, ALIGNED_GUARD);
    let out = nan_output(ctx, &qs, c.dtype);
    let packed = pack_mask(&mask);
    let shape = bias_shape(&c);
    let set = Inputs::upload_masks(
        ctx,
        c.sinks.then_some(&sinks[..]),
        c.mask.then_some(&packed[..]),
        c.bias.map(|_| (&bias[..], &shape[..])),
        c.ids.then_some(&ids[..]),
    )
    .expect("upload masks");
    op_of(&c)
        .run(ctx, &qt, &kt, &vt, set.inputs(), &out)
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let bias64: Vec<f64> = bias.iter().map(|&x| x as f64).collect();
    let sinks64: Vec<f64> = sinks.iter().map(|&x| x as f64).collect();
    let want = reference::attention_masked(
        &rounded(&q, c.dtype),
        &rounded(&k, c.dtype),
        &rounded(&v, c.dtype),
        c.sinks.then_some(&sinks64[..]),
        d,
        &ref_opts(&c),
        &reference::Masks {
            mask: c.mask.then_some(&mask[..]),
            bias: c.bias.map(|_| &bias64[..]),
            bias_heads: c.bias == Some(true),
            block_ids: c.ids.then_some(&ids[..]),
        },
    );
    let got = ctx.read_f32(&out).expect("readback");
    let cmp = compare(&got, &want);
    assert!(
        cmp.passes(tolerance(c.dtype)),
        "{c:?}: {cmp} (tolerance {:e})",
        tolerance(c.dtype)
    );
    assert_guards(ctx, &out, "out");
    // The masks must matter: the same call without them differs.
    let plain = reference::attention(
        &rounded(&q, c.dtype),
        &rounded(&k, c.dtype),
        &rounded(&v, c.dtype),
        c.sinks.then_some(&sinks64[..]),
        d,
        &ref_opts(&c),
    );
    assert!(
        !compare(&got, &plain).passes(tolerance(c.dtype)),
        "{c:?}: the masks changed nothing"
    );
    got
}

/// A fully hidden row outputs exactly 0 (sinks or not).
fn assert_zero_row(c: &Case, got: &[f32]) {
    let t = c.hidden_row.expect("hidden row");
    for b in 0..c.batch {
        let base = (b * c.q_len + t) * c.n_heads * HD;
        let row = &got[base..base + c.n_heads * HD];
        assert!(
            row.iter().all(|&x| x == 0.0),
            "{c:?}: hidden row {t} = {row:?}"
        );
    }
}

#[test]
fn prefill_kernels_with_every_mask() {
    let ctx = ctx();
    // The CPU prefill (PrefillKeys): odd sizes, every input, a hidden row.
    let c = Case {
        kind: Some(Kind::PrefillKeys),
        hidden_row: Some(5),
        ..case(19, 37)
    };
    assert_zero_row(&c, &run_case(&ctx, c, 1));
    // bf16 storage, a window, a shared bias, sinks (the hidden row gets 0 despite the sink).
    let c = Case {
        dtype: DType::BF16,
        kind: Some(Kind::PrefillKeys),
        window_left: Some(6),
        bias: Some(false),
        sinks: true,
        hidden_row: Some(0),
        ..case(19, 37)
    };
    assert_zero_row(&c, &run_case(&ctx, c, 2));
    // Split over the keys (the same pipeline writes partials; the merge reads no masks).
    run_case(
        &ctx,
        Case {
            kind: Some(Kind::PrefillKeys),
            splits: Some(3),
            ..case(19, 70)
        },
        3,
    );
    // Per-row masks of a batch of 2.
    run_case(
        &ctx,
        Case {
            kind: Some(Kind::PrefillKeys),
            batch: 2,
            batched: true,
            ..case(17, 29)
        },
        4,
    );
    // The workgroup-tile prefill (GPUs' kernel), non-causal with block ids (they then change
    // nothing: every key is visible anyway) and a hidden row.
    let c = Case {
        kind: Some(Kind::Prefill),
        hidden_row: Some(18),
        ..case(19, 37)
    };
    assert_zero_row(&c, &run_case(&ctx, c, 5));
    run_case(
        &ctx,
        Case {
            kind: Some(Kind::Prefill),
            causal: false,
            ..case(19, 37)
        },
        6,
    );
    // The subgroup prefill (GPUs with SUBGROUP; forced on lavapipe), one pass and split.
    if ctx.caps().subgroups {
        let c = Case {
            kind: Some(Kind::PrefillSubgroup),
            hidden_row: Some(7),
            ..case(19, 37)
        };
        assert_zero_row(&c, &run_case(&ctx, c, 7));
        run_case(
            &ctx,
            Case {
                kind: Some(Kind::PrefillSubgroup),
                splits: Some(3),
                ..case(19, 70)
            },
            8,
        );
    }
}

/// CPU adapters cap the loops of one `PrefillKeys` pass (`prefill_keys_loop_cap_keys`), and
/// under a boolean mask each tile loops more (the tile vote and the per-logit mask step), which
/// the cap must count: a masked prefill at the cap runs in one pass and one key past it in two,
/// and a masked prefill over many more keys than the cap (in one pass it would outrun llvmpipe's
/// loop limit and stop early) matches the reference.
#[test]
fn prefill_keys_masked_at_the_loop_cap() {
    let ctx = ctx();
    let Some(cap) = llama_kernels::ops::attention::prefill_keys_loop_cap_keys(&ctx, HD) else {
        return;
    };
    for (kv_len, splits) in [(cap, 1), (cap + 1, 2), (2 * cap - 100, 2)] {
        let c = Case {
            kind: Some(Kind::PrefillKeys),
            ..case(3, kv_len)
        };
        let d = llama_kernels::ops::attention::Dims {
            batch: 1,
            q_len: c.q_len,
            kv_len,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: HD,
        };
        let plan = op_of(&c).plan(&ctx, d, c.dtype).unwrap();
        assert_eq!(plan.splits, splits, "kv_len {kv_len}");
        run_case(&ctx, c, 10 + kv_len as u64);
    }
    // The other kernels' caps, forced, at as many keys (their chunks are at their caps).
    let mut kinds = vec![(Kind::Prefill, 3)];
    if ctx.caps().subgroups {
        kinds.extend([(Kind::PrefillSubgroup, 3), (Kind::DecodeSubgroup, 1)]);
    }
    for (kind, q_len) in kinds {
        let c = Case {
            kind: Some(kind),
            ..case(q_len, 2 * cap - 100)
        };
        run_case(&ctx, c, 20);
    }
}

#[test]
fn decode_kernels_with_every_mask() {
    let ctx = ctx();
    // Block ids matter to decode rows only when queries sit inside a block before its last
    // key: q_offset puts them there (chunked prefill of an image).
    for (kind, q_len, seed) in [(Kind::Decode, 3, 10), (Kind::DecodeKeys, 2, 11)] {
        let c = Case {
            kind: Some(kind),
            hidden_row: Some(1),
            ..case(q_len, 41)
        };
        assert_zero_row(&c, &run_case(&ctx, c, seed));
        // Split over the keys, bf16.
        run_case(
            &ctx,
            Case {
                kind: Some(kind),
                dtype: DType::BF16,
                splits: Some(4),
                ..case(q_len, 41)
            },
            seed + 100,
        );
    }
    if ctx.caps().subgroups {
        let c = Case {
            kind: Some(Kind::DecodeSubgroup),
            hidden_row: Some(0),
            ..case(2, 41)
        };
        assert_zero_row(&c, &run_case(&ctx, c, 12));
    }
}

#[test]
fn kv_cache_with_masks() {
    let ctx = ctx();
    let (q_len, len, nh, nkv) = (3, 27, 4, 2);
    let mut rng = Rng::new(20);
    let mut cache = KvCache::new(
        &ctx,
        KvCacheConfig {
            batch: 1,
            n_kv_heads: nkv,
            capacity: 40,
            head_dim: HD,
            dtype: DType::F32,
            kv_format: None,
        },
    )
    .unwrap();
    let (k, v) = (rng.vec(len * nkv * HD, 1.0), rng.vec(len * nkv * HD, 1.0));
    let kt = ctx.upload(&k, &[1, len, nkv, HD]).unwrap();
    let vt = ctx.upload(&v, &[1, len, nkv, HD]).unwrap();
    cache.append_run(&ctx, &kt, &vt).unwrap();
    let q = rng.vec(q_len * nh * HD, 1.0);
    let qt = ctx.upload(&q, &[q_len, nh, HD]).unwrap();
    let c = Case {
        n_heads: nh,
        n_kv_heads: nkv,
        ..case(q_len, len)
    };
    let (mask, bias, ids) = masks_of(&c, &mut rng);
    let packed = pack_mask(&mask);
    let set = Inputs::upload_masks(
        &ctx,
        None,
        Some(&packed),
        Some((&bias, &[nh, q_len, len])),
        Some(&ids),
    )
    .unwrap();
    let out = nan_output(&ctx, &[q_len, nh, HD], DType::F32);
    // The warm-up builds the masked pipelines the call then uses.
    let d = dims(&c);
    Attention::default()
        .prepare_masked(&ctx, &[d], DType::F32, KvFormat::F32)
        .unwrap();
    let before = ctx.cached_pipelines();
    Attention::default()
        .run_cached(&ctx, &qt, &cache, set.inputs(), &out)
        .unwrap();
    assert_eq!(
        ctx.cached_pipelines(),
        before,
        "prepare_masked built every pipeline"
    );
    let bias64: Vec<f64> = bias.iter().map(|&x| x as f64).collect();
    let want = reference::attention_masked(
        &rounded(&q, DType::F32),
        &rounded(&k, DType::F32),
        &rounded(&v, DType::F32),
        None,
        dims(&c),
        &reference::Options::default(),
        &reference::Masks {
            mask: Some(&mask),
            bias: Some(&bias64),
            bias_heads: true,
            block_ids: Some(&ids),
        },
    );
    assert_close(&ctx, &out, &want, tolerance(DType::F32), "cached");
}

/// A paged batch of a draft tree (a prefill chunk whose mask lets each draft token see the
/// prompt and its ancestors) beside a decode sequence, with bias and block ids.
#[test]
fn paged_batch_with_a_tree_mask() {
    let ctx = ctx();
    let page = 8;
    let heads = Heads {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: HD,
    };
    // Tree of 6 drafts after a 15-token prompt: parents (-1 = the prompt).
    let parents = [-1i32, 0, 0, 1, 2, 2];
    let (prompt, tree) = (15, parents.len());
    let lens = [(tree, prompt + tree), (1, 30), (9, 23)];
    let mut rng = Rng::new(30);
    let row = heads.n_kv_heads * HD;
    let n_pages: usize = lens.iter().map(|l| l.1.div_ceil(page)).sum::<usize>() + 2;
    let mut next = n_pages as u32;
    let seqs: Vec<BatchSeq> = lens
        .iter()
        .map(|&(q_len, kv_len)| BatchSeq {
            q_len,
            kv_len,
            pages: (0..kv_len.div_ceil(page))
                .map(|_| {
                    next -= 1;
                    next
                })
                .collect(),
        })
        .collect();
    let cache = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages,
            page_size: page,
            n_kv_heads: heads.n_kv_heads,
            head_dim: HD,
            dtype: DType::F32,
            ..PagedKvConfig::default()
        },
    )
    .unwrap();
    let mut ks = Vec::new();
    let mut vs = Vec::new();
    for s in &seqs {
        let n = s.kv_len.div_ceil(page) * page * row;
        let (mut k, mut v) = (rng.vec(s.kv_len * row, 1.0), rng.vec(s.kv_len * row, 1.0));
        ks.push(k.clone());
        vs.push(v.clone());
        k.resize(n, 0.0);
        v.resize(n, 0.0);
        cache.write_pages(&ctx, &s.pages, &k, &v).unwrap();
    }
    // Masks per sequence: the tree's ancestors, random ones for the others.
    let mut masks: Vec<Vec<bool>> = Vec::new();
    let mut tree_mask = vec![false; tree * (prompt + tree)];
    for t in 0..tree {
        let r = &mut tree_mask[t * (prompt + tree)..][..prompt + tree];
        r[..prompt].fill(true);
        let mut a = t as i32;
        while a >= 0 {
            r[prompt + a as usize] = true;
            a = parents[a as usize];
        }
    }
    masks.push(tree_mask);
    for &(q, kv) in &lens[1..] {
        masks.push((0..q * kv).map(|_| rng.uniform(0.0, 1.0) < 0.7).collect());
    }
    // The prefill sequence's first query sees nothing: its row is 0.
    masks[2][..lens[2].1].fill(false);
    let packed = segment_pack_mask(&masks.iter().map(|m| &m[..]).collect::<Vec<_>>());
    let (qk, kv_total, bytes) = (
        lens.iter().map(|l| l.0 * l.1).sum::<usize>(),
        lens.iter().map(|l| l.1).sum::<usize>(),
        lens.iter().map(|l| (l.0 * l.1).div_ceil(8)).sum::<usize>(),
    );
    assert_eq!(packed.len(), bytes);
    let ids: Vec<i32> = lens
        .iter()
        .flat_map(|&(_, kv)| block_ids_of(&(0..kv).map(|j| (j % 11 > 6) as u8).collect::<Vec<_>>()))
        .collect();
    assert_eq!(ids.len(), kv_total);
    let total_q: usize = lens.iter().map(|l| l.0).sum();
    let q = rng.vec(total_q * heads.n_heads * HD, 1.0);
    let qt = ctx.upload(&q, &[total_q, heads.n_heads, HD]).unwrap();
    let k64s: Vec<Vec<f64>> = ks.iter().map(|k| rounded(k, DType::F32)).collect();
    let v64s: Vec<Vec<f64>> = vs.iter().map(|v| rounded(v, DType::F32)).collect();
    // A bias shared by the heads, then one per head (each sequence's [n_heads, q_len, kv_len]).
    for per_head in [false, true] {
        let hb = if per_head { heads.n_heads } else { 1 };
        let bias = rng.vec(hb * qk, 0.5);
        let set = Inputs::upload_masks(
            &ctx,
            None,
            Some(&packed),
            Some((&bias, &[hb * qk])),
            Some(&ids),
        )
        .unwrap();
        let want = batch_reference(
            &q,
            &lens,
            heads,
            (&k64s, &v64s),
            &SeqMasks {
                masks: &masks,
                bias: &bias,
                bias_heads: per_head,
                ids: &ids,
            },
        );
        let hidden = (lens[0].0 + lens[1].0) * heads.n_heads * HD;
        assert!(want[hidden..hidden + heads.n_heads * HD]
            .iter()
            .all(|&x| x == 0.0));
        let mut decode = vec![Kind::Decode, Kind::DecodeKeys];
        if ctx.caps().subgroups {
            decode.push(Kind::DecodeSubgroup);
        }
        // Every decode kernel beside the prefill rows, with and without splits; the per-head
        // bias on the default plan.
        let plans: Vec<PlanOptions> = match per_head {
            false => decode
                .iter()
                .flat_map(|&k| {
                    [None, Some(3)].map(|splits| PlanOptions {
                        splits,
                        decode: Some(k),
                        ..PlanOptions::default()
                    })
                })
                .collect(),
            true => vec![PlanOptions::default()],
        };
        // The subgroup prefill for the prefill rows (as GPUs with SUBGROUP plan them).
        let mut plans = plans;
        if ctx.caps().subgroups && !per_head {
            plans.push(PlanOptions {
                prefill: Some(Kind::PrefillSubgroup),
                decode: Some(Kind::DecodeSubgroup),
                ..PlanOptions::default()
            });
        }
        for plan in plans {
            let batch =
                PagedBatch::from_parts_with(&ctx, page, n_pages, &seqs, heads, &plan).unwrap();
            let out = nan_output(&ctx, &[total_q, heads.n_heads, HD], DType::F32);
            Attention::default()
                .run_paged(&ctx, &qt, &cache, &batch, set.inputs(), &out)
                .unwrap_or_else(|e| panic!("{plan:?}: {e}"));
            assert_close(
                &ctx,
                &out,
                &want,
                tolerance(DType::F32),
                &format!("paged {plan:?}, bias per head {per_head}"),
            );
            let o = ctx.read_f32(&out).unwrap();
            assert!(
                o[hidden..hidden + heads.n_heads * HD]
                    .iter()
                    .all(|&x| x == 0.0),
                "{plan:?}: the hidden row"
            );
        }
    }
}

#[test]
fn mask_rules() {
    let ctx = ctx();
    let (q_len, kv) = (3, 10);
    let q = filled(&ctx, &[q_len, 4, HD], 0.0);
    let k = filled(&ctx, &[kv, 2, HD], 0.0);
    let out = filled(&ctx, &[q_len, 4, HD], 0.0);
    let a = Attention::default();
    let run = |inputs: Inputs| a.run(&ctx, &q, &k, &k, inputs, &out);
    let bits = MaskBits::upload(&ctx, &[0xff; 3]).unwrap();
    expect_err(
        run(Inputs::new().mask(&bits)),
        "attention",
        is_shape,
        "mask holds 3 packed bytes; a [q_len, kv_len] = [3, 10] mask packs into 4",
    );
    let f16_bias = ctx.empty(&[q_len, kv], DType::F16).unwrap();
    expect_err(
        run(Inputs::new().bias(&f16_bias)),
        "attention",
        is_dtype,
        "bias",
    );
    let bad_bias = filled(&ctx, &[kv, q_len], 0.0);
    expect_err(
        run(Inputs::new().bias(&bad_bias)),
        "attention",
        is_shape,
        "bias has shape [10, 3]; it must be [q_len, kv_len] = [3, 10]",
    );
    let ids = BlockIds::upload(&ctx, &[0; 9]).unwrap();
    expect_err(
        run(Inputs::new().block_ids(&ids)),
        "attention",
        is_shape,
        "block_ids holds 9 ids; it must hold kv_len = 10",
    );
    // Inputs in two buffers.
    let bits4 = MaskBits::upload(&ctx, &[0xff; 4]).unwrap();
    let bias = filled(&ctx, &[q_len, kv], 0.0);
    expect_err(
        run(Inputs::new().mask(&bits4).bias(&bias)),
        "attention",
        is_param,
        "mask and bias are read through one binding",
    );
    // out in the masks' buffer.
    let big = filled(&ctx, &[1000], 0.0);
    let bias_in = Tensor::new(big.buffer(), 500, &[q_len, kv], DType::F32);
    let out_in = Tensor::new(big.buffer(), 0, &[q_len, 4, HD], DType::F32);
    expect_err(
        a.run(&ctx, &q, &k, &k, Inputs::new().bias(&bias_in), &out_in),
        "attention",
        is_alias,
        "out shares a buffer with bias",
    );
    expect_err(
        MaskBits::new(bits4.buffer(), 2, 1),
        "attention",
        is_param,
        "mask byte_offset 2 must be a multiple of 4",
    );
    // Paged: the mask of every sequence, segment-packed.
    let heads = Heads {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: HD,
    };
    let cache = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages: 4,
            page_size: 8,
            n_kv_heads: 2,
            head_dim: HD,
            ..PagedKvConfig::default()
        },
    )
    .unwrap();
    let seqs = [
        BatchSeq {
            q_len: 3,
            kv_len: 5,
            pages: vec![0],
        },
        BatchSeq {
            q_len: 1,
            kv_len: 9,
            pages: vec![1, 2],
        },
    ];
    let batch = PagedBatch::from_parts(&ctx, 8, 4, &seqs, heads, None).unwrap();
    assert_eq!(batch.mask_sizes(), (24, 14, 4));
    let pq = filled(&ctx, &[4, 4, HD], 0.0);
    let pout = filled(&ctx, &[4, 4, HD], 0.0);
    let prun = |inputs: Inputs| a.run_paged(&ctx, &pq, &cache, &batch, inputs, &pout);
    expect_err(
        prun(Inputs::new().mask(&bits)),
        "paged_attention",
        is_shape,
        "mask holds 3 packed bytes; the batch's sequences, each [q_len, kv_len] packed from a byte of its own (segment_pack_mask), need 4",
    );
    let pbias = filled(&ctx, &[25], 0.0);
    expect_err(
        prun(Inputs::new().bias(&pbias)),
        "paged_attention",
        is_shape,
        "bias has shape [25]; a paged batch takes every sequence's [q_len, kv_len] flattened in turn, [24]",
    );
    let pids = BlockIds::upload(&ctx, &[0; 13]).unwrap();
    expect_err(
        prun(Inputs::new().block_ids(&pids)),
        "paged_attention",
        is_shape,
        "block_ids holds 13 ids; the batch's sequences hold 14 keys",
    );
    // Valid paged masks run.
    prun(Inputs::new().mask(&bits4)).unwrap();
}

// The committed mask cases (`cases/gen_masks.py`, transformers' own mask functions) run with
// every other committed case through `llama-kernels check` in tools/tests/check.rs; a test here
// ran them again on a context of its own, compiling their pipelines a second time.

/// The mask inputs of a batch, every sequence's after the one before: boolean masks, the bias
/// (`[q_len, kv_len]` per sequence, or `[n_heads, q_len, kv_len]` with `bias_heads`) and
/// block ids (`[kv_len]` per sequence).
struct SeqMasks<'a> {
    masks: &'a [Vec<bool>],
    bias: &'a [f32],
    bias_heads: bool,
    ids: &'a [i32],
}

/// The f64 reference of a batch with masks, sequence by sequence: sequence i (`lens[i]` =
/// (q_len, kv_len)) attends with its rows of `q` (one after another, `heads.n_heads` x `HD`
/// each) over K/V `kv.0[i]` / `kv.1[i]` with its part of `m`.
fn batch_reference(
    q: &[f32],
    lens: &[(usize, usize)],
    heads: Heads,
    kv: (&[Vec<f64>], &[Vec<f64>]),
    m: &SeqMasks,
) -> Vec<f64> {
    let hb = if m.bias_heads { heads.n_heads } else { 1 };
    let mut want = Vec::new();
    let (mut q0, mut b0, mut i0) = (0, 0, 0);
    for (i, &(q_len, kv_len)) in lens.iter().enumerate() {
        let n = q_len * heads.n_heads * HD;
        let nb = hb * q_len * kv_len;
        let b64: Vec<f64> = m.bias[b0..b0 + nb].iter().map(|&x| x as f64).collect();
        want.extend(reference::attention_masked(
            &rounded(&q[q0..q0 + n], DType::F32),
            &kv.0[i],
            &kv.1[i],
            None,
            reference::Dims {
                batch: 1,
                q_len,
                kv_len,
                n_heads: heads.n_heads,
                n_kv_heads: heads.n_kv_heads,
                head_dim: HD,
            },
            &reference::Options::default(),
            &reference::Masks {
                mask: Some(&m.masks[i]),
                bias: Some(&b64),
                bias_heads: m.bias_heads,
                block_ids: Some(&m.ids[i0..i0 + kv_len]),
            },
        ));
        q0 += n;
        b0 += nb;
        i0 += kv_len;
    }
    want
}

/// Key blocks the hidden-tile tests' masks hide from every query: 64 keys each, aligned to 64
/// (the tile of every kind at head_dim 16, and the chunk of 5 splits over 320 keys), so each
/// kind's unit of skipping (a tile, a step, a key) lies inside one or outside all of them.
const HIDDEN_BLOCKS: [std::ops::Range<usize>; 2] = [64..128, 192..256];
/// A block hidden from every query but a few keys of two rows: its tiles must not be skipped.
const PARTLY_HIDDEN: std::ops::Range<usize> = 128..192;

/// The hidden-tile masks over `kv_len` keys for `q_len` queries: random elsewhere, the blocks
/// above hidden, `hidden_row` (if any) hidden entirely; `all_hidden` hides every key.
fn hidden_tile_mask(
    q_len: usize,
    kv_len: usize,
    hidden_row: Option<usize>,
    all_hidden: bool,
    rng: &mut Rng,
) -> Vec<bool> {
    let mut mask: Vec<bool> = (0..q_len * kv_len)
        .map(|_| !all_hidden && rng.uniform(0.0, 1.0) < 0.75)
        .collect();
    for t in 0..q_len {
        let row = &mut mask[t * kv_len..][..kv_len];
        for b in HIDDEN_BLOCKS.iter().chain([&PARTLY_HIDDEN]) {
            row[b.clone()].fill(false);
        }
    }
    if !all_hidden {
        // The partly hidden block: query 0 sees one key, the last query another.
        mask[PARTLY_HIDDEN.start + 22] = true;
        mask[(q_len - 1) * kv_len + PARTLY_HIDDEN.end - 1] = true;
    }
    if let Some(t) = hidden_row {
        mask[t * kv_len..][..kv_len].fill(false);
    }
    mask
}

/// K or V rows `[kv_len, n_kv_heads, HD]` with NaN in every key of the hidden blocks: a kernel
/// that loads such a key and multiplies its V by a probability of 0 gets NaN. The second value:
/// the same with 0 there, for the reference (the mask hides those keys, so they change nothing).
fn poisoned(rng: &mut Rng, kv_len: usize, n_kv_heads: usize) -> (Vec<f32>, Vec<f64>) {
    let row = n_kv_heads * HD;
    let mut x = rng.vec(kv_len * row, 1.0);
    let mut clean = rounded(&x, DType::F32);
    for b in &HIDDEN_BLOCKS {
        x[b.start * row..b.end * row].fill(f32::NAN);
        clean[b.start * row..b.end * row].fill(0.0);
    }
    (x, clean)
}

/// One contiguous call of `kind` over the hidden-tile masks (with a per-head bias and block ids,
/// causal) against the reference; returns the output.
fn run_hidden_tiles(
    ctx: &Context,
    kind: Kind,
    q_len: usize,
    splits: u32,
    hidden_row: usize,
    all_hidden: bool,
    seed: u64,
) -> Vec<f32> {
    let c = Case {
        kind: Some(kind),
        splits: Some(splits),
        hidden_row: Some(hidden_row),
        ..case(q_len, 320)
    };
    let mut rng = Rng::new(seed);
    let q = rng.vec(q_len * c.n_heads * HD, 1.0);
    let (k, k64) = poisoned(&mut rng, c.kv_len, c.n_kv_heads);
    let (v, v64) = poisoned(&mut rng, c.kv_len, c.n_kv_heads);
    let (_, bias, ids) = masks_of(&c, &mut rng);
    let mask = hidden_tile_mask(q_len, c.kv_len, Some(hidden_row), all_hidden, &mut rng);
    let (qs, ks) = ([q_len, c.n_heads, HD], [c.kv_len, c.n_kv_heads, HD]);
    let qt = upload_at(ctx, &q, &qs, DType::F32, ALIGNED_GUARD);
    let kt = upload_at(ctx, &k, &ks, DType::F32, ALIGNED_GUARD);
    let vt = upload_at(ctx, &v, &ks, DType::F32, ALIGNED_GUARD);
    let out = nan_output(ctx, &qs, DType::F32);
    let packed = pack_mask(&mask);
    let set = Inputs::upload_masks(
        ctx,
        None,
        Some(&packed),
        Some((&bias, &bias_shape(&c))),
        Some(&ids),
    )
    .expect("upload masks");
    op_of(&c)
        .run(ctx, &qt, &kt, &vt, set.inputs(), &out)
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    let bias64: Vec<f64> = bias.iter().map(|&x| x as f64).collect();
    let want = reference::attention_masked(
        &rounded(&q, DType::F32),
        &k64,
        &v64,
        None,
        dims(&c),
        &ref_opts(&c),
        &reference::Masks {
            mask: Some(&mask),
            bias: Some(&bias64),
            bias_heads: true,
            block_ids: Some(&ids),
        },
    );
    let what = format!("{kind:?} q_len {q_len} splits {splits} all hidden {all_hidden}");
    assert_close(ctx, &out, &want, tolerance(DType::F32), &what);
    let got = ctx.read_f32(&out).expect("readback");
    assert_zero_row(&c, &got);
    if all_hidden {
        assert!(got.iter().all(|&x| x == 0.0), "{what}: not all 0");
    }
    got
}

/// Tiles the boolean mask hides from every row are never loaded (issue 23): NaN in their K and
/// V rows must not reach the output, in every kind, one pass and split, beside a partly hidden
/// block (its tiles are loaded: two of its keys are visible), a fully hidden row and a mask
/// that hides every key.
#[test]
fn tiles_the_mask_hides_are_skipped() {
    let ctx = ctx();
    // (kind, q_len, split counts): the row counts and split forms of the masked pipelines
    // the tests above build (the paged test runs the subgroup decode split).
    let mut kinds = vec![
        (Kind::Prefill, 40, &[1][..]),
        (Kind::PrefillKeys, 40, &[1, 5][..]),
        (Kind::Decode, 3, &[1, 5][..]),
        (Kind::DecodeKeys, 2, &[1, 5][..]),
    ];
    if ctx.caps().subgroups {
        kinds.push((Kind::PrefillSubgroup, 40, &[1, 5][..]));
        kinds.push((Kind::DecodeSubgroup, 2, &[1][..]));
    }
    for (i, &(kind, q_len, splits)) in kinds.iter().enumerate() {
        let seed = 40 + i as u64;
        for &s in splits {
            run_hidden_tiles(&ctx, kind, q_len, s, 1, false, seed);
        }
        run_hidden_tiles(&ctx, kind, q_len, 1, 0, true, seed + 100);
    }
}

/// `tiles_the_mask_hides_are_skipped` over pages: a prefill sequence and a decode sequence
/// (and a second decode sequence whose mask hides everything), each kernel of each row kind.
#[test]
fn paged_tiles_the_mask_hides_are_skipped() {
    let ctx = ctx();
    let page: usize = 16;
    let heads = Heads {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: HD,
    };
    let lens: [(usize, usize); 3] = [(40, 320), (1, 320), (1, 320)];
    let mut rng = Rng::new(60);
    let n_pages: usize = lens.iter().map(|l| l.1.div_ceil(page)).sum();
    let mut next = 0u32;
    let seqs: Vec<BatchSeq> = lens
        .iter()
        .map(|&(q_len, kv_len)| BatchSeq {
            q_len,
            kv_len,
            pages: (0..kv_len.div_ceil(page))
                .map(|_| {
                    next += 1;
                    // Pages out of order.
                    (next * 7) % n_pages as u32
                })
                .collect(),
        })
        .collect();
    let cache = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages,
            page_size: page,
            n_kv_heads: heads.n_kv_heads,
            head_dim: HD,
            dtype: DType::F32,
            ..PagedKvConfig::default()
        },
    )
    .unwrap();
    let (mut k64s, mut v64s, mut masks) = (Vec::new(), Vec::new(), Vec::new());
    for (i, s) in seqs.iter().enumerate() {
        let (k, k64) = poisoned(&mut rng, s.kv_len, heads.n_kv_heads);
        let (v, v64) = poisoned(&mut rng, s.kv_len, heads.n_kv_heads);
        cache.write_pages(&ctx, &s.pages, &k, &v).unwrap();
        k64s.push(k64);
        v64s.push(v64);
        let hidden_row = (i == 0).then_some(20);
        masks.push(hidden_tile_mask(
            s.q_len,
            s.kv_len,
            hidden_row,
            i == 2,
            &mut rng,
        ));
    }
    let packed = segment_pack_mask(&masks.iter().map(|m| &m[..]).collect::<Vec<_>>());
    let ids: Vec<i32> = lens
        .iter()
        .flat_map(|&(_, kv)| block_ids_of(&(0..kv).map(|j| (j % 11 > 6) as u8).collect::<Vec<_>>()))
        .collect();
    let qk: usize = lens.iter().map(|l| l.0 * l.1).sum();
    let bias = rng.vec(qk, 0.5);
    let set =
        Inputs::upload_masks(&ctx, None, Some(&packed), Some((&bias, &[qk])), Some(&ids)).unwrap();
    let total_q: usize = lens.iter().map(|l| l.0).sum();
    let q = rng.vec(total_q * heads.n_heads * HD, 1.0);
    let qt = ctx.upload(&q, &[total_q, heads.n_heads, HD]).unwrap();
    let want = batch_reference(
        &q,
        &lens,
        heads,
        (&k64s, &v64s),
        &SeqMasks {
            masks: &masks,
            bias: &bias,
            bias_heads: false,
            ids: &ids,
        },
    );
    // The fully hidden rows and the sequence whose mask hides everything are 0.
    let row = heads.n_heads * HD;
    let zero_rows = [20, 41];
    for &t in &zero_rows {
        assert!(want[t * row..][..row].iter().all(|&x| x == 0.0), "row {t}");
    }
    let mut plans = Vec::new();
    let mut prefill = vec![Kind::Prefill];
    let mut decode = vec![Kind::Decode, Kind::DecodeKeys];
    if ctx.caps().subgroups {
        prefill.push(Kind::PrefillSubgroup);
        decode.push(Kind::DecodeSubgroup);
    }
    for (i, &d) in decode.iter().enumerate() {
        for splits in [1, 5] {
            plans.push(PlanOptions {
                splits: Some(splits),
                prefill: Some(prefill[(i + splits as usize / 5) % prefill.len()]),
                decode: Some(d),
                ..Default::default()
            });
        }
    }
    for plan in plans {
        let batch = PagedBatch::from_parts_with(&ctx, page, n_pages, &seqs, heads, &plan).unwrap();
        let out = nan_output(&ctx, &[total_q, heads.n_heads, HD], DType::F32);
        Attention::default()
            .run_paged(&ctx, &qt, &cache, &batch, set.inputs(), &out)
            .unwrap_or_else(|e| panic!("{plan:?}: {e}"));
        assert_close(
            &ctx,
            &out,
            &want,
            tolerance(DType::F32),
            &format!("paged {plan:?}"),
        );
        let o = ctx.read_f32(&out).unwrap();
        for &t in &zero_rows {
            assert!(
                o[t * row..][..row].iter().all(|&x| x == 0.0),
                "{plan:?}: row {t}"
            );
        }
    }
}

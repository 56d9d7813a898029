//! The paged KV cache and variable-length attention over it: the page table's bookkeeping
//! (allocation, fork, copy-on-write, reuse, all-or-nothing failure), attention read in place from
//! shuffled, shared and multi-buffer pages against the f64 reference and bit for bit against the
//! contiguous kernel at the same split configuration, the one-pass append (with RoPE), and every
//! validation rule.

use crate::common;

use common::*;
use llama_kernels::compare::compare;
use llama_kernels::ops::attention::Kind;
use llama_kernels::ops::paged::{
    BatchSeq, Heads, KeptPath, PageCopy, PageLayout, PlanOptions, SeqId, SlotCopy,
};
use llama_kernels::ops::rope::HeadNorm;
use llama_kernels::reference::attention as reference;
use llama_kernels::{
    Attention, Context, DType, Error, KvFormat, PageTable, PagedBatch, PagedKvCache, PagedKvConfig,
    Rope, Tensor,
};

/// The attention tests' head size (one pipeline specialisation per dtype and kernel, which a CPU
/// adapter compiles on first use: the smallest head size keeps them cheap; real head sizes run in
/// `large_and_odd_head_sizes` and `pool_past_128_mib`).
const HD: usize = 16;
const PAGE: usize = 16;

fn tol(dtype: DType) -> f64 {
    llama_kernels::compare::tolerance(dtype)
}

/// [`tol`], or the softcap limit of this adapter when `op` caps its logits with tanh.
fn tol_for(ctx: &Context, op: &Attention, dtype: DType) -> f64 {
    match op.softcap > 0.0 {
        true => softcap_tolerance(ctx, dtype),
        false => tol(dtype),
    }
}

/// A batch over a pool: every sequence's K/V in token order (host copies), its pages, its queries.
struct World {
    heads: Heads,
    dtype: DType,
    layout: PageLayout,
    n_pages: usize,
    seqs: Vec<BatchSeq>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    q: Vec<f32>,
}

/// Sequences `(q_len, kv_len)`, pages drawn from a shuffled pool; sequence `share.1` starts
/// with the first `share.2` pages of sequence `share.0` (a shared prompt prefix). Pages no
/// sequence owns hold noise, so reading the wrong page shows.
fn world(
    seed: u64,
    lens: &[(usize, usize)],
    heads: Heads,
    dtype: DType,
    layout: PageLayout,
    share: Option<(usize, usize, usize)>,
) -> World {
    let mut rng = Rng::new(seed);
    let need: usize = lens.iter().map(|l| l.1.div_ceil(PAGE)).sum::<usize>() + 3;
    let n_pages = need;
    let mut pool: Vec<u32> = (0..n_pages as u32).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, rng.below(i + 1));
    }
    let row = heads.n_kv_heads * heads.head_dim;
    let mut seqs = Vec::new();
    let mut k: Vec<Vec<f32>> = Vec::new();
    let mut v: Vec<Vec<f32>> = Vec::new();
    for (i, &(q_len, kv_len)) in lens.iter().enumerate() {
        let mut pages: Vec<u32> = (0..kv_len.div_ceil(PAGE))
            .map(|_| pool.pop().unwrap())
            .collect();
        let mut ks = rng.vec(kv_len * row, 1.0);
        let mut vs = rng.vec(kv_len * row, 1.0);
        if let Some((from, to, n)) = share {
            if i == to {
                let src: &BatchSeq = &seqs[from];
                pages[..n].copy_from_slice(&src.pages[..n]);
                let m = n * PAGE * row;
                ks[..m].copy_from_slice(&k[from][..m]);
                vs[..m].copy_from_slice(&v[from][..m]);
            }
        }
        seqs.push(BatchSeq {
            q_len,
            kv_len,
            pages,
        });
        k.push(ks);
        v.push(vs);
    }
    let total_q: usize = lens.iter().map(|l| l.0).sum();
    let q = rng.vec(total_q * heads.n_heads * heads.head_dim, 1.0);
    World {
        heads,
        dtype,
        layout,
        n_pages,
        seqs,
        k,
        v,
        q,
    }
}

impl World {
    fn cache(&self, ctx: &Context, seed: u64) -> PagedKvCache {
        let h = self.heads;
        let cache = PagedKvCache::new(
            ctx,
            PagedKvConfig {
                n_pages: self.n_pages,
                page_size: PAGE,
                n_kv_heads: h.n_kv_heads,
                head_dim: h.head_dim,
                dtype: self.dtype,
                layout: self.layout,
                kv_format: None,
            },
        )
        .expect("cache");
        // Noise in every page first, then each sequence's pages (shared pages twice, equal).
        let per = PAGE * h.n_kv_heads * h.head_dim;
        let mut rng = Rng::new(seed);
        let all: Vec<u32> = (0..self.n_pages as u32).collect();
        cache
            .write_pages(
                ctx,
                &all,
                &rng.vec(all.len() * per, 3.0),
                &rng.vec(all.len() * per, 3.0),
            )
            .expect("noise");
        for (s, (k, v)) in self.seqs.iter().zip(self.k.iter().zip(&self.v)) {
            let n = s.kv_len.div_ceil(PAGE);
            let mut kp = k.clone();
            let mut vp = v.clone();
            kp.resize(n * per, 0.0);
            vp.resize(n * per, 0.0);
            cache
                .write_pages(ctx, &s.pages[..n], &kp, &vp)
                .expect("pages");
        }
        cache
    }

    fn batch(&self, ctx: &Context, splits: Option<u32>) -> PagedBatch {
        PagedBatch::from_parts(ctx, PAGE, self.n_pages, &self.seqs, self.heads, splits)
            .expect("batch")
    }

    fn batch_with(&self, ctx: &Context, plan: PlanOptions) -> PagedBatch {
        PagedBatch::from_parts_with(ctx, PAGE, self.n_pages, &self.seqs, self.heads, &plan)
            .expect("batch")
    }

    fn total_q(&self) -> usize {
        self.seqs.iter().map(|s| s.q_len).sum()
    }

    fn q_shape(&self) -> [usize; 3] {
        [self.total_q(), self.heads.n_heads, self.heads.head_dim]
    }

    /// The f64 reference, sequence by sequence, packed like q.
    fn want(&self, op: &Attention, sinks: Option<&[f32]>) -> Vec<f64> {
        let h = self.heads;
        let qr = rounded(&self.q, self.dtype);
        let s64: Option<Vec<f64>> = sinks.map(|s| s.iter().map(|&x| x as f64).collect());
        let mut out = Vec::new();
        let mut q0 = 0;
        for (i, s) in self.seqs.iter().enumerate() {
            let n = s.q_len * h.n_heads * h.head_dim;
            out.extend(reference::attention(
                &qr[q0..q0 + n],
                &rounded(&self.k[i], self.dtype),
                &rounded(&self.v[i], self.dtype),
                s64.as_deref(),
                reference::Dims {
                    batch: 1,
                    q_len: s.q_len,
                    kv_len: s.kv_len,
                    n_heads: h.n_heads,
                    n_kv_heads: h.n_kv_heads,
                    head_dim: h.head_dim,
                },
                &reference::Options {
                    causal: op.causal,
                    q_offset: None,
                    scale: op.scale.map(|x| x as f64),
                    window: op.window as usize,
                    window_left: op.window_left.map(|w| w as usize),
                    window_right: op.window_right.map(|w| w as usize),
                    chunk: op.chunk_size as usize,
                    softcap: op.softcap as f64,
                    alibi: op.alibi,
                },
            ));
            q0 += n;
        }
        out
    }

    /// Run paged attention; returns the output (guards checked).
    fn run(
        &self,
        ctx: &Context,
        cache: &PagedKvCache,
        batch: &PagedBatch,
        op: &Attention,
        sinks: Option<&[f32]>,
    ) -> Vec<f32> {
        let q = upload_guarded(ctx, &self.q, &self.q_shape(), self.dtype);
        let out = nan_output(ctx, &self.q_shape(), self.dtype);
        let st = sinks.map(|s| ctx.upload(s, &[s.len()]).unwrap());
        op.run_paged(ctx, &q, cache, batch, st.as_ref(), &out)
            .expect("paged attention");
        assert_guards(ctx, &out, "paged out");
        ctx.read_f32(&out).unwrap()
    }
}

fn gqa() -> Heads {
    // Llama-3-8B's 4:1 grouping at the tests' head size.
    Heads {
        n_heads: 8,
        n_kv_heads: 2,
        head_dim: HD,
    }
}

/// Page-boundary lengths (page-1, page, page+1), a sequence with no keys (zeros), one with no
/// queries, decode and prefill rows mixed, a shared prefix; every dtype and both layouts.
#[test]
fn mixed_batch_matches_the_reference() {
    let ctx = ctx();
    let lens = [
        (1, 15),
        (1, 16),
        (3, 17),
        (20, 40),
        (0, 9),
        (2, 0),
        (1, 100),
        (4, 70),
    ];
    let mut i = 0;
    for dtype in DType::ALL {
        for layout in [PageLayout::Nhd, PageLayout::Hnd] {
            i += 1;
            let w = world(100 + i, &lens, gqa(), dtype, layout, Some((6, 7, 3)));
            let cache = w.cache(&ctx, 200 + i);
            let batch = w.batch(&ctx, None);
            let op = Attention::default();
            let got = w.run(&ctx, &cache, &batch, &op, None);
            let cmp = compare(&got, &w.want(&op, None));
            assert!(cmp.passes(tol(dtype)), "{dtype} {layout:?}: {cmp}");
            // The sequence with no keys (queries 21..23 of the packed rows) outputs exactly 0.
            let row = w.heads.n_heads * HD;
            let start = 1 + 1 + 3 + 20;
            assert!(got[start * row..(start + 2) * row]
                .iter()
                .all(|&x| x == 0.0));
        }
    }
}

/// The largest head (Gemma-2's 256, whose tiles hold the fewest keys) and a head size that is
/// not a power of two (80, Phi-2), in bf16 with GQA 2:1.
#[test]
fn large_and_odd_head_sizes() {
    let ctx = ctx();
    // 256 on the workgroup-tile kernel (its fewest keys per tile), 80 on the adapter's default
    // (DecodeKeys here; DecodeKeys at 256 is the contiguous kernel's step, tested there).
    for (hd, decode) in [(256, Some(Kind::Decode)), (80, None)] {
        let heads = Heads {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: hd,
        };
        let w = world(
            800 + hd as u64,
            &[(1, 47), (9, 33), (2, 16)],
            heads,
            DType::BF16,
            PageLayout::Nhd,
            None,
        );
        let cache = w.cache(&ctx, 801);
        let batch = w.batch_with(
            &ctx,
            PlanOptions {
                splits: None,
                decode,
                prefill: Some(Kind::Prefill),
                ..Default::default()
            },
        );
        let op = Attention::default();
        let got = w.run(&ctx, &cache, &batch, &op, None);
        let cmp = compare(&got, &w.want(&op, None));
        assert!(cmp.passes(tol(DType::BF16)), "head_dim {hd}: {cmp}");
    }
}

/// Every masking and logit option of [`Attention`], per sequence: non-causal, two-sided and
/// causal windows, chunked attention, softcap, sinks, a custom scale and ALiBi, in f32 (the
/// dtypes share the code above).
#[test]
fn every_option_per_sequence() {
    let ctx = ctx();
    let lens = [(1, 33), (5, 50), (12, 90), (1, 200)];
    let w = world(300, &lens, gqa(), DType::F32, PageLayout::Nhd, None);
    let cache = w.cache(&ctx, 301);
    let batch = w.batch(&ctx, None);
    let sinks: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
    let options = [
        Attention::non_causal(),
        Attention {
            window: 20,
            ..Default::default()
        },
        Attention {
            causal: false,
            window_left: Some(10),
            window_right: Some(10),
            ..Default::default()
        },
        Attention {
            chunk_size: 32,
            softcap: 5.0,
            ..Default::default()
        },
        Attention {
            scale: Some(0.2),
            window_left: Some(40),
            chunk_size: 64,
            ..Default::default()
        },
        Attention {
            alibi: true,
            ..Default::default()
        },
        Attention {
            alibi: true,
            causal: false,
            window_left: Some(30),
            window_right: Some(8),
            softcap: 5.0,
            ..Default::default()
        },
    ];
    for (i, op) in options.iter().enumerate() {
        let s = (i % 2 == 1).then_some(&sinks[..]);
        let got = w.run(&ctx, &cache, &batch, op, s);
        let cmp = compare(&got, &w.want(op, s));
        assert!(cmp.passes(tol_for(&ctx, op, DType::F32)), "{op:?}: {cmp}");
    }
}

/// With the same split count, each sequence's rows equal the contiguous kernel's on that
/// sequence alone, bit for bit (for few queries the decode kernel the batch was planned with,
/// the workgroup-tile `Decode` or the CPU adapters' `DecodeKeys`; prefill for many), and the
/// split count does not change the result beyond the tolerance.
#[test]
fn equals_contiguous_attention_bitwise() {
    let ctx = ctx();
    let lens = [(1, 100), (3, 47), (12, 64)];
    for decode in [Kind::Decode, Kind::DecodeKeys] {
        for dtype in [DType::F32, DType::BF16] {
            let w = world(400, &lens, gqa(), dtype, PageLayout::Nhd, None);
            let cache = w.cache(&ctx, 401);
            for splits in [1u32, 3] {
                let batch = w.batch_with(
                    &ctx,
                    PlanOptions {
                        splits: Some(splits),
                        decode: Some(decode),
                        prefill: Some(Kind::Prefill),
                        ..Default::default()
                    },
                );
                let got = w.run(&ctx, &cache, &batch, &Attention::default(), None);
                bitwise_against_contiguous(&ctx, &w, &got, decode, Kind::Decode, splits);
            }
        }
    }
}

/// Each sequence of `w` with at most 8 queries (decode) run alone through the contiguous kernel
/// `decode` with `splits` splits, and each with more (the paged prefill rows) through the
/// contiguous `prefill_kind` with one split when `splits` is 1, equals its rows of the paged
/// output `got` bit for bit: `Kind::Decode` for prefill rows that run the workgroup-tile design
/// with one key lane (the contiguous `Kind::Prefill` is register-tiled, 4 rows per invocation,
/// and sums in another order), `Kind::PrefillSubgroup` for rows planned with it.
fn bitwise_against_contiguous(
    ctx: &Context,
    w: &World,
    got: &[f32],
    decode: Kind,
    prefill_kind: Kind,
    splits: u32,
) {
    let h = w.heads;
    let dtype = w.dtype;
    let mut q0 = 0;
    for (i, s) in w.seqs.iter().enumerate() {
        let n = s.q_len * h.n_heads * h.head_dim;
        let prefill = s.q_len > 8;
        let kind = if prefill { prefill_kind } else { decode };
        // The contiguous op needs at least one key; a prefill split over keys is planned
        // differently from the paged one.
        if n == 0 || s.kv_len == 0 || (prefill && splits > 1) {
            q0 += n;
            continue;
        }
        let op = Attention {
            kind: Some(kind),
            splits: Some(splits),
            ..Default::default()
        };
        let qt = ctx
            .upload_as(&w.q[q0..q0 + n], &[s.q_len, h.n_heads, h.head_dim], dtype)
            .unwrap();
        let kt = ctx
            .upload_as(&w.k[i], &[s.kv_len, h.n_kv_heads, h.head_dim], dtype)
            .unwrap();
        let vt = ctx
            .upload_as(&w.v[i], &[s.kv_len, h.n_kv_heads, h.head_dim], dtype)
            .unwrap();
        let out = ctx.empty(qt.shape(), dtype).unwrap();
        op.run(ctx, &qt, &kt, &vt, None, &out).unwrap();
        let want = ctx.read_f32(&out).unwrap();
        assert_same_arithmetic(
            ctx,
            &got[q0..q0 + n],
            &want,
            &format!(
                "{dtype} sequence {i} ({kind:?}, {splits} splits) against the contiguous kernel"
            ),
        );
        q0 += n;
    }
}

/// The CPU adapters' decode kernel over pages (`DecodeKeys`, the default for decode rows here)
/// and the workgroup-tile one, forced each way, against the f64 reference: MHA sequences whose
/// rows take 1, 2 and 4 rows per DecodeKeys workgroup (three passes in one call) beside a
/// prefill sequence and page-boundary lengths, both layouts, f32 and bf16; and bit for bit
/// against the contiguous DecodeKeys at the same split count with a split past the keys.
#[test]
fn decode_kernels_over_pages() {
    let ctx = ctx();
    let mha = Heads {
        n_heads: 2,
        n_kv_heads: 2,
        head_dim: HD,
    };
    // q_len 1, 2, 3 -> 1, 2, 4 rows per DecodeKeys workgroup; a 1-key, a 0-key sequence.
    let lens = [
        (1, 31),
        (2, 16),
        (3, 600),
        (10, 40),
        (1, 1),
        (1, 0),
        (2, 17),
    ];
    // One layout per dtype: the layout changes strides, not code, and every dtype and kernel
    // pair is one more specialisation for lavapipe's LLVM to compile.
    let mut i = 0;
    for (dtype, layout) in [
        (DType::F32, PageLayout::Nhd),
        (DType::BF16, PageLayout::Hnd),
    ] {
        i += 1;
        let w = world(700 + i, &lens, mha, dtype, layout, Some((2, 6, 1)));
        let cache = w.cache(&ctx, 710 + i);
        let cpu = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
        let default = match (cpu, ctx.caps().subgroups) {
            (true, _) => Kind::DecodeKeys,
            (false, true) => Kind::DecodeSubgroup,
            (false, false) => Kind::Decode,
        };
        assert_eq!(
            w.batch(&ctx, None).kinds()[..3],
            [default; 3],
            "CPU adapters plan DecodeKeys for decode rows, GPUs DecodeSubgroup where they have \
             SUBGROUP, else the tile kernel"
        );
        for decode in [Kind::DecodeKeys, Kind::Decode] {
            let batch = w.batch_with(
                &ctx,
                PlanOptions {
                    splits: None,
                    decode: Some(decode),
                    prefill: Some(Kind::Prefill),
                    ..Default::default()
                },
            );
            assert_eq!(batch.kinds()[3], Kind::Prefill);
            for alibi in [false, true] {
                let op = Attention {
                    alibi,
                    ..Default::default()
                };
                let got = w.run(&ctx, &cache, &batch, &op, None);
                let cmp = compare(&got, &w.want(&op, None));
                assert!(
                    cmp.passes(tol(dtype)),
                    "{dtype} {layout:?} {decode:?} alibi {alibi}: {cmp}"
                );
            }
        }
        // 4 splits of 150 keys (and of 1 key: three empty splits) against the contiguous
        // kernel (f32 only: the dtype does not change the shared key-lane step).
        if dtype != DType::F32 {
            continue;
        }
        let batch = w.batch_with(
            &ctx,
            PlanOptions {
                splits: Some(4),
                decode: Some(Kind::DecodeKeys),
                prefill: Some(Kind::Prefill),
                ..Default::default()
            },
        );
        let got = w.run(&ctx, &cache, &batch, &Attention::default(), None);
        bitwise_against_contiguous(&ctx, &w, &got, Kind::DecodeKeys, Kind::Decode, 4);
    }
    // Options per sequence through DecodeKeys (sinks, windows, softcap, chunks) in f32, GQA.
    let w = world(
        720,
        &[(1, 70), (4, 90), (2, 33)],
        gqa(),
        DType::F32,
        PageLayout::Hnd,
        None,
    );
    let cache = w.cache(&ctx, 721);
    let batch = w.batch_with(
        &ctx,
        PlanOptions {
            splits: Some(2),
            decode: Some(Kind::DecodeKeys),
            prefill: Some(Kind::Prefill),
            ..Default::default()
        },
    );
    let sinks: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
    for (op, s) in [
        (
            Attention {
                window: 20,
                softcap: 5.0,
                ..Default::default()
            },
            Some(&sinks[..]),
        ),
        (
            Attention {
                causal: false,
                chunk_size: 32,
                window_right: Some(3),
                ..Default::default()
            },
            None,
        ),
        (
            Attention {
                alibi: true,
                window: 30,
                ..Default::default()
            },
            Some(&sinks[..]),
        ),
    ] {
        let got = w.run(&ctx, &cache, &batch, &op, s);
        let cmp = compare(&got, &w.want(&op, s));
        assert!(cmp.passes(tol_for(&ctx, &op, DType::F32)), "{op:?}: {cmp}");
    }
}

/// A pool spread over three buffers (a device with WebGPU's default limits, 8 storage buffers
/// per stage and 16 KiB of workgroup memory, and a binding limit that holds 8 pages), sequences
/// whose pages sit in all of them, decode and prefill.
#[test]
fn pool_over_several_buffers() {
    let ctx0 = ctx();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("adapter");
    // 8 f32 pages of 16 tokens x 2 kv heads x 16 (K and V): 32 KiB.
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 1 << 15,
        ..wgpu::Limits::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .expect("device");
    let small = Context::from_device(&device, &queue);
    drop(ctx0);
    let lens = [(1, 200), (48, 48)];
    let w = world(500, &lens, gqa(), DType::F32, PageLayout::Nhd, None);
    let cache = w.cache(&small, 501);
    assert_eq!(cache.buffers().len(), 3);
    let batch = w.batch(&small, None);
    let op = Attention::default();
    let got = w.run(&small, &cache, &batch, &op, None);
    let cmp = compare(&got, &w.want(&op, None));
    assert!(cmp.passes(tol(DType::F32)), "{cmp}");
    // The prefill rows (one split, one lane each) write their output directly: only the decode
    // row has partials (2 kv heads x 4 rows x splits, one per split: DecodeKeys' lanes own head
    // slices).
    assert_eq!(batch.partials(), 2 * 4 * batch.splits()[0]);
    // Four buffers' worth of pages is refused at creation, naming the limit.
    expect_err(
        PagedKvCache::new(&small, PagedKvConfig { n_pages: 25, page_size: PAGE, n_kv_heads: 2, head_dim: HD, dtype: DType::F32, layout: PageLayout::Nhd, kv_format: None }),
        "paged",
        |e| matches!(e, Error::Limit { .. }),
        "25 pages of 4096 bytes need 4 buffers of at most 8 pages (32768 bytes per binding); the attention kernel binds at most 3",
    );
}

/// A pool larger than lavapipe's 128 MiB binding limit: two buffers, one sequence with a page
/// in each.
#[test]
fn pool_past_128_mib() {
    let ctx = ctx();
    let max = ctx.limits().max_storage_buffer_binding_size;
    // f32 pages of 128 tokens x 8 kv heads x 128 (K and V): 1 MiB each.
    let page_bytes = 2 * 128 * 8 * 128 * 4u64;
    let per = (max / page_bytes) as usize;
    let n_pages = per + 2;
    let cache = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages,
            page_size: 128,
            n_kv_heads: 8,
            head_dim: 128,
            dtype: DType::F32,
            layout: PageLayout::Nhd,
            kv_format: None,
        },
    )
    .unwrap();
    assert_eq!(cache.buffers().len(), 2);
    assert!(n_pages as u64 * page_bytes > max);
    let heads = Heads {
        n_heads: 8,
        n_kv_heads: 8,
        head_dim: 128,
    };
    let kv_len = 200;
    let pages = vec![1u32, per as u32 + 1];
    let mut rng = Rng::new(600);
    let row = 8 * 128;
    let k = rng.vec(kv_len * row, 1.0);
    let v = rng.vec(kv_len * row, 1.0);
    let mut kp = k.clone();
    let mut vp = v.clone();
    kp.resize(256 * row, 0.0);
    vp.resize(256 * row, 0.0);
    cache.write_pages(&ctx, &pages, &kp, &vp).unwrap();
    let seqs = [BatchSeq {
        q_len: 1,
        kv_len,
        pages,
    }];
    let batch = PagedBatch::from_parts(&ctx, 128, n_pages, &seqs, heads, None).unwrap();
    let q = rng.vec(row, 1.0);
    let qt = ctx.upload(&q, &[1, 8, 128]).unwrap();
    let out = nan_output(&ctx, &[1, 8, 128], DType::F32);
    Attention::default()
        .run_paged(&ctx, &qt, &cache, &batch, None, &out)
        .unwrap();
    let f = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let want = reference::attention(
        &f(&q),
        &f(&k),
        &f(&v),
        None,
        reference::Dims {
            batch: 1,
            q_len: 1,
            kv_len,
            n_heads: 8,
            n_kv_heads: 8,
            head_dim: 128,
        },
        &reference::Options::default(),
    );
    assert_close(&ctx, &out, &want, tol(DType::F32), "pool past 128 MiB");
}

/// Rollback: truncation frees the pages no other sequence shares and keeps shared ones (the next
/// append copies a shared partial page before writing); keeping an accepted path of a draft tree
/// moves its rows into place, copying a shared destination page first; a chain prefix moves
/// nothing; bad input is an `Err` that changes nothing.
#[test]
fn page_table_rollback() {
    let mut t = PageTable::new(8, 8).unwrap();
    let a = t.add_sequence();
    t.append(&[(a, 20)]).unwrap();
    let a_pages = t.pages(a).unwrap().to_vec();
    assert_eq!((a_pages.len(), t.free_pages()), (3, 5));
    // A fork shares all three pages; rolling a back to 9 tokens keeps 2 pages, frees none
    // (the third is b's too), and a's next append copies its shared partial page.
    let b = t.fork(a).unwrap();
    t.truncate(a, 9).unwrap();
    assert_eq!(t.len(a).unwrap(), 9);
    assert_eq!(t.pages(a).unwrap(), &a_pages[..2]);
    assert_eq!(t.free_pages(), 5);
    let copies = t.append(&[(a, 1)]).unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].src, a_pages[1]);
    assert_eq!(t.pages(b).unwrap(), &a_pages[..]);
    // b alone holds its third page now: truncating b to a page boundary frees it.
    t.truncate(b, 16).unwrap();
    assert_eq!(t.free_pages(), 5);
    t.truncate(b, 0).unwrap();
    assert_eq!((t.pages(b).unwrap().len(), t.free_pages()), (0, 6));
    expect_err(
        t.truncate(a, 11),
        "paged",
        is_param,
        "truncate: sequence 0 holds 10 tokens; it cannot be truncated to 11",
    );
    expect_err(t.truncate(SeqId(7), 0), "paged", is_param, "no sequence 7");

    // A tree of 7 draft tokens after 10 tokens (positions 10..17); keep offsets 0, 2, 5.
    t.append(&[(a, 7)]).unwrap();
    let pages = t.pages(a).unwrap().to_vec();
    let slot = |pos: usize| (pages[pos / 8] as usize * 8 + pos % 8) as u32;
    let kept = t.keep_path(a, 10, &[0, 2, 5]).unwrap();
    assert_eq!(
        kept,
        KeptPath {
            pages: vec![],
            rows: vec![
                SlotCopy {
                    src: slot(12),
                    dst: slot(11)
                },
                SlotCopy {
                    src: slot(15),
                    dst: slot(12)
                },
            ],
        }
    );
    assert_eq!(t.len(a).unwrap(), 13);
    // A chain: the accepted tokens are a prefix, nothing moves.
    t.append(&[(a, 4)]).unwrap();
    assert_eq!(t.keep_path(a, 13, &[0, 1]).unwrap(), KeptPath::default());
    assert_eq!(t.len(a).unwrap(), 15);
    // A shared destination page is copied first, and the moves write into the copy.
    t.append(&[(a, 3)]).unwrap();
    let c = t.fork(a).unwrap();
    let shared = t.pages(a).unwrap()[1];
    let kept = t.keep_path(a, 14, &[1, 3]).unwrap();
    let own = t.pages(a).unwrap()[1];
    assert_ne!(own, shared);
    assert_eq!(
        kept.pages,
        vec![PageCopy {
            src: shared,
            dst: own
        }]
    );
    assert_eq!(
        kept.rows,
        vec![
            SlotCopy {
                src: own * 8 + 7,
                dst: own * 8 + 6
            },
            SlotCopy {
                src: t.pages(c).unwrap()[2] * 8 + 1,
                dst: own * 8 + 7
            },
        ]
    );
    assert_eq!(t.pages(c).unwrap()[1], shared);
    // Bad paths change nothing.
    let before = (
        t.pages(a).unwrap().to_vec(),
        t.len(a).unwrap(),
        t.free_pages(),
    );
    for (base, acc, needle) in [
        (
            17,
            vec![0],
            "keep_path: base 17 is past the 16 tokens of sequence 0",
        ),
        (
            10,
            vec![2, 2],
            "keep_path: accepted offsets must increase strictly, got [2, 2]",
        ),
        (
            10,
            vec![0, 6],
            "keep_path: accepted offset 6 is past the 6 tree tokens of sequence 0",
        ),
    ] {
        expect_err(t.keep_path(a, base, &acc), "paged", is_param, needle);
    }
    assert_eq!(
        before,
        (
            t.pages(a).unwrap().to_vec(),
            t.len(a).unwrap(),
            t.free_pages()
        )
    );
    // Out of pages for the copy-on-write: an Err that changes nothing.
    let mut t = PageTable::new(2, 8).unwrap();
    let a = t.add_sequence();
    t.append(&[(a, 12)]).unwrap();
    let _fork = t.fork(a).unwrap();
    expect_err(
        t.keep_path(a, 8, &[2]),
        "paged",
        |e| matches!(e, Error::Limit { .. }),
        "out of pages: keeping the path copies 1 shared pages, 0 are free",
    );
    assert_eq!(t.len(a).unwrap(), 12);
}

/// `PagedKvCache::copy_slots` moves the K and V rows of every kv head, in both layouts and in a
/// half dtype, with a copy-on-write page copy first: the pool read back equals the host model
/// of `keep_path`'s result, and the other pages are untouched.
#[test]
fn keep_path_moves_rows() {
    let ctx = ctx();
    let (ps, n_kv, hd) = (8, 2, 16);
    for (dtype, layout) in [
        (DType::F32, PageLayout::Nhd),
        (DType::BF16, PageLayout::Hnd),
    ] {
        let cache = PagedKvCache::new(
            &ctx,
            PagedKvConfig {
                n_pages: 6,
                page_size: ps,
                n_kv_heads: n_kv,
                head_dim: hd,
                dtype,
                layout,
                kv_format: None,
            },
        )
        .unwrap();
        let per = ps * n_kv * hd;
        let mut rng = Rng::new(77);
        let all: Vec<u32> = (0..6).collect();
        let mut stored = |n: usize| -> Vec<f32> {
            rounded(&rng.vec(n, 1.0), dtype)
                .iter()
                .map(|&x| x as f32)
                .collect()
        };
        let (k, v) = (stored(6 * per), stored(6 * per));
        cache.write_pages(&ctx, &all, &k, &v).unwrap();
        let mut t = PageTable::new(6, ps).unwrap();
        let a = t.add_sequence();
        t.append(&[(a, 20)]).unwrap();
        let _other = t.fork(a).unwrap();
        let kept = t.keep_path(a, 6, &[0, 3, 4, 13]).unwrap();
        // Tree rows 6..20; the moves write into pages 0 and 1, both shared with the fork.
        assert_eq!(kept.pages.len(), 2, "{kept:?}");
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        cache.copy_pages(&ctx, &mut enc, &kept.pages).unwrap();
        cache.copy_slots(&ctx, &mut enc, &kept.rows).unwrap();
        ctx.queue().submit([enc.finish()]);
        // The host model: pages as written (token order), then the same copies.
        let row = n_kv * hd;
        let (mut km, mut vm) = (k.clone(), v.clone());
        for c in &kept.pages {
            let (s, d) = (c.src as usize * per, c.dst as usize * per);
            km.copy_within(s..s + per, d);
            vm.copy_within(s..s + per, d);
        }
        let (ks, vs) = (km.clone(), vm.clone());
        for m in &kept.rows {
            let (s, d) = (m.src as usize * row, m.dst as usize * row);
            km[d..d + row].copy_from_slice(&ks[s..s + row]);
            vm[d..d + row].copy_from_slice(&vs[s..s + row]);
        }
        let pool = Tensor::new(&cache.buffers()[0], 0, &[6 * 2 * per], dtype);
        let got = ctx.read_f32(&pool).unwrap();
        for slot in 0..6 * ps {
            for h in 0..n_kv {
                let (_, off) = cache.slot_offset(slot, h);
                let want = (slot * n_kv + h) * hd;
                assert_eq!(
                    got[off..off + hd],
                    km[want..want + hd],
                    "{dtype} K slot {slot}"
                );
                let vo = off + per;
                assert_eq!(
                    got[vo..vo + hd],
                    vm[want..want + hd],
                    "{dtype} V slot {slot}"
                );
            }
        }
        assert_eq!(t.len(a).unwrap(), 10);
    }
    expect_err(
        PagedKvCache::new(
            &ctx,
            PagedKvConfig {
                n_pages: 2,
                page_size: 8,
                n_kv_heads: 1,
                head_dim: 16,
                dtype: DType::F32,
                layout: PageLayout::Hnd,
                kv_format: None,
            },
        )
        .unwrap()
        .copy_slots(
            &ctx,
            &mut ctx.device().create_command_encoder(&Default::default()),
            &[SlotCopy { src: 0, dst: 16 }],
        ),
        "paged",
        |e| matches!(e, Error::Bounds { .. }),
        "slot 16 is outside the pool of 2 pages of 8 tokens",
    );
}

/// The page table: allocation by need, fork with a shared prefix, copy-on-write at the first
/// divergent page, reuse of freed pages, and a step that cannot get its pages changes nothing.
#[test]
fn page_table_bookkeeping() {
    let mut t = PageTable::new(6, 8).unwrap();
    let a = t.add_sequence();
    assert_eq!(t.append(&[(a, 13)]).unwrap(), vec![]);
    assert_eq!(t.len(a).unwrap(), 13);
    assert_eq!(t.pages(a).unwrap().len(), 2);
    assert_eq!(t.free_pages(), 4);
    // Fork shares both pages; the child's first append copies the partly filled last page.
    let b = t.fork(a).unwrap();
    assert_eq!(t.pages(b).unwrap(), t.pages(a).unwrap());
    assert_eq!(t.free_pages(), 4);
    let copies = t.append(&[(b, 1)]).unwrap();
    let a_pages = t.pages(a).unwrap().to_vec();
    let b_pages = t.pages(b).unwrap().to_vec();
    assert_eq!(
        copies,
        vec![PageCopy {
            src: a_pages[1],
            dst: b_pages[1]
        }]
    );
    assert_eq!(a_pages[0], b_pages[0]);
    assert_ne!(a_pages[1], b_pages[1]);
    // The parent's own next append no longer copies (its last page is its own again).
    assert_eq!(t.append(&[(a, 1)]).unwrap(), vec![]);
    assert_eq!(t.free_pages(), 3);
    // Out of pages: 3 free, the step needs 2 + 2: nothing changes.
    let before = (
        t.pages(a).unwrap().to_vec(),
        t.len(a).unwrap(),
        t.free_pages(),
    );
    expect_err(
        t.append(&[(a, 16), (b, 16)]),
        "paged",
        |e| matches!(e, Error::Limit { .. }),
        "out of pages: the step needs 4 new pages, 3 are free (sequence 1",
    );
    assert_eq!(
        before,
        (
            t.pages(a).unwrap().to_vec(),
            t.len(a).unwrap(),
            t.free_pages()
        )
    );
    // Freeing the fork returns only its own pages; the shared first page stays with a.
    t.remove(b).unwrap();
    assert_eq!(t.free_pages(), 4);
    t.remove(a).unwrap();
    assert_eq!(t.free_pages(), 6);
    // Reuse: a new sequence gets freed pages.
    let c = t.add_sequence();
    t.append(&[(c, 48)]).unwrap();
    assert_eq!(t.free_pages(), 0);
    expect_err(
        t.append(&[(c, 1)]),
        "paged",
        |e| matches!(e, Error::Limit { .. }),
        "out of pages",
    );
    // Bad input.
    expect_err(t.len(SeqId(9)), "paged", is_param, "no sequence 9");
    expect_err(
        t.append(&[(c, 0), (c, 0)]),
        "paged",
        is_param,
        "listed twice",
    );
    expect_err(
        PageTable::new(4, 12),
        "paged",
        is_param,
        "page_size 12 must be a power of two from 8 to 128",
    );
    expect_err(PageTable::new(4, 256), "paged", is_param, "from 8 to 128");
    expect_err(PageTable::new(0, 8), "paged", is_param, "n_pages 0");
}

/// Decode steps of a continuous batch: appends (with RoPE on K, at each token's position) for
/// several sequences at once, a fork sharing a prompt, its copy-on-write, and attention, checked
/// against the f64 reference over each sequence's whole history at every step. Three setups:
/// plain RoPE (K rotated straight into the pages), QK-norm with Qwen3's weights (normalised,
/// rotated and written in one pass, HND pages), and Gemma 3's `1 + w` norm on f32 rows for an
/// f16 cache (rotated into a scratch view, converted by the write pass).
#[test]
fn append_rope_fork_and_attend() {
    let ctx = ctx();
    let heads = gqa();
    let row = heads.n_kv_heads * HD;
    let mut rng = Rng::new(700);
    let setups = [
        (DType::F32, DType::F32, None, PageLayout::Nhd),
        (DType::F16, DType::F16, Some(0.0f32), PageLayout::Hnd),
        (DType::F16, DType::F32, Some(1.0f32), PageLayout::Nhd),
    ];
    for (dtype, new_dtype, norm_offset, layout) in setups {
        let mut table = PageTable::new(20, PAGE).unwrap();
        let cache = PagedKvCache::new(
            &ctx,
            PagedKvConfig {
                n_pages: 20,
                page_size: PAGE,
                n_kv_heads: 2,
                head_dim: HD,
                dtype,
                layout,
                kv_format: None,
            },
        )
        .unwrap();
        let weight: Vec<f32> = (0..HD).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        let wt = ctx.upload_as(&weight, &[HD], new_dtype).unwrap();
        let norm = norm_offset.map(|o| HeadNorm {
            weight: wt.clone(),
            eps: 1e-6,
            weight_offset: o,
        });
        let rope = Rope::default();
        let (inv, _) = llama_kernels::ops::rope::frequencies(rope.theta, HD, &rope.scaling, 64);
        // Host history per sequence: rotated K and V as the cache should hold them.
        let mut hist: Vec<(SeqId, Vec<f64>, Vec<f64>)> = Vec::new();
        let a = table.add_sequence();
        let c = table.add_sequence();
        hist.push((a, vec![], vec![]));
        hist.push((c, vec![], vec![]));
        // (step entries): prompts first, then a fork of a, then decode steps.
        let mut plan: Vec<Vec<(usize, usize)>> = vec![vec![(0, 21), (1, 5)]];
        for _ in 0..3 {
            plan.push(vec![(0, 1), (1, 1), (2, 1)]);
        }
        for (step, entries) in plan.iter().enumerate() {
            if step == 1 {
                let b = table.fork(a).unwrap();
                let (_, k, v) = hist[0].clone();
                hist.push((b, k, v));
            }
            let ents: Vec<(SeqId, usize)> = entries.iter().map(|&(i, n)| (hist[i].0, n)).collect();
            let copies = table.append(&ents).unwrap();
            if step == 1 {
                assert_eq!(
                    copies.len(),
                    1,
                    "the fork's first append copies its last page"
                );
            }
            let batch = PagedBatch::new(&ctx, &table, &ents, heads).unwrap();
            let total: usize = entries.iter().map(|e| e.1).sum();
            let k_new = rng.vec(total * row, 1.0);
            let v_new = rng.vec(total * row, 1.0);
            let q = rng.vec(total * heads.n_heads * HD, 1.0);
            let kt = ctx.upload_as(&k_new, &[total, 2, HD], new_dtype).unwrap();
            let vt = ctx.upload_as(&v_new, &[total, 2, HD], new_dtype).unwrap();
            let qt = ctx
                .upload_as(&q, &[total, heads.n_heads, HD], dtype)
                .unwrap();
            let out = ctx.empty(&[total, heads.n_heads, HD], dtype).unwrap();
            let rope_l = rope.clone().with_seq_len(64);
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            cache.copy_pages(&ctx, &mut enc, &copies).unwrap();
            cache
                .append_rope(
                    &ctx,
                    &mut enc,
                    &batch,
                    &kt,
                    &vt,
                    &rope_l,
                    norm.as_ref(),
                    None,
                )
                .unwrap();
            Attention::default()
                .encode_paged(&ctx, &mut enc, &qt, &cache, &batch, None, &out)
                .unwrap();
            ctx.queue().submit([enc.finish()]);
            let got = ctx.read_f32(&out).unwrap();
            // Reference: rotate the new K rows at their positions, extend the histories.
            let mut want = Vec::new();
            let mut t0 = 0;
            let qr = rounded(&q, dtype);
            for &(i, n) in entries {
                let len = hist[i].1.len() / row;
                let pos: Vec<i64> = (len..len + n).map(|p| p as i64).collect();
                let mut kr = rounded(&k_new[t0 * row..(t0 + n) * row], new_dtype);
                if let Some(o) = norm_offset {
                    kr = llama_kernels::reference::rope::head_norm(
                        &kr,
                        &rounded(&weight, new_dtype),
                        1e-6,
                        o as f64,
                    );
                }
                let rot = llama_kernels::reference::rope::rope(
                    &kr,
                    [1, n, 2, HD],
                    &pos,
                    &inv,
                    1.0,
                    rope.layout,
                    HD,
                );
                // Stored in the rows' dtype, then in the cache's (the same when they match).
                let rot: Vec<f64> = rot
                    .iter()
                    .map(|&x| dtype.round(new_dtype.round(x)))
                    .collect();
                hist[i].1.extend(rot);
                let vr = rounded(&v_new[t0 * row..(t0 + n) * row], new_dtype);
                hist[i].2.extend(vr.iter().map(|&x| dtype.round(x)));
                let qn = n * heads.n_heads * HD;
                let qo = t0 * heads.n_heads * HD;
                want.extend(reference::attention(
                    &qr[qo..qo + qn],
                    &hist[i].1,
                    &hist[i].2,
                    None,
                    reference::Dims {
                        batch: 1,
                        q_len: n,
                        kv_len: len + n,
                        n_heads: heads.n_heads,
                        n_kv_heads: 2,
                        head_dim: HD,
                    },
                    &reference::Options::default(),
                ));
                t0 += n;
            }
            let cmp = compare(&got, &want);
            // The rotated K is stored in the cache dtype before attention reads it; the
            // reference rounds it the same way, so the per-dtype tolerance holds.
            assert!(
                cmp.passes(tol(dtype)),
                "{dtype} from {new_dtype}, norm {norm_offset:?}, step {step}: {cmp}"
            );
        }
    }
}

/// Every validation rule of the cache, the batch, the append and the attention call.
#[test]
fn every_validation_rule_has_an_error() {
    let ctx = ctx();
    let heads = gqa();
    expect_err(
        PagedKvCache::new(
            &ctx,
            PagedKvConfig {
                n_pages: 4,
                page_size: PAGE,
                n_kv_heads: 2,
                head_dim: 66,
                dtype: DType::F32,
                layout: PageLayout::Nhd,
                kv_format: None,
            },
        ),
        "paged",
        is_shape,
        "unsupported head_dim 66",
    );
    expect_err(
        PagedKvCache::new(
            &ctx,
            PagedKvConfig {
                n_pages: 0,
                page_size: PAGE,
                n_kv_heads: 2,
                head_dim: HD,
                dtype: DType::F32,
                layout: PageLayout::Nhd,
                kv_format: None,
            },
        ),
        "paged",
        is_shape,
        "n_pages 0",
    );
    expect_err(
        PagedKvCache::new(
            &ctx,
            PagedKvConfig {
                n_pages: 4,
                page_size: 24,
                n_kv_heads: 2,
                head_dim: HD,
                dtype: DType::F32,
                layout: PageLayout::Nhd,
                kv_format: None,
            },
        ),
        "paged",
        is_param,
        "page_size 24",
    );
    let seq = |q_len, kv_len, pages: Vec<u32>| BatchSeq {
        q_len,
        kv_len,
        pages,
    };
    expect_err(
        PagedBatch::from_parts(&ctx, PAGE, 4, &[seq(1, 20, vec![0])], heads, None),
        "paged",
        is_shape,
        "kv_len 20 needs 2 pages of 16, its block table has 1",
    );
    expect_err(
        PagedBatch::from_parts(&ctx, PAGE, 4, &[seq(1, 20, vec![0, 7])], heads, None),
        "paged",
        is_bounds,
        "page 7 is outside the pool of 4 pages",
    );
    expect_err(
        PagedBatch::from_parts(
            &ctx,
            PAGE,
            4,
            &[seq(1, 8, vec![0])],
            Heads {
                n_heads: 6,
                n_kv_heads: 4,
                head_dim: HD,
            },
            None,
        ),
        "paged",
        is_shape,
        "n_heads 6 must be a positive multiple of n_kv_heads 4",
    );
    expect_err(
        PagedBatch::from_parts(&ctx, PAGE, 4, &[seq(1, 8, vec![0])], heads, Some(0)),
        "paged",
        is_param,
        "splits must be in 1..=65535, got 0",
    );
    expect_err(
        PagedBatch::from_parts_with(
            &ctx,
            PAGE,
            4,
            &[seq(1, 8, vec![0])],
            heads,
            &PlanOptions {
                decode: Some(Kind::Prefill),
                ..Default::default()
            },
        ),
        "paged",
        is_param,
        "decode kernel Prefill does not apply to paged decode rows (Decode, DecodeKeys or DecodeSubgroup)",
    );
    // DecodeKeys' 16-byte loads need head_dim x 2 bytes a multiple of 16 in half precision;
    // the default plan keeps such heads on the tile kernel.
    let odd = Heads {
        n_heads: 2,
        n_kv_heads: 2,
        head_dim: 12,
    };
    let odd_cache = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages: 1,
            page_size: PAGE,
            n_kv_heads: 2,
            head_dim: 12,
            dtype: DType::F16,
            layout: PageLayout::Hnd,
            kv_format: None,
        },
    )
    .unwrap();
    let odd_q = ctx.upload_as(&[0.5; 24], &[1, 2, 12], DType::F16).unwrap();
    let odd_out = ctx.empty(&[1, 2, 12], DType::F16).unwrap();
    let plan = |decode| PlanOptions {
        decode,
        ..Default::default()
    };
    let odd_batch = |decode| {
        PagedBatch::from_parts_with(&ctx, PAGE, 1, &[seq(1, 5, vec![0])], odd, &plan(decode))
            .unwrap()
    };
    assert_eq!(odd_batch(None).kinds(), [Kind::Decode]);
    Attention::default()
        .run_paged(&ctx, &odd_q, &odd_cache, &odd_batch(None), None, &odd_out)
        .expect("head_dim 12 in f16 on the tile kernel");
    expect_err(
        Attention::default().run_paged(
            &ctx,
            &odd_q,
            &odd_cache,
            &odd_batch(Some(Kind::DecodeKeys)),
            None,
            &odd_out,
        ),
        "paged_attention",
        is_param,
        "the DecodeKeys kernel needs 16-byte aligned K/V rows: head_dim 12 x 2 bytes is not a multiple of 16",
    );
    let cache = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages: 4,
            page_size: PAGE,
            n_kv_heads: 2,
            head_dim: HD,
            dtype: DType::F32,
            layout: PageLayout::Nhd,
            kv_format: None,
        },
    )
    .unwrap();
    let batch = PagedBatch::from_parts(
        &ctx,
        PAGE,
        4,
        &[seq(2, 20, vec![0, 1]), seq(1, 0, vec![])],
        heads,
        None,
    )
    .unwrap();
    let q = filled(&ctx, &[3, 8, HD], 0.5);
    let out = ctx.empty(&[3, 8, HD], DType::F32).unwrap();
    let run = |op: Attention, q: &Tensor, out: &Tensor, cache: &PagedKvCache| {
        op.run_paged(&ctx, q, cache, &batch, None, out)
    };
    expect_err(
        run(
            Attention::default(),
            &filled(&ctx, &[2, 8, HD], 0.5),
            &out,
            &cache,
        ),
        "paged_attention",
        is_shape,
        "q has shape [2, 8, 16]; the batch needs [total_q, n_heads, head_dim] = [3, 8, 16]",
    );
    expect_err(
        run(
            Attention::default(),
            &q,
            &ctx.empty(&[3, 8, HD], DType::F16).unwrap(),
            &cache,
        ),
        "paged_attention",
        is_dtype,
        "out",
    );
    expect_err(
        run(
            Attention {
                q_offset: Some(0),
                ..Default::default()
            },
            &q,
            &out,
            &cache,
        ),
        "paged_attention",
        is_param,
        "q_offset, kind and splits do not apply",
    );
    expect_err(
        run(
            Attention {
                softcap: -2.0,
                ..Default::default()
            },
            &q,
            &out,
            &cache,
        ),
        "paged_attention",
        is_param,
        "softcap must be finite and >= 0",
    );
    expect_err(
        run(Attention::default(), &q, &q, &cache),
        "paged_attention",
        is_alias,
        "out shares a buffer with q",
    );
    let other = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages: 4,
            page_size: 32,
            n_kv_heads: 2,
            head_dim: HD,
            dtype: DType::F32,
            layout: PageLayout::Nhd,
            kv_format: None,
        },
    )
    .unwrap();
    expect_err(
        run(Attention::default(), &q, &out, &other),
        "paged",
        is_shape,
        "the batch has pages of 16 tokens",
    );
    let wide = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages: 4,
            page_size: PAGE,
            n_kv_heads: 4,
            head_dim: HD,
            dtype: DType::F32,
            layout: PageLayout::Nhd,
            kv_format: None,
        },
    )
    .unwrap();
    expect_err(
        run(Attention::default(), &q, &out, &wide),
        "paged_attention",
        is_shape,
        "the batch was planned for 2 kv heads of 16; the cache has 4 of 16",
    );
    // Appends: shapes, dtypes, tokens before position 0, copies outside the pool.
    let k3 = filled(&ctx, &[3, 2, HD], 0.5);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    expect_err(
        cache.append(&ctx, &mut enc, &batch, &filled(&ctx, &[2, 2, HD], 0.5), &k3),
        "paged",
        is_shape,
        "k_new has shape [2, 2, 16]; the batch's new tokens need [3, 2, 16]",
    );
    expect_err(
        cache.append(
            &ctx,
            &mut enc,
            &batch,
            &k3,
            &ctx.empty(&[3, 2, HD], DType::BF16).unwrap(),
        ),
        "paged",
        is_dtype,
        "k_new is f32 but v_new is bf16",
    );
    expect_err(
        cache.append(&ctx, &mut enc, &batch, &k3, &k3),
        "paged",
        is_shape,
        "new token 2 sits before position 0",
    );
    expect_err(
        cache.copy_pages(&ctx, &mut enc, &[PageCopy { src: 0, dst: 4 }]),
        "paged",
        is_bounds,
        "page 4 is outside the pool of 4 pages",
    );
    expect_err(
        cache.write_pages(&ctx, &[0], &[0.0; 3], &[0.0; 3]),
        "paged",
        is_shape,
        "write_pages: k has 3 and v 3 values; 1 pages need 512",
    );
}

/// Multimodal RoPE (Qwen2-VL's `mrope_section`) on K as it lands in the pages, with the caller's
/// `[3, total_new]` positions (time, height, width), on both append paths (K in the cache's dtype
/// through the row map; f32 rows into an f16 cache through scratch), checked by attention against
/// the f64 reference.
#[test]
fn multimodal_rope_into_pages() {
    let ctx = ctx();
    let heads = gqa();
    let row = heads.n_kv_heads * HD;
    // Time, height and width pairs of the head_dim HD = 16 rotation (8 pairs).
    let section = [2, 3, 3];
    let rope = Rope::default().with_mrope_section(section).with_seq_len(64);
    let (inv, _) = llama_kernels::ops::rope::frequencies(rope.theta, HD, &rope.scaling, 64);
    for (dtype, new_dtype) in [(DType::F32, DType::F32), (DType::F16, DType::F32)] {
        let mut rng = Rng::new(900);
        let mut table = PageTable::new(8, PAGE).unwrap();
        let cache = PagedKvCache::new(
            &ctx,
            PagedKvConfig {
                n_pages: 8,
                page_size: PAGE,
                n_kv_heads: 2,
                head_dim: HD,
                dtype,
                layout: PageLayout::Hnd,
                kv_format: None,
            },
        )
        .unwrap();
        let (a, b) = (table.add_sequence(), table.add_sequence());
        let entries = [(a, 5usize), (b, 19usize)];
        table.append(&entries).unwrap();
        let batch = PagedBatch::new(&ctx, &table, &entries, heads).unwrap();
        let total = 24;
        // Rows: time, height, width; image-like tokens share a time step.
        let pos: Vec<i32> = (0..3 * total)
            .map(|i| (i / total) as i32 * 3 + (i % total) as i32 / 2)
            .collect();
        let pids = llama_kernels::PositionIds::upload(&ctx, &pos, &[3, total]).unwrap();
        let k = rng.vec(total * row, 1.0);
        let v = rng.vec(total * row, 1.0);
        let q = rng.vec(total * heads.n_heads * HD, 1.0);
        let kt = ctx.upload_as(&k, &[total, 2, HD], new_dtype).unwrap();
        let vt = ctx.upload_as(&v, &[total, 2, HD], new_dtype).unwrap();
        let qt = ctx
            .upload_as(&q, &[total, heads.n_heads, HD], dtype)
            .unwrap();
        let out = ctx.empty(&[total, heads.n_heads, HD], dtype).unwrap();
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        cache
            .append_rope(&ctx, &mut enc, &batch, &kt, &vt, &rope, None, Some(&pids))
            .unwrap();
        Attention::default()
            .encode_paged(&ctx, &mut enc, &qt, &cache, &batch, None, &out)
            .unwrap();
        ctx.queue().submit([enc.finish()]);
        let got = ctx.read_f32(&out).unwrap();
        let mut want = Vec::new();
        let qr = rounded(&q, dtype);
        let mut t0 = 0;
        for (_, n) in entries {
            let mut p: Vec<i64> = Vec::with_capacity(3 * n);
            for r in 0..3 {
                p.extend((t0..t0 + n).map(|t| pos[r * total + t] as i64));
            }
            let kr = rounded(&k[t0 * row..(t0 + n) * row], new_dtype);
            let rot = llama_kernels::reference::rope::rope_multimodal(
                &kr,
                [1, n, 2, HD],
                &p,
                section,
                &inv,
                1.0,
                rope.layout,
                HD,
            );
            let kh: Vec<f64> = rot
                .iter()
                .map(|&x| dtype.round(new_dtype.round(x)))
                .collect();
            let vh: Vec<f64> = rounded(&v[t0 * row..(t0 + n) * row], new_dtype)
                .iter()
                .map(|&x| dtype.round(x))
                .collect();
            let qn = heads.n_heads * HD;
            want.extend(reference::attention(
                &qr[t0 * qn..(t0 + n) * qn],
                &kh,
                &vh,
                None,
                reference::Dims {
                    batch: 1,
                    q_len: n,
                    kv_len: n,
                    n_heads: heads.n_heads,
                    n_kv_heads: 2,
                    head_dim: HD,
                },
                &reference::Options::default(),
            ));
            t0 += n;
        }
        let cmp = compare(&got, &want);
        assert!(cmp.passes(tol(dtype)), "{dtype} from {new_dtype}: {cmp}");
    }
}

/// The GPU decode kernel over pages (`DecodeSubgroup`, the default for decode rows on GPUs with
/// `SUBGROUP`), forced on lavapipe (subgroups of 8), GQA-4 rows taking 4 and 8 rows per
/// workgroup (one and two row blocks) beside a prefill sequence, page-boundary lengths, a 1-key
/// and a 0-key sequence, a shared prefix: against the f64 reference planned by length and with 3
/// splits (splits past the keys) with sinks, a window and softcap, and bit for bit against the
/// contiguous DecodeSubgroup at the same split count (3: merged; 1: written by the partial pass). f32 only: the dtype changes the page loads,
/// which the tile kernel shares and is tested in every dtype, and each specialisation is seconds
/// of LLVM on lavapipe. Without `SUBGROUP` the plan refuses it.
#[test]
fn subgroup_decode_over_pages() {
    let ctx = ctx();
    let lens = [
        (1, 31),
        (2, 16),
        (3, 600),
        (10, 40),
        (1, 1),
        (1, 0),
        (2, 17),
    ];
    let w = world(
        740,
        &lens,
        gqa(),
        DType::F32,
        PageLayout::Hnd,
        Some((2, 6, 1)),
    );
    let plan = |splits| PlanOptions {
        splits,
        decode: Some(Kind::DecodeSubgroup),
        prefill: Some(Kind::Prefill),
        ..Default::default()
    };
    if !ctx.caps().subgroups {
        let err = PagedBatch::from_parts_with(&ctx, PAGE, w.n_pages, &w.seqs, w.heads, &plan(None))
            .expect_err("DecodeSubgroup without SUBGROUP");
        assert!(err.to_string().contains("SUBGROUP"), "{err}");
        return;
    }
    let cache = w.cache(&ctx, 741);
    let batch = w.batch_with(&ctx, plan(None));
    assert_eq!(batch.kinds()[..3], [Kind::DecodeSubgroup; 3]);
    assert_eq!(batch.kinds()[3], Kind::Prefill);
    let op = Attention::default();
    let got = w.run(&ctx, &cache, &batch, &op, None);
    let cmp = compare(&got, &w.want(&op, None));
    assert!(cmp.passes(tol(DType::F32)), "DecodeSubgroup: {cmp}");

    let batch = w.batch_with(&ctx, plan(Some(3)));
    let sinks: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
    let opts = Attention {
        window: 20,
        softcap: 5.0,
        alibi: true,
        ..Default::default()
    };
    let got = w.run(&ctx, &cache, &batch, &opts, Some(&sinks));
    let cmp = compare(&got, &w.want(&opts, Some(&sinks)));
    assert!(
        cmp.passes(tol_for(&ctx, &opts, DType::F32)),
        "DecodeSubgroup, options: {cmp}"
    );
    let got = w.run(&ctx, &cache, &batch, &op, None);
    bitwise_against_contiguous(&ctx, &w, &got, Kind::DecodeSubgroup, Kind::Decode, 3);
    // One split: both write the output from the partial pass (no merge), the same bits.
    let batch = w.batch_with(&ctx, plan(Some(1)));
    let got = w.run(&ctx, &cache, &batch, &op, None);
    bitwise_against_contiguous(&ctx, &w, &got, Kind::DecodeSubgroup, Kind::Decode, 1);
}

/// The GPU prefill over pages (`Kind::PrefillSubgroup`, `attn_paged_prefill_sg`: the contiguous
/// kernel's step, staging each K/V row from its page with 16-byte loads), forced on this adapter
/// (the plan picks it for prefill rows on GPUs with SUBGROUP) against the f64 reference:
/// prefill sequences on both sides of the row block (GQA-4: 9, 17, 33 and 70 tokens, 36 to 280
/// rows; 128 rows per block at head_dim 64 on lavapipe) and of page boundaries beside decode
/// sequences, both layouts, the planner's splits, forced splits with sinks, a window and softcap
/// beside DecodeKeys and beside DecodeSubgroup decode rows (the partials merged by
/// `attn_paged_merge` and by `attn_paged_merge_rows`); with one split, bit for bit against the
/// contiguous PrefillSubgroup. f32 only (the dtype changes only the staging loads, which the
/// contiguous kernel's tests cover in f32 and f16). Without `SUBGROUP` the plan refuses it.
#[test]
fn subgroup_prefill_over_pages() {
    let ctx = ctx();
    let lens = [(70, 70), (1, 31), (9, 600), (33, 40), (2, 17), (17, 17)];
    let plan = |splits| PlanOptions {
        splits,
        decode: None,
        prefill: Some(Kind::PrefillSubgroup),
        ..Default::default()
    };
    if !ctx.caps().subgroups {
        let w = world(760, &lens, gqa(), DType::F32, PageLayout::Hnd, None);
        let err = PagedBatch::from_parts_with(&ctx, PAGE, w.n_pages, &w.seqs, w.heads, &plan(None))
            .expect_err("PrefillSubgroup without SUBGROUP");
        assert!(err.to_string().contains("SUBGROUP"), "{err}");
        return;
    }
    let op = Attention::default();
    for layout in [PageLayout::Hnd, PageLayout::Nhd] {
        let w = world(760, &lens, gqa(), DType::F32, layout, None);
        let cache = w.cache(&ctx, 761);
        let batch = w.batch_with(&ctx, plan(None));
        let kinds = batch.kinds();
        for (i, &(q_len, _)) in lens.iter().enumerate() {
            assert_eq!(kinds[i] == Kind::PrefillSubgroup, q_len > 8, "{kinds:?}");
        }
        let got = w.run(&ctx, &cache, &batch, &op, None);
        let cmp = compare(&got, &w.want(&op, None));
        assert!(cmp.passes(tol(DType::F32)), "{layout:?}: {cmp}");
    }
    let w = world(770, &lens, gqa(), DType::F32, PageLayout::Hnd, None);
    let cache = w.cache(&ctx, 771);
    let sinks: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
    let opts = Attention {
        window: 20,
        softcap: 5.0,
        ..Default::default()
    };
    // Beside DecodeSubgroup decode rows, as a GPU plans a batch by default: every split row,
    // the subgroup prefill's partials too, goes through the row merge (attn_paged_merge_rows;
    // the decode pipelines are subgroup_decode_over_pages').
    let gpu_plan = PlanOptions {
        decode: Some(Kind::DecodeSubgroup),
        ..plan(Some(3))
    };
    for options in [plan(Some(3)), gpu_plan] {
        let batch = w.batch_with(&ctx, options);
        if let Some(decode) = options.decode {
            assert!(batch.kinds().contains(&decode), "{:?}", batch.kinds());
        }
        let got = w.run(&ctx, &cache, &batch, &opts, Some(&sinks));
        let cmp = compare(&got, &w.want(&opts, Some(&sinks)));
        assert!(
            cmp.passes(tol_for(&ctx, &opts, DType::F32)),
            "PrefillSubgroup, options, {:?}: {cmp}",
            batch.kinds()
        );
    }
    let batch = w.batch_with(&ctx, plan(Some(1)));
    assert_eq!(batch.splits(), vec![1; lens.len()]);
    let got = w.run(&ctx, &cache, &batch, &op, None);
    let decode = batch.kinds()[1];
    bitwise_against_contiguous(&ctx, &w, &got, decode, Kind::PrefillSubgroup, 1);
    // Only the prefill kernels apply to prefill rows.
    let bad = PlanOptions {
        prefill: Some(Kind::DecodeKeys),
        ..Default::default()
    };
    let err = PagedBatch::from_parts_with(&ctx, PAGE, w.n_pages, &w.seqs, w.heads, &bad)
        .expect_err("DecodeKeys for prefill rows");
    assert!(
        err.to_string().contains("prefill kernel DecodeKeys"),
        "{err}"
    );
}

/// `PlanOptions::kv_format`: forcing a subgroup kernel over K/V rows it cannot read as whole
/// 16-byte units (fp8 at a head_dim that is not a multiple of 16) is refused when the batch is
/// planned, on any adapter, and allowed where it can (head_dim 48; refused for the device where it
/// lacks SUBGROUP); `PagedBatch::new_with` plans from the table
/// with the same options. (Where no kernel is forced, the default kernels over such rows are the
/// tile kernels: the library's unit test of `default_kinds` checks the choice for a described GPU.)
#[test]
fn plan_options_kv_format_refuses_subgroup_kernels_that_cannot_read_it() {
    let ctx = ctx();
    let mut table = PageTable::new(8, 16).unwrap();
    let seq = table.add_sequence();
    table.append(&[(seq, 20)]).unwrap();
    let fp8 = Some(KvFormat::Fp8E4M3);
    for (decode, prefill, q_len, kernel) in [
        (Some(Kind::DecodeSubgroup), None, 1, "DecodeSubgroup"),
        (None, Some(Kind::PrefillSubgroup), 20, "PrefillSubgroup"),
    ] {
        let opts = PlanOptions {
            decode,
            prefill,
            kv_format: fp8,
            ..Default::default()
        };
        for head_dim in [40, 48] {
            let heads = Heads {
                n_heads: 4,
                n_kv_heads: 2,
                head_dim,
            };
            let got = PagedBatch::new_with(&ctx, &table, &[(seq, q_len)], heads, &opts);
            if head_dim % 16 == 0 && !ctx.caps().subgroups {
                // Readable rows: refused for the device instead (GL, WebGPU without SUBGROUP).
                let e = got.expect_err("no SUBGROUP").to_string();
                assert!(e.contains("SUBGROUP"), "{e}");
                continue;
            }
            if head_dim % 16 == 0 {
                let batch = got.unwrap();
                assert_eq!(batch.kinds(), vec![decode.or(prefill).unwrap()]);
                continue;
            }
            let e = got.expect_err("refused").to_string();
            assert!(
                e.contains(&format!("the {kernel} kernel reads whole 16-byte units of a K/V row: fp8_e4m3 rows of head_dim 40 are not")),
                "{e}"
            );
        }
    }
}

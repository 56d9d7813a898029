//! Speculative decoding with a draft tree, verified in one paged attention pass with a tree mask.
//!
//! A toy one-layer language model (token embeddings plus a sinusoidal position code, one GQA
//! attention layer read from a paged KV cache on the GPU, logits from the residual stream) is the
//! target; the same model with perturbed output weights, run on the CPU, is the draft. Each round:
//! - the tree's root is the target's next token (known from the last pass); the draft proposes
//!   its two most likely children of the root and extends each with its most likely token;
//! - the tree's tokens are appended to the sequence as one chunk, each at the position of its
//!   depth (their K/V rows carry the position code of `len + depth`), and one paged attention pass
//!   scores them all, with a tree mask: each token sees the accepted sequence and its own
//!   ancestors;
//! - from the root, the path follows the child whose token is the target's argmax, as far as it
//!   goes; `PageTable::keep_path` keeps that path (its rows moved into place by
//!   `PagedKvCache::copy_slots`) and the target's argmax after it becomes the next root.
//!
//! The tokens must be exactly those of plain greedy decoding by the target, computed on the CPU in
//! f64 (exit 1 otherwise).
//!
//! ```sh
//! cargo run --release --example speculative -- [--steps N]
//! ```

use std::process::ExitCode;

use llama_kernels::ops::attention::{segment_pack_mask, Inputs, MaskBits};
use llama_kernels::ops::paged::{Heads, SeqId};
use llama_kernels::reference::attention as reference;
use llama_kernels::{
    Attention, Context, DType, PageTable, PagedBatch, PagedKvCache, PagedKvConfig,
};

const VOCAB: usize = 24;
const N_HEADS: usize = 4;
const N_KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const HIDDEN: usize = N_HEADS * HEAD_DIM;
const PAGE: usize = 8;
const PROMPT: [usize; 7] = [3, 17, 5, 9, 9, 21, 0];
/// The draft tree: each node's parent (-1: the root) and its rank among the draft's
/// candidates after the parent (0: most likely).
const TREE: [(i32, usize); 5] = [(-1, 0), (0, 0), (0, 1), (1, 0), (2, 0)];

/// A deterministic value stream per name, in [-scale, scale).
fn values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

struct Model {
    embed: Vec<f64>,
    wq: Vec<f64>,
    wk: Vec<f64>,
    wv: Vec<f64>,
    wout: Vec<f64>,
}

impl Model {
    fn new(draft: bool) -> Self {
        let mut wout = values(5, HIDDEN * VOCAB, 0.4);
        if draft {
            for (w, n) in wout.iter_mut().zip(values(6, HIDDEN * VOCAB, 0.6)) {
                *w += n;
            }
        }
        Model {
            embed: values(1, VOCAB * HIDDEN, 1.0),
            wq: values(2, HIDDEN * HIDDEN, 0.6),
            wk: values(3, HIDDEN * N_KV_HEADS * HEAD_DIM, 0.6),
            wv: values(4, HIDDEN * N_KV_HEADS * HEAD_DIM, 0.3),
            wout,
        }
    }

    /// The residual stream of `token` at position `pos`: its embedding plus a sinusoidal code.
    fn stream(&self, token: usize, pos: usize) -> Vec<f64> {
        (0..HIDDEN)
            .map(|i| {
                let f = (pos as f64) / 10000f64.powf((i / 2 * 2) as f64 / HIDDEN as f64);
                self.embed[token * HIDDEN + i] + if i % 2 == 0 { f.sin() } else { f.cos() }
            })
            .collect()
    }

    /// (q, k, v) rows of a stream; values rounded to f32, as the GPU holds them.
    fn qkv(&self, x: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mul = |w: &[f64], n: usize| -> Vec<f64> {
            (0..n)
                .map(|o| {
                    let s: f64 = (0..HIDDEN).map(|i| x[i] * w[i * n + o]).sum();
                    s as f32 as f64
                })
                .collect()
        };
        let kv = N_KV_HEADS * HEAD_DIM;
        (mul(&self.wq, HIDDEN), mul(&self.wk, kv), mul(&self.wv, kv))
    }

    /// Logits from a stream and its attention output.
    fn logits(&self, x: &[f64], attn: &[f64]) -> Vec<f64> {
        (0..VOCAB)
            .map(|t| {
                (0..HIDDEN)
                    .map(|i| (x[i] + attn[i]) * self.wout[i * VOCAB + t])
                    .sum()
            })
            .collect()
    }

    /// Logits after the last of `tokens` (positions 0..), all on the CPU in f64.
    fn next_logits(&self, tokens: &[usize]) -> Vec<f64> {
        let n = tokens.len();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut last = (Vec::new(), Vec::new());
        for (p, &t) in tokens.iter().enumerate() {
            let x = self.stream(t, p);
            let (q, kr, vr) = self.qkv(&x);
            k.extend(kr);
            v.extend(vr);
            last = (x, q);
        }
        let attn = reference::attention(
            &last.1,
            &k,
            &v,
            None,
            reference::Dims {
                batch: 1,
                q_len: 1,
                kv_len: n,
                n_heads: N_HEADS,
                n_kv_heads: N_KV_HEADS,
                head_dim: HEAD_DIM,
            },
            &reference::Options::default(),
        );
        self.logits(&last.0, &attn)
    }
}

/// The `rank`-th most likely token (ties to the lower id).
fn ranked(logits: &[f64], rank: usize) -> usize {
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    ids.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    ids[rank]
}

/// The target on the GPU: its K/V rows in the paged cache of one sequence.
struct Target<'a> {
    ctx: &'a Context,
    model: &'a Model,
    table: PageTable,
    cache: PagedKvCache,
    seq: SeqId,
    heads: Heads,
    passes: usize,
}

impl Target<'_> {
    /// Append `tokens` at positions `positions` and run one attention pass over the sequence with
    /// `mask` (`[tokens, len]`, None: causal only); the logits of every new token.
    fn pass(
        &mut self,
        tokens: &[usize],
        positions: &[usize],
        mask: Option<&[bool]>,
    ) -> Result<Vec<Vec<f64>>, llama_kernels::Error> {
        let ctx = self.ctx;
        let n = tokens.len();
        let copies = self.table.append(&[(self.seq, n)])?;
        let batch = PagedBatch::new(ctx, &self.table, &[(self.seq, n)], self.heads)?;
        let (mut q, mut k, mut v, mut xs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&t, &p) in tokens.iter().zip(positions) {
            let x = self.model.stream(t, p);
            let (qr, kr, vr) = self.model.qkv(&x);
            q.extend(qr.iter().map(|&a| a as f32));
            k.extend(kr.iter().map(|&a| a as f32));
            v.extend(vr.iter().map(|&a| a as f32));
            xs.push(x);
        }
        let qt = ctx.upload(&q, &[n, N_HEADS, HEAD_DIM])?;
        let kt = ctx.upload(&k, &[n, N_KV_HEADS, HEAD_DIM])?;
        let vt = ctx.upload(&v, &[n, N_KV_HEADS, HEAD_DIM])?;
        let out = ctx.empty(&[n, N_HEADS, HEAD_DIM], DType::F32)?;
        let bits = match mask {
            Some(m) => Some(MaskBits::upload(ctx, &segment_pack_mask(&[m]))?),
            None => None,
        };
        let inputs = match &bits {
            Some(b) => Inputs::new().mask(b),
            None => Inputs::new(),
        };
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        self.cache.copy_pages(ctx, &mut enc, &copies)?;
        self.cache.append(ctx, &mut enc, &batch, &kt, &vt)?;
        Attention::default().encode_paged(ctx, &mut enc, &qt, &self.cache, &batch, inputs, &out)?;
        ctx.queue().submit([enc.finish()]);
        self.passes += 1;
        let o = ctx.read_f32(&out)?;
        Ok(xs
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let attn: Vec<f64> = o[i * HIDDEN..][..HIDDEN]
                    .iter()
                    .map(|&a| a as f64)
                    .collect();
                self.model.logits(x, &attn)
            })
            .collect())
    }
}

fn run(steps: usize) -> Result<bool, llama_kernels::Error> {
    let ctx = Context::new()?;
    let target_model = Model::new(false);
    let draft = Model::new(true);

    // Plain greedy decoding by the target, on the CPU.
    let mut greedy = PROMPT.to_vec();
    for _ in 0..steps {
        let t = ranked(&target_model.next_logits(&greedy), 0);
        greedy.push(t);
    }
    let want = &greedy[PROMPT.len()..];

    let n_pages = (PROMPT.len() + steps + TREE.len()).div_ceil(PAGE) + 2;
    let mut table = PageTable::new(n_pages, PAGE)?;
    let seq = table.add_sequence();
    let heads = Heads {
        n_heads: N_HEADS,
        n_kv_heads: N_KV_HEADS,
        head_dim: HEAD_DIM,
    };
    let cache = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages,
            page_size: PAGE,
            n_kv_heads: N_KV_HEADS,
            head_dim: HEAD_DIM,
            dtype: DType::F32,
            ..PagedKvConfig::default()
        },
    )?;
    let mut target = Target {
        ctx: &ctx,
        model: &target_model,
        table,
        cache,
        seq,
        heads,
        passes: 0,
    };
    // The prompt, then rounds of draft trees.
    let positions: Vec<usize> = (0..PROMPT.len()).collect();
    let logits = target.pass(&PROMPT, &positions, None)?;
    let mut next = ranked(logits.last().expect("prompt logits"), 0);
    let mut tokens: Vec<usize> = PROMPT.to_vec();
    let mut accepted_total = 0;
    while tokens.len() < PROMPT.len() + steps {
        let base = tokens.len();
        // Draft the tree: node i's token, depth and path of ancestors (root first).
        let mut tree: Vec<(usize, usize)> = Vec::new();
        let mut paths: Vec<Vec<usize>> = Vec::new();
        for (i, &(parent, rank)) in TREE.iter().enumerate() {
            let (token, path) = match parent {
                -1 => (next, vec![i]),
                p => {
                    let p = p as usize;
                    let mut ctx_tokens = tokens.clone();
                    ctx_tokens.extend(paths[p].iter().map(|&a| tree[a].0));
                    let t = ranked(&draft.next_logits(&ctx_tokens), rank);
                    let mut path = paths[p].clone();
                    path.push(i);
                    (t, path)
                }
            };
            tree.push((token, path.len() - 1));
            paths.push(path);
        }
        // The tree mask: the accepted tokens and the node's own ancestors.
        let len = base + TREE.len();
        let mut mask = vec![false; TREE.len() * len];
        for (i, path) in paths.iter().enumerate() {
            let row = &mut mask[i * len..][..len];
            row[..base].fill(true);
            for &a in path {
                row[base + a] = true;
            }
        }
        let toks: Vec<usize> = tree.iter().map(|t| t.0).collect();
        let pos: Vec<usize> = tree.iter().map(|t| base + t.1).collect();
        let logits = target.pass(&toks, &pos, Some(&mask))?;
        // Walk from the root while a child holds the target's argmax.
        let mut at = 0;
        let mut path = vec![0];
        loop {
            let best = ranked(&logits[at], 0);
            let child = (0..TREE.len()).find(|&c| TREE[c].0 == at as i32 && toks[c] == best);
            match child {
                Some(c) => {
                    at = c;
                    path.push(c);
                }
                None => {
                    next = best;
                    break;
                }
            }
        }
        let kept = target.table.keep_path(seq, base, &path)?;
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        target.cache.copy_pages(&ctx, &mut enc, &kept.pages)?;
        target.cache.copy_slots(&ctx, &mut enc, &kept.rows)?;
        ctx.queue().submit([enc.finish()]);
        accepted_total += path.len() - 1;
        println!(
            "round at {base}: tree {toks:?}, kept {:?} (offsets {path:?}), {} row moves",
            path.iter().map(|&a| toks[a]).collect::<Vec<_>>(),
            kept.rows.len()
        );
        tokens.extend(path.iter().map(|&a| toks[a]));
    }
    let got = &tokens[PROMPT.len()..PROMPT.len() + steps];
    println!("greedy:      {want:?}");
    println!("speculative: {got:?}");
    println!("drafts accepted: {accepted_total}");
    println!("target_passes: {}", target.passes);
    Ok(got == want)
}

fn main() -> ExitCode {
    let mut steps = 12;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--steps", Some(n)) if n > 0 => steps = n,
            _ => {
                eprintln!("usage: speculative [--steps N]");
                return ExitCode::from(2);
            }
        }
    }
    match run(steps) {
        Ok(true) => {
            println!("the tokens are plain greedy decoding's");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("speculative tokens differ from greedy decoding");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Speculative decoding, chain version (Leviathan et al. 2023, Chen et al. 2023, greedy): a draft
//! model proposes `K` tokens one greedy step at a time, the target model scores the last
//! accepted token and the `K` drafts in one forward call (a prefill chunk over its KV cache),
//! and the longest prefix of drafts that equal the target's own argmaxes is accepted, plus the
//! target's next token after it. Both caches are then rolled back to the accepted tokens
//! (`KvCache::truncate`), so the next round starts where greedy decoding of the target would be.
//!
//! The tokens are exactly those of [`Model::generate`] on the target: every target row is
//! computed as a greedy decode step computes it (dynamic NTK and LongRoPE rows see their own
//! sequence length, `Model::feed`). Phi-3's LongRoPE switch re-encodes the whole sequence when
//! the sequence first passes `original_max_position_embeddings`, so a round never crosses it
//! with its drafts: the round before it ends at the switch, and the next one starts with the
//! re-encode (for one pass over `ceil(steps / (K + 1)) + 1` at most). A draft that is the
//! target itself is always accepted: `K + 1` tokens per target pass.

use llama_kernels::Context;

use super::model::{argmax, Error, Model, Result};

/// Tokens of a speculative run and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Speculation {
    /// The `steps + 1` greedy tokens of the target (as [`Model::generate`]'s `tokens`).
    pub tokens: Vec<u32>,
    /// The target's logits rows that chose them, `[steps + 1, vocab]`: rows `P-1 ..= P+steps-1`
    /// of [`Model::generate`]'s `logits`.
    pub logits: Vec<f32>,
    /// Target forward calls: the prefill and one per verification round (rounds never cross a
    /// LongRoPE switch, so none needs `Model::feed`'s second pass).
    pub target_passes: usize,
    /// Draft forward calls.
    pub draft_passes: usize,
    /// Drafts proposed and drafts accepted.
    pub drafted: usize,
    pub accepted: usize,
    /// The sequence length at the target's LongRoPE re-encode, if one happened.
    pub reprefilled_at: Option<usize>,
}

/// Generate `steps` tokens after `prompt` with `target`, drafting `draft_len` (>= 1) tokens per
/// round with `draft` (which may be `target` itself; it must share the vocabulary).
pub fn generate(
    ctx: &Context,
    target: &Model,
    draft: &Model,
    prompt: &[u32],
    steps: usize,
    draft_len: usize,
) -> Result<Speculation> {
    if prompt.is_empty() {
        return Err(Error("the prompt is empty".into()));
    }
    if draft_len == 0 {
        return Err(Error("--draft-len must be >= 1".into()));
    }
    if draft.cfg.vocab != target.cfg.vocab {
        return Err(Error(format!(
            "the draft model's vocab_size {} differs from the target's {}",
            draft.cfg.vocab, target.cfg.vocab
        )));
    }
    // A verification chunk may hold the drafts of the last round past the last needed token.
    let rows = prompt.len() + steps + draft_len + 1;
    let (mut ts, mut ds) = (target.state(ctx, rows)?, draft.state(ctx, rows)?);
    let vocab = target.cfg.vocab;
    let fed = target.feed(ctx, &mut ts, prompt)?;
    let mut out = Speculation {
        tokens: vec![argmax(&fed.logits[(prompt.len() - 1) * vocab..])],
        logits: fed.logits[(prompt.len() - 1) * vocab..].to_vec(),
        target_passes: fed.passes,
        draft_passes: 0,
        drafted: 0,
        accepted: 0,
        reprefilled_at: fed.reprefilled_at,
    };
    let mut seq = prompt.to_vec();
    seq.push(out.tokens[0]);
    // The LongRoPE switches a round must not cross: the sequence lengths at which either model
    // re-encodes.
    let switches: Vec<usize> = [target, draft]
        .iter()
        .filter_map(|m| m.cfg.longrope_switch)
        .collect();
    while out.tokens.len() <= steps {
        // Both caches hold at most seq[..len - 1]; the last token is fed with the drafts.
        let cached = seq.len() - 1;
        let mut k = draft_len.min(steps + 1 - out.tokens.len() - 1);
        for &orig in &switches {
            if cached < orig {
                k = k.min(orig - cached - 1);
            }
        }
        let mut chain = seq.clone();
        for _ in 0..k {
            let fed = draft.feed(ctx, &mut ds, &chain)?;
            out.draft_passes += fed.passes;
            chain.push(argmax(&fed.logits[fed.logits.len() - vocab..]));
        }
        let fed = target.feed(ctx, &mut ts, &chain)?;
        out.target_passes += fed.passes;
        out.reprefilled_at = out.reprefilled_at.or(fed.reprefilled_at);
        // Row i is the target's choice after chain[cached + i].
        let choice = |i: usize| argmax(&fed.logits[i * vocab..(i + 1) * vocab]);
        let mut n = 0;
        while n < k && chain[seq.len() + n] == choice(n) {
            n += 1;
        }
        out.drafted += k;
        out.accepted += n;
        let next = choice(n);
        out.logits.extend_from_slice(&fed.logits[..(n + 1) * vocab]);
        seq.extend_from_slice(&chain[seq.len()..seq.len() + n]);
        seq.push(next);
        out.tokens = seq[prompt.len()..].to_vec();
        // The caches keep the accepted tokens; the target's own next token is fed next round.
        ts.truncate(seq.len() - 1)?;
        let keep = ds.len().min(seq.len() - 1);
        ds.truncate(keep)?;
    }
    Ok(out)
}

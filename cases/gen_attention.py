#!/usr/bin/env python3
"""Write the committed attention case files for `llama-kernels check`.

An independent implementation: NumPy in float64, written from the definitions (scaled dot-product
attention with GQA head sharing, bottom-right aligned causal mask, sliding window, two-sided
window as FlashAttention's window_size=(left, right), Llama 4's chunked local attention, Gemma 2
logit softcap, gpt-oss attention sinks), vectorised over heads and keys rather than looping like
the Rust reference. Inputs are rounded to their storage dtype first; expected outputs are float64
results stored as F32. Reuses the safetensors writer of gen_rms_norm.py.

    pip install numpy && python3 cases/gen_attention.py
"""
import os

import numpy as np

from gen_rms_norm import HERE, store, write_safetensors


def attention(q, k, v, causal=True, q_offset=None, scale=None, window=0, softcap=0.0, sinks=None,
              window_left=None, window_right=None, attention_chunk_size=0):
    """q [B, T, H, D], k/v [B, S, KH, D] -> [B, T, H, D] in float64.

    Query t sits at position pos = q_offset + t. Key j is visible when every mask that is on
    allows it: causal j <= pos; window W (causal sliding window) j > pos - W; two-sided window
    pos - window_left <= j <= pos + window_right (FlashAttention's window_size; a side that is
    None or -1 is unbounded, so causal = right bound 0 and window W = (W - 1, 0)); chunked local
    attention j // C == pos // C (floor division, as Llama 4's position // attention_chunk_size).
    A row with no visible key is 0.
    """
    B, T, H, D = q.shape
    S, KH = k.shape[1], k.shape[2]
    g = H // KH
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    q_offset = S - T if q_offset is None else q_offset
    kr = np.repeat(k, g, axis=2)  # [B, S, H, D]
    vr = np.repeat(v, g, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, kr) * scale
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    pos = q_offset + np.arange(T)[:, None]
    j = np.arange(S)[None, :]
    visible = np.ones((T, S), dtype=bool)
    if causal:
        visible &= j <= pos
    if window > 0:
        visible &= j > pos - window
    if window_left is not None and window_left >= 0:
        visible &= j >= pos - window_left
    if window_right is not None and window_right >= 0:
        visible &= j <= pos + window_right
    if attention_chunk_size > 0:
        visible &= (j // attention_chunk_size) == (pos // attention_chunk_size)
    s = np.where(visible[None, None], s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    if sinks is not None:
        m = np.maximum(m, sinks[None, :, None, None])
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)  # masked -> 0
    denom = p.sum(axis=-1, keepdims=True)
    if sinks is not None:
        denom = denom + np.exp(sinks[None, :, None, None] - m)
    out = np.einsum("bhts,bshd->bthd", p, vr)
    has_key = visible.any(axis=-1)[None, None, :, None]  # [1, 1, T, 1]
    out = np.where(has_key.transpose(0, 2, 1, 3), out / np.where(denom > 0, denom, 1.0).transpose(0, 2, 1, 3), 0.0)
    return out


def case(name, dtype, batch, q_len, kv_len, n_heads, n_kv_heads, head_dim, seed, with_sinks=False, **opts):
    rng = np.random.default_rng(seed)
    lead = (batch,) if batch else ()
    b = batch or 1
    q, qb = store(rng.standard_normal(lead + (q_len, n_heads, head_dim)), dtype)
    k, kb = store(rng.standard_normal(lead + (kv_len, n_kv_heads, head_dim)), dtype)
    v, vb = store(rng.standard_normal(lead + (kv_len, n_kv_heads, head_dim)), dtype)
    tensors = [
        ("q", dtype, q.shape, qb),
        ("k", dtype, k.shape, kb),
        ("v", dtype, v.shape, vb),
    ]
    sinks = None
    if with_sinks:
        sinks, sb = store(rng.standard_normal(n_heads), "F32")
        tensors.append(("sinks", "F32", (n_heads,), sb))
    out = attention(
        q.reshape(b, q_len, n_heads, head_dim),
        k.reshape(b, kv_len, n_kv_heads, head_dim),
        v.reshape(b, kv_len, n_kv_heads, head_dim),
        sinks=sinks,
        **opts,
    ).reshape(q.shape)
    tensors.append(("expected.out", "F32", q.shape, out.astype(np.float32).tobytes()))
    meta = {"op": "attention"}
    for key, val in opts.items():
        meta[key] = ("true" if val else "false") if isinstance(val, bool) else repr(val)
    write_safetensors(os.path.join(HERE, name), tensors, meta)


if __name__ == "__main__":
    # Llama-3-8B head grouping (4 query heads per KV head), chunked prefill: 5 new tokens after
    # 7 cached ones (default bottom-right causal alignment), head_dim 64.
    case("attention_llama_gqa_f32.safetensors", "F32", 0, 5, 12, 8, 2, 64, 1)
    # Gemma 2 style decode in bf16: batch 2, one token, sliding window 16, softcap 50, custom scale.
    case("attention_gemma_decode_bf16.safetensors", "BF16", 2, 1, 40, 4, 2, 32, 2,
         window=16, softcap=50.0, scale=0.0625)
    # gpt-oss style sinks in f16 with one KV head (MQA), an explicit q_offset, head_dim 80.
    case("attention_sinks_mqa_f16.safetensors", "F16", 0, 4, 9, 4, 1, 80, 3,
         with_sinks=True, q_offset=2)
    # More queries than keys: the first 3 rows see no key and must be exactly 0; non-causal
    # second case shows every row then sees every key.
    case("attention_masked_rows_f32.safetensors", "F32", 0, 5, 2, 2, 2, 16, 4)
    case("attention_noncausal_f32.safetensors", "F32", 0, 6, 10, 6, 3, 48, 5, causal=False)
    # ModernBERT-like local attention: bidirectional (non-causal) window of W = 5 keys on each
    # side of the query, MHA, head_dim 64; rows near both ends see fewer keys.
    case("attention_bidir_window_f32.safetensors", "F32", 0, 24, 24, 4, 4, 64, 6,
         causal=False, window_left=5, window_right=5)
    # Llama 4 chunked local attention: causal within chunks of 16 over 64 tokens, GQA 4:1, f16.
    case("attention_chunked_gqa_f16.safetensors", "F16", 0, 64, 64, 8, 2, 64, 7,
         attention_chunk_size=16)
    # Chunked prefill across a chunk boundary in bf16: batch 2, 6 new tokens at positions 34..39
    # after 34 cached ones, chunks of 16 (keys 32.. only), one KV head (MQA), head_dim 32.
    case("attention_chunked_prefill_bf16.safetensors", "BF16", 2, 6, 40, 4, 1, 32, 8,
         attention_chunk_size=16)
    # Non-causal look-ahead window (left side unbounded, given as -1; right side 2) inside chunks
    # of 4, with queries starting at position -3: positions -3..-1 lie in chunk -1 (floor
    # division), which holds no key, so their rows are 0.
    case("attention_lookahead_chunk_f32.safetensors", "F32", 0, 8, 12, 2, 2, 16, 9,
         causal=False, window_left=-1, window_right=2, attention_chunk_size=4, q_offset=-3)

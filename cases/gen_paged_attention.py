#!/usr/bin/env python3
"""Write the committed paged_attention case files for `llama-kernels check`.

An independent implementation: NumPy in float64, written from the definitions (vLLM's
PagedAttention / FlashInfer's batch attention: each sequence's keys and values live in pages of a
shared pool, listed in token order by its block-table row; queries are packed by sequence with
cu_seqlens_q and align bottom-right to the sequence's kv length; GQA head sharing, causal mask,
sliding window, two-sided window, chunked local attention, Gemma 2 logit softcap, gpt-oss sinks).
It gathers each sequence's K/V from the pages and runs its own vectorised attention; it does not
call the crate. Inputs are rounded to their storage dtype first; expected outputs are float64
results stored as F32. Reuses the safetensors writer of gen_rms_norm.py.

    pip install numpy && python3 cases/gen_paged_attention.py

A case with `kv_format` (a quantized KV cache) also needs `pip install gguf ml_dtypes`: its
expected output attends over the pages as gen_attention_quant.py dequantizes them.
"""
import os

import numpy as np

from gen_rms_norm import HERE, store, write_safetensors


def seq_attention(q, k, v, causal=True, scale=None, window=0, window_left=-1, window_right=-1,
                  attention_chunk_size=0, softcap=0.0, sinks=None):
    """One sequence: q [T, H, D], k/v [S, KH, D] -> [T, H, D] in float64, bottom-right aligned."""
    T, H, D = q.shape
    S, KH = k.shape[0], k.shape[1]
    g = H // KH
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    kr = np.repeat(k, g, axis=1)  # [S, H, D]: query head h reads kv head h // g
    vr = np.repeat(v, g, axis=1)
    s = np.einsum("thd,shd->hts", q, kr) * scale
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    pos = (S - T) + np.arange(T)[:, None]  # bottom-right: the last query sits at S - 1
    j = np.arange(S)[None, :]
    visible = np.ones((T, S), dtype=bool)
    if causal:
        visible &= j <= pos
    if window > 0:
        visible &= j > pos - window
    if window_left >= 0:
        visible &= pos - j <= window_left
    if window_right >= 0:
        visible &= j - pos <= window_right
    if attention_chunk_size > 0:
        visible &= (j // attention_chunk_size) == (pos // attention_chunk_size)
    s = np.where(visible[None], s, -np.inf)
    m = s.max(axis=-1, keepdims=True) if S > 0 else np.full((H, T, 1), -np.inf)
    if sinks is not None:
        m = np.maximum(m, sinks[:, None, None])
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)  # masked -> 0
    denom = p.sum(axis=-1, keepdims=True)
    if sinks is not None:
        denom = denom + np.exp(sinks[:, None, None] - m)
    out = np.einsum("hts,shd->htd", p, vr) / np.where(denom > 0, denom, 1.0)
    # A row that sees no key is 0 (not the sink-only softmax of nothing).
    out = np.where(visible.any(axis=-1)[None, :, None], out, 0.0)
    return out.transpose(1, 0, 2)


def case(name, dtype, page_size, n_heads, n_kv_heads, head_dim, seqs, spare_pages, seed,
         layout="nhd", share=None, with_sinks=False, bt_fill=(-1,), int_dtypes=("I32", "I32", "I32"),
         kv_format=None, k_scale=None, v_scale=None, **opts):
    """seqs: list of (q_len, kv_len). share = (parent, child, n_pages): the child's first n_pages
    block-table entries are the parent's (a shared prompt prefix). spare_pages: pool pages no
    sequence owns (noise, so a wrong page shows). bt_fill: values cycled into the block-table
    entries past each sequence's pages."""
    rng = np.random.default_rng(seed)
    own = [(kv + page_size - 1) // page_size for _, kv in seqs]
    if share is not None:
        own[share[1]] -= share[2]
    n_pages = sum(own) + spare_pages
    pool = rng.permutation(n_pages)  # shuffled: sequences never get consecutive pages in order
    k_pages, kb = store(rng.standard_normal((n_pages, page_size, n_kv_heads, head_dim)), dtype)
    v_pages, vb = store(rng.standard_normal((n_pages, page_size, n_kv_heads, head_dim)), dtype)
    # Pages no sequence reads hold large values: reading one would show in the output.
    tables, taken = [], 0
    for i, (_, kv) in enumerate(seqs):
        pages = list(pool[taken:taken + own[i]])
        taken += own[i]
        if share is not None and i == share[1]:
            pages = list(tables[share[0]][:share[2]]) + pages
        tables.append(pages)
    max_pages = max(len(t) for t in tables) + 1
    bt = np.zeros((len(seqs), max_pages), dtype=np.int64)
    for i, t in enumerate(tables):
        bt[i, :len(t)] = t
        for j in range(len(t), max_pages):
            bt[i, j] = bt_fill[(i + j) % len(bt_fill)]
    spare = pool[taken:]
    if len(spare):
        big_k, kb2 = store(rng.standard_normal((len(spare), page_size, n_kv_heads, head_dim)) * 8, dtype)
        big_v, vb2 = store(rng.standard_normal((len(spare), page_size, n_kv_heads, head_dim)) * 8, dtype)
        k_pages[spare], v_pages[spare] = big_k, big_v
        k_pages, kb = store(k_pages, dtype)
        v_pages, vb = store(v_pages, dtype)
    q_lens = [ql for ql, _ in seqs]
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int64)
    kv_lens = np.array([kv for _, kv in seqs], dtype=np.int64)
    total_q = int(cu[-1])
    q, qb = store(rng.standard_normal((total_q, n_heads, head_dim)), dtype)
    sinks = None
    if with_sinks:
        sinks, sb = store(rng.standard_normal(n_heads) * 2, "F32")

    # A quantized cache: attention over what the pages hold.
    k_held, v_held = k_pages, v_pages
    if kv_format is not None:
        from gen_attention_quant import dequantized
        k_held = dequantized(k_pages, kv_format, k_scale or 1.0)
        v_held = dequantized(v_pages, kv_format, v_scale or 1.0)
    out = np.zeros((total_q, n_heads, head_dim))
    for i, (ql, kv) in enumerate(seqs):
        if ql == 0:
            continue
        t = bt[i, :(kv + page_size - 1) // page_size]
        k = k_held[t].reshape(-1, n_kv_heads, head_dim)[:kv]  # gather in token order
        v = v_held[t].reshape(-1, n_kv_heads, head_dim)[:kv]
        out[cu[i]:cu[i + 1]] = seq_attention(q[cu[i]:cu[i + 1]], k, v, sinks=sinks, **opts)

    def ints(a, d):
        return a.astype("<i4" if d == "I32" else "<i8").tobytes()

    tensors = [
        ("q", dtype, q.shape, qb),
        ("k_pages", dtype, k_pages.shape, kb),
        ("v_pages", dtype, v_pages.shape, vb),
        ("block_table", int_dtypes[0], bt.shape, ints(bt, int_dtypes[0])),
        ("cu_seqlens_q", int_dtypes[1], cu.shape, ints(cu, int_dtypes[1])),
        ("kv_lens", int_dtypes[2], kv_lens.shape, ints(kv_lens, int_dtypes[2])),
    ]
    if with_sinks:
        tensors.append(("sinks", "F32", (n_heads,), sb))
    for key, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if s is not None:
            tensors.append((key, "F32", (), np.float32(s).tobytes()))
    tensors.append(("expected.out", "F32", out.shape, out.astype(np.float32).tobytes()))
    meta = {"op": "paged_attention"}
    if layout != "nhd":
        meta["layout"] = layout
    if kv_format is not None:
        meta["kv_format"] = kv_format
    for key, val in opts.items():
        meta[key] = ("true" if val else "false") if isinstance(val, bool) else repr(val)
    write_safetensors(os.path.join(HERE, name), tensors, meta)
    print(f"{name}: {n_pages} pages of {page_size}, seqs (q_len, kv_len) {seqs}")


if __name__ == "__main__":
    P = 16
    # Llama-3-8B head grouping (4 query heads per KV head), head_dim 64, pages of 16, NHD: one
    # continuous-batching step mixing decode (q_len 1), prefill (q_len = kv_len) and chunked
    # prefill; kv lengths P-1, P, P+1 around a page boundary; an empty sequence (kv_len 0, two
    # queries: zeros); a sequence with no query this step; a shared-prefix pair (sequence 6
    # starts with sequence 5's first two pages). Pages shuffled over the pool, with spare noise
    # pages; block-table entries past a sequence's pages hold -1, 0 or junk.
    case("paged_attention_llama_gqa_f32.safetensors", "F32", P, 8, 2, 64,
         [(1, 37), (P - 1, P - 1), (1, P), (5, P + 1), (2, 0), (1, 40), (3, 35), (0, 20)],
         spare_pages=4, seed=11, share=(5, 6, 2), bt_fill=(-1, 0, 12345),
         int_dtypes=("I32", "I64", "I64"))
    # Gemma 2 style in bf16 with HND pages of 8: sliding window 8, softcap 30, a custom scale, and
    # gpt-oss sinks; decode, prefill, chunked prefill, a page-boundary decode and an empty
    # sequence.
    case("paged_attention_gemma_hnd_bf16.safetensors", "BF16", 8, 4, 2, 64,
         [(1, 29), (12, 12), (4, 21), (1, 8), (1, 0), (1, 9)],
         spare_pages=3, seed=12, layout="hnd", with_sinks=True,
         window=8, softcap=30.0, scale=0.0625)
    # Llama 4 style chunked local attention in f16 with pages of 32 (chunks of 16 cross the page
    # boundaries), MQA (one KV head); and a bidirectional two-sided window (ModernBERT style,
    # non-causal) over pages of 128 in f32.
    case("paged_attention_chunked_f16.safetensors", "F16", 32, 4, 1, 64,
         [(1, 70), (20, 45), (3, 33)],
         spare_pages=1, seed=13, attention_chunk_size=16)
    case("paged_attention_bidir_window_f32.safetensors", "F32", 128, 2, 1, 64,
         [(6, 130), (9, 9), (1, 127)],
         spare_pages=1, seed=14, causal=False, window_left=5, window_right=3)
    # An fp8 e4m3 paged cache with vLLM-style per-tensor scales (each page's V rows take
    # v_scale): a decode and a 9-token chunked prefill over shuffled pages, 2 query heads per KV
    # head, head_dim 32 (the library tests' paged fp8 pipelines).
    case("paged_attention_fp8_f32.safetensors", "F32", P, 4, 2, 32,
         [(1, 40), (9, 30)],
         spare_pages=2, seed=15, kv_format="fp8_e4m3", k_scale=0.004, v_scale=0.02)

#!/usr/bin/env python3
"""Write the committed attention cases with masks, their visibility computed by transformers' own
mask functions (`masking_utils`: `causal_mask_function`, `sliding_window_overlay`,
`blockwise_overlay`, `padding_mask_function`, `packed_sequence_mask_function`, combined with
`and_masks` / `or_masks` as `create_causal_mask` does) and Gemma 3's
`get_block_sequence_ids_for_mask`. The case hands the kernel the same information the way the
kernel takes it (metadata causal / window, `block_ids`, a boolean `mask`, a `bias`); the expected
output is eager attention in float64 on inputs already rounded to their storage dtype, with
the mask transformers built. A row with no visible key is 0 (the kernels' rule). Expected
outputs are stored as F32.

    pip install numpy torch transformers && python3 cases/gen_masks.py
"""
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_rms_norm import store, write_safetensors  # noqa: E402


def grid(fn, q_len, kv_len, q_offset=0):
    """Evaluate a transformers mask function over [q_len, kv_len] (batch 0, head 0)."""
    b = torch.tensor(0)
    h = torch.tensor(0)
    q_idx = q_offset + torch.arange(q_len)[:, None]
    kv_idx = torch.arange(kv_len)[None, :]
    return fn(b, h, q_idx, kv_idx).expand(q_len, kv_len).numpy().astype(bool)


def eager(q, k, v, visible, bias=None):
    """q [q_len, heads, d], k/v [kv_len, kv_heads, d], visible [q_len, kv_len] (or per head),
    bias [heads, q_len, kv_len] or None; float64, rows with no visible key 0."""
    q_len, n_heads, d = q.shape
    group = n_heads // k.shape[1]
    qh = torch.from_numpy(q).permute(1, 0, 2)
    kh = torch.from_numpy(k).repeat_interleave(group, dim=1).permute(1, 2, 0)
    vh = torch.from_numpy(v).repeat_interleave(group, dim=1).permute(1, 0, 2)
    scores = torch.bmm(qh, kh) / math.sqrt(d)
    if bias is not None:
        scores = scores + torch.from_numpy(bias)
    vis = torch.from_numpy(np.broadcast_to(visible, scores.shape).copy())
    scores = scores.masked_fill(~vis, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # fully hidden rows
    return torch.bmm(p, vh).permute(1, 0, 2).numpy()


def gemma3_image_blocks_case(name):
    """Gemma 3's sliding-window layer over a prompt with two images and two left-padding tokens:
    `and_masks(sliding_window_overlay(W), or_masks(causal, blockwise_overlay(ids)))` with the
    padding mask (create_causal_mask's `padding_mask_function`), block ids from the token types
    by `get_block_sequence_ids_for_mask`; the kernel gets causal, window W, `block_ids` and the
    padding as a U8 `mask`. bf16 storage, 4 query heads over 2 kv heads, head_dim 16; query 0
    sees only a padding key, so its row is 0."""
    from transformers.masking_utils import (and_masks, blockwise_overlay, causal_mask_function,
                                            or_masks, padding_mask_function,
                                            sliding_window_overlay)
    from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

    seq, window, n_heads, n_kv, d = 24, 8, 4, 2, 16
    token_types = torch.zeros(1, seq, dtype=torch.long)
    token_types[0, 3:12] = 1
    token_types[0, 15:21] = 1
    ids = get_block_sequence_ids_for_mask(token_types)  # [1, seq], -1 for text
    attention_mask = torch.ones(1, seq, dtype=torch.bool)
    attention_mask[0, :2] = False
    fn = and_masks(sliding_window_overlay(window),
                   or_masks(causal_mask_function, blockwise_overlay(ids)),
                   padding_mask_function(attention_mask))
    visible = grid(fn, seq, seq)
    assert visible[4, 11] and not visible[4, 12], "an image block sees itself both ways"
    assert not visible[0].any()

    rng = np.random.default_rng(41)
    q, qb = store(rng.standard_normal((seq, n_heads, d)), "BF16")
    k, kb = store(rng.standard_normal((seq, n_kv, d)), "BF16")
    v, vb = store(rng.standard_normal((seq, n_kv, d)), "BF16")
    out = eager(q, k, v, visible)
    pad = np.broadcast_to(attention_mask.numpy()[0][None, :], (seq, seq)).astype(np.uint8)
    meta = {"op": "attention", "causal": "true", "window": str(window)}
    tensors = [
        ("q", "BF16", q.shape, qb),
        ("k", "BF16", k.shape, kb),
        ("v", "BF16", v.shape, vb),
        ("mask", "U8", pad.shape, pad.tobytes()),
        ("block_ids", "I32", (seq,), ids.numpy()[0].astype("<i4").tobytes()),
        ("expected.out", "F32", q.shape, out.astype(np.float32).tobytes()),
    ]
    write_safetensors(os.path.join(HERE, name), tensors, meta)


def packed_documents_bias_case(name):
    """Three documents packed in one sequence (`packed_sequence_mask_function` and causal, as
    transformers builds it for packed position ids) given as a BOOL `mask` with causal off, and
    an F32 per-head bias [n_heads, q_len, kv_len] with a few -inf entries; f32, 4 query heads
    over 2 kv heads, head_dim 16."""
    from transformers.masking_utils import (and_masks, causal_mask_function,
                                            packed_sequence_mask_function)

    seq, n_heads, n_kv, d = 21, 4, 2, 16
    doc = torch.tensor([[0] * 7 + [1] * 9 + [2] * 5])
    visible = grid(and_masks(causal_mask_function, packed_sequence_mask_function(doc)), seq, seq)
    assert visible[8, 7] and not visible[8, 6]

    rng = np.random.default_rng(42)
    q, qb = store(rng.standard_normal((seq, n_heads, d)), "F32")
    k, kb = store(rng.standard_normal((seq, n_kv, d)), "F32")
    v, vb = store(rng.standard_normal((seq, n_kv, d)), "F32")
    bias, biasb = store(rng.standard_normal((n_heads, seq, seq)), "F32")
    bias[:, 10, 8] = -np.inf
    bias[2, 17, 16] = -np.inf
    biasb = bias.astype(np.float32).tobytes()
    out = eager(q, k, v, visible[None], bias)
    meta = {"op": "attention", "causal": "false"}
    tensors = [
        ("q", "F32", q.shape, qb),
        ("k", "F32", k.shape, kb),
        ("v", "F32", v.shape, vb),
        ("mask", "BOOL", visible.shape, visible.astype(np.uint8).tobytes()),
        ("bias", "F32", bias.shape, biasb),
        ("expected.out", "F32", q.shape, out.astype(np.float32).tobytes()),
    ]
    write_safetensors(os.path.join(HERE, name), tensors, meta)


def paged_blocks_tree_case(name):
    """A paged batch of three sequences, f32, NHD pages of 8 shuffled over the pool, 4 query heads
    over 2 kv heads, head_dim 16, with a shared F32 bias over every query-key pair: a chunk of
    an image prompt (Gemma 3: its 9 queries sit inside an image block that runs past them,
    `or_masks(causal, blockwise_overlay(ids))` at their positions, `block_ids` from
    `get_block_sequence_ids_for_mask`); a draft tree of 5 tokens after a 15-token prompt (each
    sees the prompt and its ancestors: a boolean `mask`); a decode step. Masks are given per
    sequence, one after the other, as `paged_attention` cases take them."""
    from transformers.masking_utils import blockwise_overlay, causal_mask_function, or_masks
    from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

    page, n_heads, n_kv, d = 8, 4, 2, 16
    seqs = [(9, 30), (5, 20), (1, 13)]
    rng = np.random.default_rng(43)
    # Sequence 0: the image block.
    types = torch.zeros(1, 30, dtype=torch.long)
    types[0, 18:27] = 1
    ids0 = get_block_sequence_ids_for_mask(types)
    vis0 = grid(or_masks(causal_mask_function, blockwise_overlay(ids0)), 9, 30, q_offset=21)
    assert vis0[0, 26] and not vis0[0, 27], "the block runs past the query"
    # Sequence 1: the tree.
    parents = [-1, 0, 0, 1, 2]
    vis1 = np.zeros((5, 20), dtype=bool)
    vis1[:, :15] = True
    for t in range(5):
        a = t
        while a >= 0:
            vis1[t, 15 + a] = True
            a = parents[a]
    vis2 = np.ones((1, 13), dtype=bool)
    visible = [vis0, vis1, vis2]
    # The kernel's inputs: block ids (-1 outside sequence 0's image), the boolean mask (all
    # visible where the block ids and causal masking decide).
    ids = np.concatenate([ids0.numpy()[0], -np.ones(20 + 13, dtype=np.int64)]).astype("<i4")
    mask = np.concatenate([np.ones(9 * 30, dtype=bool), vis1.ravel(), vis2.ravel()])
    qk = sum(q * kv for q, kv in seqs)
    bias, biasb = store(rng.standard_normal(qk) * 0.5, "F32")

    own = [(kv + page - 1) // page for _, kv in seqs]
    n_pages = sum(own) + 2
    pool = rng.permutation(n_pages)
    k_pages, kb = store(rng.standard_normal((n_pages, page, n_kv, d)), "F32")
    v_pages, vb = store(rng.standard_normal((n_pages, page, n_kv, d)), "F32")
    total_q = sum(q for q, _ in seqs)
    q, qb = store(rng.standard_normal((total_q, n_heads, d)), "F32")
    bt = -np.ones((len(seqs), max(own)), dtype=np.int64)
    out = np.zeros((total_q, n_heads, d))
    taken, q0, b0 = 0, 0, 0
    for i, (ql, kv) in enumerate(seqs):
        t = pool[taken:taken + own[i]]
        taken += own[i]
        bt[i, :len(t)] = t
        k = k_pages[t].reshape(-1, n_kv, d)[:kv]
        v = v_pages[t].reshape(-1, n_kv, d)[:kv]
        b = np.broadcast_to(bias[b0:b0 + ql * kv].reshape(1, ql, kv), (n_heads, ql, kv)).copy()
        out[q0:q0 + ql] = eager(q[q0:q0 + ql], k, v, visible[i][None], b)
        q0 += ql
        b0 += ql * kv
    cu = np.concatenate([[0], np.cumsum([ql for ql, _ in seqs])]).astype("<i4")
    kv_lens = np.array([kv for _, kv in seqs], dtype="<i4")
    meta = {"op": "paged_attention", "causal": "true"}
    tensors = [
        ("q", "F32", q.shape, qb),
        ("k_pages", "F32", k_pages.shape, kb),
        ("v_pages", "F32", v_pages.shape, vb),
        ("block_table", "I32", bt.shape, bt.astype("<i4").tobytes()),
        ("cu_seqlens_q", "I32", cu.shape, cu.tobytes()),
        ("kv_lens", "I32", kv_lens.shape, kv_lens.tobytes()),
        ("mask", "U8", mask.shape, mask.astype(np.uint8).tobytes()),
        ("bias", "F32", bias.shape, biasb),
        ("block_ids", "I32", ids.shape, ids.tobytes()),
        ("expected.out", "F32", out.shape, out.astype(np.float32).tobytes()),
    ]
    write_safetensors(os.path.join(HERE, name), tensors, meta)


if __name__ == "__main__":
    torch.manual_seed(0)
    gemma3_image_blocks_case("attention_gemma3_image_blocks_bf16.safetensors")
    packed_documents_bias_case("attention_packed_documents_bias_f32.safetensors")
    paged_blocks_tree_case("paged_attention_blocks_tree_f32.safetensors")

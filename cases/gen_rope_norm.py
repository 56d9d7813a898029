#!/usr/bin/env python3
"""Write the committed QK-norm rope case files for `llama-kernels check`.

An independent implementation in NumPy float64: the per-head RMSNorm of Qwen3's and Gemma 3's
`q_norm` / `k_norm` (`x / sqrt(mean(x^2) + eps) * (w + offset)` over each head's head_dim
elements, offset 0 for Qwen3, 1 for Gemma 3's `1 + w`), then RoPE as HF's
`apply_rotary_pos_emb` (`gen_rope.py`'s rotation and frequency tables), written from those
definitions rather than from this crate's code. Inputs are rounded to their storage dtype first;
expected outputs are float64 results stored as F32.

    pip install numpy && python3 cases/gen_rope_norm.py
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_rms_norm import store, write_safetensors  # noqa: E402
from gen_rope import fmt, inv_freq_and_attention, rotate  # noqa: E402


def head_norm(x, w, eps, offset):
    """x [..., head_dim], w [head_dim]: RMSNorm over each head."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * (w + offset)


def qk_case(name, seq, n_heads, n_kv_heads, head_dim, dtype, seed, positions, eps, offset,
            theta, rope_type="default", **params):
    """Q and K (token-major [seq, heads, head_dim]) with separate q_norm and k_norm weights."""
    rng = np.random.default_rng(seed)
    q, qb = store(rng.standard_normal((seq, n_heads, head_dim)) * 2.0, dtype)
    k, kb = store(rng.standard_normal((seq, n_kv_heads, head_dim)) * 2.0, dtype)
    base = 0.0 if offset else 1.0
    qw, qwb = store(base + 0.3 * rng.standard_normal(head_dim), dtype)
    kw, kwb = store(base + 0.3 * rng.standard_normal(head_dim), dtype)
    pos = np.asarray(positions, dtype=np.int64)
    seq_len = int(pos.max()) + 1
    inv, attn = inv_freq_and_attention(rope_type, theta, head_dim, params, seq_len)
    pos2 = pos[None, :]
    q_out = rotate(head_norm(q, qw, eps, offset)[None], pos2, inv, attn, "half", head_dim)[0]
    k_out = rotate(head_norm(k, kw, eps, offset)[None], pos2, inv, attn, "half", head_dim)[0]
    meta = {"op": "rope", "theta": repr(theta), "rope_type": rope_type,
            "norm_eps": repr(eps), "norm_weight_offset": repr(float(offset))}
    for key, v in params.items():
        meta[key] = fmt(v)
    tensors = [
        ("q", dtype, q.shape, qb),
        ("k", dtype, k.shape, kb),
        ("q_norm_weight", dtype, qw.shape, qwb),
        ("k_norm_weight", dtype, kw.shape, kwb),
        ("positions", "I64", pos.shape, pos.tobytes()),
        ("expected.q", "F32", q.shape, q_out.astype(np.float32).tobytes()),
        ("expected.k", "F32", k.shape, k_out.astype(np.float32).tobytes()),
    ]
    write_safetensors(os.path.join(HERE, name), tensors, meta)


def x_case(name, shape, dtype, seed, offset_pos, eps, offset, theta, rope_type="default",
           **params):
    """One tensor x [seq, heads, head_dim] with one norm weight, positions from an offset."""
    rng = np.random.default_rng(seed)
    x, xb = store(rng.standard_normal(shape) * 2.0, dtype)
    head_dim = shape[-1]
    base = 0.0 if offset else 1.0
    w, wb = store(base + 0.3 * rng.standard_normal(head_dim), dtype)
    pos = np.arange(offset_pos, offset_pos + shape[0], dtype=np.int64)
    inv, attn = inv_freq_and_attention(rope_type, theta, head_dim, params, int(pos.max()) + 1)
    out = rotate(head_norm(x, w, eps, offset)[None], pos[None], inv, attn, "half", head_dim)[0]
    meta = {"op": "rope", "theta": repr(theta), "rope_type": rope_type, "offset": str(offset_pos),
            "norm_eps": repr(eps), "norm_weight_offset": repr(float(offset))}
    for key, v in params.items():
        meta[key] = fmt(v)
    tensors = [
        ("x", dtype, x.shape, xb),
        ("norm_weight", dtype, w.shape, wb),
        ("expected.out", "F32", x.shape, out.astype(np.float32).tobytes()),
    ]
    write_safetensors(os.path.join(HERE, name), tensors, meta)


if __name__ == "__main__":
    # Qwen3 (theta 1e6, q_norm and k_norm with weights near 1, eps 1e-6), scaled down to 4 query
    # heads over 2 KV heads of head_dim 64, bf16, positions up to 2^20.
    qk_case("rope_qk_norm_qwen3_bf16.safetensors", 5, 4, 2, 64, "BF16", 21,
            positions=[0, 17, 4096, 65535, 1 << 20], eps=1e-6, offset=0, theta=1_000_000.0)
    # Gemma 3 global layers (theta 1e6, linear x8, (1 + w) with weights near 0) on K alone, as a
    # decode step at position 8190 writes it, f32.
    x_case("rope_norm_gemma3_f32.safetensors", (3, 2, 128), "F32", 22, offset_pos=8190,
           eps=1e-6, offset=1, theta=1_000_000.0, rope_type="linear", factor=8.0)

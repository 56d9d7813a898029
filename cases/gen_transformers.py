#!/usr/bin/env python3
"""Write the committed case files whose expected outputs come from HF transformers' own functions.

Unlike gen_rope.py and gen_attention.py (independent NumPy transcripts), these call the functions
a model runs: `_compute_llama3_parameters` and Llama-4's `apply_rotary_emb`, Qwen3-VL's
`recomposition_frequencies` (interleaved M-RoPE) and `apply_rotary_pos_emb`, BLOOM's
`build_alibi_tensor` and the eager attention it feeds. Everything runs in float64 (complex128)
on inputs already rounded to their storage dtype; where transformers builds a float32 table, the
script checks it against the float64 formula and uses the float64 one. Expected outputs are
stored as F32.

    pip install numpy torch transformers && python3 cases/gen_transformers.py
"""
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_rms_norm import store, write_safetensors  # noqa: E402
from gen_rope import fmt, inv_freq_and_attention  # noqa: E402

np.seterr(divide="ignore", invalid="ignore")  # the llama3 transcript's unused 0/0 band


def llama4_scout_case(name):
    """Llama-4-Scout's RoPE: llama3 scaling with factor 16 and low_freq_factor ==
    high_freq_factor == 1 (HF warns and computes a step table), Meta's interleaved pairs
    (`view_as_complex`), bf16 storage, [batch, seq] I32 positions on both sides of 8192."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import _compute_llama3_parameters
    from transformers.models.llama4.modeling_llama4 import apply_rotary_emb

    theta, head_dim = 500000.0, 128
    params = {"factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
              "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=5120, num_attention_heads=40, head_dim=head_dim,
                      max_position_embeddings=10485760,
                      rope_parameters={"rope_type": "llama3", "rope_theta": theta, **params})
    inv_hf, attn = _compute_llama3_parameters(cfg)
    inv, attn64 = inv_freq_and_attention("llama3", theta, head_dim, params, 0)
    assert attn == attn64 == 1.0
    assert not torch.isnan(inv_hf).any()
    # transformers' table is float32: equal to the float64 formula up to its rounding.
    rel = np.abs(inv_hf.double().numpy() - inv) / inv
    assert rel.max() < 2.0 ** -23, rel.max()
    base, _ = inv_freq_and_attention("default", theta, head_dim, {}, 0)
    divided = np.isclose(inv, base / 16.0, rtol=1e-12).sum()
    assert np.isclose(inv, base, rtol=1e-12).sum() == head_dim // 2 - divided
    assert 0 < divided < head_dim // 2, divided  # both sides of the step

    rng = np.random.default_rng(31)
    shape = (2, 3, 2, head_dim)
    x, xb = store(rng.standard_normal(shape), "BF16")
    pos = np.array([[5, 8191, 8193], [100000, 0, 1 << 20]], dtype=np.int64)
    freqs = torch.from_numpy(pos[..., None].astype(np.float64) * inv)  # [b, s, pairs]
    freqs_cis = torch.polar(torch.ones_like(freqs), freqs) * attn
    xt = torch.from_numpy(x)
    out, _ = apply_rotary_emb(xt, xt, freqs_cis)
    meta = {"op": "rope", "theta": repr(theta), "layout": "interleaved", "rope_type": "llama3"}
    for k, v in params.items():
        meta[k] = fmt(float(v))
    tensors = [
        ("x", "BF16", shape, xb),
        ("positions", "I32", pos.shape, pos.astype(np.int32).tobytes()),
        ("expected.out", "F32", shape, out.numpy().astype(np.float32).tobytes()),
    ]
    write_safetensors(os.path.join(HERE, name), tensors, meta)


def qwen3vl_mrope_case(name):
    """Qwen3-VL's interleaved M-RoPE (mrope_section [24, 20, 20], theta 5e6, head_dim 128):
    three text tokens, then image patches of a 2 x 3 grid at time 3, then text again."""
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import (
        Qwen3VLTextRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    theta, head_dim, section = 5_000_000.0, 128, [24, 20, 20]
    cfg = Qwen3VLTextConfig(hidden_size=256, num_attention_heads=2, head_dim=head_dim,
                            rope_parameters={"rope_type": "default", "rope_theta": theta,
                                             "mrope_section": section,
                                             "mrope_interleaved": True})
    emb = Qwen3VLTextRotaryEmbedding(cfg)
    assert list(emb.mrope_section) == section
    inv, attn = inv_freq_and_attention("default", theta, head_dim, {}, 0)
    rel = np.abs(emb.inv_freq.double().numpy() - inv) / inv
    assert rel.max() < 2.0 ** -23, rel.max()

    pos = np.array([[0, 1, 2, 3, 3, 3, 3, 3, 3, 6],
                    [0, 1, 2, 3, 3, 3, 4, 4, 4, 6],
                    [0, 1, 2, 3, 4, 5, 3, 4, 5, 6]], dtype=np.int64)  # [3, seq]
    seq, heads = pos.shape[1], 2
    freqs = torch.from_numpy(pos[:, None, :, None].astype(np.float64) * inv)  # [3, 1, s, pairs]
    # The function the model runs on cos and sin; it writes into row 0 of its argument.
    cos = emb.recomposition_frequencies(freqs.cos() * attn)  # [1, s, head_dim]
    sin = emb.recomposition_frequencies(freqs.sin() * attn)

    rng = np.random.default_rng(32)
    x, xb = store(rng.standard_normal((seq, heads, head_dim)), "F16")
    xt = torch.from_numpy(x)[None]  # [1, s, heads, head_dim]
    out, _ = apply_rotary_pos_emb(xt, xt, cos, sin, unsqueeze_dim=2)
    meta = {"op": "rope", "theta": repr(theta), "mrope_section": fmt([float(m) for m in section]),
            "mrope_interleaved": "true"}
    tensors = [
        ("x", "F16", x.shape, xb),
        ("positions", "I64", pos.shape, pos.tobytes()),
        ("expected.out", "F32", x.shape, out[0].numpy().astype(np.float32).tobytes()),
    ]
    write_safetensors(os.path.join(HERE, name), tensors, meta)


def bloom_alibi_case(name):
    """BLOOM's ALiBi attention as `BloomAttention.forward` computes it: `build_alibi_tensor`
    (slope * key index, one row per head) as the `baddbmm` input with beta 1 and alpha
    1/sqrt(head_dim), the causal mask, softmax, then P V; 6 heads (not a power of two, like
    BLOOM-176B's 112: heads 4 and 5 take the odd powers of the next base), head_dim 48, six
    queries at the end of 40 keys, f32."""
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes, build_alibi_tensor

    n_heads, head_dim, q_len, kv_len = 6, 48, 6, 40
    # transformers' slopes (float32) against the closed form: 2^(-8 (h + 1) / 4) for h < 4,
    # then 2^(-4 (2 i + 1) / 4).
    closed = [2.0 ** (-8.0 * (h + 1) / 4) for h in range(4)] + [2.0 ** (-4.0 * (2 * i + 1) / 4)
                                                                for i in range(2)]
    hf = _get_alibi_slopes(n_heads, torch.device("cpu")).double().numpy()
    assert np.abs(hf / np.array(closed) - 1).max() < 2.0 ** -23, (hf, closed)

    rng = np.random.default_rng(33)
    q, qb = store(rng.standard_normal((q_len, n_heads, head_dim)), "F32")
    k, kb = store(rng.standard_normal((kv_len, n_heads, head_dim)), "F32")
    v, vb = store(rng.standard_normal((kv_len, n_heads, head_dim)), "F32")
    mask = torch.ones(1, kv_len, dtype=torch.float64)
    alibi = build_alibi_tensor(mask, n_heads, torch.float64)  # [heads, 1, kv_len]
    qh = torch.from_numpy(q).permute(1, 0, 2)  # [heads, q_len, d]
    kh = torch.from_numpy(k).permute(1, 2, 0)  # [heads, d, kv_len]
    vh = torch.from_numpy(v).permute(1, 0, 2)  # [heads, kv_len, d]
    scores = alibi.baddbmm(batch1=qh, batch2=kh, beta=1.0, alpha=1.0 / math.sqrt(head_dim))
    pos = (kv_len - q_len) + torch.arange(q_len)[:, None]
    scores = scores.masked_fill(torch.arange(kv_len)[None, :] > pos, float("-inf"))
    out = torch.bmm(torch.softmax(scores, dim=-1), vh).permute(1, 0, 2)  # [q_len, heads, d]
    meta = {"op": "attention", "causal": "true", "alibi": "true"}
    tensors = [
        ("q", "F32", q.shape, qb),
        ("k", "F32", k.shape, kb),
        ("v", "F32", v.shape, vb),
        ("expected.out", "F32", q.shape, out.numpy().astype(np.float32).tobytes()),
    ]
    write_safetensors(os.path.join(HERE, name), tensors, meta)


if __name__ == "__main__":
    torch.manual_seed(0)
    llama4_scout_case("rope_llama4_scout_bf16.safetensors")
    qwen3vl_mrope_case("rope_mrope_interleaved_qwen3vl_f16.safetensors")
    bloom_alibi_case("attention_alibi_bloom_f32.safetensors")

#!/usr/bin/env python3
"""Write the committed attention cases over quantized KV caches (`kv_format` metadata) for
`llama-kernels check`.

K and V are given in float; `check` appends them to a KvCache of the case's format, which
quantizes them, and attends over the cache. The expected output is gen_attention.py's float64
attention over the dequantized K/V, dequantized by the formats' own reference code: llama.cpp's
Python quantizers for q8_0 and q4_0 (`gguf.quants`), and for fp8 e4m3 the clipped quotient
cast to `ml_dtypes.float8_e4m3fn` (round to nearest even, as torch's `float8_e4m3fn`) times the
scale. Shapes reuse the library tests' pipelines (f32, head_dim 32, 2 query heads per KV head),
so the cases add no shader compile of their own.

    pip install numpy gguf ml_dtypes && python3 cases/gen_attention_quant.py
"""
import os

import ml_dtypes
import numpy as np
from gguf import quants
from gguf.constants import GGMLQuantizationType as T

from gen_attention import attention
from gen_rms_norm import HERE, store, write_safetensors


def dequantized(x, kv_format, scale):
    """What a cache of kv_format holds for the f32 values x (rows of a multiple of 32)."""
    x = np.asarray(x, dtype=np.float32)
    if kv_format in ("q8_0", "q4_0"):
        qt = T.Q8_0 if kv_format == "q8_0" else T.Q4_0
        blocks = quants.quantize(x.reshape(-1, 32), qt)
        return quants.dequantize(blocks, qt).reshape(x.shape).astype(np.float64)
    s = np.float32(scale)
    codes = np.clip(x / s, np.float32(-448), np.float32(448)).astype(ml_dtypes.float8_e4m3fn)
    return codes.astype(np.float64) * np.float64(s)


def case(name, kv_format, batch, q_len, kv_len, n_heads, n_kv_heads, head_dim, seed,
         k_scale=None, v_scale=None, kv_magnitude=1.0):
    rng = np.random.default_rng(seed)
    q, qb = store(rng.standard_normal((batch, q_len, n_heads, head_dim)), "F32")
    k, kb = store(rng.standard_normal((batch, kv_len, n_kv_heads, head_dim)) * kv_magnitude, "F32")
    v, vb = store(rng.standard_normal((batch, kv_len, n_kv_heads, head_dim)) * kv_magnitude, "F32")
    tensors = [("q", "F32", q.shape, qb), ("k", "F32", k.shape, kb), ("v", "F32", v.shape, vb)]
    for key, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if s is not None:
            tensors.append((key, "F32", (), np.float32(s).tobytes()))
    kd = dequantized(k, kv_format, k_scale or 1.0)
    vd = dequantized(v, kv_format, v_scale or 1.0)
    out = attention(q, kd, vd)
    tensors.append(("expected.out", "F32", q.shape, out.astype(np.float32).tobytes()))
    write_safetensors(os.path.join(HERE, name), tensors, {"op": "attention", "kv_format": kv_format})


if __name__ == "__main__":
    # Decode over a q8_0 cache: batch 2, one token after 40, 4 query heads over 2 KV heads.
    case("attention_decode_q8_0_f32.safetensors", "q8_0", 2, 1, 41, 4, 2, 32, 11)
    # Chunked prefill over a q4_0 cache: 7 new tokens after 20 cached ones.
    case("attention_prefill_q4_0_f32.safetensors", "q4_0", 1, 7, 27, 4, 2, 32, 12)
    # Decode over an fp8 e4m3 cache with vLLM-style per-tensor scales; K's values reach past
    # 448 x k_scale, so some saturate.
    case("attention_decode_fp8_f32.safetensors", "fp8_e4m3", 2, 1, 33, 4, 2, 32, 13,
         k_scale=0.004, v_scale=0.02, kv_magnitude=1.5)

#!/usr/bin/env python3
"""Write the committed rms_norm case files for `llama-kernels check`.

An independent implementation: NumPy in float64, following the definitions (Zhang & Sennrich
2019; Gemma's (1 + w)), with a hand-written safetensors writer so nothing but NumPy is needed.
Inputs are rounded to their storage dtype first; expected outputs are float64 results stored as F32.

    pip install numpy && python3 cases/gen_rms_norm.py
"""
import json
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def bf16_round(a):
    """float64 -> nearest-even bfloat16 value (as float64) and its raw uint16 bits."""
    f = np.asarray(a, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    back = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return back, bits


def store(a, dtype):
    """(value as stored, float64; raw little-endian bytes)"""
    if dtype == "F32":
        v = np.asarray(a, dtype=np.float32)
        return v.astype(np.float64), v.tobytes()
    if dtype == "F16":
        v = np.asarray(a, dtype=np.float16)
        return v.astype(np.float64), v.tobytes()
    if dtype == "BF16":
        v, bits = bf16_round(a)
        return v, bits.astype("<u2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, dtype string, shape, raw bytes)."""
    header = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, raw in tensors:
            f.write(raw)


def rms_norm(x, w, eps, weight_offset):
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * (w + weight_offset)


def case(name, shape, dtype, eps, weight_offset, residual, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    hidden = shape[-1]
    x, xb = store(rng.standard_normal(shape) * scale, dtype)
    w, wb = store(rng.standard_normal(hidden) * 0.5, dtype)
    tensors = [("x", dtype, shape, xb), ("weight", dtype, (hidden,), wb)]
    meta = {"op": "rms_norm", "eps": repr(eps), "weight_offset": repr(weight_offset)}
    if residual:
        r, rb = store(rng.standard_normal(shape), dtype)
        tensors.append(("residual", dtype, shape, rb))
        h, _ = store(x + r, dtype)  # the model stores the sum in its own dtype
        tensors.append(("expected.residual_out", "F32", shape, h.astype(np.float32).tobytes()))
        x = h
    out = rms_norm(x, w, eps, weight_offset).astype(np.float32)
    tensors.append(("expected.out", "F32", shape, out.tobytes()))
    write_safetensors(os.path.join(HERE, name), tensors, meta)


if __name__ == "__main__":
    # Llama-3-8B's RMSNorm (eps 1e-5) on a few tokens of a scaled-down hidden size.
    case("rms_norm_llama_f32.safetensors", (3, 64), "F32", 1e-5, 0.0, False, 1)
    # Gemma's (1 + w) in bf16, batch x seq x hidden.
    case("rms_norm_gemma_bf16.safetensors", (2, 5, 48), "BF16", 1e-6, 1.0, False, 2)
    # Fused residual add in f16 with large activations (x*x overflows f16 itself).
    case("rms_norm_residual_f16.safetensors", (4, 96), "F16", 1e-6, 0.0, True, 3, scale=300.0)
    # Odd hidden size, eps 0.
    case("rms_norm_odd_f32.safetensors", (7, 33), "F32", 0.0, 0.0, False, 4)

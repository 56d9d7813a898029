#!/usr/bin/env python3
"""Write the committed rope case files for `llama-kernels check`.

An independent implementation: NumPy in float64, following HF transformers'
`modeling_rope_utils.py` (`_compute_*_parameters`) and `apply_rotary_pos_emb` / Meta's
interleaved form, written from those formulas rather than from this crate's code. Inputs are
rounded to their storage dtype first; expected outputs are float64 results stored as F32.

    pip install numpy && python3 cases/gen_rope.py
"""
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_rms_norm import store, write_safetensors  # noqa: E402


def default_inv_freq(base, dim):
    return 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def inv_freq_and_attention(rope_type, theta, dim, p, seq_len):
    """HF semantics: (inv_freq[dim/2], attention_factor). `p` holds the rope_scaling keys."""
    if rope_type == "default":
        return default_inv_freq(theta, dim), 1.0
    if rope_type == "linear":
        return default_inv_freq(theta, dim) / p["factor"], 1.0
    if rope_type == "llama3":
        inv = default_inv_freq(theta, dim)
        factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old = p["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, out), 1.0
    if rope_type == "yarn":
        factor = p["factor"]
        orig = p["original_max_position_embeddings"]

        def get_mscale(scale, mscale=1.0):
            return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

        attn = p.get("attention_factor")
        if attn is None:
            if p.get("mscale") and p.get("mscale_all_dim"):
                attn = get_mscale(factor, p["mscale"]) / get_mscale(factor, p["mscale_all_dim"])
            else:
                attn = get_mscale(factor)
        beta_fast = p.get("beta_fast", 32.0)
        beta_slow = p.get("beta_slow", 1.0)

        def corr_dim(rot):
            return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(theta))

        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if p.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        pos_freqs = theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        extra, inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
        extra_factor = 1 - ramp
        return inter * (1 - extra_factor) + extra * extra_factor, attn
    if rope_type == "dynamic":
        factor, orig = p["factor"], p["original_max_position_embeddings"]
        base = theta
        if seq_len > orig:
            base = theta * ((factor * seq_len / orig) - (factor - 1)) ** (dim / (dim - 2))
        return default_inv_freq(base, dim), 1.0
    if rope_type == "longrope":
        orig = p["original_max_position_embeddings"]
        factor = p["factor"]
        attn = p.get("attention_factor")
        if attn is None:
            attn = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
        ext = np.array(p["long_factor"] if seq_len > orig else p["short_factor"], dtype=np.float64)
        return 1.0 / (ext * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)), attn
    raise ValueError(rope_type)


def rotate(x, pos, inv, attn, layout, rd):
    """x [batch, seq, heads, head_dim], pos [batch, seq] -> rotated copy (float64)."""
    ang = pos[..., None].astype(np.float64) * inv  # [b, s, rd/2]
    cos, sin = np.cos(ang)[:, :, None, :], np.sin(ang)[:, :, None, :]
    out = x.copy()
    if layout == "half":
        a, b = x[..., : rd // 2], x[..., rd // 2 : rd]
        out[..., : rd // 2] = (a * cos - b * sin) * attn
        out[..., rd // 2 : rd] = (b * cos + a * sin) * attn
    else:
        a, b = x[..., 0:rd:2], x[..., 1:rd:2]
        out[..., 0:rd:2] = (a * cos - b * sin) * attn
        out[..., 1:rd:2] = (b * cos + a * sin) * attn
    return out


def fmt(v):
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(repr(float(e)) for e in v) + "]"
    return repr(v)


def case(name, shape, dtype, seed, rope_type="default", theta=10000.0, layout="half",
         rotary_dim=None, positions=None, pos_dtype="I64", offset=None, **params):
    rng = np.random.default_rng(seed)
    x, xb = store(rng.standard_normal(shape), dtype)
    x4 = x.reshape((1,) + tuple(shape)) if len(shape) == 3 else x
    batch, seq, _, head_dim = x4.shape
    rd = rotary_dim or head_dim
    tensors = [("x", dtype, shape, xb)]
    meta = {"op": "rope", "theta": repr(theta), "layout": layout, "rope_type": rope_type}
    if rotary_dim is not None:
        meta["rotary_dim"] = str(rotary_dim)
    if positions is not None:
        pos = np.asarray(positions, dtype=np.int64)
        npdt = np.int64 if pos_dtype == "I64" else np.int32
        tensors.append(("positions", pos_dtype, pos.shape, pos.astype(npdt).tobytes()))
        pos2 = np.broadcast_to(pos, (batch, seq))
    else:
        start = offset or 0
        if offset is not None:
            meta["offset"] = str(offset)
        pos2 = np.broadcast_to(np.arange(start, start + seq, dtype=np.int64), (batch, seq))
    seq_len = int(pos2.max()) + 1  # HF: max(position_ids) + 1
    for k, v in params.items():
        meta[k] = fmt(v)
    inv, attn = inv_freq_and_attention(rope_type, theta, rd, params, seq_len)
    out = rotate(x4, pos2, inv, attn, layout, rd).reshape(shape).astype(np.float32)
    tensors.append(("expected.out", "F32", shape, out.tobytes()))
    write_safetensors(os.path.join(HERE, name), tensors, meta)


def mrope_case(name, seq, heads, head_dim, dtype, seed, positions, mrope_section, theta):
    """Qwen2-VL multimodal RoPE, as HF computes it: per-row angles [3, seq, dim/2], split by
    mrope_section along the pairs, chunk i taken from row i % 3, duplicated for rotate_half."""
    rng = np.random.default_rng(seed)
    x, xb = store(rng.standard_normal((seq, heads, head_dim)), dtype)
    pos = np.asarray(positions, dtype=np.int64)  # [3, seq]
    inv, attn = inv_freq_and_attention("default", theta, head_dim, {}, int(pos.max()) + 1)
    freqs = pos[..., None].astype(np.float64) * inv  # [3, seq, dim/2]
    bounds = np.cumsum(mrope_section)[:-1]

    def recompose(f):
        chunks = np.split(f, bounds, axis=-1)
        half = np.concatenate([c[i % 3] for i, c in enumerate(chunks)], axis=-1)  # [seq, dim/2]
        return np.concatenate([half, half], axis=-1)[:, None, :]  # [seq, 1, dim]

    cos, sin = recompose(np.cos(freqs)) * attn, recompose(np.sin(freqs)) * attn
    rotated_half = np.concatenate([-x[..., head_dim // 2:], x[..., : head_dim // 2]], axis=-1)
    out = x * cos + rotated_half * sin
    meta = {"op": "rope", "theta": repr(theta), "mrope_section": fmt([float(m) for m in mrope_section])}
    tensors = [
        ("x", dtype, x.shape, xb),
        ("positions", "I64", pos.shape, pos.tobytes()),
        ("expected.out", "F32", x.shape, out.astype(np.float32).tobytes()),
    ]
    write_safetensors(os.path.join(HERE, name), tensors, meta)


if __name__ == "__main__":
    # Llama-3.1-8B frequencies (theta 500k, llama3 x8), half layout, positions near 1M and 2^24.
    case("rope_llama3_f32.safetensors", (5, 4, 64), "F32", 11, rope_type="llama3", theta=500000.0,
         positions=[0, 4095, 131071, 1_000_000, (1 << 24) - 1],
         factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
         original_max_position_embeddings=8192)
    # Qwen-style YaRN x4 on a batch with per-row positions (I32), interleaved, partial rotary
    # (head_dim 80, rotary_dim 32 as in Phi-2), bf16 storage.
    case("rope_yarn_partial_bf16.safetensors", (2, 3, 2, 80), "BF16", 12, rope_type="yarn",
         theta=1_000_000.0, layout="interleaved", rotary_dim=32,
         positions=[[7, 65535, 3], [40000, 0, 1 << 20]], pos_dtype="I32",
         factor=4.0, original_max_position_embeddings=32768, beta_fast=32.0, beta_slow=1.0)
    # Phi-3 LongRoPE past the original 4k window (long_factor), decode-style start offset, f16.
    case("rope_longrope_offset_f16.safetensors", (3, 2, 32), "F16", 13, rope_type="longrope",
         offset=4100, factor=32.0, original_max_position_embeddings=4096,
         short_factor=[1.0 + 0.05 * i for i in range(16)],
         long_factor=[1.0 + 1.5 * i for i in range(16)])
    # Dynamic NTK x2 with an 8k sequence over a 4k original window, f32.
    case("rope_dynamic_f32.safetensors", (4, 3, 48), "F32", 14, rope_type="dynamic",
         offset=8188, factor=2.0, original_max_position_embeddings=4096)
    # Qwen2-VL multimodal RoPE (theta 1e6, mrope_section [16, 24, 24], head_dim 128): two text
    # tokens (equal rows), then image patches on a 2 x 2 grid at time 2, f16.
    mrope_case("rope_mrope_qwen2vl_f16.safetensors", 6, 2, 128, "F16", 15,
               positions=[[0, 1, 2, 2, 2, 2], [0, 1, 2, 2, 3, 3], [0, 1, 2, 3, 2, 3]],
               mrope_section=[16, 24, 24], theta=1_000_000.0)

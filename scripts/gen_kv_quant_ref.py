#!/usr/bin/env python3
"""Write tests/data/kv_quant_ref.bin: quantized KV blocks made by the formats' own reference code,
which tests/kv_quant.rs compares with the crate's quantizers (CPU and GPU) bit for bit.

    pip install gguf numpy ml_dtypes
    python3 scripts/gen_kv_quant_ref.py

- q8_0 and q4_0: llama.cpp's Python quantizers (`gguf.quants`, written to match ggml's
  `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` bit for bit);
- fp8 e4m3: `clip(x / scale, -448, 448)` cast to `ml_dtypes.float8_e4m3fn` (round to nearest
  even, as torch's `float8_e4m3fn` cast of the clipped value; the clip is the saturation vLLM
  applies before its cast).

Layout (little-endian): b"KVQ1", u32 n (values, a multiple of 32), f32 x[n]; the q8_0 blocks
in ggml's layout (per block: f16 d, 32 x i8); the q4_0 blocks (per block: f16 d, 16 bytes of
nibbles); u32 number of fp8 scales, then per scale: f32 scale, u8 code[n].
"""

import struct

import ml_dtypes
import numpy as np
from gguf import quants
from gguf.constants import GGMLQuantizationType as T


def values() -> np.ndarray:
    rng = np.random.default_rng(21)
    blocks = []
    # Random rows over many magnitudes (model activations after RoPE and projections).
    for i in range(38):
        blocks.append(rng.standard_normal(32) * 10.0 ** rng.uniform(-4, 3))
    # All zero: d = 0, id = 0.
    blocks.append(np.zeros(32))
    # One nonzero value, of either sign (q4_0 keeps the sign of the largest magnitude).
    b = np.zeros(32)
    b[7] = -3.0
    blocks.append(b)
    b = np.zeros(32)
    b[30] = 2.5
    blocks.append(b)
    # Equal magnitudes of both signs: the first one is q4_0's max.
    blocks.append(np.array([(-1.0) ** i * 1.75 for i in range(32)]))
    # Halves on a grid: q8_0's roundf ties away from zero.
    blocks.append((np.arange(32) - 16) * 0.5 + 0.25)
    blocks.append(np.linspace(-127, 127, 32) / 127 * 63.5)
    # q4_0 blocks whose x * id + 8.5 sits next to an integer: a fused multiply-add (one
    # rounding) truncates some of them one step lower than the reference's two roundings.
    for m in (-3.0, -6.0):
        blocks.append(np.array([m] + [(k % 16 - 7.5) * (m / -8.0) for k in range(31)]))
    # Tiny values (f16 subnormal scales; fp8 subnormals).
    blocks.append(rng.standard_normal(32) * 1e-6)
    # Large values: fp8 saturates past 448 at scale 1.
    blocks.append(rng.standard_normal(32) * 1000.0)
    return np.concatenate(blocks).astype(np.float32)


def main() -> None:
    x = values()
    n = x.size
    q8 = quants.quantize(x.reshape(-1, 32), T.Q8_0)
    q4 = quants.quantize(x.reshape(-1, 32), T.Q4_0)
    assert q8.nbytes == n // 32 * 34 and q4.nbytes == n // 32 * 18
    scales = [1.0, 0.0173, 4.0]
    out = bytearray(b"KVQ1")
    out += struct.pack("<I", n)
    out += x.tobytes()
    out += q8.tobytes()
    out += q4.tobytes()
    out += struct.pack("<I", len(scales))
    for s in scales:
        s32 = np.float32(s)
        y = np.clip(x / s32, np.float32(-448.0), np.float32(448.0))
        codes = y.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
        out += struct.pack("<f", s32)
        out += codes.tobytes()
    with open("tests/data/kv_quant_ref.bin", "wb") as f:
        f.write(out)
    print(f"{n} values, {len(out)} bytes")


if __name__ == "__main__":
    main()

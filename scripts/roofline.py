#!/usr/bin/env python3
"""Each record of a `bench --json` file against the H100 / H200 roofline.

Usage: python3 scripts/roofline.py BENCH_JSON [--device NAME]

Per kernel record: achieved GB/s (and GFLOP/s where the record has it), the roofline bound
(memory: bytes / HBM bandwidth, or FP32: flops / FP32 non-tensor peak, whichever takes longer),
the ideal time, the fraction of that bound reached, and the fraction of the WGSL streaming copy
measured beside the record in the same run (`fraction_of_wgsl_copy`).

The device: --device NAME, else the `adapter:` line of bench.log beside the JSON (what
scripts/gpu-check.sh writes: the adapter wgpu actually used), else info.log's adapter name, else
`nvidia-smi --query-gpu=name`. Ceilings are the vendor's published figures (NVIDIA H100 and
H200 datasheets); WGSL through wgpu/Vulkan has no tensor-core path, so the compute ceiling is
the FP32 non-tensor rate. An adapter that is not an H100/H200 gets the copy fractions only.

Never fails the run: a missing or malformed file is reported and the exit status is 0.
"""

import json
import os
import re
import subprocess
import sys

# (pattern on the adapter name, label, HBM bytes/s, FP32 non-tensor FLOP/s, L2 bytes)
# NVIDIA datasheets: H100 SXM 3.35 TB/s HBM3, 67 TFLOP/s FP32, 50 MB L2, 132 SMs; H100 NVL
# 3.9 TB/s, 60 TFLOP/s; H100 PCIe 2.0 TB/s HBM2e, 51 TFLOP/s, 114 SMs; H200 SXM 4.8 TB/s HBM3e,
# 67 TFLOP/s; H200 NVL 4.8 TB/s, 60 TFLOP/s. The more specific patterns come first.
DEVICES = [
    (r"H200.*NVL", "H200 NVL", 4.8e12, 60e12, 50e6),
    (r"H200", "H200 SXM", 4.8e12, 67e12, 50e6),
    (r"H100.*NVL", "H100 NVL", 3.9e12, 60e12, 50e6),
    (r"H100.*PCIe", "H100 PCIe", 2.0e12, 51e12, 50e6),
    (r"H100", "H100 SXM", 3.35e12, 67e12, 50e6),
]


def device_from_logs(folder):
    """(name, source) from bench.log's `adapter:` line or info.log's JSON, else None."""
    log = os.path.join(folder, "bench.log")
    try:
        with open(log, errors="replace") as f:
            for line in f:
                if line.startswith("adapter: "):
                    # `adapter: NAME (backend, type), f16=..., ...`: the capabilities are noise here.
                    name = re.split(r",\s*f16=", line[len("adapter: "):])[0]
                    return name.strip(), "bench.log"
    except OSError:
        pass
    info = os.path.join(folder, "info.log")
    try:
        with open(info, errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    try:
        v = json.loads(text)
        a = v.get("adapter", v) if isinstance(v, dict) else None
        if isinstance(a, dict) and isinstance(a.get("name"), str):
            return a["name"], "info.log"
    except ValueError:
        pass
    m = re.search(r'"name"\s*:\s*"([^"]+)"', text)
    return (m.group(1), "info.log") if m else None


def device_from_smi():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip().splitlines()
    return (name[0].strip(), "nvidia-smi") if out.returncode == 0 and name else None


def ceiling_for(name):
    for pattern, label, bw, flops, l2 in DEVICES:
        if re.search(pattern, name or "", re.IGNORECASE):
            return label, bw, flops, l2
    return None


def num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def shape_text(shape):
    if not isinstance(shape, dict):
        return "-"
    short = {
        "model": None, "hidden": "n", "rows": "rows", "seq": "seq", "heads": "h",
        "head_dim": "hd", "q_len": "q", "kv_len": "kv", "n_heads": "nh", "n_kv_heads": "nkv",
        "sequences": "seqs", "kv_tokens": "keys", "max_kv_len": "max", "page_size": "page",
        "bytes": "B", "m": "m", "n": "n", "k": "k", "window": "win", "tiling": None,
    }
    parts = [str(shape.get("model", ""))]
    for k, v in shape.items():
        if k in short and short[k] is None:
            continue
        parts.append(f"{short.get(k, k)}{v}")
    return " ".join(p for p in parts if p)


def pct(f):
    return f"{100 * f:.0f}%" if f is not None else "-"


def report(path, device_arg):
    try:
        with open(path) as f:
            records = json.load(f)
    except OSError as e:
        print(f"roofline: no bench JSON at {path} ({e.strerror}); nothing to compare")
        return
    except ValueError as e:
        print(f"roofline: {path} is not valid JSON ({e}); nothing to compare")
        return
    if not isinstance(records, list):
        print(f"roofline: {path} is not a JSON array of records; nothing to compare")
        return

    if device_arg:
        found = (device_arg, "--device")
    else:
        found = device_from_logs(os.path.dirname(os.path.abspath(path))) or device_from_smi()
    name, source = found if found else ("unknown", "no bench.log, info.log or nvidia-smi")
    dev = ceiling_for(name)
    print(f"roofline: {path}; device {name!r} (from {source})")
    if dev:
        label, bw, flops, l2 = dev
        print(
            f"ceilings ({label}, vendor figures): HBM {bw / 1e12:.2f} TB/s, FP32 non-tensor "
            f"{flops / 1e12:.0f} TFLOP/s (no tensor cores from WGSL), ridge "
            f"{flops / bw:.1f} FLOP/B, L2 {l2 / 1e6:.0f} MB"
        )
        print("%roof = ideal time (bytes / HBM or flops / FP32, the longer) / measured time;"
              " * = bytes under L2: repeats may hit L2, %roof can pass 100%")
    else:
        print("not an H100/H200: copy fractions only (the same-run WGSL copy ceiling)")

    head = f"{'kernel':<9} {'variant':<36} {'dtype':<5} {'shape':<44} {'time_ms':>9} " \
           f"{'GB/s':>8} {'GFLOP/s':>8} {'%wgsl':>6}"
    if dev:
        head += f" {'bound':>5} {'ideal_us':>9} {'%roof':>6}"
    print(head)
    skipped = 0
    for r in records:
        if not isinstance(r, dict) or r.get("kernel") == "host":
            continue
        t = num(r.get("time_ms"))
        nbytes = num(r.get("bytes"))
        if t is None or nbytes is None or t <= 0:
            skipped += 1
            continue
        gbps = num(r.get("gbps"))
        if gbps is None:
            gbps = nbytes / (t * 1e6)
        gflops = num(r.get("gflops"))
        wgsl = num(r.get("fraction_of_wgsl_copy"))
        line = (
            f"{str(r.get('kernel', '-')):<9} {str(r.get('variant', '-')):<36} "
            f"{str(r.get('dtype', '-')):<5} {shape_text(r.get('shape'))[:44]:<44} {t:>9.4f} "
            f"{gbps:>8.1f} {(f'{gflops:.1f}' if gflops is not None else '-'):>8} {pct(wgsl):>6}"
        )
        if dev:
            t_mem = nbytes / bw
            fl = gflops * 1e9 * t * 1e-3 if gflops is not None else None
            t_fp = fl / flops if fl is not None else 0.0
            bound = "fp32" if t_fp > t_mem else "mem"
            ideal = max(t_mem, t_fp)
            mark = "*" if nbytes < l2 else ""
            line += f" {bound:>5} {ideal * 1e6:>9.2f} {pct(ideal / (t * 1e-3)) + mark:>6}"
        print(line)
    if skipped:
        print(f"({skipped} record(s) without time_ms / bytes skipped)")


def main(argv):
    args = [a for a in argv if not a.startswith("--device")]
    device = None
    for i, a in enumerate(argv):
        if a == "--device" and i + 1 < len(argv):
            device = argv[i + 1]
            args.remove(device)
        elif a.startswith("--device="):
            device = a.split("=", 1)[1]
    if not args:
        print("usage: python3 scripts/roofline.py BENCH_JSON [--device NAME]")
        return
    report(args[0], device)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception as e:  # the report must never fail the run it follows
        print(f"roofline: stopped on {type(e).__name__}: {e}")
    sys.exit(0)

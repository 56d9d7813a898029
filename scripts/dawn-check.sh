#!/usr/bin/env bash
# The Dawn check: the kernels through a second WebGPU implementation, Dawn (Chrome's; the npm
# package `webgpu`, dawn.node), on Mesa 25's lavapipe, as docs/browser.md describes. Needs what
# scripts/setup.sh installs (Node packages, .dawn/mesa) and the `llama-kernels` binary that
# `cargo test` builds (it is built here if missing).
#
#   1. Tint (Dawn's WGSL compiler) takes every module text that `Shader::source()` gives
#      (Vulkan, lavapipe): errors fail, warnings are printed.
#   2. Every variant's pipeline, created by Dawn at WebGPU's default limits (Null backend: Dawn's
#      and Tint's validation with the constants applied, no driver compile), shader-f16 and
#      subgroups on: every variant the planner picks for a device with those limits must be
#      created; the others that need more than those limits are listed, and those of them that
#      the planner picks on some described device (`DeviceDesc::presets`) are created on Vulkan
#      (lavapipe) at its own limits (32 KiB of workgroup memory), where they must be created.
#   3. The self-test's kernels, captured at the launch path on Llama-3.2-1B's layout (head_dim
#      64) and replayed in Dawn on lavapipe, judged against the f64 reference at the
#      self-test's tolerances: every RMSNorm, RoPE and KV-cache row, decode over each quantized
#      cache (q8_0, q4_0, fp8), and one row of each other attention kernel, the dtypes spread
#      over them: prefill bf16, decode (the CPU key-lane kernel and its merge) f16, paged
#      (prefill, key-lane and merge) f32. Mesa 25's LLVM takes long over each attention pipeline
#      (BENCHMARKS.md), so the other dtypes are replayed with --full only.
#
# Steps 1-2 and step 3 run side by side (two cores), each lane's output printed when it ends.
# --full creates every variant at lavapipe's own limits on Vulkan instead of step 2's second half
# (about half an hour on 2 cores) and replays every self-test row.
# Exits non-zero on any failure, or after DAWN_CHECK_SECONDS (default 420) seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
full=false
[ "${1:-}" = "--full" ] && full=true
limit="${DAWN_CHECK_SECONDS:-420}"
$full && limit="${DAWN_CHECK_SECONDS:-7200}"

mesa="$root/.dawn/mesa"
if [ ! -f "$mesa/lvp_icd.json" ] || [ ! -d scripts/dawn/node_modules/webgpu ]; then
    echo "dawn-check: run scripts/setup.sh first (Mesa 25 lavapipe in .dawn/mesa, Node packages)" >&2
    exit 1
fi
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/debug/llama-kernels"
[ -x "$bin" ] || cargo build -q -p llama-kernels-tools --bin llama-kernels
out="$target/dawn-check"
rm -rf "$out"
mkdir -p "$out"

# Dawn on Mesa 25's lavapipe only (its libdrm beside it); the Rust side keeps the system's Mesa.
dawn() {
    VK_DRIVER_FILES="$mesa/lvp_icd.json" VK_ICD_FILENAMES="$mesa/lvp_icd.json" \
        LD_LIBRARY_PATH="$mesa/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        node "$root/scripts/dawn/check.mjs" "$@" 2> >(grep -v "artificially reduced" >&2)
}

# Run a step and say how long it took.
timed() {
    local t=$SECONDS
    "$@"
    echo "dawn-check: $((SECONDS - t)) s for ${*:1:3}"
}

# Capture, replay and judge the self-test rows named by the arguments (--only ..., or none: all)
# in $out/$1.
rows() {
    local dir="$out/$1"
    shift
    timed "$bin" dawn capture "$dir" "$@"
    timed dawn replay "$dir"
    timed "$bin" dawn judge "$dir" "$@"
}

# Steps 1 and 2, then (not with --full) the decode rows over quantized caches.
lane_variants() {
    timed "$bin" dawn variants "$out/variants"
    timed dawn modules "$out/variants"
    timed dawn variants "$out/variants" --default --null
    if $full; then
        timed dawn variants "$out/variants"
    else
        timed dawn variants "$out/variants" --over-default
        rows replay-q --only "attention decode, "
    fi
}

# Step 3's other rows (with --full: every row).
lane_rows() {
    if $full; then
        rows replay
    else
        rows replay --only "rms_norm;rope;kv_cache;attention prefill bf16;attention decode f16;paged append_rope + attention f32"
    fi
}

# Run a lane in its own shell (so that its first failure ends it), its output to $out/NAME.log.
lane() {
    bash -c "set -euo pipefail; lane_$1" >"$out/$1.log" 2>&1
}

steps() {
    set -euo pipefail
    local t0=$SECONDS
    echo "dawn-check: Mesa $(cat "$mesa/version"), webgpu $(node -p "require('$root/scripts/dawn/node_modules/webgpu/package.json').version")"
    lane variants &
    local variants=$!
    local ok=true
    lane rows || ok=false
    wait "$variants" || ok=false
    cat "$out/variants.log" "$out/rows.log"
    $ok
    echo "dawn-check: passed in $((SECONDS - t0)) s"
}

export -f steps dawn timed rows lane lane_variants lane_rows
export bin out mesa root full
# Without --foreground: on the time limit, timeout ends the whole process group (both lanes).
timeout "$limit" bash -c steps || {
    code=$?
    if [ "$code" -eq 124 ]; then
        cat "$out"/variants.log "$out"/rows.log 2>/dev/null || true
        echo "dawn-check: FAILED: over the time limit of $limit s" >&2
    fi
    echo "dawn-check: FAILED" >&2
    exit 1
}

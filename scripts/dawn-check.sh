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
#      created; the others that need more than those limits are listed, then created on Vulkan
#      (lavapipe) at its own limits (32 KiB of workgroup memory), where they must be created.
#   3. The self-test's kernels, captured at the launch path and replayed in Dawn on lavapipe,
#      judged against the f64 reference at the self-test's tolerances: rms_norm, rope, prefill
#      and kv_cache rows. The decode rows (contiguous and paged) are replayed with --full only:
#      lavapipe's LLVM takes many minutes on Tint's code for the CPU decode kernel, and those
#      rows do not match the reference in Dawn yet (docs/browser.md, "Open").
#
# --full creates every variant at lavapipe's own limits on Vulkan instead of step 2's second half
# (LLVM compiles each pipeline: about half an hour on 2 cores) and replays every self-test row.
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

steps() {
    set -euo pipefail
    local t0=$SECONDS
    echo "dawn-check: Mesa $(cat "$mesa/version"), webgpu $(node -p "require('$root/scripts/dawn/node_modules/webgpu/package.json').version")"
    timed "$bin" dawn variants "$out/variants"
    timed dawn modules "$out/variants"
    timed dawn variants "$out/variants" --default --null
    if $full; then
        timed dawn variants "$out/variants"
        only=()
    else
        timed dawn variants "$out/variants" --over-default
        only=(--only "rms_norm,rope,attention prefill,kv_cache")
    fi
    timed "$bin" dawn capture "$out/replay" "${only[@]}"
    timed dawn replay "$out/replay"
    timed "$bin" dawn judge "$out/replay" "${only[@]}"
    echo "dawn-check: passed in $((SECONDS - t0)) s"
}

export -f steps dawn timed
export bin out mesa root full
timeout --foreground "$limit" bash -c steps || {
    code=$?
    [ "$code" -eq 124 ] && echo "dawn-check: FAILED: over the time limit of $limit s" >&2
    echo "dawn-check: FAILED" >&2
    exit 1
}

#!/usr/bin/env bash
# One prepared run for a machine with a real GPU: everything the project measures or checks,
# written to one folder. Usage: bash scripts/gpu-check.sh OUT_DIR
# Runs the self-test, `check` over the committed cases, the release test suite and
# `bench --quick --json` on whatever adapter wgpu picks (WGPU_BACKEND / WGPU_ADAPTER_NAME
# choose), each with its own time limit so that one slow step cannot eat the others' time.
set -uo pipefail
out=${1:?usage: bash scripts/gpu-check.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { # name limit_s command...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
}
{ nvidia-smi 2>&1 || true; uname -a; nproc; } >"$out/machine.txt"
step build 240 cargo build --release --all-targets
step info 30 cargo run --release -- info --json
step selftest 60 cargo run --release -- selftest --json
step check 60 cargo run --release -- check cases/*.safetensors
step bench 150 cargo run --release -- bench --quick --json "$out/bench.json"
step tests 240 cargo test --release
echo "results in $out"

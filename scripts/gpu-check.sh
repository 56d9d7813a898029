#!/usr/bin/env bash
# One prepared run for a machine with a real GPU: everything the project measures or checks,
# written to one folder. Usage: bash scripts/gpu-check.sh OUT_DIR
# Runs the self-test, `check` over the committed cases, the release test suite and
# `bench --quick --json` on whatever adapter wgpu picks (WGPU_BACKEND / WGPU_ADAPTER_NAME
# choose), each with its own time limit so that one slow step cannot eat the others' time.
# After the bench, scripts/roofline.py prints each record's GB/s (GFLOP/s) as a fraction of the
# H100 / H200 roofline and of the same-run WGSL copy (OUT/roofline.txt; it never fails the run).
#
# Two ways to get the binaries:
# - with cargo on the machine, it builds them (`cargo build --release --all-targets`);
# - with .gpu/ from scripts/gpu-pack.sh (a machine without Rust or network, as the `device`
#   tool lends), it unpacks the prebuilt binaries, installs the packed Vulkan loader if the
#   machine has none, and links the packing checkout's path to this one for the tests'
#   committed files. Device call: command "bash scripts/gpu-check.sh $OUT", carry [".gpu"],
#   timeout_s 590 (the step limits below add up to 520 s).
set -uo pipefail
out=${1:?usage: bash scripts/gpu-check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
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
# Each bench record against the H100 / H200 roofline (vendor figures) and the same-run WGSL
# copy; python3 only, and never a reason for the run to fail.
roofline() {
    if command -v python3 >/dev/null; then
        timeout 20 python3 scripts/roofline.py "$out/bench.json" >"$out/roofline.txt" 2>&1
        echo "roofline: exit $? (always 0 unless killed), $out/roofline.txt" | tee -a "$out/summary.txt"
        cat "$out/roofline.txt"
    else
        echo "roofline: skipped (no python3)" | tee -a "$out/summary.txt"
    fi
    return 0
}

if [ -f .gpu/bin.tar.xz ] && { [ -n "${GPU_CHECK_PACKED:-}" ] || ! command -v cargo >/dev/null; }; then
    echo "packed binaries of $(head -1 .gpu/COMMIT 2>/dev/null)" | tee -a "$out/summary.txt"
    rm -rf .gpu/bin && mkdir -p .gpu/bin
    tar -xJf .gpu/bin.tar.xz -C .gpu/bin 2>/dev/null ||
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            .gpu/bin.tar.xz .gpu/bin
    if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 '; then
        for f in .gpu/deb/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
        ldconfig 2>/dev/null
    fi
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -f $icd ] && ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
        export VK_DRIVER_FILES=$icd
    fi
    # The test binaries read committed files under the packing checkout's path.
    packed=$(cat .gpu/MANIFEST_DIR)
    if [ "$packed" != "$PWD" ] && [ ! -e "$packed" ]; then
        mkdir -p "$(dirname "$packed")" && ln -s "$PWD" "$packed"
    fi
    # Where the `check` tests look for the binary (CARGO_BIN_EXE at packing time).
    mkdir -p "$packed/target/release"
    cp .gpu/bin/llama-kernels "$packed/target/release/llama-kernels"
    lk=$packed/target/release/llama-kernels
    tests() { # every packed test binary, run from its package's root as cargo test does
        local rc=0 t dir
        for t in "$PWD"/.gpu/bin/tests/*; do
            echo "== $(basename "$t")"
            case $(basename "$t") in tools.*) dir=$packed/tools ;; *) dir=$packed ;; esac
            # The library's suite holds the examples' tests, which need cargo: skipped here.
            (cd "$dir" && "$t" --skip examples::) || rc=1
        done
        return $rc
    }
    echo "build: skipped (packed)" | tee -a "$out/summary.txt"
    step info 30 "$lk" info --json
    step selftest 60 "$lk" selftest --json
    step check 60 bash -c "$lk check cases/*.safetensors"
    step bench 150 "$lk" bench --quick --json "$out/bench.json"
    roofline
    export -f tests
    export packed
    step tests 220 bash -c tests
else
    step build 240 cargo build --release --all-targets
    step info 30 cargo run --release -- info --json
    step selftest 60 cargo run --release -- selftest --json
    step check 60 bash -c "cargo run --release -- check cases/*.safetensors"
    step bench 150 cargo run --release -- bench --quick --json "$out/bench.json"
    roofline
    step tests 240 cargo test --release
fi
echo "results in $out"

#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a lent GPU machine that has neither a Rust toolchain
# nor a network (the `device` tool's machines): the release `llama-kernels` binary and the
# release test binaries, stripped and xz-compressed (about 15 MiB), and the Vulkan loader's
# Debian package. Run it here, on x86-64 Linux with cargo and apt, from the commit to be checked;
# it writes the ignored folder .gpu/, which the device call carries:
#   bash scripts/gpu-pack.sh
#   device run: command "bash scripts/gpu-check.sh $OUT", carry [".gpu"], timeout_s 590
# The test binaries keep this checkout's path for their committed files (CARGO_MANIFEST_DIR);
# gpu-check.sh links that path to its own checkout. `tests/examples.rs` runs `cargo run` and the
# README's doctests need rustdoc, so neither is packed (the other 20 test binaries are).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
dir=.gpu
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
rm -rf "$dir"
mkdir -p "$dir/deb" "$stage/tests"

cargo build --release
strip -o "$stage/llama-kernels" "${CARGO_TARGET_DIR:-target}/release/llama-kernels"
# `cargo test --no-run` names each test executable: "Executable tests/NAME.rs (PATH)" or
# "Executable unittests src/lib.rs (PATH)".
cargo test --release --no-run 2>&1 |
    sed -n 's/^ *Executable \(.*\) (\(.*\))$/\1|\2/p' >"$stage/list"
while IFS='|' read -r src path; do
    case $src in
    tests/examples.rs) continue ;;
    tests/*.rs) name=$(basename "$src" .rs) ;;
    *src/lib.rs) name=lib ;;
    *) name=$(basename "${src#unittests }" .rs) ;;
    esac
    strip -o "$stage/tests/$name" "$path"
done <"$stage/list"
[ -s "$stage/tests/attention" ] || { echo "gpu-pack: no test binaries found" >&2; exit 1; }
tar -cJf "$dir/bin.tar.xz" -C "$stage" llama-kernels tests

# The Vulkan loader (the GPU machine's driver brings only its ICD).
(cd "$dir/deb" && apt-get download libvulkan1 2>/dev/null) || echo "gpu-pack: could not download libvulkan1; the GPU machine must have a Vulkan loader" >&2

pwd >"$dir/MANIFEST_DIR"
git rev-parse HEAD >"$dir/COMMIT" 2>/dev/null || true
git status --porcelain --untracked-files=no | grep -q . && echo "dirty" >>"$dir/COMMIT"
du -sh "$dir"
echo "packed $(ls "$stage/tests" | wc -l) test binaries for $(cat "$dir/COMMIT" | head -1) in $dir"

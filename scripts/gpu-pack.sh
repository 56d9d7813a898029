#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a lent GPU machine that has neither a Rust toolchain
# nor a network (the `device` tool's machines): the release `llama-kernels` binary and the
# release test binaries, stripped and xz-compressed (about 15 MiB), and the Vulkan loader's
# Debian package. Run it here, on x86-64 Linux with cargo, python3 and apt, from the commit to be
# checked; it writes the ignored folder .gpu/, which the device call carries:
#   bash scripts/gpu-pack.sh
#   device run: command "bash scripts/gpu-check.sh $OUT", carry [".gpu"], timeout_s 590
# The test binaries keep this checkout's path for their committed files (CARGO_MANIFEST_DIR);
# gpu-check.sh links that path to its own checkout. The examples tests run `cargo run` and the
# README's doctests need rustdoc: `tools/tests/examples.rs` and the doctests are not packed, and
# gpu-check.sh runs the library's suite (tests/suite.rs) without its `examples::` module. Every
# other test binary of both packages is packed; the tools crate's are named `tools.NAME` and run
# from tools/.
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
# Every test executable of both packages, from cargo's JSON messages ("PACKAGE_DIR|NAME|PATH";
# the text output names them relative to their package, so the two packages' `tests/examples.rs`
# and `src/lib.rs` would look alike). NAME: the test file's name, `lib` or `main` for unit tests;
# the tools crate's get a `tools.` prefix.
cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, os, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m.get("profile", {}).get("test"):
        continue
    t = m["target"]
    name = t["name"] if "test" in t["kind"] else os.path.splitext(os.path.basename(t["src_path"]))[0]
    print("|".join([os.path.dirname(m["manifest_path"]), name, m["executable"]]))
' >"$stage/list"
while IFS='|' read -r pkg name path; do
    [ "$name" = examples ] && continue
    [ "$pkg" = "$PWD" ] || name=$(basename "$pkg").$name
    strip -o "$stage/tests/$name" "$path"
done <"$stage/list"
[ -s "$stage/tests/suite" ] || { echo "gpu-pack: no test binaries found" >&2; exit 1; }
tar -cJf "$dir/bin.tar.xz" -C "$stage" llama-kernels tests

# The Vulkan loader (the GPU machine's driver brings only its ICD).
(cd "$dir/deb" && apt-get download libvulkan1 2>/dev/null) || echo "gpu-pack: could not download libvulkan1; the GPU machine must have a Vulkan loader" >&2

pwd >"$dir/MANIFEST_DIR"
git rev-parse HEAD >"$dir/COMMIT" 2>/dev/null || true
git status --porcelain --untracked-files=no | grep -q . && echo "dirty" >>"$dir/COMMIT"
du -sh "$dir"
echo "packed $(ls "$stage/tests" | wc -l) test binaries for $(cat "$dir/COMMIT" | head -1) in $dir"

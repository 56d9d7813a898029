#!/usr/bin/env bash
# Make sure the software devices the tests run on exist: Mesa's lavapipe for Vulkan
# (mesa-vulkan-drivers) and, for the GL pass of CI, llvmpipe through EGL (libegl1 is the
# dispatcher, libegl-mesa0 Mesa's EGL vendor, libgl1-mesa-dri the llvmpipe driver itself). On a
# machine with a real GPU they only add fallback devices. Idempotent: installs only what is
# missing, and nothing when all of it is there.
set -euo pipefail
have_lavapipe() {
    compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null || compgen -G "/etc/vulkan/icd.d/lvp_icd*.json" >/dev/null
}
have_package() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}
missing=()
have_lavapipe || missing+=(mesa-vulkan-drivers)
if command -v dpkg-query >/dev/null 2>&1; then
    for p in libegl1 libegl-mesa0 libgl1-mesa-dri; do
        have_package "$p" || missing+=("$p")
    done
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=; fi
        echo "setup: installing ${missing[*]} (Mesa's software Vulkan and GL devices)" >&2
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: no apt-get; install Mesa's Vulkan drivers (lavapipe) and EGL/llvmpipe, or a GPU driver, by hand" >&2
    fi
fi

# The Dawn check (scripts/dawn-check.sh): Node's `webgpu` package (dawn.node) exactly as
# scripts/dawn/package-lock.json pins it, and Mesa 25's lavapipe unpacked under .dawn/mesa
# (Dawn refuses Debian 12's Mesa 22.3 lavapipe: it lacks shaderUniform*ArrayDynamicIndexing).
# The system's Mesa stays for the Rust tests. Each step is skipped when its result is there.
root="$(cd "$(dirname "$0")/.." && pwd)"
if command -v npm >/dev/null 2>&1; then
    lock="$root/scripts/dawn/package-lock.json"
    stamp="$root/scripts/dawn/node_modules/.llama-kernels-lock"
    if ! cmp -s "$lock" "$stamp" 2>/dev/null; then
        echo "setup: installing the Dawn check's Node packages (npm ci)" >&2
        (cd "$root/scripts/dawn" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
        cp "$lock" "$stamp"
    fi
else
    echo "setup: no npm; the Dawn check needs Node 20+ and npm" >&2
fi
mesa="$root/.dawn/mesa"
# (Again when the checkout moved: the ICD file names the driver by absolute path.)
if ! grep -qs "\"$mesa/root/" "$mesa/lvp_icd.json" && command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
    echo "setup: unpacking Mesa 25 lavapipe from bookworm-backports into .dawn/mesa (for Dawn)" >&2
    tmp="$(mktemp -d)"
    chmod 755 "$tmp" # apt fetches as its sandbox user
    mkdir -p "$tmp/lists/partial" "$tmp/debs"
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$tmp/sources.list"
    apt_private=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o Dir::Etc::sourceparts=-
        -o "Dir::State::Lists=$tmp/lists" -o Debug::NoLocking=1)
    apt-get "${apt_private[@]}" update -qq
    # Mesa 25 needs libdrm 2.4.121 or newer, which bookworm has only in backports.
    (cd "$tmp/debs" && apt-get "${apt_private[@]}" download -qq \
        mesa-vulkan-drivers libdrm2 libdrm-amdgpu1 2>/dev/null)
    version="$(dpkg-deb -f "$tmp"/debs/mesa-vulkan-drivers_*.deb Version)"
    case "$version" in
        25.*) ;;
        *) echo "setup: bookworm-backports has mesa-vulkan-drivers $version, not 25.x" >&2; exit 1 ;;
    esac
    rm -rf "$mesa" && mkdir -p "$mesa/root"
    for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$mesa/root"; done
    lib="$mesa/root/usr/lib/x86_64-linux-gnu"
    printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s/libvulkan_lvp.so", "api_version": "1.4.305"}}\n' "$lib" >"$mesa/lvp_icd.json.tmp"
    echo "$version" >"$mesa/version"
    mv "$mesa/lvp_icd.json.tmp" "$mesa/lvp_icd.json"
    rm -rf "$tmp"
fi

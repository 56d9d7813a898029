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

#!/usr/bin/env bash
# Make sure a Vulkan device exists. Without Mesa's software Vulkan device (lavapipe) installed,
# install it (mesa-vulkan-drivers); on a machine with a real GPU it only adds a fallback device.
# Idempotent: does nothing when lavapipe is already there.
set -euo pipefail
have_lavapipe() {
    compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null || compgen -G "/etc/vulkan/icd.d/lvp_icd*.json" >/dev/null
}
if ! have_lavapipe; then
    if command -v apt-get >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=; fi
        echo "setup: installing mesa-vulkan-drivers (lavapipe, Mesa's software Vulkan device)" >&2
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers >/dev/null
    else
        echo "setup: no apt-get; install Mesa's Vulkan drivers (lavapipe) or a GPU driver by hand" >&2
    fi
fi

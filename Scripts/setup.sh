#!/usr/bin/env bash
# Installs the Debian packages the engine builds against, only those missing; safe to run again.
set -euo pipefail

packages=(pkg-config libopenblas-dev libopenmpi-dev openmpi-bin coinor-libcbc-dev protobuf-compiler curl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (install a Swift 6 toolchain first)" >&2; exit 1; }

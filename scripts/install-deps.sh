#!/usr/bin/env bash
# Installs the Debian 12 packages Cnerium needs to build and test. Idempotent: packages
# already present are left alone and apt is not touched at all when nothing is missing.
set -euo pipefail

PACKAGES=(
    build-essential cmake pkg-config
    libmicrohttpd-dev liblmdb-dev libcjson-dev liburing-dev libwebsockets-dev
    libcunit1-dev libssl-dev libcurl4-openssl-dev
    libpq-dev postgresql
    clang libclang-rt-14-dev
    python3 curl
    nodejs node-express
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Installs what is missing, then builds and runs every test twice: once with warnings as
# errors, once under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

jobs=$(nproc)
echo "== build (warnings as errors)"
scripts/build.sh build-test -DCNERIUM_WERROR=ON
echo "== build (ASan + UBSan)"
scripts/build.sh build-asan -DCNERIUM_WERROR=ON -DCNERIUM_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "== tests under ASan + UBSan"
(cd build-asan && ctest --output-on-failure -j"$jobs")
echo "== tests"
(cd build-test && ctest --output-on-failure -j"$jobs")

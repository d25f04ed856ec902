#!/usr/bin/env bash
# Installs what is missing, then builds and runs every test twice: once with warnings as
# errors, once under AddressSanitizer + UndefinedBehaviorSanitizer; the unit suites (the
# lock-free table, rings, committer and persister among them) also run under
# ThreadSanitizer. Last, every fuzz target (tests/fuzz) runs a bounded number of inputs
# from its seed corpus under ASan + UBSan (scripts/fuzz.sh for long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

jobs=$(nproc)
echo "== build (warnings as errors)"
scripts/build.sh build-test -DCNERIUM_WERROR=ON
echo "== build (ASan + UBSan)"
scripts/build.sh build-asan -DCNERIUM_WERROR=ON -DCNERIUM_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
    -DCNERIUM_INSTALL=OFF
echo "== build (ThreadSanitizer)"
scripts/build.sh build-tsan -DCNERIUM_WERROR=ON -DCNERIUM_TSAN=ON -DCMAKE_BUILD_TYPE=Debug \
    -DCNERIUM_BUILD_BENCH=OFF -DCNERIUM_BUILD_EXAMPLES=OFF -DCNERIUM_INSTALL=OFF

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "== tests under ASan + UBSan"
(cd build-asan && ctest --output-on-failure -j"$jobs")
echo "== unit tests under ThreadSanitizer"
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j"$jobs" -R '^unit_')
echo "== tests"
(cd build-test && ctest --output-on-failure -j"$jobs")
echo "== fuzz targets (20000 runs each)"
scripts/fuzz.sh build
(cd build-fuzz && ctest --output-on-failure -j"$jobs" -L fuzz)

#!/usr/bin/env bash
# Long fuzz runs. Builds the fuzz build (clang, libFuzzer, ASan + UBSan) in build-fuzz if
# needed, then fuzzes one target for SECONDS, or every target one after the other.
#   scripts/fuzz.sh TARGET SECONDS      e.g. scripts/fuzz.sh wal_recovery 600
#   scripts/fuzz.sh all SECONDS         each target for SECONDS
#   scripts/fuzz.sh list                the target names
#   scripts/fuzz.sh build               only (re)build build-fuzz
# Inputs that reach new coverage accumulate in build-fuzz/tests/fuzz/work/<target>/corpus
# (the checked-in seeds in tests/fuzz/corpus/<target>/ are only read); a crash leaves its
# input in .../work/<target>/artifacts/ and makes this script fail. FUZZ_JOBS=N runs N
# fuzzing processes in parallel on one target.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build-fuzz

build() {
    scripts/build.sh "$dir" -DCNERIUM_FUZZ=ON -DCMAKE_C_COMPILER=clang \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCNERIUM_BUILD_TESTS=OFF \
        -DCNERIUM_BUILD_EXAMPLES=OFF -DCNERIUM_BUILD_BENCH=OFF
}

targets() {
    sed -n '/^set(CNERIUM_FUZZ_TARGETS/,/^)/p' tests/fuzz/CMakeLists.txt | sed '1d;$d' |
        tr -d ' '
}

if [ "${1:-}" = list ]; then
    targets
    exit 0
fi
if [ "${1:-}" = build ]; then
    build
    exit 0
fi
if [ $# -ne 2 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 TARGET|all SECONDS   (targets: $(targets | tr '\n' ' '))" >&2
    exit 2
fi
build
if [ "$1" = all ]; then
    set -- "$(targets)" "$2"
fi
for t in $1; do
    bin=$dir/tests/fuzz/fuzz_$t
    if [ ! -x "$bin" ]; then
        echo "no fuzz target '$t' (targets: $(targets | tr '\n' ' '))" >&2
        exit 2
    fi
    echo "== fuzz $t for $2 s"
    jobs=()
    [ -n "${FUZZ_JOBS:-}" ] && jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
    tests/fuzz/run.sh "$bin" "$dir/tests/fuzz/work/$t" -max_total_time="$2" "${jobs[@]}"
done

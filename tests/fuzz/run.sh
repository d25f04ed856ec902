#!/usr/bin/env bash
# Runs one fuzz target over its checked-in seed corpus (corpus/<name>/), read only.
#   tests/fuzz/run.sh [--fresh] BINARY WORK_DIR [libFuzzer flags...]
# Inputs that reach new coverage go to WORK_DIR/corpus, a crashing input to
# WORK_DIR/artifacts/. --fresh empties WORK_DIR first (the bounded runs of the test
# command start from the seeds alone). Extra flags for a target: <name>.options.
# Exit status: 0, or non-zero after a line saying which target failed and where its
# input is.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fresh=0
if [ "${1:-}" = --fresh ]; then
    fresh=1
    shift
fi
if [ $# -lt 2 ]; then
    echo "usage: $0 [--fresh] BINARY WORK_DIR [libFuzzer flags...]" >&2
    exit 2
fi
bin=$1 work=$2
shift 2
name=$(basename "$bin")
name=${name#fuzz_}
seeds=$here/corpus/$name
if [ ! -d "$seeds" ]; then
    echo "FUZZ FAILURE: $name: no seed corpus at $seeds" >&2
    exit 1
fi
[ $fresh = 1 ] && rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
opts=()
[ -f "$here/$name.options" ] && read -r -a opts <"$here/$name.options"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
"$bin" -timeout=60 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "${opts[@]}" "$@" "$work/corpus" "$seeds"
rc=$?
if [ $rc -ne 0 ]; then
    echo "FUZZ FAILURE: $name (exit $rc). Input(s) saved in $work/artifacts/:" >&2
    ls -l "$work/artifacts/" >&2
    echo "Reproduce with: $bin $work/artifacts/<file>" >&2
fi
exit $rc

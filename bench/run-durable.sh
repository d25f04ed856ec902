#!/usr/bin/env bash
# Durable fresh-key POST against the same server's plain GET /health, at several
# connection counts, in --durability sync and async, with the persister's fdatasync
# count and records per batch for each run. wrk (Debian's) is the load generator and
# shares the machine's cores with the server. Starts the Release-built example on a
# loopback port with a temp data dir per mode and stops it at the end.
#
#   bench/run-durable.sh [seconds] [workers] [connections...]   (default 3, 2, 1 16 64 256)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
workers=${2:-2}
shift $(( $# > 2 ? 2 : $# ))
conns=("$@")
[ ${#conns[@]} -gt 0 ] || conns=(1 16 64 256)
dpkg -s wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
CMAKE_BUILD_TYPE=Release scripts/build.sh build-release -DCNERIUM_BUILD_TESTS=OFF >/dev/null

tmp=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }; rm -rf "$tmp"; }
trap cleanup EXIT

metric() { curl -s "$url/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
field() { sed -n "s/^ *$1 *//p" "$2" | awk '{print $1}'; }

echo "machine: $(nproc) cores, $(uname -r); server: $workers workers; wrk -t2 -d${secs}s on the same cores"
printf '%-6s %5s %11s %11s %6s %9s %9s %10s %8s\n' mode conns "plain r/s" "durable r/s" ratio \
    "p50" "p99" fdatasyncs "rec/sync"
for mode in sync async; do
    out="$tmp/stdout-$mode"
    build-release/examples/cnerium_durable_orders_realtime --port 0 --workers "$workers" \
        --durability "$mode" --data-dir "$tmp/data-$mode" --log-level warn \
        >"$out" 2>"$tmp/stderr" &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.1; done
    url=$(sed -n 's/^listening on //p' "$out")
    [ -n "$url" ] || { echo "server did not start"; cat "$tmp/stderr"; exit 1; }
    for c in "${conns[@]}"; do
        t=$(( c < 2 ? 1 : 2 ))
        plain=$(wrk -t$t -c"$c" -d"${secs}s" "$url/health" | sed -n 's/^Requests\/sec: *//p')
        b0=$(metric cnerium_persist_batches_total); r0=$(metric cnerium_persist_records_total)
        wrk -t$t -c"$c" -d"${secs}s" --latency -s bench/fresh_key.lua "$url/orders" -- \
            "d$$-$mode-$c" >"$tmp/fresh"
        b1=$(metric cnerium_persist_batches_total); r1=$(metric cnerium_persist_records_total)
        fresh=$(sed -n 's/^Requests\/sec: *//p' "$tmp/fresh")
        printf '%-6s %5s %11.0f %11.0f %5.0f%% %9s %9s %10s %8.1f\n' "$mode" "$c" "$plain" \
            "$fresh" "$(awk "BEGIN {print 100*$fresh/$plain}")" "$(field 50% "$tmp/fresh")" \
            "$(field 99% "$tmp/fresh")" "$((b1 - b0))" \
            "$(awk "BEGIN {d=$b1-$b0; print d ? ($r1-$r0)/d : 0}")"
        grep -h -E "Non-2xx|Socket errors" "$tmp/fresh" || true
    done
    kill "$pid"; wait "$pid" || true; pid=
done

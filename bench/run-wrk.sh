#!/usr/bin/env bash
# Durable-path figures measured with wrk (Debian's package) until the project's own load
# generator exists: GET /health (plain), POST /orders replaying one stored key, and POST
# /orders with a fresh key per request (handler + synced commit). For each worker count
# given, starts the Release-built example on a free loopback port with a temp data dir,
# measures, and stops it. The load generator shares the machine's cores with the server.
#
#   bench/run-wrk.sh [seconds] [connections] [workers...]     (default workers: 1 and nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conns=${2:-64}
shift $(( $# > 2 ? 2 : $# ))
worker_counts=("$@")
[ ${#worker_counts[@]} -gt 0 ] || worker_counts=(1 "$(nproc)")
threads=${CNERIUM_BENCH_THREADS:-1}
dpkg -s wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
CMAKE_BUILD_TYPE=Release scripts/build.sh build-release -DCNERIUM_BUILD_TESTS=OFF >/dev/null

tmp=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }; rm -rf "$tmp"; }
trap cleanup EXIT

rps() { sed -n 's/^Requests\/sec: *//p'; }
p99() { awk '/^ +99%/ {print $2}' "$1"; }
run() { wrk -t2 -c"$conns" -d"${secs}s" --latency "$@"; }

echo "machine: $(nproc) cores, $(uname -r); wrk -t2 -c$conns -d${secs}s on the same cores"
for workers in "${worker_counts[@]}"; do
    out="$tmp/stdout-$workers"
    build-release/examples/cnerium_durable_orders_realtime --port 0 --workers "$workers" \
        --threads "$threads" --data-dir "$tmp/data-$workers" --log-level warn \
        >"$out" 2>"$tmp/stderr" &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.1; done
    url=$(sed -n 's/^listening on //p' "$out")
    [ -n "$url" ] || { echo "server did not start"; cat "$tmp/stderr"; exit 1; }

    plain=$(run "$url/health" | tee "$tmp/plain" | rps)
    curl -s -o /dev/null -X POST "$url/orders" -H 'Idempotency-Key: bench-replay' \
        -H 'Content-Type: application/json' -d '{"product_id":"p1","quantity":2}'
    replay=$(run -s bench/replay_key.lua "$url/orders" | tee "$tmp/replay" | rps)
    fresh=$(run -s bench/fresh_key.lua "$url/orders" -- "r$$-$workers" | tee "$tmp/fresh" | rps)
    echo "-- $workers worker process(es) x $threads threads"
    printf '%-28s %10s req/s  p99 %s\n' "GET /health (plain)" "$plain" "$(p99 "$tmp/plain")"
    printf '%-28s %10s req/s  p99 %s  (%.0f%% of plain)\n' "POST /orders replay" "$replay" \
        "$(p99 "$tmp/replay")" "$(awk "BEGIN {print 100*$replay/$plain}")"
    printf '%-28s %10s req/s  p99 %s  (%.0f%% of plain)\n' "POST /orders fresh key" "$fresh" \
        "$(p99 "$tmp/fresh")" "$(awk "BEGIN {print 100*$fresh/$plain}")"
    grep -h -E "Non-2xx|Socket errors" "$tmp/plain" "$tmp/replay" "$tmp/fresh" || true
    curl -s "$url/metrics" | grep -E '^cnerium_(durable|inflight_waits)' | grep -v " 0$" || true
    kill "$pid"; wait "$pid" || true; pid=
done

#!/usr/bin/env bash
# Realtime fan-out figures: for 10, 100 and 1000 connected WebSocket clients, the time
# from a durable POST's response to its event's arrival at every client (p50/p99) and
# events delivered per second, while 16 connections post fresh-key orders. Starts the
# Release-built example with realtime on loopback and a temp data dir; bench/ws_fanout
# (C, epoll) is the client side and shares the machine's cores with the server.
#
#   bench/run-realtime.sh [seconds] [workers] [clients...]   (default 3, 2, 10 100 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
workers=${2:-2}
shift $(( $# > 2 ? 2 : $# ))
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(10 100 1000)
CMAKE_BUILD_TYPE=Release scripts/build.sh build-release -DCNERIUM_BUILD_TESTS=OFF >/dev/null

tmp=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }; rm -rf "$tmp"; }
trap cleanup EXIT

echo "machine: $(nproc) cores, $(uname -r); server: $workers workers; client tool on the same cores"
for n in "${clients[@]}"; do
    build-release/examples/cnerium_durable_orders_realtime --port 0 --workers "$workers" \
        --realtime-port 0 --data-dir "$tmp/data-$n" --log-level warn \
        >"$tmp/out" 2>"$tmp/err" &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$tmp/out" && break; sleep 0.1; done
    http=$(sed -n 's/^listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$tmp/out")
    ws=$(sed -n 's/^realtime on ws:\/\/[^:]*:\([0-9]*\).*/\1/p' "$tmp/out")
    [ -n "$http" ] && [ -n "$ws" ] || { echo "server did not start"; cat "$tmp/err"; exit 1; }
    build-release/bench/ws_fanout "$http" "$ws" "$n" "$secs" 16
    kill "$pid"; wait "$pid" || true; pid=
done

#!/usr/bin/env bash
# Installs what is missing, builds, and starts an example service:
#   scripts/run-example.sh [flags]          seed 000 (durable POST /orders, GET /health, realtime),
#                                           data under ./data
#   scripts/run-example.sh orders [flags]   seed 004, the event-sourced order service,
#                                           data under ./data/orders
# Extra arguments go to the server, e.g. --port 8081 --workers 4.
set -euo pipefail
cd "$(dirname "$0")/.."
example=cnerium_durable_orders_realtime
data=./data
if [ "${1:-}" = orders ]; then
    example=cnerium_orders
    data=./data/orders
    shift
fi
scripts/install-deps.sh
scripts/build.sh build -DCNERIUM_BUILD_TESTS=OFF
exec "build/examples/$example" --data-dir "$data" "$@"

#!/usr/bin/env bash
# Installs what is missing, builds, and starts the seed-000 example service
# (durable POST /orders, GET /health) with its data under ./data.
# Extra arguments go to the server, e.g. --port 8081 --workers 4.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build -DCNERIUM_BUILD_TESTS=OFF
exec build/examples/cnerium_durable_orders_realtime --data-dir ./data "$@"

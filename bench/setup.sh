#!/usr/bin/env bash
# Installs what the benchmarks need beyond scripts/setup.sh (which installs what
# the demo and the tests need): pgbouncer, the reference bench/gateway_throughput.py
# measures the gateway against. Debian/Ubuntu; idempotent: a second run only checks.
# bench/gateway_throughput.py runs this itself when a pgbouncer route is asked for.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; then
  exit 0
fi
echo "bench/setup.sh: installing pgbouncer" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends pgbouncer
# The package starts a pgbouncer of its own on 6432; the benchmark starts its own.
$SUDO systemctl disable --now pgbouncer >/dev/null 2>&1 || true

#!/usr/bin/env bash
# Sets up, starts the dev broker (SQLite store, a throwaway PostgreSQL cluster
# with demo data), runs a short `dbaccess exec demo` through it, and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data_dir="${DBACCESS_DEMO_DIR:-.dbaccess-dev}"
mkdir -p "$data_dir"
export DBACCESS_CONFIG_DIR="$PWD/$data_dir/cli"
export PYTHON_KEYRING_BACKEND="${PYTHON_KEYRING_BACKEND:-keyring.backends.fail.Keyring}"
log="$data_dir/server.log"
.venv/bin/dbaccess-server dev --data-dir "$data_dir" >"$log" 2>&1 &
server_pid=$!
stop() { kill -INT "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 1 120); do
  grep -q "dev broker is running" "$log" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
grep -q "dev broker is running" "$log" || { echo "the dev broker did not start:" >&2; cat "$log" >&2; exit 1; }
cat "$log" >&2
set -x
.venv/bin/dbaccess targets
.venv/bin/dbaccess exec demo -c "select id, full_name, email, city from customers order by id limit 5"
.venv/bin/dbaccess exec demo --scope read -c "select count(*) as customers from customers" --output json
.venv/bin/dbaccess sessions --limit 3

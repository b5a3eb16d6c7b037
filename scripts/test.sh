#!/usr/bin/env bash
# Sets up (see setup.sh) and runs every check CI runs: lint, types, fresh
# generated docs, the demo (scripts/demo.sh, in a directory of its own), and
# the whole test suite against real PostgreSQL clusters that the tests start
# themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHON_KEYRING_BACKEND=keyring.backends.fail.Keyring
echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy
echo "== import rules" >&2
.venv/bin/lint-imports --no-cache
echo "== generated docs" >&2
.venv/bin/python scripts/gen_docs.py --check
# The masking core is optional for an install, not for the checks: without it
# its tests would skip and the Python path alone would be tested.
echo "== native masking core" >&2
.venv/bin/python -c "from server.gateway import masking; assert masking.NATIVE, 'server.gateway._rowmask was not built'"
# The demo before the suite: it takes well under a minute against the suite's
# minutes, and a demo that breaks means the first ten minutes of a newcomer break.
# It asserts each step itself; the lines below are what each step must show.
echo "== demo" >&2
demo_dir="$(mktemp -d "${TMPDIR:-/tmp}/dbaccess-demo-XXXXXX")"
trap 'rm -rf "$demo_dir"' EXIT
chmod 711 "$demo_dir" # the throwaway cluster runs as postgres when this runs as root
demo_out="$demo_dir/demo.out"
if ! DBACCESS_DEMO_DIR="$demo_dir/data" bash scripts/demo.sh >"$demo_out" 2>&1; then
  cat "$demo_out" >&2
  echo "demo: failed (output above)" >&2
  exit 1
fi
missing=0
while IFS= read -r line; do
  grep -qF -- "$line" "$demo_out" || { echo "demo: no line with: $line" >&2; missing=1; }
done <<'EXPECTED'
  VALID UNTIL 20
(none)
dbaccess: masked in this session:
***@example.com
(masking.inference)
(guardrails.no_drop)
you cannot approve your own request
approved r-
CREATE TABLE
held for review
matches the audit log
hash chain verified
demo: all 13 steps showed what they should; everything stopped
EXPECTED
if [ "$missing" = 1 ]; then
  cat "$demo_out" >&2
  exit 1
fi
if pgrep -f "$demo_dir" >/dev/null; then
  echo "demo: processes of the demo are still running:" >&2
  pgrep -af "$demo_dir" >&2
  exit 1
fi
tail -n 1 "$demo_out" >&2
rm -rf "$demo_dir"

echo "== pytest" >&2
# Four workers on two cores: each worker starts its own clusters and servers
# (free ports, its own temporary directory), and most of a test's time is
# spent waiting on them. Arguments come last, so `-n 0` runs in one process.
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${DBACCESS_TEST_WORKERS:-4}" "$@"

#!/usr/bin/env bash
# Sets up (see setup.sh) and runs every check CI runs: lint, types, fresh
# generated docs, and the whole test suite against real PostgreSQL clusters
# that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHON_KEYRING_BACKEND=keyring.backends.fail.Keyring
echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy
echo "== generated docs" >&2
.venv/bin/python scripts/gen_docs.py --check
# The masking core is optional for an install, not for the checks: without it
# its tests would skip and the Python path alone would be tested.
echo "== native masking core" >&2
.venv/bin/python -c "from server.gateway import masking; assert masking.NATIVE, 'server.gateway._rowmask was not built'"
echo "== pytest" >&2
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

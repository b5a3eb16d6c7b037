"""``dbaccess-server store keygen|rekey`` and ``run`` without a store key, as an
operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from server.store.db import Store, StoreLeaseBook
from server.store.sealing import StoreKeys
from tests.fix_store import found_in_clear
from tests.server.store.test_sealing import LEASE_ID, a_lease

BIN = Path(sys.executable).parent / "dbaccess-server"

VAULT_POLICY = """\
version: 1
targets:
  demo:
    database: app
    issuer: vault
    host: 127.0.0.1
    port: 5432
    vault:
      address: http://127.0.0.1:9
      role: read
      auth:
        method: token
        token_env: NO_SUCH_TOKEN
    scopes:
      read:
        max_ttl: 1h
        allow:
          groups: [dev]
"""


def server(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def test_run_without_a_store_key_refuses_a_vault_target(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(VAULT_POLICY)
    (tmp_path / "server.yaml").write_text("api_listen: 127.0.0.1:0\ngateway_listen: 127.0.0.1:0\n")
    res = server("run", "--config", str(tmp_path / "server.yaml"), cwd=tmp_path)
    assert res.returncode != 0
    assert "targets demo use Vault leases" in res.stderr
    assert "store_key_file" in res.stderr


def test_keygen_then_rotation_then_rekey(tmp_path: Path) -> None:
    key_file, url = tmp_path / "store.key", f"sqlite:///{tmp_path / 'store.db'}"
    res = server("store", "keygen", "--key-file", str(key_file), "--id", "one", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    store = Store.open(url, StoreKeys.load(key_file))
    try:
        store.check_keys()
        StoreLeaseBook(store, "demo").remember(a_lease())
    finally:
        store.close()
    # A second key is added as a standby; the operator then moves it to the top.
    res = server("store", "keygen", "--key-file", str(key_file), "--id", "two", cwd=tmp_path)
    assert res.returncode == 0 and "added key 'two' at the end" in res.stderr
    assert StoreKeys.load(key_file).ids == ("one", "two")
    lines = key_file.read_text().splitlines()
    key_file.write_text("\n".join([lines[-1], *lines[:-1]]) + "\n")
    res = server("store", "rekey", "--key-file", str(key_file), "--store-url", url, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "re-sealed 1 secrets with key 'two'" in res.stderr
    assert "keys 'one' seal nothing now" in res.stderr
    store = Store.open(url, StoreKeys([StoreKeys.load(key_file).newest], "two only"))
    try:
        assert [lease.lease_id for lease in StoreLeaseBook(store, "demo").outstanding()] == [
            LEASE_ID
        ]
        assert found_in_clear(store, LEASE_ID) == []
    finally:
        store.close()

"""The person never sees the database password (security property 1).

The session role's SCRAM verifier is read from pg_authid while the session
runs; then every word the user could have seen — the child's whole
environment, everything the CLI printed, every file in the CLI's config
directory — is tried as the password against that verifier.  None may match.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.fix_broker import BIN, Broker

pytestmark = pytest.mark.slow


def matches_verifier(candidate: str, verifier: str) -> bool:
    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier)
    assert m, verifier
    iterations, salt, stored_key = int(m[1]), base64.b64decode(m[2]), base64.b64decode(m[3])
    salted = hashlib.pbkdf2_hmac("sha256", candidate.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hashlib.sha256(client_key).digest() == stored_key


def test_no_output_env_or_file_holds_the_database_password(
    broker: Broker, admin_conn: psycopg.Connection[tuple[object, ...]], tmp_path: Path
) -> None:
    env_file, user_file = tmp_path / "env.txt", tmp_path / "user.txt"
    script = (
        f"env > {env_file}; "
        f'psql -XAtc "select current_user" > {user_file}.tmp && mv {user_file}.tmp {user_file}; '
        "sleep 3"
    )
    proc = subprocess.Popen(
        [str(BIN / "dbaccess"), "run", "demo", "--", "sh", "-c", script],
        env=broker.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not user_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    role = user_file.read_text().strip()
    row = admin_conn.execute(
        "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
    ).fetchone()
    assert row is not None and str(row[0]).startswith("SCRAM-SHA-256$")
    verifier = str(row[0])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err

    seen = [env_file.read_text(), out, err]
    seen += [p.read_text(errors="replace") for p in broker.config_dir.rglob("*") if p.is_file()]
    words = {w for text in seen for w in re.split(r"[\s=\"':,{}]+", text) if len(w) >= 8}
    assert any(w.startswith("dbt_") for w in words), "the ticket itself is expected in PGPASSWORD"
    leaked = [w for w in words if matches_verifier(w, verifier)]
    assert leaked == []
    # And the ticket is not a database password: logging in directly with it fails.
    env_text = env_file.read_text()
    ticket = re.search(r"PGPASSWORD=(\S+)", env_text).group(1)  # type: ignore[union-attr]
    assert not matches_verifier(ticket, verifier)

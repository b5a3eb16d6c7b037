"""CI's statement review: `dbaccess exec -f migration.sql --request-review`
asks for approval of exactly that script, waits, and runs it once."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fix_broker import Broker

pytestmark = pytest.mark.slow

TABLE = "review_scratch"
REQ = re.compile(r"\b(r-[0-9a-f]+)\b")


@pytest.fixture
def scratch(admin_conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[None]:
    admin_conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    admin_conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY)")
    admin_conn.execute(f"ALTER TABLE {TABLE} OWNER TO demo_write")
    yield
    admin_conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def request_review(broker: Broker, script: Path, token: str) -> subprocess.CompletedProcess[str]:
    """``dbaccess exec -f SCRIPT --request-review --no-wait`` in the write scope, as ``token``."""
    return broker.cli(
        "exec", "demo", "--scope", "write", "-f", str(script), "--request-review", "--no-wait",
        token=token,
    )  # fmt: skip


def columns(admin: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    return [
        str(r[0])
        for r in admin.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
            (TABLE,),
        )
    ]


def test_script_review_then_exactly_that_script_runs_once(
    broker: Broker,
    scratch: None,
    admin_conn: psycopg.Connection[tuple[object, ...]],
    tmp_path: Path,
) -> None:
    ci = broker.token("ci-migrations", "dev")
    bob = broker.token("bob", "dev")
    script = tmp_path / "migration.sql"
    script.write_text(f"ALTER TABLE {TABLE} ADD COLUMN note text;\n")

    # Without waiting: the review id and the pending exit code.
    pending = request_review(broker, script, ci)
    assert pending.returncode == 9, pending.stderr
    request_id = pending.stdout.strip()
    assert REQ.fullmatch(request_id)

    waiting = broker.spawn(
        "exec", "demo", "--scope", "write", "-f", str(script), "--request-review",
        "--reason", "release 42", "-o", "json", token=ci,
    )  # fmt: skip
    time.sleep(2)
    assert waiting.poll() is None, "it waits for the decision"
    shown = broker.cli("requests", "--to-review", "-o", "json", token=bob)
    assert request_id in shown.stdout and "ADD COLUMN note" in shown.stdout
    assert broker.cli("approve", request_id, "--yes", token=ci).returncode != 0  # not oneself
    approved = broker.cli("approve", request_id, "--yes", token=bob)
    assert approved.returncode == 0, approved.stderr
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert json.loads(out)[0]["status"] == "ALTER TABLE"
    assert "note" in columns(admin_conn)

    # Single use: the same script again needs a new review.
    again = request_review(broker, script, ci)
    assert again.returncode == 9
    assert again.stdout.strip() != request_id


def test_a_byte_changed_after_approval_is_not_approved(
    broker: Broker,
    scratch: None,
    admin_conn: psycopg.Connection[tuple[object, ...]],
    tmp_path: Path,
) -> None:
    ci = broker.token("ci-migrations", "dev")
    bob = broker.token("bob", "dev")
    script = tmp_path / "migration.sql"
    script.write_text(f"ALTER TABLE {TABLE} ADD COLUMN a int;\n")
    pending = request_review(broker, script, ci)
    request_id = pending.stdout.strip()
    assert broker.cli("approve", request_id, "--yes", token=bob).returncode == 0
    script.write_text(f"ALTER TABLE {TABLE} ADD COLUMN b int;\n")  # changed after approval
    ran = broker.cli("exec", "demo", "--scope", "write", "-f", str(script), token=ci)
    assert ran.returncode == 3
    assert "held for review" in ran.stderr
    assert columns(admin_conn) == ["id"]


@pytest.fixture
def created_table(admin_conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    name = "review_created"
    admin_conn.execute(f"DROP TABLE IF EXISTS {name}")
    yield name
    admin_conn.execute(f"DROP TABLE IF EXISTS {name}")


def test_an_approved_create_table_runs_in_the_write_scope(
    broker: Broker,
    created_table: str,
    admin_conn: psycopg.Connection[tuple[object, ...]],
    tmp_path: Path,
) -> None:
    # The write scope's role may create in public: approving DDL that then fails
    # with "permission denied for schema public" would make the review pointless.
    ci = broker.token("ci-migrations", "dev")
    bob = broker.token("bob", "dev")
    script = tmp_path / "create.sql"
    script.write_text(f"CREATE TABLE {created_table} (id int PRIMARY KEY, note text);\n")
    pending = request_review(broker, script, ci)
    assert pending.returncode == 9, pending.stderr
    assert broker.cli("approve", pending.stdout.strip(), "--yes", token=bob).returncode == 0
    ran = broker.cli("exec", "demo", "--scope", "write", "-f", str(script), token=ci)
    assert ran.returncode == 0, ran.stderr
    # Kept after the session (handed to the admin role), not dropped with the session role.
    owner = admin_conn.execute(
        "SELECT tableowner FROM pg_tables WHERE tablename = %s", (created_table,)
    ).fetchone()
    assert owner == ("dbaccess_admin",)

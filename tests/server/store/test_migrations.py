"""Migrating the store: to head on open, and without Alembic when already there."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config

from server.store.db import Store, schema_head


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("server.store") / "migrations"))
    return cfg


def test_schema_head_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    assert schema_head() == head


def test_open_migrates_to_head_and_again_after_a_downgrade(any_store: Store) -> None:
    from alembic import command

    assert any_store.at_head()
    head = schema_head()
    assert head is not None
    with any_store.engine.begin() as conn:
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "-1")
    assert not any_store.at_head()
    any_store.migrate()
    assert any_store.at_head()
    with any_store.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    assert [v[0] for v in versions] == [head]


@pytest.mark.parametrize("fresh", [True, False])
def test_the_broker_process_never_imports_alembic(tmp_path: Path, fresh: bool) -> None:
    """A store at head opens without Alembic; a new one is migrated in a child process."""
    url = f"sqlite:///{tmp_path}/store.db"
    if not fresh:
        Store.migrate_url(url)
    code = (
        "import sys\n"
        "from server.isolated import run_isolated\n"
        "from server.store.db import Store\n"
        f"run_isolated(Store.migrate_url, {url!r})\n"
        "assert 'alembic' not in sys.modules, 'alembic in the parent'\n"
        f"store = Store.open({url!r})\n"
        "assert store.at_head()\n"
        "assert 'alembic' not in sys.modules, 'alembic imported at head'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr

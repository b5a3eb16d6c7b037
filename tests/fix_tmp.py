"""Nothing a test run makes in the temporary directory outlives the run.

The run gets a temporary directory of its own, and ``tempfile`` (in this process)
and ``TMPDIR`` (for the brokers, CLIs and servers the tests start) point there
for the whole run.  Fixtures still remove what they make — broker folders hold
private keys, tokens and the target's admin DSN — and at the end of the run
``_temp_dir_left_clean`` fails the run, naming each entry a test or fixture left
behind, then removes the directory anyway so a failing run leaves nothing either.

pytest's own ``tmp_path`` directories stay where pytest puts them; they are kept
only for failed tests (``tmp_path_retention_policy`` in pyproject.toml).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

RUN_PREFIX = "dbaccess-tests-"


def leftovers(root: Path) -> list[str]:
    """What is left in ``root``, one line per entry (directories with their contents' count)."""
    found = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            found.append(f"{entry.name}/ ({sum(1 for _ in entry.rglob('*'))} entries)")
        else:
            found.append(entry.name)
    return found


@pytest.fixture(scope="session", autouse=True)
def _temp_dir_left_clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # pytest's base directory is fixed before the run's own temp root takes over.
    tmp_path_factory.getbasetemp()
    root = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
    # The test clusters run as the postgres user when the tests run as root.
    root.chmod(0o711)
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(root)
    os.environ["TMPDIR"] = str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        left = leftovers(root)
        shutil.rmtree(root, ignore_errors=True)
    if left:
        pytest.fail(
            "the tests left these in the temporary directory (a fixture must remove what "
            "it makes): " + ", ".join(left),
            pytrace=False,
        )

"""What the running broker imports: heavy optional dependencies only where used.

Each of these stays resident once imported (bench/broker_memory.py measures the
broker's memory): Alembic with Mako and Pygments only to migrate the store (in a
child process), PyJWT with ``cryptography`` only where tokens are checked, boto3
only for rds-iam targets or audit archival, hvac only for vault targets.
"""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("alembic", "mako", "pygments", "jwt", "cryptography", "boto3", "botocore", "hvac")


def test_the_broker_modules_import_no_optional_dependency() -> None:
    code = (
        "import sys\n"
        "import server.cli, server.runtime\n"
        f"print(' '.join(sorted(m for m in {OPTIONAL!r} if m in sys.modules)))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []

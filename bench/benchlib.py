"""What the benchmarks share: a dev broker process on a given target."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


@contextmanager
def dev_broker(
    base: Path, admin_dsn: str, *extra_args: str
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """A `dbaccess-server dev` on ``admin_dsn``, with a CLI environment logged in to it."""
    env = dict(os.environ)
    env.pop("DBACCESS_TOKEN", None)
    env.pop("DBACCESS_SERVER", None)
    env.update(
        DBACCESS_CONFIG_DIR=str(base / "cli"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    log_path = base / "server.log"
    proc = subprocess.Popen(
        [
            str(BIN / "dbaccess-server"),
            "dev",
            "--data-dir",
            str(base / "data"),
            "--target-dsn",
            admin_dsn,
            *extra_args,
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while "dev broker is running" not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(log_path.read_text(errors="replace"))
            time.sleep(0.1)
        yield proc, env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

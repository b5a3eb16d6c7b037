"""A real dev broker process for end-to-end tests.

``start_broker`` launches ``dbaccess-server dev`` as a subprocess against the
test cluster's demo database (``--target-dsn``), with its own data directory and
CLI config directory, and waits until it prints that it is running.  The
``broker`` fixture is one such process shared by a test module; tests that kill
or restart the broker start their own.  ``Broker.cli`` runs the real
``dbaccess`` console script with the broker's environment.

Without a policy of its own a broker runs the demo policy without its masking
rules (``demo_policy()``): tests state the masking they test.
For tests with several people: ``start(policy=TEXT)`` runs the broker with a
policy of the test's own (``admin_dsn_file: admin.dsn`` names the target, as in
the demo policy), ``token(identity, *groups)`` mints an API token for another
identity, and ``cli(..., token=T)`` / ``spawn(..., token=T)`` act as that identity.
``reload()`` sends SIGHUP so the broker re-reads its policy file.
``Waiting(b.spawn(...))`` reads a background CLI's stderr as it comes
(``expect`` a line, ``finish`` for its exit status and output).
``client(token)`` is the CLI's API client (``brokercli.client.BrokerClient``) for
the broker, as its login profile describes it, acting with ``token``.

A broker's folder holds its TLS keys, tokens and the target's admin DSN: every
broker ``new_broker`` makes is stopped and its folder removed when the test
module that made it ends (``_brokers_removed``), however the module's own
fixtures ended.
``new_broker(demo_target, store_url=URL)`` makes brokers that share one store
(PostgreSQL): replicas of one deployment.
``server_env`` holds extra environment variables for the broker process only
(not for the CLI), e.g. where a credential issuer finds its secrets.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from brokercli.client import BrokerClient
from brokercli.config import Settings
from server.demo.provision import DemoTarget
from tests.fix_pg import make_tmp_dir

BIN = Path(sys.executable).parent


@dataclass
class Broker:
    data_dir: Path
    config_dir: Path
    target_dsn: str
    proc: subprocess.Popen[bytes] | None = None
    api_url: str = ""
    gateway: tuple[str, int] = ("", 0)
    server_env: dict[str, str] = field(default_factory=dict)
    # A store shared with other brokers (replicas) instead of DATA_DIR/store.db.
    store_url: str | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "server.log"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("DBACCESS_TOKEN", "DBACCESS_SERVER", "DBACCESS_PROFILE"):
            env.pop(name, None)
        env.update(
            DBACCESS_CONFIG_DIR=str(self.config_dir),
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        )
        env.update(extra)
        return env

    @property
    def policy_path(self) -> Path:
        return self.data_dir / "policy.yaml"

    def write_policy(self, text: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.policy_path.write_text(text)

    def reload(self) -> None:
        """SIGHUP: the broker re-reads its policy file (and keeps the old one if it is invalid)."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGHUP)

    def token(self, identity: str, *groups: str, owner: str | None = None) -> str:
        """A broker API token for ``identity`` in ``groups`` (from the broker's own store);
        with ``owner``, an ``agent`` token of an agent acting for ``owner``."""
        agent = ["--kind", "agent", "--owner", owner] if owner else []
        res = subprocess.run(
            [
                str(BIN / "dbaccess-server"),
                "token",
                "create",
                *(
                    ("--store-url", self.store_url)
                    if self.store_url
                    else ("--data-dir", str(self.data_dir))
                ),
                "--identity",
                identity,
                "--groups",
                ",".join(groups),
                "--ttl",
                "1d",
                *agent,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
            check=True,
        )
        return res.stdout.strip()

    def client(self, token: str) -> BrokerClient:
        """The CLI's API client for this broker (its profile's URL and CA), as ``token``."""
        profile = json.loads((self.config_dir / "profile.json").read_text())
        cfg = Settings(
            server=profile["server"],
            ca_file=profile["ca_file"],
            ca_fingerprint=profile.get("ca_fingerprint"),
            source="test",
        )
        return BrokerClient(cfg, token)

    @property
    def store_key(self) -> Path:
        """The key file the broker seals its store's secrets with: the one replicas
        of a shared store share, else the dev mode's own in its data dir."""
        shared = self.server_env.get("DBACCESS_SERVER_STORE_KEY_FILE")
        return Path(shared) if shared else self.data_dir / "store.key"

    def start(
        self,
        *extra_args: str,
        timeout: float = 60,
        policy: str | None = None,
        shipped_policy: bool = False,
    ) -> None:
        """Start the broker; ``shipped_policy`` leaves the policy file to the dev mode."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if policy is not None:
            self.write_policy(policy)
        elif not shipped_policy and not self.policy_path.exists():
            self.write_policy(demo_policy())
        # Only what this start writes counts: after a SIGKILL the log holds the
        # previous run's "running" line and no "stopped" line after it.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(BIN / "dbaccess-server"),
                "dev",
                "--data-dir",
                str(self.data_dir),
                "--target-dsn",
                self.target_dsn,
                "--reaper-interval",
                "1",
                *(("--store-url", self.store_url) if self.store_url else ()),
                *extra_args,
            ],
            stdout=log,
            stderr=log,
            env=self.env(**self.server_env),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            if "dev broker is running" in text:
                tail = text.rsplit("dev broker is running", 1)[1]
                self.api_url = re.search(r"API:\s+(\S+)", tail).group(1)  # type: ignore[union-attr]
                host, port = re.search(r"gateway:\s+(\S+):(\d+)", tail).groups()  # type: ignore[union-attr]
                self.gateway = (host, int(port))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"broker did not start in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 30) -> int | None:
        """Ctrl-C, as a user would; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cli(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        token: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        extra = {**(env or {}), **({"DBACCESS_TOKEN": token} if token else {})}
        return subprocess.run(
            [str(BIN / "dbaccess"), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**extra),
            check=False,
        )

    def spawn(self, *args: str, token: str | None = None) -> subprocess.Popen[str]:
        """Start ``dbaccess ARGS`` in the background (e.g. one that waits for an approval)."""
        return subprocess.Popen(
            [str(BIN / "dbaccess"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(**({"DBACCESS_TOKEN": token} if token else {})),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Waiting:
    """A CLI command running in the background; its stderr is read as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stderr is not None
        stderr = proc.stderr
        self.reader = threading.Thread(
            target=lambda: [self.lines.put(line) for line in iter(stderr.readline, "")],
            daemon=True,
        )
        self.reader.start()

    def expect(self, pattern: re.Pattern[str] | str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                found = re.search(pattern, line)
                if found:
                    return found
            try:
                self.seen.append(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"no {pattern!r} in: {''.join(self.seen)}") from None

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        # Outputs are small, so waiting before reading stdout cannot block on a full pipe;
        # stderr belongs to the reader thread.
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.reader.join(10)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.proc.returncode, out, "".join(self.seen)


_MADE: list[tuple[Broker, Path]] = []


# The store key file of each shared store: replicas of one store seal with one key.
_STORE_KEYS: dict[str, Path] = {}


def new_broker(demo_target: DemoTarget, *, store_url: str | None = None) -> Broker:
    base = make_tmp_dir("dbaccess-broker-")
    b = Broker(
        data_dir=base / "data",
        config_dir=base / "cli",
        target_dsn=demo_target.admin_dsn,
        store_url=store_url,
    )
    if store_url is not None:
        key = _STORE_KEYS.get(store_url)
        if key is None or not key.exists():
            from server.store.sealing import create_key_file

            key = _STORE_KEYS[store_url] = base / "store.key"
            create_key_file(key, "dev1")
        b.server_env["DBACCESS_SERVER_STORE_KEY_FILE"] = str(key)
    _MADE.append((b, base))
    return b


@pytest.fixture(scope="module", autouse=True)
def _brokers_removed() -> Iterator[None]:
    """Stop each broker the module made and remove its folder, after the module's fixtures."""
    first = len(_MADE)
    yield
    for b, base in _MADE[first:]:
        b.stop()
        b.kill()
        shutil.rmtree(base, ignore_errors=True)
    del _MADE[first:]


DEMO_POLICY = Path(__file__).parents[1] / "server" / "demo" / "policy.yaml"
_SCOPES = "    scopes:\n"
# The shipped demo masks its people data; tests state the masking they test.
# Its masking block: the comment lines before it, the key, and everything indented
# deeper, up to the target's next key.
_DEMO_MASKING = re.compile(r"(?ms)^(?:    #[^\n]*\n)*    masking:\n.*?(?=^    \S)")


def demo_policy(*, target: str = "", scopes: str = "") -> str:
    """The demo policy without its masking rules, with ``target`` (indented target
    keys such as a ``masking:`` block) added to the demo target before its
    scopes, and ``scopes`` (indented scope entries) after the last scope."""
    text, found = _DEMO_MASKING.subn("", DEMO_POLICY.read_text())
    assert found == 1
    assert _SCOPES in text
    text = text.replace(_SCOPES, target + _SCOPES, 1)
    return text.rstrip("\n") + "\n" + scopes if scopes else text


# The masking most masking tests use: the demo's e-mails keep only their domain,
# card numbers are redacted.
CUSTOMER_MASKING = """\
    masking:
      rules:
        - column: public.customers.email
          method: partial
          keep: domain
        - column: public.customers.card_number
          method: redact
"""


def masked_demo_policy(*settings: str) -> str:
    """The demo policy with :data:`CUSTOMER_MASKING` and further ``masking``
    settings (``"inference: allow"``, ...)."""
    extra = "".join(f"      {setting}\n" for setting in settings)
    return demo_policy(target=CUSTOMER_MASKING + extra)


@contextmanager
def running_broker(
    demo_target: DemoTarget,
    policy: str | None = None,
    *extra_args: str,
    store_url: str | None = None,
) -> Iterator[Broker]:
    """A broker of its own with ``policy`` (and ``extra_args`` on its command
    line, ``store_url`` its store instead of its own SQLite file), stopped (and
    killed if need be) afterwards."""
    b = new_broker(demo_target, store_url=store_url)
    try:
        b.start(*extra_args, policy=policy)
        yield b
    finally:
        b.stop()
        b.kill()


@pytest.fixture(scope="module")
def broker(demo_target: DemoTarget) -> Iterator[Broker]:
    b = new_broker(demo_target)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def fresh_broker(demo_target: DemoTarget) -> Iterator[Broker]:
    """A broker of the test's own (for tests that kill or restart it)."""
    b = new_broker(demo_target)
    try:
        yield b
    finally:
        b.stop()
        b.kill()

"""Throwaway PostgreSQL clusters built from the local PostgreSQL binaries.

The broker's dev mode, the test suite and the benchmarks each need a PostgreSQL
of their own; none of them may use whatever server happens to run on the
machine. A :class:`LocalCluster` owns one directory laid out as::

    <data_dir>/
        pgdata/                 PGDATA (initdb output)
        pgdata/dbaccess.conf    settings we manage, rewritten at every start
        pgdata/dbaccess_hba.conf  extra hba_lines before initdb's pg_hba.conf (if any)
        superuser.password      0600, so a restart reuses the password
        port                    the last port used, so a restart reuses it
        postgres.log            server log (and initdb/pg_ctl output)

How it runs:

* ``initdb --auth=scram-sha-256`` so every connection, even the superuser's,
  proves a password; the password comes from a 0600 ``--pwfile`` and never
  appears on a command line.
* The server listens on 127.0.0.1 only and unix sockets are disabled, so the
  cluster cannot collide with a system server's socket and is reachable only
  over loopback TCP. Durability is traded for speed (``fsync = off``): the
  cluster is disposable.
* PostgreSQL refuses to run as root. When we are root, initdb and pg_ctl run as
  the ``postgres`` OS user through ``runuser``, the directory is handed to that
  user, and the directories we create on the way are made traversable.
* Every failure becomes :class:`~server.errors.Unavailable` carrying the tail
  of the server log, which is where PostgreSQL says what went wrong.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from server.errors import Unavailable
from server.tlsutil import write_private

PG_OS_USER = "postgres"
_LOG_TAIL_LINES = 30


def find_pg_bindir() -> Path:
    """Where initdb/pg_ctl live: $DBACCESS_PG_BINDIR, `pg_config --bindir`, or the newest
    /usr/lib/postgresql/*/bin."""
    env = os.environ.get("DBACCESS_PG_BINDIR")
    if env:
        path = Path(env)
        if (path / "initdb").is_file():
            return path
        raise Unavailable(
            f"DBACCESS_PG_BINDIR={env} does not contain initdb",
            hint="point DBACCESS_PG_BINDIR at a PostgreSQL bin directory",
        )
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            # Debian's pg_config belongs to libpq-dev and may point at /usr/bin,
            # where only client programs live: require the server binaries too.
            if out and (Path(out) / "initdb").is_file():
                return Path(out)
    candidates = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        with contextlib.suppress(ValueError):
            if (path / "initdb").is_file():
                candidates.append((int(path.parent.name.split(".")[0]), path))
    if candidates:
        return max(candidates)[1]
    raise Unavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl) found",
        hint="install PostgreSQL or set DBACCESS_PG_BINDIR to its bin directory",
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the caller must still cope with races)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class LocalCluster:
    """A disposable PostgreSQL cluster in ``data_dir``; see the module docstring for the layout."""

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        superuser: str = "postgres",
        password: str | None = None,
        ssl: bool = False,
        hba_lines: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.superuser = superuser
        self.ssl = ssl
        # pg_hba.conf lines matched before initdb's own (e.g. another auth method for one role).
        self.hba_lines = tuple(hba_lines)
        self._password_path = self.data_dir / "superuser.password"
        self._port_path = self.data_dir / "port"
        self._explicit_port = port is not None
        self.port = port if port is not None else (self._saved_port() or free_port(self.host))
        if password is None:
            password = self._saved_password() or secrets.token_urlsafe(24)
        self.password = password
        self._bindir: Path | None = None
        self._as_postgres = os.geteuid() == 0

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.data_dir)!r}, port={self.port})"

    # -- paths and identity -------------------------------------------------

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_pg_bindir()
        return self._bindir

    @property
    def ca_cert_path(self) -> Path:
        """The self-signed server certificate (only when ``ssl=True``), usable as sslrootcert."""
        return self.pgdata / "server.crt"

    def _saved_port(self) -> int | None:
        try:
            return int(self._port_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _saved_password(self) -> str | None:
        try:
            return self._password_path.read_text().rstrip("\n") or None
        except OSError:
            return None

    def _owner_ids(self) -> tuple[int, int] | None:
        """uid/gid the cluster files must belong to, or None to keep the current user's."""
        if not self._as_postgres:
            return None
        try:
            entry = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise Unavailable(
                f"running as root, but there is no {PG_OS_USER!r} OS user to run PostgreSQL as",
                hint="create the postgres user or run as an unprivileged user",
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _give(self, path: Path) -> None:
        ids = self._owner_ids()
        if ids is not None:
            os.chown(path, *ids)

    def _write_private(self, path: Path, text: str) -> None:
        write_private(path, text)
        self._give(path)

    def _prepare_dir(self) -> None:
        """Create data_dir, make our new parents traversable, and check the existing ones."""
        missing = []
        probe = self.data_dir
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            path.mkdir()
            # Parents we create only need to be traversable by the server's OS user.
            path.chmod(0o711)
        self.data_dir.chmod(0o700)
        self._give(self.data_dir)
        ids = self._owner_ids()
        if ids is not None:
            self._check_traversable(self.data_dir.parent, ids)

    @staticmethod
    def _check_traversable(path: Path, ids: tuple[int, int]) -> None:
        uid, gid = ids
        groups = {gid} | {g for g in os.getgrouplist(PG_OS_USER, gid)}
        for directory in [path, *path.parents]:
            st = directory.stat()
            if st.st_uid == uid:
                ok = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid in groups:
                ok = bool(st.st_mode & stat.S_IXGRP)
            else:
                ok = bool(st.st_mode & stat.S_IXOTH)
            if not ok:
                raise Unavailable(
                    f"the {PG_OS_USER} OS user cannot reach {directory} "
                    f"(mode {stat.filemode(st.st_mode)})",
                    hint=f"chmod o+x {directory}, or use a data directory elsewhere",
                )

    # -- running programs ---------------------------------------------------

    def _command(self, program: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / program), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", PG_OS_USER, "--", *cmd]
        return cmd

    def _run(
        self, program: str, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # A clean environment: PGDATA/PGPORT/PGHOST of the caller must not steer us.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            result = subprocess.run(
                self._command(program, *args),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                cwd=self.data_dir,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise Unavailable(
                f"{program} failed: {exc}\n{self._log_tail()}", hint=f"see {self.log_path}"
            ) from None
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise Unavailable(
                f"{program} exited with {result.returncode}: {output}\n{self._log_tail()}",
                hint=f"see {self.log_path}",
            )
        return result

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "server log tail:\n" + "\n".join(lines[-_LOG_TAIL_LINES:])

    # -- lifecycle ----------------------------------------------------------

    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").is_file()

    def init(self) -> None:
        """initdb with SCRAM auth for every connection; idempotent for an existing cluster."""
        if self.initialized():
            return
        self._prepare_dir()
        self._write_private(self._password_path, self.password + "\n")
        pwfile = self.data_dir / ".initdb-pwfile"
        self._write_private(pwfile, self.password + "\n")
        try:
            result = self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                self.superuser,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with self.log_path.open("a") as log:
            log.write(result.stdout + result.stderr)
        self._give(self.log_path)
        if result.returncode != 0:
            raise Unavailable(
                f"initdb exited with {result.returncode}\n{self._log_tail()}",
                hint=f"see {self.log_path}",
            )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# Settings managed by dbaccess (rewritten at each start).\n")
            conf.write("include_if_exists = 'dbaccess.conf'\n")
        if self.ssl:
            self._write_certificate()

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "''",
            "max_connections": "200",
            "password_encryption": "'scram-sha-256'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "ssl": "on" if self.ssl else "off",
        }
        if self.hba_lines:
            hba = self.pgdata / "dbaccess_hba.conf"
            base = (self.pgdata / "pg_hba.conf").read_text()
            hba.write_text("".join(line + "\n" for line in self.hba_lines) + base)
            self._give(hba)
            settings["hba_file"] = f"'{hba}'"
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        path = self.pgdata / "dbaccess.conf"
        path.write_text(text)
        self._give(path)

    def _write_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1, so TLS paths can be exercised locally."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(self.host))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self._write_private(
            self.pgdata / "server.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        )
        crt = self.ca_cert_path
        crt.write_text(cert.public_bytes(serialization.Encoding.PEM).decode())
        self._give(crt)

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it accepts connections."""
        if not self.initialized():
            raise Unavailable(
                f"no cluster in {self.pgdata}",
                hint="call init() first (or use the context manager)",
            )
        if self.running():
            # Already up (started by another LocalCluster for the same directory):
            # adopt the port it really listens on.
            self.port = self._running_port() or self.port
            return
        attempts = 3
        for attempt in range(attempts):
            if not _port_is_free(self.host, self.port):
                if self._explicit_port:
                    raise Unavailable(
                        f"port {self.port} on {self.host} is already in use",
                        hint="pick another port or stop what listens there",
                    )
                self.port = free_port(self.host)
            self._write_settings()
            result = self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                str(max(1, int(timeout))),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_path),
                timeout=timeout + 10,
                check=False,
            )
            if result.returncode == 0:
                self._write_private(self._port_path, f"{self.port}\n")
                return
            # Another process may have taken the port between our check and the
            # server's bind; retry on a new port unless the caller fixed it.
            tail = self._log_tail()
            lost_race = "could not bind" in tail or "already in use" in tail
            if not lost_race or self._explicit_port or attempt == attempts - 1:
                output = (result.stdout + result.stderr).strip()
                raise Unavailable(
                    f"PostgreSQL did not start: {output}\n{self._log_tail()}",
                    hint=f"see {self.log_path}",
                )
            self.port = free_port(self.host)

    def _running_port(self) -> int | None:
        # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ...
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            return int(lines[3])
        except (OSError, IndexError, ValueError):
            return None

    def stop(self, mode: str = "fast") -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        if not self.running():
            return
        self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.pgdata))

    def running(self) -> bool:
        if not self.initialized():
            return False
        # pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        return self._run("pg_ctl", "status", "-D", str(self.pgdata), check=False).returncode == 0

    def dsn(
        self, user: str | None = None, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        """A libpq URI for this cluster; the superuser's credentials unless others are given."""
        if user is None:
            user = self.superuser
            if password is None:
                password = self.password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def __enter__(self) -> LocalCluster:
        self.init()
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""LocalCluster: a private PostgreSQL that keeps its port and password across restarts."""

from __future__ import annotations

import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from server.errors import Unavailable
from server.pgcluster import LocalCluster, find_pg_bindir, free_port
from tests.fix_pg import make_tmp_dir


@pytest.fixture
def tmp_base() -> Iterator[Path]:
    base = make_tmp_dir("dbaccess-pgtest-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _query(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_restart_keeps_port_and_password(tmp_base: Path) -> None:
    data_dir = tmp_base / "nested" / "cluster"
    first = LocalCluster(data_dir)
    try:
        with first:
            assert first.running()
            assert _query(first.dsn(), "SELECT current_user") == "postgres"
            port, password = first.port, first.password
        assert not first.running()

        second = LocalCluster(data_dir)
        assert (second.port, second.password) == (port, password)
        with second:
            assert _query(second.dsn(), "SELECT 1") == 1
    finally:
        first.stop()
    assert stat.S_IMODE((data_dir / "superuser.password").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_base / "nested").stat().st_mode) == 0o711


def test_starting_a_running_cluster_adopts_its_real_port(pg_cluster: LocalCluster) -> None:
    other = LocalCluster(pg_cluster.data_dir, port=free_port())
    other.start()
    assert other.port == pg_cluster.port
    assert other.password == pg_cluster.password
    assert _query(other.dsn(), "SELECT 1") == 1


def test_a_taken_saved_port_is_replaced(tmp_base: Path) -> None:
    cluster = LocalCluster(tmp_base / "cluster")
    cluster.init()
    cluster.start()
    old_port = cluster.port
    cluster.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        again = LocalCluster(tmp_base / "cluster")
        try:
            again.start()
            assert again.port != old_port
            assert _query(again.dsn(), "SELECT 1") == 1
        finally:
            again.stop()
    assert LocalCluster(tmp_base / "cluster").port == again.port


def test_an_explicit_port_that_is_taken_is_an_error(tmp_base: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        cluster = LocalCluster(tmp_base / "cluster", port=squatter.getsockname()[1])
        cluster.init()
        with pytest.raises(Unavailable, match="already in use"):
            cluster.start()
    assert not cluster.running()


def test_a_failed_start_reports_the_server_log(tmp_base: Path) -> None:
    cluster = LocalCluster(tmp_base / "cluster")
    cluster.init()
    with (cluster.pgdata / "postgresql.conf").open("a") as conf:
        conf.write("shared_buffers = 'plenty'\n")
    with pytest.raises(Unavailable) as info:
        cluster.start(timeout=10)
    assert "shared_buffers" in info.value.message
    assert not cluster.running()


def test_every_login_needs_the_right_password(pg_cluster: LocalCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_cluster.dsn(password="not-the-password"), connect_timeout=5)
    with psycopg.connect(pg_cluster.dsn()) as conn:
        methods = {r[0] for r in conn.execute("SELECT auth_method FROM pg_hba_file_rules")}
    assert methods == {"scram-sha-256"}


def test_listens_on_loopback_tcp_only_with_room_for_many_clients(
    pg_cluster: LocalCluster,
) -> None:
    with psycopg.connect(pg_cluster.dsn()) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('listen_addresses', 'unix_socket_directories', 'max_connections',"
                " 'password_encryption', 'server_encoding')"
            ).fetchall()
        )
    assert settings == {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",
        "max_connections": "200",
        "password_encryption": "scram-sha-256",
        "server_encoding": "UTF8",
    }


def test_dsn_percent_encodes_credentials(pg_cluster: LocalCluster) -> None:
    dsn = pg_cluster.dsn(user="we ird@user", password="p@ss:/w?rd#1", dbname="d b")
    params = conninfo_to_dict(dsn)
    assert params["user"] == "we ird@user"
    assert params["password"] == "p@ss:/w?rd#1"
    assert params["dbname"] == "d b"
    assert params["host"] == "127.0.0.1"
    assert params["port"] == str(pg_cluster.port)


def test_ssl_cluster_serves_tls_with_its_own_certificate(tmp_base: Path) -> None:
    with LocalCluster(tmp_base / "tls", ssl=True) as cluster:
        dsn = cluster.dsn() + f"?sslmode=verify-full&sslrootcert={cluster.ca_cert_path}"
        assert _query(dsn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True


def test_find_pg_bindir_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_base: Path
) -> None:
    real = find_pg_bindir()
    assert (real / "initdb").is_file()
    assert (real / "pg_ctl").is_file()
    monkeypatch.setenv("DBACCESS_PG_BINDIR", str(real))
    assert find_pg_bindir() == real
    monkeypatch.setenv("DBACCESS_PG_BINDIR", str(tmp_base))
    with pytest.raises(Unavailable, match="initdb"):
        find_pg_bindir()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 1024 <= port <= 65535

"""TLS on both hops, tried the way it can go wrong: a gateway that answers 'N',
a client that skips TLS, bytes smuggled after SSLRequest, a CA that does not
match, and a target that must be verified by name (sslmode=verify-full)."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokercli.tunnel import SSL_REQUEST, Tunnel, TunnelTarget
from server.demo.provision import provision_demo
from server.gateway.session import startup_packet
from server.pgcluster import LocalCluster
from server.tlsutil import ensure_dev_ca
from tests.fix_broker import Broker, new_broker
from tests.fix_pg import make_tmp_dir
from tests.fix_pgwire import read_error

pytestmark = pytest.mark.slow


def test_gateway_refuses_a_startup_in_clear(broker: Broker) -> None:
    with socket.create_connection(broker.gateway, timeout=10) as sock:
        sock.sendall(startup_packet({"user": "dev", "database": "demo"}))
        fields = read_error(sock)
    assert fields["C"] == "28000"
    assert "only TLS" in fields["M"]


def test_gateway_refuses_bytes_smuggled_after_sslrequest(broker: Broker) -> None:
    with socket.create_connection(broker.gateway, timeout=10) as sock:
        sock.sendall(SSL_REQUEST + startup_packet({"user": "dev", "database": "demo"}))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    # Never an 'S' followed by a handshake: PostgreSQL's answer to CVE-2021-23214.
    assert not data.startswith(b"S")
    assert b"08P01" in data and b"unencrypted data after SSL request" in data


def test_tunnel_never_falls_back_to_plaintext() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def refuse_tls() -> None:
        conn, _ = listener.accept()
        with conn:
            assert conn.recv(8) == SSL_REQUEST
            conn.sendall(b"N")
            conn.recv(1024)

    t = threading.Thread(target=refuse_tls, daemon=True)
    t.start()
    with (
        Tunnel(TunnelTarget("127.0.0.1", port, tls=True)) as tunnel,
        socket.create_connection(("127.0.0.1", tunnel.port), timeout=10) as client,
    ):
        client.sendall(startup_packet({"user": "dev", "database": "demo"}))
        fields = read_error(client)
    listener.close()
    assert "refusing to continue in plaintext" in fields["M"]


def test_tunnel_refuses_a_gateway_certificate_from_another_ca(
    broker: Broker, tmp_path: Path
) -> None:
    other_ca = ensure_dev_ca(tmp_path / "other").ca
    assert other_ca is not None
    host, port = broker.gateway
    with (
        Tunnel(TunnelTarget(host, port, tls=True, ca_file=str(other_ca))) as tunnel,
        socket.create_connection(("127.0.0.1", tunnel.port), timeout=10) as client,
    ):
        client.sendall(startup_packet({"user": "dev", "database": "demo"}))
        fields = read_error(client)
    assert "certificate verify failed" in fields["M"]


@pytest.fixture(scope="module")
def ssl_cluster() -> Iterator[LocalCluster]:
    base = make_tmp_dir("dbaccess-pgssl-")
    cluster = LocalCluster(base / "cluster", ssl=True)
    try:
        with cluster:
            yield cluster
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _broker_for(cluster: LocalCluster, dsn_suffix: str) -> Broker:
    demo = provision_demo(cluster)
    b = new_broker(demo)
    b.target_dsn = demo.admin_dsn + dsn_suffix
    return b


def test_upstream_verify_full_against_a_tls_target(ssl_cluster: LocalCluster) -> None:
    rootcert = ssl_cluster.ca_cert_path
    b = _broker_for(ssl_cluster, f"?sslmode=verify-full&sslrootcert={rootcert}")
    b.start()
    try:
        res = b.cli(
            "exec",
            "demo",
            "-c",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            "-o",
            "json",
        )
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)[0]["rows"] == [{"ssl": True}]
    finally:
        b.stop()


def test_verify_full_with_the_wrong_root_certificate_is_refused(
    ssl_cluster: LocalCluster, tmp_path: Path
) -> None:
    # The admin DSN and the gateway share the target's TLS settings, so the
    # broker refuses at start-up, naming the certificate problem.
    wrong = ensure_dev_ca(tmp_path / "wrong").ca
    b = _broker_for(ssl_cluster, f"?sslmode=verify-full&sslrootcert={wrong}")
    with pytest.raises(RuntimeError, match="certificate verify failed"):
        b.start()
    b.kill()


def test_cancel_request_reaches_the_right_backend(broker: Broker) -> None:
    import time

    import psycopg

    from tests.fix_session import held_session

    with held_session(broker) as s:
        conn = psycopg.connect(s.dsn(), autocommit=True)
        timer = threading.Timer(1.0, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        assert time.monotonic() - started < 10
        assert conn.execute("select 1").fetchone() == (1,)
        conn.close()


def test_cancel_with_an_unknown_key_is_ignored(broker: Broker) -> None:
    # A CancelRequest for a key the gateway never handed out: nothing happens, no error.
    import ssl as ssl_mod

    ca = json.loads((broker.config_dir / "profile.json").read_text())["ca_file"]
    with socket.create_connection(broker.gateway, timeout=10) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        ctx = ssl_mod.create_default_context(cafile=ca)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(struct.pack("!IIII", 16, 80877102, 12345, 67890))
            assert sock.recv(1024) == b""

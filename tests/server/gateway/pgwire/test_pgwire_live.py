"""The codec against a real PostgreSQL and real libpq clients.

Two angles.  A small socket client built only from the codec logs in with
SCRAM and walks through every backend message a server can produce (rows,
errors, notices, notifications, COPY both ways, the extended protocol with
suspended portals, fast-path calls, protocol negotiation, cancellation).  And a
loopback relay built on both parsers carries psql and pgbench traffic, so the
frontend side is exercised with the bytes libpq really sends.  Every message
either way is decoded and re-encoded, and must come back byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import psycopg
from scramp import ScramClient

from server.gateway.pgwire import (
    PROTOCOL_3_0,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    BackendMessage,
    BackendParser,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FrontendParser,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    Message,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
)
from server.pgcluster import LocalCluster

INT4_OID = 23
TEXT_OID = 25


class Client:
    """A PostgreSQL client made of the codec and a blocking loopback socket."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.sock = socket.create_connection((cluster.host, cluster.port), timeout=10)
        self.parser = BackendParser()
        self.key: BackendKeyData | None = None
        self.params: dict[str, str] = {}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(Terminate().encode())
        self.sock.close()

    def send(self, *msgs: Message) -> None:
        self.sock.sendall(b"".join(m.encode() for m in msgs))

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.parser.feed(data)

    def recv(self) -> BackendMessage:
        while (raw := self.parser.next_raw()) is None:
            self._fill()
        msg = decode_backend(raw)
        assert msg.encode() == raw.wire, msg
        return msg

    def until(self, last: type[BackendMessage] = ReadyForQuery) -> list[BackendMessage]:
        out = [self.recv()]
        while not isinstance(out[-1], last):
            out.append(self.recv())
        return out

    def encryption_answer(self, request: Message) -> bytes:
        self.send(request)
        if isinstance(request, SSLRequest):
            self.parser.expect_ssl_response()
        else:
            self.parser.expect_gssenc_response()
        while (answer := self.parser.read_ssl_response()) is None:
            self._fill()
        return answer

    def login(self, protocol: int = PROTOCOL_3_0, **extra: str) -> list[BackendMessage]:
        params = {"user": self.cluster.superuser, "database": "postgres", **extra}
        self.send(StartupMessage(params, protocol))
        seen: list[BackendMessage] = []
        msg = self.recv()
        if isinstance(msg, NegotiateProtocolVersion):
            seen.append(msg)
            msg = self.recv()
        assert isinstance(msg, AuthenticationSASL)
        assert "SCRAM-SHA-256" in msg.mechanisms
        scram = ScramClient(["SCRAM-SHA-256"], self.cluster.superuser, self.cluster.password)
        self.send(SASLInitialResponse("SCRAM-SHA-256", scram.get_client_first().encode()))
        cont = self.recv()
        assert isinstance(cont, AuthenticationSASLContinue)
        scram.set_server_first(cont.data.decode())
        self.send(SASLResponse(scram.get_client_final().encode()))
        final = self.recv()
        assert isinstance(final, AuthenticationSASLFinal)
        scram.set_server_final(final.data.decode())
        rest = self.until()
        assert isinstance(rest[0], AuthenticationOk)
        for msg in rest:
            if isinstance(msg, ParameterStatus):
                self.params[msg.name] = msg.value
            elif isinstance(msg, BackendKeyData):
                self.key = msg
        assert rest[-1] == ReadyForQuery("I")
        return [*seen, msg, cont, final, *rest]


@contextlib.contextmanager
def connected(cluster: LocalCluster) -> Iterator[Client]:
    client = Client(cluster)
    try:
        client.login()
        yield client
    finally:
        client.close()


def kinds(msgs: list[BackendMessage]) -> list[str]:
    return [type(m).__name__ for m in msgs]


def test_login_reports_server_parameters_and_a_cancel_key(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        assert c.params["client_encoding"] == "UTF8"
        assert c.params["standard_conforming_strings"] == "on"
        assert c.key is not None and c.key.pid > 0


def test_simple_query_rows_and_nulls(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        c.send(Query("select 1 as a, null::text as b, 'é' as c"))
        msgs = c.until()
    assert kinds(msgs) == ["RowDescription", "DataRow", "CommandComplete", "ReadyForQuery"]
    desc = msgs[0]
    assert isinstance(desc, RowDescription)
    assert [(f.name, f.type_oid, f.format) for f in desc.fields] == [
        ("a", INT4_OID, 0),
        ("b", TEXT_OID, 0),
        ("c", TEXT_OID, 0),
    ]
    assert msgs[1] == DataRow([b"1", None, "é".encode()])
    assert msgs[2] == CommandComplete("SELECT 1")


def test_row_description_names_the_table_column(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        c.send(Query("select oid, relname from pg_class limit 1"))
        desc = c.until()[0]
    assert isinstance(desc, RowDescription)
    pg_class_oid = 1259
    assert [(f.table_oid, f.column_attnum) for f in desc.fields] == [
        (pg_class_oid, -2),  # oid is a system column until PostgreSQL 12, a plain one since
        (pg_class_oid, 2),
    ] or [(f.table_oid, f.column_attnum) for f in desc.fields] == [
        (pg_class_oid, 1),
        (pg_class_oid, 2),
    ]


def test_errors_notices_and_empty_queries(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        c.send(Query("select 1/0"))
        err = c.until()
        c.send(Query("do $$ begin raise notice 'hello %', 42; end $$"))
        notice = c.until()
        c.send(Query(""))
        empty = c.until()
        c.send(Query("begin; select 1/0"))
        failed = c.until()
    assert isinstance(err[0], ErrorResponse)
    assert err[0].sqlstate == "22012" and err[0].severity == "ERROR"
    assert err[-1] == ReadyForQuery("I")
    assert isinstance(notice[0], NoticeResponse) and notice[0].message == "hello 42"
    assert kinds(empty) == ["EmptyQueryResponse", "ReadyForQuery"]
    assert empty[0] == EmptyQueryResponse()
    assert failed[-1] == ReadyForQuery("E")


def test_notifications(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        c.send(Query("listen pgwire_test; notify pgwire_test, 'payload ü'"))
        msgs = c.until()
        assert c.key is not None
        pid = c.key.pid
    notes = [m for m in msgs if isinstance(m, NotificationResponse)]
    assert notes == [NotificationResponse(pid, "pgwire_test", "payload ü")]


def test_copy_out_and_in(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        c.send(Query("copy (select g, 'x' || g from generate_series(1, 2) g) to stdout"))
        out = c.until()
        c.send(Query("create temp table t (a int, b text)"))
        c.until()
        c.send(Query("copy t from stdin"))
        started = c.until(CopyInResponse)
        c.send(CopyData(b"1\tone\n2\ttwo\n"), CopyDone())
        done = c.until()
        c.send(Query("copy t from stdin (format binary)"))
        binary = c.until(CopyInResponse)
        c.send(CopyFail("client gave up"))
        failed = c.until()
    assert out[0] == CopyOutResponse(0, [0, 0])
    assert out[1:4] == [CopyData(b"1\tx1\n"), CopyData(b"2\tx2\n"), CopyDone()]
    assert out[4] == CommandComplete("COPY 2")
    assert started == [CopyInResponse(0, [0, 0])]
    assert done[0] == CommandComplete("COPY 2")
    assert binary == [CopyInResponse(1, [1, 1])]
    assert isinstance(failed[0], ErrorResponse) and "client gave up" in (failed[0].message or "")


def test_extended_protocol_binary_values(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        c.send(
            Parse("s1", "select $1::int + 1 as n, $2::text as t", [INT4_OID, 0]),
            Describe("S", "s1"),
            Bind("", "s1", [1, 0], [(41).to_bytes(4, "big"), None], [1]),
            Execute("", 0),
            Sync(),
        )
        msgs = c.until()
    assert kinds(msgs) == [
        "ParseComplete",
        "ParameterDescription",
        "RowDescription",
        "BindComplete",
        "DataRow",
        "CommandComplete",
        "ReadyForQuery",
    ]
    assert msgs[1] == ParameterDescription([INT4_OID, TEXT_OID])
    assert msgs[4] == DataRow([(42).to_bytes(4, "big"), None])
    assert isinstance(msgs[2], RowDescription)
    assert [f.format for f in msgs[2].fields] == [0, 0]  # statement Describe: formats unknown


def test_suspended_portal_no_data_and_close(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        c.send(
            Query("begin"),
        )
        c.until()
        c.send(
            Parse("", "select g from generate_series(1, 3) g"),
            Bind("p1", ""),
            Execute("p1", 2),
            Execute("p1", 0),
            Close("P", "p1"),
            Parse("nodata", "set local work_mem = '4MB'"),
            Describe("S", "nodata"),
            Sync(),
        )
        msgs = c.until()
    assert msgs == [
        ParseComplete(),
        BindComplete(),
        DataRow([b"1"]),
        DataRow([b"2"]),
        PortalSuspended(),
        DataRow([b"3"]),
        CommandComplete("SELECT 1"),
        CloseComplete(),
        ParseComplete(),
        ParameterDescription([]),
        NoData(),
        ReadyForQuery("T"),
    ]


def test_fast_path_function_call(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        c.send(Query("select 'int4pl'::regproc::oid"))
        row = c.until()[1]
        assert isinstance(row, DataRow) and row.values[0] is not None
        oid = int(row.values[0])
        two, three = (2).to_bytes(4, "big"), (3).to_bytes(4, "big")
        c.send(FunctionCall(oid, [1], [two, three], 1))
        msgs = c.until()
    assert msgs == [FunctionCallResponse((5).to_bytes(4, "big")), ReadyForQuery("I")]


def test_newer_minor_version_and_unknown_options_are_negotiated(
    pg_cluster: LocalCluster,
) -> None:
    client = Client(pg_cluster)
    try:
        seen = client.login(PROTOCOL_3_0 | 7, **{"_pq_.no_such_option": "1"})
    finally:
        client.close()
    assert seen[0] == NegotiateProtocolVersion(PROTOCOL_3_0, ["_pq_.no_such_option"])


def test_encryption_requests_are_answered_with_one_byte(pg_cluster: LocalCluster) -> None:
    # The test cluster runs without TLS: refused, and the connection goes on in the clear.
    client = Client(pg_cluster)
    try:
        assert client.encryption_answer(SSLRequest()) == b"N"
        client.login()
    finally:
        client.close()
    # A server built with GSSAPI says 'G' over TCP even without a keytab; either answer
    # is one byte and nothing follows it.
    client = Client(pg_cluster)
    try:
        assert client.encryption_answer(GSSENCRequest()) in (b"G", b"N")
        assert client.parser.pending_bytes == 0
    finally:
        client.sock.close()


def test_cancel_request_stops_a_running_query(pg_cluster: LocalCluster) -> None:
    with connected(pg_cluster) as c:
        assert c.key is not None
        c.send(Query("select pg_sleep(30)"))
        time.sleep(0.3)
        with socket.create_connection((pg_cluster.host, pg_cluster.port), timeout=10) as s:
            s.sendall(CancelRequest(c.key.pid, c.key.secret).encode())
            assert s.recv(1) == b""  # the server closes without a word
        msgs = c.until()
    errors = [m.sqlstate for m in msgs if isinstance(m, ErrorResponse)]
    assert errors == ["57014"]  # query_canceled


# --------------------------------------------------------------------------
# libpq through a relay made of the two parsers


class Relay:
    """Loopback relay: frames both directions, checks every message, forwards the frames."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.upstream = (cluster.host, cluster.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frontend: Counter[str] = Counter()
        self.backend: Counter[str] = Counter()
        self.failures: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self._closing = True
        self.listener.close()
        for thread in list(self._threads):
            thread.join(10)

    def _accept(self) -> None:
        while not self._closing:
            ready, _, _ = select.select([self.listener], [], [], 0.1)
            if not ready:
                continue
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._spawn(self._connection, client)

    def _connection(self, client: socket.socket) -> None:
        # Both directions share the two sockets, which are closed only once
        # both are done; each direction just half-closes its peer at EOF.
        with client, socket.create_connection(self.upstream) as server:
            frontend = FrontendParser()
            backend = BackendParser()

            def upstream(data: bytes) -> bytes:
                frontend.feed(data)
                raws, wire = frontend.drain_frames()
                assert b"".join(raw.wire for raw in raws) == wire
                for raw in raws:
                    msg = decode_frontend(raw)
                    assert msg.encode() == raw.wire, msg
                    self._record(self.frontend, type(msg).__name__)
                    if isinstance(msg, SSLRequest):
                        backend.expect_ssl_response()
                    elif isinstance(msg, GSSENCRequest):
                        backend.expect_gssenc_response()
                return wire

            def downstream(data: bytes) -> bytes:
                backend.feed(data)
                answer = b""
                if backend.expecting_ssl_response:
                    got = backend.read_ssl_response()
                    if got is None:
                        return b""
                    answer = b"" if got == b"E" else got
                raws, wire = backend.drain_frames()
                for raw in raws:
                    msg = decode_backend(raw)
                    assert msg.encode() == raw.wire, msg
                    self._record(self.backend, type(msg).__name__)
                return answer + wire

            down = threading.Thread(target=self._pump, args=(server, client, downstream))
            down.start()
            self._pump(client, server, upstream)
            down.join(30)

    def _pump(
        self, src: socket.socket, dst: socket.socket, relay: Callable[[bytes], bytes]
    ) -> None:
        try:
            while data := src.recv(65536):
                if out := relay(data):
                    dst.sendall(out)
        except OSError:
            pass  # a peer hanging up; what matters is what was framed before
        except BaseException as exc:  # recorded for the test, which fails on it
            self.failures.append(exc)
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _record(self, counter: Counter[str], name: str) -> None:
        with self._lock:
            counter[name] += 1


@contextlib.contextmanager
def scratch_database(cluster: LocalCluster, name: str) -> Iterator[str]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}"')
        conn.execute(f'create database "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def libpq_env(cluster: LocalCluster, port: int, database: str, sslmode: str) -> dict[str, str]:
    return {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGUSER": cluster.superuser,
        "PGPASSWORD": cluster.password,
        "PGDATABASE": database,
        "PGSSLMODE": sslmode,
        "PGGSSENCMODE": "disable",
        "PGCONNECT_TIMEOUT": "10",
    }


def test_psql_and_pgbench_traffic_round_trips(pg_cluster: LocalCluster) -> None:
    relay = Relay(pg_cluster)
    try:
        with scratch_database(pg_cluster, "pgwire_conformance") as db:
            script = (
                "select 1 as one, null as nothing;\n"
                "create table t (a int, b text);\n"
                "\\copy t from stdin\n1\tone\n2\ttwo\n\\.\n"
                "\\copy t to stdout\n"
                "select 1/0;\n"
            )
            psql = subprocess.run(
                ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-f", "-"],
                input=script,
                env=libpq_env(pg_cluster, relay.port, db, "prefer"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "1\tone" in psql.stdout, psql.stderr
            assert "division by zero" in psql.stderr
            env = libpq_env(pg_cluster, relay.port, db, "disable")
            for args in (
                ["-i", "-s", "1", "-q"],
                ["-c", "2", "-j", "2", "-t", "50", "-M", "extended"],
                ["-c", "2", "-t", "50", "-M", "prepared", "-S"],
            ):
                bench = subprocess.run(
                    ["pgbench", *args], env=env, capture_output=True, text=True, timeout=120
                )
                assert bench.returncode == 0, bench.stderr
    finally:
        relay.close()
    assert not relay.failures, relay.failures
    # The traffic really went through every kind of message it should have.
    for name in (
        "SSLRequest",
        "StartupMessage",
        "PasswordMessage",
        "Query",
        "Parse",
        "Bind",
        "Describe",
        "Execute",
        "Sync",
        "CopyData",
        "CopyDone",
        "Terminate",
    ):
        assert relay.frontend[name] > 0, (name, relay.frontend)
    for name in (
        "AuthenticationSASL",
        "AuthenticationOk",
        "ParameterStatus",
        "BackendKeyData",
        "RowDescription",
        "DataRow",
        "CommandComplete",
        "ErrorResponse",
        "CopyInResponse",
        "CopyOutResponse",
        "ParseComplete",
        "BindComplete",
        "ReadyForQuery",
    ):
        assert relay.backend[name] > 0, (name, relay.backend)

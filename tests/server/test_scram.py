"""The gateway's SCRAM-SHA-256 client: RFC 7677's example exchange, what it refuses, and a
login to a real PostgreSQL as an issued role whose verifier has one round."""

from __future__ import annotations

import socket
import struct
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.credentials.postgres import PostgresIssuer
from server.demo.provision import DemoTarget
from server.gateway.pgwire import PROTOCOL_3_0, BackendParser, RawMessage, StartupMessage
from server.gateway.session import GatewayError, UpstreamLogin, UpstreamPhase
from server.scram import MAX_ITERATIONS, ScramClient, ScramError

# RFC 7677, section 3: user "user", password "pencil".
NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_the_rfc_7677_example_exchange() -> None:
    client = ScramClient("pencil", "user", nonce=NONCE)
    assert client.first() == f"n,,n=user,r={NONCE}"
    assert client.final(SERVER_FIRST) == CLIENT_FINAL
    client.verify(SERVER_FINAL)


def test_a_wrong_server_signature_is_refused() -> None:
    client = ScramClient("pencil", "user", nonce=NONCE)
    client.final(SERVER_FIRST)
    with pytest.raises(ScramError, match="does not verify"):
        client.verify("v=" + "A" * 43 + "=")
    with pytest.raises(ScramError, match="refused"):
        client.verify("e=invalid-proof")
    with pytest.raises(ScramError):
        client.verify("v=not base64!")


def test_a_final_message_before_the_first_is_refused() -> None:
    with pytest.raises(ScramError):
        ScramClient("pencil", nonce=NONCE).verify(SERVER_FINAL)


@pytest.mark.parametrize(
    "server_first",
    [
        f"r={NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # the nonce not extended
        "r=someone-elses-nonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        f"m=ext,r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # a mandatory extension
        f"r={NONCE}x,s=,i=4096",  # no salt
        f"r={NONCE}x,s=not base64!,i=4096",
        f"r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        f"r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=04096",
        f"r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
        f"r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=\u0664",  # a digit, not an ASCII one
        f"r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={MAX_ITERATIONS + 1}",
        f"r={NONCE}x,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==",  # out of order
        f"r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==",
    ],
)
def test_a_malformed_server_first_message_is_refused(server_first: str) -> None:
    with pytest.raises(ScramError):
        ScramClient("pencil", nonce=NONCE).final(server_first)


def test_one_round_is_taken() -> None:
    final = ScramClient("pencil", nonce=NONCE).final(f"r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1")
    assert final.startswith(f"c=biws,r={NONCE}x,p=")


def test_user_names_are_escaped() -> None:
    assert ScramClient("pw", "a=b,c", nonce="n").first() == "n,,n=a=3Db=2Cc,r=n"


def _login(target: DemoTarget, user: str, password: str) -> UpstreamLogin:
    login = UpstreamLogin(user, password)
    parser = BackendParser()
    with socket.create_connection((target.host, target.port), timeout=10) as sock:
        sock.sendall(
            StartupMessage({"user": user, "database": target.database}, PROTOCOL_3_0).encode()
        )
        while login.phase is not UpstreamPhase.READY:
            raw = parser.next_raw()
            if raw is None:
                data = sock.recv(65536)
                assert data, "the target closed the connection"
                parser.feed(data)
                continue
            answer = login.handle(raw)
            if answer:
                sock.sendall(answer)
    return login


def test_the_gateway_logs_in_as_an_issued_role_whose_verifier_has_one_round(
    demo_target: DemoTarget,
) -> None:
    issuer = PostgresIssuer(demo_target.admin_dsn)
    try:
        cred = issuer.issue(
            identity="scram@example.com",
            session_id=str(uuid.uuid4()),
            grants=["demo_read"],
            valid_until=datetime.now(UTC) + timedelta(minutes=5),
        )
        try:
            login = _login(demo_target, cred.username, cred.password)
            assert ("session_authorization", cred.username) in login.parameters
            with pytest.raises(GatewayError, match="refused the session login"):
                _login(demo_target, cred.username, cred.password + "x")
        finally:
            issuer.revoke(cred.username)
    finally:
        issuer.close()


def _auth(code: int, data: bytes = b"") -> RawMessage:
    return RawMessage(ord("R"), struct.pack("!I", code) + data)


def test_the_gateway_refuses_a_scram_login_that_ends_without_the_servers_signature() -> None:
    """A target (or something posing as it) that answers the proof with AuthenticationOk,
    skipping its SASLFinal, has not shown it knows the role's verifier."""
    login = UpstreamLogin("role", "pencil")
    first = login.handle(_auth(10, b"SCRAM-SHA-256\0\0"))
    nonce = first.split(b"r=", 1)[1].decode()
    login.handle(_auth(11, f"r={nonce}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1".encode()))
    with pytest.raises(GatewayError, match="without its signature"):
        login.handle(_auth(0))

"""A real local S3-compatible endpoint: ``moto_server`` (moto's server mode) on loopback.

``s3_server`` runs one server for the test module on a free loopback port and
stops it by its PID.  ``S3Server.stop()`` / ``start()`` take it down and bring
it back on the same port, which is how the tests make "S3 is unreachable, then
back".  moto keeps its state in memory, so a restarted server is empty; the
outage tests only need the bucket to exist afterwards (``start`` makes it).
``archive_bucket`` hands each test a bucket of its own on the shared server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from server.pgcluster import free_port
from tests.fix_pg import make_tmp_dir

MOTO = Path(sys.executable).parent / "moto_server"
# moto accepts any credentials; boto3 only needs some to sign with.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_client(endpoint_url: str | None) -> Any:
    """A boto3 S3 client for the moto endpoint at ``endpoint_url``: one try, short timeouts."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


@dataclass
class S3Server:
    port: int
    log_path: Path
    buckets: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        return s3_client(self.endpoint)

    def start(self, timeout: float = 30) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **CREDENTIALS},
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                # The endpoint is our own http://127.0.0.1 URL.
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):  # noqa: S310
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto_server did not start: {self.log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        for bucket in self.buckets:
            self.client().create_bucket(Bucket=bucket)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def new_bucket(self) -> str:
        name = f"dbaccess-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def keys(self, bucket: str) -> list[str]:
        answer = self.client().list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in answer.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    base = make_tmp_dir("dbaccess-s3-")
    server = S3Server(port=free_port(), log_path=base / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def archive_bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()

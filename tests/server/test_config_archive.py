"""The ``archive`` settings: file, environment, defaults, and errors naming line and key."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from server.audit.archive import ArchiveConfig
from server.config import ConfigError, load_config

FILE = textwrap.dedent(
    """\
    data_dir: state
    archive:
      bucket: dbaccess-recordings
      prefix: /prod/eu/
      endpoint_url: https://s3.example.com:9000/
      region: eu-west-1
      server_side_encryption: aws:kms
      kms_key_id: alias/dbaccess
      spool_dir: spool
      keep_local: yes
      interval: 10s
      retry_max: 10m
      audit_segment_age: 30m
      audit_segment_events: 500
    """
)


def write(directory: Path, text: str) -> Path:
    path = directory / "server.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {})
    return [str(p) for p in caught.value.problems]


def test_full_archive_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FILE), environ={})
    assert config.archive == ArchiveConfig(
        bucket="dbaccess-recordings",
        prefix="prod/eu",
        endpoint_url="https://s3.example.com:9000",
        region="eu-west-1",
        server_side_encryption="aws:kms",
        kms_key_id="alias/dbaccess",
        spool_dir=tmp_path / "spool",
        keep_local=True,
        interval=timedelta(seconds=10),
        retry_max=timedelta(minutes=10),
        audit_segment_age=timedelta(minutes=30),
        audit_segment_events=500,
    )


def test_no_archive_by_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "data_dir: state\n"), environ={}).archive is None


def test_the_spool_defaults_to_the_data_dir(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "data_dir: state\narchive: {bucket: rec}\n"), environ={})
    assert config.archive is not None
    assert config.archive.spool_dir == tmp_path / "state" / "archive-spool"
    assert config.archive.keep_local is False


def test_the_environment_configures_it_too(tmp_path: Path) -> None:
    environ = {
        "DBACCESS_SERVER_ARCHIVE_BUCKET": "from-env",
        "DBACCESS_SERVER_ARCHIVE_ENDPOINT_URL": "http://127.0.0.1:9000",
        "DBACCESS_SERVER_ARCHIVE_INTERVAL": "1s",
    }
    config = load_config(None, {"data_dir": tmp_path}, environ=environ)
    assert config.archive is not None
    assert config.archive.bucket == "from-env"
    assert config.archive.endpoint_url == "http://127.0.0.1:9000"
    assert config.archive.interval == timedelta(seconds=1)
    assert config.archive.spool_dir == tmp_path / "archive-spool"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "archive:\n  bucket: rec\n  keep_locl: true\n",
            ["server.yaml:3: archive.keep_locl: unknown key (did you mean 'keep_local'?)"],
            id="typo",
        ),
        pytest.param(
            "archive:\n  prefix: x\n",
            ["server.yaml:2: archive.prefix: archive needs a bucket as well"],
            id="no-bucket",
        ),
        pytest.param(
            "archive:\n  bucket: My_Bucket\n",
            [
                "server.yaml:2: archive.bucket: 'My_Bucket' is not an S3 bucket name "
                "(3-63 of a-z, 0-9, '.', '-')"
            ],
            id="bad-bucket",
        ),
        pytest.param(
            "archive:\n  bucket: rec\n  server_side_encryption: kms\n",
            [
                "server.yaml:3: archive.server_side_encryption: 'kms' is not one of: "
                "AES256, aws:kms, aws:kms:dsse"
            ],
            id="bad-sse",
        ),
        pytest.param(
            "archive:\n  bucket: rec\n  server_side_encryption: AES256\n  kms_key_id: k\n",
            [
                "server.yaml:4: archive.kms_key_id: a KMS key needs server_side_encryption "
                "aws:kms (or aws:kms:dsse), not AES256"
            ],
            id="kms-key-with-aes",
        ),
        pytest.param(
            "archive:\n  bucket: rec\n  keep_local: maybe\n",
            ["server.yaml:3: archive.keep_local: 'maybe' is not true or false"],
            id="bad-flag",
        ),
        pytest.param(
            "archive:\n  bucket: rec\n  endpoint_url: s3.local\n",
            [
                "server.yaml:3: archive.endpoint_url: 's3.local' is not an http(s) URL "
                "such as https://s3.example.com:9000"
            ],
            id="bad-endpoint",
        ),
        pytest.param(
            "archive: rec\n",
            ["server.yaml:1: archive: expected a mapping, got 'rec'"],
            id="not-a-mapping",
        ),
    ],
)
def test_errors_name_line_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, text)
    assert problems_of(Path("server.yaml")) == expected

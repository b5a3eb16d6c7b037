"""The ``slack`` settings: file and environment, defaults, secrets kept out of repr, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from server.config import DEFAULT_SLACK_API_URL, ConfigError, SlackConfig, load_config


def test_slack_section_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            slack:
              signing_secret: s3cr3t-signing
              bot_token: xoxb-s3cr3t
              channel: C0REVIEWS
              email_lookup: false
            """
        )
    )
    config = load_config(path, environ={})
    assert config.slack == SlackConfig(
        signing_secret="s3cr3t-signing",
        bot_token="xoxb-s3cr3t",
        channel="C0REVIEWS",
        email_lookup=False,
        api_url=DEFAULT_SLACK_API_URL,
    )
    assert "s3cr3t" not in repr(config)


def test_slack_from_the_environment() -> None:
    env = {
        "DBACCESS_SERVER_SLACK_SIGNING_SECRET": "sig",
        "DBACCESS_SERVER_SLACK_BOT_TOKEN": "xoxb-1",
        "DBACCESS_SERVER_SLACK_CHANNEL": "C1",
        "DBACCESS_SERVER_SLACK_API_URL": "http://127.0.0.1:9/api",
    }
    slack = load_config(None, environ=env).slack
    assert slack is not None and slack.email_lookup and slack.api_url == "http://127.0.0.1:9/api"
    assert load_config(None, environ={}).slack is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CHANNEL": "C1"}, "slack needs signing_secret as well"),
        ({"SIGNING_SECRET": "s", "CHANNEL": "C1"}, "slack needs bot_token as well"),
        ({"SIGNING_SECRET": "s", "BOT_TOKEN": "b", "CHANNEL": "two words"}, "one word"),
        ({"SIGNING_SECRET": "s", "BOT_TOKEN": "b", "CHANNEL": "C", "API_URL": "ftp://x"}, "URL"),
    ],
)
def test_slack_errors(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={f"DBACCESS_SERVER_SLACK_{k}": v for k, v in env.items()})
    assert expected in str(caught.value)

"""The dev broker's profiles as the CLI writes them: its own are replaced, others kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brokercli import tokens
from brokercli.config import DEV_MARK, load_profile, profile_path, save_profile
from brokercli.devprofiles import write

SERVER = "https://127.0.0.1:8700"


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.delenv("DBACCESS_TOKEN", raising=False)
    return tmp_path


def _request(ca: str, *names: str) -> dict[str, object]:
    return {
        "server": SERVER,
        "ca_file": ca,
        "ca_fingerprint": "ab" * 32,
        "profiles": [{"name": n, "identity": f"id-{n}", "token": f"tok-{n}"} for n in names],
    }


def test_writes_new_profiles_with_the_mark_and_their_tokens(config_dir: Path) -> None:
    answer = write(_request("/ca.pem", "default", "dev"))
    assert answer["written"] == [["default", "id-default"], ["dev", "id-dev"]]
    assert answer["replaced"] == answer["kept"] == []
    assert answer["where"] == str(config_dir / "tokens.json")
    assert load_profile("dev") == {
        "server": SERVER,
        "ca_file": "/ca.pem",
        "ca_fingerprint": "ab" * 32,
        DEV_MARK: "id-dev",
    }
    assert tokens.load(SERVER, "dev") == "tok-dev"


def test_replaces_its_own_keeps_a_login_and_an_unreadable_profile() -> None:
    save_profile({"server": "https://old:1", DEV_MARK: "id-dev"}, "dev")
    save_profile({"server": "https://elsewhere:1"}, "default")
    profile_path("reviewer").write_text("{not json")
    # An unmarked profile that trusts the dev broker's CA is an older dev one.
    save_profile({"server": "https://old:1", "ca_file": "/ca.pem"}, "legacy")
    answer = write(_request("/ca.pem", "default", "dev", "reviewer", "legacy"))
    assert answer["written"] == [["dev", "id-dev"], ["legacy", "id-legacy"]]
    assert answer["replaced"] == [
        ["dev", str(profile_path("dev")), "https://old:1"],
        ["legacy", str(profile_path("legacy")), "https://old:1"],
    ]
    assert answer["kept"] == [
        ["default", str(profile_path("default"))],
        ["reviewer", str(profile_path("reviewer"))],
    ]
    assert load_profile("default") == {"server": "https://elsewhere:1"}
    assert tokens.load(SERVER, "default") is None
    assert json.loads(profile_path("legacy").read_text())[DEV_MARK] == "id-legacy"

"""The deployment files: the image's install steps, the compose file, the systemd
unit and docs/deploy.md, held to what the broker reads.

No container runtime runs here, so the Dockerfile is checked for its shape and
its install steps are run as the build stage runs them (a wheel of the project
with the native masking core in it); the compose file is checked as Compose
reads it (YAML with merge keys), and its config and policy are loaded by the
broker's own loaders; the unit is checked by ``systemd-analyze verify``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import _SETTINGS, load_config
from server.policy import parse_policy

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
UNIT = ROOT / "deploy" / "systemd" / "dbaccess-server.service"


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_docs_deploy_names_every_config_key() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    nested = ("tls_", "oidc_", "archive_", "slack_")
    missing = []
    for key in [*_SETTINGS, "webhooks"]:
        shown = next((f"{p[:-1]}.{key[len(p) :]}" for p in nested if key.startswith(p)), key)
        if f"`{shown}`" not in text:
            missing.append(shown)
    assert not missing, f"docs/deploy.md does not describe {missing}"


def test_the_compose_config_and_policy_load(monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose()["services"]["broker2"]
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, str(value))
    # Mounted as /etc/dbaccess/server.yaml: paths in it are taken beside it.
    here = ROOT / "deploy" / "compose"
    cfg = load_config(here / "server.yaml")
    assert cfg.store_url.startswith("postgresql+psycopg://")
    assert cfg.replica_lease.total_seconds() == 15
    assert cfg.public_gateway_address == "localhost:6433"
    assert cfg.archive is not None and cfg.archive.endpoint_url == "http://archive:9000"
    assert cfg.tls is not None and cfg.tls.cert == here / "tls" / "server.crt"
    assert cfg.policy == here / "policy.yaml"
    assert cfg.data_dir == Path("/var/lib/dbaccess")
    policy_file = ROOT / "deploy" / "compose" / "policy.yaml"
    policy = parse_policy(policy_file.read_text(), str(policy_file))
    assert sorted(policy.targets["app"].scopes) == ["read", "write"]


def test_compose_runs_three_replicas_on_one_store_with_a_target_and_an_archive() -> None:
    spec = compose()
    services = spec["services"]
    brokers = [name for name in services if name.startswith("broker")]
    assert brokers == ["broker1", "broker2", "broker3"]
    for name in brokers:
        broker = services[name]
        assert broker["command"] == ["run", "--config", "/etc/dbaccess/server.yaml"]
        assert {"store", "target"} <= set(broker["depends_on"])
        assert broker["environment"]["TARGET_ADMIN_DSN"].endswith("@target:5432/app")
    assert services["store"]["image"].startswith("postgres:")
    assert services["target"]["image"].startswith("postgres:")
    assert "minio" in services["archive"]["image"]
    published = [port for s in services.values() for port in s.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)
    named = set(spec["volumes"])
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), source
            else:
                assert source in named, source
        for dependency in service.get("depends_on", []):
            assert dependency in services


def test_the_image_is_multi_stage_non_root_and_builds_the_masking_core() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+(?: AS (\w+))?$", text, re.M)
    assert stages == ["build", ""]
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert "gcc" not in final and "COPY --from=build /opt/dbaccess /opt/dbaccess" in final
    assert 'ENTRYPOINT ["dbaccess-server"]' in final
    assert 'python -c "import server.gateway._rowmask"' in text
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    assert copied == {"common", "brokercli", "server"}


@pytest.mark.slow
def test_the_images_install_steps_make_a_wheel_with_everything_the_broker_reads(
    tmp_path: Path,
) -> None:
    """The build stage's COPY lines and its `pip wheel --no-deps .`, run here."""
    build, wheels = tmp_path / "src", tmp_path / "wheels"
    build.mkdir()
    text = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--)(.+) \./?\S*$", text, re.M):
        for name in line.split():
            source = ROOT / name
            if source.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.so")
                shutil.copytree(source, build / name, ignore=ignore)
            else:
                shutil.copy2(source, build / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--wheel-dir",
            str(wheels),
            str(build),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("dbaccess-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"server/gateway/_rowmask\..*\.so", n) for n in names)
    for wanted in (
        "server/credentials/sql/mark_role.sql",
        "server/store/migrations/versions/0008_replicas.py",
        "server/ui/templates/",
        "server/demo/policy.yaml",
    ):
        assert any(n.startswith(wanted) for n in names), wanted


def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for setting in (
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "DynamicUser=yes",
    ):
        assert re.search(rf"^{re.escape(setting)}$", text, re.M), setting
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The same unit, its ExecStart pointed at this checkout's broker.
    server = Path(sys.executable).parent / "dbaccess-server"
    local = tmp_path / UNIT.name
    local.write_text(text.replace("/opt/dbaccess/bin/dbaccess-server", str(server)))
    res = subprocess.run(
        [analyze, "verify", "--man=no", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line
        for line in (res.stdout + res.stderr).splitlines()
        if UNIT.name in line or "Unknown" in line or "Failed" in line
    ]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr

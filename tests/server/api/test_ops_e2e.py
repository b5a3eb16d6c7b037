"""``/metrics``, ``/healthz``, ``/readyz`` and JSON log lines of a real dev broker.

A scripted workload (reads through the gateway, one of them masked, a write
the read scope refuses, a policy reload) runs with the real CLI; then
``/metrics`` is parsed with ``prometheus_client``'s own parser and its
counters must say exactly what was done, and the broker's log, written as
JSON lines, must name the reload at INFO.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.demo.provision import DemoTarget
from tests.fix_broker import Broker, masked_demo_policy, running_broker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worked(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, masked_demo_policy(), "--log-format", "json", "-v") as b:
        for sql in ("select 1", "select email from customers limit 2"):
            res = b.cli("exec", "demo", "-c", sql)
            assert res.returncode == 0, res.stderr
        refused = b.cli("exec", "demo", "-c", "delete from orders")
        assert refused.returncode != 0 and "42501" in refused.stderr
        yield b


def get(b: Broker, path: str) -> httpx.Response:
    profile = json.loads((b.config_dir / "profile.json").read_text())
    with httpx.Client(verify=profile["ca_file"], timeout=30) as client:
        return client.get(b.api_url + path)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_what_was_done(worked: Broker) -> None:
    res = get(worked, "/metrics")
    assert res.status_code == 200
    got = samples(res.text)
    demo = (("kind", "dev"), ("scope", "read"), ("target", "demo"))
    assert got[("dbaccess_sessions_started_total", demo)] == 3
    assert got[("dbaccess_credential_issue_seconds_count", (("target", "demo"),))] == 3
    assert got[("dbaccess_credential_revoke_seconds_count", (("target", "demo"),))] == 3
    assert got.get(("dbaccess_credential_revoke_failures_total", (("target", "demo"),)), 0) == 0
    assert got[("dbaccess_gateway_connections_total", ())] == 3
    assert got[("dbaccess_gateway_connections_active", ())] == 0
    assert got[("dbaccess_masking_rewrites_total", ())] == 1
    assert got[("dbaccess_masked_columns_total", ())] == 1
    blocked = {
        labels: n
        for (name, labels), n in got.items()
        if name == "dbaccess_guardrail_decisions_total"
    }
    assert list(blocked.values()) == [1]
    assert dict(next(iter(blocked)))["outcome"] == "blocked"
    assert got[("dbaccess_gateway_bytes_total", (("direction", "from_client"),))] > 0
    assert got[("dbaccess_gateway_bytes_total", (("direction", "from_target"),))] > 0
    assert got[("dbaccess_store_errors_total", ())] == 0


def test_health_and_readiness(worked: Broker) -> None:
    assert get(worked, "/healthz").json() == {"status": "ok"}
    ready = get(worked, "/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ok"] is True
    assert set(body["checks"]) == {"store", "policy", "target:demo"}


def test_the_log_is_json_lines_and_names_a_reload(worked: Broker) -> None:
    worked.reload()
    reloads: list[dict[str, object]] = []
    for _ in range(100):  # at most 10 s
        lines = [json.loads(line) for line in worked.log().splitlines() if line.startswith("{")]
        reloads = [r for r in lines if str(r["message"]).startswith("policy reloaded from")]
        if reloads:
            break
        time.sleep(0.1)
    assert reloads and reloads[0]["level"] == "INFO"

"""``dbaccess audit access``, ``audit report`` and ``audit verify`` against a real dev broker.

The access index of the broker's store gets the scripted day of
``test_access.py`` (as the recorder writes it), and a few audit events
(approvals, a refusal, a break-glass session, a revocation that was not
verified); then the real CLI answers as an auditor and as someone who may see
only their own statements, writes the report in each format, and the HTML
report is opened in headless Chromium (``tests/fix_browser.py``), its
screenshot saved as ``test-artifacts/audit/report.png``.  Editing the index
afterwards is what ``audit verify`` reports.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator

import pytest

from server.audit import chain
from server.demo.provision import DemoTarget
from server.store import tables as t
from server.store.db import Store
from tests import fix_browser
from tests.fix_broker import Broker, new_broker
from tests.fix_pg import make_tmp_dir
from tests.server.audit.test_access import record_day

pytestmark = pytest.mark.slow

SINCE = ["--since", "2026-11-30T00:00Z", "--until", "2026-12-02T00:00Z"]


@pytest.fixture(scope="module")
def day(demo_target: DemoTarget) -> Iterator[tuple[Broker, Store]]:
    b = new_broker(demo_target)
    b.start()
    store = Store.open(f"sqlite:///{b.data_dir / 'store.db'}")
    try:
        record_day(store)
        for kind, who, data in [
            ("request.approved", "carol", {"request_id": "r-review1", "comment": "ok for INC-9"}),
            ("statement.blocked", "bob", {"rule": "no_unbounded_delete", "statement": "delete"}),
            ("session.break_glass", "bob", {"reason": "outage", "rule": "break_glass"}),
            ("session.ended", "bob", {"revocation": {"verified": False, "detail": "role left"}}),
        ]:
            chain.append(store, kind, identity=who, target="prod", session_id="s-bob", data=data)
        yield b, store
    finally:
        store.close()


def cli_json(b: Broker, token: str, *args: str) -> object:
    res = b.cli("audit", *args, "-o", "json", token=token)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_auditors_see_everyone_others_only_their_own(day: tuple[Broker, Store]) -> None:
    b, _ = day
    auditor = b.token("audra", "auditor")
    got = cli_json(
        b,
        auditor,
        "access",
        "--table",
        "public.customers",
        "--column",
        "email",
        "--clear-only",
        *SINCE,
    )
    assert isinstance(got, list)
    assert [(r["identity"], r["session_id"], r["approval"]) for r in got] == [
        ("bob", "s-bob", "r-break"),
        ("bob", "s-bob", "r-review1"),
    ]
    assert {
        "relation": "public.customers",
        "column": "email",
        "action": "write",
        "state": "clear",
    } in got[1]["columns"]
    alice = b.token("alice", "dev")
    mine = cli_json(b, alice, "access", "--identity", "bob", *SINCE)
    assert mine == []
    mine = cli_json(b, alice, "access", "--table", "customers", *SINCE)
    assert isinstance(mine, list)
    assert [(r["identity"], r["on_behalf_of"]) for r in mine] == [
        ("helper-bot", "alice"),
        ("alice", None),
        ("alice", None),
        ("alice", None),
    ]
    agents = cli_json(b, auditor, "access", "--kind", "agent", "--since", "2026-12-01")
    assert isinstance(agents, list) and [r["identity"] for r in agents] == ["helper-bot"]


def test_summary_as_csv(day: tuple[Broker, Store]) -> None:
    b, _ = day
    res = b.cli(
        "audit",
        "access",
        "--summary",
        "--table",
        "customers",
        "-o",
        "csv",
        *SINCE,
        token=b.token("audra", "auditor"),
    )
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [(r["identity"], r["relation"], r["statements"], r["clear"]) for r in rows] == [
        ("alice", "public.customers", "3", "1"),
        ("bob", "public.customers", "2", "2"),
        ("ci-deploy", "sales.customers", "1", "1"),
        ("helper-bot (for alice)", "public.customers", "1", "0"),
    ]


def test_the_report_in_each_format_and_in_a_browser(day: tuple[Broker, Store]) -> None:
    b, _ = day
    auditor = b.token("audra", "auditor")
    report = cli_json_report(b, auditor)
    assert report["verification"]["ok"] is True
    assert report["refusals"]["by_rule"] == [{"rule": "no_unbounded_delete", "count": 1}]
    assert [x["column"] for x in report["masked"]["clear_accesses"]] == ["public.customers.email"]
    assert [x["detail"] for x in report["revocations"]["not_verified"]] == ["role left"]
    md = b.cli("audit", "report", "--format", "md", token=auditor)
    assert md.returncode == 0, md.stderr
    assert "## Break-glass sessions" in md.stdout
    assert "| approved | r-review1 | carol |" in md.stdout
    refused = b.cli("audit", "report", token=b.token("alice", "dev"))
    assert refused.returncode != 0 and "auditor" in refused.stderr

    out_dir = fix_browser.ARTIFACTS / "audit"
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "report.html"
    res = b.cli("audit", "report", "--format", "html", "--out", str(page), token=auditor)
    assert res.returncode == 0, res.stderr
    html = page.read_text()
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    home = make_tmp_dir("dbaccess-chromium-")
    try:
        driver = fix_browser.chrome(home)
        try:
            from selenium.webdriver.common.by import By

            driver.get(page.as_uri())
            assert driver.title == "dbaccess evidence report"
            bars = driver.find_elements(By.CSS_SELECTOR, "#chart-refusals rect")
            assert len(bars) == 1 and bars[0].size["width"] > 0
            assert "no_unbounded_delete" in driver.find_element(By.ID, "refusals").text
            assert "public.customers.email" in driver.find_element(By.ID, "clear").text
            driver.save_screenshot(str(out_dir / "report.png"))
        finally:
            driver.quit()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def cli_json_report(b: Broker, token: str) -> dict[str, object]:
    res = b.cli("audit", "report", "--format", "json", "--since", "30d", token=token)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert isinstance(data, dict)
    return data


def test_verify_finds_an_edited_access_event(day: tuple[Broker, Store]) -> None:
    b, store = day
    auditor = b.token("audra", "auditor")
    assert b.cli("audit", "verify", token=auditor).returncode == 0
    e = t.access_events.c
    with store.tx() as conn:
        conn.execute(
            t.access_events.update().where(e.session_id == "s-agent").values(identity="alice")
        )
    res = b.cli("audit", "verify", token=auditor)
    assert res.returncode == 8, res.stderr
    assert "access event 1 of session s-agent" in res.stderr

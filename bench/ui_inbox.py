"""Server time of the web inbox with many pending requests.

Fills a SQLite store with N pending requests (access requests and statement
reviews, each from a requester of its own) that one reviewer may decide, then
renders ``GET /ui/`` and the in-place refresh ``GET /ui/inbox/rows`` for that
reviewer through the broker's real app in this process, and prints the median
and the worst of several runs of the server's time (the page's own
``Server-Timing``: the session lookup, the approvals service's filtering, the
template) and of the whole round trip through the test client.  The goal:
under 200 ms of server time for 1,000 pending requests.

    .venv/bin/python bench/ui_inbox.py [--requests 1000] [--runs 15]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient

from server.api.app import GatewayInfo, create_app
from server.gateway.guardrails import statement_sha256
from server.policy import Identity, parse_policy
from server.sessions.service import SessionService
from server.store.db import Store
from server.ui.web import UiSettings, register

POLICY = textwrap.dedent(
    """\
    version: 1
    groups:
      dba: [reviewer]
    targets:
      demo:
        database: demo
        admin_dsn_env: DEMO_DSN
        scopes:
          write:
            grants: [demo_write]
            max_ttl: 1h
            allow: {groups: [dev]}
            approval:
              approvers: {groups: [dba]}
    """
)


def fill(service: SessionService, count: int) -> None:
    approvals = service.approvals
    rule = service.policy.targets["demo"].scopes["write"].approval
    for i in range(count):
        who = Identity(f"dev-{i:05d}", frozenset({"dev"}))
        if i % 2:
            approvals.create(who, "demo", "write", None, f"INC-{i}")
        else:
            text = f"UPDATE accounts SET balance = balance - {i} WHERE id = {i}"
            approvals.request_statement(
                requester=who.name, groups=who.groups, target="demo", scope="write",
                reason=f"INC-{i}", statement=text, sha256=statement_sha256(text, ()),
                rule=rule, ttl=timedelta(minutes=15), guardrail="review.requested",
            )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dbaccess-bench-ui-") as tmp:
        store = Store.open(f"sqlite:///{Path(tmp) / 'store.db'}")
        try:
            service = SessionService(store, parse_policy(POLICY, "policy.yaml"))
            started = time.perf_counter()
            fill(service, args.requests)
            print(f"{args.requests} pending requests made in {time.perf_counter() - started:.1f}s")
            app = create_app(service, GatewayInfo("127.0.0.1", 1, tls=True))
            register(app, service, UiSettings(dev_logins=(("reviewer", ("dev",)),)))
            http = TestClient(app, base_url="https://testserver", follow_redirects=False)
            page = http.get("/ui/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            http.post("/ui/login/dev", data={"csrf": csrf, "identity": "reviewer"})
            for path in ("/ui/", "/ui/inbox/rows"):
                server, trip = [], []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    answer = http.get(path)
                    trip.append((time.perf_counter() - t0) * 1000)
                    assert answer.status_code == 200
                    server.append(float(answer.headers["server-timing"].split("dur=")[1]))
                rows = answer.text.count("<tr data-request=")
                print(
                    f"GET {path:<16} {rows} rows, {len(answer.content) / 1024:.0f} KiB: "
                    f"server median {statistics.median(server):.1f} ms, "
                    f"worst {max(server):.1f} ms; round trip median "
                    f"{statistics.median(trip):.1f} ms"
                )
        finally:
            store.close()


if __name__ == "__main__":
    main()

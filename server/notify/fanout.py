"""One notifier that hands each event to several (the webhooks, the Slack app, ...).

Each member is called in turn; one that raises is logged and does not keep the
event from the others.  Members may be added after the fan-out is handed to the
approvals service (the Slack app needs that service before it can be made).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Member(Protocol):
    def notify(self, event: str, payload: Mapping[str, Any]) -> None: ...

    def close(self, timeout: float = 5.0) -> None: ...


class Fanout:
    def __init__(self, *members: Member) -> None:
        self.members = list(members)

    def add(self, member: Member) -> None:
        self.members.append(member)

    def notify(self, event: str, payload: Mapping[str, Any]) -> None:
        for member in self.members:
            try:
                member.notify(event, payload)
            except Exception:
                log.exception("notifier %s failed on %s", type(member).__name__, event)

    def close(self, timeout: float = 5.0) -> None:
        for member in self.members:
            member.close(timeout)

"""A recording writer process (``python -m tests.fix_writer_child``) that ends right
after it has committed its second batch, before it answers: the recorder must find
out from the store what it wrote (tests/server/audit/test_event_writes.py).  It
also prints to its standard output as it starts, as a chatty library or a
``.pth`` file might: that must not reach the recorder's answers."""

from __future__ import annotations

import os
from typing import IO

from server.audit import event_writes

print("a line on standard output, from a library", flush=True)

_send = event_writes._send
_answers = 0


def _send_then_end(pipe: IO[bytes], value: object) -> None:
    global _answers
    _answers += 1
    if _answers == 3:  # "ready", the first batch's answer, then the second's: not sent
        os._exit(1)
    _send(pipe, value)


if __name__ == "__main__":
    event_writes._send = _send_then_end
    event_writes.main()

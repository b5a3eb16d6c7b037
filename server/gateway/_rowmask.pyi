from collections.abc import Callable, Sequence

CONST: int
KEEP_LAST: int
DOMAIN: int

class Masker:
    def __init__(
        self,
        count: int,
        columns: Sequence[tuple[int, int, bytes, int]],
        slow: Callable[[bytes, int, list[bytes]], int],
    ) -> None: ...
    def rewrite(self, buf: bytes, pos: int, out: list[bytes]) -> int: ...

def scan(buf: bytes, hooked: bytes | None) -> tuple[int, int, int, int, int]: ...
def run(buf: bytes, pos: int) -> tuple[int, int, int]: ...

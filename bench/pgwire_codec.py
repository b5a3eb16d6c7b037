"""Micro-benchmark of the pgwire framing hot path.

Frames a stream of small DataRow messages (what a server sends most), fed in
socket-sized chunks so that messages straddle chunk boundaries as they do on a
real connection, and reports messages per second for each way the gateway can
consume it:

* ``drain_wire``    the relay fast path: message types + the bytes to forward in one write
* ``drain_frames``  raw messages (type + body) + the bytes to forward in one write
* ``drain_raw``     frames only
* ``next_raw``      one message per call
* ``naive``         a straightforward reference loop (bytearray, slice, del) run
                    in the same process on the same input, for the ratio
* ``decode``        typed decoding of every DataRow, for scale

Run: ``.venv/bin/python bench/pgwire_codec.py [--count N] [--chunk BYTES]``
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.gateway.pgwire import BackendParser, DataRow, decode_backend


def make_stream(count: int) -> tuple[bytes, int]:
    row = DataRow([b"42", b"hello world", None]).encode()
    return row * count, len(row)


def split(stream: bytes, chunk: int) -> list[bytes]:
    return [stream[i : i + chunk] for i in range(0, len(stream), chunk)]


def run_drain_wire(chunks: list[bytes]) -> int:
    parser = BackendParser()
    count = 0
    for data in chunks:
        parser.feed(data)
        types, _wire = parser.drain_wire()
        count += len(types)
    return count


def run_drain_frames(chunks: list[bytes]) -> int:
    parser = BackendParser()
    count = 0
    for data in chunks:
        parser.feed(data)
        raws, _wire = parser.drain_frames()
        count += len(raws)
    return count


def run_drain_raw(chunks: list[bytes]) -> int:
    parser = BackendParser()
    count = 0
    for data in chunks:
        parser.feed(data)
        count += len(parser.drain_raw())
    return count


def run_next_raw(chunks: list[bytes]) -> int:
    parser = BackendParser()
    count = 0
    for data in chunks:
        parser.feed(data)
        next_raw = parser.next_raw
        while next_raw() is not None:
            count += 1
    return count


def run_naive(chunks: list[bytes]) -> int:
    """The loop one writes first: a bytearray, a slice per field, del from the front."""
    buf = bytearray()
    msgs: list[tuple[int, bytes]] = []
    count = 0
    for data in chunks:
        buf += data
        while len(buf) >= 5:
            type_ = buf[0]
            (length,) = struct.unpack("!I", buf[1:5])
            if length < 4:
                raise ValueError("bad length")
            if len(buf) < 1 + length:
                break
            msgs.append((type_, bytes(buf[5 : 1 + length])))
            del buf[: 1 + length]
            count += 1
        msgs.clear()
    return count


def run_decode(chunks: list[bytes]) -> int:
    parser = BackendParser()
    count = 0
    for data in chunks:
        parser.feed(data)
        for raw in parser.drain_raw():
            decode_backend(raw)
            count += 1
    return count


def measure(fn: Callable[[list[bytes]], int], chunks: list[bytes], expected: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        got = fn(chunks)
        elapsed = time.perf_counter() - start
        if got != expected:
            raise SystemExit(f"{fn.__name__} framed {got} messages, expected {expected}")
        best = min(best, elapsed)
    return expected / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="DataRow messages")
    parser.add_argument("--chunk", type=int, default=65_536, help="bytes per feed")
    args = parser.parse_args()

    stream, row_size = make_stream(args.count)
    chunks = split(stream, args.chunk)
    print(
        f"{args.count:,} DataRow messages of {row_size} bytes "
        f"({len(stream) / 1e6:.1f} MB) in {len(chunks):,} chunks of {args.chunk:,} bytes; "
        "best of 3"
    )
    naive = measure(run_naive, chunks, args.count)
    results = [
        ("drain_wire", measure(run_drain_wire, chunks, args.count)),
        ("drain_frames", measure(run_drain_frames, chunks, args.count)),
        ("drain_raw", measure(run_drain_raw, chunks, args.count)),
        ("next_raw", measure(run_next_raw, chunks, args.count)),
        ("naive", naive),
        ("decode", measure(run_decode, chunks, args.count)),
    ]
    for name, rate in results:
        print(f"  {name:<13} {rate / 1e6:6.2f} M msg/s   {rate / naive:5.2f}x naive")


if __name__ == "__main__":
    main()

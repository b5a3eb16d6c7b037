"""What masking costs on the read path: 1,000,000 DataRows, two masked columns, vs none.

Two measurements, each against its reference taken in the same run:

* **end to end** — a throwaway PostgreSQL with the demo data; ``psql`` reads
  ``SELECT c.* FROM customers c, generate_series(...)`` (1M rows of
  id, full_name, email, phone, card_number, city, created_at) through a
  loopback relay that runs the gateway's relay code (``server.gateway.relay.Relay``)
  on the server's bytes.  The reference forwards the rows untouched; the masked
  runs mask ``email`` (``partial``: keep the domain) and ``card_number``
  (``partial``: keep the last 4), with the plan made from the real
  RowDescription through the real catalog.  Masked variants:

  - ``gateway`` the gateway's own masking hooks
                (``server.gateway.masking_relay.MaskingHooks`` on a ``Relay``,
                after the login, the psql Query fed to them): runs of DataRows
                through ``Relay.on_server_run`` and the C core
                ``server.gateway._rowmask`` -- the path the gateway uses;
  - ``gw-py``   the same with the C core switched off (``masking.rows.NATIVE``), the
                path of a machine where the core could not be built;
  - ``fused``   RowMasker.rewrite_rows over runs of DataRows in the relay's
                wire bytes, outside the hooks;
  - ``hook``    a Relay ``on_server`` hook per DataRow calling RowMasker.message;
  - ``naive``   decode each DataRow to values, mask, encode it again.

  ``fused`` and ``hook`` use the C core too where it is built.  Each variant
  runs ``--runs`` times interleaved; the best wall time and the best CPU time
  count.  ``gw+lim`` is ``gateway`` with the result limits a read scope has by
  default, ``rec+lim`` the gateway's path for an unmasked session with them (its
  hooks without rules), so their ratio is masked against unmasked as sessions
  have them.  The requirement: the masked read the gateway does (``gateway``, or
  ``gw-py`` without the core) takes at most 1.5 times the unmasked read
  (``plain``, the same relay code with no hooks), measured in the same run.

* **relay CPU only** — the same rows as bytes in 64 KiB chunks through the
  same relay code, without PostgreSQL, sockets or a client: process CPU time per
  row of the relay alone.  This is the masking cost itself, not diluted by the
  database and the client.  Here also the gateway's own hooks
  (``server.gateway.masking_relay.MaskingHooks``, after a Query the hooks see):

  - ``gateway`` the two masking rules, no content detectors (``gw-py``: without
                the C core);
  - ``gw+det``  the rules and the detectors for e-mail, card, national id and
                secrets: nothing is left for them to find (the masked columns
                are skipped), so this is the common case, one search per row;
  - ``gw+hit``  the rules and all five detectors: the clear ``phone`` column
                holds a phone number in every row, so every row is rewritten
                (the worst case);
  - ``gw+lim``  ``gateway`` with the result limits every session has
                (``server.gateway.result_limit``, a read scope's defaults: the
                1,000,000 rows are exactly at the limit, so nothing is cut);
  - ``rec``     an unmasked session: the recording's hooks only, and
    ``rec+lim`` the same with the result limits: what counting the rows costs.

Run: ``.venv/bin/python bench/masking.py [--rows 1000000] [--runs 3] [--cpu-only]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.gateway.catalog import Catalog, CatalogSnapshot
from server.gateway.masking import (
    ColumnRef,
    MaskingRules,
    MaskPlan,
    RowMasker,
    mask_value,
    plan_for_row_description,
)
from server.gateway.masking import rows as masking_rows
from server.gateway.masking_relay import MaskingHooks
from server.gateway.pgwire import (
    DataRow,
    Query,
    RawMessage,
    RowDescription,
    decode_backend,
    encode_raw,
)
from server.gateway.relay import Relay
from server.gateway.result_limit import Caps, ResultLimit
from server.policy.model import READ_LIMITS, DetectorAction, DetectorKind, MaskMethod, MaskRule

RULES = MaskingRules(
    (
        MaskRule(pattern="*email*", method=MaskMethod.PARTIAL, keep_domain=True),
        MaskRule(pattern="card_*", method=MaskMethod.PARTIAL, keep_last=4),
    )
)
QUERY = "SELECT c.* FROM generate_series(1, {reps}) g CROSS JOIN customers c LIMIT {rows}"
_T, _D = ord("T"), ord("D")
# CommandComplete, ErrorResponse, EmptyQueryResponse, ReadyForQuery; not PortalSuspended,
# after which the same portal goes on with the same columns.
_RESULT_ENDS = frozenset(b"CEIZ")

Origins = Callable[[int, int], ColumnRef | None]
Process = Callable[[bytes], bytes]


# --------------------------------------------------------------------------- the relays


def plain_relay() -> Process:
    relay = Relay()
    return lambda data: relay.from_server(data)[0]


class _Plans:
    """The plan of the current result, made when its RowDescription passes."""

    def __init__(self, origins: Origins) -> None:
        self.origins = origins
        self.plan: MaskPlan | None = None
        self.masker: RowMasker | None = None

    def row_description(self, body: bytes) -> bytes:
        desc = decode_backend(RawMessage(_T, body))
        assert isinstance(desc, RowDescription)
        plan = plan_for_row_description(desc.fields, self.origins, RULES, lambda: None)
        self.plan = None if plan.clear else plan
        self.masker = None if plan.clear else plan.masker([f.format for f in desc.fields])
        if self.plan is None:
            return encode_raw(_T, body)
        return RowDescription(plan.row_description(desc.fields)).encode()


def fused_relay(origins: Origins) -> Process:
    """The relay as it is, then each run of DataRows in its output rewritten in one call.

    A relay hook on RowDescription makes the plan (RowDescriptions are few, so
    the relay's slow path runs only for chunks that hold one) and queues its
    masker; walking the relay's output in order, a RowDescription switches to the
    next queued masker and the end of a result drops it.  Chunks of a result
    that is not masked are forwarded without a second look.
    """
    relay = Relay()
    plans = _Plans(origins)
    queued: deque[RowMasker | None] = deque()
    current: list[RowMasker | None] = [None]

    def on_row_description(raw: RawMessage, _relay: Relay) -> bytes:
        out = plans.row_description(raw.body)
        queued.append(plans.masker)
        return out

    relay.on_server(b"T", on_row_description)

    def process(data: bytes) -> bytes:
        wire = relay.from_server(data)[0]
        if current[0] is None and not queued:
            return wire
        out: list[bytes] = []
        pos, end = 0, len(wire)
        while pos < end:
            kind = wire[pos]
            masker = current[0]
            if kind == _D and masker is not None:
                pos = masker.rewrite_rows(wire, pos, out)
                if pos >= end:
                    break
                kind = wire[pos]
                # The relay hands over whole messages only, so the run ended at another type.
                assert kind != _D
            stop = pos + 1 + int.from_bytes(wire[pos + 1 : pos + 5], "big")
            if kind == _T:
                current[0] = queued.popleft()
            elif kind in _RESULT_ENDS:
                current[0] = None
            out.append(wire[pos:stop])
            pos = stop
        return b"".join(out)

    return process


def hook_relay(origins: Origins) -> Process:
    """Relay hooks, one call per DataRow."""
    relay = Relay()
    plans = _Plans(origins)

    def on_row_description(raw: RawMessage, _relay: Relay) -> bytes:
        return plans.row_description(raw.body)

    def on_data_row(raw: RawMessage, _relay: Relay) -> bytes | None:
        masker = plans.masker
        return None if masker is None else masker.message(raw.body)

    relay.on_server(b"T", on_row_description)
    relay.on_server(b"D", on_data_row)
    return lambda data: relay.from_server(data)[0]


def naive_relay(origins: Origins) -> Process:
    """Every DataRow decoded to values, the masked ones replaced, the row encoded again."""
    relay = Relay()
    plans = _Plans(origins)

    def on_row_description(raw: RawMessage, _relay: Relay) -> bytes:
        return plans.row_description(raw.body)

    def on_data_row(raw: RawMessage, _relay: Relay) -> bytes | None:
        plan = plans.plan
        if plan is None:
            return None
        row = decode_backend(raw)
        assert isinstance(row, DataRow)
        values = list(row.values)
        for index in plan.masked:
            rule = plan.fields[index].rule
            value = values[index]
            if rule is not None and value is not None:
                masked = mask_value(rule, plan.key, value.decode())
                values[index] = None if masked is None else masked.encode()
        return DataRow(values).encode()

    relay.on_server(b"T", on_row_description)
    relay.on_server(b"D", on_data_row)
    return lambda data: relay.from_server(data)[0]


BUILT = masking_rows.NATIVE  # whether the C core was built here


def _core(native: bool, make: Callable[[Origins], Process]) -> Callable[[Origins], Process]:
    """``make``, with the C core on or off for the maskers it compiles.  Variants run
    one after another, each on a fresh relay whose maskers are compiled at its first
    result, so the switch holds for the whole of a variant."""

    def made(origins: Origins) -> Process:
        masking_rows.NATIVE = native  # type: ignore[misc]
        return make(origins)

    return made


class _GatewayCatalog:
    """The real catalog (``Catalog``) as the gateway's masking hooks read it."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    @property
    def current(self) -> CatalogSnapshot | None:
        return self.catalog.current

    def invalidate(self) -> None:
        pass

    def reload_if_old(self) -> None:
        self.catalog.reload_if_old()

    def reload_missing(self) -> None:
        self.catalog.reload_missing()


def gateway_e2e(
    catalog: Catalog, sql: str, rules: MaskingRules = RULES, *, limited: bool = False
) -> Process:
    """The gateway's masking hooks on a relay, for psql's connection: the login's
    messages pass as they are, then the hooks are told of psql's Query (the client
    side of this loopback relay is not read) and the server's bytes go through them.
    ``limited``: with the result limits of a read scope's defaults, as the gateway has."""
    relay = Relay()
    MaskingHooks(rules, _GatewayCatalog(catalog), session_id="bench").install(relay)  # type: ignore[arg-type]
    if limited:
        ResultLimit(Caps.of(READ_LIMITS, "read")).install(relay)
    login = [bytearray()]

    def process(data: bytes) -> bytes:
        if not login:
            return relay.from_server(data)[0]
        held = login[0]
        held += data
        pos = 0
        while len(held) - pos >= 5:
            stop = pos + 1 + int.from_bytes(held[pos + 1 : pos + 5], "big")
            if stop > len(held):
                break
            if held[pos] == ord("Z"):
                login.clear()
                relay.from_client(Query(sql).encode())
                rest = bytes(held[stop:])
                return bytes(held[:stop]) + (relay.from_server(rest)[0] if rest else b"")
            pos = stop
        out = bytes(held[:pos])
        del held[:pos]
        return out

    return process


VARIANTS: dict[str, Callable[[Origins], Process]] = {
    "plain": lambda _origins: plain_relay(),
    "fused": _core(BUILT, fused_relay),
    "hook": _core(BUILT, hook_relay),
    "naive": naive_relay,
}
# The end-to-end variants that need the catalog and the statement: whether they use the
# C core, mask the two columns, and have the result limits.  ``rec+lim`` is what the
# gateway does for an unmasked session (its hooks with no rules, and the limits).
GATEWAY_E2E: dict[str, tuple[bool, bool, bool]] = {
    **({"gateway": (True, True, False)} if BUILT else {}),
    "gw-py": (False, True, False),
    "gw+lim": (BUILT, True, True),
    "rec+lim": (BUILT, False, True),
}


# --------------------------------------------------------------------------- relay CPU only

CPU_ORIGINS = {
    (16384, i + 1): ColumnRef("public", "customers", name, 25)
    for i, name in enumerate(
        ["id", "full_name", "email", "phone", "card_number", "city", "created_at"]
    )
}


def synthetic_stream(rows: int) -> bytes:
    from server.gateway.pgwire import CommandComplete, Field, ReadyForQuery

    names = ["id", "full_name", "email", "phone", "card_number", "city", "created_at"]
    # The demo table's types: integer, text..., timestamptz.
    types = [23, 25, 25, 25, 25, 25, 1184]
    desc = RowDescription(
        [
            Field(n, 16384, i + 1, t, -1, -1, 0)
            for i, (n, t) in enumerate(zip(names, types, strict=True))
        ]
    )
    block = b"".join(
        DataRow(
            [
                str(g).encode(),
                b"Grace Hopper",
                f"grace.hopper{g}@example.com".encode(),
                f"+1-555-{g % 1000:03d}-{g * 7919 % 10000:04d}".encode(),
                f"4{g * 982451653 % 10**14:014d}7".encode(),
                b"Lisbon",
                b"2024-01-01 07:13:00+00",
            ]
        ).encode()
        for g in range(1, 1001)
    )
    body = block * (rows // 1000)
    return (
        desc.encode()
        + body
        + CommandComplete(f"SELECT {rows}").encode()
        + ReadyForQuery("I").encode()
    )


class _CpuCatalog:
    """The synthetic customers table, as the gateway's catalog would give it."""

    current = CatalogSnapshot(CPU_ORIGINS, {16384: tuple(CPU_ORIGINS.values())}, loaded_at=0.0)

    def invalidate(self) -> None:
        pass

    def reload_if_old(self) -> None:
        pass

    def reload_missing(self) -> None:
        pass


def _detectors(*kinds: DetectorKind) -> MaskingRules:
    return MaskingRules(RULES.rules, RULES.key, {k: DetectorAction.MASK for k in kinds})


def gateway_relay(rules: MaskingRules, *, limited: bool = False) -> Callable[[Origins], Process]:
    """The gateway's masking hooks on a relay, after the Query whose result the rows are;
    ``limited``: with the result limits of a read scope's defaults, as the gateway has."""

    def make(_origins: Origins) -> Process:
        relay = Relay()
        MaskingHooks(rules, _CpuCatalog(), session_id="bench").install(relay)  # type: ignore[arg-type]
        if limited:
            ResultLimit(Caps.of(READ_LIMITS, "read")).install(relay)
        relay.from_client(Query("SELECT * FROM customers").encode())
        return lambda data: relay.from_server(data)[0]

    return make


_QUIET = (DetectorKind.EMAIL, DetectorKind.CARD, DetectorKind.NATIONAL_ID, DetectorKind.SECRET)
CPU_VARIANTS: dict[str, Callable[[Origins], Process]] = {
    **VARIANTS,
    **({"gateway": _core(True, gateway_relay(RULES))} if BUILT else {}),
    "gw-py": _core(False, gateway_relay(RULES)),
    "gw+lim": _core(BUILT, gateway_relay(RULES, limited=True)),
    "gw+det": _core(BUILT, gateway_relay(_detectors(*_QUIET))),
    "gw+hit": _core(BUILT, gateway_relay(_detectors(*DetectorKind))),
    # An unmasked session: the recording's hooks only, without and with the limits.
    "rec": gateway_relay(MaskingRules()),
    "rec+lim": gateway_relay(MaskingRules(), limited=True),
}


def cpu_only(rows: int, runs: int) -> dict[str, float]:
    stream = synthetic_stream(rows)
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    best: dict[str, float] = {}
    for _ in range(runs):
        for name, make in CPU_VARIANTS.items():
            process = make(lambda oid, attnum: CPU_ORIGINS.get((oid, attnum)))
            start = time.process_time()
            size = 0
            for chunk in chunks:
                size += len(process(chunk))
            elapsed = time.process_time() - start
            assert size > 0
            best[name] = min(best.get(name, float("inf")), elapsed)
    return best


# --------------------------------------------------------------------------- end to end


class _Relay:
    """A loopback TCP relay in its own thread: client bytes go up as they are, server bytes
    through ``process``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.make: Callable[[], Process] = lambda: lambda data: data
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            server = await self.loop.create_server(self._client, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def _client(self) -> asyncio.Protocol:
        return _ClientSide(self.upstream, self.make())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _ServerSide(asyncio.Protocol):
    def __init__(self, client: _ClientSide, process: Process) -> None:
        self.client = client
        self.process = process
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        out = self.process(data)
        if out and self.client.transport is not None:
            self.client.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _ClientSide(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int], process: Process) -> None:
        self.upstream = upstream
        self.process = process
        self.transport: asyncio.Transport | None = None
        self.server: _ServerSide | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _t, server = await loop.create_connection(
            lambda: _ServerSide(self, self.process), *self.upstream
        )
        self.server = server
        for data in self.pending:
            assert server.transport is not None
            server.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.server is None or self.server.transport is None:
            self.pending.append(data)
        else:
            self.server.transport.write(data)

    def pause_writing(self) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()


def _postgres_cpu(pgdata: Path) -> float:
    """CPU seconds of the cluster so far: the postmaster and every backend it has reaped."""
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def _cpu_now(pgdata: Path) -> float:
    """CPU seconds so far of the cluster, this process (the relay) and its children (psql)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return _postgres_cpu(pgdata) + usage.ru_utime + usage.ru_stime + time.process_time()


Timings = dict[str, float]


def end_to_end(rows: int, runs: int, variants: list[str]) -> tuple[Timings, Timings]:
    """Best wall time and best total CPU time (PostgreSQL + relay + psql) per variant."""
    from server.demo.provision import provision_demo
    from server.pgcluster import LocalCluster

    base = Path(tempfile.mkdtemp(prefix="dbaccess-bench-"))
    base.chmod(0o711)
    try:
        with LocalCluster(base / "pg") as cluster:
            demo = provision_demo(cluster)
            catalog = Catalog(demo.admin_dsn)
            catalog.snapshot()
            relay = _Relay((cluster.host, cluster.port))
            sql = QUERY.format(reps=rows // 300 + 1, rows=rows)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "PGHOST": "127.0.0.1",
                "PGPORT": str(relay.port),
                "PGUSER": cluster.superuser,
                "PGPASSWORD": cluster.password,
                "PGDATABASE": demo.database,
                "PGSSLMODE": "disable",
            }
            wall: dict[str, float] = {}
            cpu: dict[str, float] = {}
            try:
                for _ in range(runs):
                    for name in variants:
                        if name in GATEWAY_E2E:
                            native, masked, limited = GATEWAY_E2E[name]
                            rules = RULES if masked else MaskingRules()
                            made = _core(
                                native,
                                lambda _o, rules=rules, limited=limited: gateway_e2e(
                                    catalog, sql, rules, limited=limited
                                ),
                            )
                            relay.make = lambda made=made: made(catalog.origin)
                        else:
                            relay.make = lambda name=name: VARIANTS[name](catalog.origin)
                        before = _cpu_now(cluster.pgdata)
                        start = time.perf_counter()
                        res = subprocess.run(
                            ["psql", "-X", "-At", "-o", "/dev/null", "-c", sql],
                            env=env,
                            capture_output=True,
                            text=True,
                            check=False,
                        )
                        elapsed = time.perf_counter() - start
                        if res.returncode != 0:
                            raise SystemExit(f"psql failed through the {name} relay: {res.stderr}")
                        time.sleep(0.3)  # the backend exits and is reaped after psql
                        used = _cpu_now(cluster.pgdata) - before
                        wall[name] = min(wall.get(name, float("inf")), elapsed)
                        cpu[name] = min(cpu.get(name, float("inf")), used)
            finally:
                relay.stop()
            # What the client received is masked: one row through each masking variant's
            # hooks (and clear through the unmasked one's).
            sample = "SELECT email, card_number FROM customers LIMIT 1"
            for name, (native, masked, limited) in GATEWAY_E2E.items():
                relay = _Relay((cluster.host, cluster.port))
                relay.make = lambda native=native, masked=masked, limited=limited: _core(
                    native,
                    lambda _o: gateway_e2e(
                        catalog, sample, RULES if masked else MaskingRules(), limited=limited
                    ),
                )(catalog.origin)
                check = subprocess.run(
                    ["psql", "-X", "-At", "-c", sample],
                    env={**env, "PGPORT": str(relay.port)},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                relay.stop()
                print(f"sample row through {name}'s hooks: {check.stdout.strip()}")
                if ("***" in check.stdout) != masked:
                    raise SystemExit(f"{name}'s hooks did not mask the sample row as expected")
            masking_rows.NATIVE = BUILT  # type: ignore[misc]
            return wall, cpu
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu-only", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()

    cpu = cpu_only(args.rows, args.runs)
    print(f"relay CPU only, {args.rows:,} DataRows of 7 columns, 2 masked; best of {args.runs}")
    for name, seconds in cpu.items():
        print(
            f"  {name:<7} {seconds:7.3f} s  {seconds / args.rows * 1e6:6.2f} us/row"
            f"  {seconds / cpu['plain']:6.2f}x plain"
        )
    for limited, base in (("gw+lim", "gateway"), ("rec+lim", "rec")):
        if limited in cpu and base in cpu:
            print(f"  result limits: {limited} / {base} = {cpu[limited] / cpu[base]:.2f}x")
    if args.cpu_only:
        return
    names = ["plain", *GATEWAY_E2E, *(n for n in VARIANTS if n != "plain")]
    wall, cpu_total = end_to_end(args.rows, args.runs, names)
    print(f"end to end (PostgreSQL -> relay -> psql), {args.rows:,} rows; best of {args.runs}")
    print("  (CPU: PostgreSQL backend + relay + psql, which is what a loaded machine cannot skew)")
    for name in names:
        print(
            f"  {name:<7} wall {wall[name]:7.3f} s {wall[name] / wall['plain']:6.2f}x plain"
            f"   CPU {cpu_total[name]:7.3f} s {cpu_total[name] / cpu_total['plain']:6.2f}x plain"
        )
    used = "gateway" if BUILT else "gw-py"
    core = "with the C core" if BUILT else "pure Python: the C core is not built"
    ratio = cpu_total[used] / cpu_total["plain"]
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(
        f"masked read / unmasked read, the gateway's path ({used}, {core}), CPU: "
        f"{ratio:.2f}x (target <= 1.5x: {verdict})"
    )
    wall_ratio = wall[used] / wall["plain"]
    print(f"masked read / unmasked read, the gateway's path, wall: {wall_ratio:.2f}x")
    # As a session has them: both with the result limits, the unmasked one with the
    # gateway's hooks for a session without rules.
    print(
        "with the result limits (read scope defaults), masked (gw+lim) / unmasked (rec+lim): "
        f"CPU {cpu_total['gw+lim'] / cpu_total['rec+lim']:.2f}x, "
        f"wall {wall['gw+lim'] / wall['rec+lim']:.2f}x"
    )


if __name__ == "__main__":
    main()

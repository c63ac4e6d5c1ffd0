"""``onecard load``: drive a switch with real, signed-on terminals from a data set.

Closed loop: every connection keeps ``window`` requests in flight and sends a new one for each
reply. Requests are built and replies read by the compiled simulators in
``core/terminal.pyx`` in batches, so the generator's Python work is per received buffer.
Latency is measured per request from the moment it was built to the moment its reply was
read, into 1 µs buckets.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from onecard.core.state import (
    FN_FINANCIAL,
    FN_TRANSPORT,
    PROTO_ISO8583,
    TERM_BUS_READER,
    TERM_METRO_GATE,
    TERM_POS,
    TERM_VERIFIER,
)
from onecard.core.terminal import IsoLoad, NativeLoad, Recorder
from onecard.protocols.codes import CODES
from onecard.switch.terminals import (
    TerminalInfo,
    iso_signon,
    native_signon,
    read_terminals,
    usable_cards,
)

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
MAINLAND = (11, 12, 13, 31, 32, 33, 34, 44)


@dataclass
class LoadResult:
    protocol: str
    connections: int
    window: int
    seconds: float
    completed: int
    sent: int
    tps: float
    latency_ms: dict[str, float]
    codes: dict[str, int]
    unmatched: int
    timeline: list[tuple[float, int]] = field(default_factory=list)

    def summary(self) -> str:
        lat = "  ".join(f"{k} {v:.3f} ms" for k, v in self.latency_ms.items())
        total = max(self.completed, 1)
        codes = "  ".join(f"{c} {n:,} ({100 * n / total:.1f}%)"
                          for c, n in sorted(self.codes.items(), key=lambda kv: -kv[1]))
        return (f"onecard load: {self.protocol}, {self.connections} connections x window "
                f"{self.window}, {self.seconds:.1f} s\n"
                f"  completed {self.completed:,} requests ({self.tps:,.0f}/s)\n"
                f"  latency   {lat}\n"
                f"  codes     {codes}"
                + (f"\n  unmatched replies {self.unmatched}" if self.unmatched else ""))


def percentiles(hist: np.ndarray, max_us: int) -> dict[str, float]:
    total = int(hist.sum())
    out: dict[str, float] = {}
    if total == 0:
        return out
    cum = np.cumsum(hist)
    for p in PERCENTILES:
        rank = max(1, int(np.ceil(total * p / 100)))
        us = int(np.searchsorted(cum, rank))
        out[f"p{p:g}"] = us / 1000
    out["max"] = max_us / 1000
    return out


class LoadConnection(asyncio.Protocol):
    def __init__(self, sim, window: int, budget: list[int], stop: asyncio.Event) -> None:
        self.sim = sim
        self.window = window
        self.budget = budget          # shared remaining request count ([-1] = unbounded)
        self.stop = stop
        self.buf = bytearray()
        self.in_flight = 0
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def _take(self, n: int) -> int:
        if self.stop.is_set():
            return 0
        if self.budget[0] >= 0:
            n = min(n, self.budget[0])
            self.budget[0] -= n
        return n

    def connection_made(self, transport) -> None:
        self.transport = transport
        n = self._take(self.window)
        if n:
            self.in_flight += n
            transport.write(self.sim.build(n))

    def data_received(self, data: bytes) -> None:
        if self.buf:
            self.buf += data
            data = self.buf
        consumed, completed = self.sim.parse(data)
        if data is self.buf:
            del self.buf[:consumed]
        elif consumed < len(data):
            self.buf += data[consumed:]
        self.in_flight -= completed
        n = self._take(completed)
        if n:
            self.in_flight += n
            self.transport.write(self.sim.build(n))
        elif self.in_flight <= 0 and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(exc)


def _pick_iso(terminals: list[TerminalInfo], n: int, rng: random.Random) -> list[TerminalInfo]:
    pos = [t for t in terminals if t.kind == TERM_POS and t.protocol == PROTO_ISO8583
           and t.province in MAINLAND]
    if len(pos) < n:
        raise SystemExit(f"onecard load: only {len(pos)} POS terminals in the data set, "
                         f"asked for {n} connections")
    return rng.sample(pos, n)


def _pick_native(terminals: list[TerminalInfo], n: int, rng: random.Random) -> list[list]:
    """Per connection: two gates at different stations of one metro, a bus reader and a
    verifier of the same province."""
    gates_by_op: dict[int, list[TerminalInfo]] = {}
    for t in terminals:
        if t.kind == TERM_METRO_GATE:
            gates_by_op.setdefault(t.operator, []).append(t)
    buses = [t for t in terminals if t.kind == TERM_BUS_READER]
    verifiers = [t for t in terminals if t.kind == TERM_VERIFIER]
    ops = sorted(gates_by_op)
    used: set[str] = set()
    sets = []
    for i in range(n):
        gates = [g for g in gates_by_op[ops[i % len(ops)]] if g.tid not in used]
        if len(gates) < 2:
            raise SystemExit("onecard load: not enough metro gates for that many connections")
        a = gates[0]
        b = next((g for g in gates if g.station_id != a.station_id), gates[1])
        province = a.province
        bus = next((t for t in buses if t.province == province and t.tid not in used), None)
        ver = next((t for t in verifiers if t.province == province and t.tid not in used), None)
        if bus is None or ver is None:
            raise SystemExit("onecard load: not enough bus readers or verifiers for that many "
                             "native connections")
        for t in (a, b, bus, ver):
            used.add(t.tid)
        sets.append([("gate_in", a), ("gate_out", b), ("bus", bus), ("verifier", ver)])
    return sets


def _signed_on(host: str, port: int, fn, t: TerminalInfo) -> bytes:
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            return fn(sock, t)
    except OSError as exc:
        raise SystemExit(f"onecard load: cannot sign on {t.tid} at {host}:{port}: {exc} "
                         "(is `onecard serve` running there?)") from exc


async def _run(args, sims: list, recorder: Recorder, progress: bool) -> tuple[float, list]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    budget = [args.count if args.count else -1]
    conns: list[LoadConnection] = []
    for sim in sims:
        _, proto = await loop.create_connection(
            lambda s=sim: LoadConnection(s, args.window, budget, stop), args.host, args.port)
        conns.append(proto)
    started = time.perf_counter()
    timeline = []
    deadline = started + (args.duration if args.duration else 3600.0)
    last = 0
    while time.perf_counter() < deadline:
        if all(c.done.done() for c in conns):
            break
        await asyncio.sleep(max(0.0, min(1.0 if progress else 0.1,
                                         deadline - time.perf_counter())))
        now = time.perf_counter() - started
        done = recorder.completed
        timeline.append((round(now, 3), int(done)))
        if progress:
            print(f"  {now:6.1f} s  {done:>12,} replies  {done - last:>10,}/s", file=sys.stderr,
                  flush=True)
        last = done
    stop.set()
    elapsed = time.perf_counter() - started
    # Let requests in flight finish (bounded), so every sent request is accounted for.
    try:
        await asyncio.wait_for(asyncio.gather(*(c.done for c in conns if c.in_flight > 0)), 10)
    except TimeoutError:
        pass
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return elapsed, timeline


def run(args, *, progress: bool = True) -> LoadResult:
    rng = random.Random(args.seed)
    data_dir = Path(args.data_dir)
    terminals = read_terminals(data_dir)
    recorder = Recorder()
    sims = []
    cards: dict[tuple[int, int], np.ndarray] = {}

    def pans_for(province: int, functions: int, min_balance_fen: int) -> np.ndarray:
        key = (province, functions)
        if key not in cards:
            cards[key] = usable_cards(data_dir, province=province, functions=functions,
                                      min_balance_fen=min_balance_fen)
        return cards[key]

    if args.protocol == "iso8583":
        for i, t in enumerate(_pick_iso(terminals, args.connections, rng)):
            mak = _signed_on(args.host, args.port, iso_signon, t)
            pans = pans_for(t.province, FN_FINANCIAL, 10_000)
            sims.append(IsoLoad(recorder, t.tid, t.merchant, t.mac_alg, mak, pans,
                                balance_share=args.balance_share, seed=args.seed + i,
                                first_stan=rng.randint(1, 900_000)))
    else:
        for i, group in enumerate(_pick_native(terminals, args.connections, rng)):
            spec = []
            for role, t in group:
                mak = _signed_on(args.host, args.port, native_signon, t)
                spec.append((role, t.tid, t.mac_alg, mak, t.station_id))
            pans = pans_for(group[0][1].province, FN_TRANSPORT, 2_000)
            sims.append(NativeLoad(recorder, spec, pans, verify_share=args.verify_share,
                                   bus_share=args.bus_share, seed=args.seed + i))
    if progress:
        what = f"{args.duration} s" if args.duration else f"{args.count:,} requests"
        print(f"onecard load: {len(sims)} terminals signed on; running {what}", file=sys.stderr)
    try:
        import uvloop
        elapsed, timeline = uvloop.run(_run(args, sims, recorder, progress))
    except ImportError:
        elapsed, timeline = asyncio.run(_run(args, sims, recorder, progress))
    codes = {CODES[i][0]: int(n) for i, n in enumerate(recorder.codes) if n and i < len(CODES)}
    return LoadResult(args.protocol, args.connections, args.window, elapsed,
                      int(recorder.completed), int(recorder.sent),
                      recorder.completed / elapsed if elapsed else 0.0,
                      percentiles(recorder.histogram, recorder.max_us), codes,
                      int(recorder.unmatched), timeline)


def add_arguments(p) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="default: 8583 for iso8583, 8584 for native")
    p.add_argument("--protocol", choices=("iso8583", "native"), default="iso8583")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--window", type=int, default=8, help="requests in flight per connection")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, help="seconds to run (default 10)")
    g.add_argument("--count", type=int, help="requests to send in all")
    p.add_argument("--balance-share", type=float, default=0.1,
                   help="iso8583: share of balance inquiries among requests (0..1)")
    p.add_argument("--verify-share", type=float, default=0.1,
                   help="native: share of identity verifications")
    p.add_argument("--bus-share", type=float, default=0.2, help="native: share of bus taps")
    p.add_argument("--data-dir", default="onecard-data",
                   help="data set the terminals, keys and cards come from")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the result as JSON to this file")


def main(args) -> int:
    if args.port is None:
        args.port = 8583 if args.protocol == "iso8583" else 8584
    if not args.duration and not args.count:
        args.duration = 10.0
    if args.connections < 1 or args.window < 1 or args.window > 4096:
        raise SystemExit("onecard load: --connections >= 1 and 1 <= --window <= 4096")
    if args.duration and args.duration > 3600:
        raise SystemExit("onecard load: --duration is limited to 3600 s")
    result = run(args)
    print(result.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2))
    return 0

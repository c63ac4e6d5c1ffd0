"""``onecard load``: drive a switch with real, signed-on terminals from a data set.

Closed loop (``--window``): every connection keeps that many requests in flight and sends a
new one for each reply. Open loop (``--rate``): requests are sent on a fixed schedule whatever
the replies do, and latency is measured from each request's *scheduled* time, so queueing in
the switch (or in a generator that falls behind) shows up in the figures instead of being
hidden. ``--processes`` spreads the connections over several generator processes when one
cannot keep the switch busy. Requests are built and replies read by the compiled simulators in
``core/terminal.pyx``; the Python work is per received buffer.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import multiprocessing as mp
import os
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onecard.bench.loadresult import (
    LoadResult,
    compare,
    encode_hdr,
    hdr_from_buckets,
    percentiles_ms,
    plot,
)
from onecard.core.state import (
    FN_FINANCIAL,
    FN_TRANSPORT,
    PROTO_ISO8583,
    TERM_BUS_READER,
    TERM_METRO_GATE,
    TERM_POS,
    TERM_VERIFIER,
)
from onecard.protocols.codes import CODES
from onecard.switch.terminals import (
    TerminalInfo,
    iso_signon,
    iso_signon_key,
    iso_signon_request,
    native_signon,
    read_terminals,
    usable_cards,
)

MAINLAND = (11, 12, 13, 31, 32, 33, 34, 44)
MAX_IN_FLIGHT = 60_000          # per connection, below the simulators' 65,536 tracked slots
TICK_US = 1000                  # open loop: how often each connection's schedule is checked
LATE_NS = 100_000               # open loop: a request sent later than this after due is "late"
MIXED_ISO_SHARE = 0.3           # "mixed": share of connections that are POS terminals


@dataclass
class ConnSpec:
    protocol: str                                # "iso8583" or "native"
    port: int
    terminals: list[tuple[str, TerminalInfo]]
    province: int
    seed: int


# ---- plan: which terminals each connection plays -------------------------------------------


def _iso_specs(terminals: list[TerminalInfo], n: int, port: int, rng: random.Random,
               provinces: tuple[int, ...] = MAINLAND) -> list:
    # Merchants' POS (the catalogue's FIN-PAY): plain purchases, comparable from release to
    # release; canteens and pharmacies add their own rules (age tiers, per-application limits).
    pos = [t for t in terminals if t.kind == TERM_POS and t.protocol == PROTO_ISO8583
           and t.province in provinces and t.app in ("", "FIN-PAY")]
    if len(pos) < n:
        raise SystemExit(f"onecard load: only {len(pos)} POS terminals in the data set, "
                         f"asked for {n} ISO 8583 connections")
    return [ConnSpec("iso8583", port, [("pos", t)], t.province, rng.randrange(1 << 30))
            for t in rng.sample(pos, n)]


def _native_specs(terminals: list[TerminalInfo], n: int, port: int,
                  rng: random.Random, province: int = 0) -> list:
    """Per connection: gates at two stations of one metro network, and a bus reader and a
    verifier of the same province (a station concentrator and its neighbours); only the
    networks of ``province`` when given (0: every network)."""
    gates_by_op: dict[int, list[TerminalInfo]] = {}
    for t in terminals:
        if t.kind == TERM_METRO_GATE and province in (0, t.province):
            assert t.operator is not None       # a metro gate is its network operator's
            gates_by_op.setdefault(t.operator, []).append(t)
    buses = [t for t in terminals if t.kind == TERM_BUS_READER]
    verifiers = [t for t in terminals if t.kind == TERM_VERIFIER]
    ops = sorted(gates_by_op)
    if not ops and n:
        where = f" in province {province}" if province else ""
        raise SystemExit(f"onecard load: the data set has no metro gates{where} for native "
                         "connections")
    used: set[str] = set()
    specs = []

    def free(kind: list[TerminalInfo], province: int) -> TerminalInfo | None:
        return next((t for t in kind if t.province == province and t.tid not in used), None)

    for i in range(n):
        # Networks in turn; one whose province has no gate pair, bus reader or verifier left
        # is passed over (Beijing's demo data has 6 verifiers for 80 gates).
        for op in ops[i % len(ops):] + ops[:i % len(ops)]:
            gates = [g for g in gates_by_op[op] if g.tid not in used]
            if len(gates) >= 2 and free(buses, gates[0].province) is not None \
                    and free(verifiers, gates[0].province) is not None:
                break
        else:
            raise SystemExit(f"onecard load: the data set's metro gates, bus readers and "
                             f"verifiers make {i} native connections, asked for {n} (each "
                             f"needs its own two gates, bus reader and verifier)")
        a = gates[0]
        b = next((g for g in gates if g.station_id != a.station_id), gates[1])
        bus, ver = free(buses, a.province), free(verifiers, a.province)
        assert bus is not None and ver is not None      # both found free above
        used.update(t.tid for t in (a, b, bus, ver))
        specs.append(ConnSpec("native", port, [("gate_in", a), ("gate_out", b), ("bus", bus),
                                               ("verifier", ver)], a.province,
                              rng.randrange(1 << 30)))
    return specs


def plan(args, terminals: list[TerminalInfo]) -> list[ConnSpec]:
    rng = random.Random(args.seed)
    province = getattr(args, "terminal_province", 0)
    if args.protocol == "iso8583":
        provinces = (province,) if province else MAINLAND
        return _iso_specs(terminals, args.connections, args.port, rng, provinces)
    if args.protocol == "native":
        # A regional switch serves the terminals of its own provinces: another province's
        # gates would send their taps to the wrong acquirer (and its cards' catalogue).
        return _native_specs(terminals, args.connections, args.port, rng, province)
    n_iso = max(1, round(args.connections * MIXED_ISO_SHARE))
    return (_iso_specs(terminals, n_iso, args.port, rng)
            + _native_specs(terminals, args.connections - n_iso, args.native_port, rng))


# ---- one generator process ------------------------------------------------------------------


def _signed_on(host: str, port: int, fn, t: TerminalInfo, skip: bool = False) -> bytes:
    if skip:
        return os.urandom(16)              # --no-signon: a peer that does not check MACs
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            return fn(sock, t)
    except OSError as exc:
        raise SystemExit(f"onecard load: cannot sign on {t.tid} at {host}:{port}: {exc} "
                         "(is `onecard serve` running there?)") from exc


def _simulators(host: str, specs: list[ConnSpec], data_dir: Path, opts: dict, recorder):
    from onecard.core.terminal import IsoLoad, NativeLoad

    pools: dict[tuple[int, int], np.ndarray] = {}
    # Regional switches: cards of another province (and the data set that holds them), so
    # that every request is forwarded to that province's region (docs/regions.md).
    cards_dir = Path(opts["cards_data_dir"]) if opts["cards_data_dir"] else data_dir

    def pans(province: int, functions: int, min_balance_fen: int) -> np.ndarray:
        province = opts["card_province"] or province
        if (province, functions) not in pools:
            pools[province, functions] = usable_cards(cards_dir, province=province,
                                                      functions=functions,
                                                      min_balance_fen=min_balance_fen,
                                                      kek_file=opts["kek_file"])
            if not len(pools[province, functions]):
                raise SystemExit(f"onecard load: no usable cards of province {province} in "
                                 f"{cards_dir}")
        return pools[province, functions]

    sims = []
    for spec in specs:
        if spec.protocol == "iso8583":
            t = spec.terminals[0][1]
            mak = _signed_on(host, spec.port, iso_signon, t, opts["no_signon"])
            sims.append(IsoLoad(recorder, t.tid, t.merchant, t.mac_alg, mak,
                                pans(spec.province, FN_FINANCIAL, 10_000),
                                balance_share=opts["balance_share"], seed=spec.seed,
                                first_stan=spec.seed % 900_000 + 1))
        else:
            roles = [(role, t.tid, t.mac_alg,
                      _signed_on(host, spec.port, native_signon, t, opts["no_signon"]),
                      t.station_id) for role, t in spec.terminals]
            sims.append(NativeLoad(recorder, roles, pans(spec.province, FN_TRANSPORT, 2_000),
                                   verify_share=opts["verify_share"],
                                   bus_share=opts["bus_share"], seed=spec.seed))
    return sims


class LoadConnection(asyncio.Protocol):
    """One terminal's connection. An ISO 8583 POS (``terminal`` given) that is answered 77
    (the switch's cut-over: its session is of the previous settlement date) stops sending,
    signs on again once nothing is in flight, and goes on with the new key: a run across
    the cut-over counts only the few requests in flight when it came."""

    def __init__(self, sim, window: int, budget: list[int], stop: asyncio.Event,
                 phase_ns: int = 0, terminal: TerminalInfo | None = None) -> None:
        self.sim = sim
        self.window = window          # closed loop: requests in flight; 0 = open loop
        self.phase_ns = phase_ns      # open loop: this connection's schedule starts this late
        self.late = 0                 # open loop: requests sent more than LATE_NS after due
        self.lag_max_ns = 0           # open loop: the most a request left after it was due
        self.budget = budget          # shared remaining request count ([-1] = unbounded)
        self.stop = stop
        self.buf = bytearray()
        self.in_flight = 0
        self.scheduled = 0            # open loop: requests scheduled so far
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.terminal = terminal
        self.holding = False          # answered 77: no new request until signed on again
        self.signing_on = False       # the 0800 is out; the next reply is its 0810
        self.signons = 0              # sign-ons after a 77

    def _take(self, n: int) -> int:
        if self.stop.is_set() or self.holding or self.signing_on:
            return 0
        if self.budget[0] >= 0:
            n = min(n, self.budget[0])
            self.budget[0] -= n
        return n

    def _send(self, n: int, first_ns: int = 0, interval_ns: int = 0) -> None:
        self.in_flight += n
        assert self.transport is not None       # sending starts at connection_made
        self.transport.write(self.sim.build(n, first_ns, interval_ns))

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.window:
            n = self._take(self.window)
            if n:
                self._send(n)

    def finished(self) -> bool:
        """Nothing in flight and nothing left to send (a connection whose last reply came
        before another took the last of the budget gets no reply to notice that by)."""
        return self.done.done() or (self.in_flight <= 0 and self.budget[0] == 0)

    def tick(self, start_ns: int, now_ns: int, rate: float) -> bool:
        """Open loop: send what the schedule says is due by now (request k at
        ``start + phase + k / rate``). False when the in-flight limit stops it (the switch
        is not keeping up)."""
        elapsed_ns = now_ns - start_ns - self.phase_ns
        if elapsed_ns < 0:
            return True
        due = int(elapsed_ns * rate / 1e9) + 1 - self.scheduled
        if due <= 0:
            return True
        if self.in_flight + due > MAX_IN_FLIGHT:
            return False
        n = self._take(due)
        if n:
            first_ns = start_ns + self.phase_ns + int(self.scheduled * 1e9 / rate)
            interval_ns = int(1e9 / rate)
            self._send(n, first_ns, interval_ns)
            # The generator's own lateness, so that a tail can be told from the switch's:
            # request i was due at first + i * interval and left now.
            lag_ns = now_ns - first_ns
            self.lag_max_ns = max(self.lag_max_ns, lag_ns)
            if lag_ns > LATE_NS:
                self.late += min(n, -(-(lag_ns - LATE_NS) // max(interval_ns, 1)))
        self.scheduled += due
        return True

    def data_received(self, data: bytes | bytearray) -> None:
        if self.signing_on:
            self.buf += data
            if not self._signed_on():
                return
            data = self.buf
        elif self.buf:
            self.buf += data
            data = self.buf
        consumed, completed = self.sim.parse(data)
        if data is self.buf:
            del self.buf[:consumed]
        elif consumed < len(data):
            self.buf += data[consumed:]
        self.in_flight -= completed
        if self.terminal is not None and self.sim.stale:
            self.sim.stale = 0
            self.holding = True
        if self.holding and self.in_flight <= 0 and not self.stop.is_set():
            self.holding, self.signing_on = False, True
            # Holding is for a POS given its terminal; the reply came over the transport.
            assert self.terminal is not None and self.transport is not None
            self.transport.write(iso_signon_request(self.terminal))
            return
        if self.window:
            n = self._take(completed)
            if n:
                self._send(n)
        if self.in_flight <= 0 and (self.stop.is_set() or self.budget[0] == 0):
            if not self.done.done():
                self.done.set_result(None)

    def _signed_on(self) -> bool:
        """The 0810 of the sign-on after a 77, once whole in the buffer: the new key in use,
        the window refilled. False while it is incomplete."""
        if len(self.buf) < 2 or len(self.buf) < 2 + int.from_bytes(self.buf[:2], "big"):
            return False
        end = 2 + int.from_bytes(self.buf[:2], "big")
        assert self.terminal is not None        # only a POS given its terminal signs on again
        self.sim.rekey(iso_signon_key(self.terminal, bytes(self.buf[2:end])))
        del self.buf[:end]
        self.signing_on = False
        self.signons += 1
        if self.window:
            n = self._take(self.window)
            if n:
                self._send(n)
        return True

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(exc)


async def _drive(host: str, specs: list[ConnSpec], sims: list, opts: dict, recorder,
                 progress, slot: int) -> dict:
    from onecard.core.terminal import monotonic_ns_py

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    budget = [opts["count"] if opts["count"] else -1]
    rate = opts["rate"]                                   # per connection
    conns = []
    for spec, sim, phase in zip(specs, sims, opts["phases"], strict=True):
        phase_ns = int(phase * 1e9 / rate) if rate else 0
        pos = (spec.terminals[0][1] if spec.protocol == "iso8583" and not opts["no_signon"]
               else None)
        _, c = await loop.create_connection(
            functools.partial(LoadConnection, sim, opts["window"], budget, stop, phase_ns, pos),
            host, spec.port)
        conns.append(c)
    started = time.perf_counter()
    start_ns = monotonic_ns_py()
    deadline = started + opts["duration"]
    overloaded = False
    last_report = 0.0
    while time.perf_counter() < deadline:
        if all(c.finished() for c in conns):
            break
        if rate:
            now = monotonic_ns_py()
            for c in conns:
                if not c.tick(start_ns, now, rate):
                    overloaded = True
            if overloaded:
                break
            await asyncio.sleep(opts["tick_us"] / 1e6)
        else:
            await asyncio.sleep(0.05)
        if time.perf_counter() - last_report > 0.05:
            progress[slot] = recorder.completed
            last_report = time.perf_counter()
    stop.set()
    elapsed = time.perf_counter() - started
    pending = [c.done for c in conns if c.in_flight > 0 and not c.done.done()]
    if pending:
        await asyncio.wait(pending, timeout=10)    # let the requests in flight finish
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    progress[slot] = recorder.completed
    return {"seconds": elapsed, "overloaded": overloaded,
            "late": sum(c.late for c in conns),
            "lag_max_ns": max((c.lag_max_ns for c in conns), default=0)}


def worker(host: str, specs: list[ConnSpec], data_dir: str, opts: dict, barrier, progress,
           slot: int, out) -> None:
    """Body of one generator process: sign on, wait for the others, drive, report."""
    from onecard.core.terminal import Recorder

    try:
        recorder = Recorder()
        sims = _simulators(host, specs, Path(data_dir), opts, recorder)
        # A full collection mid-run would stall this process's sends and show up as the
        # switch's latency (see the same freeze in `onecard serve`).
        gc.collect()
        gc.freeze()
        barrier.wait(120)
        import uvloop

        run = uvloop.run(_drive(host, specs, sims, opts, recorder, progress, slot))
        out.send({"histogram": recorder.histogram, "answered": recorder.answered,
                  "codes": recorder.codes,
                  "completed": int(recorder.completed), "sent": int(recorder.sent),
                  "unmatched": int(recorder.unmatched), "max_us": int(recorder.max_us), **run})
    except BaseException as exc:  # the parent reports it; a child must not die silently
        barrier.abort()
        out.send({"error": f"{type(exc).__name__}: {exc}"})


# ---- the parent ------------------------------------------------------------------------------


def run(args, *, progress_output: bool = True) -> LoadResult:
    terminals = read_terminals(args.data_dir, args.kek_file)
    specs = plan(args, terminals)
    n_proc = max(1, min(args.processes, len(specs)))
    chunks = [specs[i::n_proc] for i in range(n_proc)]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_proc + 1)
    progress = ctx.Array("Q", n_proc, lock=False)
    # Open loop: each connection sends rate / connections, its schedule offset by its share
    # of one interval so that the arrivals are spread evenly rather than in bursts of one
    # request from every connection at once.
    opts = {"window": 0 if args.rate else args.window,
            "rate": args.rate / len(specs) if args.rate else 0.0,
            "duration": args.duration if args.duration else 3600.0,
            "balance_share": args.balance_share, "verify_share": args.verify_share,
            "bus_share": args.bus_share, "no_signon": args.no_signon,
            "tick_us": args.tick_us, "card_province": args.card_province,
            "cards_data_dir": args.cards_data_dir, "kek_file": args.kek_file}
    procs, pipes = [], []
    for i, chunk in enumerate(chunks):
        count = 0
        if args.count:
            count = args.count * len(chunk) // len(specs) + (1 if i < args.count * len(chunk)
                                                            % len(specs) else 0)
        parent_end, child_end = ctx.Pipe(duplex=False)
        phases = [(i + j * n_proc) / len(specs) for j in range(len(chunk))]
        p = ctx.Process(target=worker, args=(args.host, chunk, str(args.data_dir),
                                             {**opts, "count": count, "phases": phases},
                                             barrier, progress, i, child_end), daemon=True)
        p.start()
        procs.append(p)
        pipes.append(parent_end)
    try:
        barrier.wait(180)
    except Exception as exc:
        errors = [r["error"] for r in (p.recv() for p in pipes if p.poll(5)) if "error" in r]
        raise SystemExit("onecard load: " + ("; ".join(errors) or "generators did not start")
                         ) from exc
    if progress_output:
        how = f"{args.duration:g} s" if args.duration else f"{args.count:,} requests"
        loop = f"open loop at {args.rate:,.0f}/s" if args.rate else f"window {args.window}"
        print(f"onecard load: {len(specs)} connections signed on in {n_proc} process(es); "
              f"{loop}; running {how}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    timeline = [(0.0, 0)]
    last = 0
    while any(p.is_alive() for p in procs) and not all(pp.poll() for pp in pipes):
        time.sleep(1.0 if progress_output else 0.2)
        now = time.perf_counter() - started
        done = int(sum(progress))
        timeline.append((round(now, 3), done))
        if progress_output:
            print(f"  {now:6.1f} s  {done:>12,} replies  {done - last:>10,}/s", file=sys.stderr,
                  flush=True)
        last = done
    results = [p.recv() for p in pipes]
    for p in procs:
        p.join(30)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise SystemExit("onecard load: " + "; ".join(errors))
    buckets = sum(r["histogram"] for r in results)
    codes_arr = sum(r["codes"] for r in results)
    hist = hdr_from_buckets(buckets)
    seconds = max(r["seconds"] for r in results)
    completed = sum(r["completed"] for r in results)
    latency = percentiles_ms(hist)
    if latency:
        latency["max"] = max(r["max_us"] for r in results) / 1000
    answered = percentiles_ms(hdr_from_buckets(sum(r["answered"] for r in results)))
    return LoadResult(
        protocol=args.protocol, mode="open" if args.rate else "closed",
        connections=len(specs), processes=n_proc, window=0 if args.rate else args.window,
        rate=float(args.rate or 0), seconds=seconds, completed=completed,
        sent=sum(r["sent"] for r in results), tps=completed / seconds if seconds else 0.0,
        latency_ms=latency, latency_answered_ms=answered,
        codes={CODES[i][0]: int(n) for i, n in enumerate(codes_arr) if n and i < len(CODES)},
        unmatched=sum(r["unmatched"] for r in results),
        overloaded=any(r["overloaded"] for r in results), timeline=timeline,
        late_sends=sum(r["late"] for r in results),
        send_lag_max_ms=max(r["lag_max_ns"] for r in results) / 1e6,
        histogram=encode_hdr(hist))


def add_arguments(p) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int,
                   help="switch port (default 8583 for iso8583 and mixed, 8584 for native)")
    p.add_argument("--native-port", type=int, default=8584, help="mixed: the native port")
    p.add_argument("--protocol", choices=("iso8583", "native", "mixed"), default="iso8583",
                   help="mixed: 30%% POS connections, 70%% gates/readers/verifiers")
    p.add_argument("--connections", type=int, default=16)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--window", type=int, default=8,
                   help="closed loop: requests in flight per connection")
    g.add_argument("--rate", type=float,
                   help="open loop: requests per second in all, on a fixed schedule")
    p.add_argument("--tick-us", type=int, default=TICK_US,
                   help="open loop: how often the schedule is checked (default 1000: requests "
                   "leave up to ~1 ms late, and that counts in their latency); 0 spins the "
                   "generator's core for microsecond timing (pin it with taskset)")
    h = p.add_mutually_exclusive_group()
    h.add_argument("--duration", type=float, help="seconds to run (default 10)")
    h.add_argument("--count", type=int, help="requests to send in all")
    p.add_argument("--processes", type=int, default=1, help="generator processes")
    p.add_argument("--balance-share", type=float, default=0.1,
                   help="ISO 8583: share of balance inquiries among requests (0..1)")
    p.add_argument("--verify-share", type=float, default=0.1,
                   help="native: share of identity verifications")
    p.add_argument("--bus-share", type=float, default=0.2, help="native: share of bus taps")
    p.add_argument("--data-dir", default="onecard-data",
                   help="data set the terminals, keys and cards come from")
    p.add_argument("--kek-file", metavar="FILE",
                   help="the data set's key-encryption key (default: $ONECARD_KEK, else "
                        "DATA_DIR.kek beside it), as [security] kek_file")
    p.add_argument("--terminal-province", type=int, default=0, metavar="CODE",
                   help="POS terminals (iso8583) or gates, bus readers and verifiers "
                   "(native) of this province only (default: mainland; native: any)")
    p.add_argument("--card-province", type=int, default=0, metavar="CODE",
                   help="use cards of this issuing province (default: each terminal's own); "
                   "with regional switches, another region's cards are forwarded")
    p.add_argument("--cards-data-dir", metavar="DIR",
                   help="data set the cards come from (default --data-dir): another region's")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-signon", action="store_true",
                   help="skip sign-on (for peers that do not check MACs, e.g. bench.echo_server)")
    p.add_argument("--json", help="write the result as JSON to this file")
    p.add_argument("--plot", help="write a PNG plot (latency by percentile, throughput)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="compare two result files (and plot them with --plot) instead of "
                   "running")


def main(args) -> int:
    if args.compare:
        a, b = (LoadResult.load(f) for f in args.compare)
        name_a, name_b = (Path(f).stem for f in args.compare)
        print(compare(a, b, (name_a, name_b)))
        if args.plot:
            plot([(Path(f).stem, r) for f, r in zip(args.compare, (a, b), strict=True)],
                 args.plot)
        return 0
    if args.port is None:
        args.port = 8584 if args.protocol == "native" else 8583
    if not args.duration and not args.count:
        args.duration = 10.0
    if args.connections < 1 or not 1 <= args.window <= 4096 or args.processes < 1:
        raise SystemExit("onecard load: --connections >= 1, 1 <= --window <= 4096, "
                         "--processes >= 1")
    if args.duration and args.duration > 3600:
        raise SystemExit("onecard load: --duration is limited to 3600 s")
    if args.rate is not None and args.rate <= 0:
        raise SystemExit("onecard load: --rate must be positive")
    if not 0 <= args.tick_us <= 100_000:
        raise SystemExit("onecard load: --tick-us must be 0..100000")
    result = run(args)
    print(result.summary())
    if args.rate and args.tick_us and result.late_sends > 0.1 * result.sent:
        print(f"  (the schedule is checked every {args.tick_us} µs; `--tick-us 0`, pinned with "
              "taskset, sends on time)")
    if args.json:
        result.save(args.json)
    if args.plot:
        plot([(f"{result.protocol} {result.mode}", result)], args.plot)
    return 0

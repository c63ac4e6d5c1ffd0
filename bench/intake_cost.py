"""The intake's own cost per request, without the kernel or the event loop: 64 connections x
window 1 driven in-process (a transport whose ``write`` is C, a committer that takes the
records at once, a loop that runs what was ``call_soon``-ed after each round of reads),
against the core alone on as many purchases. What is left is the intake's per-read and
per-release work (switch/intake.py, core/intake.pyx, switch/durability.py).

    python -m onecard.bench.intake_cost --data-dir D            # µs a request, best of 5
    python -m onecard.bench.intake_cost --data-dir D --rounds 100 --only intake

Wall-clock figures drift on a shared VM; for instructions run ``--only core`` and
``--only intake`` under ``valgrind --tool=callgrind`` at two ``--rounds`` and take
(intake(300) - intake(100) - core(300) + core(100)) / (64 x 200): setup cancels out.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from onecard.bench.core_rate import purchase_buffers
from onecard.core.engine import ISO8583, Engine
from onecard.core.journal import Journal
from onecard.switch.admission import Admission
from onecard.switch.config import ServerConfig
from onecard.switch.durability import Durability
from onecard.switch.intake import Connection, Intake

CONNECTIONS = 64


class Transport:
    """Enough of an asyncio transport; ``write`` is a C function (no bytecode counted)."""

    write = staticmethod(len)

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        pass


class Committer:
    """Takes the records at once (the writer's own cost is not the intake's); the driver
    makes them durable after each round of reads, as a commit would."""

    def __init__(self, no: int) -> None:
        self.submitted_no = self.durable_no = no

    full_retries = 0

    def submit(self, journal: Journal) -> int:
        journal.take()
        self.submitted_no = journal.next_no
        return self.submitted_no

    # The rest of store.backend.JournalWriter: no thread, no failure, never full.
    def run(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def failure(self) -> str | None:
        return None

    def full_error(self) -> str | None:
        return None


class Loop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def run(self) -> None:
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()


def build(data_dir: Path, requests: int) -> tuple[Engine, Iterator[bytes], Durability,
                                                  Committer, Loop, list[Connection]]:
    engine, _, _, buffers = purchase_buffers(data_dir, requests, 1)
    it = iter(buffers)
    for _ in range(CONNECTIONS * 20):                # warm up
        engine.process(ISO8583, next(it))
        engine.journal.take()
    committer = Committer(engine.journal.next_no)
    loop = Loop()
    durability = Durability(engine, committer, engine.journal.next_no, 100_000, lambda no: None)
    durability.start(loop)  # type: ignore[arg-type]
    admission = Admission(ServerConfig(latency_budget_ms=0), durability.waiting)
    intake = Intake(engine, admission, durability, 1 << 16)
    conns = []
    for _ in range(CONNECTIONS):
        conn = intake.protocol(ISO8583)
        conn.connection_made(Transport())  # type: ignore[arg-type]
        conns.append(conn)
    return engine, it, durability, committer, loop, conns


def core_rounds(engine: Engine, it: Iterator[bytes], committer: Committer, rounds: int) -> None:
    for _ in range(rounds):
        for _ in range(CONNECTIONS):
            engine.process(ISO8583, next(it))
        committer.submit(engine.journal)


def intake_rounds(it: Iterator[bytes], durability: Durability, committer: Committer,
                  loop: Loop, conns: list[Connection], rounds: int) -> None:
    for _ in range(rounds):
        for conn in conns:
            conn.data_received(next(it))
        loop.run()                                   # the iteration's records to the writer
        committer.durable_no = committer.submitted_no
        durability.released(committer.durable_no)    # the commit's signal


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=200, help="reads of every connection")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", choices=("core", "intake"), help="one part once (for callgrind)")
    args = p.parse_args()
    per = CONNECTIONS * args.rounds
    repeats = 1 if args.only else args.repeats
    engine, it, durability, committer, loop, conns = build(
        args.data_dir, CONNECTIONS * 20 + 2 * per * repeats)
    core, both = [], []
    for _ in range(repeats):
        if args.only != "intake":
            start = time.perf_counter()
            core_rounds(engine, it, committer, args.rounds)
            core.append((time.perf_counter() - start) / per)
            committer.durable_no = committer.submitted_no
            durability.released(committer.durable_no)
        if args.only != "core":
            start = time.perf_counter()
            intake_rounds(it, durability, committer, loop, conns, args.rounds)
            both.append((time.perf_counter() - start) / per)
    assert not durability.waiting
    if core and both:
        c, b = min(core) * 1e6, min(both) * 1e6
        print(f"core alone {c:.2f} µs a request, through the intake {b:.2f} µs: the intake's "
              f"own {b - c:.2f} µs (best of {repeats}, {per:,} requests each)")


if __name__ == "__main__":
    main()

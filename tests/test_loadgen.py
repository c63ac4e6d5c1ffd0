"""The open-loop schedule of ``onecard load``: requests are stamped with the time they were
due, leave as soon as they are due (not an interval late, which read as latency), and the
connections' schedules are spread over an interval instead of all firing at once. And the
native connections' terminals: as many connections as the data set's terminals allow."""

import argparse
import asyncio

import pytest

from onecard.bench.loadgen import LoadConnection, plan
from onecard.switch.terminals import read_terminals


class Sim:
    def __init__(self) -> None:
        self.stamps: list[int] = []

    def build(self, n: int, first_ns: int, interval_ns: int) -> bytes:
        self.stamps += [first_ns + i * interval_ns for i in range(n)]
        return b"x" * n


class Transport:
    def write(self, data: bytes) -> None:
        pass


def connections(n: int, rate_per_conn: float) -> list[LoadConnection]:
    conns = []
    for j in range(n):
        c = LoadConnection(Sim(), 0, [-1], asyncio.Event(),
                           phase_ns=int(j / n * 1e9 / rate_per_conn))
        c.transport = Transport()
        conns.append(c)
    return conns


def test_requests_leave_when_due_stamped_with_their_due_time():
    async def main():
        start = 1_000_000_000
        conns = connections(4, 1000.0)           # 1 ms apart on each, 4 connections
        for c in conns:
            assert c.tick(start, start, 1000.0)
        # At the start only the first connection's first request is due, stamped "now".
        assert [c.sim.stamps for c in conns] == [[start], [], [], []]
        now = start + 2_600_000                   # 2.6 ms later
        for c in conns:
            c.tick(start, now, 1000.0)
        stamps = sorted(s for c in conns for s in c.sim.stamps)
        # Every 250 µs one request, none stamped after it was sent, none left waiting.
        assert stamps == [start + k * 250_000 for k in range(11)]
        assert all(s <= now for s in stamps)
        # The generator's own lateness is counted: of the 10 sent at 2.6 ms, all but the
        # one due at 2.5 ms left more than 0.1 ms after their time; the worst, 2.35 ms.
        assert sum(c.late for c in conns) == 9
        assert max(c.lag_max_ns for c in conns) == 2_350_000
    asyncio.run(main())


def test_a_long_run_sends_the_rate_asked_for():
    async def main():
        start, rate = 5_000_000, 333.0
        conns = connections(3, rate)
        for t in range(0, 1_000_000_000, 70_000):      # ticks every 70 µs for a second
            for c in conns:
                c.tick(start, start + t, rate)
        sent = sum(len(c.sim.stamps) for c in conns)
        assert abs(sent - 3 * rate) <= 3
    asyncio.run(main())


def native(connections: int) -> argparse.Namespace:
    return argparse.Namespace(protocol="native", connections=connections, port=9999, seed=1)


def test_native_connections_use_every_province_before_giving_up(demo_dir):
    terminals = read_terminals(demo_dir)
    # 64 used to fail: networks were taken strictly in turn, and Beijing's 6 verifiers ran
    # out at its seventh connection.
    specs = plan(native(64), terminals)
    assert len(specs) == 64
    tids = [t.tid for s in specs for _, t in s.terminals]
    assert len(tids) == len(set(tids)) == 64 * 4        # no terminal on two connections
    for s in specs:
        roles = dict(s.terminals)
        assert {t.province for t in roles.values()} == {s.province}
        assert roles["gate_in"].operator == roles["gate_out"].operator
    with pytest.raises(SystemExit, match=r"make \d+ native connections, asked for 10000"):
        plan(native(10_000), terminals)

"""The open-loop schedule of ``onecard load``: requests are stamped with the time they were
due, leave as soon as they are due (not an interval late, which read as latency), and the
connections' schedules are spread over an interval instead of all firing at once. And the
native connections' terminals: as many connections as the data set's terminals allow, of
one province when asked."""

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


def native(connections: int, province: int = 0) -> argparse.Namespace:
    return argparse.Namespace(protocol="native", connections=connections, port=9999, seed=1,
                              terminal_province=province)


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


class StaleSim:
    """Each byte received is one reply; every reply is 77 until the terminal is re-keyed."""

    def __init__(self) -> None:
        self.stale = 0
        self.keys: list[bytes] = []
        self.sent = 0

    def build(self, n: int, first_ns: int = 0, interval_ns: int = 0) -> bytes:
        self.sent += n
        return b"r" * n

    def parse(self, data) -> tuple[int, int]:
        if not self.keys:
            self.stale += len(data)
        return len(data), len(data)

    def rekey(self, mak: bytes) -> None:
        self.keys.append(mak)


class Wire:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def test_a_pos_answered_77_signs_on_again_and_goes_on_with_the_new_key(demo_dir):
    """The cut-over (日切) during a run: the connection stops sending, signs on once its
    requests are answered, takes the 0810's key and refills its window."""
    from onecard.core import crypto, isocodec
    from onecard.core.state import TERM_POS

    info = next(t for t in read_terminals(demo_dir) if t.kind == TERM_POS)

    async def main():
        sim, wire = StaleSim(), Wire()
        c = LoadConnection(sim, 4, [-1], asyncio.Event(), terminal=info)
        c.connection_made(wire)
        assert wire.writes == [b"rrrr"] and c.in_flight == 4
        c.data_received(b"ab")                         # two answered 77: hold
        c.data_received(b"cd")                         # the rest: sign on, nothing else
        _, mti, fields = isocodec.decode_message(wire.writes[-1][2:])
        assert (mti, fields[41], len(wire.writes)) == ("0800", info.tid, 2)
        mak = bytes(range(16))
        keys = (b"\0" * 20 + crypto.encrypt_key(info.alg_name, info.tmk, mak)
                + crypto.key_check_value(info.alg_name, mak))
        reply = isocodec.encode_message(bytes.fromhex("6000000003603100000000"), "0810", {
            11: "000001", 39: "00", 41: info.tid, 42: info.merchant, 62: keys})
        c.data_received(reply[:5])                     # in pieces, as TCP may give it
        assert sim.keys == [] and len(wire.writes) == 2
        c.data_received(reply[5:])
        assert sim.keys == [mak] and c.signons == 1
        assert wire.writes[-1] == b"rrrr" and c.in_flight == 4
    asyncio.run(main())


def test_the_pos_simulator_counts_the_replies_answered_77(demo_dir):
    import numpy as np

    from onecard.core import isocodec
    from onecard.core.state import TERM_POS
    from onecard.core.terminal import IsoLoad, Recorder

    info = next(t for t in read_terminals(demo_dir) if t.kind == TERM_POS)
    sim = IsoLoad(Recorder(), info.tid, info.merchant, info.mac_alg, bytes(16),
                  np.array([6231310000000000011], dtype=np.uint64))
    sim.build(2)
    replies = b"".join(isocodec.encode_message(
        bytes.fromhex("6000000003603100000000"), "0210",
        {11: f"{stan:06d}", 39: rc, 41: info.tid}) for stan, rc in ((1, "77"), (2, "00")))
    assert sim.parse(replies) == (len(replies), 2) and sim.stale == 1
    sim.rekey(bytes(range(16)))                       # the next sign-on's key
    with pytest.raises(ValueError, match="bad MAC key"):
        sim.rekey(b"short")


def test_native_connections_keep_to_the_terminal_province(demo_dir):
    """A regional switch serves its own provinces' gates (issue 27: the taps `cluster up
    --regions` prints are Shanghai gates with Jiangsu cards, approved by the joint catalogue;
    a Beijing gate among them would be refused 62)."""
    terminals = read_terminals(demo_dir)
    specs = plan(native(4, 31), terminals)
    assert len(specs) == 4
    assert {t.province for s in specs for _, t in s.terminals} == {31}
    with pytest.raises(SystemExit, match="no metro gates in province 81"):
        plan(native(1, 81), terminals)

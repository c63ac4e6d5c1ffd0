"""The whole path from received bytes to reply bytes (split, decode, MAC check, authorise,
encode, reply MAC): Engine.process against the obvious Python switch's request handler."""

import sqlite3

from onecard.bench.naive_switch import NaiveSwitch
from onecard.core.engine import ISO8583

from .support import record


def test_buffer_to_replies_onecard(benchmark, iso_source, n):
    engine = iso_source.engine

    def run(buf):
        consumed, replies, _, _ = engine.process(ISO8583, buf)
        engine.journal.take()
        return consumed, replies

    consumed, replies = benchmark.pedantic(
        run, setup=lambda: ((iso_source.purchases(n),), {}),
        rounds=20 if not benchmark.disabled else 1)
    assert consumed > 0 and replies
    codes = engine.metrics.counts[ISO8583].sum(axis=0)
    assert codes[0] > 0.9 * codes.sum()
    record(benchmark, "received buffer to reply bytes", "onecard", n)


def test_buffer_to_replies_python(benchmark, iso_source, data_dir, pos, n):
    naive = NaiveSwitch(data_dir)
    naive.db = sqlite3.connect(":memory:")        # no fsync: the same work as Engine.process
    naive.db.execute("CREATE TABLE journal (tid, stan, pan, amount, rc, ts)")
    naive.keys[pos.tid] = iso_source.mak

    def run(buf):
        out, p = [], 0
        while p < len(buf):
            size = int.from_bytes(buf[p:p + 2], "big")
            out.append(naive.handle(buf[p + 2:p + 2 + size]))
            p += 2 + size
        return out

    replies = benchmark.pedantic(run, setup=lambda: ((iso_source.purchases(n),), {}),
                                 rounds=5 if not benchmark.disabled else 1)
    assert len(replies) == n
    record(benchmark, "received buffer to reply bytes", "peer", n)

"""Group commit: the GIL-free committer writing a batch of journal records as one packed row,
against the obvious way (a row per record with the stdlib sqlite3 module, one commit).

Both end in one fsync, which on a shared virtual disk varies more than the rest; batches of
10 x n records make the per-record work, where the two differ, the larger part."""

import os
import threading
import time

from onecard.core.commit import GroupCommitter
from onecard.core.engine import ISO8583
from onecard.core.journal import unpack
from onecard.switch.store import sqlite

from .support import record


def _db(tmp_path):
    path = tmp_path / "bench.db"
    conn = sqlite.connect(path)
    sqlite.create_schema(conn)
    conn.close()
    return path


def test_group_commit_onecard(benchmark, iso_source, tmp_path, n):
    engine = iso_source.engine
    engine.journal.take()
    efd = os.eventfd(0)
    committer = GroupCommitter(str(_db(tmp_path)), efd, engine.journal.next_no)
    writer = threading.Thread(target=committer.run)
    writer.start()

    def setup():
        for _ in range(10):                                   # 10 x n records pending
            engine.process(ISO8583, iso_source.purchases(n))
        return (), {}

    def commit():
        end = committer.submit(engine.journal)
        while committer.durable_no < end:
            time.sleep(0)
        return end

    try:
        benchmark.pedantic(commit, setup=setup, rounds=20 if not benchmark.disabled else 1)
    finally:
        committer.stop()
        writer.join(10)
        os.close(efd)
    assert committer.failure() is None
    record(benchmark, "durable commit of a batch of records", "onecard", 10 * n)


def test_group_commit_sqlite_rows(benchmark, iso_source, tmp_path, n):
    engine = iso_source.engine
    conn = sqlite.connect(_db(tmp_path))
    conn.execute("CREATE TABLE rows (no, ts_us, terminal, seq, card, amount, balance, rc)")

    def setup():
        for _ in range(10):
            engine.process(ISO8583, iso_source.purchases(n))
        first, blob = engine.journal.take()
        recs = unpack(blob)
        rows = [(first + i, int(r["ts_us"]), int(r["terminal"]), int(r["seq"]),
                 int(r["card"]), int(r["amount_fen"]), int(r["balance_fen_after"]),
                 int(r["rc"]))
                for i, r in enumerate(recs)]
        return (rows,), {}

    def commit(rows):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO rows VALUES (?,?,?,?,?,?,?,?)", rows)
        conn.execute("COMMIT")

    benchmark.pedantic(commit, setup=setup, rounds=20 if not benchmark.disabled else 1)
    record(benchmark, "durable commit of a batch of records", "peer", 10 * n)

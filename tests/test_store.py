"""Store housekeeping: the GIL-free group committer and background WAL checkpoints."""

import os
import sqlite3
import threading
import time

import numpy as np
import pytest

from onecard.core.commit import GroupCommitter
from onecard.core.journal import RECORD_DTYPE, Journal
from onecard.switch.store import sqlite
from onecard.switch.store.snapshots import Checkpointer


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "onecard.db"
    conn = sqlite.connect(path)
    sqlite.create_schema(conn)
    conn.close()
    return path


def test_group_committer_writes_numbered_rows_and_signals(db, world):
    efd = os.eventfd(0)
    committer = GroupCommitter(str(db), efd, 0)
    thread = threading.Thread(target=committer.run)
    thread.start()
    t = world.iso()                                     # sign-on: one journal record
    pan, _ = world.card()
    t.send(*[t.purchase(pan, 100) for _ in range(9)])
    journal: Journal = world.engine.journal
    assert committer.submit(journal) == 10 and journal.pending == 0
    deadline = time.monotonic() + 10
    while committer.durable_no < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert os.eventfd_read(efd) >= 1
    committer.stop()
    thread.join(10)
    assert committer.durable_no == 10 and committer.failure() is None
    conn = sqlite3.connect(db)
    recs, nos = sqlite.journal_records(conn)
    assert list(nos) == list(range(10)) and recs.dtype == RECORD_DTYPE
    assert int(np.sum(recs["amount_fen"])) == 900
    os.close(efd)


def test_committer_reports_a_failed_commit(db, world):
    efd = os.eventfd(0)
    committer = GroupCommitter(str(db), efd, 0)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO journal (first_no, n, ts_us, records, format) "
                 "VALUES (0, 1, 0, x'00', 2)")                  # number 0 already taken
    conn.commit()
    thread = threading.Thread(target=committer.run)
    thread.start()
    world.iso()
    committer.submit(world.engine.journal)
    thread.join(10)
    assert not thread.is_alive()
    assert "UNIQUE" in committer.failure() and committer.durable_no == 0
    os.close(efd)


def test_wal_is_checkpointed_in_the_background_once_large(db, tmp_path):
    conn = sqlite.connect(db)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    blob = bytes(64 * 1024)
    for i in range(40):                                 # ~2.6 MB of WAL
        conn.execute("INSERT INTO journal (first_no, n, ts_us, records, format) "
                     "VALUES (?, 1, 0, ?, 2)", (i, blob))
    wal = tmp_path / "onecard.db-wal"
    assert wal.stat().st_size > 2 << 20 and db.stat().st_size < 1 << 20
    cp = Checkpointer(tmp_path, db, 2, wal_limit_bytes=1 << 20, wal_interval_s=0.05)
    cp.start()
    deadline = time.monotonic() + 10
    while db.stat().st_size < 2 << 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    cp.stop()
    cp.join(10)
    assert db.stat().st_size > 2 << 20                  # the pages were copied into the db
    conn.close()


def test_small_wal_is_left_alone(db, tmp_path):
    conn = sqlite.connect(db)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO journal (first_no, n, ts_us, records, format) "
                 "VALUES (0, 1, 0, x'00', 2)")
    size = db.stat().st_size
    cp = Checkpointer(tmp_path, db, 2, wal_limit_bytes=1 << 20, wal_interval_s=0.05)
    cp.start()
    time.sleep(0.3)
    assert db.stat().st_size == size
    cp.stop()
    cp.join(10)
    conn.close()


def test_wal_is_started_over_under_steady_commits(db, tmp_path, world):
    """Under continuous commits a background checkpoint never catches the writer; with the
    writer finishing the copy, SQLite writes the WAL from its start again, so the file
    stays near the limit instead of growing with every commit (and nothing is lost)."""
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    committer = GroupCommitter(str(db), efd, 0)
    writer = threading.Thread(target=committer.run)
    writer.start()
    cp = Checkpointer(tmp_path, db, 2, wal_limit_bytes=256 << 10, wal_interval_s=0.01,
                      committer=committer)
    cp.start()
    journal: Journal = world.engine.journal
    t = world.iso()
    pan, _ = world.card()
    wal = tmp_path / "onecard.db-wal"
    deadline = time.monotonic() + 30
    commits = 0
    # Each commit writes at least one 4 KiB page: 3,000 of them are 12 MB of WAL if it is
    # never started over.
    while commits < 3000 and time.monotonic() < deadline:
        t.send(t.purchase(pan, 1))
        need = committer.submit(journal)
        while committer.durable_no < need and time.monotonic() < deadline:
            time.sleep(0)
        commits += 1
    cp.stop()
    cp.join(10)
    committer.stop()
    writer.join(10)
    assert commits == 3000 and committer.failure() is None
    assert committer.wal_restarts >= 1 and committer.catch_ups >= 1
    assert wal.stat().st_size < 4 << 20
    recs, nos = sqlite.journal_records(sqlite3.connect(db))
    assert list(nos) == list(range(committer.durable_no))
    assert int(np.sum(recs["amount_fen"])) == 3000
    os.close(efd)


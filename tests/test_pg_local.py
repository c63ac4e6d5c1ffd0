"""bench/pg_local.py's primary with one synchronous standby (issue 14's "pg-sync" topology):
a committed row is on the standby, and with the standby down a commit on the primary waits."""

from __future__ import annotations

import threading
import time

import pytest

from onecard.bench import pg_local

psycopg = pytest.importorskip("psycopg", reason="these tests need psycopg 3")
if pg_local.bin_dir() is None:
    pytest.skip("no PostgreSQL server installed (/usr/lib/postgresql/*/bin/initdb; .ci/run "
                "installs Debian's postgresql)", allow_module_level=True)

WAIT_S = 2.0            # long enough that an unblocked commit on loopback would be done
BOUND_S = 60.0          # every wait below is bounded by this


def _count_on(server: pg_local.LocalServer, table: str) -> int:
    return int(server.sql(f"SELECT count(*) FROM {table}"))


def _until(check, timeout_s: float = BOUND_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_commit_reaches_the_standby_and_waits_for_it():
    pair = pg_local.start_pair()
    try:
        assert pair.sync_state() in ("sync", "quorum")
        with psycopg.connect(pair.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
        # synchronous_commit=on waits for the standby's flush, not its replay: poll briefly.
        assert _until(lambda: _count_on(pair.standby, "t") == 1)

        pair.standby.halt("fast")
        done = threading.Event()

        def insert() -> None:
            with psycopg.connect(pair.dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO t VALUES (2)")
            done.set()

        writer = threading.Thread(target=insert, daemon=True)
        writer.start()
        # No standby to acknowledge it: the commit must not return.
        assert not done.wait(WAIT_S)
        pair.standby.launch()
        assert done.wait(BOUND_S)          # the standby back: the commit is acknowledged
        writer.join(BOUND_S)
        assert _until(lambda: _count_on(pair.standby, "t") == 2)
    finally:
        pair.stop()

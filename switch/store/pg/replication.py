"""The PostgreSQL primary's standbys as the switch sees them (issue 17: the dashboard's
replication row and the replica-lag alert): a thread asks the primary's
``pg_stat_replication`` every few seconds on its own connection, so that a slow or failing
database never holds up a scrape or the event loop; the collector reads the last answer.

Lag in bytes is the primary's current WAL position less what each standby has replayed; lag
in seconds is PostgreSQL's own ``replay_lag`` (0 once a standby is idle and caught up). The
LSN columns need the ``pg_monitor`` role (docs/postgresql.md): without it PostgreSQL shows
them as NULL and only the standbys' count and states are exported.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("onecard.pg.replication")

POLL_S = 5.0
STATEMENT_TIMEOUT_MS = 2_000
UNREACHABLE_POLLS = 3                    # /readyz: not ready after this many failed polls
QUERY = ("SELECT application_name, state, sync_state, "
         "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
         "coalesce(extract(epoch FROM replay_lag), 0)::float8 FROM pg_stat_replication "
         "ORDER BY application_name")


@dataclass(frozen=True)
class Standby:
    name: str               # application_name (Patroni: the member's name)
    state: str              # streaming, catchup, ...
    sync_state: str         # sync, quorum, potential, async
    lag_bytes: int | None   # None: not allowed to see it (no pg_monitor)
    lag_s: float


class ReplicationMonitor(threading.Thread):
    def __init__(self, dsn: str, poll_s: float = POLL_S) -> None:
        super().__init__(name="onecard-pg-replication", daemon=True)
        assert poll_s > 0
        self.dsn = dsn
        self.poll_s = poll_s
        self.standbys: tuple[Standby, ...] = ()
        self.ok = False                      # the last poll reached a primary
        self.polls_failed = 0
        self.failing = 0                     # polls failed in a row (readiness)
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        from onecard.switch.store.pg.connect import connect, one_line, store_errors

        pg = None
        while not self._stopping.is_set():
            try:
                if pg is None or pg.closed:
                    pg = connect(self.dsn, autocommit=True)
                    pg.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
                rows = pg.execute(QUERY).fetchall()
                self.standbys = tuple(Standby(n or "", s or "", y or "",
                                              None if b is None else int(b), float(lag))
                                      for n, s, y, b, lag in rows)
                self.ok, self.failing = True, 0
            except store_errors() as exc:
                if self.ok or self.polls_failed == 0:
                    log.warning("standbys not read from the primary: %s", one_line(exc))
                self.ok, self.standbys = False, ()
                self.polls_failed += 1
                self.failing += 1
                if pg is not None:
                    pg.close()
                pg = None
            self._stopping.wait(self.poll_s)
        if pg is not None:
            pg.close()

    def unreachable(self) -> bool:
        """The primary has not answered UNREACHABLE_POLLS polls in a row (a blip, or the
        seconds a failover takes, do not count)."""
        return self.failing >= UNREACHABLE_POLLS

    def wait_first(self, timeout_s: float) -> bool:
        """For tests and start-up output: True once a poll has answered."""
        deadline = time.monotonic() + timeout_s
        while not self.ok and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.ok

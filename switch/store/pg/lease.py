"""The fencing lease: which switch may commit to the PostgreSQL store.

One row, ``lease(epoch, holder, at)``. A switch starting on the store takes it over by
advancing ``epoch`` (``take_over``) and then writes every journal row in a statement that
first locks that row ``FOR SHARE`` where ``epoch`` is still its own (``committer.py``). So:

- the takeover's UPDATE waits for every commit of the previous holder that is in flight, and
  once it has committed, no statement of the previous holder can lock the row at its old
  epoch: a paused or partitioned old switch that wakes up is fenced, its next commit fails
  and nothing it decided after the takeover is ever confirmed;
- a commit is never serialised behind another one (share locks do not conflict), which the
  several group commits in flight need; advancing the epoch in every commit would make each
  wait for the previous one's round trip to the standby.

The old *primary* is fenced by PostgreSQL itself: with Patroni's ``synchronous_mode_strict``
a primary commits only once a synchronous standby has the commit, and a demoted primary's
standbys follow the new leader.

A switch commits several group commits at once on separate connections, so when it dies
the journal may hold a row past one that never committed. Nothing past such a gap was ever
answered (replies wait for the contiguous durable prefix), so the new holder deletes those
rows, under its new epoch, before it loads the state.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from onecard.switch.store.pg.connect import PgError, connect, driver_errors, one_line, one_row
from onecard.switch.store.pg.journal import journal_end
from onecard.switch.store.pg.migrate import require_current

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("onecard.pg")

# A previous holder had at most this many commits in flight (config bounds commits_in_flight
# far lower), so a gap can only be among the journal's last rows.
TAIL_ROWS_CHECKED: Final = 1024
# synchronous_commit values under which COMMIT returns only once a standby flushed it.
SYNC_COMMITS: Final = ("on", "remote_apply")


@dataclass(frozen=True)
class Lease:
    epoch: int
    holder: str
    journal_end: int               # next record number once rows past a gap are deleted
    dropped_rows: int              # rows past a gap deleted by the takeover
    previous_holder: str


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def check_synchronous(pg: psycopg.Connection) -> str:
    """One line describing the synchronous standbys; PgError if commits would not wait for one."""
    (names,) = one_row(pg.execute("SHOW synchronous_standby_names"))
    (level,) = one_row(pg.execute("SHOW synchronous_commit"))
    if not names.strip():
        raise PgError("store.require_sync_standby = true but the PostgreSQL primary has no "
                      "synchronous standby (synchronous_standby_names is empty): an approval "
                      "would be lost with this machine. Configure one (Patroni: "
                      "synchronous_mode) or set require_sync_standby = false for a test store")
    if level not in SYNC_COMMITS:
        log.info("synchronous_commit is %s on the server; the switch's connections set on",
                 level)
    return f"synchronous_standby_names = {names!r}"


def _tail_gap(pg: psycopg.Connection) -> int | None:
    """The first record number missing before the journal's last row, if any."""
    rows = pg.execute("SELECT first_no, n FROM journal ORDER BY first_no DESC LIMIT %s",
                      (TAIL_ROWS_CHECKED,)).fetchall()
    rows.reverse()
    for (first, n), (after, _) in itertools.pairwise(rows):
        if first + n != after:
            assert first + n < after, f"journal rows overlap at {after}"
            return first + n
    return None


def take_over(dsn: str, *, require_sync: bool, holder: str | None = None) -> Lease:
    """Advance the lease to a new epoch for this switch (waiting for the previous holder's
    commits in flight) and delete journal rows past a gap; PgError in one line if the store
    cannot be used (unreachable, not migrated, no synchronous standby when required)."""
    holder = holder or holder_name()
    pg = connect(dsn)
    try:
        with pg.transaction():
            require_current(pg)
            if require_sync:
                log.info("PostgreSQL store: %s", check_synchronous(pg))
            row = pg.execute("SELECT holder FROM lease FOR UPDATE").fetchone()
            if row is None:
                raise PgError("the PostgreSQL store has no lease row: not migrated by this "
                              "build (run: onecard db migrate)")
            (epoch,) = one_row(pg.execute(
                "UPDATE lease SET epoch = epoch + 1, holder = %s, at = now() RETURNING epoch",
                (holder,)))
            gap = _tail_gap(pg)
            dropped = 0
            if gap is not None:
                dropped = pg.execute("DELETE FROM journal WHERE first_no > %s", (gap,)).rowcount
                log.warning("journal rows past record %d deleted (%d rows): committed by the "
                            "previous switch after one that never committed, never answered",
                            gap, dropped)
            end = journal_end(pg)
        return Lease(int(epoch), holder, end, dropped, row[0])
    except driver_errors() as exc:
        raise PgError(f"PostgreSQL store: {one_line(exc)}") from exc
    finally:
        pg.close()


def fence(epoch: int):
    """A check for a transaction of this switch's other writes (checkpoints): PgError unless
    the lease is still at ``epoch``; locked FOR SHARE like the journal's rows, so a takeover
    waits for the transaction, and the transaction after a takeover fails."""

    def check(pg: psycopg.Connection) -> None:
        if pg.execute("SELECT 1 FROM lease WHERE epoch = %s FOR SHARE", (epoch,)
                      ).fetchone() is None:
            raise PgError(f"fenced: another switch took over the PostgreSQL store (lease "
                          f"epoch no longer {epoch})")

    return check

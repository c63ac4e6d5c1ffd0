"""A PostgreSQL connection that answers like the stdlib ``sqlite3`` connection, so that one
set of queries (the admin API, the catalogue, transit, the loader's reference tables, the
keystore) serves both stores.

Why by hand: those modules are written against ``sqlite3``'s small API (``execute`` with
``?`` placeholders returning an iterable cursor, ``executemany``, explicit ``BEGIN`` /
``COMMIT`` on an autocommit connection) and their SQL is plain enough to be valid in both
dialects. A query builder or ORM would rewrite every caller for no gain, and keeping two
copies of each query would let them drift. What this class translates is only the
placeholder style and the one statement SQLite spells its own way (``BEGIN IMMEDIATE``);
where the dialects differ in anything else the callers use the spelling both accept
(``INSERT ... ON CONFLICT (...) DO ...``, ``CAST(... AS bigint)``) rather than being
translated here.

The connection is in autocommit, like ``store.connect``'s (``isolation_level=None``): a
statement outside ``BEGIN``/``COMMIT`` commits by itself, and a caller's explicit transaction
is passed through to the server as it is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import psycopg

# SQLite's ways of starting a transaction; PostgreSQL takes row locks as it writes, so a plain
# BEGIN serves for each (IMMEDIATE's early write lock only mattered to SQLite's one writer).
_BEGIN: Final = re.compile(r"\s*BEGIN(\s+(DEFERRED|IMMEDIATE|EXCLUSIVE))?(\s+TRANSACTION)?\s*;?\s*",
                           re.IGNORECASE)


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """``sql`` with sqlite3's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled
    first, so it stays a literal). The queries translated carry no ``?`` inside string
    literals; one that did would need its text changed, not a smarter translation here."""
    if _BEGIN.fullmatch(sql):
        return "BEGIN"
    return sql.replace("%", "%%").replace("?", "%s")


class Db:
    """``execute``/``executemany``/``close`` of a ``sqlite3.Connection``, over psycopg 3."""

    def __init__(self, pg: psycopg.Connection, dsn: str | None = None,
                 fence_epoch: int | None = None) -> None:
        assert pg.autocommit, "Db: callers begin and commit explicitly, as on SQLite"
        self.pg = pg            # the psycopg connection, for what only PostgreSQL does
        self._dsn = dsn         # given: reconnect after the connection was lost
        self._in_transaction = False
        # Given: every write (a transaction, or a lone INSERT/UPDATE/DELETE) first locks the
        # lease at this epoch, as the journal's commits do (store/pg/lease.py), so a switch that
        # was taken over writes no reference row either.
        self._fence_epoch = fence_epoch

    def _live(self, sql: str) -> psycopg.Connection:
        # A failover drops the connection: the statement that met it failed (its caller
        # answered an error), the next one starting a transaction or standing alone goes to
        # the new primary. One inside a transaction must not: what came before it is gone.
        word = translate(sql).lstrip()[:8].upper()
        if (self._dsn and (self.pg.closed or self.pg.broken)
                and (not self._in_transaction or word.startswith(("BEGIN", "ROLLBACK")))):
            from onecard.switch.store.pg.connect import connect

            self.pg.close()
            self.pg = connect(self._dsn, autocommit=True)
        if word.startswith("BEGIN"):
            self._in_transaction = True
        elif word.startswith(("COMMIT", "ROLLBACK")):
            self._in_transaction = False
        return self.pg

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        """Run one statement; the cursor iterates its rows (tuples) and has fetchone,
        fetchall and rowcount, as sqlite3's does."""
        was_in_transaction = self._in_transaction
        pg = self._live(sql)
        word = translate(sql).lstrip()[:6].upper()
        if self._fence_epoch is None or not (word == "BEGIN" or (
                not was_in_transaction and word in ("INSERT", "UPDATE", "DELETE"))):
            # Always a tuple, even empty: with None psycopg would not undo the doubled %.
            return pg.execute(translate(sql), tuple(params))
        if word == "BEGIN":
            cur = pg.execute("BEGIN")
            self._fence(pg)
            return cur
        with pg.transaction():
            self._fence(pg)
            return pg.execute(translate(sql), tuple(params))

    def _fence(self, pg: psycopg.Connection) -> None:
        from onecard.switch.store.pg.lease import fence

        assert self._fence_epoch is not None        # callers fence only a fenced Db
        try:
            fence(self._fence_epoch)(pg)
        except Exception:
            if self._in_transaction:          # the caller's BEGIN: undo it, it raised
                pg.execute("ROLLBACK")
                self._in_transaction = False
            raise

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor:
        fenced = self._fence_epoch is not None and not self._in_transaction
        pg = self._live(sql)
        cur = pg.cursor()
        if not fenced:
            cur.executemany(translate(sql), [tuple(p) for p in seq])
            return cur
        with pg.transaction():
            self._fence(pg)
            cur.executemany(translate(sql), [tuple(p) for p in seq])
        return cur

    def close(self) -> None:
        self.pg.close()


def open_db(dsn: str, fence_epoch: int | None = None) -> Db:
    """A Db on its own autocommit connection (its writes fenced at fence_epoch, if given);
    PgError in one line if it cannot connect."""
    from onecard.switch.store.pg.connect import connect

    return Db(connect(dsn, autocommit=True), dsn, fence_epoch)

"""Reading the journal from the PostgreSQL store: what ``store.journal_rows`` and
``store.journal_end`` are for SQLite, through the same format upgrade, plus a check that the
rows are contiguous (a start must not replay across missing records)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from onecard.protocols.journal_codec import upgrade
from onecard.switch.store.pg.connect import PgError

if TYPE_CHECKING:
    import psycopg

# Rows fetched per round trip by the server-side cursor (32 to 1,024 records a row).
FETCH_ROWS: Final = 2_000


class JournalGap(PgError):
    """The journal misses records between the checkpoint and its end: a start stops here."""


def journal_end(pg: psycopg.Connection) -> int:
    """Number of the next journal record (0 for an empty journal)."""
    row = pg.execute("SELECT first_no + n FROM journal ORDER BY first_no DESC LIMIT 1"
                     ).fetchone()
    return int(row[0]) if row else 0


def journal_rows(pg: psycopg.Connection, since_no: int = 0) -> Iterator[tuple[int, bytes]]:
    """Rows holding records numbered since_no or later, in order, in the current format;
    JournalGap when a record from since_no on is missing. Streamed by a server-side cursor
    (the journal after a checkpoint can be millions of records) in the caller's transaction;
    outside one it is declared WITH HOLD, which needs none but materialises the result."""
    from psycopg.pq import TransactionStatus

    expected = None
    outside = pg.info.transaction_status == TransactionStatus.IDLE
    with pg.cursor(name="onecard_journal_rows", binary=True,
                   withhold=pg.autocommit and outside) as cur:
        cur.itersize = FETCH_ROWS
        cur.execute("SELECT first_no, n, records, format FROM journal WHERE first_no + n > %s "
                    "ORDER BY first_no", (since_no,))
        for first_no, n, blob, fmt in cur:
            first_no = int(first_no)
            if expected is None and first_no > since_no:
                raise JournalGap(f"journal gap: records {since_no} to {first_no - 1} are "
                                 f"missing (the checkpoint is at {since_no}, the first row "
                                 f"after it starts at {first_no})")
            if expected is not None and first_no != expected:
                what = (f"records {expected} to {first_no - 1} are missing" if first_no > expected
                        else f"rows overlap at record {first_no}")
                raise JournalGap(f"journal gap: {what} (a row ends at {expected}, the next "
                                 f"starts at {first_no})")
            expected = first_no + int(n)
            yield first_no, upgrade(bytes(blob), int(fmt))


DAYS_SQL: Final = ("SELECT first_no, records, format FROM journal WHERE (day BETWEEN %s AND %s "
                   "OR day IS NULL) AND (kinds IS NULL OR kinds & %s != 0) ORDER BY first_no")


def rows_of_days(pg: psycopg.Connection, first_day: int, last_day: int,
                 kinds: int = (1 << 63) - 1) -> Iterator[tuple[int, bytes]]:
    """store.rows_of_days for the PostgreSQL store (streamed: a date can be millions of
    records), in the caller's transaction or, outside one, WITH HOLD as journal_rows."""
    from psycopg.pq import TransactionStatus

    outside = pg.info.transaction_status == TransactionStatus.IDLE
    with pg.cursor(name="onecard_journal_days", binary=True,
                   withhold=pg.autocommit and outside) as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(DAYS_SQL, (int(first_day), int(last_day), int(kinds)))
        for first_no, blob, fmt in cur:
            yield int(first_no), upgrade(bytes(blob), int(fmt))

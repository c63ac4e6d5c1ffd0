"""Checkpoints and sealed files in the PostgreSQL store (tables ``checkpoints`` and ``files``).

A row of ``checkpoints`` is one array of one checkpoint, sealed exactly as ``snapshots.write``
seals it into ``<name>.sealed`` (same label and associated data, ``chain.label``), so an
imported file and a row written here are the same bytes and open the same way. A checkpoint's
arrays go in in one transaction: any ``upto`` present is complete, and a reader needs no
manifest. ``files`` holds the holders file the same way (its sealed bytes as they are).

A checkpoint writes only its own horizon segment (switch/store/snapshots.py): the earlier ones its
``horizon_chain`` names stay in the table under their own upto (``horizon_rows``,
``horizon_rows_at``; or ``horizon_rows@UPTO`` under an imported checkpoint) while the newest
checkpoints' chains name them, and ``latest`` hands them back as ``horizon_rows@UPTO``.

A bytea value is at most 1 GB. The largest array is ``accounts`` (32 bytes a card; the cards
array is 24): a 1M-card demo checkpoint is about 32 MB an array, far under the limit, which
a data set reaches near 30M cards; ``write`` refuses an array past it with one line rather
than let the server fail the transaction with a less clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import numpy as np

from onecard.switch.security import sealed_files
from onecard.switch.store.chain import NOT_WRITTEN, SEGMENT, carried_name, chain_of, label
from onecard.switch.store.pg.connect import PgError

if TYPE_CHECKING:
    import psycopg

    from onecard.switch.security.keystore import DataKeys

# PostgreSQL's limit on one field's value (bytea included): 1 GB less a varlena header.
BYTEA_MAX: Final = (1 << 30) - 4
# Called inside the checkpoint's transaction before anything is written (e.g. a lease check
# that raises when this switch no longer holds the store).
Fence = Callable[["psycopg.Connection"], None]


def write(pg: psycopg.Connection, arrays: dict[str, np.ndarray], upto: int, keys: DataKeys,
          keep: int = 2, *, fence: Fence | None = None) -> bool:
    """Write the checkpoint taken at journal record ``upto``, sealed, in one transaction,
    and delete all but the newest ``keep``; False if that checkpoint was there already."""
    assert keep >= 1, "keep at least the checkpoint just written"
    sealed = {name: sealed_files.seal_array(arr, keys, label(upto, name))
              for name, arr in arrays.items() if name not in NOT_WRITTEN}
    carried = [u for u, _ in chain_of(upto, arrays) if u != upto]
    for name, blob in sealed.items():
        if len(blob) > BYTEA_MAX:
            raise PgError(f"checkpoint {upto}: array {name} is {len(blob):,} bytes sealed, "
                          f"over PostgreSQL's 1 GB limit on a bytea value")
    with pg.transaction():
        if fence is not None:
            fence(pg)
        if pg.execute("SELECT 1 FROM checkpoints WHERE upto = %s LIMIT 1",
                      (upto,)).fetchone() is not None:
            return False
        with pg.cursor() as cur:
            # %b: the blob goes over the wire as binary, not as hex text twice its size.
            for name, blob in sealed.items():
                cur.execute("INSERT INTO checkpoints (upto, name, data) VALUES (%s, %s, %b)",
                            (upto, name, blob))
        pg.execute("DELETE FROM checkpoints WHERE upto < (SELECT min(upto) FROM (SELECT "
                   "DISTINCT upto FROM checkpoints WHERE name = 'cards' ORDER BY upto DESC "
                   "LIMIT %s) AS newest) AND NOT (name = ANY(%s) AND upto = ANY(%s)) AND NOT "
                   "(name LIKE 'horizon\\_rows%%@%%' "
                   "AND split_part(name, '@', 2)::bigint = ANY(%s))",
                   (keep, list(SEGMENT), carried, carried))
    return True


def latest(pg: psycopg.Connection, keys: DataKeys) -> tuple[int, dict[str, np.ndarray]] | None:
    """The newest checkpoint: (upto, arrays opened), or None. One statement, so one snapshot
    even on an autocommit connection while a switch writes the next checkpoint."""
    with pg.cursor(binary=True) as cur:
        rows = cur.execute(
            "WITH newest AS (SELECT max(upto) AS upto FROM checkpoints WHERE name = 'cards') "
            "SELECT c.upto, c.name, c.data FROM checkpoints c, newest WHERE c.upto = "
            "newest.upto OR (c.upto < newest.upto AND c.name LIKE 'horizon\\_rows%') "
            "ORDER BY c.upto DESC, c.name").fetchall()
    if not rows:
        return None
    upto = int(rows[0][0])
    named = {name: data for u, name, data in rows if u == upto}
    for u, name, data in rows:          # earlier segments: those its chain names
        key = name if "@" in name else carried_name(name, u)
        if u != upto and key not in named:
            named[key] = data
    wanted = {u for u, _ in chain_of(upto, {"horizon_chain": _open(
        named, "horizon_chain", upto, keys)} if "horizon_chain" in named else {})}
    return upto, {name: _open(named, name, upto, keys) for name in named
                  if "@" not in name or int(name.partition("@")[2]) in wanted}


def _open(named: dict[str, bytes], name: str, upto: int, keys: DataKeys) -> np.ndarray:
    return sealed_files.open_array(named[name], keys, label(upto, name),
                                   where=f"checkpoint {upto} array {name}")


def uptos(pg: psycopg.Connection) -> list[int]:
    """The checkpoints held, oldest first."""
    return [int(u) for (u,) in pg.execute(
        "SELECT DISTINCT upto FROM checkpoints WHERE name = 'cards' ORDER BY upto")]


def read_file(pg: psycopg.Connection, name: str) -> bytes | None:
    """A sealed file's bytes as the data set's file held them, or None."""
    with pg.cursor(binary=True) as cur:
        row = cur.execute("SELECT data FROM files WHERE name = %s", (name,)).fetchone()
    return None if row is None else bytes(row[0])


def write_file(pg: psycopg.Connection, name: str, data: bytes) -> None:
    """Store (or replace) a sealed file's bytes; the caller's transaction commits it."""
    pg.execute("INSERT INTO files (name, data) VALUES (%s, %b) ON CONFLICT (name) DO UPDATE "
               "SET data = excluded.data", (name, data))

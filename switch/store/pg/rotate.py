"""``onecard keys rotate-dek`` on the PostgreSQL store (``switch/store/rotate_dek.py`` says what a
rotation does and why).

Here everything is in the store, so the whole rotation is one PostgreSQL transaction: the
tables as on SQLite (the same queries), the checkpoints' arrays and the holders file (rows of
``checkpoints`` and ``files``) sealed again, the new key's ``meta`` rows, the audit row. A
crash leaves the old key set or the new one, nothing between.

Stopped switches only: a switch holds the data key in memory. PostgreSQL has no data
directory lock, so the rotation refuses while any other connection named ``onecard`` (a
switch, a standby switch, a command) is open to the database, and advances the lease's epoch
in its transaction: a switch that starts meanwhile takes the lease over only after the commit
(and reads the new key), and one that was missed is fenced (its next commit fails).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onecard.switch.security import keystore, sealed_files
from onecard.switch.security.keystore import DataKeys
from onecard.switch.store import rotate_dek
from onecard.switch.store.chain import label
from onecard.switch.store.pg.checkpoints import read_file
from onecard.switch.store.pg.connect import (
    APPLICATION_NAME,
    PgError,
    connect,
    one_line,
    one_row,
    store_errors,
)
from onecard.switch.store.pg.journal import journal_end
from onecard.switch.store.rotate_dek import Rotated, RotationError

if TYPE_CHECKING:
    import psycopg

HOLDER = "onecard keys rotate-dek"


def rotate(dsn: str, data_dir: str | Path, kek_file: str | None = None) -> Rotated:
    """Rotate the DEK of the data set in the PostgreSQL store at ``dsn`` (``data_dir`` only
    locates the KEK, as for a start). KekError (RotationError, or PgError's line) when it
    cannot."""
    from onecard.switch.store.pg.db import Db
    from onecard.switch.store.pg.migrate import require_current

    try:
        pg = connect(dsn, autocommit=True)
    except PgError as exc:
        raise RotationError(str(exc)) from None
    try:
        require_current(pg)
        _refuse_if_in_use(pg)
        db = Db(pg)
        if not keystore.has_keys(db):
            raise RotationError("no data set in the PostgreSQL store")
        kek, _ = keystore.checked_kek(db, data_dir, kek_file)
        old = keystore.open_data_set(db, data_dir, kek_file)
        missing = rotate_dek.unindexed_cards(db, lambda: _state_pans(dsn, data_dir, kek_file))
        (upto,) = one_row(pg.execute("SELECT COALESCE(max(upto), 0) FROM checkpoints"))
        new, meta = keystore.rotated(kek, old, max(journal_end(pg), int(upto)))
        with pg.transaction():
            pg.execute("UPDATE lease SET epoch = epoch + 1, holder = %s, at = now()",
                       (HOLDER,))
            files = _reseal_files(pg, old, new)
            cards, terminals, paid = rotate_dek.reseal_tables(db, old, new, "bytea", missing)
            rotated = Rotated(new.generation, new.from_no, cards, terminals, paid, files)
            keystore.write_meta(db, meta)
            rotate_dek.audit(db, rotated)
        return rotated
    except store_errors() as exc:
        raise RotationError(f"PostgreSQL store: {one_line(exc)}") from None
    finally:
        pg.close()


def _refuse_if_in_use(pg: psycopg.Connection) -> None:
    (others,) = one_row(pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
        "application_name = %s AND pid <> pg_backend_pid()", (APPLICATION_NAME,)))
    if others:
        raise RotationError(f"{others} other onecard connections are open to the PostgreSQL "
                            "store (a switch, a standby switch or a command): stop them first")


def _reseal_files(pg: psycopg.Connection, old: DataKeys, new: DataKeys) -> int:
    """Every checkpoint array and the holders file sealed again under ``new``, row by row
    (a row is at most 1 GB: one at a time in memory)."""
    names = pg.execute("SELECT upto, name FROM checkpoints ORDER BY upto, name").fetchall()
    for upto, name in names:
        with pg.cursor(binary=True) as cur:
            (raw,) = one_row(cur.execute(
                "SELECT data FROM checkpoints WHERE upto = %s AND name = %s", (upto, name)))
        tag = label(int(upto), name)
        plain = sealed_files.open_sealed(raw, old, tag, where=f"checkpoint {upto} {name}")
        pg.execute("UPDATE checkpoints SET data = %b WHERE upto = %s AND name = %s",
                   (sealed_files.seal_bytes(plain, new, tag), upto, name))
    files = [name for (name,) in pg.execute("SELECT name FROM files ORDER BY name")]
    for name in files:
        if name != rotate_dek.HOLDERS_FILE:
            raise RotationError(f"file {name} in the PostgreSQL store: this build does not "
                                "know what it is sealed under; nothing rotated")
        raw = read_file(pg, name)
        assert raw is not None                      # listed above, in this transaction
        again = rotate_dek.reseal_holders_bytes(raw, old, new, f"{name} in PostgreSQL")
        pg.execute("UPDATE files SET data = %b WHERE name = %s", (again, name))
    return len(names) + len(files)


def _state_pans(dsn: str, data_dir: str | Path, kek_file: str | None):
    from onecard.switch.store import loader

    return loader.load(data_dir, kek_file=kek_file, dsn=dsn).state.cards["pan"].copy()

"""Store schema 4: encrypt a clear data set in place (one transaction; the files after it).

Terminal master keys are wrapped, card numbers move to an HMAC index plus a sealed copy,
holder names and ID numbers are sealed, disbursement rows are keyed by the HMAC, and journal
rows of formats 1 and 2 are rewritten as format 3 with their CARD_ADMIN card numbers
enciphered. The caller (``dataset.migrate``) then vacuums the file so that none of the replaced
pages stays on disk; ``seal_files`` seals the holders file (in blocks opened when read,
``holders_file.py``) and clear checkpoints (run at every load as well: idempotent, and a crash
between the transaction and the files leaves them readable).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from onecard.core import crypto
from onecard.core.state import KIND_CARD_ADMIN
from onecard.protocols import journal_codec, store_tables
from onecard.protocols.journal import FORMAT
from onecard.switch.security.holders_file import upgrade as upgrade_holders
from onecard.switch.security.keystore import DataKeys
from onecard.switch.store import snapshots, sqlite


def mask(pan: int | str) -> str:
    """A card number as reports show it: first six and last four digits."""
    s = str(pan)
    return f"{s[:6]}{'*' * (len(s) - 10)}{s[-4:]}"


def migrate(conn: sqlite3.Connection, keys: DataKeys) -> None:
    _terminals(conn, keys)
    _cards(conn, keys)
    _disbursements(conn, keys)
    _journal(conn, keys)


def _terminals(conn: sqlite3.Connection, keys: DataKeys) -> None:
    conn.execute("ALTER TABLE terminals RENAME COLUMN tmk TO tmk_wrapped")
    rows = conn.execute("SELECT idx, tid, tmk_wrapped FROM terminals").fetchall()
    conn.executemany("UPDATE terminals SET tmk_wrapped = ? WHERE idx = ?",
                     [(keys.wrap_tmk(tid, bytes(tmk)), idx) for idx, tid, tmk in rows])


def card_row(keys: DataKeys, idx: int, pan: int | str, account: int, name: str, ident: str,
             bank: str, kind: str) -> tuple:
    """A cards row as schema 4 stores it (the demo generator and the admin API use it too)."""
    return (idx, keys.pan_hmac(pan), keys.seal_text("cards", "pan", idx, str(int(pan))),
            account, keys.seal_text("cards", "holder_name", idx, name),
            keys.seal_text("cards", "id_number", idx, ident), bank, kind)


def _cards(conn: sqlite3.Connection, keys: DataKeys) -> None:
    conn.execute("ALTER TABLE cards RENAME TO cards_clear")
    conn.execute("DROP INDEX IF EXISTS cards_account")
    table = store_tables.create_table(store_tables.table("cards"), sqlite.SQLITE, 4)
    conn.execute(table)
    conn.execute("CREATE INDEX cards_account ON cards(account)")
    cur = conn.execute("SELECT idx, pan, account, holder_name, id_number, bank, kind "
                       "FROM cards_clear ORDER BY idx")
    while rows := cur.fetchmany(10_000):
        conn.executemany("INSERT INTO cards VALUES (?,?,?,?,?,?,?,?)",
                         [card_row(keys, *row) for row in rows])
    conn.execute("DROP TABLE cards_clear")


def _disbursements(conn: sqlite3.Connection, keys: DataKeys) -> None:
    conn.execute("ALTER TABLE disbursements RENAME TO disbursements_clear")
    table = store_tables.create_table(store_tables.table("disbursements"), sqlite.SQLITE, 4)
    conn.execute(table)
    rows = conn.execute("SELECT programme, period, pan, amount_fen, result, record_no, "
                        "operator, at FROM disbursements_clear").fetchall()
    conn.executemany("INSERT INTO disbursements VALUES (?,?,?,?,?,?,?,?,?)",
                     [(prog, period, keys.pan_hmac(pan), mask(pan), *rest)
                      for prog, period, pan, *rest in rows])
    conn.execute("DROP TABLE disbursements_clear")


def encipher_card_admin(blob: bytes, keys: DataKeys) -> bytes:
    """Records in the current layout with their CARD_ADMIN card numbers enciphered."""
    recs = np.frombuffer(blob, dtype=journal_codec.RECORD_DTYPE).copy()
    admin = journal_codec.view(recs, "card_admin")
    for i in np.flatnonzero(recs["kind"] == KIND_CARD_ADMIN):
        r = admin[i]
        admin["pan"][i] = crypto.pan_crypt(keys.journal_key, int(r["pan"]), int(r["card"]),
                                           int(r["account"]))
    return recs.tobytes()


def _journal(conn: sqlite3.Connection, keys: DataKeys) -> None:
    rows = conn.execute("SELECT first_no, records, format FROM journal WHERE format < ?",
                        (FORMAT,)).fetchall()
    for first_no, blob, fmt in rows:
        data = encipher_card_admin(journal_codec.upgrade(bytes(blob), int(fmt)), keys)
        conn.execute("UPDATE journal SET records = ?, format = ? WHERE first_no = ?",
                     (data, FORMAT, first_no))


def seal_files(data_dir: Path, keys: DataKeys, holders_file: str) -> None:
    """Bring a holders file in clear or sealed whole to the block format, and seal clear
    checkpoint arrays (no-op once done)."""
    upgrade_holders(Path(data_dir) / holders_file, keys)
    snapshots.seal_clear(data_dir, keys)

"""``onecard keys rotate-dek``: a new data key (DEK), and everything sealed under the old one
sealed again under it (docs/operations.md "Rotating the data key").

Why: whoever holds the KEK and any copy of the database (a stolen backup, an old disk) holds
the DEK that copy wraps. After a rotation that DEK opens nothing written since: the new DEK
is random (not derived from the old), and every value sealed at rest is sealed again under
it: terminal master keys, card numbers, holder names and ID numbers (``cards``), the holders
file, every checkpoint's arrays; the card-number index (``cards.pan_hmac``, and the
``disbursements`` rows keyed by it) is recomputed under the new index key. Journal records
are never rewritten: the old DEK's journal key is kept, wrapped under the KEK, for the records
it enciphered, and the new one enciphers records from the journal's end on
(``keystore.rotated``, ``journal_generations``). The old DEK itself is not kept.

The switch must be stopped: a running switch holds the DEK in memory and would go on sealing
checkpoints and card rows under it. The command takes the data directory's lock (refused,
exit status 2, while a switch holds it).

Crash safety. The tables and the new key change in one SQLite transaction. Files cannot be
part of it, so each is first sealed under the new key beside itself (``NAME.dek<generation>``,
fsynced), then the transaction commits, then the staged files are renamed over the old ones.
Until the commit the old key set is whole (nothing reads the staged files; the next rotation
deletes them); after it, ``finish_pending`` completes the renames, and every start, backup,
import and rotation calls it first, so the new key set is whole before anything reads it. A
crash after the commit thus needs no operator: the next start finishes the rotation.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from onecard.switch.errors import NoDataSet
from onecard.switch.security import holders_file, keystore, sealed_files
from onecard.switch.security.keystore import DataKeys, KekError
from onecard.switch.store import chain, encrypt, loader, snapshots, sqlite
from onecard.switch.store.staged import finish_pending, staged

HOLDERS_FILE = loader.HOLDERS_FILE
ROWS_PER_CHUNK = 10_000


class RotationError(KekError):
    """The data key cannot be rotated as asked; the message is one line for the operator."""


@dataclass(frozen=True)
class Rotated:
    """What a rotation did (no key material: it is printed and logged)."""

    generation: int           # the new data key's
    from_no: int              # the first journal record its journal key enciphers
    cards: int
    terminals: int
    disbursements: int
    files: int                # sealed files (or PostgreSQL rows of them) sealed again
    finished: int = 0         # staged files of an interrupted rotation put in place first


# ---- sealed files of an embedded data set ----------------------------------------------------

def sealed_paths(data_dir: Path) -> list[tuple[Path, str]]:
    """Every sealed file of the data set with the label it is sealed under: the holders
    file and each array of each complete checkpoint (a carried horizon segment, a hard
    link, under its own checkpoint's label)."""
    found = []
    holders = data_dir / HOLDERS_FILE
    if holders.exists() and holders.stat().st_size:
        found.append((holders, HOLDERS))
    root = snapshots.snapshot_root(data_dir)
    for directory in sorted(root.glob(f"{snapshots.PREFIX}*")) if root.is_dir() else []:
        manifest = directory / "manifest.json"
        if not manifest.exists():
            continue
        upto = int(json.loads(manifest.read_text())["upto"])
        for path in sorted(directory.glob(f"*{snapshots.SEALED}")):
            found.append((path, chain.label(upto, path.name[:-len(snapshots.SEALED)])))
    return found


# The holders file has its own block format (security/holders_file.py): streamed through a
# vault that opens it with the old key, written under the new one.
HOLDERS = "holders file"                 # sealed_paths' mark for it (not an array label)


def reseal_holders(path: Path, to: Path, old: DataKeys, new: DataKeys) -> None:
    """The holders file sealed again under ``new`` into ``to``."""
    holders_file.reseal(to, holders_file.open_vault(path, old, cache_bytes=0), new)


def reseal_holders_bytes(raw: bytes, old: DataKeys, new: DataKeys, where: str) -> bytes:
    """The holders file's bytes (the PostgreSQL store's row) sealed again under ``new``."""
    vault = holders_file.vault_of_bytes(raw, old, cache_bytes=0, where=where)
    with tempfile.TemporaryDirectory(prefix="onecard-holders-") as tmp:
        to = Path(tmp) / "holders.bin"
        holders_file.reseal(to, vault, new)
        return to.read_bytes()


def _stage(data_dir: Path, old: DataKeys, new: DataKeys) -> int:
    """Every sealed file sealed again under ``new`` beside itself (``staged``), fsynced;
    files that are hard links of one another (carried horizon segments) stay one file."""
    done: dict[tuple[int, int], tuple[Path, str]] = {}
    dirs = set()
    for path, label in sealed_paths(data_dir):
        to = staged(path, new.generation)
        st = path.stat()
        first = done.get((st.st_dev, st.st_ino))
        if first is not None and first[1] == label:
            to.unlink(missing_ok=True)
            os.link(first[0], to)
        elif label == HOLDERS:
            reseal_holders(path, to, old, new)
        else:
            sealed_files.write_sealed(to, sealed_files.read_sealed(path, old, label), new, label)
        done.setdefault((st.st_dev, st.st_ino), (to, label))
        dirs.add(path.parent)
    for directory in dirs:
        snapshots.fsync_path(directory)
    return len(done)


def _drop_unfinished_checkpoints(data_dir: Path) -> None:
    """Checkpoints a crash left half written (``.tmp-*``, never read): sealed under the old
    key and of no use, so they go rather than stay behind unrotated."""
    root = snapshots.snapshot_root(data_dir)
    for tmp in sorted(root.glob(".tmp-*")) if root.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- tables (either store: sqlite3-style queries) --------------------------------------------

def reseal_tables(conn, old: DataKeys, new: DataKeys, blob_type: str,
                  missing: dict[int, int]) -> tuple[int, int, int]:
    """In the caller's transaction: master keys and card rows sealed again, the card-number
    index and the disbursement rows keyed by it recomputed; (cards, terminals, disbursement
    rows). ``missing``: card numbers (by card index) of cards in the state the ``cards``
    table lacks, for disbursement rows that name them."""
    rows = conn.execute("SELECT idx, tid, tmk_wrapped FROM terminals").fetchall()
    conn.executemany("UPDATE terminals SET tmk_wrapped = ? WHERE idx = ?",
                     [(new.wrap_tmk(tid, old.unwrap_tmk(tid, tmk)), idx)
                      for idx, tid, tmk in rows])
    # Disbursement rows are found by the old index value: the pairs go into a temporary
    # table, then one UPDATE (paging through disbursements while changing its key would
    # meet rows again).
    conn.execute(f"CREATE TEMP TABLE dek_rehash (old {blob_type} PRIMARY KEY, "
                 f"new {blob_type} NOT NULL)")
    conn.executemany("INSERT INTO dek_rehash VALUES (?, ?)",
                     [(old.pan_hmac(pan), new.pan_hmac(pan)) for pan in missing.values()])
    cards = _reseal_cards(conn, old, new)
    conn.execute("UPDATE disbursements SET pan_hmac = (SELECT new FROM dek_rehash WHERE old = "
                 "disbursements.pan_hmac) WHERE pan_hmac IN (SELECT old FROM dek_rehash)")
    (left,) = conn.execute("SELECT count(*) FROM disbursements WHERE pan_hmac NOT IN "
                           "(SELECT new FROM dek_rehash)").fetchone()
    (paid,) = conn.execute("SELECT count(*) FROM disbursements").fetchone()
    conn.execute("DROP TABLE dek_rehash")
    if left:
        raise RotationError(f"{left} disbursement rows name a card this data set does not "
                            "hold: nothing rotated")
    return cards, len(rows), int(paid)


def _reseal_cards(conn, old: DataKeys, new: DataKeys) -> int:
    """Each card row's sealed number, name and ID number under ``new`` (same row binding),
    its index value recomputed; the (old, new) index values into ``dek_rehash``."""
    last, n = -1, 0
    while rows := conn.execute("SELECT idx, pan_hmac, pan_enc, holder_name, id_number FROM "
                               "cards WHERE idx > ? ORDER BY idx LIMIT ?",
                               (last, ROWS_PER_CHUNK)).fetchall():
        updates, pairs = [], []
        for idx, hmac_old, pan_enc, name, ident in rows:
            pan = old.open_text("cards", "pan", idx, pan_enc)
            hmac_new = new.pan_hmac(pan)
            updates.append((hmac_new, new.seal_text("cards", "pan", idx, pan),
                            _again(old, new, "holder_name", idx, name),
                            _again(old, new, "id_number", idx, ident), idx))
            pairs.append((bytes(hmac_old), hmac_new))
        conn.executemany("UPDATE cards SET pan_hmac = ?, pan_enc = ?, holder_name = ?, "
                         "id_number = ? WHERE idx = ?", updates)
        conn.executemany("INSERT INTO dek_rehash VALUES (?, ?)", pairs)
        last, n = rows[-1][0], n + len(rows)
    return n


def _again(old: DataKeys, new: DataKeys, column: str, idx: int, blob: bytes) -> bytes:
    return new.seal_text("cards", column, idx, old.open_text("cards", column, idx, blob))


def unindexed_cards(conn, load_pans) -> dict[int, int]:
    """Card numbers of the cards disbursement rows may name that the ``cards`` table lacks
    (an admin API card issued, journaled, its row not yet written when a crash came): by
    card index, from the state (``load_pans()``: the replayed cards' numbers). Empty, and
    nothing loaded, when every disbursement row names a card of the table."""
    (orphans,) = conn.execute("SELECT count(*) FROM disbursements d WHERE NOT EXISTS "
                              "(SELECT 1 FROM cards c WHERE c.pan_hmac = d.pan_hmac)"
                              ).fetchone()
    if not orphans:
        return {}
    pans = load_pans()
    have = {int(idx) for (idx,) in conn.execute("SELECT idx FROM cards")}
    return {idx: int(pans[idx]) for idx in range(len(pans)) if idx not in have}


def audit(conn, rotated: Rotated) -> None:
    """The rotation in ``admin_log`` (who ran it, what was sealed again; no key material)."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = f"uid {os.getuid()}"
    details = {"generation": rotated.generation, "from_record": rotated.from_no,
               "cards": rotated.cards, "terminals": rotated.terminals,
               "disbursements": rotated.disbursements, "sealed_files": rotated.files}
    conn.execute("INSERT INTO admin_log (id, at, operator, role, action, target, details, "
                 "record_no) VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM admin_log), ?, ?, "
                 "?, ?, ?, ?, ?)",
                 (dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), who, "keys",
                  "rotate data key", f"data key generation {rotated.generation}",
                  json.dumps(details), rotated.from_no))


def describe(rotated: Rotated, where: str) -> str:
    """What the command prints (two lines)."""
    done = (f"; an interrupted rotation finished first ({rotated.finished} files)"
            if rotated.finished else "")
    return (f"onecard keys: the data key of {where} is now generation {rotated.generation} "
            f"(journal records from {rotated.from_no:,} on): {rotated.cards:,} cards, "
            f"{rotated.terminals:,} terminal master keys, {rotated.files:,} sealed files and "
            f"{rotated.disbursements:,} disbursement rows sealed again{done}\n"
            "onecard keys: copies of the data set made before now (backups too) open only "
            "what was written before now, with the key-encryption key of their time")


# ---- the embedded store ----------------------------------------------------------------------

def rotate(data_dir: str | Path, kek_file: str | None = None) -> Rotated:
    """Rotate the DEK of the SQLite data set in ``data_dir``; the caller holds its lock (no
    switch runs on it). KekError (RotationError) in one line when it cannot."""
    data_dir = Path(data_dir)
    path = sqlite.db_path(data_dir)
    if not path.exists():
        raise NoDataSet(f"no data set at {path}")
    conn = sqlite.connect(path)
    try:
        found = sqlite.schema_version(conn)
        if found != sqlite.SCHEMA_VERSION:
            raise RotationError(f"{path}: store schema {found or 'none'}, this build needs "
                                f"{sqlite.SCHEMA_VERSION}: start this build's switch on it once")
        kek, _ = keystore.checked_kek(conn, data_dir, kek_file)
        old = keystore.open_data_set(conn, data_dir, kek_file)
        finished = finish_pending(data_dir, old.generation, drop_uncommitted=True)
        encrypt.seal_files(data_dir, old, HOLDERS_FILE)     # clear leftovers: sealed
        _drop_unfinished_checkpoints(data_dir)
        missing = unindexed_cards(conn, lambda: _state_pans(data_dir, kek_file))
        newest = snapshots.newest(data_dir)
        from_no = max(sqlite.journal_end(conn), newest[0] if newest else 0)
        new, meta = keystore.rotated(kek, old, from_no)
        try:
            files = _stage(data_dir, old, new)
            rotated = _commit(conn, old, new, meta, missing, files, finished)
        except BaseException:
            finish_pending(data_dir, old.generation, drop_uncommitted=True)   # staged: gone
            raise
        finish_pending(data_dir, new.generation)
        # No page of the old ciphertexts or of the old wrapped DEK stays in the file.
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return rotated
    finally:
        conn.close()


def _commit(conn: sqlite3.Connection, old: DataKeys, new: DataKeys, meta: dict[str, str],
            missing: dict[int, int], files: int, finished: int) -> Rotated:
    conn.execute("BEGIN IMMEDIATE")
    try:
        cards, terminals, paid = reseal_tables(conn, old, new, "BLOB", missing)
        rotated = Rotated(new.generation, new.from_no, cards, terminals, paid, files, finished)
        keystore.write_meta(conn, meta)
        audit(conn, rotated)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return rotated


def _state_pans(data_dir: Path, kek_file: str | None):
    return loader.load(data_dir, kek_file=kek_file).state.cards["pan"].copy()

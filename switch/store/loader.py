"""Build the core's State from the store: reference tables, the catalogue, the newest
checkpoint, and the journal records after it (recovery is the same code path as every start).
The store is the SQLite data set in data_dir or, given a DSN, the PostgreSQL store; the same
queries read both (``switch/store/pg/db.py``), and only where each keeps its checkpoints, holders
file and journal differs (``_sqlite_source``, ``_pg_source``).

The data set's keys are opened first (a wrong or missing key-encryption key stops here with
one line, ``keystore.KekError``); master keys are unwrapped and the checkpoint decrypted into
memory (what is in memory is in clear: memory is not at rest). Journal records written under
an earlier data key (before ``onecard keys rotate-dek``) are replayed through
``journal_generations``. The holders file is not decrypted: it stays sealed and the core
opens one block of it when a lodging terminal verifies a card (``security/holders_file.py``),
keeping at most ``holder_cache_bytes`` decrypted."""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onecard.core.holders import HolderVault
from onecard.core.ledger import apply_records
from onecard.core.state import (
    MAPS,
    REGION_DTYPE,
    RING_DTYPE,
    SURNAME_BYTES,
    TERMINAL_DTYPE,
    State,
)
from onecard.protocols.clearing import CUTOVER_DEFAULT, cutover_minutes
from onecard.switch import catalogue, transit
from onecard.switch.errors import NoDataSet
from onecard.switch.reference import GROUPS
from onecard.switch.security import holders_file, journal_generations, keystore
from onecard.switch.security.keystore import DataKeys
from onecard.switch.sql import SqlConnection
from onecard.switch.store import chain, dataset, encrypt, snapshots, sqlite, staged

if TYPE_CHECKING:
    from onecard.switch.store.pg.db import Db

log = logging.getLogger("onecard.loader")

HOLDERS_FILE = "holders.bin"
# Terminal fields that are state (sessions, settlement batch, offline watermark), kept from the
# checkpoint; everything else comes from the terminal registry.
SESSION_FIELDS = ("signed_on", "mak", "debit_fen", "credit_fen", "debit_count", "credit_count",
                  "batch_no", "offline_hw", "session_day", "upload_open")


@dataclass
class Loaded:
    state: State
    next_record_no: int
    snapshot_upto: int
    replayed: int
    seconds: float
    migrated: list[int]          # store schema versions this start brought the data set to
    keys: DataKeys               # to seal checkpoints and card rows written from now on
    # The horizon segments the checkpoint loaded was built from (chain.horizon_chain):
    # the next checkpoint's segment carries on from them.
    horizon_chain: list[tuple[int, int]] = field(default_factory=list)


provinces = catalogue.provinces


def regions_array(conn: SqlConnection) -> np.ndarray:
    prov_index = {p: i for i, p in enumerate(provinces(conn))}
    rows = conn.execute("SELECT idx, code, province, grp, elderly_age, elderly_pct, "
                        "disabled_pct, transfer_minutes, transfer_discount_fen, "
                        "med_deductible_fen, med_cap_fen, med_ratio_pct FROM regions "
                        "ORDER BY idx").fetchall()
    out = np.zeros(len(rows), dtype=REGION_DTYPE)
    for idx, code, province, grp, age, pct, dpct, tmin, tfen, ded, cap, ratio in rows:
        out[idx] = (code, prov_index[province], GROUPS.index(grp), age, pct, dpct, tmin, tfen,
                    ded, cap, ratio, 0)
    return out


def surnames_array(conn: SqlConnection) -> np.ndarray:
    rows = conn.execute("SELECT surname FROM surnames ORDER BY idx").fetchall()
    out = np.zeros((max(len(rows), 1), SURNAME_BYTES), dtype="u1")
    for i, (name,) in enumerate(rows):
        raw = name.encode()[:SURNAME_BYTES]
        out[i, :len(raw)] = np.frombuffer(raw, dtype="u1")
    return out


def terminals_array(conn: SqlConnection, keys: DataKeys) -> np.ndarray:
    """The terminal registry as the core's array, master keys unwrapped."""
    app_idx = dict(conn.execute("SELECT code, idx FROM catalogue"))
    rows = conn.execute("SELECT idx, tid, merchant, kind, protocol, region_idx, operator_idx, "
                        "mac_alg, permitted, tmk_wrapped, app_code, policy_idx, scope "
                        "FROM terminals ORDER BY idx").fetchall()
    out = np.zeros(len(rows), dtype=TERMINAL_DTYPE)
    for (idx, tid, merchant, kind, protocol, region_idx, op_idx, alg, permitted, tmk, app,
         policy, scope) in rows:
        t = out[idx]
        t["tid"] = int.from_bytes(tid.encode("ascii"), "big")
        t["merchant"] = merchant.encode("ascii").ljust(15)
        t["kind"], t["protocol"], t["region"] = kind, protocol, region_idx
        t["operator"] = op_idx if op_idx is not None else 0
        t["mac_alg"], t["permitted"] = alg, permitted
        t["tmk"] = np.frombuffer(keys.unwrap_tmk(tid, tmk), dtype="u1")
        t["app"], t["policy"], t["scope"] = app_idx[app], policy, scope
    return out


def _merge_sessions(static: np.ndarray, saved: np.ndarray | None) -> np.ndarray:
    """Keep the registry's terminal definitions and the checkpoint's terminal state."""
    if saved is None or len(saved) != len(static) or not np.array_equal(saved["tid"],
                                                                          static["tid"]):
        if saved is not None:
            log.warning("terminal registry changed since the checkpoint: sessions reset")
        return static
    for name in SESSION_FIELDS:
        if name in (saved.dtype.names or ()):   # a checkpoint written before a field existed
            static[name] = saved[name]
    rekeyed = ~np.all(saved["tmk"] == static["tmk"], axis=1)   # a new master key: sign on again
    static["signed_on"][rekeyed] = 0
    static["mak"][rekeyed] = 0
    return static


def holders(data_dir: str | Path, keys: DataKeys,
            cache_bytes: int = holders_file.CACHE_BYTES_DEFAULT) -> HolderVault | None:
    """The holders file (full names and identity numbers) opened for reading a block at a
    time, nothing decrypted yet; None without one."""
    path = Path(data_dir) / HOLDERS_FILE
    if not path.exists() or path.stat().st_size == 0:
        return None
    return holders_file.open_vault(path, keys, cache_bytes)


def filings_entries(conn: SqlConnection) -> np.ndarray:
    from onecard.core.maps import ENTRY_DTYPE

    index = {p: i for i, p in enumerate(provinces(conn))}
    masks: dict[int, int] = {}
    for account, province in conn.execute("SELECT account, province FROM filings"):
        masks[account] = masks.get(account, 0) | (1 << index[province])
    out = np.zeros(len(masks), dtype=ENTRY_DTYPE)
    for i, (account, mask) in enumerate(sorted(masks.items())):
        out[i] = (account, mask, 0)
    return out


@dataclass
class _Source:
    """What a start reads, from either store: the tables (``sqlite3``-style queries), the
    keys, the newest checkpoint, the holders, and the journal after the checkpoint."""
    conn: sqlite3.Connection | Db
    keys: DataKeys
    upto: int
    arrays: dict[str, np.ndarray]
    holders: HolderVault | None
    journal_rows: Callable[[int], Iterator[tuple[int, bytes]]]
    journal_end: Callable[[], int]
    migrated: list[int] = field(default_factory=list)


@contextmanager
def _sqlite_source(data_dir: str | Path, kek_file: str | None,
                   holder_cache_bytes: int) -> Iterator[_Source]:
    """The embedded store: migrated and its files sealed first (both only touch data_dir)."""
    path = sqlite.db_path(data_dir)
    if not path.exists():
        raise NoDataSet(f"no data set at {path} (run: onecard demo-data)")
    migrated = dataset.migrate(path, kek_file)
    conn = sqlite.connect(path, readonly=True)
    try:
        sqlite.check_schema(conn, path)
        keys = keystore.open_data_set(conn, data_dir, kek_file)
        # A data-key rotation stopped after its commit: its files are put in place first.
        staged.finish_pending(data_dir, keys.generation)
        encrypt.seal_files(Path(data_dir), keys, HOLDERS_FILE)
        snap = snapshots.latest(data_dir, keys)
        if snap is None:
            raise NoDataSet(f"no checkpoint under {snapshots.snapshot_root(data_dir)}")
        yield _Source(conn, keys, *snap, holders(data_dir, keys, holder_cache_bytes),
                      functools.partial(sqlite.journal_rows, conn),
                      functools.partial(sqlite.journal_end, conn), migrated)
    finally:
        conn.close()


@contextmanager
def _pg_source(dsn: str, data_dir: str | Path, kek_file: str | None,
               holder_cache_bytes: int) -> Iterator[_Source]:
    """The PostgreSQL store, read in one snapshot (checkpoint and journal agree even while
    another switch writes). It is migrated by ``onecard db migrate``, never by a start: a
    schema other than this build's stops here in one line. Only the key-encryption key is
    looked for by data_dir ($ONECARD_KEK, kek_file, ``<data_dir>.kek``)."""
    from onecard.switch.store.pg import checkpoints, journal
    from onecard.switch.store.pg.connect import connect
    from onecard.switch.store.pg.db import Db
    from onecard.switch.store.pg.migrate import require_current

    pg = connect(dsn, autocommit=True)
    try:
        pg.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        require_current(pg)
        if not keystore.has_keys(Db(pg)):
            raise NoDataSet("no data set in the PostgreSQL store (onecard db import DATA_DIR "
                            "brings one)")
        keys = keystore.open_data_set(Db(pg), data_dir, kek_file)
        snap = checkpoints.latest(pg, keys)
        if snap is None:
            raise NoDataSet("no checkpoint in the PostgreSQL store (onecard db import brings "
                            "a data set's newest one)")
        raw = checkpoints.read_file(pg, HOLDERS_FILE)
        held = None if not raw else holders_file.vault_of_bytes(
            raw, keys, holder_cache_bytes, where=f"{HOLDERS_FILE} in PostgreSQL")
        yield _Source(Db(pg), keys, *snap, held, functools.partial(journal.journal_rows, pg),
                      functools.partial(journal.journal_end, pg))
    finally:
        pg.close()


def _state(src: _Source, ring_size: int, map_entries_max: int,
           horizon: dict) -> tuple[State, list[tuple[int, int]]]:
    """The core's State from the reference tables and the checkpoint (before replay), and
    the chain of horizon segments it was loaded from (none when the rings were reset)."""
    conn, keys, arrays = src.conn, src.keys, src.arrays
    operators, stations, fares = transit.build(conn)
    apps, accept, policies = catalogue.build(conn)
    terminals = _merge_sessions(terminals_array(conn, keys), arrays.get("terminals"))
    ring = arrays.get("ring")
    if ring is None or len(ring) != len(terminals) * ring_size or ring.dtype != RING_DTYPE:
        ring = None
    # Filings are reference data (their table is the truth); the other maps are state.
    maps = {name: arrays[name] for name in MAPS if name in arrays and name != "filings"}
    maps["filings"] = filings_entries(conn)
    state = State(cards=arrays["cards"], accounts=arrays["accounts"], terminals=terminals,
                  regions=regions_array(conn), operators=operators, stations=stations,
                  fares=fares, apps=apps, accept=accept, policies=policies,
                  surnames=surnames_array(conn), holders=src.holders, ring=ring,
                  ring_size=ring_size, maps=maps, map_entries_max=map_entries_max, **horizon)
    state.set_journal_key(keys.journal_key)
    if "deny_log" in arrays:
        state.restore_deny_log(arrays["deny_log"])
    if ring is None:                   # the horizon's rows name the ring's terminals
        return state, []
    state.restore_horizon(arrays)
    return state, chain.chain_of(src.upto, arrays)


def load(data_dir: str | Path, *, ring_size: int = 64, map_entries_max: int = 1 << 26,
         kek_file: str | None = None, dsn: str | None = None, idempotency_days: int = 2,
         idempotency_requests_max: int = 1 << 26,
         cutover_s: int = cutover_minutes(CUTOVER_DEFAULT) * 60,
         holder_cache_bytes: int = holders_file.CACHE_BYTES_DEFAULT) -> Loaded:
    """Recover the state: checkpoint + journal replay, from the SQLite data set in data_dir,
    or with ``dsn`` from the PostgreSQL store there (data_dir then only locates the
    key-encryption key). Raises if the data set or its checkpoint is missing, KekError if
    its keys do not open, PgError (JournalGap) if PostgreSQL's journal misses records.
    ``holder_cache_bytes`` bounds the holder records kept decrypted ([core])."""
    started = time.perf_counter()
    source = (_pg_source(dsn, data_dir, kek_file, holder_cache_bytes) if dsn
              else _sqlite_source(data_dir, kek_file, holder_cache_bytes))
    with source as src:
        state, chain = _state(src, ring_size, map_entries_max, {
            "idempotency_days": idempotency_days,
            "idempotency_rows_max": idempotency_requests_max, "cutover_s": cutover_s})
        replayed = 0
        for first_no, blob in src.journal_rows(src.upto):
            # The core holds the current journal key only: rows from before a data-key
            # rotation are handed over with their card numbers enciphered under it.
            blob = journal_generations.current(src.keys, blob, first_no)
            replayed += apply_records(state, blob, first_no, src.upto)
        next_no = max(src.journal_end(), src.upto)
    return Loaded(state, next_no, src.upto, replayed, time.perf_counter() - started,
                  src.migrated, src.keys, chain)

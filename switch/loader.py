"""Build the core's State from the store: reference tables, the newest checkpoint, and the
journal records after it (recovery is the same code path as every start)."""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onecard.core.state import (
    MAX_PROVINCES,
    N_APPS,
    REGION_DTYPE,
    RING_DTYPE,
    SURNAME_BYTES,
    TERMINAL_DTYPE,
    State,
)
from onecard.switch import snapshots, store, transit
from onecard.switch.reference import CROSS_BORDER, GROUPS, JOINT_CATALOGUE_GROUPS

log = logging.getLogger("onecard.loader")

APP_CLASSES = {"payment": 0, "transit": 1, "identity": 2}


@dataclass
class Loaded:
    state: State
    next_record_no: int
    snapshot_upto: int
    replayed: int
    seconds: float


def provinces(conn: sqlite3.Connection) -> list[int]:
    """Province codes in index order (the core stores provinces by this index)."""
    return [r[0] for r in conn.execute("SELECT DISTINCT province FROM regions ORDER BY province")]


def regions_array(conn: sqlite3.Connection) -> np.ndarray:
    prov_index = {p: i for i, p in enumerate(provinces(conn))}
    rows = conn.execute("SELECT idx, code, province, grp, elderly_age, elderly_pct, disabled_pct "
                        "FROM regions ORDER BY idx").fetchall()
    out = np.zeros(len(rows), dtype=REGION_DTYPE)
    for idx, code, province, grp, age, pct, dpct in rows:
        out[idx] = (code, prov_index[province], GROUPS.index(grp), age, pct, dpct, 0)
    return out


def accept_array(conn: sqlite3.Connection) -> np.ndarray:
    """accept[app, terminal province] = bit mask of card provinces the catalogue accepts."""
    provs = provinces(conn)
    index = {p: i for i, p in enumerate(provs)}
    group_of = {p: g for p, g in conn.execute("SELECT DISTINCT province, grp FROM regions")}
    accept = np.zeros((N_APPS, MAX_PROVINCES), dtype="<u8")
    for app_name, scope in conn.execute("SELECT app, scope FROM catalogue"):
        app = APP_CLASSES[app_name]
        scopes = set(scope.split(","))
        for term_p in provs:
            t = index[term_p]
            if "province" in scopes:
                accept[app, t] |= np.uint64(1 << t)
            if "group" in scopes and group_of[term_p] in JOINT_CATALOGUE_GROUPS:
                for card_p in provs:
                    if group_of[card_p] == group_of[term_p]:
                        accept[app, t] |= np.uint64(1 << index[card_p])
        if "cross_border" in scopes:
            for card_p, term_p in CROSS_BORDER:
                if card_p in index and term_p in index:
                    accept[app, index[term_p]] |= np.uint64(1 << index[card_p])
    return accept


def surnames_array(conn: sqlite3.Connection) -> np.ndarray:
    rows = conn.execute("SELECT surname FROM surnames ORDER BY idx").fetchall()
    out = np.zeros((max(len(rows), 1), SURNAME_BYTES), dtype="u1")
    for i, (name,) in enumerate(rows):
        raw = name.encode()[:SURNAME_BYTES]
        out[i, :len(raw)] = np.frombuffer(raw, dtype="u1")
    return out


def terminals_array(conn: sqlite3.Connection) -> np.ndarray:
    rows = conn.execute("SELECT idx, tid, merchant, kind, protocol, region_idx, operator_idx, "
                        "mac_alg, permitted, tmk FROM terminals ORDER BY idx").fetchall()
    out = np.zeros(len(rows), dtype=TERMINAL_DTYPE)
    for idx, tid, merchant, kind, protocol, region_idx, op_idx, alg, permitted, tmk in rows:
        t = out[idx]
        t["tid"] = int.from_bytes(tid.encode("ascii"), "big")
        t["merchant"] = merchant.encode("ascii").ljust(15)
        t["kind"], t["protocol"], t["region"] = kind, protocol, region_idx
        t["operator"] = op_idx if op_idx is not None else 0
        t["mac_alg"], t["permitted"] = alg, permitted
        t["tmk"] = np.frombuffer(tmk, dtype="u1")
    return out


def _merge_sessions(static: np.ndarray, saved: np.ndarray | None) -> np.ndarray:
    """Keep the registry's terminal definitions and the checkpoint's sessions (working keys)."""
    if saved is None or len(saved) != len(static) or not np.array_equal(saved["tid"],
                                                                          static["tid"]):
        if saved is not None:
            log.warning("terminal registry changed since the checkpoint: sessions reset")
        return static
    same_key = np.all(saved["tmk"] == static["tmk"], axis=1)
    static["signed_on"] = np.where(same_key, saved["signed_on"], 0)
    static["mak"] = np.where(same_key[:, None], saved["mak"], 0)
    return static


def load(data_dir: str | Path, *, ring_size: int = 64) -> Loaded:
    """Recover the state: checkpoint + journal replay. Raises if the data set is missing."""
    started = time.perf_counter()
    path = store.db_path(data_dir)
    if not path.exists():
        raise FileNotFoundError(f"no data set at {path} (run: onecard demo-data)")
    conn = store.connect(path, readonly=True)
    try:
        store.check_schema(conn, path)
        snap = snapshots.latest(data_dir)
        if snap is None:
            raise FileNotFoundError(f"no checkpoint under {snapshots.snapshot_root(data_dir)}")
        upto, arrays = snap
        operators, stations, fares = transit.build(conn)
        terminals = _merge_sessions(terminals_array(conn), arrays.get("terminals"))
        ring = arrays.get("ring")
        if ring is None or len(ring) != len(terminals) * ring_size or ring.dtype != RING_DTYPE:
            ring = None
        state = State(cards=arrays["cards"], accounts=arrays["accounts"], terminals=terminals,
                      regions=regions_array(conn), operators=operators, stations=stations,
                      fares=fares, accept=accept_array(conn), surnames=surnames_array(conn),
                      ring=ring, ring_size=ring_size)
        replayed = 0
        for first_no, blob in store.journal_rows(conn, upto):
            replayed += state.apply_records(blob, first_no, upto)
        next_no = max(store.journal_end(conn), upto)
    finally:
        conn.close()
    return Loaded(state, next_no, upto, replayed, time.perf_counter() - started)

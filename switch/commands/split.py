"""Cut a data set into the part one regional switch owns: the cards issued by its provinces,
their accounts and holders, and everything a switch needs to serve them.

The source is read the way a start reads it (``loader.load``: newest checkpoint plus the
journal after it), so balances, the deny list and daily totals are the current ones even when
the source has journal records after its newest checkpoint. The part is written as a data set
at rest, like ``onecard demo-data`` writes one: the store's tables, one checkpoint at journal
record 0 and an empty journal, the holders file. A switch started on it serves it as it is.

Carried over, renumbered: the core indexes cards and accounts by position (``cards.account``,
the holders file and ``filings`` by account index, the ``cards`` table's ``idx`` by card
index, and a new card must be appended at ``n_cards``), so the part's cards and accounts are
dense, in the source's order.

- cards (status, expiry, functions, open trip), accounts (balances, medical account, daily
  totals, holder flags, deny flag), ``cards`` rows (number, holder name and ID number sealed
  again, bound to their new row), holder records, filings, the per-application daily totals
  and medical year totals;
- the deny log: the owned cards' changes in their original order. Its versions are therefore
  the part's own: a gate that synced its list from the source should sync from version 0
  with its region's switch (a gate ahead of a switch is only moved to its version);
- ``disbursements`` rows of owned provinces (the idempotency index that keeps a programme's
  period from being paid twice), after bringing the source's report up to date from its
  journal as a start does;
- the full terminal registry and every reference and catalogue table, verbatim. Every region
  keeps every terminal: a terminal connects to its acquiring region, but the issuer authorises
  requests forwarded from any terminal and needs its definition (and copying all is the
  simple, safe choice: nothing can be missing);
- each terminal's ring slots of owned cards (so a retransmission of a request made before the
  cut gets its original answer, never a second effect, at the card's issuer) and its offline
  upload watermark (the same for offline taps);
- a terminal's session (sign-on, working key, open batch totals) and its ring slots that name
  no card, only in the part owning the terminal's own province (its acquirer): a working key
  is kept in one place only, and batch totals are the acquirer's.

Not carried: the journal (history stays in the source, which should be kept read-only as the
archive: the part's journal starts at record 0, so record numbers from before the cut, such as
a retransmitted answer's retrieval reference or a carried disbursement row's ``record_no``,
name records of the source's journal), ``admin_log``, the operator tokens file (a switch's
first start on the part creates new operators), checkpoints other than the one written.

Keys: the part keeps the source's data key, wrapped by the same key-encryption key (the
``meta`` rows are copied as they are, but for the journal keys of data keys replaced by
``onecard keys rotate-dek``: they stay with the source's journal), so card-number HMACs and
sealed terminal keys stay valid; values bound to a row that moves (card numbers, names, ID
numbers) are opened and sealed again. No key is ever written in clear except the KEK file
itself, which is copied (0600) beside the part, ``<dst>.kek``, when the source found its KEK
beside itself; with ``$ONECARD_KEK`` or a configured ``kek_file`` the part opens with the
same one.

Only the embedded (SQLite) store is split. A part looks like a new data set (checkpoint at
record 0, empty journal), which ``onecard db import`` takes into PostgreSQL like any other.

The source must not be served while it is split (a switch would go on changing it):
``onecard region split`` holds its data directory's lock. Like a start, the split may write to
the source: the store migration of an older build's data set, and the disbursement report's
catch-up from the journal.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onecard.core.maps import ENTRY_DTYPE
from onecard.core.state import (
    DENY_FOREIGN,
    DENY_INDEX,
    DENY_REMOVED,
    FN_ECARD,
    State,
)
from onecard.switch.admin.disbursements import SYNC_KEY, sync_from_journal
from onecard.switch.errors import NoDataSet, RegionError
from onecard.switch.security import holders_file, keystore, modes
from onecard.switch.security.keystore import DataKeys
from onecard.switch.store import encrypt, loader, snapshots, sqlite

Progress = Callable[[str], None]

# Every table of the store except those cut by card or account (cards, filings,
# disbursements), the ones left behind (journal, admin_log) and meta; in an order that
# satisfies the foreign keys (regions before operators, the catalogue before terminals).
VERBATIM_TABLES = ("regions", "operators", "stations", "catalogue", "catalogue_history",
                   "policies", "surnames", "programmes", "terminals")
# A terminal's session, kept only by its acquiring region (see the module docstring).
ACQUIRER_FIELDS = ("signed_on", "mak", "debit_fen", "credit_fen", "debit_count",
                   "credit_count", "session_day")
NO_CARD = 0xFFFFFFFF                    # a ring slot or journal record naming no card
ROWS_PER_CHUNK = 100_000
PAN_PROVINCE_DIGITS = slice(3, 5)       # 621 PP T ...: the issuing province


class SplitError(RegionError, ValueError):
    """The split cannot be made as asked; the message is one line for the operator."""


@dataclass(frozen=True)
class SplitSummary:
    """What the part holds (sums over parts covering every province equal the source's)."""

    owns: tuple[int, ...]
    cards: int
    accounts: int
    terminals: int
    sessions: int                 # terminals whose session (its acquirer's state) is here
    balance_fen: int
    medical_fen: int
    deny_entries: int
    filings: int
    disbursements: int
    kek: str                      # where the part's key-encryption key is found


@dataclass(frozen=True)
class Plan:
    """Which cards and accounts go to the part: old positions (ascending) and old -> new
    position maps (-1 for the ones left out)."""

    cards: np.ndarray
    accounts: np.ndarray
    card_map: np.ndarray
    account_map: np.ndarray


@dataclass(frozen=True)
class _Source:
    """The loaded source: its directory, a read-write connection (the disbursement sync),
    the state after replay, its keys, each region's province (by region index), and how it
    was opened."""

    path: Path
    conn: sqlite3.Connection
    state: State
    keys: DataKeys
    region_province: np.ndarray
    kek_file: str | None
    ring_size: int


def _quiet(_: str) -> None:
    pass


_POWERS = np.array([10 ** k for k in range(20)], dtype=np.uint64)


def card_provinces(pans: np.ndarray) -> np.ndarray:
    """Issuing province of each card number (digits 4-5: 621 PP T serial check), -1 for a
    number too short to have one. Vectorised: a data set may hold 10^8 cards."""
    pans = np.asarray(pans, dtype=np.uint64)
    digits = np.searchsorted(_POWERS, pans, side="right")
    ok = digits >= PAN_PROVINCE_DIGITS.stop
    shift = _POWERS[np.where(ok, digits - PAN_PROVINCE_DIGITS.stop, 0)]
    return np.where(ok, (pans // shift % np.uint64(100)).astype(np.int64), -1)


def plan_split(cards: np.ndarray, account_provinces: np.ndarray,
               owns: Iterable[int]) -> Plan:
    """The cards whose number's province is owned and their accounts; an account without
    cards goes by its own region's province (``account_provinces``). SplitError when an
    account has cards both of owned provinces and of others: it cannot be in two parts."""
    owned = np.array(sorted(set(owns)), dtype=np.int64)
    n_accounts = len(account_provinces)
    card_owned = np.isin(card_provinces(cards["pan"]), owned)
    account = cards["account"].astype(np.int64)
    mine = np.zeros(n_accounts, dtype=bool)
    mine[account[card_owned]] = True
    theirs = np.zeros(n_accounts, dtype=bool)
    theirs[account[~card_owned]] = True
    both = np.flatnonzero(mine & theirs)
    if len(both):
        example = np.flatnonzero(account == both[0])
        masked = ", ".join(encrypt.mask(int(cards["pan"][i])) for i in example[:4])
        raise SplitError(f"{len(both):,} accounts have cards of owned and of other provinces "
                         f"(account {int(both[0])}: cards {masked}); an account cannot be "
                         "split: move its cards to one province first")
    cardless = ~(mine | theirs)
    mine |= cardless & np.isin(account_provinces, owned)
    keep_cards, keep_accounts = np.flatnonzero(card_owned), np.flatnonzero(mine)
    return Plan(keep_cards, keep_accounts, _position_map(keep_cards, len(cards)),
                _position_map(keep_accounts, n_accounts))


def _position_map(kept: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    out[kept] = np.arange(len(kept))
    return out


def _check_paths(src: Path, dst: Path) -> None:
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise SplitError(f"the destination {dst} must be outside the source {src} and not "
                         "contain it")
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise SplitError(f"the destination {dst} exists and is not an empty directory")


def _check_owns(owns: Iterable[int], provinces: list[int]) -> tuple[int, ...]:
    wanted = tuple(sorted({int(p) for p in owns}))
    if not wanted:
        raise SplitError("owns no province: give at least one issuing province code")
    unknown = [p for p in wanted if p not in provinces]
    if unknown:
        raise SplitError(f"unknown province codes {unknown}: the data set's provinces are "
                         f"{provinces}")
    return wanted


def split_data_set(src: str | Path, dst: str | Path, owns: Iterable[int], *,
                   kek_file: str | None = None, ring_size: int = 64,
                   progress: Progress = _quiet) -> SplitSummary:
    """Write the part of the data set in ``src`` whose cards' issuing provinces are ``owns``
    into ``dst`` (a new or empty directory); see the module docstring for what it holds.
    ``kek_file`` is the source's configured key-encryption key file, ``ring_size`` its
    ``[core] ring_size``. SplitError for a request that cannot be met (nothing is written),
    FileNotFoundError without a data set in src, KekError without its key. No switch may
    serve src meanwhile (the caller holds its lock)."""
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst)
    if not sqlite.db_path(src).exists():
        raise NoDataSet(f"no data set at {sqlite.db_path(src)}")
    conn = sqlite.connect(sqlite.db_path(src), readonly=True)
    try:
        owned = _check_owns(owns, [p for (p,) in conn.execute(
            "SELECT DISTINCT province FROM regions ORDER BY province")])
    finally:
        conn.close()
    progress(f"onecard region split: loading {src}/ (checkpoint and journal)")
    loaded = loader.load(src, ring_size=ring_size, kek_file=kek_file)
    conn = sqlite.connect(sqlite.db_path(src))
    try:
        source = _Source(src, conn, loaded.state, loaded.keys, np.array(
            [p for (p,) in conn.execute("SELECT province FROM regions ORDER BY idx")],
            dtype=np.int64), kek_file, ring_size)
        state = source.state
        plan = plan_split(state.cards, source.region_province[state.accounts["region"]],
                          owned)
        # As a start would: credits whose report rows a crash lost get them now, so the
        # part's copy of the report keeps every period from being paid twice.
        sync_from_journal(conn, source.keys, state.cards["pan"])
        progress(f"onecard region split: {len(plan.cards):,} of {state.n_cards:,} cards, "
                 f"{len(plan.accounts):,} accounts for provinces {','.join(map(str, owned))}")
        return _write_part(source, plan, owned, dst, progress)
    finally:
        conn.close()


def _write_part(source: _Source, plan: Plan, owned: tuple[int, ...], dst: Path,
                progress: Progress) -> SplitSummary:
    """Write the part; on any failure remove what was written (dst as it was, no KEK file
    left behind) and raise."""
    state, keys = source.state, source.keys
    created_dir = not dst.exists()
    written_kek: list[Path] = []
    try:
        kek_where = _destination_kek(source.path, dst, source.kek_file, written_kek)
        modes.private_dir(dst)
        counts = _write_store(source, dst, plan, owned, kek_where, progress)
        if state.holders is not None:   # the part's accounts' records, opened and sealed again
            holders_file.reseal(dst / loader.HOLDERS_FILE, state.holders, keys, plan.accounts)
        sessions = np.isin(source.region_province[state.terminals["region"]], owned)
        arrays = checkpoint_arrays(state.snapshot(), plan, sessions)
        progress("onecard region split: writing the checkpoint")
        snapshots.write(dst, arrays, 0, keys)
        modes.private_tree(dst)
        summary = SplitSummary(
            owns=owned, cards=len(plan.cards), accounts=len(plan.accounts),
            terminals=state.n_terminals, sessions=int(sessions.sum()),
            balance_fen=int(arrays["accounts"]["balance_fen"].sum()),
            medical_fen=int(arrays["accounts"]["medical_fen"].sum()),
            deny_entries=len(arrays["deny_log"]), kek=kek_where, **counts)
        _verify(dst, summary, source, progress)
        return summary
    except BaseException:
        if created_dir:
            shutil.rmtree(dst, ignore_errors=True)
        elif dst.is_dir():
            _empty(dst)
        for path in written_kek:
            path.unlink(missing_ok=True)
        raise


def _empty(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _destination_kek(src: Path, dst: Path, kek_file: str | None,
                     written: list[Path]) -> str:
    """Where the part's KEK will be found (the source's KEK, always). Copied to
    ``<dst>.kek`` only when the source's came from ``<src>.kek``: a KEK from the environment
    or a configured file opens the part where it is, and is not copied anywhere."""
    if os.environ.get(keystore.ENV_KEK):
        return f"${keystore.ENV_KEK}"
    if kek_file:
        return str(keystore.kek_path(dst, kek_file))
    kek, _ = keystore.load_kek(src)
    path = keystore.kek_path(dst)
    if path.exists():
        theirs, _ = keystore.load_kek(dst)
        if theirs != kek:
            raise SplitError(f"{path} holds another key-encryption key than the source's: "
                             "remove it, or split with that key configured")
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with modes.open_private(path, "x") as f:
        written.append(path)
        f.write(kek.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return str(path)


def _write_store(source: _Source, dst: Path, plan: Plan, owned: tuple[int, ...],
                 kek_where: str, progress: Progress) -> dict[str, int]:
    """The part's database in one transaction; how many filings and disbursement rows."""
    conn = source.conn
    out = sqlite.connect(sqlite.db_path(dst))
    try:
        sqlite.create_schema(out)
        out.execute("BEGIN")
        _meta(conn, out, source.path, owned, kek_where)
        for table in VERBATIM_TABLES:
            _copy_rows(out, table, conn.execute(f"SELECT {_columns(out, table)} FROM {table}"))
        _copy_cards(source, out, plan, progress)
        filings = _copy_filings(conn, out, plan)
        disbursements = _copy_disbursements(conn, out, owned)
        out.execute("COMMIT")
    finally:
        out.close()
    return {"filings": filings, "disbursements": disbursements}


def _columns(conn: sqlite3.Connection, table: str) -> str:
    """The table's columns by name: a source migrated from an older schema may order them
    differently from a fresh one."""
    return ", ".join(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))


def _copy_rows(out: sqlite3.Connection, table: str, rows: Iterable[tuple]) -> int:
    cols = _columns(out, table)
    marks = ",".join("?" * (cols.count(",") + 1))
    cur = out.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
    return max(cur.rowcount, 0)


def _meta(conn: sqlite3.Connection, out: sqlite3.Connection, src: Path,
          owned: tuple[int, ...], kek_where: str) -> None:
    """The source's meta rows (the wrapped data key and the KEK's check value among them),
    with where the KEK is, the disbursement sync at the new journal's start, and the split.
    The journal keys of data keys the source's rotations replaced stay with its journal:
    the part's own starts at record 0 under the current one."""
    rows = keystore.own_journal_meta(dict(conn.execute("SELECT key, value FROM meta")))
    rows.pop("schema_version", None)            # the part's, from create_schema
    rows["kek_source"] = kek_where
    rows[SYNC_KEY] = "0"
    rows["split_from"] = json.dumps({
        "source": str(src.resolve()), "owns": list(owned),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "note": "journal record numbers before the split are the source's"})
    out.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", sorted(rows.items()))


def _copy_cards(source: _Source, out: sqlite3.Connection, plan: Plan,
                progress: Progress) -> None:
    """The owned cards' rows, renumbered: sealed values are bound to their row, so each is
    opened at its old index and sealed at its new one. A row a crash kept from being written
    (a card issued by the admin API, journaled but its row not yet inserted) is made again
    from another card of the account, as the admin API makes it."""
    state, keys = source.state, source.keys
    pans, accounts = state.cards["pan"], state.cards["account"]
    seen = np.zeros(len(plan.cards), dtype=bool)
    cur = source.conn.execute("SELECT idx, pan_enc, account, holder_name, id_number, bank, "
                              "kind FROM cards ORDER BY idx")
    done = 0
    while rows := cur.fetchmany(ROWS_PER_CHUNK):
        batch = []
        for idx, pan_enc, account, name, ident, bank, kind in rows:
            new = int(plan.card_map[idx]) if idx < len(plan.card_map) else -1
            if new < 0:
                continue
            pan = keys.open_text("cards", "pan", idx, pan_enc)
            if int(pan) != int(pans[idx]) or account != int(accounts[idx]):
                raise SplitError(f"cards row {idx} ({encrypt.mask(pan)}) disagrees "
                                 "with the checkpoint: the data set is damaged")
            batch.append(encrypt.card_row(
                keys, new, pan, int(plan.account_map[account]),
                keys.open_text("cards", "holder_name", idx, name),
                keys.open_text("cards", "id_number", idx, ident), bank, kind))
            seen[new] = True
        out.executemany("INSERT INTO cards VALUES (?,?,?,?,?,?,?,?)", batch)
        done += len(rows)
        progress(f"onecard region split:   cards rows {done:,} / {state.n_cards:,}")
    for new in np.flatnonzero(~seen).tolist():
        out.execute("INSERT INTO cards VALUES (?,?,?,?,?,?,?,?)",
                    _remade_row(source, plan, new))


def _remade_row(source: _Source, plan: Plan, new: int) -> tuple:
    state, keys = source.state, source.keys
    old = int(plan.cards[new])
    card = state.cards[old]
    account = int(card["account"])
    sibling = source.conn.execute("SELECT idx, holder_name, id_number, bank FROM cards "
                                  "WHERE account = ? LIMIT 1", (account,)).fetchone()
    if sibling is not None:
        idx = sibling[0]
        name = keys.open_text("cards", "holder_name", idx, sibling[1])
        ident = keys.open_text("cards", "id_number", idx, sibling[2])
        bank = sibling[3]
    else:
        (name, ident), bank = state.holder_of(account), ""
    kind = "electronic" if int(card["functions"]) & FN_ECARD else "chip"
    return encrypt.card_row(keys, new, int(card["pan"]),
                                  int(plan.account_map[account]), name, ident, bank, kind)


def _copy_filings(conn: sqlite3.Connection, out: sqlite3.Connection, plan: Plan) -> int:
    rows = [(int(plan.account_map[account]), province, operator, at)
            for account, province, operator, at in conn.execute(
                "SELECT account, province, operator, at FROM filings")
            if account < len(plan.account_map) and plan.account_map[account] >= 0]
    return _copy_rows(out, "filings", rows)


def _copy_disbursements(conn: sqlite3.Connection, out: sqlite3.Connection,
                        owned: tuple[int, ...]) -> int:
    """Rows of owned provinces, by the masked number (its first six digits are kept): the
    HMAC key is the same, so the rows are valid as they are, unknown cards' rows included."""
    cols = _columns(out, "disbursements")
    card_at = cols.split(", ").index("card")
    rows = [row for row in conn.execute(f"SELECT {cols} FROM disbursements")
            if _masked_province(row[card_at]) in owned]
    return _copy_rows(out, "disbursements", rows)


def _masked_province(masked: str) -> int | None:
    digits = masked[PAN_PROVINCE_DIGITS]
    return int(digits) if digits.isdigit() else None


def checkpoint_arrays(snap: dict[str, np.ndarray], plan: Plan,
                      sessions: np.ndarray) -> dict[str, np.ndarray]:
    """The part's checkpoint from the source state's (``State.snapshot()``): cards and
    accounts cut and renumbered, maps and the deny log re-keyed, the terminals' rings and
    sessions as the module docstring says (``sessions``: terminals whose session is here)."""
    cards = snap["cards"][plan.cards]
    cards["account"] = plan.account_map[cards["account"]]
    terminals = snap["terminals"].copy()
    for name in ACQUIRER_FIELDS:
        terminals[name][~sessions] = 0
    return {"cards": cards, "accounts": snap["accounts"][plan.accounts],
            "terminals": terminals, "ring": _ring(snap["ring"], plan, sessions),
            "daily_app": _rekeyed(snap["daily_app"], plan, 8),
            "medical_year": _rekeyed(snap["medical_year"], plan, 0),
            "filings": _rekeyed(snap["filings"], plan, 0),
            "deny_log": _deny_log(snap["deny_log"], plan)}


def _rekeyed(entries: np.ndarray, plan: Plan, shift: int) -> np.ndarray:
    """Map entries keyed by account (``account << shift | low bits``) of owned accounts,
    with their new account numbers."""
    keys = entries["key"].astype(np.uint64)
    account = (keys >> np.uint64(shift)).astype(np.int64)
    low = keys & np.uint64((1 << shift) - 1)
    keep = (account < len(plan.account_map)) & (plan.account_map[np.minimum(
        account, len(plan.account_map) - 1)] >= 0)
    out = np.zeros(int(keep.sum()), dtype=ENTRY_DTYPE)
    out["key"] = (plan.account_map[account[keep]].astype(np.uint64) << np.uint64(shift)
                  ) | low[keep]
    out["a"], out["b"] = entries["a"][keep], entries["b"][keep]
    return out


def _ring(ring: np.ndarray, plan: Plan, sessions: np.ndarray) -> np.ndarray:
    """Slots of owned cards (renumbered) on every terminal; slots naming no card only on the
    terminals whose session is here; every other slot emptied."""
    ring = ring.copy()
    per_terminal = len(ring) // max(len(sessions), 1)
    terminal = np.arange(len(ring)) // max(per_terminal, 1)
    card = ring["card"].astype(np.int64)
    named = card != NO_CARD
    new_card = np.where(named, plan.card_map[np.where(named, card, 0)], -1)
    keep = np.where(named, new_card >= 0, sessions[terminal]) & (ring["kind"] != 0)
    ring[~keep] = np.zeros(1, dtype=ring.dtype)
    moved = keep & named
    ring["card"][moved] = new_card[moved]
    return ring


def _deny_log(log: np.ndarray, plan: Plan) -> np.ndarray:
    """The owned cards' deny-list changes, in order, with their new card numbers. Other
    regions' cards (FOREIGN_DENY) are left out: a part learns them from their issuers'
    published state when it joins its region."""
    own = (log & np.uint32(DENY_FOREIGN)) == 0
    card = (log & np.uint32(DENY_INDEX)).astype(np.int64)
    new_card = np.where(own, plan.card_map[np.where(own, card, 0)], -1)
    keep = new_card >= 0
    return (new_card[keep].astype(np.uint32) | (log[keep] & np.uint32(DENY_REMOVED))).astype(
        np.uint32)


def _verify(dst: Path, summary: SplitSummary, source: _Source, progress: Progress) -> None:
    """Load the part as a switch would and compare it with what was meant to be written."""
    progress(f"onecard region split: checking {dst}/ loads")
    state = loader.load(dst, ring_size=source.ring_size, kek_file=source.kek_file).state
    got = (state.n_cards, state.n_accounts, state.n_terminals,
           int(state.accounts["balance_fen"].sum()))
    meant = (summary.cards, summary.accounts, summary.terminals, summary.balance_fen)
    if got != meant:
        raise SplitError(f"the part written does not load as meant (cards, accounts, "
                         f"terminals, balance fen): {got} != {meant}")

"""Generate the demo data set: cards across the eight provinces, their accounts and holders,
terminals of every kind with their master keys, transit networks, policies and the catalogue.

Deterministic for a given seed (except terminal master keys, which come from the OS's random
source). Written into a fresh data directory (0700): the SQLite database and the first
checkpoint, encrypted at rest under a new data key wrapped by the key-encryption key, which is
created beside the data directory unless one is configured (``security/keystore.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from onecard.core.state import (
    ACCOUNT_DTYPE,
    CARD_ACTIVE,
    CARD_CANCELLED,
    CARD_DTYPE,
    CARD_FROZEN,
    CARD_LOST,
    FN_FINANCIAL,
    FN_MEDICAL,
    FN_TRANSPORT,
    HOLDER_DISABLED,
    HOLDER_HMT,
    HOLDER_NAME_LEN,
    HOLDER_RECORD_BYTES,
    KIND_BALANCE,
    KIND_DENY_SYNC,
    KIND_ECHO,
    KIND_HEARTBEAT,
    KIND_MEDICAL,
    KIND_MEDICAL_REFUND,
    KIND_OFFLINE_TAP,
    KIND_PURCHASE,
    KIND_REVERSAL,
    KIND_SETTLE,
    KIND_SIGNON,
    KIND_TAP,
    KIND_TOPUP,
    KIND_VENUE,
    KIND_VERIFY,
    KIND_VOID,
    OP_BUS,
    OP_FERRY,
    OP_METRO,
    PROTO_ISO8583,
    PROTO_NATIVE,
    RING_DTYPE,
    SCOPE_DEFAULT,
    SCOPE_LODGING,
    TERM_BUS_READER,
    TERM_FERRY_READER,
    TERM_KIOSK,
    TERM_MEDICAL,
    TERM_METRO_GATE,
    TERM_POS,
    TERM_VENUE,
    TERM_VERIFIER,
)
from onecard.protocols.cards import luhn_digit
from onecard.switch import transit
from onecard.switch.reference import (
    BUS_FARE_FEN,
    CATALOGUE,
    FERRIES,
    GIVEN,
    MEDICAL,
    METROS,
    POLICIES,
    POLICIES_PRICE,
    PROGRAMMES,
    SURNAMES,
    TRANSFERS,
    regions,
)
from onecard.switch.security import holders_file, keystore, modes
from onecard.switch.security.keystore import DataKeys
from onecard.switch.store import encrypt, loader, snapshots, sqlite

Progress = Callable[[str], None]

PROVINCE_WEIGHTS = {44: 0.30, 32: 0.16, 13: 0.14, 33: 0.13, 34: 0.12, 31: 0.06, 11: 0.06,
                    12: 0.03}
MAC_X919, MAC_SM4 = 1, 2


def _bit(*kinds: int) -> int:
    return sum(1 << k for k in kinds)


TRANSIT = _bit(KIND_SIGNON, KIND_HEARTBEAT, KIND_TAP, KIND_OFFLINE_TAP, KIND_DENY_SYNC)
PERMITTED = {
    TERM_POS: _bit(KIND_SIGNON, KIND_ECHO, KIND_PURCHASE, KIND_BALANCE, KIND_REVERSAL,
                   KIND_VOID, KIND_SETTLE),
    TERM_METRO_GATE: TRANSIT,
    TERM_BUS_READER: TRANSIT,
    TERM_FERRY_READER: TRANSIT,
    TERM_VERIFIER: _bit(KIND_SIGNON, KIND_HEARTBEAT, KIND_VERIFY),
    TERM_VENUE: _bit(KIND_SIGNON, KIND_HEARTBEAT, KIND_VENUE),
    TERM_MEDICAL: _bit(KIND_SIGNON, KIND_HEARTBEAT, KIND_MEDICAL, KIND_MEDICAL_REFUND),
    TERM_KIOSK: _bit(KIND_SIGNON, KIND_HEARTBEAT, KIND_TOPUP),
}
POLICY_INDEX = {name: i for i, (name, _, _) in enumerate(POLICIES_PRICE)}
BUS_READERS_PER_REGION = 10
FERRY_READERS = 4
GATES_PER_STATION = 2
# (kind, protocol, place, application, price policy, data scope, how many per region)
PER_REGION = (
    (TERM_POS, PROTO_ISO8583, "supermarket", "FIN-PAY", "none", SCOPE_DEFAULT, 20),
    (TERM_POS, PROTO_ISO8583, "pharmacy", "MED-PHARMACY", "none", SCOPE_DEFAULT, 10),
    (TERM_POS, PROTO_ISO8583, "elderly canteen", "ELD-CANTEEN", "canteen tiers A",
     SCOPE_DEFAULT, 6),
    (TERM_POS, PROTO_ISO8583, "elderly canteen", "ELD-CANTEEN", "canteen tiers B",
     SCOPE_DEFAULT, 4),
    (TERM_VERIFIER, PROTO_NATIVE, "government counter", "ID-VERIFY", "none", SCOPE_DEFAULT, 3),
    (TERM_VERIFIER, PROTO_NATIVE, "hotel", "ID-LODGING", "none", SCOPE_LODGING, 3),
    (TERM_VENUE, PROTO_NATIVE, "museum", "CUL-MUSEUM", "museum (free)", SCOPE_DEFAULT, 2),
    (TERM_VENUE, PROTO_NATIVE, "library", "CUL-LIBRARY", "library (free)", SCOPE_DEFAULT, 2),
    (TERM_VENUE, PROTO_NATIVE, "scenic spot", "TOUR-SCENIC", "scenic spot", SCOPE_DEFAULT, 2),
    (TERM_VENUE, PROTO_NATIVE, "sports venue", "SPORT-VENUE", "sports venue", SCOPE_DEFAULT, 2),
    (TERM_MEDICAL, PROTO_NATIVE, "hospital", "MED-SETTLE", "none", SCOPE_DEFAULT, 3),
    (TERM_MEDICAL, PROTO_NATIVE, "pharmacy", "MED-SETTLE", "none", SCOPE_DEFAULT, 2),
    (TERM_KIOSK, PROTO_NATIVE, "service hall", "TRN-TOPUP", "none", SCOPE_DEFAULT, 2),
)
CROSS_BORDER_POS = 10
BANKS = ("中国工商银行", "中国农业银行", "中国银行", "中国建设银行", "交通银行", "中国邮政储蓄银行",
         "招商银行", "广州农村商业银行")


ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_check(first17: str) -> str:
    """GB 11643 check character of an 18-character resident identity number."""
    return "10X98765432"[sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True)) % 11]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _remove_store(path: Path) -> None:
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        Path(name).unlink(missing_ok=True)


def generate(data_dir: str | Path, *, cards: int = 100_000, seed: int = 20241101,
             ring_size: int = 64, force: bool = False, progress: Progress = _stderr,
             kek_file: str | None = None) -> Path:
    """Create the demo data set in data_dir. Refuses to overwrite one unless force."""
    data_dir = Path(data_dir)
    path = sqlite.db_path(data_dir)
    if path.exists() or snapshots.snapshot_root(data_dir).exists():
        if not force:
            raise FileExistsError(f"{data_dir} already holds a data set (use --force to replace)")
        _remove_store(path)
        shutil.rmtree(snapshots.snapshot_root(data_dir), ignore_errors=True)
    modes.private_dir(data_dir)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    progress(f"onecard: generating demo data ({cards:,} cards) in {data_dir}/")
    conn = sqlite.connect(path)
    committed = False
    try:
        sqlite.create_schema(conn)            # executescript commits on its own
        conn.execute("BEGIN")
        keys = keystore.init_data_set(conn, data_dir, kek_file)
        region_rows = _write_reference(conn)
        terminal_count = _write_terminals(conn, region_rows, keys)
        card_arr, account_arr, holder_rows = _write_cards(conn, rng, cards, region_rows,
                                                          progress, keys)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('created', ?)",
                     (dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('seed', ?)", (str(seed),))
        conn.execute("COMMIT")
        committed = True
        terminals = loader.terminals_array(conn, keys)
    finally:
        conn.close()
        if not committed:                    # a failed start (no key, say) leaves no store
            _remove_store(path)
    _write_holders(data_dir / loader.HOLDERS_FILE, holder_rows, keys)
    snapshots.write(data_dir, {"cards": card_arr, "accounts": account_arr,
                               "terminals": terminals,
                               "ring": np.zeros(len(terminals) * ring_size, dtype=RING_DTYPE)},
                    0, keys)
    modes.private_tree(data_dir)
    progress(f"onecard: demo data ready: {cards:,} cards, {terminal_count:,} terminals "
             f"({time.perf_counter() - started:.1f} s)")
    return path


def _write_reference(conn) -> list:
    rows = regions()
    for idx, r in enumerate(rows):
        age, pct, dpct = POLICIES.get(r.code, (0, 100, 100))
        tmin, tfen = TRANSFERS.get(r.code, (0, 0))
        ded, ratio, cap = MEDICAL.get(r.province, (0, 0, 0))
        conn.execute("INSERT INTO regions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     (idx, r.code, r.name_zh, r.name_en, r.province, r.group, age, pct, dpct,
                      tmin, tfen, ded, ratio, cap))
    region_idx = {r.code: i for i, r in enumerate(rows)}
    op = 0
    for r in rows:
        if r.province in (81, 82):
            continue
        conn.execute("INSERT INTO operators VALUES (?,?,?,?,?,?,NULL)",
                     (op, f"BUS{r.code}", f"{r.name_zh}公交", OP_BUS, region_idx[r.code],
                      BUS_FARE_FEN.get(r.code, 200)))
        op += 1
    for code, name, region, fare in FERRIES:
        conn.execute("INSERT INTO operators VALUES (?,?,?,?,?,?,NULL)",
                     (op, code, name, OP_FERRY, region_idx[region], fare))
        op += 1
    for m in METROS:
        conn.execute("INSERT INTO operators VALUES (?,?,?,?,?,?,?)",
                     (op, m.code, m.name, OP_METRO, region_idx[m.region], m.rule.base_fen,
                      transit.rule_to_json(m.rule)))
        ids: dict[str, int] = {}
        for line, stops in m.lines:
            for name, km in stops:
                # An interchange is one station id per line: gates belong to a line's hall.
                sid = m.region * 1000 + len(ids) + 1
                ids[f"{line}/{name}"] = sid
                conn.execute("INSERT INTO stations VALUES (?,?,?,?,?)", (sid, op, line, name, km))
        op += 1
    for idx, e in enumerate(CATALOGUE):
        conn.execute("INSERT INTO catalogue VALUES (?,?,?,?,?,?,?,?,1,0)",
                     (e.code, idx, e.name_zh, e.name_en, e.domain, e.functions, e.scope,
                      e.daily_limit_fen))
    for idx, (name, base, rules) in enumerate(POLICIES_PRICE):
        conn.execute("INSERT INTO policies VALUES (?,?,?,?)",
                     (idx, name, base, json.dumps([list(r) for r in rules])))
    conn.executemany("INSERT INTO programmes VALUES (?,?,?,?)",
                     [(i, *p) for i, p in enumerate(PROGRAMMES)])
    conn.executemany("INSERT INTO surnames VALUES (?,?)", list(enumerate(SURNAMES)))
    return rows


def _write_terminals(conn, region_rows, keys: DataKeys) -> int:
    region_idx = {r.code: i for i, r in enumerate(region_rows)}
    serial: dict[str, int] = {}
    rows: list[tuple] = []
    letters = {TERM_POS: "P", TERM_METRO_GATE: "G", TERM_BUS_READER: "B",
               TERM_FERRY_READER: "F", TERM_VERIFIER: "V", TERM_VENUE: "E", TERM_MEDICAL: "M",
               TERM_KIOSK: "K"}

    def add(kind, protocol, r, place, app, name, *, operator=None, station=None,
            policy="none", scope=SCOPE_DEFAULT):
        letter = letters[kind]
        n = serial.get(letter + str(r.province), 0) + 1
        serial[letter + str(r.province)] = n
        tid = f"{letter}{r.province:02d}{n:05d}"
        merchant = f"898{r.code:06d}{len(rows) % 1_000_000:06d}"
        mac_alg = MAC_X919 if len(rows) % 2 == 0 else MAC_SM4
        rows.append((len(rows), tid, merchant, kind, protocol, region_idx[r.code], operator,
                     station, mac_alg, PERMITTED[kind], keys.wrap_tmk(tid, os.urandom(16)),
                     name, place, app, POLICY_INDEX[policy], scope))

    ops = {code: idx for idx, code in conn.execute("SELECT idx, code FROM operators")}
    for r in region_rows:
        if r.province in (81, 82):
            for i in range(CROSS_BORDER_POS):
                add(TERM_POS, PROTO_ISO8583, r, "bank", "FIN-PAY", f"{r.name_en} bank POS {i + 1}")
            continue
        for kind, protocol, place, app, policy, scope, count in PER_REGION:
            for i in range(count):
                add(kind, protocol, r, place, app, f"{r.name_en} {place} {i + 1}",
                    policy=policy, scope=scope)
        for i in range(BUS_READERS_PER_REGION):
            add(TERM_BUS_READER, PROTO_NATIVE, r, "bus", "TRN-BUS", f"{r.name_en} bus {i + 1}",
                operator=ops[f"BUS{r.code}"])
    by_code = {r.code: r for r in region_rows}
    for code, _name, region, _fare in FERRIES:
        for i in range(FERRY_READERS):
            add(TERM_FERRY_READER, PROTO_NATIVE, by_code[region], "ferry", "TRN-FERRY",
                f"{code} pier {i + 1}", operator=ops[code])
    for sid, op_idx, line, name, region in conn.execute(
            "SELECT s.id, s.operator_idx, s.line, s.name, r.code FROM stations s "
            "JOIN operators o ON o.idx = s.operator_idx JOIN regions r ON r.idx = o.region_idx "
            "ORDER BY s.id"):
        for g in range(GATES_PER_STATION):
            add(TERM_METRO_GATE, PROTO_NATIVE, by_code[region], "metro", "TRN-METRO",
                f"{name} ({line}) gate {g + 1}", operator=op_idx, station=sid)
    conn.executemany("INSERT INTO terminals VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    return len(rows)


def _holder(name: str, ident: str) -> bytes:
    raw = name.encode()[:HOLDER_NAME_LEN]
    return raw.ljust(HOLDER_NAME_LEN, b"\0") + ident.encode().ljust(
        HOLDER_RECORD_BYTES - HOLDER_NAME_LEN, b"\0")


def _write_holders(path: Path, rows: list[bytes], keys: DataKeys) -> None:
    """Full names and identity numbers by account, fixed-size records sealed in blocks that
    the core opens one at a time when a lodging terminal verifies a card (holders_file.py)."""
    step = 1 << 16
    holders_file.write(path, (b"".join(rows[i:i + step]) for i in range(0, len(rows), step)),
                       len(rows), keys)


class _People(NamedTuple):
    """What the cards table's names and identity numbers are made from, per account."""

    birth: np.ndarray           # datetime64[D]
    surname: np.ndarray         # index into SURNAMES
    given_len: np.ndarray       # 1 or 2 characters
    flags: np.ndarray           # HOLDER_*


def _write_cards(conn, rng, n: int, region_rows, progress: Progress, keys: DataKeys):
    """n cards with their accounts and holders: the arrays of the first checkpoint, the holder
    records, and the cards and filings tables. The random draws come in a fixed order, so a
    seed gives the same data set."""
    today = dt.date.today()
    region_of = _card_regions(rng, n, region_rows)
    cards = _card_array(rng, n, region_of, today)
    accounts, people = _account_array(rng, n, region_of, region_rows, today)
    holders = _insert_cards(conn, rng, cards, region_of, region_rows, people, progress, keys)
    _insert_filings(conn, rng, n, region_of, region_rows, today)
    return cards, accounts, holders


def _card_regions(rng, n: int, region_rows) -> np.ndarray:
    """Each card's issuing region: provinces by PROVINCE_WEIGHTS, then a region within."""
    provinces = np.array(sorted(PROVINCE_WEIGHTS))
    weights = np.array([PROVINCE_WEIGHTS[p] for p in provinces])
    card_prov = rng.choice(provinces, size=n, p=weights / weights.sum())
    region_of = np.zeros(n, dtype=np.int64)
    for p in provinces:
        members = [i for i, r in enumerate(region_rows) if r.province == p]
        # The province's main city (first listed) issues most cards.
        w = np.array([3.0 if k == 0 else 1.0 for k in range(len(members))])
        mask = card_prov == p
        region_of[mask] = rng.choice(members, size=int(mask.sum()), p=w / w.sum())
    return region_of


def _card_array(rng, n: int, region_of: np.ndarray, today: dt.date) -> np.ndarray:
    """Status, expiry and loaded functions (card numbers come with the cards table)."""
    cards = np.zeros(n, dtype=CARD_DTYPE)
    cards["account"] = np.arange(n)
    cards["region"] = region_of
    status = rng.choice([CARD_ACTIVE, CARD_LOST, CARD_FROZEN, CARD_CANCELLED], size=n,
                        p=[0.99, 0.005, 0.003, 0.002])
    cards["status"] = status
    year = today.year % 100
    expiry_year = rng.integers(year + 1, year + 11, size=n)
    expired = rng.random(n) < 0.004
    expiry_year[expired] = rng.integers(year - 3, year, size=int(expired.sum()))
    cards["expiry_yymm"] = expiry_year * 100 + rng.integers(1, 13, size=n)
    functions = np.where(rng.random(n) < 0.98, FN_FINANCIAL, 0)
    functions |= np.where(rng.random(n) < 0.93, FN_TRANSPORT, 0)
    functions |= np.where(rng.random(n) < 0.96, FN_MEDICAL, 0)
    cards["functions"] = functions
    return cards


def _account_array(rng, n: int, region_of: np.ndarray, region_rows,
                   today: dt.date) -> tuple[np.ndarray, _People]:
    """Ages, names, holder flags and balances of the accounts (one per card)."""
    accounts = np.zeros(n, dtype=ACCOUNT_DTYPE)
    accounts["region"] = region_of
    bands = rng.choice(5, size=n, p=[0.18, 0.60, 0.11, 0.07, 0.04])
    lo = np.array([0, 18, 60, 70, 80])[bands]
    hi = np.array([18, 60, 70, 80, 96])[bands]
    age_days = (rng.integers(lo, hi) * 365.25 + rng.integers(0, 365, size=n)).astype(np.int64)
    birth = np.datetime64(today.isoformat()) - age_days.astype("timedelta64[D]")
    accounts["birth_day"] = (birth - np.datetime64("1900-01-01")).astype(np.int64)
    zipf = 1.0 / np.arange(1, len(SURNAMES) + 1)
    surname = rng.choice(len(SURNAMES), size=n, p=zipf / zipf.sum())
    accounts["surname"] = surname
    given_len = np.where(rng.random(n) < 0.7, 2, 1)
    surname_len = np.array([len(s) for s in SURNAMES])[surname]
    accounts["name_len"] = surname_len + given_len
    flags = np.where(rng.random(n) < 0.02, HOLDER_DISABLED, 0)
    is_gd = np.array([region_rows[r].province == 44 for r in region_of])
    flags |= np.where(is_gd & (rng.random(n) < 0.01), HOLDER_HMT, 0)
    accounts["flags"] = flags
    balance = np.exp(rng.normal(np.log(200_000), 1.0, size=n)).astype(np.int64)
    low = rng.random(n) < 0.05              # some cards nearly empty: "insufficient funds" is real
    balance[low] = rng.integers(0, 500, size=int(low.sum()))
    accounts["balance_fen"] = np.clip(balance, 0, 50_000_000)
    accounts["medical_fen"] = rng.integers(0, 500_000, size=n)
    return accounts, _People(birth, surname, given_len, flags)


def _insert_cards(conn, rng, cards: np.ndarray, region_of: np.ndarray, region_rows,
                  people: _People, progress: Progress, keys: DataKeys) -> list[bytes]:
    """Card numbers (into cards["pan"]) and the cards table's rows, 100,000 at a time; returns
    the holder records."""
    n = len(cards)
    bins = {p: f"621{p:02d}1" for p in sorted(PROVINCE_WEIGHTS)}
    given = np.array(GIVEN)
    holders: list[bytes] = [b""] * n
    chunk = 100_000
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = []
        g1 = rng.choice(given, size=stop - start)
        g2 = rng.choice(given, size=stop - start)
        seqs = rng.integers(0, 1000, size=stop - start)
        for i in range(start, stop):
            r = region_rows[region_of[i]]
            body = f"{bins[r.province]}{i:012d}"
            pan = body + luhn_digit(body)
            cards["pan"][i] = int(pan)
            k = i - start
            name = (SURNAMES[people.surname[i]] + g1[k]
                    + (g2[k] if people.given_len[i] == 2 else ""))
            born = str(people.birth[i]).replace("-", "")
            if people.flags[i] & HOLDER_HMT:
                first17 = f"8{1 + i % 3}0000{born}{seqs[k]:03d}"   # HK/Macao/Taiwan permit
            else:
                first17 = f"{r.code:06d}{born}{seqs[k]:03d}"
            rows.append((i, pan, i, name, first17 + id_check(first17),
                         BANKS[i % len(BANKS)]))
        conn.executemany("INSERT INTO cards VALUES (?,?,?,?,?,?,?,?)",
                         [encrypt.card_row(keys, *row, "chip") for row in rows])
        holders[start:stop] = [_holder(name, ident) for _, _, _, name, ident, _ in rows]
        if n > chunk:
            progress(f"onecard:   cards {stop:,}/{n:,}")
    return holders


def _insert_filings(conn, rng, n: int, region_of: np.ndarray, region_rows,
                    today: dt.date) -> None:
    """Some holders have filed for treatment in another province (异地就医备案)."""
    filed = np.flatnonzero(rng.random(n) < 0.01)
    provs = np.array(sorted(PROVINCE_WEIGHTS))
    for account in filed.tolist():
        home = region_rows[region_of[account]].province
        other = int(rng.choice(provs[provs != home]))
        conn.execute("INSERT INTO filings VALUES (?,?,'demo',?)",
                     (account, other, today.isoformat()))

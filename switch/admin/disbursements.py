"""Disbursements: credits from a programme (pensions, benefits, subsidies) for a period,
idempotent per (programme, period, card), with a result per item.

The journal is the record of money moved: every credit is a CREDIT record carrying programme
and period. The ``disbursements`` table is the report and the idempotency index; it is written
once the credits are durable, and rebuilt from the journal at start for credits whose rows
never made it (a crash in between). Rows are keyed by the card number's HMAC (``pan_hmac``)
and show it masked: no card number is stored in clear.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

import numpy as np

from onecard.core.state import KIND_CREDIT
from onecard.protocols import journal_codec
from onecard.protocols.codes import CODES
from onecard.switch.security.keystore import DataKeys
from onecard.switch.sql import SqlConnection
from onecard.switch.store import backend, sqlite
from onecard.switch.store.encrypt import mask

RESULTS = {"00": "credited", "14": "unknown or cancelled card", "13": "invalid amount",
           "94": "already paid for this programme and period", "96": "system error"}
SYNC_KEY = "disbursements_synced_no"
LOOKUP_CHUNK = 10_000             # bound parameters per query (SQLite allows 32,766)
MAX_ITEM_FEN = 100_000_000         # one million yuan: no programme pays more to one card


def parse_period(value) -> int:
    text = str(value).replace("-", "")
    if (len(text) != 6 or not (text.isascii() and text.isdigit())
            or not 1 <= int(text[4:]) <= 12):
        raise ValueError(f"period {value!r}: expected YYYY-MM")
    return int(text)


def parse_items(items) -> tuple[np.ndarray, np.ndarray]:
    """Card numbers and amounts from [{"card": "...", "amount_fen": n}, ...]."""
    pans = np.zeros(len(items), dtype=np.uint64)
    amounts = np.zeros(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"item {i}: expected an object with card and amount_fen")
        card, amount = str(item.get("card", "")), item.get("amount_fen")
        if not (12 <= len(card) <= 19 and card.isascii() and card.isdigit()):
            raise ValueError(f"item {i}: card must be 12-19 digits")
        if (not isinstance(amount, int) or isinstance(amount, bool)
                or not 0 < amount <= MAX_ITEM_FEN):
            raise ValueError(f"item {i}: amount_fen must be an integer from 1 to {MAX_ITEM_FEN}")
        pans[i], amounts[i] = int(card), amount
    return pans, amounts


def parse_csv(text: str) -> list[dict]:
    """A CSV with columns card, amount_fen (a header row is required)."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or {"card", "amount_fen"} - set(reader.fieldnames):
        raise ValueError("CSV needs a header with the columns card,amount_fen")
    items = []
    for line, row in enumerate(reader, start=2):
        try:
            items.append({"card": row["card"].strip(), "amount_fen": int(row["amount_fen"])})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"CSV line {line}: amount_fen is not an integer") from exc
    return items


def already_paid(conn: SqlConnection, keys: DataKeys, programme: int, period: int,
                 pans: np.ndarray) -> set[int]:
    """Which of these cards were credited for the programme and period. Looked up by primary
    key for the batch's cards only: a province's run arrives in many batches, and reading
    every row paid so far for each of them would grow with the run."""
    by_hmac = {keys.pan_hmac(int(p)): int(p) for p in pans}
    hmacs = list(by_hmac)
    paid = set()
    for start in range(0, len(hmacs), LOOKUP_CHUNK):
        chunk = hmacs[start:start + LOOKUP_CHUNK]
        paid |= {by_hmac[bytes(h)] for (h,) in conn.execute(
            "SELECT pan_hmac FROM disbursements WHERE programme = ? AND period = ? AND "
            f"result = '00' AND pan_hmac IN ({','.join('?' * len(chunk))})",
            (programme, period, *chunk))}
    return paid


def record(conn: SqlConnection, keys: DataKeys, programme: int, period: int, pans, amounts,
           codes, nos, operator: str) -> None:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with backend.transaction(conn):
        conn.executemany(
            "INSERT INTO disbursements VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (programme, "
            "period, pan_hmac) DO UPDATE SET "
            "amount_fen = excluded.amount_fen, result = excluded.result, "
            "record_no = excluded.record_no, operator = excluded.operator, at = excluded.at "
            "WHERE disbursements.result != '00'",
            [(programme, period, keys.pan_hmac(int(p)), mask(int(p)), int(a), c,
              int(n) if c == "00" else None, operator, now)
             for p, a, c, n in zip(pans, amounts, codes, nos, strict=True) if c != "94"])


def sync_from_journal(conn: SqlConnection, keys: DataKeys, card_pans: np.ndarray) -> int:
    """Rows for credits in the journal that the table lacks; returns how many were added."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (SYNC_KEY,)).fetchone()
    since = int(row[0]) if row else 0
    recs, nos = sqlite.journal_records(conn, since)
    kind = recs["kind"] == KIND_CREDIT
    credits = journal_codec.view(recs[kind], "credit")
    paid = credits["programme"] > 0                 # 0: an operator's top-up
    added = 0
    end = int(nos[-1]) + 1 if len(nos) else since
    with backend.transaction(conn):
        for r, no in zip(credits[paid], nos[kind][paid], strict=True):
            pan = int(card_pans[r["card"]])
            cur = conn.execute(
                "INSERT INTO disbursements VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (int(r["programme"]) - 1, int(r["period"]), keys.pan_hmac(pan), mask(pan),
                 int(r["amount_fen"]), CODES[r["rc"]][0], int(no),
                 f"operator {int(r['operator'])}",
                 dt.datetime.fromtimestamp(r["ts_us"] / 1e6, dt.UTC).isoformat(
                     timespec="seconds")))
            added += cur.rowcount
        conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                     "value = excluded.value", (SYNC_KEY, str(end)))
    return added


def totals(conn: SqlConnection) -> list[dict]:
    # CAST: PostgreSQL sums bigints as numeric (a Decimal, which JSON cannot encode). Sorted
    # here rather than by ORDER BY, whose text order depends on PostgreSQL's collation.
    rows = conn.execute(
        "SELECT p.code, p.name_zh, p.name_en, d.period, COUNT(*), "
        "CAST(SUM(d.amount_fen) AS BIGINT) FROM disbursements d JOIN programmes p "
        "ON p.idx = d.programme WHERE d.result = '00' GROUP BY p.code, p.name_zh, p.name_en, "
        "d.period").fetchall()
    return [{"programme": code, "name_zh": zh, "name_en": en, "period": period,
             "credited_items": n, "credited_fen": fen}
            for code, zh, en, period, n, fen in sorted(rows, key=lambda r: (r[0], r[3]))]


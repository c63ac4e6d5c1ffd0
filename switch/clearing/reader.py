"""What clearing reads for settlement dates: their records, and the few records of other days
that clearing them needs, by the journal's day index (``store.rows_of_days``), never the
whole journal. Memory is the dates' records plus that context; each row is filtered as it is
read, so a row's other records are not kept.

The context, each bounded and documented in protocols/CLEARING.md ("What a date reads"):
- the previous leg of a transfer discounted on the dates whose account rode nothing earlier
  on them: that account's rides ended in the ``TRANSFER_S`` (6 hours) before the dates
  began (a transfer window is minutes, a ride at most hours);
- the records of a batch settled unbalanced on the dates, back to the terminal's previous
  settlement, and its upload, up to the terminal's next settlement: a day at a time, at most
  ``BATCH_DAYS`` days either way;
- institutions' daily totals for the dates, sent at most ``TOTALS_DAYS`` days after;
- every adjustment journaled from the day before the dates on (they are rare: operators'
  resolutions of exceptions, found by the index's kinds).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Final

import numpy as np

from onecard.protocols import clearing
from onecard.protocols.clearing import CST_OFFSET_S, DAYS_1970_TO_2000, SECONDS_PER_DAY
from onecard.protocols.journal import KIND_BY_NAME
from onecard.protocols.journal_codec import RECORD_DTYPE, calendar_days, view
from onecard.switch.clearing.apportion import TAP_KINDS, ride_ends
from onecard.switch.clearing.exceptions import BATCH_KINDS, UNBALANCED
from onecard.switch.clearing.positions import Reference
from onecard.switch.errors import EXIT_USAGE, ClearingError

# (first calendar day, last calendar day, kinds bit mask) -> (first_no, records) rows
RowsOfDays = Callable[[int, int, int], Iterator[tuple[int, bytes]]]

TRANSFER_S: Final = 6 * 3600           # a ride ended this long before a date can be a leg
BATCH_DAYS: Final = 7
TOTALS_DAYS: Final = 7
LAST_DAY: Final = 1 << 40                # "to the journal's end" in the index's days
ALL_KINDS: Final = (1 << 63) - 1
_K = {name: KIND_BY_NAME[name].value for name in (
    "SETTLE", "BATCH_UPLOAD", "MEDICAL_TOTALS", "ADJUSTMENT")}


def _bits(*kinds: int) -> int:
    return sum(1 << k for k in set(kinds))


def _collect(rows: Iterator[tuple[int, bytes]],
             keep: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The records of ``rows`` that ``keep`` selects (copied: the rows are let go), and
    their numbers."""
    parts, numbers = [], []
    for first_no, blob in rows:
        recs = np.frombuffer(blob, dtype=RECORD_DTYPE)
        picked = np.flatnonzero(keep(recs))
        if len(picked):
            parts.append(recs[picked])            # a copy: the row's bytes are let go
            numbers.append(picked.astype(np.int64) + first_no)
    if not parts:
        return np.zeros(0, dtype=RECORD_DTYPE), np.zeros(0, dtype=np.int64)
    return np.concatenate(parts), np.concatenate(numbers)


def _without_first_leg(recs: np.ndarray) -> np.ndarray:
    """Accounts with a transfer discounted among ``recs`` (the dates' records) and no ride
    ended before it among them: their previous leg is before the dates."""
    discounted = np.isin(recs["kind"], TAP_KINDS) & (view(recs, "tap")["transfer_discount_fen"]
                                                     > 0)
    if not discounted.any():
        return np.zeros(0, dtype=recs["account"].dtype)
    cand = np.flatnonzero(ride_ends(recs) | discounted)   # already in journal order
    cand = cand[np.argsort(recs["account"][cand], kind="stable")]
    account = recs["account"][cand]
    first = np.ones(len(cand), dtype=bool)
    first[1:] = account[1:] != account[:-1]
    return np.unique(account[first & discounted[cand]])


def _calendar_day(ts_us: int) -> int:
    return int(calendar_days(np.array([ts_us]))[0])


def _walk(rows: RowsOfDays, days: range, kinds: int, keep: Callable[[np.ndarray], np.ndarray],
          terminals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keep``'s records of the calendar days in ``days``, a day at a time, until each of
    ``terminals`` has a settlement among them."""
    parts = []
    for day in days:
        parts.append(_collect(rows(day, day, kinds), keep))
        settled = np.concatenate([p[0]["terminal"][p[0]["kind"] == _K["SETTLE"]]
                                  for p in parts])
        if np.isin(terminals, settled).all():
            break
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class _Dates:
    """Settlement dates lo..hi (day numbers) under a cut-over."""

    def __init__(self, first: dt.date, last: dt.date, cutover: str) -> None:
        self.lo, self.hi = clearing.day_number(first), clearing.day_number(last)
        self.cut = clearing.cutover_minutes(cutover)

    def days(self, recs: np.ndarray) -> np.ndarray:
        return clearing.settlement_days(recs["ts_us"], self.cut)

    def start_us(self) -> int:
        """The first microsecond of the first date (its cut-over the day before)."""
        shift_s = (24 * 60 - self.cut) % (24 * 60) * 60
        day_s = (self.lo + DAYS_1970_TO_2000) * SECONDS_PER_DAY - CST_OFFSET_S - shift_s
        return day_s * 1_000_000

    def inside(self, recs: np.ndarray) -> np.ndarray:
        d = self.days(recs)
        return (d >= self.lo) & (d <= self.hi)


def read_dates(rows: RowsOfDays, first: dt.date, last: dt.date,
               cutover: str) -> tuple[np.ndarray, np.ndarray]:
    """The records of settlement dates first..last and their context, in journal order, and
    their numbers: what positions.legs, exceptions.find and medical need for those dates."""
    assert first <= last, (first, last)
    d = _Dates(first, last, cutover)
    # A date's records were decided on its calendar day or, from the cut-over on, the day
    # before: read those days' rows, keep the dates' records.
    main = _collect(rows(d.lo - 1, d.hi, ALL_KINDS), d.inside)
    parts = [main, *_context(rows, d, *main)]
    recs = np.concatenate([p[0] for p in parts])
    nos = np.concatenate([p[1] for p in parts])
    order = np.argsort(nos, kind="stable")
    assert len(order) < 2 or np.all(np.diff(nos[order]) > 0), "a record read twice"
    return recs[order], nos[order]


def _context(rows: RowsOfDays, d: _Dates, recs: np.ndarray,
             nos: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    kind = recs["kind"]
    first_leg = _without_first_leg(recs)
    if len(first_leg):
        start_us = d.start_us()
        out.append(_collect(
            rows(_calendar_day(start_us - TRANSFER_S * 10**6), _calendar_day(start_us),
                 _bits(*TAP_KINDS)),
            lambda r: (ride_ends(r) & np.isin(r["account"], first_leg)
                       & (r["ts_us"] >= start_us - TRANSFER_S * 10**6)
                       & (r["ts_us"] < start_us))))
    settle = view(recs, "settle")
    unbalanced = (kind == _K["SETTLE"]) & (settle["result"] == UNBALANCED)
    if unbalanced.any():
        terminals = np.unique(recs["terminal"][unbalanced])
        # back to each terminal's settlement before (its batch), forward to its next one
        # (its upload comes before it), a day at a time, BATCH_DAYS at most
        out.append(_walk(rows, range(d.lo - 1, d.lo - 2 - BATCH_DAYS, -1), ALL_KINDS,
                         lambda r: (np.isin(r["terminal"], terminals) & (d.days(r) < d.lo)
                                    & np.isin(r["kind"], [*BATCH_KINDS, _K["SETTLE"]])),
                         terminals))
        out.append(_walk(rows, range(d.hi, d.hi + 1 + BATCH_DAYS),
                         _bits(_K["BATCH_UPLOAD"], _K["SETTLE"]),
                         lambda r: (np.isin(r["terminal"], terminals) & (d.days(r) > d.hi)
                                    & np.isin(r["kind"], [_K["BATCH_UPLOAD"], _K["SETTLE"]])),
                         terminals))

    def totals(r: np.ndarray) -> np.ndarray:
        told = view(r, "medical_totals")["settle_day"]
        return ((r["kind"] == _K["MEDICAL_TOTALS"]) & (told >= d.lo) & (told <= d.hi)
                & ~d.inside(r))

    out.append(_collect(rows(d.lo - 1, d.hi + TOTALS_DAYS, _bits(_K["MEDICAL_TOTALS"])),
                        totals))
    out.append(_collect(rows(d.lo - 1, LAST_DAY, _bits(_K["ADJUSTMENT"])),
                        lambda r: (r["kind"] == _K["ADJUSTMENT"]) & ~d.inside(r)))
    return out


def registry(conn, card_pan: np.ndarray, card_region: np.ndarray) -> Reference:
    """Who is behind each card (its number and issuing region index, from the state),
    terminal, application and programme (the store's tables)."""
    # the regions table's codes (the state's copy numbers provinces by index)
    rows = np.array(conn.execute("SELECT code, province FROM regions ORDER BY idx").fetchall(),
                    dtype=np.int64).reshape(-1, 2)
    terminals = conn.execute("SELECT t.tid, t.merchant, o.code, r.province FROM terminals t "
                             "LEFT JOIN operators o ON o.idx = t.operator_idx JOIN regions r "
                             "ON r.idx = t.region_idx ORDER BY t.idx").fetchall()
    apps = [code for (code,) in conn.execute("SELECT code FROM catalogue ORDER BY idx")]
    programmes = [code for (code,) in conn.execute("SELECT code FROM programmes ORDER BY idx")]
    region = np.asarray(card_region, dtype=np.int64)
    return Reference(card_province=rows[region, 1], card_region=rows[region, 0],
                     terminal_acquirer=[operator or merchant for _, merchant, operator, _
                                        in terminals],
                     app_codes=apps, programme_codes=programmes,
                     card_pan=np.asarray(card_pan, dtype=np.uint64),
                     terminal_tid=[tid for tid, _, _, _ in terminals],
                     terminal_province=np.array([p for *_, p in terminals], dtype=np.int64))


# ---- the settlement dates asked for -----------------------------------------------------------
# Here, below the commands: the admin API's clearing routes and `onecard clearing` read the
# same dates, and the switch must not import a command module to do so.

class DateError(ClearingError, ValueError):
    """A settlement date that is not YYYY-MM-DD (or a month not YYYY-MM): a usage error
    (exit status 2, the admin API's 400). A ValueError too: the command's date check catches
    it with the month's."""

    exit_status = EXIT_USAGE


class FutureDate(DateError):
    """A settlement date that has not begun (the admin API's 422: well formed, not yet)."""


def current_date(cutover: str, now: dt.datetime | None = None) -> dt.date:
    """The settlement date that has begun last at ``now`` (default: the clock): the China
    date, or the next one from the cut-over on, as records are dated."""
    now = now or dt.datetime.now(clearing.CST)
    now_us = np.array([int(now.timestamp() * 1_000_000)])
    return clearing.day_date(clearing.settlement_days(now_us,
                                                      clearing.cutover_minutes(cutover))[0])


def settlement_date(text: str, cutover: str = clearing.CUTOVER_DEFAULT,
                    now: dt.datetime | None = None) -> dt.date:
    """A settlement date as given (YYYY-MM-DD): DateError if malformed, FutureDate if it
    has not begun at ``now``. A date begins at the cut-over before it, not at midnight: at
    23:45 with the cut-over at 23:46 tomorrow's date has no records yet, and positions of
    it would be an empty answer that later changes."""
    try:
        date = dt.date.fromisoformat(text)
    except (ValueError, TypeError):
        raise DateError(f"date {text!r} is not YYYY-MM-DD") from None
    current = current_date(cutover, now)
    if date > current:
        raise FutureDate(f"{date} is in the future: it has not begun (the current "
                         f"settlement date is {current}, cut-over {cutover} China time)")
    return date

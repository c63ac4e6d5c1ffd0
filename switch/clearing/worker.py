"""Clearing a date in a process of its own, for the running switch (issue 28): the date's
records, legs and exceptions never live in the serving process, whose memory therefore does
not grow with a date's size, and a worker that dies takes nothing of the switch with it.

The worker reads the committed journal from the store itself (reader.read_dates). The one
thing only the serving process has is the cards' numbers and regions (cards issued since
the last checkpoint are in its state only): the worker asks for the cards its records name,
in chunks of at most ``CARDS_PER_ASK``, and renumbers them densely, so neither process holds
a per-card array of every card. What comes back is small: the positions per party and the
exceptions, with the cards' own indices.

Protocol on the pipe (worker -> switch): ``bytes`` chunks of card indices (int64), each
answered by the switch with their numbers (uint64) then regions (int64), 0 and -1 for a
card it does not have; an empty chunk ends the asking; then one ``Outcome``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import resource
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

import msgspec
import numpy as np

from onecard.protocols import clearing
from onecard.protocols.journal import NONE
from onecard.switch import store
from onecard.switch.clearing import exceptions, files, reader
from onecard.switch.clearing.positions import ClearingError, Day, legs, summarise
from onecard.switch.clearing.reader import registry

CARDS_PER_ASK: Final = 65_536           # per round trip: well under a millisecond of the loop


class WorkerFailed(ClearingError):
    """The worker could not clear the date (not the journal's fault: a crash, a store): the
    admin API answers 503, a retry may clear it."""


@dataclasses.dataclass(frozen=True)
class Job:
    data_dir: str
    dsn: str | None
    date: dt.date
    cutover: str
    fees: dict[str, clearing.Fee]
    out_dir: str | None                 # write the date's files here; None: positions only


@dataclasses.dataclass(frozen=True)
class Outcome:
    day: Day | None = None
    found: list[exceptions.Exception_] | None = None
    error: str = ""                     # a ClearingError's message
    failed: str = ""                    # anything else: its type and message
    seconds: float = 0.0
    peak_rss_bytes: int = 0             # the worker's


class _Asking:
    """The pipe to the switch while the worker asks it for cards: the asking ends once, with
    an empty chunk, whether the cards were all asked for or the job failed before."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.open = True

    def cards(self, named: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Numbers and regions of the cards ``named`` (0 and -1 for a card it lacks)."""
        pans = np.zeros(len(named), dtype=np.uint64)
        regions = np.full(len(named), -1, dtype=np.int64)
        for at in range(0, len(named), CARDS_PER_ASK):
            part = named[at:at + CARDS_PER_ASK]
            self.conn.send_bytes(part.tobytes())
            pans[at:at + len(part)] = np.frombuffer(self.conn.recv_bytes(), dtype=np.uint64)
            regions[at:at + len(part)] = np.frombuffer(self.conn.recv_bytes(), dtype=np.int64)
        self.end()
        return pans, regions

    def end(self) -> None:
        if self.open:
            self.conn.send_bytes(b"")
            self.open = False


def _renumber(asking: _Asking,
              recs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The records' cards renumbered densely, in place; the numbers, regions and switch
    indices of the cards by their new numbers (the switch's answers). A card the switch
    lacks is numbered past them all (clearing's "unknown card")."""
    cards = recs["card"]
    some = cards != NONE
    named = np.unique(cards[some]).astype(np.int64)
    pans, regions = asking.cards(named)
    known = regions >= 0
    renumber = np.where(known, np.cumsum(known) - 1,
                        np.count_nonzero(known) + np.arange(len(named)))
    cards[some] = renumber[np.searchsorted(named, cards[some])]
    return pans[known], regions[known], named[known]


def _rows(job: Job):
    """(rows_of_days, registry source, closer) for the job's store."""
    if job.dsn:
        from onecard.switch.pg.db import open_db
        from onecard.switch.pg.journal import rows_of_days

        db = open_db(job.dsn)
        return (lambda a, b, k: rows_of_days(db.pg, a, b, k)), db, db.close
    conn = store.connect(store.db_path(job.data_dir), readonly=True)
    return (lambda a, b, k: store.rows_of_days(conn, a, b, k)), conn, conn.close


def clear(asking: _Asking, job: Job) -> Outcome:
    began = time.perf_counter()
    rows, source, close = _rows(job)
    try:
        recs, nos = reader.read_dates(rows, job.date, job.date, job.cutover)   # a new array
        pans, regions, original = _renumber(asking, recs)
        ref = registry(source, pans, regions)
    finally:
        close()
    day_legs = legs(recs, nos, ref, job.date, cutover=job.cutover, fees=job.fees)
    found = [msgspec.structs.replace(e, card_idx=int(original[e.card_idx]))
             if e.card_idx >= 0 else e
             for e in exceptions.find(recs, nos, ref, job.date, cutover=job.cutover)]
    if job.out_dir is not None:
        files.write(files.render(day_legs, ref, job.date, job.cutover), Path(job.out_dir),
                    job.date)
    return Outcome(day=summarise(day_legs, job.date, job.cutover), found=found,
                   seconds=time.perf_counter() - began)


def main(conn: Connection, job: Job) -> None:
    """The worker process's body: one job, one Outcome, then exit (its memory goes back)."""
    asking = _Asking(conn)
    try:
        outcome = clear(asking, job)
    except ClearingError as exc:
        outcome = Outcome(error=str(exc))
    except Exception as exc:                    # reported to the switch, which logs it
        outcome = Outcome(failed=f"{type(exc).__name__}: {exc}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    asking.end()                                # failed before asking: end it first
    conn.send(dataclasses.replace(outcome, peak_rss_bytes=peak))
    conn.close()

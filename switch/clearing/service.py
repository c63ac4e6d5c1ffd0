"""Clearing in the running switch (issue 16, protocols/CLEARING.md): shortly after each
cut-over the settlement date that just closed is cleared from the committed journal and its
files are written; the admin API clears a date on demand and serves positions and files.

Each computation runs in a worker process (worker.py) that reads the date's rows from the
store itself: the event loop keeps answering terminals, and the serving process never holds a
date's records (its memory does not grow with a date). Only the cards' numbers and regions
come from the live state, asked for by the worker in chunks and answered on the loop between
batches; only committed records are read, so a run is what ``onecard clearing`` would compute
at rest. One computation at a time; its outcome is kept for the date and the journal's end,
so positions, exceptions and files of a date asked for together are one read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onecard.protocols import clearing
from onecard.switch import logs
from onecard.switch.clearing import exceptions, files, worker
from onecard.switch.clearing.positions import ClearingError, Day

if TYPE_CHECKING:
    from onecard.core.state import State
    from onecard.switch.config import Config
    from onecard.switch.store.backend import JournalWriter

log = logging.getLogger("onecard.clearing")

RETRY_S = 300.0                          # a scheduled run that failed is tried again ...
ATTEMPTS = 3                             # ... this many times in all, then left for the
                                         # operator (POST /admin/clearing/{date}): a date that
                                         # cannot be cleared must not hold back the next ones
WORKER_JOIN_S = 10.0
# forkserver: a worker is forked from a small server process, never from the switch (whose
# threads a fork would copy mid-lock), and starts with the clearing modules imported.
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["onecard.switch.clearing.worker"])


def _answer(conn: Connection, pans: np.ndarray, regions: np.ndarray) -> None:
    conn.send_bytes(pans.tobytes())
    conn.send_bytes(regions.tobytes())


class ClearingService:
    """Clearing in the running switch: given the configuration, the journal's writer (what
    is durable) and the live state (card numbers and regions a worker asks for)."""

    def __init__(self, config: Config, committer: JournalWriter, state: State,
                 dsn: str | None = None) -> None:
        self.config = config
        self.dsn = dsn                       # the PostgreSQL store's (the worker reads it)
        self.committer = committer
        self.state = state
        cfg = config.clearing
        self.cutover = cfg.cutover
        self.fees = cfg.fee_table()
        self.grace_s = cfg.grace_s
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else (
            Path(config.data_dir) / "clearing")
        self.lock = asyncio.Lock()           # one run at a time
        self.adjusting = asyncio.Lock()      # one adjustment at a time: none resolves twice
        self.open_exceptions = 0
        self.runs = 0
        self.failures = 0                    # runs that failed (scheduled or asked)
        self.dates_failed = 0                # dates the schedule gave up on, and went on
        self.retry_s = RETRY_S
        self.last_date = ""
        self.last_duration_s = 0.0
        self.last_records = 0
        self.last_parties = 0
        self.last_exceptions = 0             # open exceptions the last run found
        self.worker_peak_rss_bytes = 0       # the largest a worker grew to
        self.computations = 0                # worker runs (the rest were kept outcomes)
        # (date, journal end), whether it wrote the files, and what it gave
        self._kept: tuple[tuple[dt.date, int], bool, worker.Outcome] | None = None

    async def run(self, date: dt.date, *, write: bool = True) -> Day:
        """Clear a date (again: the same journal gives the same positions and files)."""
        async with self.lock:
            began = time.perf_counter()
            try:
                outcome = await self._outcome(date, write)
            except Exception:
                self.failures += 1
                raise
            day = outcome.day
            assert day is not None and outcome.found is not None
            self.runs += 1
            self.open_exceptions = sum(e.status == "open" for e in outcome.found)
            self.last_date, self.last_duration_s = date.isoformat(), time.perf_counter() - began
            self.last_records, self.last_parties = day.records, len(day.positions)
            self.last_exceptions = self.open_exceptions
            log.info("clearing %s: %d records, %d parties, %d open exceptions, %.2f s%s", date,
                     day.records, len(day.positions), self.open_exceptions,
                     self.last_duration_s,
                     f", files in {self.out_dir / date.strftime('%Y%m%d')}" if write else "",
                     extra=logs.extra("clearing", date=date.isoformat(), records=day.records,
                                      parties=len(day.positions),
                                      exceptions=self.open_exceptions,
                                      seconds=round(self.last_duration_s, 3)))
            return day

    async def exceptions(self, date: dt.date) -> list[exceptions.Exception_]:
        """The date's exceptions from the committed journal, resolved ones included (one
        computation at a time, shared with run: three at once held three copies of the
        journal, 7.8 GB at 17M records)."""
        async with self.lock:
            found = (await self._outcome(date, False)).found
            assert found is not None
            return found

    async def _outcome(self, date: dt.date, write: bool) -> worker.Outcome:
        """The date cleared at the journal's committed end: kept from the last computation
        if that was the same date at the same end (and wrote the files, if asked to)."""
        key = (date, self.committer.durable_no)
        if self._kept is not None and self._kept[0] == key and (self._kept[1] or not write):
            return self._kept[2]
        cfg = self.config
        job = worker.Job(data_dir=str(cfg.data_dir),
                         dsn=self.dsn, date=date,
                         cutover=self.cutover, fees=self.fees,
                         out_dir=str(self.out_dir) if write else None)
        outcome = await self._in_worker(job)
        self.computations += 1
        self.worker_peak_rss_bytes = max(self.worker_peak_rss_bytes, outcome.peak_rss_bytes)
        if outcome.error:
            raise ClearingError(outcome.error)
        if outcome.failed:
            raise worker.WorkerFailed(f"clearing {date}: {outcome.failed}")
        self._kept = (key, write, outcome)
        return outcome

    async def _in_worker(self, job: worker.Job) -> worker.Outcome:
        loop = asyncio.get_running_loop()
        here, there = CONTEXT.Pipe()
        proc = CONTEXT.Process(target=worker.main, args=(there, job), daemon=True,
                               name=f"onecard-clearing-{job.date}")
        proc.start()
        there.close()
        try:
            while chunk := await loop.run_in_executor(None, here.recv_bytes):
                pans, regions = self._cards(np.frombuffer(chunk, dtype=np.int64))
                await loop.run_in_executor(None, _answer, here, pans, regions)
            return await loop.run_in_executor(None, here.recv)
        except (EOFError, OSError) as exc:
            raise worker.WorkerFailed(f"the clearing worker for {job.date} ended without an "
                                      f"answer ({exc!r}, exit status {proc.exitcode})") from None
        finally:
            here.close()
            await loop.run_in_executor(None, proc.join, WORKER_JOIN_S)
            if proc.is_alive():
                proc.kill()

    def _cards(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Numbers and regions of the cards the worker asks for, from the live state (on the
        loop, between batches: a chunk is a few hundred microseconds)."""
        cards = self.state.cards
        have = (idx >= 0) & (idx < len(cards))
        pans = np.zeros(len(idx), dtype=np.uint64)
        regions = np.full(len(idx), -1, dtype=np.int64)
        pans[have] = cards["pan"][idx[have]]
        regions[have] = cards["region"][idx[have]]
        return pans, regions

    def file(self, date: dt.date, party: str) -> Path | None:
        """A party's file of a date, if that date was cleared here (``party`` checked by the
        caller: role:key, no path in it)."""
        path = self.out_dir / date.strftime("%Y%m%d") / files.file_name(party)
        return path if path.is_file() else None

    def cleared(self, date: dt.date) -> bool:
        """Whether the date's files were written here (an empty date has its folder and no
        party file)."""
        return (self.out_dir / date.strftime("%Y%m%d")).is_dir()

    def next_run(self, now: dt.datetime) -> tuple[dt.datetime, dt.date]:
        """When the next scheduled run is due (the next cut-over plus the grace, for records
        decided just before it to be committed) and the date it clears."""
        minutes = clearing.cutover_minutes(self.cutover)
        local = now.astimezone(clearing.CST)
        at = local.replace(hour=minutes // 60, minute=minutes % 60, second=0, microsecond=0)
        at += dt.timedelta(seconds=self.grace_s)
        if at <= local:
            at += dt.timedelta(days=1)
        closed_us = np.array([int((at - dt.timedelta(seconds=self.grace_s + 1)).timestamp()
                                  * 1e6)])
        return at, clearing.day_date(clearing.settlement_days(closed_us, minutes)[0])

    async def schedule(self) -> None:
        """Clear each settlement date after its cut-over, for as long as the switch runs."""
        while True:
            at, date = self.next_run(dt.datetime.now(clearing.CST))
            await asyncio.sleep(max((at - dt.datetime.now(clearing.CST)).total_seconds(), 0))
            await self.scheduled(date)

    async def scheduled(self, date: dt.date) -> bool:
        """One scheduled date: tried ATTEMPTS times (a store failing over recovers within
        them), then given up, logged and counted (onecard_clearing_dates_failed): the
        schedule goes on with the next date either way. Whether it was cleared."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self.run(date)
                return True
            except Exception as exc:       # logged: the switch and the schedule go on
                if attempt < ATTEMPTS:
                    log.error("clearing %s failed (attempt %d of %d): %r; again in %.0f s",
                              date, attempt, ATTEMPTS, exc, self.retry_s)
                    await asyncio.sleep(self.retry_s)
                else:
                    log.error("clearing %s failed %d times, last: %r; left for an operator "
                              "(POST /admin/clearing/%s), the next dates go on", date,
                              ATTEMPTS, exc, date,
                              extra=logs.extra("clearing", date=date.isoformat(),
                                               failed=True))
        self.dates_failed += 1
        return False

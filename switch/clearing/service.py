"""Clearing in the running switch (issue 16, protocols/CLEARING.md): shortly after each
cut-over the settlement date that just closed is cleared from the committed journal and its
files are written; the admin API clears a date on demand and serves positions and files.

The work runs in a thread over its own connection to the store (either): the event loop
keeps answering terminals. Only the cards' numbers and regions are taken from the live state
(copied on the loop, between batches); everything else is read from the store, and only
committed records are read, so a run is what ``onecard clearing`` would compute at rest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onecard.protocols import clearing
from onecard.switch import logs
from onecard.switch.clearing import exceptions, files
from onecard.switch.clearing.cli import read_store, store_dsn
from onecard.switch.clearing.positions import Day, legs, summarise

if TYPE_CHECKING:
    from onecard.switch.server import Switch

log = logging.getLogger("onecard.clearing")

RETRY_S = 300.0                          # a scheduled run that failed is tried again ...
ATTEMPTS = 3                             # ... this many times in all, then left for the
                                         # operator (POST /admin/clearing/{date}): a date that
                                         # cannot be cleared must not hold back the next ones


class ClearingService:
    def __init__(self, switch: Switch) -> None:
        self.switch = switch
        cfg = switch.config.clearing
        self.cutover = cfg.cutover
        self.fees = cfg.fee_table()
        self.grace_s = cfg.grace_s
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else (
            Path(switch.config.data_dir) / "clearing")
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

    async def run(self, date: dt.date, *, write: bool = True) -> Day:
        """Clear a date (again: the same journal gives the same positions and files)."""
        async with self.lock:
            cards = self.switch.state.cards
            pans, regions = cards["pan"].copy(), cards["region"].copy()
            began = time.perf_counter()
            try:
                day = await asyncio.to_thread(self._run, date, pans, regions, write)
            except Exception:
                self.failures += 1
                raise
            self.runs += 1
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

    def _run(self, date: dt.date, pans: np.ndarray, regions: np.ndarray, write: bool) -> Day:
        cfg = self.switch.config
        ref, recs, nos = read_store(cfg.data_dir, pans, regions, store_dsn(cfg), date, date,
                                    self.cutover)
        day_legs = legs(recs, nos, ref, date, cutover=self.cutover, fees=self.fees)
        found = exceptions.find(recs, nos, ref, date, cutover=self.cutover)
        self.open_exceptions = sum(e.status == "open" for e in found)
        if write:
            files.write(files.render(day_legs, ref, date, self.cutover), self.out_dir, date)
        return summarise(day_legs, date, self.cutover)

    async def exceptions(self, date: dt.date) -> list[exceptions.Exception_]:
        """The date's exceptions from the committed journal, resolved ones included. One
        clearing computation at a time (the same lock as run): each reads the journal, so
        three at once held three copies of it (7.8 GB at 17M records)."""
        async with self.lock:
            cards = self.switch.state.cards
            pans, regions = cards["pan"].copy(), cards["region"].copy()
            return await asyncio.to_thread(self._exceptions, date, pans, regions)

    def _exceptions(self, date: dt.date, pans: np.ndarray,
                    regions: np.ndarray) -> list[exceptions.Exception_]:
        cfg = self.switch.config
        ref, recs, nos = read_store(cfg.data_dir, pans, regions, store_dsn(cfg), date, date,
                                    self.cutover)
        return exceptions.find(recs, nos, ref, date, cutover=self.cutover)

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

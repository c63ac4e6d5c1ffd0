"""The simulated world: a data set, a switch node, terminals and an operator, one seeded
generator driving all of them, and the checker. ``Simulator(seed, ...).run()`` plays ``steps``
steps; the same seed over the same data set replays byte for byte (``Summary.digest``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import shutil
import time
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from unittest import mock

import numpy as np

from onecard.core import crypto
from onecard.switch import catalogue, demo
from onecard.switch.store import loader, sqlite
from onecard.switch.terminals import read_terminals

from . import checks, faults
from .checks import Books, BooksError, InvariantViolation
from .life import Lifecycle
from .node import CommitFailed, Node
from .operator import Operator
from .traffic import Link, Traffic, make_links, pick_cards, pick_terminals

if TYPE_CHECKING:
    from onecard.core.state import State

# The data set is generated as of a fixed day with master keys from a fixed generator, and
# the simulated clock starts that day at 08:00 China time: a seed replays the same run on any
# day, on any machine.
DATA_DAY = dt.date(2026, 11, 2)
EPOCH_US = int(dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp()) * 1_000_000
DEMO_SEED = 7
STEP_US_MAX = 3_000_000
JUMP_US_MAX = 12 * 3600 * 1_000_000        # now and then hours pass (daily totals roll over)
SMALL_MAP_ENTRIES = 8                       # "map at its limit": a quarter of the seeds


class _FixedDate:
    """demo's ``dt.date`` while it makes the base data set: what it calls, today(), is the
    data set's day."""

    @staticmethod
    def today() -> dt.date:
        return DATA_DAY


def base_data_set(path: Path, cards: int) -> Path:
    """The demo data set the runs start from (made once; every seed copies it)."""
    if (path / "onecard.db").exists():
        return path
    keys = random.Random(DEMO_SEED)
    fixed = types.SimpleNamespace(date=_FixedDate, datetime=dt.datetime, UTC=dt.UTC,
                                  timedelta=dt.timedelta)
    with mock.patch.object(demo, "dt", fixed), \
            mock.patch.object(os, "urandom", lambda n: keys.randbytes(n)):
        demo.generate(path, cards=cards, seed=DEMO_SEED, progress=lambda _: None)
    return path


@dataclass
class Hooks:
    """Deliberate breakage, to show the checker can fail (tests only)."""
    release_early: bool = False              # replies leave before their records are durable
    mutate_row_after: int | None = None      # corrupt the committed journal after this step


@dataclass
class Summary:
    seed: int
    steps: int
    faults: Counter = field(default_factory=Counter)
    checks: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)       # (request kind, code) received
    replies: int = 0
    records: int = 0
    restarts: int = 0
    seconds: float = 0.0
    digest: str = ""


class Simulator(Lifecycle):
    def __init__(self, seed: int, base_dir: Path, work_dir: Path, *, steps: int = 200,
                 rates: faults.FaultRates | None = None, map_entries_max: int | None = None,
                 hooks: Hooks | None = None) -> None:
        self.seed, self.steps = seed, steps
        self.rng = random.Random(seed)
        self.rates = rates or faults.FaultRates()
        if map_entries_max is None:
            map_entries_max = SMALL_MAP_ENTRIES if seed % 4 == 3 else 1 << 26
        self.map_entries_max = map_entries_max
        self.hooks = hooks or Hooks()
        self.base_dir, self.work_dir = base_dir, work_dir
        self.summary = Summary(seed, steps)
        self.digest = hashlib.sha256()
        self.now_us = EPOCH_US
        self.step_no = 0
        self.incarnation = 0
        self.disk_full_steps = self.slow_steps = 0

    # ---- set-up ----------------------------------------------------------------------------

    def _start(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        first = self.work_dir / "node-0"
        shutil.copytree(self.base_dir, first)
        self.opening = self._fresh_state()
        self.node = Node(first, map_entries_max=self.map_entries_max, now_us=self.now_us)
        self.shadow_all = self._fresh_state()
        self.shadow_durable = self._fresh_state()
        self.books_all, self.books_durable = Books(), Books()
        self.durable_rows: list[tuple[int, bytes]] = []
        self.seen_no = 0
        infos = pick_terminals(read_terminals(self.base_dir))
        self.links = make_links(infos)
        self.link_by_tid = {link.tid: link for link in self.links}
        conn = sqlite.connect(sqlite.db_path(self.base_dir), readonly=True)
        try:
            codes = np.array(catalogue.provinces(conn))       # province index -> code
        finally:
            conn.close()
        region_province = self.opening.regions["province"][self.opening.cards["region"]]
        codes = codes[region_province[:self.opening.n_cards]]
        cards = pick_cards(self.opening, codes, self.rng)
        self.traffic = Traffic(self.links, cards, self.rng)
        self.operator = Operator(cards, self.rng)

    def _fresh_state(self) -> State:
        return loader.load(self.base_dir, map_entries_max=self.map_entries_max).state

    # ---- the run ---------------------------------------------------------------------------

    def run(self) -> Summary:
        started = time.perf_counter()
        crypto.simulate_keys(self.seed * 2 + 1)
        try:
            self._start()
            for step_no in range(1, self.steps + 1):
                self.step_no = step_no
                try:
                    self.step()
                except BooksError as exc:
                    raise InvariantViolation(self.seed, self.step_no, exc.invariant,
                                             str(exc)) from None
                except InvariantViolation:
                    raise
                except AssertionError as exc:
                    raise InvariantViolation(self.seed, self.step_no, "terminal view",
                                             str(exc)) from exc
                except Exception as exc:         # the switch (or the simulator) raised
                    raise InvariantViolation(self.seed, self.step_no, "no exception",
                                             repr(exc)) from exc
        finally:
            crypto.simulate_keys(0)
            node = getattr(self, "node", None)
            if node is not None:
                node.close()
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self.summary.digest = self.digest.hexdigest()
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def fail(self, invariant: str, detail: str) -> NoReturn:
        raise InvariantViolation(self.seed, self.step_no, invariant, detail)

    def step(self) -> None:
        rng = self.rng
        self.now_us += (rng.randrange(1, JUMP_US_MAX) if rng.random() < 0.01
                        else rng.randrange(1000, STEP_US_MAX))
        fault = faults.draw(self.rates, rng.random())
        if fault is not None:
            self.summary.faults[fault] += 1
        self._disk_weather(fault)
        for _ in range(rng.randrange(1, 5)):
            self._act()
        self._absorb()
        if fault == faults.CRASH_IN_CHECKPOINT:
            self.node.partial_checkpoint(rng.randrange(1 << 16))
            self._crash()
        elif fault == faults.CRASH_BEFORE_COMMIT:
            self._crash()
        else:
            self._commit_phase(fault)
        if fault == faults.RESTART:
            self._graceful_restart()
        elif rng.random() < 0.03:
            self._checkpoint()
        if self.hooks.mutate_row_after == self.step_no:
            self._mutate_last_row()
        self._check_live()

    # ---- disk ------------------------------------------------------------------------------

    def _disk_weather(self, fault: str | None) -> None:
        if self.disk_full_steps:
            self.disk_full_steps -= 1
            if not self.disk_full_steps:
                self.node.disk_full(False)
        if self.slow_steps:
            self.slow_steps -= 1
        if fault == faults.DISK_FULL and not self.disk_full_steps:
            self.disk_full_steps = self.rng.randrange(1, 7)
            self.node.disk_full(True)
        elif fault == faults.SLOW_DISK:
            self.slow_steps = self.rng.randrange(1, 6)
        elif fault == faults.WAL_COPY:
            self.node.copy_wal()

    def _commit_phase(self, fault: str | None) -> None:
        if self.slow_steps and fault not in faults.CRASHES:
            self._release()
            return
        try:
            commit = self.node.write_row(self.now_us)
        except CommitFailed:
            self.summary.faults["commit refused (SQLITE_FULL)"] += 1
            self._release()
            return
        if commit is None:
            if fault in faults.CRASHES:
                self._crash()
            else:
                self._release()
            return
        if fault == faults.TORN_WRITE:
            grown = commit.wal_bytes_after - commit.wal_bytes_before
            assert grown > 0, "the WAL did not grow: the commit's bytes cannot be found"
            self._crash(wal_bytes=commit.wal_bytes_before + self.rng.randrange(grown))
            return
        if fault == faults.FSYNC_ERROR:
            if self.rng.random() < 0.5:
                self._crash(wal_bytes=commit.wal_bytes_before)
            else:
                self._durable(commit.first_no, commit.blob)    # it did reach the disk
                self._crash()
            return
        self.node.acknowledge(commit)
        self._durable(commit.first_no, commit.blob)
        if fault == faults.CRASH_AFTER_COMMIT:
            self._crash()
            return
        published = self.node.publish_checkpoint()
        if published is not None:
            self._check_checkpoint()
        self._release()

    def _durable(self, first_no: int, blob: bytes) -> None:
        checks.post(self.books_durable, self.opening, first_no, blob)
        checks.replay(self.shadow_durable, [(first_no, blob)])
        self.durable_rows.append((first_no, blob))
        self.digest.update(first_no.to_bytes(8, "little") + blob)
        self.summary.records += len(blob) // 80

    def _absorb(self) -> None:
        """Enter the records the node has submitted into the books and the shadow."""
        for first_no, blob in self.node.queue:
            if first_no >= self.seen_no:
                checks.post(self.books_all, self.opening, first_no, blob)
                checks.replay(self.shadow_all, [(first_no, blob)])
                self.seen_no = first_no + len(blob) // 80


__all__ = ["Hooks", "InvariantViolation", "Link", "Simulator", "Summary", "base_data_set"]

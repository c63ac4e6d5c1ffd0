"""Shared pieces of the benchmark suites (see conftest.py for how to run them)."""

from __future__ import annotations

import os
from pathlib import Path

from onecard.bench.core_rate import signed_on_engine
from onecard.core.state import FN_FINANCIAL
from onecard.core.terminal import IsoLoad, Recorder
from onecard.switch.terminals import usable_cards

RESULTS: dict[str, dict[str, float]] = {}


def messages(config) -> int:
    # pyproject's addopts always pass --benchmark-disable; --benchmark-enable wins over it.
    timed = config.getoption("benchmark_enable") or not config.getoption("benchmark_disable")
    default = 5000 if timed else 200
    return int(os.environ.get("ONECARD_BENCH_N", default))


class IsoSource:
    """A signed-on engine and a simulator that builds fresh purchases (new STANs) for it."""

    def __init__(self, data_dir: Path, terminal) -> None:
        self.engine, self.mak = signed_on_engine(data_dir, terminal)
        pans = usable_cards(data_dir, province=44, functions=FN_FINANCIAL)
        self.sim = IsoLoad(Recorder(), terminal.tid, terminal.merchant, terminal.mac_alg,
                           self.mak, pans, seed=7, first_stan=2)

    def purchases(self, n: int) -> bytes:
        return self.sim.build(n)


def record(benchmark, group: str, role: str, count: int) -> None:
    """Remember this benchmark's time per message for the ratio table."""
    benchmark.group = group
    benchmark.extra_info["messages"] = count
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        RESULTS.setdefault(group, {})[role] = stats.stats.mean / count

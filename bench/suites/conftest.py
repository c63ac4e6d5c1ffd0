"""Benchmark suites: each measures onecard's compiled path and a peer doing the same job in the
same run, and prints the ratios at the end.

    python -m pytest bench/suites --benchmark-enable       # figures (about a minute)
    python -m pytest bench/suites                          # quick: each runs once, untimed

``ONECARD_BENCH_N`` sets messages per round (default 5000; 200 in quick mode).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from onecard.core.state import TERM_POS
from onecard.switch import demo
from onecard.switch.terminals import read_terminals

from .support import RESULTS, IsoSource, messages


@pytest.fixture(scope="session")
def n(request) -> int:
    return messages(request.config)


@pytest.fixture(scope="session")
def data_dir():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data"
        demo.generate(path, cards=20_000, progress=lambda _: None)
        yield path


@pytest.fixture(scope="session")
def pos(data_dir):
    return next(t for t in read_terminals(data_dir) if t.kind == TERM_POS and t.province == 44
                and t.alg_name == "x919")


@pytest.fixture
def iso_source(data_dir, pos) -> IsoSource:
    return IsoSource(data_dir, pos)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("onecard vs peer, same run (time per message)")
    tr.write_line(f"{'suite':42} {'onecard':>12} {'peer':>12} {'ratio':>8}")
    for group, roles in RESULTS.items():
        one, peer = roles.get("onecard"), roles.get("peer")
        if one is None or peer is None:
            continue
        tr.write_line(f"{group:42} {one * 1e9:>9.0f} ns {peer * 1e9:>9.0f} ns "
                      f"{peer / one:>7.1f}x")

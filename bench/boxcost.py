"""What a run costs the machine, read from /proc (Linux; no psutil): the whole box's busy
CPU, and the CPU of given process trees (a PostgreSQL server and its backends, Patroni and
etcd), between two samples."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds): the process's own user + system time plus that of the
    children it has reaped (a PostgreSQL backend that exited during the run still counts:
    its time moves to its postmaster's, which we read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / _TICK


def _procs() -> tuple[dict[int, int], dict[int, float]]:
    """(parent of each pid, CPU seconds of each pid), in one pass over /proc."""
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(entry)) is not None:
            parent[int(entry)], cpu[int(entry)] = st
    return parent, cpu


def _tree(parent: dict[int, int], roots: Iterable[int], stop: set[int]) -> set[int]:
    """The roots and their live descendants, not descending into the pids in stop (another
    group's roots: a postmaster under its Patroni is counted once, as PostgreSQL)."""
    ours = {pid for pid in roots if pid in parent}
    while True:                         # a few rounds: trees here are 2-3 levels deep
        more = {pid for pid, ppid in parent.items()
                if ppid in ours and pid not in ours and pid not in stop}
        if not more:
            return ours
        ours |= more


def groups_cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each named group of process trees."""
    parent, cpu = _procs()
    roots = {pid for pids in groups.values() for pid in pids}
    return {name: sum(cpu[pid] for pid in _tree(parent, pids, roots - set(pids)))
            for name, pids in groups.items()}


def _box_busy_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)     # idle + iowait
    total = sum(ticks[:8])                                     # guest time is in user already
    return (total - idle) / _TICK, total / _TICK


@dataclass
class Sample:
    at: float
    box_busy_s: float
    box_all_s: float
    children_s: float                  # reaped children of this process (the load generator)
    trees_s: dict[str, float] = field(default_factory=dict)
    mark: float = 0.0                  # a counter that moves only under load (commits)


def sample(trees: dict[str, list[int]], mark: float = 0.0) -> Sample:
    """trees: a name for each group of root pids (their descendants are included)."""
    busy, total = _box_busy_s()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Sample(time.monotonic(), busy, total, kids.ru_utime + kids.ru_stime,
                  groups_cpu_seconds(trees), mark)


def between(a: Sample, b: Sample) -> dict:
    """The cost between two samples: busy cores of the box, cores used by each group."""
    seconds = max(b.at - a.at, 1e-9)
    return {
        "seconds": seconds,
        "box_busy_cores": (b.box_busy_s - a.box_busy_s) / seconds,
        "box_busy_share": (b.box_busy_s - a.box_busy_s) / max(b.box_all_s - a.box_all_s, 1e-9),
        "cores": {name: (b.trees_s[name] - a.trees_s.get(name, 0.0)) / seconds
                  for name in b.trees_s},
        "loadavg_1m": os.getloadavg()[0],
    }


class Sampler:
    """Samples every ``interval_s`` in a thread, so the loaded window can be cut out
    afterwards: the load generator's start-up and its summing up of latencies (each a second
    or more of CPU) are then left out of the run's cost. trees() is called at each sample (a
    restarted server is found again); mark() is a counter that moves only under load."""

    def __init__(self, trees: Callable[[], dict[str, list[int]]],
                 mark: Callable[[], float], interval_s: float = 0.2):
        assert interval_s > 0
        self.trees, self.mark, self.interval_s = trees, mark, interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _take(self) -> None:
        try:
            mark = self.mark()
        except OSError:                 # the switch did not answer this once: no movement
            mark = self.samples[-1].mark if self.samples else 0.0
        self.samples.append(sample(self.trees(), mark))

    def _loop(self) -> None:
        while True:
            self._take()
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def loaded(self) -> dict:
        """The cost from the last sample before the mark first moved to the first sample
        after it last moved (the whole sampled time if it never moved)."""
        s = self.samples
        moved = [i for i in range(1, len(s)) if s[i].mark != s[i - 1].mark]
        first, last = (moved[0] - 1, moved[-1]) if moved else (0, len(s) - 1)
        cost = between(s[first], s[last])
        cost["loadgen_cpu_s"] = s[-1].children_s - s[0].children_s   # start-up included
        return cost

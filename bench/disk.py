"""The disk's own durable-write latency: what one fsynced group commit can never beat.

A commit is a write of a few 4 KiB WAL pages followed by ``fdatasync``; this probe does exactly
that, back to back, on a preallocated file in the directory given (the data directory's disk)
and reports the latency distribution and how often a single write stalls past 2 and 5 ms.
Each such stall holds every request that arrives meanwhile, so it is the floor under an open
loop's p99.9 (``bench.latency`` runs this beside the switch in the same run).

    python -m onecard.bench.disk [--dir .] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PAGE_BYTES = 4096
FILE_BYTES = 16 << 20               # rewritten in place, as the switch's WAL is (no growth)
MAX_WRITES = 2_000_000              # bounds the probe whatever the disk's speed


@dataclass
class DiskResult:
    seconds: float
    writes: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    over_2ms_per_s: float
    over_5ms_per_s: float

    def summary(self) -> str:
        return (f"{self.writes:,} fsynced 4 KiB writes in {self.seconds:.1f} s: "
                f"p50 {self.p50_us / 1000:.3f} ms  p99 {self.p99_us / 1000:.3f} ms  "
                f"p99.9 {self.p999_us / 1000:.3f} ms  max {self.max_us / 1000:.1f} ms; "
                f"stalls over 2 ms {self.over_2ms_per_s:.2f}/s, over 5 ms "
                f"{self.over_5ms_per_s:.2f}/s")


def probe(directory: str | Path, seconds: float) -> DiskResult:
    """Write and fdatasync one page at a time for ``seconds`` in ``directory``."""
    assert 0 < seconds <= 600, seconds
    page = os.urandom(PAGE_BYTES)
    lat_ns = np.zeros(MAX_WRITES, dtype=np.int64)
    fd, name = tempfile.mkstemp(prefix=".onecard-disk-probe-", dir=directory)
    try:
        # Written, not just allocated: a first write into an allocated-but-unwritten extent
        # also changes the file's metadata, which the WAL's rewrites in place never do.
        chunk = bytes(1 << 20)
        for at in range(0, FILE_BYTES, len(chunk)):
            os.pwrite(fd, chunk, at)
        os.fsync(fd)
        offset, n = 0, 0
        started = time.perf_counter_ns()
        deadline = started + int(seconds * 1e9)
        now = started
        while now < deadline and n < MAX_WRITES:
            os.pwrite(fd, page, offset)
            os.fdatasync(fd)
            after = time.perf_counter_ns()
            lat_ns[n] = after - now
            now = after
            n += 1
            offset = (offset + PAGE_BYTES) % FILE_BYTES
        elapsed_s = (now - started) / 1e9
    finally:
        os.close(fd)
        os.unlink(name)
    lat_us = lat_ns[:n] / 1000
    p50, p99, p999 = np.percentile(lat_us, [50, 99, 99.9])
    return DiskResult(seconds=elapsed_s, writes=n, p50_us=float(p50), p99_us=float(p99),
                      p999_us=float(p999), max_us=float(lat_us.max()),
                      over_2ms_per_s=float((lat_us > 2000).sum() / elapsed_s),
                      over_5ms_per_s=float((lat_us > 5000).sum() / elapsed_s))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=".", help="a directory on the disk to measure")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", help="write the result as JSON here")
    args = p.parse_args()
    if not 0 < args.seconds <= 600:
        raise SystemExit("bench.disk: --seconds must be in (0, 600]")
    result = probe(args.dir, args.seconds)
    print(result.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()

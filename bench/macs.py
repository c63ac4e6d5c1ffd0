"""Nanoseconds per ANSI X9.19 MAC: today's table-based lanes (crypto, des_lanes.h) against the
bitsliced constant-time DES (bitslice, des_bitslice.h), in the same run, by message length and
batch size, every message under its own key (as a batch of many terminals' requests is).

    python -m onecard.bench.macs [--lengths 64 128] [--batches 1 8 64 256] [--paths all]
                                 [--messages 200000] [--json out.json]

A purchase is MACed twice (request and reply), so "pair" is twice the per-MAC figure: issue
30's aim is a pair <= 150 ns at batch 64. The table-based keys are scheduled before timing (as
at sign-on); the bitsliced path takes the raw keys (its key schedule is wiring, done per
pass). Both run in C over the same buffers (no Python per message); the best of --repeat
runs is kept, since on a shared machine the noise is upwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random

from onecard.core import bitslice


def measure(n: int, batch: int, messages: int, repeat: int, rng: random.Random) -> dict:
    keys, data = rng.randbytes(16 * batch), rng.randbytes(n * batch)
    rounds = max(1, messages // batch)
    runs = [bitslice.time_x919(keys, data, n, batch, rounds) for _ in range(repeat)]
    assert all(r["agree"] for r in runs), "bitsliced and table-based MACs differ"
    return {"table": min(r["table"] for r in runs), "bitslice": min(r["bitslice"] for r in runs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--paths", nargs="+", default=["all"],
                   help="bitsliced paths to time (default: all this CPU runs; 'auto' picks by "
                        "batch size)")
    p.add_argument("--messages", type=int, default=100_000, help="MACs per measurement")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    paths = bitslice.paths() if args.paths == ["all"] else args.paths
    rng = random.Random(30)
    rows = []
    print(f"ns per X9.19 MAC (cpu: {os.cpu_count()} cores; bitsliced paths {paths})")
    print(f"{'bytes':>5} {'batch':>5} {'path':>9} {'table':>8} {'bitslice':>9} {'ratio':>6} "
          f"{'pair (bs)':>9}")
    for n in args.lengths:
        for batch in args.batches:
            for name in paths:
                bitslice.use_path(None if name == "auto" else name)
                r = measure(n, batch, args.messages, args.repeat, rng)
                rows.append({"bytes": n, "batch": batch, "path": name, **r})
                print(f"{n:>5} {batch:>5} {name:>9} {r['table']:>8.1f} {r['bitslice']:>9.1f} "
                      f"{r['table'] / r['bitslice']:>5.2f}x {2 * r['bitslice']:>9.1f}")
    bitslice.use_path(None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

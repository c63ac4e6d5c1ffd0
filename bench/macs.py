"""Nanoseconds per ANSI X9.19 MAC, in the same run, by message length and batch size, every
message under its own key (as a batch of many terminals' requests is): crypto.mac_many on each
of its paths (the table-based lanes of des_lanes.h; the constant-time VBMI path of des_vbmi.h;
"auto", the process's choice by batch size), and the bitsliced constant-time DES (bitslice,
des_bitslice.h) on each of its paths.

    python -m onecard.bench.macs [--lengths 64 128] [--batches 1 8 64 256] [--paths all]
                                 [--messages 200000] [--json out.json]

A purchase is MACed twice (request and reply), so "pair" is twice the per-MAC figure: issue
30's aim is a pair <= 150 ns at batch 64. crypto's keys are scheduled before timing (as at
sign-on: the table and VBMI paths read the same per-terminal schedule); the bitsliced path
takes the raw keys (its key schedule is wiring, done per pass). All run in C over the same
buffers (no Python per message); the best of --repeat
runs is kept, since on a shared machine the noise is upwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random

from onecard.core import bitslice, crypto


def measure(n: int, batch: int, messages: int, repeat: int, rng: random.Random) -> dict:
    keys, data = rng.randbytes(16 * batch), rng.randbytes(n * batch)
    rounds = max(1, messages // batch)
    runs = [bitslice.time_x919(keys, data, n, batch, rounds) for _ in range(repeat)]
    assert all(r.pop("agree") for r in runs), "the paths' MACs differ"
    return {name: min(r[name] for r in runs) for name in runs[0]}


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
    print(f"ns per X9.19 MAC (cpu: {os.cpu_count()} cores; crypto's paths "
          f"{crypto.x919_paths()}, bitsliced paths {paths})")
    cols = [c for c in ("table", "vbmi", "auto") if c in crypto.x919_paths()]
    print(f"{'bytes':>5} {'batch':>5} " + "".join(f"{c:>8}" for c in cols)
          + f" {'bitsliced':>9} {'(path)':>8} {'auto/table':>10} {'pair (auto)':>11}")
    for n in args.lengths:
        for batch in args.batches:
            for name in paths:
                bitslice.use_path(None if name == "auto" else name)
                r = measure(n, batch, args.messages, args.repeat, rng)
                rows.append({"bytes": n, "batch": batch, "bitsliced_path": name, **r})
                print(f"{n:>5} {batch:>5} " + "".join(f"{r[c]:>8.1f}" for c in cols)
                      + f" {r['bitslice']:>9.1f} {name:>8} {r['table'] / r['auto']:>9.2f}x"
                      f" {2 * r['auto']:>11.1f}")
    bitslice.use_path(None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

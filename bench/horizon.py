"""The idempotency horizon's figures (issue 27): memory per indexed request and the cost of a
ring miss (a lookup of a request the horizon does not hold: what every new request pays) and
of a hit (a retransmission or reversal after the ring moved on), at the sizes of a day.

    python -m onecard.bench.horizon                      # 1M, 10M requests
    python -m onecard.bench.horizon --rows 1000000 --json out.json

Wall-clock figures on a shared machine drift; bench.instructions gives the repeatable count
of the same path inside Engine.process (a purchase: lookup + filing).
"""

from __future__ import annotations

import argparse
import json
import sys

from onecard.core.horizon import Horizon

TERMINALS = 100_000               # a province's POS and gates: the numbers spread over them


def run(rows: int, probes: int) -> dict:
    h = Horizon(2, rows + 1, TERMINALS)
    return h.measure(rows, probes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append",
                        help="requests held (repeatable; default 1M and 10M)")
    parser.add_argument("--probes", type=int, default=1_000_000)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    results = []
    for rows in args.rows or [1_000_000, 10_000_000]:
        print(f"filing {rows:,} requests ...", file=sys.stderr, flush=True)
        r = run(rows, min(args.probes, rows))
        results.append(r)
        print(f"{rows:>12,} requests: {r['bytes_per_row']:.1f} B each; file "
              f"{r['file_ns']:.0f} ns, lookup hit {r['hit_ns']:.0f} ns, "
              f"miss {r['miss_ns']:.0f} ns")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

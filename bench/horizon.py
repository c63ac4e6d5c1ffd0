"""The idempotency horizon's figures (issue 27): memory per indexed request and the cost of a
ring miss (a lookup of a request the horizon does not hold: what every new request pays) and
of a hit (a retransmission or reversal after the ring moved on), at the sizes of a day.

    python -m onecard.bench.horizon                      # 1M, 10M requests; 100k, 64 terminals
    python -m onecard.bench.horizon --rows 1000000 --terminals 64 --json out.json

The requests are spread round-robin over the terminals, each numbering its own from 1: with
100,000 terminals every filing touches another terminal's page (the cache holds none of
them; 10 requests a terminal at 1M leave pages part empty), with 64 (bench.compare's fleet)
a terminal's page is still in cache when its next request comes.

Wall-clock figures on a shared machine drift; bench.instructions gives the repeatable count
of the same path inside Engine.process (a purchase: lookup + filing).
"""

from __future__ import annotations

import argparse
import json
import sys

from onecard.core.horizon import Horizon

TERMINALS = (100_000, 64)         # a province's POS and gates; bench.compare's connections


def run(rows: int, probes: int, terminals: int) -> dict:
    h = Horizon(2, rows + 1, terminals)
    return {"terminals": terminals, **h.measure(rows, probes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append",
                        help="requests held (repeatable; default 1M and 10M)")
    parser.add_argument("--terminals", type=int, action="append",
                        help="terminals the requests are spread over (repeatable; default "
                             "100,000 and 64)")
    parser.add_argument("--probes", type=int, default=1_000_000)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    results = []
    for terminals in args.terminals or TERMINALS:
        for rows in args.rows or [1_000_000, 10_000_000]:
            print(f"filing {rows:,} requests of {terminals:,} terminals ...", file=sys.stderr,
                  flush=True)
            r = run(rows, min(args.probes, rows), terminals)
            results.append(r)
            _report(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _report(r: dict) -> None:
    print(f"{r['terminals']:>8,} terminals {r['rows']:>12,} requests: "
          f"{r['bytes_per_row']:.1f} B each; file {r['file_ns']:.0f} ns, lookup hit "
          f"{r['hit_ns']:.0f} ns, "
          f"miss {r['miss_ns']:.0f} ns")


if __name__ == "__main__":
    sys.exit(main())

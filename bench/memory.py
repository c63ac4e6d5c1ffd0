"""Memory per card: build a State holding N synthetic cards (unique 19-digit numbers, one
account each) and report the bytes the core holds per card, the process's resident memory per
card, and the time to build the index and to look every card up.

    python -m onecard.bench.memory --cards 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from onecard.core.state import (
    ACCOUNT_DTYPE,
    CARD_DTYPE,
    MAX_PROVINCES,
    N_APPS,
    OPERATOR_DTYPE,
    REGION_DTYPE,
    STATION_DTYPE,
    SURNAME_BYTES,
    TERMINAL_DTYPE,
    State,
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def synthetic_state(n: int, seed: int = 1) -> State:
    rng = np.random.default_rng(seed)
    cards = np.zeros(n, dtype=CARD_DTYPE)
    # 621xxx BIN + 13 random digits: unique by construction (a permutation of a range)
    cards["pan"] = 6_213_110_000_000_000_000 + rng.permutation(n).astype(np.uint64) * 7919
    cards["account"] = np.arange(n, dtype=np.uint32)
    cards["expiry_yymm"] = 3012
    cards["functions"] = 7
    accounts = np.zeros(n, dtype=ACCOUNT_DTYPE)
    accounts["balance_fen"] = 100_000
    regions = np.zeros(1, dtype=REGION_DTYPE)
    terminals = np.zeros(1, dtype=TERMINAL_DTYPE)
    return State(cards=cards, accounts=accounts, terminals=terminals, regions=regions,
                 operators=np.zeros(0, dtype=OPERATOR_DTYPE),
                 stations=np.zeros(0, dtype=STATION_DTYPE), fares=np.zeros(0, dtype="<i4"),
                 accept=np.zeros((N_APPS, MAX_PROVINCES), dtype="<u8"),
                 surnames=np.zeros((1, SURNAME_BYTES), dtype="u1"))


def measure(n: int) -> dict:
    before = rss_bytes()
    start = time.perf_counter()
    state = synthetic_state(n)
    build_s = time.perf_counter() - start
    after = rss_bytes()
    report = state.memory_report()
    probe = state.cards["pan"][np.random.default_rng(2).integers(0, n, size=min(n, 5_000_000))]
    start = time.perf_counter()
    found = state.count_known(probe)
    lookup_s = time.perf_counter() - start
    assert found == len(probe)
    return {"cards": n, "core_bytes_per_card": round(report["bytes_per_card"], 2),
            "rss_bytes_per_card": round((after - before) / n, 2),
            "build_s": round(build_s, 2),
            "lookups_per_s": round(len(probe) / lookup_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--json")
    args = p.parse_args()
    results = []
    for n in args.cards:
        r = measure(n)
        results.append(r)
        print(f"{r['cards']:>12,} cards: {r['core_bytes_per_card']:.1f} bytes/card in the core "
              f"(cards 24 + accounts 32 + index), {r['rss_bytes_per_card']:.1f} bytes/card "
              f"resident; built in {r['build_s']} s; {r['lookups_per_s']:,} lookups/s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

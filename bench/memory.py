"""Scale: build a State holding N synthetic cards (unique 19-digit numbers, one account each)
and report the bytes the core holds per card, the process's resident memory per card, the time
to build the index, the index lookup rate, and the authorisation rate for purchases on random
cards (the rules alone, decide.decide_many) -- with its ratio to the first size given.

    python -m onecard.bench.memory --cards 1000000 100000000
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from onecard.core.authorise import TXN_DTYPE
from onecard.core.decide import decide_many
from onecard.core.engine import Engine
from onecard.core.holders import HolderVault
from onecard.core.state import (
    ACCOUNT_DTYPE,
    APP_COUNT_MAX,
    APP_DTYPE,
    CARD_DTYPE,
    FN_FINANCIAL,
    FN_MEDICAL,
    FN_TRANSPORT,
    KIND_PURCHASE,
    OPERATOR_DTYPE,
    POLICY_DTYPE,
    PROVINCES_MAX,
    REGION_DTYPE,
    STATION_DTYPE,
    SURNAME_BYTES,
    TERMINAL_DTYPE,
    State,
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def synthetic_state(n: int, seed: int = 1, holders: HolderVault | None = None) -> State:
    rng = np.random.default_rng(seed)
    cards = np.zeros(n, dtype=CARD_DTYPE)
    # 621xxx BIN + 13 random digits: unique by construction (a permutation of a range)
    cards["pan"] = 6_213_110_000_000_000_000 + rng.permutation(n).astype(np.uint64) * 7919
    cards["account"] = np.arange(n, dtype=np.uint32)
    cards["expiry_yymm"] = 9912
    cards["functions"] = FN_FINANCIAL | FN_TRANSPORT | FN_MEDICAL
    accounts = np.zeros(n, dtype=ACCOUNT_DTYPE)
    accounts["balance_fen"] = 10**12
    regions = np.zeros(1, dtype=REGION_DTYPE)
    terminals = np.zeros(1, dtype=TERMINAL_DTYPE)
    terminals["tid"] = int.from_bytes(b"P4400001", "big")
    terminals["permitted"] = 0xFFFF
    apps = np.zeros(1, dtype=APP_DTYPE)
    apps[0] = (1, 1, 0, 0)                             # one application: payment
    accept = np.zeros((APP_COUNT_MAX, PROVINCES_MAX), dtype="<u8")
    accept[0, 0] = 1                                   # province 0 cards at province 0
    return State(cards=cards, accounts=accounts, terminals=terminals, regions=regions,
                 operators=np.zeros(0, dtype=OPERATOR_DTYPE),
                 stations=np.zeros(0, dtype=STATION_DTYPE), fares=np.zeros(0, dtype="<i4"),
                 apps=apps, accept=accept, policies=np.zeros(1, dtype=POLICY_DTYPE),
                 surnames=np.zeros((1, SURNAME_BYTES), dtype="u1"), holders=holders)


def authorisation_rate(state: State, count: int = 2_000_000, seed: int = 3) -> float:
    """Purchases on uniformly random cards through the rules, per second."""
    engine = Engine(state, daily_limit_fen=2**31 - 1, amount_fen_max=10**9)
    rng = np.random.default_rng(seed)
    txns = np.zeros(count, dtype=TXN_DTYPE)
    txns["pan"] = state.cards["pan"][rng.integers(0, state.n_cards, size=count)]
    txns["amount_fen"] = 100
    txns["seq"] = np.arange(count) % 999_999 + 1
    txns["kind"] = KIND_PURCHASE
    txns["currency"] = 156
    best = 0.0
    for start in range(0, count, 500_000):           # bounded memory for the journal
        part = txns[start:start + 500_000]
        t0 = time.perf_counter()
        rcs = decide_many(engine.authoriser, part)
        best = max(best, len(part) / (time.perf_counter() - t0))
        engine.journal.take()
        assert (rcs == 0).all(), np.unique(rcs)
    return best


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
            "lookups_per_s": round(len(probe) / lookup_s),
            "authorisations_per_s": round(authorisation_rate(state))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--json")
    args = p.parse_args()
    results = []
    for n in args.cards:
        r = measure(n)
        results.append(r)
        ratio = r["authorisations_per_s"] / results[0]["authorisations_per_s"]
        print(f"{r['cards']:>12,} cards: {r['core_bytes_per_card']:.1f} bytes/card in the core "
              f"(cards 24 + accounts 32 + index), {r['rss_bytes_per_card']:.1f} bytes/card "
              f"resident; built in {r['build_s']} s; {r['lookups_per_s']:,} lookups/s; "
              f"{r['authorisations_per_s']:,} authorisations/s ({ratio:.0%} of the first)",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Scale: build a State holding N synthetic cards (unique 19-digit numbers, one account each)
with their holders file (N records sealed in blocks, security/holders_file.py, written to
``--holders-dir``), and report the bytes the core holds per card, the process's resident
memory per card (holders included: the vault's bounded cache, not the file, which is read by
offset), again after 1M lodging verifications on random cards, the time to build the index,
the index lookup rate, and the authorisation rate for purchases on random cards (the rules
alone, decide.decide_many) -- with its ratio to the first size given.

    python -m onecard.bench.memory --cards 1000000 100000000
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from onecard.core.authorise import TXN_DTYPE
from onecard.core.decide import decide_many
from onecard.core.engine import Engine
from onecard.core.holders import RECORD_BYTES, HolderVault
from onecard.core.state import (
    ACCOUNT_DTYPE,
    APP_COUNT_MAX,
    APP_DTYPE,
    CARD_DTYPE,
    FN_FINANCIAL,
    FN_MEDICAL,
    FN_TRANSPORT,
    KIND_PURCHASE,
    KIND_VERIFY,
    OPERATOR_DTYPE,
    POLICY_DTYPE,
    PROVINCES_MAX,
    REGION_DTYPE,
    SCOPE_LODGING,
    STATION_DTYPE,
    SURNAME_BYTES,
    TERMINAL_DTYPE,
    State,
)
from onecard.switch.security import holders_file
from onecard.switch.security.keystore import DataKeys

KEYS = DataKeys(bytes(range(32)))


VERIFICATIONS = 1_000_000           # lodging verifications on random cards, after the build
VERIFIER = 1                        # the synthetic state's second terminal
_verify_seq = [1]                   # the next verification's sequence number


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def rss_file_bytes() -> int:
    """Resident pages of mapped files (the holders file would show here if it were mapped)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


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
    terminals = np.zeros(2, dtype=TERMINAL_DTYPE)        # purchases; verifications
    terminals["tid"] = [int.from_bytes(b"P4400001", "big"), int.from_bytes(b"P4400002", "big")]
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


def write_holders(path: Path, n: int, block_records: int) -> float:
    """N synthetic records (name ``HOLDER <i>``, a fake 18-character id), sealed; seconds."""
    def chunks():
        step = 1 << 16
        for start in range(0, n, step):
            ids = np.arange(start, min(start + step, n))
            rec = np.zeros((len(ids), RECORD_BYTES), dtype=np.uint8)
            for col, text in enumerate((b"HOLDER ", b"ID")):
                off = 0 if col == 0 else 30
                rec[:, off:off + len(text)] = np.frombuffer(text, dtype=np.uint8)
            digits = np.char.zfill(ids.astype(str), 12).astype("S12")
            rec[:, 7:19] = np.frombuffer(digits.tobytes(), dtype=np.uint8).reshape(-1, 12)
            yield rec.tobytes()
    started = time.perf_counter()
    holders_file.write(path, chunks(), n, KEYS, block_records=block_records)
    return time.perf_counter() - started


def verify_ns(state: State, cards: np.ndarray, scope: int, batch: int) -> float:
    """Nanoseconds per verification, the median over batches (the rules alone)."""
    state.terminals["scope"][VERIFIER] = scope
    engine = Engine(state, daily_limit_fen=2**31 - 1, amount_fen_max=10**9)
    txns = np.zeros(len(cards), dtype=TXN_DTYPE)
    txns["pan"] = state.cards["pan"][cards]
    txns["terminal"] = VERIFIER
    first = _verify_seq[0]                  # never a retransmission of an earlier call's
    txns["seq"] = np.arange(first, first + len(cards))
    _verify_seq[0] += len(cards)
    txns["kind"] = KIND_VERIFY
    per_batch = []
    for start in range(0, len(cards), batch):
        part = txns[start:start + batch]
        t0 = time.perf_counter_ns()
        rcs = decide_many(engine.authoriser, part)
        per_batch.append((time.perf_counter_ns() - t0) / len(part))
        engine.journal.take()
        assert (rcs == 0).all(), np.unique(rcs)
    return float(np.median(per_batch))


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


def measure(n: int, holders_dir: Path) -> dict:
    path = holders_dir / "holders.bin"
    write_holders(path, n, holders_file.BLOCK_RECORDS)
    before = rss_bytes()
    start = time.perf_counter()
    vault = holders_file.open_vault(path, KEYS)
    state = synthetic_state(n, holders=vault)
    build_s = time.perf_counter() - start
    after = rss_bytes()
    report = state.memory_report()
    # Lodging verifications on random cards fill the vault's cache (bounded by
    # holder_bytes) and read the file by offset: none of its pages is mapped (RssFile).
    cards = np.random.default_rng(4).integers(0, n, size=VERIFICATIONS)
    file_pages = rss_file_bytes()
    verify = round(verify_ns(state, cards, SCOPE_LODGING, 100))
    probe = state.cards["pan"][np.random.default_rng(2).integers(0, n, size=min(n, 5_000_000))]
    start = time.perf_counter()
    found = state.count_known(probe)
    lookups_s = time.perf_counter() - start
    assert found == len(probe)
    return {"cards": n, "core_bytes_per_card": round(report["bytes_per_card"], 2),
            "core_bytes_per_card_with_holders": round(report["bytes_per_card_with_holders"], 2),
            "rss_bytes_per_card": round((after - before) / n, 2),
            "holder_bytes": report["holder_bytes"], "lodging_verify_ns": verify,
            "rss_file_bytes_grown_by_verifies": rss_file_bytes() - file_pages,
            "holder_clear_bytes_after_verifies": vault.stats()["clear_bytes"],
            "holders_file_bytes_per_card": round(path.stat().st_size / n, 2),
            "build_s": round(build_s, 2), "lookups_per_s": round(len(probe) / lookups_s),
            "authorisations_per_s": round(authorisation_rate(state))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--holders-dir", type=Path,
                   help="where the holders file goes (default: a temporary directory)")
    p.add_argument("--json")
    args = p.parse_args()
    results = []
    for n in args.cards:
        with tempfile.TemporaryDirectory(dir=args.holders_dir) as tmp:
            r = measure(n, Path(tmp))
        results.append(r)
        ratio = r["authorisations_per_s"] / results[0]["authorisations_per_s"]
        print(f"{r['cards']:>12,} cards: {r['core_bytes_per_card']:.1f} bytes/card in the core "
              f"(cards 24 + accounts 32 + index), {r['core_bytes_per_card_with_holders']:.1f} "
              f"with the holders' vault; {r['rss_bytes_per_card']:.1f} bytes/card resident, "
              f"the vault {r['holder_bytes']:,} B at most; after {VERIFICATIONS:,} lodging "
              f"verifications ({r['lodging_verify_ns']} ns each) "
              f"{r['holder_clear_bytes_after_verifies']:,} B of holders in clear and "
              f"{r['rss_file_bytes_grown_by_verifies']:,} B more of mapped files; holders file "
              f"{r['holders_file_bytes_per_card']} B/card on disk, not resident; built in "
              f"{r['build_s']} s; {r['lookups_per_s']:,} lookups/s; "
              f"{r['authorisations_per_s']:,} authorisations/s ({ratio:.0%} of the first)",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

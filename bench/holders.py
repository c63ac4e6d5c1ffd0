"""Holder records at rest and on read (issue 28): what a verification costs when the holder's
record is opened from the sealed holders file, against one that reads no holder record, and
what the holders add to memory.

A synthetic State of N cards (bench/memory.py's) with a holders file of N records in
``--dir`` (sealed in blocks of K, security/holders_file.py); verifications go through the
rules alone (``decide.decide_many``, batches of ``--batch``), on random cards:

- ``masked``: a default-scope terminal (masked name: no holder record read; the baseline);
- ``miss``: a lodging terminal, no cache: every verification reads and opens its block;
- ``cached-random``: a lodging terminal, the configured cache, random cards (at N >> cache,
  nearly all misses: the realistic case);
- ``hit``: a lodging terminal, the configured cache, 256 cards verified over and over.

    python -m onecard.bench.holders                              # 1M cards, K = 4, 1 MiB
    python -m onecard.bench.holders --cards 100000000
    python -m onecard.bench.holders --block-records 1 4 16 64 256   # the block size, chosen

``open_block_ns`` is the vault alone: one block read (pread) and opened (AES-256-GCM) per
random account, outside the cache (``HolderVault.read_many``), the median of five passes.

The file is written once per K and read through the page cache (as a switch reads it once
it is warm); a cold read from disk adds the device's latency to a miss.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from onecard.bench.memory import KEYS, synthetic_state, verify_ns, write_holders
from onecard.core.state import SCOPE_DEFAULT, SCOPE_LODGING
from onecard.switch.security import holders_file

HIT_CARDS = 256                  # a working set the default cache holds


def open_block_ns(path: Path, n: int, count: int) -> float:
    vault = holders_file.open_vault(path, KEYS, 0)
    accounts = np.random.default_rng(1).integers(0, n, size=count).astype(np.uint32)
    runs = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        vault.read_many(accounts)
        runs.append((time.perf_counter_ns() - t0) / count)
    return float(np.median(runs))


def measure(n: int, block_records: int, cache_bytes: int, batch: int, count: int,
            where: Path) -> dict:
    path = where / f"holders-{block_records}.bin"
    write_s = write_holders(path, n, block_records)
    rng = np.random.default_rng(5)
    random_cards = rng.integers(0, n, size=count)
    repeated = np.resize(rng.integers(0, n, size=HIT_CARDS), count)
    out = {"cards": n, "block_records": block_records, "cache_bytes": cache_bytes,
           "write_s": round(write_s, 1),
           "file_bytes_per_record": round(path.stat().st_size / n, 2)}
    out["open_block_ns"] = round(open_block_ns(path, n, count))
    state = synthetic_state(n)
    out["masked_ns"] = round(verify_ns(state, random_cards, SCOPE_DEFAULT, batch))
    for name, cache, cards in (("miss", 0, random_cards),
                               ("cached_random", cache_bytes, random_cards),
                               ("hit", cache_bytes, repeated)):
        del state                       # one State at a time (100M cards: 6 GB each)
        vault = holders_file.open_vault(path, KEYS, cache)
        state = synthetic_state(n, holders=vault)
        assert vault.stats()["cached_blocks"] == 0
        if name == "hit":
            verify_ns(state, cards[:HIT_CARDS], SCOPE_LODGING, batch)     # opened once first
        out[f"{name}_ns"] = round(verify_ns(state, cards, SCOPE_LODGING, batch))
        st = vault.stats()
        out[f"{name}_clear_bytes"] = st["clear_bytes"]
        out[f"{name}_hit_ratio"] = round(st["hits"] / max(st["hits"] + st["misses"], 1), 3)
        if name == "cached_random":
            report = state.memory_report()
            out["core_bytes_per_card"] = round(report["bytes_per_card"], 2)
            out["core_bytes_per_card_with_holders"] = round(
                report["bytes_per_card_with_holders"], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", type=int, default=1_000_000)
    p.add_argument("--block-records", type=int, nargs="+", default=[holders_file.BLOCK_RECORDS])
    p.add_argument("--cache-bytes", type=int, default=holders_file.CACHE_BYTES_DEFAULT)
    p.add_argument("--batch", type=int, default=100, help="verifications per decide_many call")
    p.add_argument("--count", type=int, default=200_000, help="verifications per pass")
    p.add_argument("--dir", type=Path, help="where the holders files go (default: a temp dir)")
    p.add_argument("--json")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for k in args.block_records:
            r = measure(args.cards, k, args.cache_bytes, args.batch, args.count, Path(tmp))
            results.append(r)
            print(f"{r['cards']:,} cards, {k} records a block ({r['file_bytes_per_record']} "
                  f"B/record on disk): a block opened in {r['open_block_ns']} ns; verify "
                  f"masked {r['masked_ns']} ns; lodging: miss "
                  f"{r['miss_ns']} ns, random with {r['cache_bytes']:,} B cache "
                  f"{r['cached_random_ns']} ns (hits {r['cached_random_hit_ratio']:.1%}), hit "
                  f"{r['hit_ns']} ns; clear after: {r['cached_random_clear_bytes']:,} B; core "
                  f"{r['core_bytes_per_card_with_holders']} B/card with holders "
                  f"({r['core_bytes_per_card']} without)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

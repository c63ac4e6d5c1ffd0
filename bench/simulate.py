"""Run the deterministic simulator over many seeds.

    python -m onecard.bench.simulate --seeds 100 --steps 500
    python -m onecard.bench.simulate --seed 1234 --steps 500       # reproduce one seed

Each seed plays ``--steps`` steps of random traffic, operator changes, checkpoints, restarts
and injected faults against the real core and store, checking the invariants after every
step (bench/sim/checks.py). A broken invariant prints the seed, the step and the invariant,
and the command that replays it; the exit status is then 1. ``--minutes`` bounds the run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from onecard.bench.sim import FaultRates, InvariantViolation, Simulator, base_data_set

CARDS = 4000
SHM = Path("/dev/shm")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m onecard.bench.simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="how many seeds (from --first)")
    p.add_argument("--first", type=int, default=0, help="the first seed")
    p.add_argument("--seed", type=int, help="run this one seed only")
    p.add_argument("--steps", type=int, default=300, help="steps a seed")
    p.add_argument("--faults", type=float, default=1.0, help="fault rates scaled by this")
    p.add_argument("--minutes", type=float, default=60.0, help="stop starting seeds after")
    p.add_argument("--dir", type=Path, help="work directory (default: under /dev/shm)")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.steps < 1 or args.steps > 1_000_000 or args.faults < 0:
        p.error("--seeds and --steps must be positive, --faults not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dir is not None:
        return run(args, args.dir)
    with tempfile.TemporaryDirectory(prefix="onecard-sim-",
                                     dir=SHM if SHM.is_dir() else None) as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, root: Path) -> int:
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    base = base_data_set(root / f"base-{CARDS}", CARDS)
    rates = FaultRates().scaled(args.faults)
    totals: Counter[str] = Counter()            # faults injected, by kind
    checked: Counter[str] = Counter()           # checks made, by name
    started = time.perf_counter()
    steps = replies = records = done = 0
    for seed in seeds:
        if time.perf_counter() - started > args.minutes * 60:
            print(f"time budget of {args.minutes} min used: stopping before seed {seed}")
            break
        try:
            s = Simulator(seed, base, root / f"seed-{seed}", steps=args.steps,
                          rates=rates).run()
        except InvariantViolation as exc:
            print(f"FAILED: {exc}")
            print(f"replay: python -m onecard.bench.simulate --seed {exc.seed} "
                  f"--steps {args.steps} --faults {args.faults}")
            return 1
        done += 1
        steps += s.steps
        replies += s.replies
        records += s.records
        totals.update(s.faults)
        checked.update(s.checks)
        print(f"seed {seed}: {s.steps} steps, {s.replies} replies, {s.records} records, "
              f"{s.restarts} restarts, {sum(s.faults.values())} faults, "
              f"{s.seconds / s.steps * 1000:.1f} ms/step, digest {s.digest[:16]}", flush=True)
    elapsed = time.perf_counter() - started
    print(f"\n{done} seeds x {args.steps} steps = {steps} steps in {elapsed:.1f} s "
          f"({elapsed / max(steps, 1) * 1000:.1f} ms/step); {replies} replies, "
          f"{records} records durable")
    print("faults injected:")
    for kind, n in sorted(totals.items()):
        print(f"  {kind:34} {n:8}")
    print("invariants checked:")
    for name, n in sorted(checked.items()):
        print(f"  {name:42} {n:8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

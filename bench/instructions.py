"""Repeatable instruction counts of the core path under callgrind: ISO 8583 purchases through
``Engine.process``, per purchase, in total and by compiled module (codec, MACs, authoriser,
card state, ...). On this shared VM wall-clock rates drift ±20% between runs; instruction
counts move by a fraction of a percent, so a change to the core can be judged on one run.

    python -m onecard.bench.instructions                          # 2,000 purchases, batches of 100
    python -m onecard.bench.instructions --json a.json            # keep the figures
    python -m onecard.bench.instructions --mac sm4                # an SM4 terminal's purchases
    python -m onecard.bench.instructions --compare a.json b.json  # two commits side by side

Two children run under ``valgrind --tool=callgrind`` with collection on only inside
``Engine.process``, one with N purchases and one with 2N (both after the same sign-on); the
report is their difference divided by N, so start-up, the sign-on and anything else outside
the purchases cancel out. Needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from onecard.core.engine import ISO8583

# Collection is toggled on entering the Python-callable wrapper of Engine.process.
TOGGLE = "__pyx_pw_7onecard_4core_6engine_6Engine_*process"
MAX_MESSAGES = 200_000            # under callgrind a purchase takes ~50x as long
# A function line of `callgrind_annotate`: "1,234 (5.6%)  file:function [object]".
# The object is sometimes left off (seen for the first line): the module then comes from
# the function's Cython name (__pyx_f_7onecard_4core_6crypto_x919_many -> crypto).
ANNOTATE_RE = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+(.*?):(\S+)(?: \[(.*)\])?\s*$")
CYTHON_NAME_RE = re.compile(r"^__pyx_\w+?_7onecard_4core_(\d+)")


def child(data_dir: Path, messages: int, batch: int, mac: str) -> None:
    """Run under callgrind: sign on, build the purchases, then put them through the engine."""
    from onecard.bench.core_rate import purchase_buffers

    engine, term, _, buffers = purchase_buffers(data_dir, messages, batch, mac)
    for buf in buffers:
        engine.process(ISO8583, buf)
        engine.journal.take()
    print(term.alg_name)


def module_of(object_path: str) -> str:
    """``/x/core/crypto.cpython-311-x86_64-linux-gnu.so`` -> ``crypto``;
    ``/usr/lib/x86_64-linux-gnu/libc.so.6`` -> ``libc``."""
    return Path(object_path).name.split(".cpython")[0].split(".so")[0]


def cython_module(function: str) -> str:
    """The core module a Cython-mangled function belongs to, else "unknown"."""
    m = CYTHON_NAME_RE.match(function)
    if not m:
        return "unknown"
    start = m.end()
    return function[start:start + int(m.group(1))]


def parse_annotate(text: str) -> dict[str, int]:
    """Exclusive instructions per ``module:function`` from ``callgrind_annotate`` output."""
    costs: dict[str, int] = {}
    for line in text.splitlines():
        m = ANNOTATE_RE.match(line)
        if m:
            ir, _, function, obj = m.groups()
            key = f"{module_of(obj) if obj else cython_module(function)}:{function}"
            costs[key] = costs.get(key, 0) + int(ir.replace(",", ""))
    return costs


def run_child(data_dir: Path, messages: int, batch: int, mac: str,
              out_dir: Path) -> tuple[str, dict]:
    """One child under callgrind; returns its terminal's MAC algorithm and its costs."""
    out = out_dir / f"callgrind.{messages}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           "--collect-atstart=no", f"--toggle-collect={TOGGLE}", sys.executable, "-m",
           "onecard.bench.instructions", "--child", str(data_dir), "--messages", str(messages),
           "--batch", str(batch), "--mac", mac]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"bench.instructions: the callgrind run failed:\n{tail}")
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100",
                                str(out)], capture_output=True, text=True, check=True)
    costs = parse_annotate(annotated.stdout)
    if not costs:
        raise SystemExit("bench.instructions: callgrind counted nothing inside Engine.process "
                         f"(is {TOGGLE} in the build's symbols?)")
    return done.stdout.strip().splitlines()[-1], costs


def measure(data_dir: Path, messages: int, batch: int, mac: str = "x919",
            progress: Callable[[str], None] = print) -> dict:
    """Instructions per purchase: the 2N run's counts minus the N run's, over N."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        progress(f"callgrind: {messages:,} and {2 * messages:,} purchases in two children "
                 "(valgrind runs them ~50x slower) ...")
        small, large = pool.map(lambda n: run_child(data_dir, n, batch, mac, Path(tmp)),
                                (messages, 2 * messages))
        progress(f"callgrind: done in {time.monotonic() - started:.0f} s")
    per_fn = {k: (large[1].get(k, 0) - small[1].get(k, 0)) / messages
              for k in set(large[1]) | set(small[1])}
    per_module: dict[str, float] = {}
    for key, ir in per_fn.items():
        module = key.split(":", 1)[0]
        per_module[module] = per_module.get(module, 0.0) + ir
    total = sum(per_fn.values())
    assert total > 0, "the 2N run counted no more than the N run"
    top = sorted(per_fn.items(), key=lambda kv: -kv[1])[:12]
    return {"ir_per_purchase": round(total), "messages": messages, "batch": batch,
            "mac": large[0],
            "by_module": {m: round(v) for m, v in sorted(per_module.items(), key=lambda kv: -kv[1])
                          if round(v)},
            "top_functions": {k: round(v) for k, v in top}}


def report(r: dict) -> None:
    total = r["ir_per_purchase"]
    print(f"instructions per purchase inside Engine.process ({r['mac']} terminal, batches of "
          f"{r['batch']}): {total:,}")
    for module, ir in r["by_module"].items():
        print(f"  {module:<16} {ir:>9,}  {100 * ir / total:5.1f}%")
    print("  top functions:")
    for fn, ir in r["top_functions"].items():
        print(f"    {ir:>9,}  {fn}")


def compare(a: dict, b: dict) -> None:
    print(f"{'':<18} {'A':>10} {'B':>10}    B/A")
    rows = [("total", a["ir_per_purchase"], b["ir_per_purchase"])]
    for module in dict.fromkeys([*a["by_module"], *b["by_module"]]):
        rows.append((module, a["by_module"].get(module, 0), b["by_module"].get(module, 0)))
    for name, x, y in rows:
        ratio = f"{y / x:6.3f}" if x else "   new"
        print(f"{name:<18} {x:>10,} {y:>10,}   {ratio}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=2000, help="N: purchases in the first run")
    p.add_argument("--batch", type=int, default=100, help="purchases per received buffer")
    p.add_argument("--mac", choices=("x919", "sm4"), default="x919",
                   help="the MAC algorithm of the POS terminal the purchases come from")
    p.add_argument("--cards", type=int, default=20_000)
    p.add_argument("--data-dir", type=Path, help="an existing demo data set")
    p.add_argument("--json")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two --json results")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.compare:
        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        compare(a, b)
        return
    if not (0 < args.batch <= args.messages <= MAX_MESSAGES):
        raise SystemExit(f"bench.instructions: need 0 < --batch <= --messages <= {MAX_MESSAGES:,}")
    if args.child:
        child(args.child, args.messages, args.batch, args.mac)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("bench.instructions: needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            from onecard.switch import demo
            data_dir = Path(tmp) / "data"
            print(f"generating {args.cards:,} demo cards ...", flush=True)
            demo.generate(data_dir, cards=args.cards, progress=lambda _: None)
        result = measure(data_dir, args.messages, args.batch, args.mac,
                         progress=lambda s: print(s, flush=True))
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

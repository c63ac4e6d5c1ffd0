"""Core throughput: ISO 8583 purchases decoded + authorised + replies encoded per second on one
core (``Engine.process`` over pre-built buffers), against pyiso8583 decoding the same messages
in the same run (decode only). It also times the MACs alone (each request's and reply's, on
the same lanes as the path) so the report says how much of a purchase is MAC work and what
a purchase would have to cost for the 60x target.

    python -m onecard.bench.core_rate [--messages 200000] [--batch 1000] [--cards 100000]
    python -m onecard.bench.core_rate --data-dir d10m     # an existing data set, e.g. 10M cards
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from onecard.core import crypto, isocodec
from onecard.core.engine import ISO8583, Engine
from onecard.core.state import FN_FINANCIAL, KIND_PURCHASE, TERM_POS
from onecard.core.terminal import IsoLoad, Recorder
from onecard.protocols.iso8583_fields import pyiso8583_spec
from onecard.switch import demo
from onecard.switch.store import loader
from onecard.switch.terminals import REQUEST_TPDU_HEADER, TerminalInfo, read_terminals, usable_cards

TARGET_RATIO = 60          # issue 3, target 1: the core at 60x pyiso8583's decode-only rate


def signed_on_engine(data_dir: Path, terminal) -> tuple[Engine, bytes]:
    """An engine over the data set with one POS terminal signed on through the ISO path."""
    loaded = loader.load(data_dir)
    loaded.state.accounts["balance_fen"][:] = 10**12   # measure approvals, not declines
    engine = Engine(loaded.state, daily_limit_fen=2**31 - 1, amount_fen_max=10**9)
    signon = isocodec.encode_message(REQUEST_TPDU_HEADER, "0800", {
        11: "000001", 41: terminal.tid, 42: terminal.merchant, 60: "00000001003"})
    _, reply, _, _ = engine.process(ISO8583, signon)
    _, _, fields = isocodec.decode_message(reply[2:])
    assert fields[39] == "00", fields
    return engine, crypto.decrypt_key(terminal.alg_name, terminal.tmk, fields[62][20:36])


@dataclass
class CoreRun:
    rate: float                       # purchases a second through Engine.process
    codes: dict
    buffers: list[bytes]              # the requests, as framed for the path
    replies: list[bytes]
    alg: str                          # the terminal's MAC algorithm
    mak: bytes


def purchase_buffers(data_dir: Path, messages: int, batch: int,
                     mac: str | None = None) -> tuple[Engine, TerminalInfo, bytes, list[bytes]]:
    """A signed-on engine, its terminal (the data set's first Guangdong POS, or the first whose
    MAC algorithm is ``mac``), the terminal's MAC key, and ``messages // batch`` buffers of
    ``batch`` framed purchases from it."""
    term = next(t for t in read_terminals(data_dir) if t.kind == TERM_POS and t.province == 44
                and mac in (None, t.alg_name))
    engine, mak = signed_on_engine(data_dir, term)
    pans = usable_cards(data_dir, province=44, functions=FN_FINANCIAL)
    sim = IsoLoad(Recorder(), term.tid, term.merchant, term.mac_alg, mak, pans, seed=3,
                  first_stan=2)
    return engine, term, mak, [sim.build(batch) for _ in range(messages // batch)]


def onecard_rate(data_dir: Path, messages: int, batch: int) -> CoreRun:
    engine, term, mak, buffers = purchase_buffers(data_dir, messages, batch)
    replies = []
    start = time.perf_counter()
    for buf in buffers:
        replies.append(engine.process(ISO8583, buf)[1])
        engine.journal.take()                        # the committer's share, in-thread here
    elapsed = time.perf_counter() - start
    codes = engine.metrics.counts[ISO8583, KIND_PURCHASE]
    return CoreRun(len(buffers) * batch / elapsed,
                   {"approved": int(codes[0]), "declined": int(codes.sum() - codes[0])},
                   buffers, replies, term.alg_name, mak)


def mac_seconds(run: CoreRun) -> float:
    """Time the MACs of the run's requests and replies take alone, computed as the path
    computes them (``mac_frames``: the same lanes, no Python per message)."""
    start = time.perf_counter()
    for buf in run.buffers:
        crypto.mac_frames(run.alg, run.mak, buf)
    for buf in run.replies:
        crypto.mac_frames(run.alg, run.mak, buf)
    return time.perf_counter() - start


def pyiso8583_rate(buffers: list[bytes], limit: int) -> float:
    import iso8583

    spec = pyiso8583_spec()
    messages: list[bytearray] = []
    for buf in buffers:
        pos = 0
        while pos < len(buf) and len(messages) < limit:
            n = int.from_bytes(buf[pos:pos + 2], "big")
            messages.append(bytearray(buf[pos + 2:pos + 2 + n]))
            pos += 2 + n
    start = time.perf_counter()
    for m in messages:
        iso8583.decode(m, spec)
    return len(messages) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--cards", type=int, default=100_000)
    p.add_argument("--data-dir", type=Path,
                   help="an existing demo data set (e.g. `onecard demo-data --cards 10000000`) "
                        "instead of generating --cards into a temporary directory")
    p.add_argument("--pyiso-messages", type=int, default=50_000)
    p.add_argument("--json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tmp) / "data"
            demo.generate(data_dir, cards=args.cards, progress=lambda _: None)
        run = onecard_rate(data_dir, args.messages, args.batch)
        purchases = len(run.buffers) * args.batch
        mac_ns = mac_seconds(run) / purchases * 1e9
        peer = pyiso8583_rate(run.buffers, args.pyiso_messages)
    ours = run.rate
    path_ns = 1e9 / ours
    target_ns = 1e9 / (TARGET_RATIO * peer)
    result = {"onecard_msgs_per_s": round(ours), "pyiso8583_decode_msgs_per_s": round(peer),
              "ratio": round(ours / peer, 1), "batch": args.batch, "messages": args.messages,
              "codes": run.codes, "mac": run.alg,
              "ns_per_purchase": round(path_ns), "mac_ns_per_purchase": round(mac_ns),
              "target_ns_per_purchase": round(target_ns)}
    print(f"onecard core: {ours:,.0f} purchases/s (decode + MAC verify + authorise + encode + "
          f"reply MAC), batches of {args.batch}; {run.codes}")
    print(f"pyiso8583:    {peer:,.0f} messages/s (decode only)")
    print(f"ratio:        {ours / peer:.1f}x")
    print(f"a purchase:   {path_ns:,.0f} ns, of which the two MACs ({run.alg}) alone take "
          f"{mac_ns:,.0f} ns and the rest {path_ns - mac_ns:,.0f} ns; "
          f"{TARGET_RATIO}x pyiso8583 would be {target_ns:,.0f} ns")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

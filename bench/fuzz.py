"""Coverage-guided fuzzing of the two decoders with atheris (libFuzzer for Python).

    python -m onecard.bench.fuzz iso -runs=100000
    python -m onecard.bench.fuzz native -max_total_time=600
    python -m onecard.bench.fuzz corpus          # rewrite bench/fuzz_corpus/ (seed frames)

New inputs go to ./fuzz-work/<target>/ (ONECARD_FUZZ_WORK), crashes to ./crash-*.

Each input goes through ``Engine.process`` (the whole batch path: framing, decoding, MAC,
authorisation, reply encoding) of an engine over a small demo data set whose terminals are
signed on, and through the codecs' own entry points. The first byte of an input chooses
whether its frames are MACed again with the terminal's working key before they are
processed, so that mutated fields get past the MAC check into authorisation. Each target
asserts: no crash, ``consumed <= len(data)``, every reply frame parses back (pyiso8583,
msgspec) and the codecs agree with themselves. The targets are plain functions
(``check_iso``, ``check_native``): tests run the committed corpus through them without atheris.
"""

from __future__ import annotations

import os
import sys
import tempfile
from functools import cache
from pathlib import Path

import iso8583
import msgspec

from onecard.core import crypto, isocodec, native_msg
from onecard.core.engine import ISO8583, NATIVE, Engine
from onecard.core.state import (
    TERM_BUS_READER,
    TERM_KIOSK,
    TERM_MEDICAL,
    TERM_METRO_GATE,
    TERM_POS,
    TERM_VENUE,
    TERM_VERIFIER,
)
from onecard.protocols import native
from onecard.switch.store import loader
from onecard.switch.terminals import read_terminals

from .sim.terminals import SPEC, IsoSim, NativeSim, split_frames
from .sim.world import EPOCH_US, base_data_set

CORPUS = Path(__file__).parent / "fuzz_corpus"
CARDS = 1000
KEY_SEED = 20261102
REMAC = 1                          # first input byte: odd = MAC the frames again


class Harness:
    """An engine with one signed-on terminal of each kind, and those terminals."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="onecard-fuzz-")
        base = base_data_set(Path(self._tmp.name) / "base", CARDS)
        infos = read_terminals(base)
        self.state = loader.load(base).state
        self.engine = Engine(self.state)
        self.engine.clock_us = EPOCH_US
        crypto.simulate_keys(KEY_SEED)   # the same working keys as when the corpus was made
        pick = [next(t for t in infos if t.kind == kind and t.province == 31)
                for kind in (TERM_POS, TERM_METRO_GATE, TERM_BUS_READER, TERM_VERIFIER,
                             TERM_VENUE, TERM_MEDICAL, TERM_KIOSK)]
        self.pos = IsoSim(pick[0])
        (reply,) = self.pos.parse(self._run(ISO8583, self.pos.signon("000001")))
        self.pos.learn_keys(reply)
        self.natives = {}
        for info in pick[1:]:
            t = NativeSim(info)
            (reply,) = t.parse(self._run(NATIVE, t.signon_frame(t.next_seq())))
            t.learn_keys(reply)
            self.natives[info.tid] = t
        crypto.simulate_keys(0)
        c, province = self.state.cards, self.state.regions["province"]
        here = province[self.state.terminals["region"][self.pos.info.idx]]
        local = (province[c["region"]] == here) & (c["status"] == 0)
        self.pans = [str(int(p)) for p in c["pan"][local][:40]]

    def _run(self, proto: int, data: bytes) -> bytes:
        consumed, replies, _, _ = self.engine.process(proto, data)
        assert consumed == len(data)
        self.engine.journal.take()
        return replies


@cache
def harness() -> Harness:
    return Harness()


def _remac_iso(h: Harness, data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while len(data) - pos >= 2:
        n = int.from_bytes(data[pos:pos + 2], "big")
        frame = bytearray(data[pos:pos + 2 + n])
        if len(frame) == 2 + n and n > 27:
            assert h.pos.mak is not None        # the harness signed it on
            frame[-8:] = crypto.mac(h.pos.alg, h.pos.mak, bytes(frame[2 + 11:-8]))
        out += frame
        pos += 2 + n
    return bytes(out + data[pos:])


def _remac_native(h: Harness, data: bytes) -> bytes:
    try:
        (raw,) = split_frames(data, 4)
        frame = native.decode_frame(raw)
    except (AssertionError, ValueError, msgspec.MsgspecError):
        return data
    t = h.natives.get(frame.terminal)
    if t is None:
        return data
    assert t.mak is not None                    # the harness signed it on
    return native.encode_frame(frame.terminal, frame.body, crypto.mac(t.alg, t.mak, frame.body))


def _prepared(h: Harness, data: bytes, remac) -> bytes:
    """The first byte chooses: odd = MAC the frames again (so the fuzzer gets past the MAC
    check), even = the bytes as they are."""
    if data and data[0] & REMAC:
        return remac(h, data[1:])
    return data[1:]


def check_iso(data: bytes) -> None:
    h = harness()
    data = _prepared(h, data, _remac_iso)
    consumed, replies, _, close = h.engine.process(ISO8583, data)
    h.engine.journal.take()
    assert 0 <= consumed <= len(data), (consumed, len(data))
    for frame in split_frames(replies, 2):
        doc, _ = iso8583.decode(bytearray(frame), SPEC)        # every reply parses back
        assert len(doc["t"]) == 4 and doc["t"].isdigit(), doc["t"]
        if doc["t"] == "0810" and doc.get("39") == "00" and doc.get("41") == h.pos.info.tid:
            h.pos.learn_keys(doc)          # a sign-on got through: keep MACing with its key
    wellformed = isocodec.decode_frames(data)
    again = isocodec.reencode_frames(data)
    assert isocodec.decode_frames(again) <= wellformed + 1
    for frame in split_frames(data[:consumed], 2) if not close else ():
        try:
            isocodec.decode_message(frame)
        except isocodec.IsoFormatError:
            pass


def check_native(data: bytes) -> None:
    h = harness()
    data = _prepared(h, data, _remac_native)
    consumed, replies, _, _ = h.engine.process(NATIVE, data)
    h.engine.journal.take()
    assert 0 <= consumed <= len(data), (consumed, len(data))
    for raw in split_frames(replies, 4):
        frame = native.decode_frame(raw)                      # every reply parses back
        answers = native.decode_replies(frame.body)
        t = h.natives.get(frame.terminal)
        for a in answers:
            if isinstance(a, native.SignOnReply) and a.rc == "00" and t is not None:
                t.learn_keys(a)            # a sign-on got through: keep MACing with its key
    native_msg.decode_bodies(data)


TARGETS = {"iso": check_iso, "native": check_native}


def corpus_frames(h: Harness) -> dict[str, list[bytes]]:
    """Real frames of every request kind, from the signed-on terminals."""
    t, pans = h.pos, h.pans
    iso = [t.purchase(pans[0], 1234, "000002"), t.balance(pans[1], "000003"),
           t.reversal(pans[0], 1234, "000002"), t.void(pans[2], 500, "000004", "000005"),
           t.void_reversal(pans[2], 500, "000005"), t.settlement(1234, 1, "000006"),
           t.purchase(pans[3], 1, "000007") + t.balance(pans[4], "000008"),
           t.signon("000009"), t.purchase(pans[5], 10**9, "000010")]
    by_kind = {n.info.kind: n for n in h.natives.values()}
    g, bus = by_kind[TERM_METRO_GATE], by_kind[TERM_BUS_READER]
    v, venue = by_kind[TERM_VERIFIER], by_kind[TERM_VENUE]
    doctor, kiosk = by_kind[TERM_MEDICAL], by_kind[TERM_KIOSK]
    station = g.info.station_id or 0
    nat = [g.frame([native.Tap(10, pans[0], station, native.TAP_IN, 0)]),
           g.frame([native.Tap(11, pans[0], station, native.TAP_OUT, 0)]),
           bus.frame([native.Tap(12, pans[1], 0, native.TAP_IN, 0)]),
           bus.frame([native.OfflineTap(100 + i, pans[i], 0, native.TAP_IN, 1_700_000_000)
                      for i in range(4)]),
           g.frame([native.DenyListSync(13, 0)]), bus.frame([native.Heartbeat(14)]),
           v.frame([native.Verify(15, pans[2])]), venue.frame([native.VenueEntry(16, pans[3])]),
           doctor.frame([native.Medical(17, pans[4], 250_000)]),
           doctor.frame([native.MedicalRefund(18, pans[4], 17)]),
           kiosk.frame([native.TopUp(19, pans[5], 10_000)]), g.signon_frame(20)]
    return {"iso": iso, "native": nat}


def write_corpus(root: Path = CORPUS) -> None:
    frames = corpus_frames(harness())
    for name, items in frames.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(items):
            for mode in (0, REMAC):
                (d / f"{i:02d}-{mode}").write_bytes(bytes([mode]) + frame)


def corpus(name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / name).iterdir())]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    if len(argv) < 2 or argv[1] not in (*TARGETS, "corpus"):
        print(__doc__)
        return 2
    if argv[1] == "corpus":
        write_corpus()
        return 0
    import atheris  # the bench extra; not needed by the tests

    target = TARGETS[argv[1]]
    harness()
    # libFuzzer adds what it finds to the first directory: a work one, not the committed seeds.
    found = Path(os.environ.get("ONECARD_FUZZ_WORK", "fuzz-work")) / argv[1]
    found.mkdir(parents=True, exist_ok=True)
    args = [argv[0], *argv[2:], str(found), str(CORPUS / argv[1])]
    # Python code (the protocol modules, msgspec's callers, this harness) is instrumented here;
    # the compiled core gives coverage only when built for it (bench/README.md, Fuzzing).
    atheris.instrument_all()
    atheris.Setup(args, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

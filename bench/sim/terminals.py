"""The simulator's terminals: real ISO 8583 and native frames, MACed with the working key each
terminal learnt at sign-on, built with the independent codecs (pyiso8583, msgspec) as the
tests' terminals are (tests/termsim.py), and replies parsed back the same way.

Unlike the tests' terminals these never wait for an answer: the simulator holds replies until
their records are durable, so a terminal sends a buffer and is handed the reply frames later
(or never, after a crash, and then retransmits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import iso8583

from onecard.core import crypto
from onecard.protocols import native
from onecard.protocols.iso8583_fields import pyiso8583_spec
from onecard.switch.terminals import TerminalInfo

SPEC = pyiso8583_spec()
HEADER = "6000030000603100000000"          # TPDU 60 0003 0000 + header 603100000000
ISO_PREFIX_BYTES = 2
NATIVE_PREFIX_BYTES = 4
# What a retransmission must answer again exactly as the first time (the ring's copy): ISO
# fields and native reply attributes. Balances of a medical settlement are "as they are now".
ISO_SAME = ("39", "37", "38", "4", "54")
NATIVE_SAME = ("rc", "fare_fen", "fee_fen", "amount_fen", "pool_fen", "personal_fen",
               "cash_fen")


class BadReply(AssertionError):
    """A reply frame that does not parse, or whose MAC is wrong."""


def split_frames(data: bytes, prefix_bytes: int) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + prefix_bytes], "big")
        if pos + prefix_bytes + n > len(data):
            raise BadReply(f"reply stream ends inside a frame at {pos}")
        out.append(data[pos + prefix_bytes:pos + prefix_bytes + n])
        pos += prefix_bytes + n
    return out


def iso_encode(doc: dict) -> bytes:
    raw, _ = iso8583.encode(dict(doc), SPEC)
    return len(raw).to_bytes(2, "big") + bytes(raw)


def iso_decode(message: bytes) -> dict:
    try:
        doc, _ = iso8583.decode(bytearray(message), SPEC)
    except iso8583.DecodeError as exc:
        raise BadReply(f"ISO 8583 reply does not decode: {exc}") from exc
    return doc


@dataclass
class Request:
    """One request as sent: the key the journal knows it by and the answer it got first."""
    tid: str
    seq: int
    kind: str                 # "purchase", "tap", ... (the simulator's name)
    frame: bytes              # the framed bytes (a native frame may hold a batch)
    answer: tuple | None = None
    retry_of: Request | None = None     # a retransmission: the request first sent
    mak: bytes | None = None            # the working key it was MACed with
    decided: tuple | None = None        # answered durably, but the reply was lost in a crash


@dataclass
class IsoSim:
    info: TerminalInfo
    mak: bytes | None = None
    stan: int = 1

    @property
    def alg(self) -> str:
        return self.info.alg_name

    def next_stan(self) -> str:
        s = f"{self.stan:06d}"
        self.stan = self.stan % 999_999 + 1
        return s

    def build(self, mti: str, fields: dict, *, mac: bool = True) -> bytes:
        doc = {"h": HEADER, "t": mti, **fields}
        doc.setdefault("41", self.info.tid)
        doc.setdefault("42", self.info.merchant)
        if not mac:
            return iso_encode(doc)
        assert self.mak is not None, "a MACed request before sign-on"
        doc["64"] = "00" * 8
        raw = iso_encode(doc)[2:]
        doc["64"] = crypto.mac(self.alg, self.mak, raw[11:-8]).hex().upper()
        return iso_encode(doc)

    def signon(self, stan: str) -> bytes:
        return self.build("0800", {"11": stan, "60": "00000001003"}, mac=False)

    def purchase(self, pan: str, amount_fen: int, stan: str) -> bytes:
        return self.build("0200", {"2": pan, "3": "000000", "4": f"{amount_fen:012d}",
                                   "11": stan, "22": "021", "25": "00", "49": "156",
                                   "60": "22000001000"})

    def balance(self, pan: str, stan: str) -> bytes:
        return self.build("0200", {"2": pan, "3": "310000", "11": stan, "22": "021",
                                   "25": "00", "60": "01000001000"})

    def reversal(self, pan: str, amount_fen: int, stan: str) -> bytes:
        return self.build("0400", {"2": pan, "3": "000000", "4": f"{amount_fen:012d}",
                                   "11": stan, "22": "021", "25": "00", "39": "98",
                                   "60": "22000001000"})

    def void(self, pan: str, amount_fen: int, orig_stan: str, stan: str) -> bytes:
        return self.build("0200", {"2": pan, "3": "200000", "4": f"{amount_fen:012d}",
                                   "11": stan, "22": "021", "25": "00", "49": "156",
                                   "60": "23000001000", "61": f"000001{orig_stan}"})

    def void_reversal(self, pan: str, amount_fen: int, void_stan: str) -> bytes:
        return self.build("0400", {"2": pan, "3": "200000", "4": f"{amount_fen:012d}",
                                   "11": void_stan, "22": "021", "25": "00", "39": "98",
                                   "49": "156", "60": "23000001000"})

    def settlement(self, debit_fen: int, debit_count: int, stan: str) -> bytes:
        totals = f"{debit_fen:012d}{debit_count:06d}{0:012d}{0:06d}"
        return self.build("0500", {"11": stan, "48": totals, "60": "00000001201"})

    def parse(self, data: bytes) -> list[dict]:
        """Reply frames to documents; checks the MAC of every MACed reply."""
        out = []
        for frame in split_frames(data, ISO_PREFIX_BYTES):
            doc = iso_decode(frame)
            if "64" in doc and self.mak is not None and not self._mac_ok(doc):
                raise BadReply(f"{self.info.tid}: reply MAC wrong (STAN {doc.get('11')})")
            out.append(doc)
        return out

    def _mac_ok(self, reply: dict) -> bool:
        doc = {k: v for k, v in reply.items() if k not in ("p", "1")}
        got, doc["64"] = doc["64"], "00" * 8
        raw = iso_encode(doc)[2:]
        assert self.mak is not None             # checked by parse, its caller
        return crypto.mac(self.alg, self.mak, raw[11:-8]).hex().upper() == got

    def learn_keys(self, reply: dict) -> None:
        keys = bytes.fromhex(reply["62"])
        mak = crypto.decrypt_key(self.alg, self.info.tmk, keys[20:36])
        if crypto.key_check_value(self.alg, mak) != keys[36:40]:
            raise BadReply(f"{self.info.tid}: sign-on key check value wrong")
        self.mak = mak


@dataclass
class NativeSim:
    info: TerminalInfo
    mak: bytes | None = None
    seq: int = 1
    sent: list = field(default_factory=list)

    @property
    def alg(self) -> str:
        return self.info.alg_name

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1

    def frame(self, messages: list, *, key: bytes | None = None) -> bytes:
        body = native.encode_body(messages)
        mak = key or self.mak
        assert mak is not None, "a MACed request before sign-on"
        return native.encode_frame(self.info.tid, body, crypto.mac(self.alg, mak, body))

    def signon_frame(self, seq: int) -> bytes:
        return self.frame([native.SignOn(seq)], key=self.info.tmk)

    def parse(self, data: bytes) -> list:
        out = []
        for raw in split_frames(data, NATIVE_PREFIX_BYTES):
            try:
                frame = native.decode_frame(raw)
                replies = native.decode_replies(frame.body)
            except Exception as exc:          # msgspec raises several kinds
                raise BadReply(f"native reply does not decode: {exc}") from exc
            if frame.terminal != self.info.tid:
                raise BadReply(f"reply for {frame.terminal!r} on {self.info.tid}'s link")
            signon = any(isinstance(r, native.SignOnReply) for r in replies)
            if (frame.mac and self.mak is not None and not signon
                    and crypto.mac(self.alg, self.mak, frame.body) != frame.mac):
                raise BadReply(f"{self.info.tid}: reply MAC wrong")
            out.extend(replies)
        return out

    def learn_keys(self, reply) -> None:
        mak = crypto.decrypt_key(self.alg, self.info.tmk, reply.keys[:16])
        if crypto.key_check_value(self.alg, mak) != reply.keys[16:20]:
            raise BadReply(f"{self.info.tid}: sign-on key check value wrong")
        self.mak = mak


def iso_answer(doc: dict) -> tuple:
    return tuple(doc.get(k) for k in ISO_SAME)


def native_answer(reply) -> tuple:
    return tuple(getattr(reply, k, None) for k in NATIVE_SAME)

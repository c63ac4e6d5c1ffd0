"""Test terminals built on the independent implementations: pyiso8583 for ISO 8583 and msgspec
for the native protocol. Only the MAC uses onecard's crypto module (itself checked against the
``cryptography`` package in test_crypto.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import iso8583

from onecard.core import crypto
from onecard.protocols import native
from onecard.protocols.iso8583_fields import pyiso8583_spec
from onecard.switch.terminals import TerminalInfo

SPEC = pyiso8583_spec()
HEADER = "6000030000603100000000"      # TPDU 60 0003 0000 + header 603100000000

Exchange = Callable[[bytes], bytes]     # request frames in, reply frames out


def frames(data: bytes, prefix: int) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + prefix], "big")
        out.append(data[pos + prefix:pos + prefix + n])
        pos += prefix + n
    assert pos == len(data), "reply stream ends inside a frame"
    return out


def iso_encode(doc: dict) -> bytes:
    raw, _ = iso8583.encode(dict(doc), SPEC)
    return len(raw).to_bytes(2, "big") + bytes(raw)


def iso_decode(message: bytes) -> dict:
    doc, _ = iso8583.decode(bytearray(message), SPEC)
    return doc


@dataclass
class IsoTerminal:
    info: TerminalInfo
    exchange: Exchange
    mak: bytes | None = None
    stan: int = 1
    header: str = HEADER

    @property
    def alg(self) -> str:
        return self.info.alg_name

    def next_stan(self) -> str:
        s = f"{self.stan:06d}"
        self.stan += 1
        return s

    def build(self, mti: str, fields: dict, *, mac: bool = True, mak: bytes | None = None) -> bytes:
        """A framed request; field 64 is computed over the encoded bytes when ``mac``."""
        doc = {"h": self.header, "t": mti, **{str(k): v for k, v in fields.items()}}
        doc.setdefault("41", self.info.tid)
        doc.setdefault("42", self.info.merchant)
        if not mac:
            return iso_encode(doc)
        doc["64"] = "00" * 8
        raw = iso_encode(doc)[2:]
        # MAC input: MTI up to field 64's value (the last 8 bytes).
        m = crypto.mac(self.alg, mak or self.mak, raw[11:-8])
        doc["64"] = m.hex().upper()
        return iso_encode(doc)

    def send(self, *requests: bytes) -> list[dict]:
        return [iso_decode(f) for f in frames(self.exchange(b"".join(requests)), 2)]

    def signon(self) -> dict:
        (reply,) = self.send(self.build("0800", {"11": self.next_stan(), "60": "00000001003"},
                                        mac=False))
        if reply["39"] == "00":
            keys = bytes.fromhex(reply["62"])
            self.mak = crypto.decrypt_key(self.alg, self.info.tmk, keys[20:36])
            assert crypto.key_check_value(self.alg, self.mak) == keys[36:40]
        return reply

    def purchase(self, pan: str, amount_fen: int, *, stan: str | None = None,
                 extra: dict | None = None) -> bytes:
        fields = {"2": pan, "3": "000000", "4": f"{amount_fen:012d}",
                  "11": stan or self.next_stan(), "22": "021", "25": "00", "49": "156",
                  "60": "22000001000"}
        fields.update(extra or {})
        return self.build("0200", fields)

    def balance(self, pan: str, *, stan: str | None = None) -> bytes:
        return self.build("0200", {"2": pan, "3": "310000", "11": stan or self.next_stan(),
                                   "22": "021", "25": "00", "60": "01000001000"})

    def reversal(self, pan: str, amount_fen: int, stan: str) -> bytes:
        return self.build("0400", {"2": pan, "3": "000000", "4": f"{amount_fen:012d}",
                                   "11": stan, "22": "021", "25": "00", "39": "98",
                                   "60": "22000001000"})

    def void(self, pan: str, amount: int, orig_stan: str, *, stan: str | None = None,
             currency: str = "156", batch: int = 1) -> bytes:
        """撤销 of a purchase: processing code 20xxxx, the original's batch and STAN in 61."""
        return self.build("0200", {"2": pan, "3": "200000", "4": f"{amount:012d}",
                                   "11": stan or self.next_stan(), "22": "021", "25": "00",
                                   "49": currency, "60": f"23{batch:06d}000",
                                   "61": f"{batch:06d}{orig_stan}"})

    def void_reversal(self, pan: str, amount: int, void_stan: str, *,
                      currency: str = "156") -> bytes:
        """0400 of a void (processing code 20xxxx), STAN = the void's."""
        return self.build("0400", {"2": pan, "3": "200000", "4": f"{amount:012d}",
                                   "11": void_stan, "22": "021", "25": "00", "39": "98",
                                   "49": currency, "60": "23000001000"})

    def settlement(self, debit_fen: int, debit_count: int, credit_fen: int, credit_count: int,
                   *, batch: int = 1, stan: str | None = None) -> bytes:
        """0500 batch settlement: field 48 = debit total n12, debit count n6, credit total
        n12, credit count n6; field 60 = type 00, batch number n6, network code 201."""
        totals = f"{debit_fen:012d}{debit_count:06d}{credit_fen:012d}{credit_count:06d}"
        return self.build("0500", {"11": stan or self.next_stan(), "48": totals,
                                   "60": f"00{batch:06d}201"})

    def upload(self, pan: str, amount_fen: int, stan: str, *, batch: int = 1,
               proc: str = "000000", extra: dict | None = None) -> bytes:
        """0320 batch upload of one transaction as the terminal has it (after a 0510 said
        "not balanced"): its STAN in field 11, field 60 = type 00, batch, network code 201."""
        fields = {"2": pan, "3": proc, "4": f"{amount_fen:012d}", "11": stan, "49": "156",
                  "60": f"00{batch:06d}201"}
        fields.update(extra or {})
        return self.build("0320", fields)

    def upload_end(self, count: int | str, *, batch: int = 1, stan: str | None = None,
                   extra: dict | None = None) -> bytes:
        """The end of a batch upload: field 48 = the transactions uploaded, n4."""
        count_text = count if isinstance(count, str) else f"{count:04d}"
        fields = {"11": stan or self.next_stan(), "48": count_text, "60": f"00{batch:06d}202"}
        fields.update(extra or {})
        return self.build("0320", fields)

    def verify_reply_mac(self, reply: dict) -> bool:
        """Recompute the MAC of a decoded reply (re-encoded with pyiso8583)."""
        doc = {k: v for k, v in reply.items() if k not in ("p", "1")}
        mac = doc["64"]
        doc["64"] = "00" * 8
        raw = iso_encode(doc)[2:]
        return crypto.mac(self.alg, self.mak, raw[11:-8]).hex().upper() == mac


@dataclass
class NativeTerminal:
    info: TerminalInfo
    exchange: Exchange
    mak: bytes | None = None
    seq: int = 1
    sent: list = field(default_factory=list)

    @property
    def alg(self) -> str:
        return self.info.alg_name

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1

    def frame(self, messages: list, *, key: bytes | None = None, tid: str | None = None) -> bytes:
        body = native.encode_body(messages)
        return native.encode_frame(tid or self.info.tid, body,
                                   crypto.mac(self.alg, key or self.mak, body))

    def send_raw(self, data: bytes) -> list[native.Frame]:
        return [native.decode_frame(f) for f in frames(self.exchange(data), 4)]

    def send(self, messages: list, **kw) -> list:
        (reply,) = self.send_raw(self.frame(messages, **kw))
        return native.decode_replies(reply.body)

    def signon(self):
        (reply,) = self.send([native.SignOn(self.next_seq())], key=self.info.tmk)
        if reply.rc == "00":
            self.mak = crypto.decrypt_key(self.alg, self.info.tmk, reply.keys[:16])
            assert crypto.key_check_value(self.alg, self.mak) == reply.keys[16:20]
        return reply

    def tap(self, card: str, station: int = 0, direction: int = native.TAP_IN,
            time_s: int = 0) -> native.Tap:
        return native.Tap(self.next_seq(), card, station, direction, time_s)

    def verify(self, card: str) -> native.Verify:
        return native.Verify(self.next_seq(), card)


def socket_exchange(host: str, port: int, prefix: int, timeout: float = 10.0,
                    tls=None) -> tuple:
    """A connected socket and an exchange function that waits for one reply per request
    frame sent; over TLS when ``tls`` (an ssl.SSLContext) is given."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=host)

    def exchange(data: bytes) -> bytes:
        sent = len(frames(data, prefix))
        sock.sendall(data)
        out = bytearray()
        got = 0
        while got < sent:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the switch")
            out += chunk
            got = _complete(out, prefix)
        return bytes(out)

    return sock, exchange


def _complete(buf: bytes, prefix: int) -> int:
    pos = n = 0
    while len(buf) - pos >= prefix:
        size = int.from_bytes(buf[pos:pos + prefix], "big")
        if len(buf) - pos - prefix < size:
            break
        pos += prefix + size
        n += 1
    return n

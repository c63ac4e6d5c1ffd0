"""Terminal-side helpers shared by the load generator, the CLI and the tests: reading the
terminal registry and cards of a data set, and signing a terminal on over a blocking socket
(sign-on is rare and not on any hot path).

Terminal simulators need the master keys: they unwrap them with the data set's
key-encryption key, so they run where the switch does (the demo) and nowhere else."""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onecard.core import crypto, isocodec
from onecard.core.state import CARD_ACTIVE
from onecard.protocols import native
from onecard.protocols.enums import MAC_ALGORITHM, TERMINAL_KIND
from onecard.switch.errors import NoDataSet
from onecard.switch.security import keystore
from onecard.switch.store import dataset, snapshots, sqlite

ALG_NAMES = MAC_ALGORITHM.name_of
KIND_NAMES = TERMINAL_KIND.name_of
REQUEST_TPDU_HEADER = bytes.fromhex("6000030000") + bytes.fromhex("603100000000")


@dataclass(frozen=True)
class TerminalInfo:
    idx: int
    tid: str
    merchant: str
    kind: int
    protocol: int
    region_code: int
    province: int
    operator: int | None
    station_id: int | None
    mac_alg: int
    tmk: bytes
    name: str
    place: str = ""              # e.g. "supermarket", "elderly canteen", "hospital"
    app: str = ""                # the catalogue application the place offers

    @property
    def alg_name(self) -> str:
        return ALG_NAMES[self.mac_alg]


def read_terminals(data_dir: str | Path, kek_file: str | None = None) -> list[TerminalInfo]:
    """The terminal registry with master keys unwrapped (KekError without the right KEK)."""
    conn = sqlite.connect(sqlite.db_path(data_dir), readonly=True)
    try:
        keys = keystore.open_data_set(conn, data_dir, kek_file)
        rows = conn.execute(
            "SELECT t.idx, t.tid, t.merchant, t.kind, t.protocol, r.code, r.province, "
            "t.operator_idx, t.station_id, t.mac_alg, t.tmk_wrapped, t.name, t.place, "
            "t.app_code FROM terminals t "
            "JOIN regions r ON r.idx = t.region_idx ORDER BY t.idx").fetchall()
    finally:
        conn.close()
    return [TerminalInfo(*(*r[:10], keys.unwrap_tmk(r[1], r[10]), *r[11:])) for r in rows]


def usable_cards(data_dir: str | Path, *, province: int | None = None, functions: int = 0,
                 min_balance_fen: int = 0, kek_file: str | None = None) -> np.ndarray:
    """Card numbers (uint64) that are active, unexpired and carry ``functions``, from the
    newest checkpoint, optionally of one province."""
    snap = snapshots.latest(data_dir, dataset.for_data_dir(data_dir, kek_file))
    if snap is None:
        raise NoDataSet(f"no checkpoint in {data_dir}")
    cards, accounts = snap[1]["cards"], snap[1]["accounts"]
    conn = sqlite.connect(sqlite.db_path(data_dir), readonly=True)
    try:
        region_prov = np.array([p for (p,) in conn.execute(
            "SELECT province FROM regions ORDER BY idx")])
    finally:
        conn.close()
    today = dt.date.today()
    yymm = (today.year % 100) * 100 + today.month
    ok = (cards["status"] == CARD_ACTIVE) & (cards["expiry_yymm"] >= yymm)
    ok &= (cards["functions"] & functions) == functions
    ok &= accounts["balance_fen"][cards["account"]] >= min_balance_fen
    if province is not None:
        ok &= region_prov[cards["region"]] == province
    return cards["pan"][ok]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("switch closed the connection")
        out += chunk
    return bytes(out)


def iso_signon(sock: socket.socket, t: TerminalInfo, stan: int = 1) -> bytes:
    """0800 sign-on; returns the working MAC key (checked against its check value)."""
    sock.sendall(iso_signon_request(t, stan))
    length = int.from_bytes(_recv_exact(sock, 2), "big")
    return iso_signon_key(t, _recv_exact(sock, length))


def iso_signon_request(t: TerminalInfo, stan: int = 1) -> bytes:
    """A framed 0800 sign-on of terminal ``t``."""
    return isocodec.encode_message(REQUEST_TPDU_HEADER, "0800", {
        11: f"{stan:06d}", 41: t.tid, 42: t.merchant, 60: "00000001003"})


def iso_signon_key(t: TerminalInfo, reply: bytes) -> bytes:
    """The working MAC key an 0810 (unframed) delivers, checked against its check value;
    RuntimeError if the sign-on was refused."""
    _, mti, fields = isocodec.decode_message(reply)
    if mti != "0810" or fields.get(39) != "00":
        raise RuntimeError(f"sign-on of {t.tid} refused: {mti} rc={fields.get(39)}")
    keys = fields[62]
    mak = crypto.decrypt_key(t.alg_name, t.tmk, keys[20:36])
    if crypto.key_check_value(t.alg_name, mak) != keys[36:40]:
        raise RuntimeError(f"sign-on of {t.tid}: MAC key check value mismatch")
    return mak


def native_signon(sock: socket.socket, t: TerminalInfo, seq: int = 1) -> bytes:
    """Native SignOn (frame MACed with the master key); returns the working MAC key."""
    body = native.encode_body([native.SignOn(seq)])
    sock.sendall(native.encode_frame(t.tid, body, crypto.mac(t.alg_name, t.tmk, body)))
    length = int.from_bytes(_recv_exact(sock, 4), "big")
    frame = native.decode_frame(_recv_exact(sock, length))
    (reply,) = native.decode_replies(frame.body)
    if not isinstance(reply, native.SignOnReply) or reply.rc != "00":
        raise RuntimeError(f"sign-on of {t.tid} refused: {reply}")
    mak = crypto.decrypt_key(t.alg_name, t.tmk, reply.keys[:16])
    if crypto.key_check_value(t.alg_name, mak) != reply.keys[16:20]:
        raise RuntimeError(f"sign-on of {t.tid}: MAC key check value mismatch")
    return mak


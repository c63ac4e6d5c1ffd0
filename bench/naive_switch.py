"""A switch written the obvious way, as a baseline for the comparison benchmark: asyncio
streams, pyiso8583 for the codec, dicts for cards and terminals, the ``cryptography`` package
for MACs and keys, and sqlite3 with one durable commit per transaction. It speaks the same
ISO 8583 profile as onecard (sign-on, purchase) so the same load generator drives it.

    python -m onecard.bench.naive_switch --data-dir DIR --port 9583
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import time
from pathlib import Path

import iso8583
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from onecard.protocols.enums import MAC_ALGORITHM
from onecard.protocols.iso8583_fields import pyiso8583_spec
from onecard.switch.store import dataset, snapshots
from onecard.switch.terminals import read_terminals

SPEC = pyiso8583_spec()


def x919(key: bytes, data: bytes) -> bytes:
    data += b"\0" * (-len(data) % 8)
    enc = Cipher(TripleDES(key[:8] * 3), modes.CBC(b"\0" * 8)).encryptor()
    last = (enc.update(data) + enc.finalize())[-8:]
    last = Cipher(TripleDES(key[8:] * 3), modes.ECB()).decryptor().update(last)
    return Cipher(TripleDES(key[:8] * 3), modes.ECB()).encryptor().update(last)


def sm4_mac(key: bytes, data: bytes) -> bytes:
    data += b"\x80"
    data += b"\0" * (-len(data) % 16)
    enc = Cipher(algorithms.SM4(key), modes.CBC(b"\0" * 16)).encryptor()
    return (enc.update(data) + enc.finalize())[-16:][:8]


X919 = MAC_ALGORITHM.value_of["x919"]


def wrap(alg: int, kek: bytes, key: bytes) -> bytes:
    cipher = TripleDES(kek + kek[:8]) if alg == X919 else algorithms.SM4(kek)
    return Cipher(cipher, modes.ECB()).encryptor().update(key)


def check_value(alg: int, key: bytes) -> bytes:
    return wrap(alg, key, b"\0" * 16)[:4]


class NaiveSwitch:
    def __init__(self, data_dir: Path) -> None:
        self.terminals = {t.tid: t for t in read_terminals(data_dir)}
        self.keys: dict[str, bytes] = {}
        snap = snapshots.latest(data_dir, dataset.for_data_dir(data_dir))
        assert snap is not None, f"no checkpoint in {data_dir}"
        _, arrays = snap
        cards, accounts = arrays["cards"], arrays["accounts"]
        self.balances = {str(int(pan)): int(accounts["balance_fen"][acct])
                         for pan, acct in zip(cards["pan"], cards["account"], strict=True)}
        self.db = sqlite3.connect(data_dir / "naive.db")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS journal (tid, stan, pan, amount, rc, ts)")
        self.rrn = 0

    def mac(self, tid: str, data: bytes) -> bytes:
        t = self.terminals[tid]
        return (x919 if t.mac_alg == X919 else sm4_mac)(self.keys[tid], data)

    def handle(self, body: bytes) -> bytes:
        doc, _ = iso8583.decode(bytearray(body), SPEC)
        tid = doc.get("41", "")
        reply = {"h": doc["h"][:2] + doc["h"][6:10] + doc["h"][2:6] + doc["h"][10:],
                 "t": doc["t"][:2] + "1" + doc["t"][3], "11": doc.get("11", "000000"),
                 "41": tid, "42": doc.get("42", " " * 15)}
        if tid not in self.terminals:
            reply["39"] = "03"
        elif doc["t"] == "0800":
            t = self.terminals[tid]
            mak = os.urandom(16)
            self.keys[tid] = mak
            reply["39"] = "00"
            reply["62"] = (wrap(t.mac_alg, t.tmk, os.urandom(16)) + b"\0" * 4
                           + wrap(t.mac_alg, t.tmk, mak) + check_value(t.mac_alg, mak)).hex()
        elif tid not in self.keys or bytes.fromhex(doc.get("64", "")) != self.mac(
                tid, body[11:-8]):
            reply["39"] = "A0"
        else:
            pan, amount = doc["2"], int(doc.get("4", "0"))
            balance = self.balances.get(pan)
            if balance is None:
                rc = "14"
            elif balance < amount:
                rc = "51"
            else:
                rc = "00"
                self.balances[pan] = balance - amount
            self.db.execute("INSERT INTO journal VALUES (?,?,?,?,?,?)",
                            (tid, doc["11"], pan, amount, rc, time.time()))
            self.db.commit()
            self.rrn += 1
            reply.update({"2": pan, "3": doc["3"], "4": doc.get("4", "0" * 12),
                          "37": f"{self.rrn:012d}", "39": rc})
            reply["64"] = "00" * 8
            raw, _ = iso8583.encode(dict(reply), SPEC)
            reply["64"] = self.mac(tid, bytes(raw[11:-8])).hex()
        raw, _ = iso8583.encode(reply, SPEC)
        return len(raw).to_bytes(2, "big") + bytes(raw)

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                writer.write(self.handle(await reader.readexactly(size)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(data_dir: Path, host: str, port: int) -> None:
    switch = NaiveSwitch(data_dir)
    server = await asyncio.start_server(switch.connection, host, port)
    print(f"naive switch: listening iso8583 {host}:{server.sockets[0].getsockname()[1]}",
          flush=True)
    print("naive switch: ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9583)
    args = p.parse_args()
    asyncio.run(serve(Path(args.data_dir), args.host, args.port))


if __name__ == "__main__":
    main()

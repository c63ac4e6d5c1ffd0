"""ISO 8583: decode, encode and MAC; onecard's compiled codec against pyiso8583 and the
``cryptography`` package."""

import iso8583
import pytest

from onecard.bench.naive_switch import sm4_mac, x919
from onecard.core import crypto, isocodec
from onecard.protocols.iso8583_fields import pyiso8583_spec

from .support import record

SPEC = pyiso8583_spec()


def split(buf: bytes) -> list[bytearray]:
    out, pos = [], 0
    while pos < len(buf):
        size = int.from_bytes(buf[pos:pos + 2], "big")
        out.append(bytearray(buf[pos + 2:pos + 2 + size]))
        pos += 2 + size
    return out


@pytest.fixture
def purchases(iso_source, n):
    return iso_source.purchases(n)


def test_decode_onecard(benchmark, purchases, n):
    assert benchmark(isocodec.decode_frames, purchases) == n
    record(benchmark, "ISO 8583 decode", "onecard", n)


def test_decode_pyiso8583(benchmark, purchases, n):
    msgs = split(purchases)
    benchmark(lambda: [iso8583.decode(m, SPEC) for m in msgs])
    record(benchmark, "ISO 8583 decode", "peer", n)


def test_encode_onecard(benchmark, purchases, n):
    out = benchmark(isocodec.reencode_frames, purchases)
    assert out == purchases                       # field for field, byte for byte
    record(benchmark, "ISO 8583 encode (onecard: decode + encode)", "onecard", n)


def test_encode_pyiso8583(benchmark, purchases, n):
    docs = [iso8583.decode(m, SPEC)[0] for m in split(purchases)]
    benchmark(lambda: [iso8583.encode(dict(d), SPEC) for d in docs])
    record(benchmark, "ISO 8583 encode (onecard: decode + encode)", "peer", n)


@pytest.mark.parametrize("alg", ["x919", "sm4"])
def test_mac_onecard(benchmark, purchases, n, alg, iso_source):
    macs = benchmark(crypto.mac_frames, alg, iso_source.mak, purchases)
    assert len(macs) == 8 * n
    record(benchmark, f"MAC {alg}", "onecard", n)


@pytest.mark.parametrize("alg", ["x919", "sm4"])
def test_mac_cryptography(benchmark, purchases, n, alg, iso_source):
    fn = x919 if alg == "x919" else sm4_mac
    msgs = [bytes(m[11:-8]) for m in split(purchases)]
    macs = benchmark(lambda: [fn(iso_source.mak, m) for m in msgs])
    assert b"".join(macs) == crypto.mac_frames(alg, iso_source.mak, purchases)
    record(benchmark, f"MAC {alg}", "peer", n)

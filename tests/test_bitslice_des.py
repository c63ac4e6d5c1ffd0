"""The bitsliced DES/3DES X9.19 MACs (core/bitslice, issue 30) bit for bit against
`cryptography`, published DES vectors and today's table-based MACs (crypto.macs), on every
path this CPU runs, for every lane count of a pass and across passes, with mixed lengths and a
different key in every lane."""

import os
import random
import subprocess
import sys

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from onecard.core import bitslice, crypto

PATHS = bitslice.paths()


@pytest.fixture(params=PATHS)
def path(request):
    bitslice.use_path(request.param)
    yield request.param
    bitslice.use_path(None)


def x919_reference(key: bytes, data: bytes) -> bytes:
    data = (data or b"\0") + b"\0" * (-len(data or b"\0") % 8)
    k3 = key[16:24] if len(key) == 24 else key[:8]
    cbc = Cipher(TripleDES(key[:8] * 3), modes.CBC(b"\0" * 8)).encryptor()
    last = (cbc.update(data) + cbc.finalize())[-8:]
    last = Cipher(TripleDES(key[8:16] * 3), modes.ECB()).decryptor().update(last)
    return Cipher(TripleDES(k3 * 3), modes.ECB()).encryptor().update(last)


def test_the_sbox_circuits_match_the_fips_tables():
    assert bitslice.sbox_check() == 0


def test_the_portable_path_is_always_there():
    assert PATHS[0] == "portable"
    with pytest.raises(ValueError):
        bitslice.use_path("sse9")


@pytest.mark.parametrize("key, plain, cipher", [
    # The classic single-DES vectors ("Now is t" etc.), as 3DES with K1 = K2 = K3.
    ("0123456789abcdef", "4e6f772069732074", "3fa40e8a984d4815"),
    ("0123456789abcdef", "68652074696d6520", "6a271787ab8883f9"),
    ("0123456789abcdef", "666f7220616c6c20", "893d51ec4b563b53"),
    ("133457799bbcdff1", "0123456789abcdef", "85e813540f0ab405"),
    ("0e329232ea6d0d73", "8787878787878787", "0000000000000000"),
])
def test_published_des_vectors(path, key, plain, cipher):
    key = bytes.fromhex(key) * 3
    assert bitslice.x919_macs([key], [bytes.fromhex(plain)])[0].hex() == cipher


def test_x919_known_answer(path):
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert bitslice.x919_macs([key], [b"Now is the time for all "])[0].hex() == "a1c72e74ea3fa9b6"


def test_3des_ede_two_and_three_key_against_cryptography(path):
    rng = random.Random(7)
    keys = [rng.randbytes(rng.choice((16, 24))) for _ in range(70)]
    blocks = [rng.randbytes(8) for _ in keys]
    got = bitslice.x919_macs(keys, blocks)
    for key, block, mac in zip(keys, blocks, got, strict=True):
        full = key if len(key) == 24 else key + key[:8]
        assert mac == Cipher(TripleDES(full), modes.ECB()).encryptor().update(block)


def batch(rng: random.Random, lanes: int, lengths=None):
    keys = [rng.randbytes(16) for _ in range(lanes)]
    datas = [rng.randbytes(rng.choice(lengths) if lengths else rng.randrange(0, 140))
             for _ in range(lanes)]
    return keys, datas


@pytest.mark.parametrize("lanes", [*range(1, 66), 127, 130, 255, 257, 513, 1100])
def test_every_lane_count_agrees_with_the_table_based_macs(path, lanes):
    keys, datas = batch(random.Random(lanes), lanes)
    expect = crypto.macs([("x919", k, d) for k, d in zip(keys, datas, strict=True)])
    assert bitslice.x919_macs(keys, datas) == expect


@pytest.mark.parametrize("lengths", [[0], [1, 7, 8, 9], [8, 16, 200], [64] * 3 + [1000]])
def test_mixed_lengths_against_cryptography(path, lengths):
    keys, datas = batch(random.Random(len(lengths)), 90, lengths)
    got = bitslice.x919_macs(keys, datas)
    for lane, (key, data) in enumerate(zip(keys, datas, strict=True)):
        assert got[lane] == x919_reference(key, data), (lane, len(data))


def test_fuzzed_batches_lane_by_lane(path):
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    for _ in range(20):
        keys, datas = batch(rng, rng.randrange(1, 300))
        keys = [k + rng.randbytes(8) if rng.random() < 0.2 else k for k in keys]
        got = bitslice.x919_macs(keys, datas)
        for lane, (key, data) in enumerate(zip(keys, datas, strict=True)):
            assert got[lane] == x919_reference(key, data), (lane, key.hex(), data.hex())


def test_the_same_message_in_every_lane_gives_the_same_mac(path):
    key, data = b"k" * 16, b"0200" + b"9" * 90
    assert set(bitslice.x919_macs([key] * 100, [data] * 100)) == {x919_reference(key, data)}


def test_the_environment_forces_a_path():
    code = "from onecard.core import bitslice; print(bitslice.path())"
    for name in PATHS:
        env = dict(os.environ, ONECARD_BITSLICE=name)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == name


def test_the_bench_measurement_agrees():
    rng = random.Random(3)
    result = bitslice.time_x919(rng.randbytes(16 * 64), rng.randbytes(80 * 64), 80, 64, 2)
    assert result["agree"] and result["table"] > 0 and result["bitslice"] > 0

"""MACs and key wrapping: known answers, and agreement with the `cryptography` package (an
independent OpenSSL binding) for every length class."""

import os
import random

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from onecard.core import crypto

KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def x919_reference(key: bytes, data: bytes) -> bytes:
    data += b"\0" * (-len(data) % 8)
    left, right = key[:8] * 3, key[8:] * 3          # single DES as 3DES with K1=K2=K3
    cbc = Cipher(TripleDES(left), modes.CBC(b"\0" * 8)).encryptor()
    last = (cbc.update(data) + cbc.finalize())[-8:]
    last = Cipher(TripleDES(right), modes.ECB()).decryptor().update(last)
    return Cipher(TripleDES(left), modes.ECB()).encryptor().update(last)


def sm4_mac_reference(key: bytes, data: bytes) -> bytes:
    data += b"\x80"
    data += b"\0" * (-len(data) % 16)
    cbc = Cipher(algorithms.SM4(key), modes.CBC(b"\0" * 16)).encryptor()
    return (cbc.update(data) + cbc.finalize())[-16:][:8]


def test_sm4_standard_vector():
    # GB/T 32907-2016 appendix A: key = plaintext = 0123456789abcdeffedcba9876543210.
    assert crypto.encrypt_key("sm4", KEY, KEY).hex() == "681edf34d206965e86b3e94f536e4246"


def test_x919_known_answer():
    # Fixed vectors guard against the implementation drifting; the reference test below
    # ties them to an independent implementation.
    data = b"Now is the time for all "
    assert crypto.mac("x919", KEY, data).hex() == "a1c72e74ea3fa9b6"
    assert x919_reference(KEY, data).hex() == "a1c72e74ea3fa9b6"


def test_sm4_mac_known_answer():
    assert crypto.mac("sm4", KEY, b"").hex() == "8c338e5a27e349be"
    assert sm4_mac_reference(KEY, b"").hex() == "8c338e5a27e349be"


@pytest.mark.parametrize("length", [1, 7, 8, 9, 15, 16, 17, 64, 100, 4095, 4096, 4097, 10_000])
def test_macs_agree_with_cryptography(length):
    data = os.urandom(length)
    key = os.urandom(16)
    assert crypto.mac("x919", key, data) == x919_reference(key, data)
    assert crypto.mac("sm4", key, data) == sm4_mac_reference(key, data)


def test_mac_changes_with_any_bit():
    data = bytearray(os.urandom(64))
    base = crypto.mac("x919", KEY, bytes(data))
    data[37] ^= 0x01
    assert crypto.mac("x919", KEY, bytes(data)) != base


@pytest.mark.parametrize("alg", ["x919", "sm4"])
def test_key_wrap_round_trip_and_check_value(alg):
    working = os.urandom(16)
    wrapped = crypto.encrypt_key(alg, KEY, working)
    assert wrapped != working
    assert crypto.decrypt_key(alg, KEY, wrapped) == working
    assert len(crypto.key_check_value(alg, working)) == 4


def test_3des_wrap_matches_cryptography():
    working = os.urandom(16)
    ecb = Cipher(TripleDES(KEY + KEY[:8]), modes.ECB()).encryptor()
    assert crypto.encrypt_key("x919", KEY, working) == ecb.update(working) + ecb.finalize()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown MAC algorithm"):
        crypto.mac("md5", KEY, b"x")
    with pytest.raises(ValueError, match="16 bytes"):
        crypto.mac("sm4", b"short", b"x")


@pytest.mark.parametrize("alg", ["x919", "sm4"])
def test_one_key_many_messages_each_macs_from_a_fresh_chain(alg):
    """A terminal's key MACs message after message, many at a time; each must equal the MAC
    computed alone by the independent implementation."""
    reference = x919_reference if alg == "x919" else sm4_mac_reference
    key = os.urandom(16)
    bodies = [os.urandom(n) for n in (21, 22, 35, 36, 37, 43, 120, 21, 5000, 64, 27)]
    framed = b"".join(len(b).to_bytes(2, "big") + b for b in bodies)
    macs = crypto.mac_frames(alg, key, framed)
    assert [macs[i:i + 8] for i in range(0, len(macs), 8)] == [
        reference(key, b[11:-8]) for b in bodies]


def test_many_macs_at_once_equal_each_computed_alone():
    """The switch computes a batch's MACs together (X9.19 on several DES chains at once, SM4
    one by one): mixed algorithms, keys and lengths, more jobs than the lanes take at a time,
    must each give what the independent implementation gives."""
    rng = random.Random(11)
    jobs = []
    for i in range(150):
        alg = "sm4" if i % 7 == 3 else "x919"
        size = rng.choice([0, 1, 7, 8, 9, 15, 16, 17, 64, 97, 110, rng.randrange(300)])
        jobs.append((alg, rng.randbytes(16), rng.randbytes(size)))
    got = crypto.macs(jobs)
    for (alg, key, data), mac in zip(jobs, got, strict=True):
        if alg == "x919":
            # An empty message is one zero block (X9.19 pads to whole blocks, at least one).
            assert mac == x919_reference(key, data or b"\0" * 8), (len(data), key.hex())
        else:
            assert mac == sm4_mac_reference(key, data)
        assert mac == crypto.mac(alg, key, data)
    assert crypto.macs([]) == []

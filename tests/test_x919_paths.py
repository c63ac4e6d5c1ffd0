"""The process's X9.19 MACs (crypto.mac_many, issue 30) on every path it dispatches to: the
table-based lanes (des_lanes.h, also the oracle) and the constant-time VBMI path (des_vbmi.h,
where the CPU runs it), each forced in turn, and "auto" (by batch size) across its crossover.
Bit for bit against `cryptography`, every lane count of a pass (1..64) and across passes,
mixed lengths in one batch, a different key in every lane, fuzzed batches."""

import os
import random
import subprocess
import sys

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from onecard.core import crypto

PATHS = crypto.x919_paths()
LANES = 64                       # a VBMI pass


@pytest.fixture(params=PATHS)
def path(request):
    before = crypto.x919_path()
    crypto.x919_path(request.param)
    yield request.param
    crypto.x919_path(before)


def reference(key: bytes, data: bytes) -> bytes:
    data = (data or b"\0") + b"\0" * (-len(data or b"\0") % 8)
    cbc = Cipher(TripleDES(key[:8] * 3), modes.CBC(b"\0" * 8)).encryptor()
    last = (cbc.update(data) + cbc.finalize())[-8:]
    last = Cipher(TripleDES(key[8:] * 3), modes.ECB()).decryptor().update(last)
    return Cipher(TripleDES(key[:8] * 3), modes.ECB()).encryptor().update(last)


def check(rng: random.Random, lanes: int, lengths=None) -> None:
    keys = [rng.randbytes(16) for _ in range(lanes)]
    datas = [rng.randbytes(rng.choice(lengths) if lengths else rng.randrange(0, 140))
             for _ in range(lanes)]
    got = crypto.macs([("x919", k, d) for k, d in zip(keys, datas, strict=True)])
    for i, (k, d) in enumerate(zip(keys, datas, strict=True)):
        assert got[i] == reference(k, d), (lanes, i, len(d))


def test_the_table_path_is_always_there():
    assert PATHS[:2] == ["auto", "table"]
    with pytest.raises(ValueError):
        crypto.x919_path("sse9")


def test_vbmi_runs_where_the_cpu_has_it():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    wanted = all(f in flags.split() for f in ("avx512f", "avx512bw", "avx512vbmi", "gfni"))
    assert ("vbmi" in PATHS) == wanted


def test_known_answer(path):
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert crypto.mac("x919", key, b"Now is the time for all ").hex() == "a1c72e74ea3fa9b6"


@pytest.mark.parametrize("lanes", range(1, LANES + 1))
def test_every_lane_count(path, lanes):
    check(random.Random(lanes), lanes)


@pytest.mark.parametrize("lanes", [LANES + 1, 2 * LANES - 1, 2 * LANES + 3, 300])
def test_across_passes(path, lanes):
    check(random.Random(1000 + lanes), lanes)


def test_mixed_lengths_in_one_pass(path):
    # Empty, partial, whole blocks and long ones together: lanes finish at different steps.
    check(random.Random(5), LANES, lengths=[0, 1, 7, 8, 9, 16, 63, 64, 65, 500])


def test_fuzzed_batches(path):
    rng = random.Random(30)
    for _ in range(20):
        check(rng, rng.randrange(1, 3 * LANES))


def test_the_same_key_in_many_lanes(path):
    # One terminal's burst: every lane reads the same schedule.
    rng = random.Random(9)
    key = rng.randbytes(16)
    datas = [rng.randbytes(rng.randrange(1, 100)) for _ in range(LANES + 5)]
    got = crypto.macs([("x919", key, d) for d in datas])
    assert got == [reference(key, d) for d in datas]


def test_sm4_jobs_interleaved_are_untouched(path):
    rng = random.Random(11)
    jobs = [(rng.choice(("x919", "sm4")), rng.randbytes(16), rng.randbytes(rng.randrange(90)))
            for _ in range(100)]
    got = crypto.macs(jobs)
    assert got == [crypto.mac(alg, k, d) for alg, k, d in jobs]


@pytest.mark.parametrize("name", PATHS)
def test_the_environment_variable_forces_a_path(name):
    code = ("from onecard.core import crypto; print(crypto.x919_path()); "
            "print(crypto.mac('x919', bytes(range(16)), b'abc').hex())")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONECARD_X919": name},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [name, reference(bytes(range(16)), b"abc").hex()]

# cython: language_level=3
"""Constant-time X9.19 MACs of many messages at once: bitsliced DES/3DES (des_bitslice.h).

Lanes are messages: one pass of DES runs 64 of them on the portable path (uint64_t slices),
256 with AVX2 or 512 with AVX-512F. What makes it constant-time is written in the header:
S-boxes as Boolean circuits, permutations and key schedule as fixed wiring, branches only on
the number and lengths of the messages (public). The path is the narrowest that holds a batch
in one pass, up to the widest the CPU runs; ONECARD_BITSLICE=portable|avx2|avx512 (read at
import) or use_path() forces one, for the tests and the bench.

The switch does not use this path: at the batch sizes it sees (up to 64 messages a call) a
bitsliced pass costs more than the table lanes (the crossover is ~150 messages here,
bench.macs). The switch's X9.19 MACs go through crypto's ``x919_many`` dispatcher, which picks
the constant-time VBMI path (des_vbmi.h) from about 8 messages on a CPU that has it, and the
table lanes otherwise (protocols/ISO8583.md). This module stays as the portable constant-time
reference, checked by tests/test_constant_time.py under valgrind, with a batch function for the
tests and bench.macs.
"""

import os
import time

from libc.stdint cimport uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memset
from onecard.core import crypto
from onecard.core.crypto cimport (MAC_X919, MacJob, MacKey, mac_job, mac_many, mackey_clear,
                                  mackey_set)

cdef extern from "des_bitslice.h" nogil:
    enum:
        OC_BS_PORTABLE
        OC_BS_AVX2
        OC_BS_AVX512
    void oc_bs_init()
    int oc_bs_widest()
    void oc_bs_x919_many(const OcBsJob* jobs, size_t count, int width, int widest)
    int oc_bs_sbox_check()

oc_bs_init()

PATHS = {"portable": OC_BS_PORTABLE, "avx2": OC_BS_AVX2, "avx512": OC_BS_AVX512}
cdef int widest = oc_bs_widest()
cdef int forced = 0            # 0: by batch size


cdef void bs_x919_many(const OcBsJob* jobs, size_t count) noexcept nogil:
    """X9.19 MACs of jobs[0..count) on the chosen path."""
    oc_bs_x919_many(jobs, count, forced, widest)


def paths() -> list[str]:
    """The paths this CPU runs, narrowest first."""
    return [name for name, lanes in PATHS.items() if lanes <= widest]


def use_path(name) -> None:
    """Force a path by name, or None for the narrowest that holds the batch."""
    global forced
    if name is not None and name not in paths():
        raise ValueError(f"bitslice path {name!r} not run by this CPU; it runs {paths()}")
    forced = 0 if name is None else PATHS[name]


def path() -> str | None:
    return next((n for n, lanes in PATHS.items() if lanes == forced), None)


use_path(os.environ.get("ONECARD_BITSLICE") or None)


def sbox_check() -> int:
    """0 when the compiled S-box circuits agree with the FIPS tables on all inputs, else the
    number of the first that does not."""
    return oc_bs_sbox_check()


def x919_macs(keys: list[bytes], datas: list[bytes]) -> list[bytes]:
    """X9.19 MACs of datas[i] under keys[i] (16 bytes; 24 for three-key 3DES at the end),
    all computed together. A one-block message under a 24-byte key is 3DES-EDE ECB."""
    cdef size_t i, count = len(datas)
    if len(keys) != count:
        raise ValueError("one key per message")
    keys = [bytes(k) for k in keys]
    datas = [bytes(d) for d in datas]          # kept alive while the C side reads
    for k in keys:
        if len(k) not in (16, 24):
            raise ValueError(f"key must be 16 or 24 bytes, got {len(k)}")
    cdef OcBsJob* jobs = <OcBsJob*>calloc(max(count, 1), sizeof(OcBsJob))
    if jobs == NULL:
        raise MemoryError()
    out = bytearray(8 * count)
    cdef uint8_t* o = <uint8_t*><char*>out
    cdef bytes key, data
    try:
        for i in range(count):
            key, data = keys[i], datas[i]
            jobs[i].key = <const uint8_t*><const char*>key
            jobs[i].key_len = len(key)
            jobs[i].data = <const uint8_t*><const char*>data
            jobs[i].n = len(data)
            jobs[i].out8 = o + 8 * i
        with nogil:
            bs_x919_many(jobs, count)
    finally:
        free(jobs)
    return [bytes(out[8 * i:8 * i + 8]) for i in range(count)]


cdef double _time_bitslice(OcBsJob* jobs, size_t batch, int rounds):
    cdef int _r
    start = time.perf_counter_ns()
    with nogil:
        for _r in range(rounds):
            bs_x919_many(jobs, batch)
    return (time.perf_counter_ns() - start) / (<double>rounds * batch)


cdef double _time_table(MacJob* jobs, size_t batch, int rounds):
    cdef int _r
    start = time.perf_counter_ns()
    with nogil:
        for _r in range(rounds):
            mac_many(jobs, batch)
    return (time.perf_counter_ns() - start) / (<double>rounds * batch)


def time_x919(keys: bytes, data: bytes, size_t n, size_t batch, int rounds) -> dict:
    """Nanoseconds per X9.19 MAC of `batch` messages of `n` bytes (data: batch * n bytes),
    each under its own 16-byte key (keys: batch * 16 bytes), batch after batch `rounds`
    times, in one call: crypto.mac_many on each of its paths ("table", "vbmi" where the CPU
    runs it, "auto": the process's choice by batch size; key schedules set beforehand, as at
    sign-on) and this module's bitsliced path. The bench's measurement."""
    if len(keys) < 16 * batch or len(data) < n * batch:
        raise ValueError("keys and data too short for the batch")
    cdef const uint8_t* k = <const uint8_t*><const char*>keys
    cdef const uint8_t* d = <const uint8_t*><const char*>data
    cdef MacKey* mk = <MacKey*>calloc(batch, sizeof(MacKey))
    cdef MacJob* table = <MacJob*>calloc(batch, sizeof(MacJob))
    cdef OcBsJob* bs = <OcBsJob*>calloc(batch, sizeof(OcBsJob))
    cdef uint8_t* out = <uint8_t*>calloc(batch, 16)
    cdef size_t i
    result = {}
    agree = True
    before = crypto.x919_path()
    try:
        if mk == NULL or table == NULL or bs == NULL or out == NULL:
            raise MemoryError()
        for i in range(batch):
            mackey_set(&mk[i], MAC_X919, k + 16 * i)
            mac_job(&table[i], &mk[i], d + n * i, n, out + 16 * i)
            bs[i].key, bs[i].key_len = k + 16 * i, 16
            bs[i].data, bs[i].n, bs[i].out8 = d + n * i, n, out + 16 * i + 8
        result["bitslice"] = _time_bitslice(bs, batch, rounds)
        for name in crypto.x919_paths():
            crypto.x919_path(name)
            for i in range(batch):
                memset(out + 16 * i, 0, 8)
            result[name] = _time_table(table, batch, rounds)
            agree = agree and _agree(out, batch)
        result["agree"] = agree
        return result
    finally:
        crypto.x919_path(before)
        if mk != NULL:
            for i in range(batch):
                mackey_clear(&mk[i])
        free(mk)
        free(table)
        free(bs)
        free(out)


cdef bint _agree(const uint8_t* out, size_t batch):
    """Each message's two MACs (the first 8 bytes of its 16, the last 8) are equal."""
    cdef size_t i
    for i in range(batch):
        if memcmp(out + 16 * i, out + 16 * i + 8, 8) != 0:
            return False
    return True

# cython: language_level=3
"""MAC computation and key wrapping for terminals.

MACs are computed for every message on the hot path, inside batches that must not touch
Python objects, so this is C: the ciphers of both MACs are our own (des_lanes.h, sm4_lanes.h),
which run the MACs of a batch several at a time (libcrypto does one block at a time, at the
latency of the cipher's rounds, and its EVP interface costs more than the cipher on ~100-byte
messages; see the headers). Key wrapping, off the hot path, uses OpenSSL's libcrypto. The tests
check these functions against ``cryptography`` (an independent binding of OpenSSL) and against
published SM4 vectors.

ANSI X9.19 (retail MAC): data zero-padded to a multiple of 8 bytes, single-DES CBC-MAC under
the left key half, then the last block decrypted under the right half and encrypted under the
left. SM4 MAC: GB/T 15852.1 MAC algorithm 1 (CBC-MAC, zero IV) with padding method 2 (0x80 then
zeros, always added), leftmost 8 bytes of the last block.
"""

import os

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

cdef extern from "openssl/des.h" nogil:
    ctypedef unsigned char DES_cblock[8]
    ctypedef unsigned char const_DES_cblock[8]
    ctypedef struct DES_key_schedule:
        pass
    void DES_set_key_unchecked(const_DES_cblock* key, DES_key_schedule* schedule)
    void DES_ecb_encrypt(const_DES_cblock* input, DES_cblock* output, DES_key_schedule* ks, int enc)
    void DES_ecb3_encrypt(const_DES_cblock* input, DES_cblock* output, DES_key_schedule* ks1,
                          DES_key_schedule* ks2, DES_key_schedule* ks3, int enc)
    int DES_ENCRYPT
    int DES_DECRYPT

from onecard.core.evp cimport (
    EVP_CIPHER_CTX,
    EVP_CIPHER_CTX_free,
    EVP_CIPHER_CTX_new,
    EVP_CIPHER_CTX_set_padding,
    EVP_DecryptInit_ex,
    EVP_DecryptUpdate,
    EVP_EncryptInit_ex,
    EVP_EncryptUpdate,
    EVP_sm4_ecb,
)

cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char* buf, int num)

cdef uint8_t ZERO_IV[16]
memset(ZERO_IV, 0, 16)


cdef int mackey_set(MacKey* k, int alg, const uint8_t* key16) noexcept nogil:
    """Install a 16-byte key with its schedule; 0 on success."""
    cdef OcDesKey right_enc
    mackey_clear(k)
    memcpy(k.key, key16, KEY_BYTES)
    if alg == MAC_X919:
        oc_des_key(key16, <OcDesKey*>k.des_k1, NULL)
        oc_des_key(key16 + 8, &right_enc, <OcDesKey*>k.des_k2d)
    elif alg == MAC_SM4:
        oc_sm4_key(key16, <OcSm4Key*>k.sm4_rk)
    else:
        return -1
    k.alg = alg
    return 0


cdef void mackey_clear(MacKey* k) noexcept nogil:
    memset(k, 0, sizeof(MacKey))


cdef extern from "des_lanes.h" nogil:
    ctypedef struct OcDesKey:
        pass
    ctypedef struct OcMacJob:
        const OcDesKey* k1
        const OcDesKey* k2d
        const uint8_t* data
        size_t n
        uint8_t* out8
    void oc_des_init()
    void oc_des_key(const uint8_t* key8, OcDesKey* enc, OcDesKey* dec)
    void oc_x919_many(const OcMacJob* jobs, size_t count)

cdef extern from "sm4_lanes.h" nogil:
    ctypedef struct OcSm4Key:
        pass
    ctypedef struct OcSm4Job:
        const OcSm4Key* key
        const uint8_t* data
        size_t n
        uint8_t* out8
    void oc_sm4_init()
    void oc_sm4_key(const uint8_t* key16, OcSm4Key* k)
    void oc_sm4_mac_many(const OcSm4Job* jobs, size_t count)

cdef extern from "des_vbmi.h" nogil:
    void oc_vb_init()
    int oc_vb_supported()
    int oc_vb_prefer(const OcMacJob* jobs, size_t count)
    void oc_vb_x919_many(const OcMacJob* jobs, size_t count)

oc_des_init()
oc_vb_init()
oc_sm4_init()
assert sizeof(OcDesKey) == 32 * sizeof(uint32_t) and sizeof(OcSm4Key) == 32 * sizeof(uint32_t)

cdef enum:
    LANE_JOBS = 64         # X9.19 jobs handed to the lanes at a time (stack bound)


cdef enum:
    X919_AUTO = 0          # by batch: VBMI where oc_vb_prefer says it is faster, else table
    X919_TABLE = 1         # des_lanes.h: SP-table lookups, 4 chains in lockstep
    X919_VBMI = 2          # des_vbmi.h: constant-time, 64 messages a pass (AVX-512 VBMI)

X919_PATHS = {"auto": X919_AUTO, "table": X919_TABLE, "vbmi": X919_VBMI}
cdef int vbmi_ok = oc_vb_supported()
cdef int x919_forced = X919_AUTO


def x919_paths() -> list[str]:
    """The X9.19 paths this CPU runs ("auto" picks one by batch size)."""
    return [name for name in X919_PATHS if name != "vbmi" or vbmi_ok]


def x919_path(name: str | None = None) -> str:
    """Force the X9.19 path by name (None or "auto": by batch size); returns the one in force.
    ONECARD_X919 sets it at import, for the tests and the bench."""
    global x919_forced
    if name is not None:
        if name not in x919_paths():
            raise ValueError(f"X9.19 path {name!r} not run by this CPU; it runs {x919_paths()}")
        x919_forced = X919_PATHS[name]
    return next(n for n, v in X919_PATHS.items() if v == x919_forced)


x919_path(os.environ.get("ONECARD_X919") or None)


cdef void x919_many(const OcMacJob* jobs, size_t count) noexcept nogil:
    """X9.19 MACs of jobs[0..count) on the forced path, or by batch: when the CPU runs it and
    the crossover measured (des_vbmi.h, oc_vb_prefer: ~8 messages of 64 bytes) says it is
    faster, the constant-time VBMI path, else the table's."""
    cdef int path = x919_forced
    if path == X919_AUTO:
        path = X919_VBMI if vbmi_ok and oc_vb_prefer(jobs, count) else X919_TABLE
    if path == X919_VBMI:
        oc_vb_x919_many(jobs, count)
    else:
        oc_x919_many(jobs, count)


cdef inline void _x919_job(MacKey* k, const uint8_t* data, size_t n, uint8_t* out8,
                           OcMacJob* job) noexcept nogil:
    job.k1 = <const OcDesKey*>k.des_k1
    job.k2d = <const OcDesKey*>k.des_k2d
    job.data = data
    job.n = n
    job.out8 = out8


cdef inline void _sm4_job(MacKey* k, const uint8_t* data, size_t n, uint8_t* out8,
                          OcSm4Job* job) noexcept nogil:
    job.key = <const OcSm4Key*>k.sm4_rk
    job.data = data
    job.n = n
    job.out8 = out8


cdef void mac_many(MacJob* jobs, size_t count) noexcept nogil:
    """The MACs of many messages, each algorithm's running several CBC chains at once (see
    des_lanes.h and sm4_lanes.h)."""
    cdef OcMacJob x919[LANE_JOBS]
    cdef OcSm4Job sm4[LANE_JOBS]
    cdef size_t i, n_x919 = 0, n_sm4 = 0
    for i in range(count):
        jobs[i].rc = 0
        if jobs[i].key.alg == MAC_X919:
            _x919_job(jobs[i].key, jobs[i].data, jobs[i].n, jobs[i].out8, &x919[n_x919])
            n_x919 += 1
            if n_x919 == LANE_JOBS:
                x919_many(x919, n_x919)
                n_x919 = 0
        elif jobs[i].key.alg == MAC_SM4:
            _sm4_job(jobs[i].key, jobs[i].data, jobs[i].n, jobs[i].out8, &sm4[n_sm4])
            n_sm4 += 1
            if n_sm4 == LANE_JOBS:
                oc_sm4_mac_many(sm4, n_sm4)
                n_sm4 = 0
        else:
            jobs[i].rc = -1
    if n_x919:
        x919_many(x919, n_x919)
    if n_sm4:
        oc_sm4_mac_many(sm4, n_sm4)


cdef void mac_many_in(MacJob* jobs, size_t count, uint8_t* base) noexcept nogil:
    """mac_many over jobs whose ``data`` and ``out8`` hold offsets into base: replies are
    recorded while their output buffer may still move (it grows), and MACed once it is
    written."""
    cdef size_t i
    for i in range(count):
        jobs[i].data = base + <size_t>jobs[i].data
        jobs[i].out8 = base + <size_t>jobs[i].out8
    mac_many(jobs, count)


cdef int mac8(MacKey* k, const uint8_t* data, size_t n, uint8_t* out8) noexcept nogil:
    """8-byte MAC of data under k; -1 when k holds no key."""
    cdef MacJob job
    mac_job(&job, k, data, n, out8)
    mac_many(&job, 1)
    return job.rc


cdef int mac_equal(const uint8_t* a, const uint8_t* b) noexcept nogil:
    # Constant time: a MAC comparison must not leak how many leading bytes matched.
    cdef uint8_t diff = 0
    cdef int i
    for i in range(MAC_BYTES):
        diff |= a[i] ^ b[i]
    return diff == 0


cdef int wrap_key(int alg, const uint8_t* kek16, const uint8_t* key16, uint8_t* out16,
                  int decrypt) noexcept nogil:
    """Encrypt (or decrypt) a 16-byte key under a 16-byte key-encrypting key, ECB."""
    cdef DES_key_schedule a, b
    cdef int outl = 0, ok, half
    cdef EVP_CIPHER_CTX* ctx
    if alg == MAC_X919:
        DES_set_key_unchecked(<const_DES_cblock*>kek16, &a)
        DES_set_key_unchecked(<const_DES_cblock*>(kek16 + 8), &b)
        for half in range(2):
            DES_ecb3_encrypt(<const_DES_cblock*>(key16 + 8 * half), <DES_cblock*>(out16 + 8 * half),
                             &a, &b, &a, DES_DECRYPT if decrypt else DES_ENCRYPT)
        return 0
    if alg == MAC_SM4:
        ctx = EVP_CIPHER_CTX_new()
        if ctx == NULL:
            return -1
        if decrypt:
            ok = EVP_DecryptInit_ex(ctx, EVP_sm4_ecb(), NULL, kek16, NULL)
        else:
            ok = EVP_EncryptInit_ex(ctx, EVP_sm4_ecb(), NULL, kek16, NULL)
        EVP_CIPHER_CTX_set_padding(ctx, 0)
        if ok == 1:
            if decrypt:
                ok = EVP_DecryptUpdate(ctx, out16, &outl, key16, 16)
            else:
                ok = EVP_EncryptUpdate(ctx, out16, &outl, key16, 16)
        EVP_CIPHER_CTX_free(ctx)
        return 0 if ok == 1 and outl == 16 else -1
    return -1


cdef int check_value(int alg, const uint8_t* key16, uint8_t* out4) noexcept nogil:
    """Key check value: the key encrypting a zero block, first 4 bytes."""
    cdef uint8_t block[16]
    memset(block, 0, 16)
    if wrap_key(alg, key16, ZERO_IV, block, 0) != 0:
        return -1
    memcpy(out4, block, CHECK_VALUE_BYTES)
    return 0


# The deterministic simulator (bench/sim) needs the same working keys on every run of a seed:
# while this is non-zero, keys come from a seeded generator instead of OpenSSL. Nothing in the
# switch sets it; the cost is one branch per sign-on.
cdef uint64_t simulated_key_state = 0


cdef inline uint64_t splitmix64(uint64_t* s) noexcept nogil:
    cdef uint64_t z
    s[0] += <uint64_t>0x9E3779B97F4A7C15
    z = s[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef int random_bytes(uint8_t* out, int n) noexcept nogil:
    cdef int i
    if simulated_key_state == 0:
        return 0 if RAND_bytes(out, n) == 1 else -1
    for i in range(n):
        out[i] = <uint8_t>(splitmix64(&simulated_key_state) >> 56)
    return 0


def simulate_keys(seed: int) -> None:
    """Working keys from a generator seeded with ``seed`` (the simulator only: such keys are
    predictable); 0 goes back to OpenSSL's generator."""
    global simulated_key_state
    simulated_key_state = <uint64_t>seed


cdef uint64_t pan_cipher(const uint8_t* key16, uint64_t pan, uint32_t card, uint32_t account,
                         int decrypt) noexcept nogil:
    """A journal record's card number enciphered (or deciphered): two-key 3DES of one
    little-endian block, the number XOR a tweak of the record's card and account, so that
    equal numbers on different cards do not give equal blocks. Off the hot path (card
    issuance and changes, their replay): the key schedule is set on each call."""
    cdef DES_key_schedule a, b
    cdef uint64_t tweak = (<uint64_t>card << 32) | account
    cdef uint8_t block[8]
    cdef uint8_t out[8]
    cdef uint64_t value = pan if decrypt else pan ^ tweak
    cdef int i
    for i in range(8):
        block[i] = <uint8_t>(value >> (8 * i))
    DES_set_key_unchecked(<const_DES_cblock*>key16, &a)
    DES_set_key_unchecked(<const_DES_cblock*>(key16 + 8), &b)
    DES_ecb3_encrypt(<const_DES_cblock*>block, <DES_cblock*>out, &a, &b, &a,
                     DES_DECRYPT if decrypt else DES_ENCRYPT)
    value = 0
    for i in range(8):
        value |= (<uint64_t>out[i]) << (8 * i)
    return value ^ tweak if decrypt else value


# ---- Python API (tests, terminal simulators, admin) -----------------------------------------

# The algorithm codes are declared in protocols/enums.py (terminals store them, the CLI and the
# tools name them); crypto.pxd holds compile-time copies and must agree.
from onecard.protocols.enums import MAC_ALGORITHM as _DECLARED

_COMPILED = {"MAC_X919": MAC_X919, "MAC_SM4": MAC_SM4}
assert _COMPILED == _DECLARED.symbols(), (_COMPILED, _DECLARED.symbols())
globals().update(_COMPILED)                 # as module attributes, for tests and tools
ALGORITHMS = dict(_DECLARED.value_of)       # name -> code


def _alg(name: str) -> int:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown MAC algorithm {name!r}; expected one of {sorted(ALGORITHMS)}")


def _key(key: bytes) -> bytes:
    if len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(key)}")
    return key


cdef int _set_key(MacKey* k, alg, key) except -1:
    """Install a named algorithm's key (checked) into k, which the caller clears."""
    if mackey_set(k, _alg(alg), _key(key)) != 0:
        raise ValueError(f"cannot install a key for MAC algorithm {alg!r}")
    return 0


def mac(alg: str, key: bytes, data: bytes) -> bytes:
    """8-byte MAC of ``data`` (``alg`` is "x919" or "sm4")."""
    cdef MacKey k
    cdef uint8_t out[8]
    cdef const uint8_t[::1] view = data
    memset(&k, 0, sizeof(MacKey))
    _set_key(&k, alg, key)
    try:
        if mac8(&k, &view[0] if len(data) else ZERO_IV, len(data), out) != 0:
            raise RuntimeError("MAC computation failed")
    finally:
        mackey_clear(&k)
    return out[:8]


def macs(jobs: list[tuple[str, bytes, bytes]]) -> list[bytes]:
    """The MACs of many (algorithm, key, data) at once, computed together as the switch
    computes a batch's (mac_many)."""
    cdef size_t i, count = len(jobs)
    cdef MacKey* keys = <MacKey*>calloc(max(count, 1), sizeof(MacKey))
    cdef MacJob* work = <MacJob*>calloc(max(count, 1), sizeof(MacJob))
    cdef const uint8_t[::1] view
    out = bytearray(8 * count)
    cdef uint8_t* o = <uint8_t*><char*>out
    datas = [bytes(data) for _, _, data in jobs]      # kept alive while the C side reads
    try:
        if keys == NULL or work == NULL:
            raise MemoryError()
        for i in range(count):
            alg, key, _ = jobs[i]
            _set_key(&keys[i], alg, key)
            view = datas[i]
            mac_job(&work[i], &keys[i], &view[0] if len(datas[i]) else ZERO_IV, len(datas[i]),
                    o + 8 * i)
        with nogil:
            mac_many(work, count)
    finally:
        if keys != NULL:
            for i in range(count):
                mackey_clear(&keys[i])
        free(keys)
        free(work)
    return [bytes(out[8 * i:8 * i + 8]) for i in range(count)]


def encrypt_key(alg: str, kek: bytes, key: bytes) -> bytes:
    """Encrypt a 16-byte working key under a 16-byte key-encrypting key (ECB)."""
    cdef uint8_t out[16]
    if wrap_key(_alg(alg), _key(kek), _key(key), out, 0) != 0:
        raise RuntimeError("key encryption failed")
    return out[:16]


def decrypt_key(alg: str, kek: bytes, blob: bytes) -> bytes:
    cdef uint8_t out[16]
    if wrap_key(_alg(alg), _key(kek), _key(blob), out, 1) != 0:
        raise RuntimeError("key decryption failed")
    return out[:16]


def pan_crypt(key: bytes, pan: int, card: int, account: int, decrypt: bool = False) -> int:
    """The journal's CARD_ADMIN card number enciphered (or deciphered) under a 16-byte key
    (the store migration, tools and tests; the core calls pan_cipher)."""
    return pan_cipher(_key(key), pan, card, account, 1 if decrypt else 0)


def key_check_value(alg: str, key: bytes) -> bytes:
    cdef uint8_t out[4]
    if check_value(_alg(alg), _key(key), out) != 0:
        raise RuntimeError("check value failed")
    return out[:4]


def mac_frames(alg: str, key: bytes, data) -> bytes:
    """The 8-byte MAC of every length-prefixed ISO 8583 message in ``data`` (over the MTI up to
    the last 8 bytes, where field 64 goes), concatenated: the MAC work of a batch, done as the
    switch does it (mac_many over up to LANE_JOBS messages at a time)."""
    cdef MacKey k
    cdef Py_buffer view
    cdef const uint8_t* p
    cdef size_t pos = 0, n_out = 0, queued = 0
    cdef uint32_t length
    cdef MacJob jobs[LANE_JOBS]
    out = bytearray(len(data) // 8 + 8)
    cdef uint8_t* o = <uint8_t*><char*>out
    memset(&k, 0, sizeof(MacKey))
    _set_key(&k, alg, key)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>view.buf
        with nogil:
            while <size_t>view.len - pos >= 2:
                length = (<uint32_t>p[pos] << 8) | p[pos + 1]
                if <size_t>view.len - pos - 2 < length or length < 21:
                    break
                mac_job(&jobs[queued], &k, p + pos + 2 + 11, length - 11 - 8, o + n_out)
                queued += 1
                if queued == LANE_JOBS:
                    mac_many(jobs, queued)
                    queued = 0
                n_out += 8
                pos += 2 + length
            mac_many(jobs, queued)
    finally:
        PyBuffer_Release(&view)
        mackey_clear(&k)
    return bytes(out[:n_out])

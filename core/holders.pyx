# cython: language_level=3
"""Holder records opened when read: the sealed holders file stays on disk and a lodging
verification decrypts the one block that holds its record (AES-256-GCM through libcrypto's
EVP, inside the batch, no Python call per message).

The file (``switch/security/holders_file.py`` writes and validates it) is a 64-byte header
then blocks of ``block_records`` records, each ``nonce (12) ‖ ciphertext ‖ tag (16)`` at a
fixed stride, the last one shorter. Every block's associated data is the whole header (format,
record count, block size, the file's random id) and the block's index, so a block cannot be
moved, swapped with another file's or cut short without failing to open.

Decrypted blocks are kept in a 4-way set-associative cache (least recently used out) of at
most ``cache_bytes``, rounded down to whole sets (0, or under 4 blocks: none; a block is then
wiped as soon as its record is copied out). Nothing is decrypted at start: the clear holder
data in the process is the cache, bounded, whatever the number of cards. Blocks
are read with pread, not mapped, so the file's pages count against the page cache and never
against the switch's resident memory.

A vault is used from one thread at a time (the event loop: batches and the admin API).
"""

from libc.errno cimport EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

from posix.unistd cimport close, dup

cdef extern from "unistd.h" nogil:
    ssize_t pread(int fd, void* buf, size_t count, long offset)

from onecard.core.evp cimport (
    EVP_CIPHER_CTX,
    EVP_CIPHER_CTX_ctrl,
    EVP_CIPHER_CTX_free,
    EVP_CIPHER_CTX_new,
    EVP_CTRL_GCM_GET_TAG,
    EVP_CTRL_GCM_SET_TAG,
    EVP_DecryptFinal_ex,
    EVP_DecryptInit_ex,
    EVP_DecryptUpdate,
    EVP_EncryptFinal_ex,
    EVP_EncryptInit_ex,
    EVP_EncryptUpdate,
    EVP_aes_256_gcm,
)

cdef extern from "openssl/crypto.h" nogil:
    void OPENSSL_cleanse(void* ptr, size_t len)

cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char* buf, int num)

RECORD_BYTES = HOLDER_BYTES
NAME_BYTES = HOLDER_NAME_BYTES
HEADER_BYTES = HOLDERS_HEADER_BYTES
BLOCK_RECORDS_MAX = HOLDERS_BLOCK_RECORDS_MAX
SEAL_OVERHEAD_BYTES = GCM_NONCE_BYTES + GCM_TAG_BYTES


class HolderRecordError(Exception):
    """A holder record that could not be read: its block is damaged or the file unreadable."""


cdef inline void put_u64(uint8_t* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (8 * i))


cdef inline int field_len(const uint8_t* p, int cap) noexcept nogil:
    cdef int n = 0
    while n < cap and p[n] != 0:
        n += 1
    return n


cdef EVP_CIPHER_CTX* gcm_context(const uint8_t* key, bint encrypt) noexcept nogil:
    """A context holding the key's schedule: each block then only sets its nonce."""
    cdef EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new()
    cdef int ok
    if ctx == NULL:
        return NULL
    if encrypt:
        ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL)
    else:
        ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL)
    if ok != 1:
        EVP_CIPHER_CTX_free(ctx)
        return NULL
    return ctx


cdef int seal_block(EVP_CIPHER_CTX* ctx, const uint8_t* aad, const uint8_t* plain, int n,
                    uint8_t* out) noexcept nogil:
    """``nonce ‖ ciphertext ‖ tag`` of one block into ``out`` (n + 28 bytes); 0 or -1."""
    cdef int outl = 0
    if RAND_bytes(out, GCM_NONCE_BYTES) != 1:
        return -1
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, out) != 1
            or EVP_EncryptUpdate(ctx, NULL, &outl, aad, HOLDERS_AAD_BYTES) != 1
            or EVP_EncryptUpdate(ctx, out + GCM_NONCE_BYTES, &outl, plain, n) != 1
            or EVP_EncryptFinal_ex(ctx, out + GCM_NONCE_BYTES + n, &outl) != 1):
        return -1
    if EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, GCM_TAG_BYTES,
                           out + GCM_NONCE_BYTES + n) != 1:
        return -1
    return 0


def seal_blocks(const uint8_t[::1] key, const uint8_t[::1] header, const uint8_t[::1] plain,
                uint64_t first_block, uint32_t block_records) -> bytearray:
    """Whole records sealed as blocks ``first_block``, ``first_block + 1``, ... of a file with
    ``header`` (only the last block of a file may hold fewer than ``block_records``)."""
    cdef uint64_t records = plain.shape[0] // HOLDER_BYTES
    cdef uint64_t blocks = (records + block_records - 1) // block_records
    cdef uint64_t b, start, n
    cdef uint8_t aad[HOLDERS_AAD_BYTES]
    cdef EVP_CIPHER_CTX* ctx
    cdef int failed = 0
    if key.shape[0] != 32 or header.shape[0] != HOLDERS_HEADER_BYTES:
        raise ValueError("a 32-byte key and a 64-byte header")
    if plain.shape[0] % HOLDER_BYTES or not 0 < block_records <= HOLDERS_BLOCK_RECORDS_MAX:
        raise ValueError("whole records, 1 to 4096 to a block")
    out = bytearray(plain.shape[0] + blocks * (GCM_NONCE_BYTES + GCM_TAG_BYTES))
    cdef uint8_t[::1] dst = out
    ctx = gcm_context(&key[0], True)
    if ctx == NULL:
        raise MemoryError("AES-256-GCM is not available")
    memcpy(aad, &header[0], HOLDERS_HEADER_BYTES)
    with nogil:
        for b in range(blocks):
            start = b * block_records
            n = min(<uint64_t>block_records, records - start) * HOLDER_BYTES
            put_u64(aad + HOLDERS_HEADER_BYTES, first_block + b)
            if seal_block(ctx, aad, &plain[start * HOLDER_BYTES], <int>n,
                          &dst[start * HOLDER_BYTES + b * (GCM_NONCE_BYTES + GCM_TAG_BYTES)]):
                failed = 1
                break
    EVP_CIPHER_CTX_free(ctx)
    if failed:
        raise MemoryError("sealing a holders block failed (libcrypto)")
    return out


cdef class HolderVault:
    """The sealed holders file, opened a block at a time (see the module's docstring)."""

    def __init__(self, int fd, const uint8_t[::1] key, const uint8_t[::1] header,
                 uint64_t n_records, uint32_t block_records, uint64_t data_offset,
                 uint64_t cache_bytes):
        """``fd`` an open sealed file (duplicated: the caller may close its own), ``header``
        its first 64 bytes as validated by the caller, ``cache_bytes`` the bound on blocks
        kept decrypted (rounded down to whole blocks; 0: none)."""
        if key.shape[0] != 32 or header.shape[0] != HOLDERS_HEADER_BYTES:
            raise ValueError("a 32-byte key and a 64-byte header")
        if not 0 < block_records <= HOLDERS_BLOCK_RECORDS_MAX:
            raise ValueError("1 to 4096 records to a block")
        self.n_records = n_records
        self.block_records = block_records
        self.plain_block = block_records * HOLDER_BYTES
        self.stride = self.plain_block + GCM_NONCE_BYTES + GCM_TAG_BYTES
        self.data_offset = data_offset
        self.slots = <uint32_t>min(cache_bytes // self.plain_block // CACHE_WAYS,
                                   1 << 28) * CACHE_WAYS
        self.last_failed_block = -1
        memcpy(self.aad, &header[0], HOLDERS_HEADER_BYTES)
        self.sealed = <uint8_t*>calloc(self.stride, 1)
        self.plain = <uint8_t*>calloc(self.plain_block, 1)
        if self.slots:
            self.cache = <uint8_t*>calloc(self.slots, self.plain_block)
            self.tags = <uint64_t*>calloc(self.slots, sizeof(uint64_t))
            self.used = <uint64_t*>calloc(self.slots, sizeof(uint64_t))
        if (self.sealed == NULL or self.plain == NULL or (self.slots and (
                self.cache == NULL or self.tags == NULL or self.used == NULL))):
            raise MemoryError()
        self.ctx = gcm_context(&key[0], False)
        if self.ctx == NULL:
            raise MemoryError("AES-256-GCM is not available")
        self.fd = dup(fd)
        if self.fd < 0:
            raise OSError(errno, "cannot duplicate the holders file's descriptor")

    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        if self.cache != NULL:           # no Python method here: the object is going away
            OPENSSL_cleanse(self.cache, <size_t>self.slots * self.plain_block)
        if self.plain != NULL:
            OPENSSL_cleanse(self.plain, self.plain_block)
        if self.ctx != NULL:
            EVP_CIPHER_CTX_free(<EVP_CIPHER_CTX*>self.ctx)
        free(self.sealed)
        free(self.plain)
        free(self.cache)
        free(self.tags)
        free(self.used)
        if self.fd >= 0:
            close(self.fd)

    cdef int record(self, uint64_t account, uint8_t* out) noexcept nogil:
        """Copy account's HOLDER_BYTES record to ``out``: 0, or -1 when its block does not
        open (counted in ``failures``, ``last_error`` says why; ``out`` is then zeroed)."""
        cdef uint64_t block = account // self.block_records
        cdef size_t at = (account % self.block_records) * HOLDER_BYTES
        cdef int64_t slot = -1
        cdef uint8_t* dst = self.plain
        if account >= self.n_records:
            self.last_error = HOLDER_OK
            OPENSSL_cleanse(out, HOLDER_BYTES)
            return -1
        if self.slots:
            slot = self._slot(block)
            dst = self.cache + <size_t>slot * self.plain_block
            self.used[slot] = self.hits + self.misses + 1
            if self.tags[slot] == block + 1:
                self.hits += 1
                memcpy(out, dst + at, HOLDER_BYTES)
                return 0
            self.tags[slot] = 0          # emptied until the new block opened whole
        self.misses += 1
        if self._open_block(block, dst) != 0:
            self.failures += 1
            self.last_failed_block = <int64_t>block
            OPENSSL_cleanse(out, HOLDER_BYTES)
            return -1
        memcpy(out, dst + at, HOLDER_BYTES)
        if slot >= 0:
            self.tags[slot] = block + 1
        else:
            OPENSSL_cleanse(dst, self.plain_block)
        return 0

    cdef int64_t _slot(self, uint64_t block) noexcept nogil:
        """The cache slot of ``block``: the one holding it, else the least recently used of
        its set (CACHE_WAYS slots; direct-mapped sets lost 40% of the hits of a working set
        the cache could hold to collisions)."""
        cdef uint64_t first = (block % (self.slots // CACHE_WAYS)) * CACHE_WAYS
        cdef uint64_t s, victim = first
        for s in range(first, first + CACHE_WAYS):
            if self.tags[s] == block + 1:
                return <int64_t>s
            if self.used[s] < self.used[victim]:
                victim = s
        return <int64_t>victim

    cdef int name_and_id(self, uint64_t account, uint8_t* name, uint8_t* name_len,
                         uint8_t* ident, uint8_t* id_len) noexcept nogil:
        """The record's two fields, each up to its first NUL, into a reply (``name`` takes
        HOLDER_NAME_BYTES, ``ident`` the rest): 0, or -1 as ``record``."""
        cdef uint8_t rec[HOLDER_BYTES]
        if self.record(account, rec) != 0:
            return -1
        name_len[0] = <uint8_t>field_len(rec, HOLDER_NAME_BYTES)
        memcpy(name, rec, name_len[0])
        id_len[0] = <uint8_t>field_len(rec + HOLDER_NAME_BYTES, HOLDER_BYTES - HOLDER_NAME_BYTES)
        memcpy(ident, rec + HOLDER_NAME_BYTES, id_len[0])
        OPENSSL_cleanse(rec, HOLDER_BYTES)
        return 0

    cdef int _open_block(self, uint64_t block, uint8_t* dst) noexcept nogil:
        """Read and decrypt one block into ``dst``; on failure ``dst`` holds nothing clear."""
        cdef uint64_t first = block * self.block_records
        cdef int n = <int>(min(<uint64_t>self.block_records, self.n_records - first)
                           * HOLDER_BYTES)
        cdef size_t want = <size_t>n + GCM_NONCE_BYTES + GCM_TAG_BYTES, got = 0
        cdef ssize_t r
        cdef int outl = 0, ok
        cdef EVP_CIPHER_CTX* ctx = <EVP_CIPHER_CTX*>self.ctx
        while got < want:
            r = pread(self.fd, self.sealed + got, want - got,
                      <long>(self.data_offset + block * self.stride + got))
            if r < 0 and errno == EINTR:
                continue
            if r <= 0:
                OPENSSL_cleanse(dst, self.plain_block)
                self.last_error = HOLDER_READ_FAILED
                return -1
            got += <size_t>r
        put_u64(self.aad + HOLDERS_HEADER_BYTES, block)
        ok = (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, self.sealed) == 1
              and EVP_DecryptUpdate(ctx, NULL, &outl, self.aad, HOLDERS_AAD_BYTES) == 1
              and EVP_DecryptUpdate(ctx, dst, &outl, self.sealed + GCM_NONCE_BYTES, n) == 1
              and EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, GCM_TAG_BYTES,
                                      self.sealed + GCM_NONCE_BYTES + n) == 1
              and EVP_DecryptFinal_ex(ctx, dst + n, &outl) == 1)
        if not ok:
            OPENSSL_cleanse(dst, self.plain_block)   # GCM decrypts before it checks the tag
            self.last_error = HOLDER_NOT_AUTHENTIC
            return -1
        return 0

    def record_bytes(self, uint64_t account) -> bytes:
        """One account's record (raises HolderRecordError if its block does not open)."""
        cdef uint8_t out[HOLDER_BYTES]
        if self.record(account, out) != 0:
            raise HolderRecordError(self.describe_failure())
        raw = (<char*>out)[:HOLDER_BYTES]
        OPENSSL_cleanse(out, HOLDER_BYTES)
        return raw

    def read_many(self, accounts) -> bytearray:
        """The records of ``accounts`` (uint32), in order, as one buffer (a region split, a
        data-key rotation): each block is opened outside the cache, and once for a run of
        accounts in it (ascending accounts open every block once), then wiped."""
        cdef const uint32_t[::1] which = accounts
        out = bytearray(which.shape[0] * HOLDER_BYTES)
        cdef uint8_t[::1] dst = out
        cdef size_t i
        cdef uint64_t block, held = <uint64_t>-1
        cdef int failed = 0
        with nogil:
            for i in range(<size_t>which.shape[0]):
                block = which[i] // self.block_records
                if which[i] >= self.n_records:
                    self.last_error = HOLDER_OK
                    failed = 1
                elif block != held:
                    failed = self._open_block(block, self.plain)
                    held = block
                if failed:
                    self.failures += 1
                    self.last_failed_block = <int64_t>block
                    break
                memcpy(&dst[i * HOLDER_BYTES],
                       self.plain + (which[i] % self.block_records) * HOLDER_BYTES, HOLDER_BYTES)
            OPENSSL_cleanse(self.plain, self.plain_block)
        if failed:
            OPENSSL_cleanse(&dst[0], dst.shape[0])
            raise HolderRecordError(self.describe_failure())
        return out

    def check_block(self, uint64_t block) -> bool:
        """Whether a block opens (read into the scratch block and wiped; not counted, not
        cached): a start checks one to fail early on a wrong key or a changed header."""
        cdef int rc
        if block * self.block_records >= self.n_records:
            return False
        rc = self._open_block(block, self.plain)
        OPENSSL_cleanse(self.plain, self.plain_block)
        return rc == 0

    def describe_failure(self) -> str:
        """The last failure in one line (a block number and a reason, never a record)."""
        why = {HOLDER_READ_FAILED: "could not be read",
               HOLDER_NOT_AUTHENTIC: "does not authenticate (damaged, replaced or moved)"}
        return (f"holders block {self.last_failed_block} "
                f"{why.get(self.last_error, 'is past the end')}")

    def clear_cache(self) -> None:
        """Wipe and forget every decrypted block."""
        cdef uint32_t i
        if self.slots and self.cache != NULL:
            OPENSSL_cleanse(self.cache, <size_t>self.slots * self.plain_block)
            for i in range(self.slots):
                self.tags[i] = 0

    def stats(self) -> dict:
        """Blocks decrypted now (cached), the bound, and the lookups so far."""
        cdef uint32_t i, cached = 0
        for i in range(self.slots):
            cached += self.tags[i] != 0
        return {"records": int(self.n_records), "block_records": int(self.block_records),
                "cache_slots": int(self.slots), "cached_blocks": int(cached),
                "cache_bytes": int(self.slots) * self.plain_block,
                "clear_bytes": int(cached) * self.plain_block,
                # everything the vault allocates: cache, tags, one sealed and one clear block
                "resident_bytes": int(self.slots) * (self.plain_block + 16) + self.stride
                + self.plain_block,
                "hits": int(self.hits), "misses": int(self.misses),
                "failures": int(self.failures)}

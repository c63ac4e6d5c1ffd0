# Holder records (full name, identity number) sealed at rest in blocks and opened one block
# at a time when a lodging terminal verifies a card (core/holders.pyx).
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef enum:
    HOLDER_BYTES = 48            # a holder record: name (30 bytes UTF-8) + identity number (18)
    HOLDER_NAME_BYTES = 30
    HOLDERS_HEADER_BYTES = 64    # the file's header, all of it bound into every block's AAD
    HOLDERS_AAD_BYTES = 72       # header, then the block's index (u64 LE)
    GCM_NONCE_BYTES = 12
    GCM_TAG_BYTES = 16
    HOLDERS_BLOCK_RECORDS_MAX = 4096
    CACHE_WAYS = 4               # slots a block may take in the cache

cpdef enum HolderError:          # HolderVault.last_error: why a block did not open
    HOLDER_OK = 0
    HOLDER_READ_FAILED = 1       # the file gave fewer bytes than the block's (I/O error)
    HOLDER_NOT_AUTHENTIC = 2     # the tag does not match: damaged, replaced or moved

cdef class HolderVault:
    cdef int fd                  # the sealed file (a dup: the vault closes its own)
    cdef void* ctx               # EVP_CIPHER_CTX with the holders key's schedule
    cdef uint8_t aad[HOLDERS_AAD_BYTES]
    cdef uint64_t data_offset
    cdef uint64_t stride         # sealed bytes per full block
    cdef uint32_t plain_block    # plaintext bytes per full block
    cdef uint8_t* sealed         # one sealed block as read
    cdef uint8_t* plain          # one block opened, when there is no cache (wiped after use)
    cdef uint8_t* cache          # [slots][plain_block], sets of CACHE_WAYS by block index
    cdef uint64_t* tags          # block index + 1 held by each slot, 0 empty
    cdef uint64_t* used          # lookups counted when each slot was last used (LRU)
    cdef readonly uint64_t n_records
    cdef readonly uint32_t block_records
    cdef readonly uint32_t slots
    cdef readonly uint64_t hits, misses, failures
    cdef readonly int64_t last_failed_block
    cdef readonly int last_error

    cdef int record(self, uint64_t account, uint8_t* out) noexcept nogil
    cdef int name_and_id(self, uint64_t account, uint8_t* name, uint8_t* name_len,
                         uint8_t* ident, uint8_t* id_len) noexcept nogil
    cdef int64_t _slot(self, uint64_t block) noexcept nogil
    cdef int _open_block(self, uint64_t block, uint8_t* dst) noexcept nogil

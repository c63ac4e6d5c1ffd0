# MACs and key wrapping: the MACs over des_lanes.h and sm4_lanes.h (several MACs at once), key
# wrapping over OpenSSL's libcrypto.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef enum:
    MAC_X919 = 1    # ANSI X9.19 retail MAC, double-length 3DES key
    MAC_SM4 = 2     # CBC-MAC with SM4 (GB/T 15852.1 algorithm 1, padding method 2)
    KEY_BYTES = 16
    MAC_BYTES = 8
    CHECK_VALUE_BYTES = 4

cdef struct MacKey:
    uint8_t alg            # 0 = not set
    uint8_t key[16]
    uint32_t des_k1[32]    # X9.19: left half's subkeys, encryption order (an OcDesKey)
    uint32_t des_k2d[32]   # right half's, decryption order
    uint32_t sm4_rk[32]    # SM4: round keys (an OcSm4Key)

cdef int mackey_set(MacKey* k, int alg, const uint8_t* key16) noexcept nogil
cdef void mackey_clear(MacKey* k) noexcept nogil
cdef struct MacJob:
    MacKey* key
    const uint8_t* data
    size_t n
    uint8_t* out8
    int rc                 # set by mac_many: 0, or -1 when the MacKey holds no key

cdef inline void mac_job(MacJob* job, MacKey* key, const uint8_t* data, size_t n,
                         uint8_t* out8) noexcept nogil:
    job.key = key
    job.data = data
    job.n = n
    job.out8 = out8

cdef int mac8(MacKey* k, const uint8_t* data, size_t n, uint8_t* out8) noexcept nogil
cdef void mac_many(MacJob* jobs, size_t count) noexcept nogil
cdef void mac_many_in(MacJob* jobs, size_t count, uint8_t* base) noexcept nogil
cdef int mac_equal(const uint8_t* a, const uint8_t* b) noexcept nogil
cdef int wrap_key(int alg, const uint8_t* kek16, const uint8_t* key16, uint8_t* out16,
                  int decrypt) noexcept nogil
cdef int check_value(int alg, const uint8_t* key16, uint8_t* out4) noexcept nogil
cdef int random_bytes(uint8_t* out, int n) noexcept nogil
cdef uint64_t pan_cipher(const uint8_t* key16, uint64_t pan, uint32_t card, uint32_t account,
                         int decrypt) noexcept nogil

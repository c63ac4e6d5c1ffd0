# The MessagePack subset the native protocol uses, read and written without Python objects.
from libc.stdint cimport uint8_t, uint32_t, int64_t

cdef struct MpReader:
    const uint8_t* p
    size_t n
    size_t pos

cdef int mp_array(MpReader* r, uint32_t* count) noexcept nogil
cdef int mp_int(MpReader* r, int64_t* v) noexcept nogil
cdef int mp_str(MpReader* r, const uint8_t** s, uint32_t* n) noexcept nogil
cdef int mp_bin(MpReader* r, const uint8_t** s, uint32_t* n) noexcept nogil
cdef int mp_skip(MpReader* r, int depth) noexcept nogil

# Writers return the number of bytes written at p; callers reserve space first.
cdef size_t mp_w_array(uint8_t* p, uint32_t n) noexcept nogil
cdef size_t mp_w_array32(uint8_t* p, uint32_t n) noexcept nogil
cdef size_t mp_w_int(uint8_t* p, int64_t v) noexcept nogil
cdef size_t mp_w_str(uint8_t* p, const char* s, uint32_t n) noexcept nogil
cdef size_t mp_w_bin(uint8_t* p, const uint8_t* s, uint32_t n) noexcept nogil
cdef size_t mp_w_bin32_header(uint8_t* p, uint32_t n) noexcept nogil

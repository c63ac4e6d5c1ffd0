# A compiled hash map from uint64 keys to two int64 values, for state only some cards have
# (today's spending per application, medical annual totals, remote-treatment filings).
from libc.stdint cimport int64_t, uint64_t

cdef struct Entry:
    uint64_t key                 # stored key + 1, 0 = empty
    int64_t a
    int64_t b

cdef class U64Map:
    cdef Entry* slots
    cdef uint64_t cap
    cdef readonly uint64_t size
    cdef readonly uint64_t size_max
    cdef Entry* find(self, uint64_t key) noexcept nogil
    cdef Entry* upsert(self, uint64_t key) noexcept nogil
    cdef int reserve(self, uint64_t key) noexcept nogil
    cdef int _grow(self) noexcept nogil

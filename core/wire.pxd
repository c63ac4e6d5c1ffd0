# Byte order and clocks: small inline helpers every wire module needs (no .pyx: inlined).
from libc.stdint cimport int64_t, uint8_t, uint64_t

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec* ts)
    clockid_t CLOCK_MONOTONIC
    clockid_t CLOCK_REALTIME

cdef inline uint64_t load_be(const uint8_t* p, int width) noexcept nogil:
    """Big-endian unsigned integer of 1 to 8 bytes."""
    cdef uint64_t v = 0
    cdef int i
    for i in range(width):
        v = (v << 8) | p[i]
    return v

cdef inline void store_be(uint8_t* p, uint64_t v, int width) noexcept nogil:
    cdef int i
    for i in range(width):
        p[i] = <uint8_t>(v >> (8 * (width - 1 - i)))

cdef inline uint64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec

cdef inline int64_t realtime_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000

# A growable byte buffer for replies, owned by whoever embeds the struct.
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, realloc

cdef struct OutBuf:
    uint8_t* data
    size_t len
    size_t cap

cdef inline int ob_reserve(OutBuf* b, size_t extra) noexcept nogil:
    """Make room for extra more bytes; -1 when memory ran out (the buffer is unchanged)."""
    cdef size_t cap
    cdef uint8_t* grown
    if b.len + extra <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 65536
    while cap < b.len + extra:
        cap *= 2
    grown = <uint8_t*>realloc(b.data, cap)
    if grown == NULL:
        return -1
    b.data = grown
    b.cap = cap
    return 0

cdef inline void ob_free(OutBuf* b) noexcept nogil:
    free(b.data)
    b.data = NULL
    b.len = 0
    b.cap = 0

# Applying journal records to the state: the one place state changes, live and in recovery.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from onecard.core.journal cimport JRec
from onecard.core.state cimport State

cdef enum:
    APPLY_BAD = -1               # the record does not fit this state (an index out of range)
    APPLY_FULL = -2              # the cards buffer or index is full: reserve, then again
    APPLY_DUPLICATE = -3         # CARD_ADMIN: the new card's number exists
    APPLY_NO_ROOM = -4           # a map or the deny list at its limit, or out of memory

cdef int apply(State st, JRec* r, uint64_t record_no) noexcept nogil
cdef inline uint64_t daily_key(uint32_t account, uint8_t app) noexcept nogil:
    return (<uint64_t>account << 8) | app

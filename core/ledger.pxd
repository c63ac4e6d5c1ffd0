# Applying journal records to the state: the one place state changes, live and in recovery.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

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


cdef inline uint64_t cst_day(int64_t ts_us) noexcept nogil:
    """Days since 2000-01-01 in China time (as Authoriser.today)."""
    return <uint64_t>((ts_us // 1000000 + 8 * 3600) // 86400 - 10957)


cdef inline uint64_t standin_key(int64_t ts_us, uint32_t seq) noexcept nogil:
    """Orders one terminal's stand-in advices: (day stood in, sequence). A terminal's
    sequence numbers rise within a day, and the acquirer stands in for them in that order."""
    return cst_day(ts_us) * (<uint64_t>1 << 32) + seq     # 2^32: the sequences of a day

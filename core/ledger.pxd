# Applying journal records to the state: the one place state changes, live and in recovery.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from onecard.core.journal cimport JRec
from onecard.core.state cimport State

cdef enum:
    CA_NEW = 1                   # CARD_ADMIN: a card issued (replacement or electronic)
    CA_CHANGE = 2                # CARD_ADMIN: status, functions, expiry or region changed
    APPLY_FULL = -2              # the cards buffer or index is full: reserve, then again

cdef int apply(State st, JRec* r, uint64_t record_no) noexcept nogil
cdef inline uint64_t daily_key(uint32_t account, uint8_t app) noexcept nogil:
    return (<uint64_t>account << 8) | app

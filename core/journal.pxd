# Journal records: fixed 80-byte after-images, the unit of durability and of recovery.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef enum:
    NONE32 = 0xffffffff
    JREC_BYTES = 80
    KIND_VOID_REVERSAL = 20      # record kind only: a reversal that undid a void
    JF_DENY_SET = 0x40           # flags: the account goes onto the transit deny list
    JF_DENY_CLEAR = 0x80         # flags: the account comes off it

cdef struct JRec:
    int64_t ts_us           # server time of the decision
    int64_t amount_fen      # money moved by this record (debit or credit, always >= 0)
    int64_t balance_fen     # financial balance of the account after this record
    uint64_t a              # kind-specific after-images (see journal.pyx)
    uint64_t b
    uint64_t d
    uint32_t terminal       # terminal index (NONE32 for an operator's change)
    uint32_t seq            # STAN (ISO 8583) or sequence number (native)
    uint32_t card           # card index or NONE32
    uint32_t account        # account index or NONE32
    uint32_t c
    uint32_t e
    uint8_t kind
    uint8_t app             # catalogue application
    uint8_t rc              # index into protocols.codes.CODES
    uint8_t flags           # ring flags after this record, and JF_* bits
    uint32_t f

cdef class Journal:
    cdef JRec* recs
    cdef size_t n
    cdef size_t cap
    cdef readonly uint64_t next_no      # number the next appended record gets
    cdef readonly size_t max_pending
    cdef JRec* append(self) noexcept nogil

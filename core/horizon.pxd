# The day-long idempotency horizon behind the terminals' rings (core/horizon.pyx).
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    HORIZON_GENS_MAX = 8         # settlement dates held at most (idempotency_days + 1)
    FILED_ENTRY_WORDS = 5        # a RingEntry (core/state.pxd) is 40 bytes: checked there
    PAGE_SHIFT = 4
    PAGE_SLOTS = 16              # consecutive numbers of one terminal a page holds

cdef struct Filed:               # 48 bytes: one request as a checkpoint segment holds it
    uint64_t entry[5]            # the RingEntry as the ring held it
    uint32_t terminal
    uint32_t seq

cdef struct Page:                # 656 bytes: numbers base*16 .. base*16+15 of one terminal
    uint64_t entry[80]           # PAGE_SLOTS RingEntries
    uint32_t terminal
    uint32_t base                # seq >> PAGE_SHIFT
    uint16_t valid               # slots holding a request
    uint16_t saved               # slots a checkpoint written holds (confirm)
    uint16_t exported            # slots the last checkpoint taken holds (export)
    uint8_t listed               # in its date's list of pages not wholly saved
    uint8_t pad

cdef struct TermDay:             # 16 bytes: one terminal on one date
    uint32_t cur                 # its page filed last + 1, 0 = none
    uint32_t hi                  # the highest seq filed, 0 = none
    uint32_t last                # the seq filed last + 1, 0 = none
    uint32_t pad

cdef struct Gen:                 # the requests filed during one settlement date
    Page* pages                  # in the order they were opened
    uint32_t* index              # page + 1 by (terminal, base), 0 = empty; load <= 1/2
    TermDay* term                # per terminal
    uint32_t* listed             # pages with slots no written checkpoint holds
    uint64_t n_pages
    uint64_t n_listed
    uint64_t cap                 # pages (and list entries) allocated
    uint64_t icap
    uint64_t rows
    uint32_t day                 # settlement date (days since 2000-01-01)

cdef class Horizon:
    cdef Gen gens[8]             # gens[0] the newest
    cdef readonly uint32_t n_gens
    cdef readonly uint32_t days
    cdef readonly uint64_t rows, rows_max, pages_max
    cdef public int cutover_s    # 日切, seconds after midnight China time
    cdef uint64_t* dropped       # per terminal: the newest seq forgotten + 1, 0 = none
    cdef readonly uint32_t n_terminals
    cdef readonly uint64_t exports   # checkpoints taken: a confirm is for the newest only

    cdef uint64_t* find(self, uint32_t terminal, uint32_t seq) noexcept nogil
    cdef void drop_oldest(self, Gen* keep) noexcept nogil
    cdef int open_gen(self, uint32_t day, uint64_t cap) noexcept nogil
    cdef int gen_of(self, uint32_t day) noexcept nogil
    cdef int reserve(self, uint32_t day) noexcept nogil
    cdef void file(self, uint32_t terminal, uint32_t seq, const uint64_t* entry) noexcept nogil
    cdef bint forgot(self, uint32_t terminal, uint32_t seq, uint64_t modulus) noexcept nogil
    cdef uint32_t day_of(self, int64_t ts_us) noexcept nogil

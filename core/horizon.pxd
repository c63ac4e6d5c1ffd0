# The day-long idempotency horizon behind the terminals' rings (core/horizon.pyx).
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef enum:
    HORIZON_GENS_MAX = 8         # settlement dates held at most (idempotency_days + 1)
    FILED_ENTRY_WORDS = 5        # a RingEntry (core/state.pxd) is 40 bytes: checked there

cdef struct Filed:               # 48 bytes: one request the ring forgot
    uint64_t entry[5]            # the RingEntry as the ring held it
    uint32_t terminal
    uint32_t seq

cdef struct Gen:                 # the requests filed during one settlement date
    Filed* rows                  # in filing order
    uint32_t* index              # row position + 1, 0 = empty; a power of two, load <= 1/2
    uint32_t* hi                 # per terminal: the highest seq filed on this date, 0 = none
    uint64_t n
    uint64_t saved               # rows below it are in a checkpoint written (confirm)
    uint64_t exported            # rows below it are in a checkpoint taken (export)
    uint64_t cap
    uint64_t icap
    uint32_t day                 # settlement date (days since 2000-01-01)

cdef class Horizon:
    cdef Gen gens[8]             # gens[0] the newest
    cdef readonly uint32_t n_gens
    cdef readonly uint32_t days
    cdef readonly uint64_t rows, rows_max
    cdef public int cutover_s    # 日切, seconds after midnight China time
    cdef uint64_t* dropped       # per terminal: the newest seq forgotten + 1, 0 = none
    cdef readonly uint32_t n_terminals
    # Rows a checkpoint holds that changed since (day << 32 | row), for the next checkpoint's
    # segment; ``dirty_base`` counts those confirmed and let go, ``epoch`` the overflows.
    cdef uint64_t* dirty
    cdef uint64_t n_dirty, dirty_cap, dirty_base
    cdef readonly uint64_t epoch

    cdef uint64_t* find(self, uint32_t terminal, uint32_t seq) noexcept nogil
    cdef void drop_oldest(self) noexcept nogil
    cdef void changed(self, uint32_t g, uint64_t row) noexcept nogil
    cdef int open_gen(self, uint32_t day, uint64_t cap) noexcept nogil
    cdef int gen_of(self, uint32_t day) noexcept nogil
    cdef int reserve(self, uint32_t day) noexcept nogil
    cdef void file(self, uint32_t terminal, uint32_t seq, const uint64_t* entry) noexcept nogil
    cdef bint forgot(self, uint32_t terminal, uint32_t seq, uint64_t modulus) noexcept nogil
    cdef uint32_t day_of(self, int64_t ts_us) noexcept nogil

# The rules of SPEC §4, shared by both protocols: one request in, one decision out.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from onecard.core.journal cimport JRec, Journal
from onecard.core.state cimport Account, Region, State

cdef struct Txn:                 # a decoded request, whatever protocol it came in
    uint64_t pan
    int64_t amount_fen
    uint32_t terminal            # index, already known, MAC-checked and permitted
    uint32_t seq
    uint32_t station_id
    uint32_t time_s
    uint32_t proc_code
    uint16_t currency            # ISO 4217 numeric, 0 = not given
    uint8_t kind
    uint8_t proto
    uint8_t direction

cdef struct Res:                 # the decision and what the reply needs
    int64_t amount_fen           # amount debited or credited (fare for taps)
    int64_t balance_fen
    uint64_t record_no           # journal record (RRN and auth code derive from it)
    uint32_t card                # card index or NONE32
    uint8_t rc
    uint8_t duplicate            # answered from the terminal's ring, nothing applied
    uint8_t age_band
    uint8_t name_len             # bytes in name
    uint8_t name[40]             # masked name, UTF-8
    uint8_t keys[40]             # sign-on: PIN key, check value, MAC key, check value

cdef class Authoriser:
    cdef readonly State state
    cdef readonly Journal journal
    cdef public int64_t daily_limit_fen
    cdef public int64_t max_amount_fen
    cdef int64_t now_us
    cdef uint32_t now_s
    cdef uint16_t today
    cdef uint16_t today_yymm
    cdef int today_y, today_m, today_d

    cdef void begin(self, int64_t now_us) noexcept nogil
    cdef void authorise(self, Txn* t, Res* r) noexcept nogil
    cdef int age(self, uint16_t birth_day) noexcept nogil
    cdef int64_t card_checks(self, Txn* t, int64_t idx, Res* r, uint8_t need_fn,
                             int app) noexcept nogil
    cdef bint duplicate(self, Txn* t, int64_t idx, Res* r) noexcept nogil
    cdef JRec* record(self, Txn* t, Res* r, int64_t idx) noexcept nogil
    cdef void commit(self, JRec* j, Res* r) noexcept nogil
    cdef int32_t spent_today(self, Account* a) noexcept nogil
    cdef int32_t concession(self, int32_t fare_fen, Account* a, Region* reg) noexcept nogil
    cdef void purchase(self, Txn* t, Res* r) noexcept nogil
    cdef void balance(self, Txn* t, Res* r) noexcept nogil
    cdef void reversal(self, Txn* t, Res* r) noexcept nogil
    cdef void tap(self, Txn* t, Res* r) noexcept nogil
    cdef void verify(self, Txn* t, Res* r) noexcept nogil
    cdef void signon(self, Txn* t, Res* r) noexcept nogil

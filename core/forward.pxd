# Forwarding to other regions' switches: which requests leave, and their answers coming back.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.journal cimport JForwarded
from onecard.core.maps cimport U64Map
from onecard.core.state cimport State

cdef enum:
    PROVINCE_CODES = 100         # two-digit province codes of card numbers
    DEST_MAX = 32                # peer regions + 1 (0: here)
    N_ORIGINS = 4                # protocols/forward.py ORIGINS + 1
    ROUTE_LOCAL = 0              # decide here (a local card, or one nobody else owns)
    ROUTE_ANSWERED = 1           # the issuer's answer is in Res (and journaled here)
    ROUTE_FORWARD = 2            # the issuer must decide: stop before this frame
    MODE_CONSUME = 0             # answering: take the answer in order, or collect and stop
    MODE_PEEK = 1                # a native frame's pre-pass: is every answer there?
    MODE_COLLECT = 2             # stopped: queue the request for its issuer, answer nothing
    NO_PROVINCE = 0xFF           # a province code the region table does not hold

cdef struct FwdReq:              # protocols/forward.py REQUEST
    uint64_t tid
    Txn txn

cdef struct FwdAns:              # protocols/forward.py ANSWER
    int64_t amount_fen
    int64_t balance_fen
    int64_t x[4]
    uint64_t record_no
    uint64_t tid
    uint32_t seq
    uint32_t region_code
    uint8_t rc
    uint8_t duplicate
    uint8_t age_band
    uint8_t name_len
    uint8_t id_len
    uint8_t entitlement
    uint8_t settle_result
    uint8_t origin
    uint8_t name[64]
    uint8_t id_number[20]
    uint8_t flags
    uint8_t kind
    uint8_t recorded
    uint8_t undelivered

cdef class Router:
    cdef Authoriser auth
    cdef State st
    cdef readonly bint enabled
    cdef public int mode         # MODE_*: the paths' state within one process() call
    cdef uint8_t dest[100]       # per province code: 0 here, k the k-th peer region
    cdef uint8_t forwardable[32]
    cdef FwdReq* reqs            # collected by the last process() call, in buffer order
    cdef uint8_t* req_dest
    cdef size_t n_reqs
    cdef size_t cap
    cdef FwdAns* ans             # installed before the next process() call, in the same order
    cdef size_t n_ans
    cdef size_t ans_cap
    cdef size_t cursor
    cdef size_t peek
    cdef readonly object counts  # uint64[province, origin]: forwarded requests answered
    cdef uint64_t* counts_p
    cdef int64_t per_txn_fen[100]  # stand-in limits the issuer of each province published
    cdef int64_t per_day_fen[100]  # (0: no stand-in)
    cdef uint8_t prov_index[100]   # province code -> the catalogue's province index
    cdef readonly U64Map blocked  # other regions' cards unusable: pan -> status, deny-listed
    cdef int64_t n_blocked       # of them, not active or deny-listed
    cdef FwdReq* adv             # stand-in advices of the last process() call, in order
    cdef uint8_t* adv_dest
    cdef size_t n_adv
    cdef size_t adv_cap
    cdef bint stand_in(self, Txn* t, Res* r, uint8_t province, uint8_t d) noexcept nogil
    cdef uint8_t refusal(self, Txn* t, uint8_t province) noexcept nogil
    cdef bint stood_in(self, Txn* t, Res* r, uint8_t province, int64_t fen) noexcept nogil
    cdef JForwarded* forwarded(self, Txn* t, uint8_t province, uint8_t origin,
                               uint8_t rc) noexcept nogil
    cdef bint journaled(self, JForwarded* f) noexcept nogil
    cdef bint advice_room(self) noexcept nogil
    cdef void advise(self, Txn* t, uint64_t tid, int64_t fen, uint8_t d) noexcept nogil
    cdef bint post_advice(self, Txn* t, FwdAns* a) noexcept nogil
    cdef bint stood_in_before(self, Txn* t) noexcept nogil
    cdef int route(self, Txn* t, Res* r) noexcept nogil
    cdef void begin_frame(self) noexcept nogil
    cdef void acquired(self, Txn* t, Res* r, FwdAns* a, uint8_t d,
                       uint8_t province) noexcept nogil
    cdef bint collect(self, Txn* t, uint64_t tid, uint8_t d) noexcept nogil
    cdef void serve_one(self, uint64_t tid, Txn* t, Res* r, FwdAns* a) noexcept nogil

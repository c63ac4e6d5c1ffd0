# The rules of SPEC §4 shared by every transaction family: one request in, one decision out.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from onecard.core.journal cimport JF_STAND_IN, JRec, Journal
from onecard.core.state cimport Account, Policy, Region, State, ring_asked

cdef enum:
    FX_RATES_MAX = 8
    CNY = 156                    # ISO 4217: what an amount without a currency is in
    ADVICE_STAND_IN = 2          # Txn.offline of another region's stand-in advice

cdef struct Txn:                 # a decoded request, whatever protocol it came in
    uint64_t pan
    int64_t amount_fen           # as asked, in minor units of `currency`
    # settlement: debit total, debit count, credit total, count;
    # medical totals: pool, personal, cash, settlements
    int64_t x[4]
    uint32_t terminal            # index, already known, MAC-checked and permitted
    uint32_t seq
    uint32_t station_id
    uint32_t time_s
    uint32_t proc_code
    # void, its reversal, medical refund: the original's seq; medical totals: the refunds
    uint32_t orig_seq
    uint32_t batch_no            # settlement; medical totals: the date (days since 2000)
    uint16_t currency            # ISO 4217 numeric, 0 = not given
    uint8_t kind
    uint8_t proto
    uint8_t direction
    uint8_t offline              # 1 an offline upload or reversal advice, ADVICE_STAND_IN

cdef struct Res:                 # the decision and what the reply needs
    int64_t amount_fen           # charged or credited (fare, fee, cash share, purchase)
    int64_t balance_fen
    # medical: pool, personal, cash, medical account after;
    # settlement: debit total, count, credit total, count
    int64_t x[4]
    uint64_t record_no           # journal record (RRN and auth code derive from it)
    uint32_t card                # card index or NONE32
    uint32_t region_code         # verification: the card's issuing region
    uint8_t rc
    uint8_t duplicate            # answered from the terminal's ring, nothing applied
    uint8_t age_band
    uint8_t name_len             # bytes in name
    uint8_t id_len
    uint8_t entitlement          # venue: rule that set the price, 1-based, 0 none
    uint8_t settle_result        # 1 balanced, 2 not balanced (medical totals: 0 not compared)
    uint8_t recorded             # record_no names a journal record (they count from 0)
    uint8_t name[64]             # masked (or, for lodging terminals, full) name, UTF-8
    uint8_t id_number[20]        # lodging terminals only
    uint8_t keys[40]             # sign-on: PIN key, check value, MAC key, check value

cdef inline uint16_t currency_or_cny(Txn* t) noexcept nogil:
    return t.currency if t.currency else CNY


cdef inline int64_t asked(Txn* t) noexcept nogil:
    """The amount as the terminal asked it, currency included: what a retransmission, a void
    or a reversal must match in the terminal's ring."""
    return ring_asked(currency_or_cny(t), t.amount_fen)


cdef class Authoriser:
    cdef readonly State state
    cdef readonly Journal journal
    cdef public int64_t daily_limit_fen
    cdef public int64_t amount_fen_max
    cdef public int64_t topup_fen_max
    cdef int64_t now_us
    cdef uint32_t now_s
    cdef uint16_t today
    cdef uint16_t today_yymm
    cdef int today_y, today_m, today_d, weekday, hour
    cdef public int cutover_s            # 日切, seconds after midnight China time
    cdef readonly uint16_t settle_day    # settlement date now (days since 2000-01-01)
    cdef int settle_m, settle_d
    cdef uint16_t fx_currency[8]
    cdef int64_t fx_rate[8]              # fen per 100 units of the currency (100.00 HKD)
    cdef int n_fx

    cdef void begin(self, int64_t now_us) noexcept nogil
    cdef int age(self, uint16_t birth_day) noexcept nogil
    cdef int64_t card_checks(self, Txn* t, int64_t idx, Res* r) noexcept nogil
    cdef bint duplicate(self, Txn* t, int64_t idx, Res* r) noexcept nogil
    cdef JRec* record(self, Txn* t, Res* r, int64_t idx) noexcept nogil
    cdef void commit(self, JRec* j, Res* r) noexcept nogil
    cdef void decline_unapplied(self, JRec* j, Res* r) noexcept nogil
    cdef int32_t spent_today(self, Account* a) noexcept nogil
    cdef int32_t app_spent_today(self, uint32_t account, uint16_t app) noexcept nogil
    cdef int price_pct(self, Policy* p, Account* a, int* entitlement) noexcept nogil
    cdef int32_t concession(self, int32_t fare_fen, Account* a, Region* reg) noexcept nogil
    cdef int64_t to_fen(self, int64_t amount, uint16_t currency) noexcept nogil
    cdef void signon(self, Txn* t, Res* r) noexcept nogil


cdef inline void stand_in_posting(JRec* j, Txn* t) noexcept nogil:
    """The issuer's record of another region's stand-in advice: flagged (it stays out of the
    terminal's ring, core/ledger.pyx) and dated when the acquirer stood in, which orders the
    terminal's advices (ledger.standin_key)."""
    j.head.flags |= JF_STAND_IN
    if t.time_s:
        j.head.ts_us = <int64_t>t.time_s * 1000000

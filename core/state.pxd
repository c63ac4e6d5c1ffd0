# Card, account and terminal state: numpy structured arrays viewed as C structs.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from onecard.core.crypto cimport MacKey
from onecard.core.holders cimport HolderVault
from onecard.core.horizon cimport Horizon
from onecard.core.maps cimport Entry, U64Map

# Transaction kinds: metrics "type", journal, permissions; as protocols/journal.py KINDS
# (checked when core/journal is imported).
cpdef enum Kind:
    KIND_NONE = 0
    KIND_SIGNON = 1
    KIND_ECHO = 2
    KIND_PURCHASE = 3
    KIND_BALANCE = 4
    KIND_REVERSAL = 5
    KIND_TAP = 6
    KIND_VERIFY = 7
    KIND_HEARTBEAT = 8
    KIND_FORMAT = 9              # a request that could not be decoded
    KIND_OTHER = 10              # decoded, but not a transaction onecard offers
    KIND_VOID = 11               # 撤销: a same-day purchase undone
    KIND_SETTLE = 12             # 0500: batch totals compared
    KIND_OFFLINE_TAP = 13        # a tap a gate recorded offline, uploaded later
    KIND_DENY_SYNC = 14          # a gate fetching deny-list changes
    KIND_MEDICAL = 15            # medical settlement
    KIND_MEDICAL_REFUND = 16
    KIND_VENUE = 17              # venue entry (museum, library, scenic spot, sports venue)
    KIND_CREDIT = 18             # top-up or disbursement credited by an operator
    KIND_CARD_ADMIN = 19         # card issued or its status changed by an operator
    KIND_VOID_REVERSAL = 20      # journal only: a reversal (0400) that undid a void
    KIND_TOPUP = 21              # cash paid in at a kiosk
    KIND_FORWARDED = 22          # journal only: the acquirer's side of another region's card
    KIND_FOREIGN_DENY = 23       # journal only: another region's card onto or off the deny list
    KIND_BATCH_UPLOAD = 24       # 0320: a transaction of an unbalanced batch, as the POS has it
    KIND_ADJUSTMENT = 25         # journal only: 差错调整 of a clearing exception by an operator
    KIND_MEDICAL_TOTALS = 26     # a medical institution's daily totals (3201-style)
    N_KINDS = 32

cpdef enum Proto:
    PROTO_ISO8583 = 0
    PROTO_NATIVE = 1
    N_PROTOS = 2

cpdef enum TerminalKind:
    TERM_POS = 1
    TERM_METRO_GATE = 2
    TERM_BUS_READER = 3
    TERM_FERRY_READER = 4
    TERM_VERIFIER = 5            # identity verification (hotels, counters)
    TERM_VENUE = 6               # museum, library, scenic spot, sports venue gates
    TERM_MEDICAL = 7             # hospital and pharmacy settlement terminals
    TERM_KIOSK = 8               # top-up machines at stations and service halls (圈存)

cpdef enum DataScope:            # what identity verification may return to a terminal
    SCOPE_DEFAULT = 0            # masked name, age band, issuing region
    SCOPE_LODGING = 1            # full name and identity number (hotel registration)

cpdef enum CardStatus:
    CARD_ACTIVE = 0
    CARD_LOST = 1
    CARD_FROZEN = 2
    CARD_CANCELLED = 3
    CARD_REPLACED = 4

cpdef enum Function:
    FN_FINANCIAL = 1
    FN_TRANSPORT = 2
    FN_MEDICAL = 4
    FN_ECARD = 8                 # an electronic card (QR code), not a chip card

cpdef enum HolderFlag:
    HOLDER_DISABLED = 1
    HOLDER_HMT = 2               # Hong Kong, Macao or Taiwan resident
    HOLDER_DENIED = 4            # on the transit deny list (negative balance)

cpdef enum OperatorKind:
    OP_METRO = 1
    OP_BUS = 2
    OP_FERRY = 3

cpdef enum RingFlag:
    RING_APPROVED = 1            # the original was approved
    RING_REVERSED = 2            # a reversal has been applied to this slot
    RING_NO_ORIGINAL = 4         # reversal arrived for a STAN never seen
    RING_VOIDED = 8              # the purchase in this slot was voided

cpdef enum RuleKind:             # price rules of canteen and venue policies
    RULE_NONE = 0
    RULE_ALL = 1                 # everyone (with the rule's time window)
    RULE_AGE_GE = 2              # holders of at least `param` years
    RULE_DISABLED = 3
    RULE_GROUP_RESIDENT = 4      # holders insured in region group `param` (1 YRD, 2 JJJ, 3 GBA)
    RULE_PROVINCE_RESIDENT = 5   # holders insured in province index `param`

cdef enum:
    PROVINCES_MAX = 64
    APPS_MAX = 256
    RULES_MAX = 6
    DENY_LOG_MAX = 0x7fffffff    # deny-list changes (versions are positive int32)

cpdef enum DenyEntry:            # a deny-log entry's bits (a checkpoint array)
    DENY_REMOVED = 0x80000000    # the card came off the list
    DENY_FOREIGN = 0x40000000    # another region's card: the index is into foreign_pan
    DENY_INDEX = 0x3fffffff      # the card's index (cards are fewer than 2^30)

cdef struct Card:                # 24 bytes
    uint64_t pan
    uint32_t account
    uint32_t trip_time_s         # tap-in time of the open metro trip
    uint16_t region              # issuing region (index into regions)
    uint16_t expiry_yymm
    uint16_t trip_station        # station index + 1 of the open trip, 0 = none
    uint8_t status
    uint8_t functions

cdef struct Account:             # 32 bytes: the holder and their accounts
    int64_t balance_fen          # financial account
    int32_t medical_fen          # personal medical account
    int32_t daily_spent_fen
    uint16_t daily_day           # day (since 2000-01-01, China time) daily_spent_fen is for
    uint16_t birth_day           # days since 1900-01-01
    uint16_t surname             # index into surnames
    uint16_t region              # insuring region (index into regions)
    uint8_t name_len             # characters in the full name
    uint8_t flags
    uint16_t last_ride_region    # for transfer discounts
    uint32_t last_ride_s

cdef struct Terminal:            # 104 bytes
    uint64_t tid                 # field 41, 8 ASCII bytes read big-endian
    int64_t debit_fen            # open batch totals (settlement, 0500)
    int64_t credit_fen
    uint32_t region
    uint32_t operator            # transit operator index (gates, readers)
    uint32_t permitted           # bit per Kind
    uint32_t offline_hw          # highest offline-upload sequence applied
    uint32_t batch_no
    uint32_t debit_count
    uint32_t credit_count
    uint16_t app                 # the catalogue application this terminal offers
    uint16_t policy              # price policy (canteen meal tiers, venue entitlements), 0 none
    uint8_t kind
    uint8_t protocol
    uint8_t mac_alg
    uint8_t signed_on
    uint8_t scope                # DataScope
    uint8_t upload_open          # the last 0500 was not balanced: its batch may be uploaded
    uint16_t session_day         # settlement date of the sign-on (days since 2000), 0 unknown
    uint8_t tmk[16]              # terminal master key
    uint8_t mak[16]              # working MAC key (valid when signed_on)
    uint8_t merchant[16]         # field 42, 15 characters

cdef struct RingEntry:           # 40 bytes: the last transactions of a terminal, by sequence
    int64_t amount_fen           # as requested (purchases, voids: currency << 48 | amount)
    int64_t balance_fen          # after (purchases: the day made; voids: the purchase STAN)
    uint64_t record_no
    uint32_t seq
    uint32_t card
    uint8_t kind
    uint8_t flags
    uint8_t rc
    uint8_t aux
    uint32_t extra               # purchases: amount charged; taps: station id

cdef struct Region:              # 24 bytes
    uint32_t code                # 6-digit administrative division code
    uint8_t province             # index into the province list
    uint8_t group                # region group index (0 = none)
    uint8_t elderly_age          # transit policy: concession from this age (0 = none)
    uint8_t elderly_pct          # percent of the fare paid (0 = free)
    uint8_t disabled_pct
    uint8_t transfer_minutes     # transfer discount window (0 = none)
    uint16_t transfer_discount_fen
    int32_t med_deductible_fen   # medical insurance policy of this insuring region
    int32_t med_cap_fen          # pooled fund's annual cap per insured person
    uint8_t med_ratio_pct        # share of the bill above the deductible the pool pays
    uint8_t pad[3]

cdef struct App:                 # 8 bytes: a catalogue application
    uint8_t functions            # card functions it needs
    uint8_t active               # 0 once retired
    uint16_t pad
    int32_t daily_limit_fen      # per card per day, 0 = none

cdef struct Rule:                # 8 bytes
    uint8_t kind                 # RuleKind
    uint8_t param
    uint8_t pct                  # percent of the price paid (0 = free)
    uint8_t hour_from            # local time window [from, to), 0..24
    uint8_t hour_to
    uint8_t weekdays             # bit 0 = Monday
    uint16_t pad

cdef struct Policy:              # 56 bytes
    int32_t base_fen             # venue entry price (canteen policies discount the amount)
    uint8_t n_rules
    uint8_t pad[3]
    Rule rules[6]

cdef struct Operator:            # 24 bytes
    uint8_t kind
    uint8_t pad
    uint16_t region
    uint32_t first_station
    uint32_t n_stations
    uint32_t fare_off            # offset into fares (n_stations x n_stations, fen)
    int32_t flat_fare_fen        # bus / ferry, and the minimum to enter a metro
    int32_t fare_fen_max         # charged for a trip with a missing tap

cdef struct Station:
    uint32_t id
    uint32_t operator
    uint32_t local               # position in the operator's fare matrix

cdef class State:
    cdef readonly object accounts, terminals, ring, regions, operators, stations, fares
    cdef readonly object apps, accept, policies, surnames, card_slots, terminal_slots
    cdef readonly HolderVault holders   # sealed holder records, opened when read; may be None
    cdef object _cards_store             # cards live in a larger buffer so new cards fit
    cdef readonly U64Map daily_app       # (account, app) -> day, spent today
    cdef readonly U64Map medical_year    # account -> year, deductible used, pool paid
    cdef readonly U64Map filings         # account -> mask of provinces with a filing
    cdef readonly U64Map standin         # acquirer: foreign card -> day, fen stood in that day
    cdef readonly U64Map standin_posted  # issuer: terminal -> latest stand-in advice posted
    cdef readonly U64Map foreign_deny    # another region's card -> foreign index, listed
    cdef readonly U64Map foreign_pan     # foreign index -> that card's number (deny-list sync)
    cdef readonly Horizon horizon        # what the rings forgot, for idempotency_days dates
    cdef Card* card
    cdef Account* acct
    cdef Terminal* term
    cdef RingEntry* rng
    cdef Region* region
    cdef Operator* op
    cdef Station* stn
    cdef int32_t* fare
    cdef App* app
    cdef uint64_t* accept_mask   # [APPS_MAX][PROVINCES_MAX] -> mask of accepted card provinces
    cdef Policy* policy
    cdef uint8_t* surname        # [n][8] UTF-8
    cdef uint32_t* cslot
    cdef uint64_t ccap
    cdef uint32_t cmask          # slot bits holding position + 1 (the rest: a hash tag)
    cdef uint32_t* tslot
    cdef uint64_t tcap
    cdef uint32_t tmask
    cdef MacKey* mac_keys
    cdef uint8_t journal_key[16]  # enciphers CARD_ADMIN card numbers (set_journal_key)
    cdef bint journal_keyed
    cdef uint32_t* deny_log      # DENY_* bits and a card index; version = position + 1
    cdef readonly uint32_t deny_version
    cdef uint32_t deny_cap
    cdef readonly uint32_t n_cards, n_accounts, n_terminals, n_stations, n_regions, n_surnames
    cdef readonly uint32_t n_apps, n_policies
    cdef readonly uint32_t ring_size
    cdef uint32_t ring_mask
    cdef uint64_t _capacity_cached

    cdef _bind(self)
    cdef _install_key(self, uint32_t t)
    cdef int64_t find_card(self, uint64_t pan) noexcept nogil
    cdef void prefetch(self, uint64_t pan, int stage) noexcept nogil
    cdef int64_t find_terminal(self, uint64_t tid) noexcept nogil
    cdef int64_t find_station(self, uint32_t station_id) noexcept nogil
    cdef RingEntry* slot(self, uint32_t terminal, uint32_t seq) noexcept nogil
    cdef RingEntry* seen(self, uint32_t terminal, uint32_t seq) noexcept nogil
    cdef int64_t add_card(self, uint64_t pan, uint32_t account) noexcept nogil
    cdef int deny(self, uint32_t card, bint removed) noexcept nogil
    cdef uint64_t deny_pan(self, uint32_t entry) noexcept nogil
    cdef int deny_reserve(self, uint32_t entries) noexcept nogil


# ---- packed ring slots and map entries ---------------------------------------------------------
# Some ring slots and map entries keep two values in one field (their layouts are part of the
# checkpoint format): they are packed and unpacked here and nowhere else.

cdef inline bint holds(RingEntry* e, uint32_t seq) noexcept nogil:
    """Whether a ring slot or horizon entry (State.slot, State.seen) is the request ``seq``."""
    return e.kind != KIND_NONE and e.seq == seq


cdef inline int64_t ring_asked(uint16_t currency, int64_t minor) noexcept nogil:
    """A purchase's or void's slot amount: as asked, with its currency, so that a
    retransmission, void or reversal of HKD 100.00 never matches CNY 100.00."""
    return <int64_t>((<uint64_t>currency << 48) | <uint64_t>minor)


cdef inline int64_t ring_medical_amount(int64_t deductible_fen, int64_t bill_fen) noexcept nogil:
    return <int64_t>((<uint64_t>deductible_fen << 32) | <uint32_t>bill_fen)


cdef inline int64_t ring_medical_bill(RingEntry* e) noexcept nogil:
    return e.amount_fen & <int64_t>0xffffffff


cdef inline int64_t ring_medical_deductible(RingEntry* e) noexcept nogil:
    return e.amount_fen >> 32


cdef inline int64_t ring_medical_balance(uint32_t orig_seq, int64_t cash_fen) noexcept nogil:
    """A settlement's slot balance: its cash share; a refund's: the refunded seq too."""
    return <int64_t>((<uint64_t>orig_seq << 32) | <uint32_t>cash_fen)


cdef inline int64_t ring_medical_cash(RingEntry* e) noexcept nogil:
    return e.balance_fen & <int64_t>0xffffffff


cdef inline uint32_t ring_medical_orig_seq(RingEntry* e) noexcept nogil:
    return <uint32_t>(e.balance_fen >> 32)


cdef inline uint32_t ring_settle_counts(uint32_t debits, uint32_t credits) noexcept nogil:
    return (debits & 0xffff) | (credits << 16)


cdef inline uint32_t ring_settle_debits(RingEntry* e) noexcept nogil:
    return e.extra & 0xffff


cdef inline uint32_t ring_settle_credits(RingEntry* e) noexcept nogil:
    return e.extra >> 16


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    """SplitMix64's finaliser: every input bit moves about half the output bits (card numbers
    share long prefixes, so the map slots need their low bits mixed; state.pyx)."""
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111eb
    x ^= x >> 31
    return x


cdef inline int64_t ring_totals_print(uint32_t settlements, uint32_t refunds, int64_t pool_fen,
                                      int64_t personal_fen, int64_t cash_fen) noexcept nogil:
    """A medical totals slot's balance: a 64-bit fingerprint of the counts and shares (the
    slot has no room for them all), so that a different message under the same seq is told
    from a retransmission; its amount is the bill and its extra the settlement date."""
    cdef uint64_t h = mix64((<uint64_t>settlements << 32) | refunds)
    h = mix64(h ^ <uint64_t>pool_fen)
    h = mix64(h ^ <uint64_t>personal_fen)
    return <int64_t>mix64(h ^ <uint64_t>cash_fen)


cdef inline void medical_year_get(Entry* e, uint16_t year, int32_t* deductible_used_fen,
                                  int32_t* pool_paid_fen) noexcept nogil:
    """An account's medical totals for ``year`` (zero when the entry is of another year)."""
    if e != NULL and (e.a >> 32) == year:
        deductible_used_fen[0] = <int32_t><uint32_t>e.a
        pool_paid_fen[0] = <int32_t>e.b
    else:
        deductible_used_fen[0] = 0
        pool_paid_fen[0] = 0


cdef inline void medical_year_set(Entry* e, uint16_t year, int32_t deductible_used_fen,
                                  int32_t pool_paid_fen) noexcept nogil:
    e.a = (<int64_t>year << 32) | <uint32_t>deductible_used_fen
    e.b = pool_paid_fen


cdef inline bint permits(Terminal* term, uint8_t kind) noexcept nogil:
    """Whether a terminal may send a kind of request: its permission bit (one per Kind).
    Kinds added after terminals' permissions were stored in data sets take an older kind's
    bit: a 0320 batch upload SETTLE's (a terminal that may settle may upload the batch it
    settled), a medical institution's daily totals MEDICAL's, and only from a medical
    terminal (an institution that settles bills reports their totals)."""
    if kind == KIND_BATCH_UPLOAD:
        return ((term.permitted >> KIND_SETTLE) & 1) != 0
    if kind == KIND_MEDICAL_TOTALS:
        return (term.kind == TERM_MEDICAL
                and ((term.permitted >> KIND_MEDICAL) | (term.permitted >> kind)) & 1 != 0)
    return ((term.permitted >> kind) & 1) != 0

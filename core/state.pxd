# Card, account and terminal state: numpy structured arrays viewed as C structs.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from onecard.core.crypto cimport MacKey
from onecard.core.journal cimport JRec

cpdef enum Kind:                 # transaction kinds: metrics "type", journal, permissions
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
    N_KINDS = 16

cpdef enum Proto:
    PROTO_ISO8583 = 0
    PROTO_NATIVE = 1
    N_PROTOS = 2

cpdef enum TerminalKind:
    TERM_POS = 1
    TERM_METRO_GATE = 2
    TERM_BUS_READER = 3
    TERM_FERRY_READER = 4
    TERM_VERIFIER = 5

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

cpdef enum HolderFlag:
    HOLDER_DISABLED = 1
    HOLDER_HMT = 2               # Hong Kong, Macao or Taiwan resident

cpdef enum App:                  # application classes the catalogue grants per region
    APP_PAYMENT = 0
    APP_TRANSIT = 1
    APP_IDENTITY = 2
    N_APPS = 8

cpdef enum OperatorKind:
    OP_METRO = 1
    OP_BUS = 2
    OP_FERRY = 3

cpdef enum RingFlag:
    RING_APPROVED = 1            # the original was approved
    RING_REVERSED = 2            # a reversal has been applied to this slot
    RING_NO_ORIGINAL = 4         # reversal arrived for a STAN never seen

cdef enum:
    MAX_PROVINCES = 64

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
    uint8_t spare[6]

cdef struct Terminal:            # 80 bytes
    uint64_t tid                 # field 41, 8 ASCII bytes read big-endian
    uint32_t region
    uint32_t operator            # transit operator index (gates, readers)
    uint32_t permitted           # bit per Kind
    uint32_t spare
    uint8_t kind
    uint8_t protocol
    uint8_t mac_alg
    uint8_t signed_on
    uint8_t pad[4]
    uint8_t tmk[16]              # terminal master key
    uint8_t mak[16]              # working MAC key (valid when signed_on)
    uint8_t merchant[16]         # field 42, 15 characters

cdef struct RingEntry:           # 40 bytes: the last transactions of a terminal, by sequence
    int64_t amount_fen
    int64_t balance_fen
    uint64_t record_no
    uint32_t seq
    uint32_t card
    uint8_t kind
    uint8_t flags
    uint8_t rc
    uint8_t aux
    uint32_t extra

cdef struct Region:
    uint32_t code                # 6-digit administrative division code
    uint8_t province             # index into the province list
    uint8_t group                # region group index (0 = none)
    uint8_t elderly_age          # policy: concession from this age (0 = none)
    uint8_t elderly_pct          # policy: percent of the fare paid (0 = free)
    uint8_t disabled_pct
    uint8_t pad[3]

cdef struct Operator:            # 24 bytes
    uint8_t kind
    uint8_t pad
    uint16_t region
    uint32_t first_station
    uint32_t n_stations
    uint32_t fare_off            # offset into fares (n_stations x n_stations, fen)
    int32_t flat_fare_fen        # bus / ferry, and the minimum to enter a metro
    int32_t max_fare_fen         # charged for a trip with a missing tap

cdef struct Station:
    uint32_t id
    uint32_t operator
    uint32_t local               # position in the operator's fare matrix

cdef class State:
    cdef readonly object cards, accounts, terminals, ring, regions, operators, stations, fares
    cdef readonly object accept, surnames, card_slots, terminal_slots
    cdef Card* card
    cdef Account* acct
    cdef Terminal* term
    cdef RingEntry* rng
    cdef Region* region
    cdef Operator* op
    cdef Station* stn
    cdef int32_t* fare
    cdef uint64_t* accept_mask   # [N_APPS][MAX_PROVINCES] -> mask of accepted card provinces
    cdef uint8_t* surname        # [n][8] UTF-8
    cdef uint32_t* cslot
    cdef uint64_t ccap
    cdef uint32_t* tslot
    cdef uint64_t tcap
    cdef MacKey* mac_keys
    cdef readonly uint32_t n_cards, n_accounts, n_terminals, n_stations, n_regions, n_surnames
    cdef readonly uint32_t ring_size
    cdef uint32_t ring_mask

    cdef _bind(self)
    cdef _install_key(self, uint32_t t)
    cdef int64_t find_card(self, uint64_t pan) noexcept nogil
    cdef void prefetch(self, uint64_t pan, int stage) noexcept nogil
    cdef int64_t find_terminal(self, uint64_t tid) noexcept nogil
    cdef int64_t find_station(self, uint32_t station_id) noexcept nogil
    cdef RingEntry* slot(self, uint32_t terminal, uint32_t seq) noexcept nogil
    cdef int apply(self, JRec* r, uint64_t record_no) noexcept nogil

# Generated from protocols/journal.py by protocols/journal_render.py (setup.py runs it on
# every build): do not edit.
# The journal record: a struct per layout (head first), the JRec union of them all.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    JOURNAL_FORMAT = 3
    JREC_BYTES = 80
    JHEAD_BYTES = 44
    NONE32 = 0xffffffff
    JF_APPROVED = 0x01
    JF_REVERSED = 0x02
    JF_NO_ORIGINAL = 0x04
    JF_VOIDED = 0x08
    JF_STAND_IN = 0x20
    JF_DENY_SET = 0x40
    JF_DENY_CLEAR = 0x80
    JF_RING_MASK = 0x3f
    CA_NEW = 1
    CA_CHANGE = 2

cdef struct JHead:    # every record's head (BALANCE: no more)
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS

cdef struct JPayment:    # PURCHASE, REVERSAL, VOID, VOID_REVERSAL
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    int32_t app_spent_fen_after          # fen
    int64_t amount_asked_minor           # minor units of currency
    uint16_t currency                    # ISO 4217 numeric
    uint16_t daily_day                   # days since 2000-01-01 (China time)
    int32_t daily_spent_fen_after        # fen
    uint32_t orig_seq

cdef struct JTap:    # TAP, OFFLINE_TAP
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint32_t station_id
    uint32_t trip_started_s_after        # s since 1970-01-01 UTC
    uint32_t last_ride_s_after           # s since 1970-01-01 UTC
    uint16_t trip_station_after          # index + 1
    uint16_t last_ride_region_after      # index
    uint8_t direction
    uint16_t transfer_discount_fen       # fen

cdef struct JVerify:    # VERIFY
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint8_t age_band
    uint8_t scope                        # DataScope

cdef struct JTopup:    # TOPUP
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    int64_t amount_asked_fen             # fen

cdef struct JSignon:    # SIGNON
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint8_t mac_alg
    uint8_t mac_key_wrapped[16]
    uint16_t session_day                 # days since 2000-01-01 (China time)

cdef struct JSettle:    # SETTLE
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint32_t batch_no_next
    int64_t debit_fen                    # fen
    int64_t credit_fen                   # fen
    uint32_t debit_count
    uint32_t credit_count
    uint8_t result

cdef struct JMedical:    # MEDICAL, MEDICAL_REFUND
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint32_t orig_seq
    int32_t bill_fen                     # fen
    int32_t deductible_fen               # fen
    int32_t pool_fen                     # fen
    int32_t personal_fen                 # fen
    int32_t medical_fen_after            # fen
    int32_t deductible_used_fen_after    # fen
    int32_t pool_paid_fen_after          # fen
    uint16_t year

cdef struct JVenue:    # VENUE
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint8_t entitlement
    int64_t base_fen                     # fen

cdef struct JCredit:    # CREDIT
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint32_t operator                    # index
    uint32_t programme                   # index + 1
    uint32_t period                      # YYYYMM

cdef struct JForwarded:    # FORWARDED
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint64_t issuer_record_no
    int64_t amount_asked_minor           # minor units of currency
    int32_t pool_fen                     # fen
    uint32_t orig_seq
    uint16_t currency                    # ISO 4217 numeric
    uint8_t orig_kind                    # Kind
    uint8_t issuer_province              # province code
    uint8_t origin                       # FORWARD_ORIGINS
    uint8_t repeated
    uint8_t issuer_recorded

cdef struct JForeignDeny:    # FOREIGN_DENY
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint64_t pan                         # enciphered
    uint8_t issuer_province              # province code
    uint8_t listed

cdef struct JUpload:    # BATCH_UPLOAD
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    int64_t amount_asked_minor           # minor units of currency
    uint64_t pan_masked
    uint32_t batch_no
    uint32_t count
    uint16_t currency                    # ISO 4217 numeric
    uint8_t orig_kind                    # Kind
    uint8_t pan_len                      # digits

cdef struct JAdjustment:    # ADJUSTMENT
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint32_t operator                    # index
    uint32_t ref
    uint8_t exception                    # EXCEPTIONS
    uint8_t direction

cdef struct JCardAdmin:    # CARD_ADMIN
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint32_t operator                    # index
    uint64_t pan                         # enciphered
    uint16_t region                      # index
    uint16_t expiry_yymm                 # YYMM
    uint8_t status                       # CardStatus
    uint8_t functions                    # Function bits
    uint8_t action                       # CARD_ADMIN_ACTIONS

cdef struct JMedicalTotals:    # MEDICAL_TOTALS
    int64_t ts_us                        # µs since 1970-01-01 UTC
    int64_t amount_fen                   # fen
    int64_t balance_fen_after            # fen
    uint32_t terminal                    # index
    uint32_t seq
    uint32_t card                        # index
    uint32_t account                     # index
    uint8_t kind                         # Kind
    uint8_t app                          # index
    uint8_t rc                           # index
    uint8_t flags                        # FLAGS
    uint16_t settle_day                  # days since 2000-01-01 (China time)
    int64_t pool_fen                     # fen
    int64_t personal_fen                 # fen
    int64_t cash_fen                     # fen
    uint32_t settlements
    uint32_t refunds

cdef union JRec:
    JHead head
    JPayment payment
    JTap tap
    JVerify verify
    JTopup topup
    JSignon signon
    JSettle settle
    JMedical medical
    JVenue venue
    JCredit credit
    JForwarded forwarded
    JForeignDeny foreign_deny
    JUpload upload
    JAdjustment adjustment
    JCardAdmin card_admin
    JMedicalTotals medical_totals
    uint8_t raw[80]

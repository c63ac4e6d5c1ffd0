from libc.stdint cimport int64_t, uint8_t, uint32_t

from onecard.core.authorise cimport Res, Txn
from onecard.core.codes cimport rc_chars
from onecard.core.mpack cimport MpReader, mp_w_str

cdef enum:
    PREFIX = 4                   # frame length prefix, big-endian
    TAG_SIGNON = 1
    TAG_HEARTBEAT = 2
    TAG_TAP = 3
    TAG_VERIFY = 4
    TAG_OFFLINE_TAP = 5
    TAG_DENY_SYNC = 6
    TAG_MEDICAL = 7
    TAG_MEDICAL_REFUND = 8
    TAG_VENUE = 9
    TAG_TOPUP = 10
    TAG_MEDICAL_TOTALS = 11
    REPLY_OFFSET = 100           # reply tag = request tag + 100
    TAG_ERROR = 199
    REPLY_RESERVE = 512          # bound on one encoded reply


cdef inline size_t w_rc(uint8_t* p, uint8_t rc) noexcept nogil:
    return mp_w_str(p, rc_chars(rc), 2)


cdef const char* parse_message(MpReader* body, Txn* t, int64_t* tag, int64_t* seq,
                               uint32_t n_msgs) noexcept nogil
cdef bint is_broken(const char* problem) noexcept nogil
cdef size_t write_reply(uint8_t* p, Txn* t, uint8_t tag, Res* r, uint32_t now_s) noexcept nogil

# cython: language_level=3
"""Native protocol messages (protocols/NATIVE.md): one request message read into a Txn, one
reply written from a Txn and its Res, as the framing path (native_path) uses them for every
message of a frame's batch; and the benchmark hooks that run these stages alone.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memset

from onecard.core.authorise cimport Res, Txn
from onecard.core.codes cimport *
from onecard.core.mpack cimport *
from onecard.core.outbuf cimport OutBuf, ob_free, ob_reserve
from onecard.core.state cimport *
from onecard.core.wire cimport load_be

cdef inline int parse_card(MpReader* r, uint64_t* pan) noexcept nogil:
    cdef const uint8_t* s
    cdef uint32_t n, i
    cdef uint64_t v = 0
    if mp_str(r, &s, &n) or n < 12 or n > 19:
        return -1
    for i in range(n):
        if s[i] < 48 or s[i] > 57:
            return -1
        v = v * 10 + (s[i] - 48)
    pan[0] = v
    return 0


cdef inline int parse_u32(MpReader* r, uint32_t* out) noexcept nogil:
    cdef int64_t v
    if mp_int(r, &v) or v < 0 or v > <int64_t>0xffffffff:
        return -1
    out[0] = <uint32_t>v
    return 0


cdef const char* BROKEN = b"body is not valid MessagePack"
cdef const char* BAD_CARD = b"card must be a string of 12-19 digits"


cdef bint is_broken(const char* problem) noexcept nogil:
    return problem == BROKEN


cdef inline const char* parse_tap(MpReader* body, Txn* t, uint32_t count) noexcept nogil:
    """Tap and OfflineTap: the same fields; an uploaded tap must say when it happened (0 =
    "now" online only)."""
    cdef int64_t v
    if count < 6:
        return (b"Tap is [3, seq, card, station, direction, time_s]" if t.kind == KIND_TAP
                else b"OfflineTap is [5, seq, card, station, direction, time_s]")
    if parse_card(body, &t.pan):
        return BAD_CARD
    if parse_u32(body, &t.station_id):
        return b"station must be an integer 0..4294967295"
    if mp_int(body, &v) or v < 0 or v > 1:
        return b"direction must be 0 (in) or 1 (out)"
    if parse_u32(body, &t.time_s) or (t.kind == KIND_OFFLINE_TAP and t.time_s == 0):
        return (b"time_s must be Unix seconds" if t.kind == KIND_TAP
                else b"time_s must be the Unix seconds the tap happened")
    t.direction = <uint8_t>v
    return NULL


cdef inline const char* parse_card_only(MpReader* body, Txn* t, uint32_t count) noexcept nogil:
    """Verify and VenueEntry: the card alone."""
    if count < 3:
        return b"Verify and VenueEntry are [tag, seq, card]"
    if parse_card(body, &t.pan):
        return BAD_CARD
    return NULL


cdef inline const char* parse_topup(MpReader* body, Txn* t, uint32_t count) noexcept nogil:
    cdef int64_t v
    if count < 4:
        return b"TopUp is [10, seq, card, amount_fen]"
    if parse_card(body, &t.pan):
        return BAD_CARD
    if mp_int(body, &v) or v <= 0 or v > 0x7fffffff:
        return b"amount_fen must be a positive integer (fen)"
    t.amount_fen = v
    return NULL


cdef inline const char* parse_deny_sync(MpReader* body, Txn* t, uint32_t count) noexcept nogil:
    if count < 3 or parse_u32(body, &t.orig_seq):
        return b"DenyListSync is [6, seq, since_version]"
    return NULL


cdef inline const char* parse_medical(MpReader* body, Txn* t, uint32_t count) noexcept nogil:
    """Medical (a bill to settle) and MedicalRefund (the settlement to refund)."""
    cdef int64_t v
    if count < 4:
        return (b"Medical is [7, seq, card, bill_fen]; "
                b"MedicalRefund [8, seq, card, original_seq]")
    if parse_card(body, &t.pan):
        return BAD_CARD
    if t.kind == KIND_MEDICAL:
        if mp_int(body, &v) or v <= 0 or v > 0x7fffffff:
            return b"bill_fen must be a positive integer (fen)"
        t.amount_fen = v
    elif parse_u32(body, &t.orig_seq):
        return b"original_seq must be the settlement's sequence number"
    return NULL


cdef enum:
    DAYS_1970_TO_2000 = 10957

# |amount| of a day's medical totals, below: a sum of three never overflows (an enum is an int)
cdef int64_t TOTAL_FEN_MAX = <int64_t>1 << 47


cdef inline int64_t day_number(int64_t yyyymmdd) noexcept nogil:
    """A YYYYMMDD date as days since 2000-01-01 (H. Hinnant's days_from_civil), or -1 when
    it is no date or is outside 2000-01-01..2179-06-06 (what a u16 day holds)."""
    cdef int64_t y = yyyymmdd // 10000, m = yyyymmdd // 100 % 100, d = yyyymmdd % 100
    cdef int64_t era, yoe, doy, doe, days
    cdef int month_days
    if yyyymmdd < 20000101 or y > 2179 or m < 1 or m > 12 or d < 1:
        return -1
    month_days = (29 if m == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
                  else 28 if m == 2 else 30 if m == 4 or m == 6 or m == 9 or m == 11 else 31)
    if d > month_days:
        return -1
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468 - DAYS_1970_TO_2000
    return days if days <= 0xffff else -1


cdef inline const char* parse_totals(MpReader* body, Txn* t, uint32_t count) noexcept nogil:
    """MedicalTotals: t.batch_no the settlement date (days since 2000-01-01), t.amount_fen the
    bill, t.x its pool, personal and cash shares and the settlements, t.orig_seq the refunds.
    Sums are net of refunds: below zero only with refunds."""
    cdef int64_t v
    cdef uint32_t settlements, refunds
    cdef int i
    if count < 9:
        return (b"MedicalTotals is [11, seq, settle_date, settlements, refunds, bill_fen, "
                b"pool_fen, personal_fen, cash_fen]")
    if mp_int(body, &v) or day_number(v) < 0:
        return b"settle_date must be a date YYYYMMDD from 20000101"
    t.batch_no = <uint32_t>day_number(v)
    if parse_u32(body, &settlements) or parse_u32(body, &refunds):
        return b"settlements and refunds must be counts 0..4294967295"
    for i in range(4):
        if mp_int(body, &v) or v <= -TOTAL_FEN_MAX or v >= TOTAL_FEN_MAX:
            return b"amounts must be integers (fen) within 2^47 either side of 0"
        if v < 0 and refunds == 0:
            return b"an amount below zero needs refunds: a sum of settlements alone is >= 0"
        if i == 0:
            t.amount_fen = v
        else:
            t.x[i - 1] = v
    if t.amount_fen != t.x[0] + t.x[1] + t.x[2]:
        return b"bill_fen must be pool_fen + personal_fen + cash_fen"
    t.x[3] = settlements
    t.orig_seq = refunds
    return NULL


cdef const char* parse_message(MpReader* body, Txn* t, int64_t* tag, int64_t* seq,
                               uint32_t n_msgs) noexcept nogil:
    """One request message into t. NULL when it follows the schema; otherwise what is wrong
    (BROKEN when not even its MessagePack structure can be read)."""
    cdef uint32_t count, extra
    cdef const char* problem = NULL
    memset(t, 0, sizeof(Txn))
    t.proto = PROTO_NATIVE
    t.kind = KIND_OTHER
    if mp_array(body, &count) or count < 2 or mp_int(body, tag):
        return b"message is not an array [tag, seq, ...]"
    if mp_int(body, seq) or seq[0] < 1 or seq[0] > <int64_t>0xffffffff:
        seq[0] = 0
        return b"seq must be an integer 1..4294967295"
    t.seq = <uint32_t>seq[0]
    extra = count - 2
    if tag[0] == TAG_SIGNON:
        t.kind = KIND_SIGNON
        if n_msgs != 1:
            problem = b"SignOn must be alone in its frame"
    elif tag[0] == TAG_HEARTBEAT:
        t.kind = KIND_HEARTBEAT
    elif tag[0] == TAG_TAP or tag[0] == TAG_OFFLINE_TAP:
        t.kind = KIND_TAP if tag[0] == TAG_TAP else KIND_OFFLINE_TAP
        problem = parse_tap(body, t, count)
        extra = count - 6
    elif tag[0] == TAG_VERIFY or tag[0] == TAG_VENUE:
        t.kind = KIND_VERIFY if tag[0] == TAG_VERIFY else KIND_VENUE
        problem = parse_card_only(body, t, count)
        extra = count - 3
    elif tag[0] == TAG_TOPUP:
        t.kind = KIND_TOPUP
        problem = parse_topup(body, t, count)
        extra = count - 4
    elif tag[0] == TAG_DENY_SYNC:
        t.kind = KIND_DENY_SYNC
        problem = parse_deny_sync(body, t, count)
        extra = count - 3
    elif tag[0] == TAG_MEDICAL or tag[0] == TAG_MEDICAL_REFUND:
        t.kind = KIND_MEDICAL if tag[0] == TAG_MEDICAL else KIND_MEDICAL_REFUND
        problem = parse_medical(body, t, count)
        extra = count - 4
    elif tag[0] == TAG_MEDICAL_TOTALS:
        t.kind = KIND_MEDICAL_TOTALS
        problem = parse_totals(body, t, count)
        extra = count - 9
    if problem == NULL:
        for _ in range(extra):               # fields a newer schema may add
            if mp_skip(body, 0):
                return BROKEN
    return problem


cdef size_t write_reply(uint8_t* p, Txn* t, uint8_t tag, Res* r, uint32_t now_s) noexcept nogil:
    """The reply to t as [tag, seq, rc, ...]; at most REPLY_RESERVE bytes."""
    cdef size_t k = 0
    cdef bint ok = r.rc == RC_00
    cdef uint8_t kind = KIND_TAP if t.kind == KIND_OFFLINE_TAP else t.kind
    p[k] = (0x95 if kind == KIND_TAP or kind == KIND_TOPUP else 0x97 if kind == KIND_VERIFY
            else 0x98 if kind == KIND_MEDICAL or kind == KIND_MEDICAL_REFUND
            else 0x96 if kind == KIND_VENUE or kind == KIND_DENY_SYNC else 0x94)
    k += 1
    k += mp_w_int(p + k, tag)
    k += mp_w_int(p + k, t.seq)
    k += w_rc(p + k, r.rc)
    if kind == KIND_SIGNON:
        k += mp_w_bin(p + k, r.keys + 20, 20 if ok else 0)
    elif kind == KIND_HEARTBEAT:
        k += mp_w_int(p + k, now_s)
    elif kind == KIND_TAP or kind == KIND_TOPUP:
        k += mp_w_int(p + k, r.amount_fen if ok else 0)
        k += mp_w_int(p + k, r.balance_fen)
    elif kind == KIND_VERIFY:
        k += mp_w_str(p + k, <const char*>r.name, r.name_len if ok else 0)
        k += mp_w_int(p + k, r.age_band)
        k += mp_w_int(p + k, r.region_code if ok else 0)
        k += mp_w_str(p + k, <const char*>r.id_number, r.id_len if ok else 0)
    elif kind == KIND_MEDICAL or kind == KIND_MEDICAL_REFUND:
        k += mp_w_int(p + k, r.x[0] if ok else 0)
        k += mp_w_int(p + k, r.x[1] if ok else 0)
        k += mp_w_int(p + k, r.x[2] if ok else 0)
        k += mp_w_int(p + k, r.balance_fen)
        k += mp_w_int(p + k, r.x[3] if ok else 0)
    elif kind == KIND_DENY_SYNC:           # refused (an allowed sync is written by deny_sync)
        k += mp_w_int(p + k, 0)
        k += mp_w_array(p + k, 0)
        k += mp_w_array(p + k, 0)
    elif kind == KIND_VENUE:
        k += mp_w_int(p + k, r.amount_fen if ok else 0)
        k += mp_w_int(p + k, r.balance_fen)
        k += mp_w_int(p + k, r.entitlement if ok else 0)
    elif kind == KIND_MEDICAL_TOTALS:
        k += mp_w_int(p + k, r.settle_result if ok else 0)
    return k


# ---- benchmark hooks: the same code as the server path, one stage at a time ----------------

def decode_bodies(data) -> int:
    """Decode every message of every frame in ``data`` (no MAC, no authorisation); returns
    how many followed the schema."""
    cdef Py_buffer view
    cdef MpReader r, body
    cdef size_t pos = 0
    cdef uint32_t length, count, n_msgs, tid_len, body_len, mac_len, _i, ok = 0
    cdef int64_t version, tag, seq
    cdef const uint8_t* tid
    cdef const uint8_t* body_p
    cdef const uint8_t* mac_p
    cdef Txn t
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            while <size_t>view.len - pos >= PREFIX:
                length = <uint32_t>load_be(<const uint8_t*>view.buf + pos, PREFIX)
                if length > <size_t>view.len - pos - PREFIX:
                    break                      # a frame cut short: never read past the buffer
                r.p = <const uint8_t*>view.buf + pos + PREFIX
                r.n = length
                r.pos = 0
                pos += PREFIX + length
                if (mp_array(&r, &count) or mp_int(&r, &version) or mp_str(&r, &tid, &tid_len)
                        or mp_bin(&r, &body_p, &body_len) or mp_bin(&r, &mac_p, &mac_len)):
                    continue
                body.p = body_p
                body.n = body_len
                body.pos = 0
                if mp_array(&body, &n_msgs):
                    continue
                for _i in range(n_msgs):
                    if parse_message(&body, &t, &tag, &seq, n_msgs) == NULL:
                        ok += 1
    finally:
        PyBuffer_Release(&view)
    return ok


def encode_tap_replies(uint32_t count) -> bytes:
    """``count`` TapReply messages, as the switch writes them, in one body."""
    cdef OutBuf out
    cdef Txn t
    cdef Res r
    cdef uint32_t i
    memset(&out, 0, sizeof(OutBuf))
    memset(&t, 0, sizeof(Txn))
    memset(&r, 0, sizeof(Res))
    t.kind = KIND_TAP
    try:
        if ob_reserve(&out, 5 + <size_t>count * 64):
            raise MemoryError()
        out.len = mp_w_array32(out.data, count)
        for i in range(count):
            t.seq = i + 1
            r.amount_fen = 300 + i % 500
            r.balance_fen = 1_000_000 - i
            out.len += write_reply(out.data + out.len, &t, TAG_TAP + REPLY_OFFSET, &r,
                                   1_700_000_000)
        return PyBytes_FromStringAndSize(<char*>out.data, out.len)
    finally:
        ob_free(&out)


# ---- the tags are declared in protocols/native.py; native_msg.pxd holds compile-time copies --

from onecard.protocols.native import CORE_CONSTANTS as _DECLARED

_COMPILED = {"TAG_SIGNON": TAG_SIGNON, "TAG_HEARTBEAT": TAG_HEARTBEAT, "TAG_TAP": TAG_TAP,
             "TAG_VERIFY": TAG_VERIFY, "TAG_OFFLINE_TAP": TAG_OFFLINE_TAP,
             "TAG_DENY_SYNC": TAG_DENY_SYNC, "TAG_MEDICAL": TAG_MEDICAL,
             "TAG_MEDICAL_REFUND": TAG_MEDICAL_REFUND, "TAG_VENUE": TAG_VENUE,
             "TAG_TOPUP": TAG_TOPUP, "TAG_MEDICAL_TOTALS": TAG_MEDICAL_TOTALS,
             "REPLY_OFFSET": REPLY_OFFSET, "TAG_ERROR": TAG_ERROR,
             "PREFIX": PREFIX}
assert _COMPILED.keys() == _DECLARED.keys(), sorted(_COMPILED.keys() ^ _DECLARED.keys())
for _symbol, _value in _COMPILED.items():
    assert _DECLARED[_symbol] == _value, (_symbol, _value, _DECLARED[_symbol])
    globals()[_symbol] = _value            # as module attributes, for tests and tools

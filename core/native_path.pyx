# cython: language_level=3
"""Native protocol on the wire (protocols/native.py): split length-prefixed frames, check the
frame MAC, then decode, authorise and answer every message of the frame's batch, writing one
reply frame per request frame, all in one call per received buffer.

Errors are specific: a frame that cannot be read or authenticated is answered with a single
ErrorReply (seq 0); a message that breaks the schema gets an ErrorReply with its own seq and
the rest of the batch carries on.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memcpy, memset, strlen

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.decide cimport decide
from onecard.core.codes cimport *
from onecard.core.crypto cimport MAC_BYTES, MacKey, mac8, mac_equal, mackey_clear, mackey_set
from onecard.core.journal cimport NONE32
from onecard.core.metrics cimport CoreMetrics
from onecard.core.mpack cimport *
from onecard.core.outbuf cimport OutBuf, ob_free, ob_reserve
from onecard.core.state cimport *
from onecard.core.wire cimport load_be, store_be

from onecard.protocols.native import VERSION as _VERSION

cdef enum:
    PREFIX = 4
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
    DENY_BATCH = 1000            # deny-list changes per reply
    REPLY_OFFSET = 100           # reply tag = request tag + 100
    TAG_ERROR = 199
    TID_LEN = 8
    REPLY_RESERVE = 512          # bound on one encoded reply
    FRAME_RESERVE = 64           # frame header and MAC around a body

cdef int VERSION = _VERSION
cdef inline size_t w_rc(uint8_t* p, uint8_t rc) noexcept nogil:
    return mp_w_str(p, rc_chars(rc), 2)


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


cdef inline bint superseded(const uint32_t* log, uint32_t v, uint32_t end) noexcept nogil:
    """Whether a later change in [v + 1, end) concerns the same card: a gate applying the
    reply must end with each card's latest state, so each card is reported once. Quadratic,
    but bounded by DENY_BATCH changes a reply and deny-list syncs are rare."""
    cdef uint32_t w, card = log[v] & 0x7fffffff
    for w in range(v + 1, end):
        if (log[w] & 0x7fffffff) == card:
            return True
    return False


cdef class NativePath:
    def __init__(self, Authoriser auth, CoreMetrics mx, uint32_t max_frame, uint32_t max_batch):
        if max_frame < 16 or max_batch < 1:
            raise ValueError("max_frame must be >= 16 bytes and max_batch >= 1")
        self.auth = auth
        self.st = auth.state
        self.mx = mx
        self.max_frame = max_frame
        self.max_batch = max_batch

    cdef size_t run(self, const uint8_t* p, size_t n, OutBuf* out, uint32_t batch,
                    uint32_t* messages, int* close) noexcept nogil:
        cdef size_t pos = 0
        cdef uint32_t length
        cdef Frame f
        while n - pos >= PREFIX:
            length = <uint32_t>load_be(p + pos, PREFIX)
            if length > self.max_frame:
                # Cannot be framed: say why, then the caller closes the connection.
                if ob_reserve(out, REPLY_RESERVE + FRAME_RESERVE) == 0:
                    self.begin(out, &f, NULL, 0)
                    self.error(out, &f, 0, RC_30, b"frame length above the maximum")
                    self.end(out, &f, NULL)
                    self.mx.count(batch, KIND_FORMAT, RC_30)
                    messages[0] += 1
                close[0] = 1
                break
            if n - pos - PREFIX < length:
                break
            if self.frame(p + pos + PREFIX, length, out, batch, messages) != 0:
                close[0] = 1                 # out of memory: drop this connection only
                break
            pos += PREFIX + length
        return pos

    # ---- reply frame -------------------------------------------------------------------------

    cdef void begin(self, OutBuf* out, Frame* f, const uint8_t* tid, uint32_t tid_len) noexcept nogil:
        cdef uint8_t* p = out.data + out.len
        cdef size_t k = PREFIX
        p[k] = 0x94                          # [version, terminal, body, mac]
        k += 1
        k += mp_w_int(p + k, VERSION)
        if tid != NULL:
            k += mp_w_str(p + k, <const char*>tid, tid_len)
        else:
            k += mp_w_str(p + k, NULL, 0)
        f.start = out.len
        f.body_header = out.len + k
        k += 5                               # bin32 header, patched in end()
        f.body = out.len + k
        k += 5                               # array32 header, patched in end()
        f.count = 0
        out.len += k

    cdef void end(self, OutBuf* out, Frame* f, MacKey* key) noexcept nogil:
        cdef uint8_t mac[8]
        cdef size_t body_len = out.len - f.body
        mp_w_array32(out.data + f.body, f.count)
        mp_w_bin32_header(out.data + f.body_header, <uint32_t>body_len)
        if key != NULL and mac8(key, out.data + f.body, body_len, mac) == 0:
            out.len += mp_w_bin(out.data + out.len, mac, MAC_BYTES)
        else:
            out.len += mp_w_bin(out.data + out.len, mac, 0)
        store_be(out.data + f.start, out.len - f.start - PREFIX, PREFIX)

    cdef void error(self, OutBuf* out, Frame* f, int64_t seq, uint8_t rc,
                    const char* text) noexcept nogil:
        cdef uint8_t* p = out.data + out.len
        cdef size_t k = 0
        p[k] = 0x94
        k += 1
        k += mp_w_int(p + k, TAG_ERROR)
        k += mp_w_int(p + k, seq)
        k += w_rc(p + k, rc)
        k += mp_w_str(p + k, text, <uint32_t>strlen(text))
        out.len += k
        f.count += 1

    # ---- one request frame -------------------------------------------------------------------

    cdef int frame(self, const uint8_t* p, uint32_t length, OutBuf* out, uint32_t batch,
                   uint32_t* messages) noexcept nogil:
        cdef MpReader r, body, peek
        cdef Frame f
        cdef MacKey tmk_key
        cdef MacKey* key = NULL
        cdef uint32_t count, tid_len = 0, body_len, mac_len, i, n_msgs
        cdef int64_t version, term_idx = -1, tag = 0
        cdef const uint8_t* tid = NULL
        cdef const uint8_t* body_p
        cdef const uint8_t* mac_p
        cdef uint8_t mac[8]
        cdef uint64_t packed = 0
        cdef Terminal* term
        cdef const char* problem = NULL
        cdef uint8_t rc = RC_30
        cdef bint lone_signon = False
        if ob_reserve(out, REPLY_RESERVE + FRAME_RESERVE):
            return -1
        r.p = p
        r.n = length
        r.pos = 0
        memset(&tmk_key, 0, sizeof(MacKey))
        if mp_array(&r, &count) or count < 4:
            problem = b"frame is not an array [version, terminal, body, mac]"
        elif mp_int(&r, &version) or version != VERSION:
            problem = b"unsupported protocol version"
        elif mp_str(&r, &tid, &tid_len) or tid_len != TID_LEN:
            tid = NULL
            tid_len = 0
            problem = b"terminal id must be a string of 8 characters"
        elif mp_bin(&r, &body_p, &body_len) or mp_bin(&r, &mac_p, &mac_len):
            problem = b"body and mac must be binary"
        if problem == NULL:
            for i in range(TID_LEN):
                packed = (packed << 8) | tid[i]
            term_idx = self.st.find_terminal(packed)
            body.p = body_p
            body.n = body_len
            body.pos = 0
            if term_idx < 0:
                rc = RC_03
                problem = b"unknown terminal"
            elif self.st.term[term_idx].protocol != PROTO_NATIVE:
                rc = RC_58
                problem = b"terminal is not registered for the native protocol"
            elif mp_array(&body, &n_msgs):
                problem = b"body is not an array of messages"
            elif n_msgs > self.max_batch:
                problem = b"batch has more messages than the switch accepts"
        if problem == NULL:
            term = &self.st.term[term_idx]
            if n_msgs == 1:
                peek = body
                if mp_array(&peek, &count) == 0 and count >= 1 and mp_int(&peek, &tag) == 0:
                    lone_signon = tag == TAG_SIGNON
            if lone_signon:
                if mackey_set(&tmk_key, term.mac_alg, term.tmk) == 0:
                    key = &tmk_key
            elif term.signed_on:
                key = &self.st.mac_keys[term_idx]
            if key == NULL:
                rc = RC_A0
                problem = b"terminal is not signed on"
            elif (mac_len != MAC_BYTES or mac8(key, body_p, body_len, mac)
                    or not mac_equal(mac, mac_p)):
                rc = RC_A0
                problem = b"MAC check failed"
        self.begin(out, &f, tid, tid_len)
        if problem != NULL:
            self.error(out, &f, 0, rc, problem)
            self.end(out, &f, NULL)
            mackey_clear(&tmk_key)
            self.mx.count(batch, KIND_FORMAT, rc)
            messages[0] += 1
            return 0
        for i in range(n_msgs):
            if ob_reserve(out, REPLY_RESERVE + FRAME_RESERVE):
                mackey_clear(&tmk_key)
                return -1
            messages[0] += 1
            if self.message(&body, <uint32_t>term_idx, n_msgs, out, &f, batch) != 0:
                break                        # the rest of the body cannot be delimited
        self.end(out, &f, key)
        mackey_clear(&tmk_key)
        return 0

    cdef int message(self, MpReader* body, uint32_t term_idx, uint32_t n_msgs, OutBuf* out,
                     Frame* f, uint32_t batch) noexcept nogil:
        """Decode, authorise and answer one message. -1 when the body is not MessagePack."""
        cdef size_t start = body.pos
        cdef int64_t tag = 0, seq = 0
        cdef const char* problem
        cdef Txn t
        cdef Res r
        cdef Terminal* term = &self.st.term[term_idx]
        memset(&r, 0, sizeof(Res))
        r.card = NONE32
        problem = parse_message(body, &t, &tag, &seq, n_msgs)
        if problem == BROKEN:
            return self.broken(out, f, batch)
        t.terminal = term_idx
        if problem != NULL:
            # Skip the whole message from its start so the next one can be read.
            body.pos = start
            if mp_skip(body, 0):
                return self.broken(out, f, batch)
            self.error(out, f, seq, RC_30, problem)
            self.mx.count(batch, KIND_FORMAT, RC_30)
            return 0
        if t.kind == KIND_OTHER:
            self.error(out, f, seq, RC_12, b"unknown message tag")
            self.mx.count(batch, KIND_OTHER, RC_12)
            return 0
        if not (term.permitted >> t.kind) & 1:
            r.rc = RC_58
        elif t.kind == KIND_HEARTBEAT:
            r.rc = RC_00
        elif t.kind == KIND_DENY_SYNC:
            self.mx.count(batch, t.kind, RC_00)
            return self.deny_sync(&t, out, f)
        else:
            decide(self.auth, &t, &r)
        self.mx.count(batch, t.kind, r.rc)
        out.len += write_reply(out.data + out.len, &t, <uint8_t>(tag + REPLY_OFFSET), &r,
                               self.auth.now_s)
        f.count += 1
        return 0

    cdef int deny_sync(self, Txn* t, OutBuf* out, Frame* f) noexcept nogil:
        """Deny-list changes after the version the gate has: [106, seq, rc, version, added,
        removed], at most DENY_BATCH changes (the gate asks again from the version given)."""
        cdef uint32_t since = <uint32_t>t.orig_seq, end = self.st.deny_version, v, e
        cdef uint32_t n_added = 0, n_removed = 0, i
        cdef uint8_t* p
        cdef size_t k
        cdef char digits[20]
        cdef int nd
        cdef uint64_t pan
        if since > end:
            since = end                    # a gate ahead of the switch starts over
        if end - since > DENY_BATCH:
            end = since + DENY_BATCH
        if ob_reserve(out, 64 + <size_t>(end - since) * 24 + FRAME_RESERVE):
            return -1
        for v in range(since, end):
            if superseded(self.st.deny_log, v, end):
                continue
            if self.st.deny_log[v] >> 31:
                n_removed += 1
            else:
                n_added += 1
        p = out.data + out.len
        k = 0
        p[k] = 0x96
        k += 1
        k += mp_w_int(p + k, TAG_DENY_SYNC + REPLY_OFFSET)
        k += mp_w_int(p + k, t.seq)
        k += w_rc(p + k, RC_00)
        k += mp_w_int(p + k, end)
        for i in range(2):
            k += mp_w_array(p + k, n_added if i == 0 else n_removed)
            for v in range(since, end):
                e = self.st.deny_log[v]
                if (e >> 31) != i or superseded(self.st.deny_log, v, end):
                    continue
                pan = self.st.card[e & 0x7fffffff].pan
                nd = 0
                while pan:
                    digits[19 - nd] = <char>(48 + pan % 10)
                    pan //= 10
                    nd += 1
                k += mp_w_str(p + k, digits + 20 - nd, nd)
        out.len += k
        f.count += 1
        return 0

    cdef int broken(self, OutBuf* out, Frame* f, uint32_t batch) noexcept nogil:
        self.error(out, f, 0, RC_30, b"body is not valid MessagePack")
        self.mx.count(batch, KIND_FORMAT, RC_30)
        return -1


# ---- shared by the server path and the benchmark hooks ---------------------------------------

cdef const char* BROKEN = b"body is not valid MessagePack"


cdef const char* parse_message(MpReader* body, Txn* t, int64_t* tag, int64_t* seq,
                               uint32_t n_msgs) noexcept nogil:
    """One request message into t. NULL when it follows the schema; otherwise what is wrong
    (BROKEN when not even its MessagePack structure can be read)."""
    cdef uint32_t count, extra
    cdef int64_t v
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
        # Same fields; an uploaded tap must say when it happened (0 = "now" online only).
        t.kind = KIND_TAP if tag[0] == TAG_TAP else KIND_OFFLINE_TAP
        if count < 6:
            problem = (b"Tap is [3, seq, card, station, direction, time_s]" if t.kind == KIND_TAP
                       else b"OfflineTap is [5, seq, card, station, direction, time_s]")
        elif parse_card(body, &t.pan):
            problem = b"card must be a string of 12-19 digits"
        elif parse_u32(body, &t.station_id):
            problem = b"station must be an integer 0..4294967295"
        elif mp_int(body, &v) or v < 0 or v > 1:
            problem = b"direction must be 0 (in) or 1 (out)"
        elif parse_u32(body, &t.time_s) or (t.kind == KIND_OFFLINE_TAP and t.time_s == 0):
            problem = (b"time_s must be Unix seconds" if t.kind == KIND_TAP
                       else b"time_s must be the Unix seconds the tap happened")
        else:
            t.direction = <uint8_t>v
            extra = count - 6
    elif tag[0] == TAG_VERIFY or tag[0] == TAG_VENUE:
        t.kind = KIND_VERIFY if tag[0] == TAG_VERIFY else KIND_VENUE
        if count < 3:
            problem = b"Verify and VenueEntry are [tag, seq, card]"
        elif parse_card(body, &t.pan):
            problem = b"card must be a string of 12-19 digits"
        else:
            extra = count - 3
    elif tag[0] == TAG_TOPUP:
        t.kind = KIND_TOPUP
        if count < 4:
            problem = b"TopUp is [10, seq, card, amount_fen]"
        elif parse_card(body, &t.pan):
            problem = b"card must be a string of 12-19 digits"
        elif mp_int(body, &v) or v <= 0 or v > 0x7fffffff:
            problem = b"amount_fen must be a positive integer (fen)"
        else:
            t.amount_fen = v
            extra = count - 4
    elif tag[0] == TAG_DENY_SYNC:
        t.kind = KIND_DENY_SYNC
        if count < 3 or parse_u32(body, &t.orig_seq):
            problem = b"DenyListSync is [6, seq, since_version]"
        else:
            extra = count - 3
    elif tag[0] == TAG_MEDICAL or tag[0] == TAG_MEDICAL_REFUND:
        t.kind = KIND_MEDICAL if tag[0] == TAG_MEDICAL else KIND_MEDICAL_REFUND
        if count < 4:
            problem = b"Medical is [7, seq, card, bill_fen]; MedicalRefund [8, seq, card, original_seq]"
        elif parse_card(body, &t.pan):
            problem = b"card must be a string of 12-19 digits"
        elif t.kind == KIND_MEDICAL and (mp_int(body, &v) or v <= 0 or v > 0x7fffffff):
            problem = b"bill_fen must be a positive integer (fen)"
        elif t.kind == KIND_MEDICAL_REFUND and parse_u32(body, &t.orig_seq):
            problem = b"original_seq must be the settlement's sequence number"
        else:
            if t.kind == KIND_MEDICAL:
                t.amount_fen = v
            extra = count - 4
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
    return k


# ---- benchmark hooks: the same code as the server path, one stage at a time ----------------

def decode_bodies(data) -> int:
    """Decode every message of every frame in ``data`` (no MAC, no authorisation); returns
    how many followed the schema."""
    cdef Py_buffer view
    cdef MpReader r, body
    cdef size_t pos = 0
    cdef uint32_t length, count, n_msgs, tid_len, body_len, mac_len, i, ok = 0
    cdef int64_t version, tag, seq
    cdef const uint8_t* tid
    cdef const uint8_t* body_p
    cdef const uint8_t* mac_p
    cdef Txn t
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            while view.len - pos >= PREFIX:
                length = <uint32_t>load_be(<const uint8_t*>view.buf + pos, PREFIX)
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
                for i in range(n_msgs):
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

# cython: language_level=3
"""Native protocol on the wire (protocols/native.py): split length-prefixed frames, check the
frame MAC, then decode, authorise and answer every message of the frame's batch, writing one
reply frame per request frame, all in one call per received buffer. The MACs of up to GROUP
frames are checked together, and their replies' MACs computed together (crypto.mac_many).

Errors are specific: a frame that cannot be read or authenticated is answered with a single
ErrorReply (seq 0); a message that breaks the schema gets an ErrorReply with its own seq and
the rest of the batch carries on.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport abort
from libc.string cimport memset, strlen

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.decide cimport decide, retransmitted
from onecard.core.forward cimport (MODE_COLLECT, MODE_CONSUME, MODE_PEEK, ROUTE_FORWARD,
                                   ROUTE_LOCAL, Router)
from onecard.core.codes cimport *
from onecard.core.crypto cimport (MAC_BYTES, MacJob, MacKey, mac8, mac_equal, mac_job, mac_many,
                                  mac_many_in, mackey_clear, mackey_set)
from onecard.core.journal cimport NONE32
from onecard.core.metrics cimport CoreMetrics
from onecard.core.mpack cimport *
from onecard.core.native_msg cimport *
from onecard.core.outbuf cimport OutBuf, ob_reserve
from onecard.core.state cimport *
from onecard.core.wire cimport load_be, store_be

from onecard.protocols.native import VERSION as _VERSION

cdef enum:
    DENY_BATCH = 1000            # deny-list changes per reply
    TID_LEN = 8
    FRAME_RESERVE = 64           # frame header and MAC around a body
    GROUP = 16                   # frames whose MACs are computed together (stack-bound)

cdef int VERSION = _VERSION
# A terminal id (8 bytes, packed big-endian) with none of these bits is ASCII: UTF-8 as is.
cdef uint64_t ASCII_HIGH_BITS = 0x8080808080808080


cdef inline bint superseded(const uint32_t* log, uint32_t v, uint32_t end) noexcept nogil:
    """Whether a later change in [v + 1, end) concerns the same card: a gate applying the
    reply must end with each card's latest state, so each card is reported once. Quadratic,
    but bounded by DENY_BATCH changes a reply and deny-list syncs are rare."""
    cdef uint32_t w, card = log[v] & ~DENY_REMOVED
    for w in range(v + 1, end):
        if (log[w] & ~DENY_REMOVED) == card:
            return True
    return False


cdef inline bint tid_text(const uint8_t* tid, uint64_t* packed) noexcept nogil:
    """Pack a terminal id (TID_LEN bytes) big-endian; whether it is UTF-8."""
    cdef uint64_t v = 0
    cdef int i
    for i in range(TID_LEN):
        v = (v << 8) | tid[i]
    packed[0] = v
    return not (v & ASCII_HIGH_BITS) or utf8_valid(tid, TID_LEN)


cdef bint utf8_valid(const uint8_t* s, uint32_t n) noexcept nogil:
    """Whether s[:n] is UTF-8 (RFC 3629: shortest forms, no surrogates, up to U+10FFFF).
    Terminal ids are ASCII in practice: one comparison a byte."""
    cdef uint32_t i = 0, k, need, cp
    while i < n:
        if s[i] < 0x80:
            i += 1
            continue
        if 0xc2 <= s[i] <= 0xdf:
            need = 1
            cp = s[i] & 0x1f
        elif 0xe0 <= s[i] <= 0xef:
            need = 2
            cp = s[i] & 0x0f
        elif 0xf0 <= s[i] <= 0xf4:
            need = 3
            cp = s[i] & 0x07
        else:
            return False
        if i + need >= n:                   # a sequence cut off by the end
            return False
        for k in range(1, need + 1):
            if (s[i + k] & 0xc0) != 0x80:
                return False
            cp = (cp << 6) | (s[i + k] & 0x3f)
        if ((need == 2 and (cp < 0x800 or 0xd800 <= cp <= 0xdfff))
                or (need == 3 and (cp < 0x10000 or cp > 0x10ffff))):
            return False
        i += need + 1
    return True


cdef inline bint frame_ends(MpReader* r, uint32_t extra) noexcept nogil:
    """Skip elements a later frame version may add after mac; then the frame must end where
    its array does (msgspec refuses trailing bytes too)."""
    cdef uint32_t _i
    for _i in range(extra):
        if mp_skip(r, 0):
            return False
    return r.pos == r.n
cdef inline int next_seq(MpReader* body, int64_t* seq) noexcept nogil:
    """Read a message's [tag, seq, ...] header and move past the whole message."""
    cdef size_t start = body.pos
    cdef uint32_t count = 0
    cdef int64_t tag = 0
    if mp_array(body, &count) or count < 2 or mp_int(body, &tag) or mp_int(body, seq):
        return -1
    body.pos = start
    return mp_skip(body, 0)


cdef uint32_t refusal_body(const uint8_t* p, uint32_t length, uint32_t batch_max,
                           const uint8_t** tid, uint32_t* tid_len, MpReader* body) noexcept nogil:
    """For a refusal: the frame's terminal id (NULL when unreadable) and its message count
    with ``body`` at the first message, once every message's seq was found readable (0 when
    not: the frame is refused as a whole)."""
    cdef MpReader r
    cdef uint32_t count = 0, body_len = 0, n_msgs = 0, _i
    cdef int64_t version = 0, seq = 0
    cdef uint64_t packed = 0
    cdef const uint8_t* body_p
    r.p = p
    r.n = length
    r.pos = 0
    if (mp_array(&r, &count) or count < 4 or mp_int(&r, &version)
            or mp_str(&r, tid, tid_len) or tid_len[0] != TID_LEN
            or not tid_text(tid[0], &packed)):
        tid[0] = NULL
        tid_len[0] = 0
        return 0
    if mp_bin(&r, &body_p, &body_len):
        return 0
    body.p = body_p
    body.n = body_len
    body.pos = 0
    if mp_array(body, &n_msgs) or n_msgs > batch_max:
        return 0
    for _i in range(n_msgs):
        if next_seq(body, &seq):
            return 0
    body.pos = 0
    mp_array(body, &n_msgs)
    return n_msgs


cdef class NativePath:
    def __init__(self, Authoriser auth, CoreMetrics mx, Router router,
                 uint32_t frame_bytes_max, uint32_t batch_max):
        if frame_bytes_max < 16 or batch_max < 1:
            raise ValueError("frame_bytes_max must be >= 16 bytes and batch_max >= 1")
        self.auth = auth
        self.router = router
        self.st = auth.state
        self.mx = mx
        self.frame_bytes_max = frame_bytes_max
        self.batch_max = batch_max

    cdef size_t run(self, const uint8_t* p, size_t n, OutBuf* out, uint32_t batch,
                    uint32_t* messages, int* close) noexcept nogil:
        # Frames go in groups, as in the ISO 8583 path: read every frame's header, check their
        # MACs together (crypto.mac_many), answer them in order, then MAC the replies together.
        # A lone sign-on changes its terminal's key: it goes in a group of its own.
        # A reply frame is MACed whole, so a frame is answered only when every answer from
        # other regions it needs is there (scan_frame, MODE_PEEK); the first that lacks one
        # stops the answering (pos stays before it) and the rest are scanned to collect.
        cdef Head heads[GROUP]
        cdef MacJob jobs[GROUP]
        cdef size_t pos = 0, at = 0
        cdef uint32_t length, g, j, n_jobs
        cdef Frame f
        while not close[0]:
            g = 0
            while g < GROUP and n - at >= PREFIX:
                length = <uint32_t>load_be(p + at, PREFIX)
                if length > self.frame_bytes_max:
                    if g == 0:
                        # Cannot be framed: say why, then the caller closes the connection.
                        if ob_reserve(out, REPLY_RESERVE + FRAME_RESERVE) == 0:
                            self.begin_reply(out, &f, NULL, 0)
                            self.append_error(out, &f, 0, RC_30, b"frame length above the maximum")
                            self.end_reply(out, &f, NULL, NULL)
                            self.mx.count(batch, KIND_FORMAT, RC_30)
                            messages[0] += 1
                        close[0] = 1
                    break
                if n - at - PREFIX < length:
                    break
                self.read_head(p + at + PREFIX, length, &heads[g])
                if heads[g].lone_signon and g > 0:
                    break
                at += PREFIX + length
                g += 1
                if heads[g - 1].lone_signon:
                    break
            if g == 0:
                break
            n_jobs = 0
            for j in range(g):
                if heads[j].verify:
                    mac_job(&jobs[n_jobs], &self.st.mac_keys[heads[j].term_idx], heads[j].body_p,
                            heads[j].body_len, heads[j].mac)
                    heads[j].job = n_jobs
                    n_jobs += 1
            mac_many(jobs, n_jobs)
            for j in range(g):
                if heads[j].verify and (jobs[heads[j].job].rc != 0
                                        or not mac_equal(heads[j].mac, heads[j].mac_p)):
                    heads[j].rc = RC_A0
                    heads[j].problem = b"MAC check failed"
                elif heads[j].verify:
                    self.authenticated = 1   # a frame MACed with a working key
            n_jobs = 0
            for j in range(g):
                if self.held(&heads[j]):
                    continue
                if self.answer_frame(&heads[j], out, batch, messages, &jobs[n_jobs]) != 0:
                    close[0] = 1             # out of memory: drop this connection only
                    break
                if jobs[n_jobs].key != NULL:
                    n_jobs += 1
                pos += PREFIX + heads[j].length
            mac_many_in(jobs, n_jobs, out.data)
        return pos

    cdef bint repeated(self, const uint8_t* tid, MpReader body,
                       uint32_t n_msgs) noexcept nogil:
        """Whether the ring or the horizon holds a request of this frame's terminal under one
        of its messages' seqs: a retransmission, perhaps (run() checks the MAC and details)."""
        cdef uint64_t packed = 0
        cdef int64_t term_idx, seq = 0
        cdef uint32_t _i
        if tid == NULL or not tid_text(tid, &packed):
            return False
        term_idx = self.st.find_terminal(packed)
        if term_idx < 0:
            return False
        for _i in range(n_msgs):
            next_seq(&body, &seq)
            if seq < 0 or seq > <int64_t>0xffffffff:
                continue
            if holds(self.st.seen(<uint32_t>term_idx, <uint32_t>seq), <uint32_t>seq):
                return True
        return False

    cdef size_t refuse(self, const uint8_t* p, size_t n, OutBuf* out, uint8_t rc,
                       const char* text, bint repeats, uint32_t batch, uint32_t* requests,
                       uint32_t* answered, int* close) noexcept nogil:
        """Answer every complete frame with ErrorReplies (``rc``, ``text``) and do nothing
        else: no MAC, no state read or changed. Each message gets its own ErrorReply with its
        ``seq`` (only [tag, seq] of each is read), so a terminal can tell which requests to
        send again; a frame whose body cannot be read that far gets one ErrorReply with seq 0.
        The terminal id is echoed when it can be read. A frame one of whose seqs the
        terminal's ring or horizon holds may be a retransmission: with ``repeats`` (shedding) it
        goes through run() (MAC and all), whose messages are answered as the first time if
        they are retransmissions and 96 if not (nothing decided, forwarded or journaled)."""
        cdef bint routing = self.router.enabled
        cdef size_t pos = 0
        cdef uint32_t length, n_msgs
        cdef const uint8_t* tid
        cdef uint32_t tid_len
        cdef MpReader body
        cdef Frame f
        cdef size_t text_len = strlen(text)
        while n - pos >= PREFIX:
            length = <uint32_t>load_be(p + pos, PREFIX)
            if ob_reserve(out, REPLY_RESERVE + FRAME_RESERVE):
                close[0] = 1
                break
            if length > self.frame_bytes_max:
                self.begin_reply(out, &f, NULL, 0)   # as in run(): say why, then close
                self.append_error(out, &f, 0, RC_30, b"frame length above the maximum")
                self.end_reply(out, &f, NULL, NULL)
                requests[0] += 1
                close[0] = 1
                break
            if n - pos - PREFIX < length:
                break
            n_msgs = refusal_body(p + pos + PREFIX, length, self.batch_max, &tid, &tid_len,
                                  &body)
            if ob_reserve(out, FRAME_RESERVE + REPLY_RESERVE + n_msgs * (24 + text_len)):
                close[0] = 1
                break
            if repeats and n_msgs and self.repeated(tid, body, n_msgs):
                self.shedding = True
                self.router.enabled = False
                self.run(p + pos, PREFIX + length, out, batch, answered, close)
                self.router.enabled = routing
                self.shedding = False
                pos += PREFIX + length
                continue
            self.begin_reply(out, &f, tid, tid_len)
            if n_msgs == 0:
                self.append_error(out, &f, 0, rc, text)
                requests[0] += 1
            else:
                self.refuse_messages(&body, n_msgs, out, &f, rc, text)
                requests[0] += n_msgs
            self.end_reply(out, &f, NULL, NULL)
            pos += PREFIX + length
        return pos

    cdef void refuse_messages(self, MpReader* body, uint32_t n_msgs, OutBuf* out, Frame* f,
                              uint8_t rc, const char* text) noexcept nogil:
        """One ErrorReply per message of a body refusal_body() checked (so reading cannot
        fail here), with the message's own seq."""
        cdef uint32_t _i
        cdef int64_t seq = 0
        for _i in range(n_msgs):
            next_seq(body, &seq)
            self.append_error(out, f, seq, rc, text)

    # ---- reply frame -------------------------------------------------------------------------

    cdef void begin_reply(self, OutBuf* out, Frame* f, const uint8_t* tid,
                          uint32_t tid_len) noexcept nogil:
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
        k += 5                               # bin32 header, patched in end_reply()
        f.body = out.len + k
        k += 5                               # array32 header, patched in end_reply()
        f.count = 0
        out.len += k

    cdef void end_reply(self, OutBuf* out, Frame* f, MacKey* key, MacJob* later) noexcept nogil:
        """Close a reply frame. Its MAC under key now, or, given ``later``, the job (output
        offsets) that fills the MAC's place when the group's replies are MACed together."""
        cdef uint8_t mac[8]
        cdef size_t body_len = out.len - f.body
        mp_w_array32(out.data + f.body, f.count)
        mp_w_bin32_header(out.data + f.body_header, <uint32_t>body_len)
        if later != NULL and key != NULL and key.alg != 0:
            memset(mac, 0, MAC_BYTES)
            out.len += mp_w_bin(out.data + out.len, mac, MAC_BYTES)
            mac_job(later, key, <const uint8_t*>f.body, body_len,
                    <uint8_t*>(out.len - MAC_BYTES))
        elif key != NULL and mac8(key, out.data + f.body, body_len, mac) == 0:
            out.len += mp_w_bin(out.data + out.len, mac, MAC_BYTES)
        else:
            out.len += mp_w_bin(out.data + out.len, mac, 0)
        store_be(out.data + f.start, out.len - f.start - PREFIX, PREFIX)

    cdef void append_error(self, OutBuf* out, Frame* f, int64_t seq, uint8_t rc,
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

    cdef void read_head(self, const uint8_t* p, uint32_t length, Head* h) noexcept nogil:
        """Read a frame's [version, terminal, body, mac] and check what needs no MAC: the
        problem to answer (``problem``, ``rc``), or a MAC to check (``verify``; a lone
        sign-on's is checked under the master key in answer_frame())."""
        cdef MpReader r, body
        cdef uint32_t count
        cdef int64_t version, tag = 0
        cdef uint64_t packed = 0
        cdef Terminal* term
        memset(h, 0, sizeof(Head))
        h.length = length
        h.term_idx = -1
        h.rc = RC_30
        r.p = p
        r.n = length
        r.pos = 0
        if mp_array(&r, &count) or count < 4:
            h.problem = b"frame is not an array [version, terminal, body, mac]"
        elif mp_int(&r, &version) or version != VERSION:
            h.problem = b"unsupported protocol version"
        elif mp_str(&r, &h.tid, &h.tid_len) or h.tid_len != TID_LEN:
            h.tid = NULL
            h.tid_len = 0
            h.problem = b"terminal id must be a string of 8 characters"
        elif not tid_text(h.tid, &packed):
            # Echoed, it would break a strict client's decoder: answered with an empty id
            # (checked first, since every later problem's answer echoes the id).
            h.tid = NULL
            h.tid_len = 0
            h.problem = b"terminal id is not valid UTF-8"
        elif mp_bin(&r, &h.body_p, &h.body_len) or mp_bin(&r, &h.mac_p, &h.mac_len):
            h.problem = b"body and mac must be binary"
        elif not frame_ends(&r, count - 4):
            h.problem = b"bytes after the frame's array [version, terminal, body, mac]"
        if h.problem != NULL:
            return
        h.term_idx = self.st.find_terminal(packed)
        body.p = h.body_p
        body.n = h.body_len
        body.pos = 0
        if h.term_idx < 0:
            h.rc = RC_03
            h.problem = b"unknown terminal"
            return
        term = &self.st.term[h.term_idx]
        if term.protocol != PROTO_NATIVE:
            h.rc = RC_58
            h.problem = b"terminal is not registered for the native protocol"
        elif mp_array(&body, &h.n_msgs):
            h.problem = b"body is not an array of messages"
        elif h.n_msgs > self.batch_max:
            h.problem = b"batch has more messages than the switch accepts"
        if h.problem != NULL:
            return
        if h.n_msgs == 1 and mp_array(&body, &count) == 0 and count >= 1 \
                and mp_int(&body, &tag) == 0:
            h.lone_signon = tag == TAG_SIGNON
        if h.lone_signon:
            return
        h.rc = RC_A0
        if not term.signed_on:
            h.problem = b"terminal is not signed on"
        elif h.mac_len != MAC_BYTES:
            h.problem = b"MAC check failed"
        else:
            h.verify = 1

    cdef int answer_frame(self, Head* h, OutBuf* out, uint32_t batch, uint32_t* messages,
                          MacJob* reply_mac) noexcept nogil:
        """Answer a frame whose head was read (and its MAC checked, unless a lone sign-on's);
        the reply's MAC is left to ``reply_mac`` (its key stays NULL when there is none to
        compute later). -1 when out of memory."""
        cdef MpReader body
        cdef Frame f
        cdef MacKey tmk_key
        cdef MacKey* key = NULL
        cdef uint32_t _i, n_msgs
        cdef uint8_t mac[8]
        cdef Terminal* term
        reply_mac.key = NULL
        if ob_reserve(out, REPLY_RESERVE + FRAME_RESERVE):
            return -1
        memset(&tmk_key, 0, sizeof(MacKey))
        if h.problem == NULL:
            term = &self.st.term[h.term_idx]
            if not h.lone_signon:
                key = &self.st.mac_keys[h.term_idx]
            elif mackey_set(&tmk_key, term.mac_alg, term.tmk) != 0:
                h.rc = RC_A0
                h.problem = b"terminal is not signed on"
            elif (h.mac_len != MAC_BYTES or mac8(&tmk_key, h.body_p, h.body_len, mac)
                    or not mac_equal(mac, h.mac_p)):
                h.rc = RC_A0
                h.problem = b"MAC check failed"
            else:
                key = &tmk_key
                self.authenticated = 1       # a sign-on MACed with the master key
        self.begin_reply(out, &f, h.tid, h.tid_len)
        if h.problem != NULL:
            self.append_error(out, &f, 0, h.rc, h.problem)
            self.end_reply(out, &f, NULL, NULL)
            mackey_clear(&tmk_key)
            self.mx.count(batch, KIND_FORMAT, h.rc)
            messages[0] += 1
            return 0
        body.p = h.body_p
        body.n = h.body_len
        body.pos = 0
        mp_array(&body, &n_msgs)
        for _i in range(n_msgs):
            if ob_reserve(out, REPLY_RESERVE + FRAME_RESERVE):
                mackey_clear(&tmk_key)
                return -1
            messages[0] += 1
            if self.answer_message(&body, <uint32_t>h.term_idx, n_msgs, out, &f, batch) != 0:
                break                        # the rest of the body cannot be delimited
        self.end_reply(out, &f, key, NULL if key == &tmk_key else reply_mac)
        mackey_clear(&tmk_key)
        return 0

    cdef int answer_message(self, MpReader* body, uint32_t term_idx, uint32_t n_msgs, OutBuf* out,
                            Frame* f, uint32_t batch) noexcept nogil:
        """Decode, authorise and answer one message. -1 when the body is not MessagePack."""
        cdef size_t start = body.pos
        cdef int64_t tag = 0, seq = 0
        cdef const char* problem
        cdef Txn t
        cdef Res r
        cdef int route
        cdef Terminal* term = &self.st.term[term_idx]
        memset(&r, 0, sizeof(Res))
        r.card = NONE32
        problem = parse_message(body, &t, &tag, &seq, n_msgs)
        if is_broken(problem):
            return self.answer_broken(out, f, batch)
        t.terminal = term_idx
        if problem != NULL:
            # Skip the whole message from its start so the next one can be read.
            body.pos = start
            if mp_skip(body, 0):
                return self.answer_broken(out, f, batch)
            self.append_error(out, f, seq, RC_30, problem)
            self.mx.count(batch, KIND_FORMAT, RC_30)
            return 0
        if t.kind == KIND_OTHER:
            self.append_error(out, f, seq, RC_12, b"unknown message tag")
            self.mx.count(batch, KIND_OTHER, RC_12)
            return 0
        if not permits(term, t.kind):
            r.rc = RC_58
        elif t.kind == KIND_HEARTBEAT:
            r.rc = RC_00
        elif t.kind == KIND_DENY_SYNC:
            self.mx.count(batch, t.kind, RC_00)
            return self.answer_deny_sync(&t, out, f)
        elif self.shedding:
            if retransmitted(self.auth, &t):
                decide(self.auth, &t, &r)
            else:
                r.rc = RC_96             # shedding: a new request is not decided
        else:
            route = self.router.route(&t, &r)
            if route == ROUTE_FORWARD:
                # scan_frame found every answer this frame needs: the two walks disagree.
                abort()
            if route == ROUTE_LOCAL:
                decide(self.auth, &t, &r)
        self.mx.count(batch, t.kind, r.rc)
        out.len += write_reply(out.data + out.len, &t, <uint8_t>(tag + REPLY_OFFSET), &r,
                               self.auth.now_s)
        f.count += 1
        return 0

    cdef int answer_deny_sync(self, Txn* t, OutBuf* out, Frame* f) noexcept nogil:
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
                pan = self.st.deny_pan(e)
                nd = 0
                while pan:
                    digits[19 - nd] = <char>(48 + pan % 10)
                    pan //= 10
                    nd += 1
                k += mp_w_str(p + k, digits + 20 - nd, nd)
        out.len += k
        f.count += 1
        return 0

    cdef bint held(self, Head* h) noexcept nogil:
        """Whether a frame is left unanswered for now: it lacks an answer from another region
        (MODE_PEEK), or an earlier frame did (MODE_COLLECT: its requests are collected)."""
        cdef bint routed = (self.router.enabled and h.problem == NULL and not h.lone_signon)
        if routed and self.router.mode != MODE_COLLECT and self.scan_frame(h, MODE_PEEK):
            self.router.mode = MODE_COLLECT
        if self.router.mode != MODE_COLLECT:
            return False
        if routed:
            self.scan_frame(h, MODE_COLLECT)
        return True

    cdef bint scan_frame(self, Head* h, int mode) noexcept nogil:
        """Route a frame's messages without answering them: MODE_PEEK, whether one lacks its
        issuer's answer; MODE_COLLECT, queue every one for its issuer."""
        cdef MpReader body
        cdef uint32_t _i, n_msgs
        cdef int64_t tag = 0, seq = 0
        cdef size_t start
        cdef const char* problem
        cdef Txn t
        cdef Res r
        cdef bint lacking = False
        cdef Terminal* term = &self.st.term[h.term_idx]
        body.p = h.body_p
        body.n = h.body_len
        body.pos = 0
        if mp_array(&body, &n_msgs):
            return False
        self.router.mode = mode
        self.router.begin_frame()
        for _i in range(n_msgs):
            start = body.pos
            problem = parse_message(&body, &t, &tag, &seq, n_msgs)
            if is_broken(problem):
                break
            if problem != NULL:
                body.pos = start
                if mp_skip(&body, 0):
                    break
                continue
            t.terminal = <uint32_t>h.term_idx
            if t.kind == KIND_OTHER or not permits(term, t.kind):
                continue
            if self.router.route(&t, &r) == ROUTE_FORWARD:
                lacking = True
                if mode == MODE_PEEK:
                    break
        self.router.mode = MODE_CONSUME if mode == MODE_PEEK else mode
        return lacking

    cdef int answer_broken(self, OutBuf* out, Frame* f, uint32_t batch) noexcept nogil:
        self.append_error(out, f, 0, RC_30, b"body is not valid MessagePack")
        self.mx.count(batch, KIND_FORMAT, RC_30)
        return -1

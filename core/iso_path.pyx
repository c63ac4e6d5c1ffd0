# cython: language_level=3
"""ISO 8583 on the wire: split a received buffer into frames, decode, check terminal and MAC,
authorise, and encode every reply into one output buffer, in one call per buffer.

Frame checks come first: a length prefix above ``frame_bytes_max`` means the stream cannot be
framed (the caller closes it); anything that can be delimited but not decoded, however short,
is answered with response code 30 and a field 44 naming the problem.

Messages: 0800 sign-on, 0820 echo, 0200 purchase (processing code 00xxxx), balance inquiry
(31xxxx) and void (20xxxx, original STAN in field 61), 0400 reversal of a purchase (00xxxx)
or of a void (20xxxx), 0500 settlement (totals in field 48), 0320 batch upload after a 0500
answered "not balanced" (field 60's network code: 201 a transaction, 202 the end).
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.codes cimport *
from onecard.core.crypto cimport (MAC_BYTES, MacJob, mac_equal, mac_job, mac_many,
                                  mac_many_in)
from onecard.core.decide cimport decide, retransmitted
from onecard.core.forward cimport (MODE_COLLECT, ROUTE_FORWARD, ROUTE_LOCAL,
                                   Router)
from onecard.core.iso_values cimport *
from onecard.core.isocodec cimport *
from onecard.core.journal cimport NONE32
from onecard.core.metrics cimport CoreMetrics
from onecard.core.outbuf cimport OutBuf, ob_reserve
from onecard.core.state cimport *

cdef enum:
    SETTLE_TEXT = 37             # field 48: debit n12, count n6, credit n12, count n6, result n1


cdef inline uint32_t reply_mti(uint32_t mti) noexcept nogil:
    return mti + 10 if (mti // 10) % 2 == 0 else mti


cdef inline int required(IsoMsg* m, uint8_t kind) noexcept nogil:
    """First mandatory field missing for this kind, 0 when all are there."""
    if not has_field(m, 11):
        return 11
    if not has_field(m, 41):
        return 41
    if kind == KIND_ECHO:
        return 0
    if not has_field(m, 42):
        return 42
    if kind == KIND_SIGNON:
        return 0
    if not has_field(m, 64):
        return 64
    if kind == KIND_SETTLE:
        if not has_field(m, 48):
            return 48
        return 60 if not has_field(m, 60) else 0
    if kind == KIND_BATCH_UPLOAD:
        if not has_field(m, 60):
            return 60
        if digits(m, 60, 8, 3) == UPLOAD_END:
            return 48 if not has_field(m, 48) else 0
        if not has_field(m, 3):
            return 3
    if not has_field(m, 2) and not has_field(m, 35):
        return 2
    if kind != KIND_BALANCE and not has_field(m, 4):
        return 4
    if kind == KIND_VOID and not has_field(m, 61):
        return 61
    return 0


cdef inline bint dated(uint8_t kind) noexcept nogil:
    """Replies that carry the settlement date (field 15): sign-on, the 0200 family and
    settlement."""
    return (kind == KIND_SIGNON or kind == KIND_PURCHASE or kind == KIND_BALANCE
            or kind == KIND_VOID or kind == KIND_SETTLE)


cdef inline bint stale_session(Terminal* term, uint8_t kind, uint16_t settle_day) noexcept nogil:
    """After the cut-over a POS still on the previous settlement date's session may settle
    its batch (0500) and reverse (0400), but not start new transactions: 77, sign on again
    (China bank POS practice). A session of unknown date (signed on before the switch
    recorded it) is not held to it."""
    return (term.session_day != 0 and term.session_day < settle_day
            and (kind == KIND_PURCHASE or kind == KIND_BALANCE or kind == KIND_VOID))


cdef inline void copy_if_present(IsoWriter* w, IsoMsg* m, int f) noexcept nogil:
    if has_field(m, f):
        w_copy(w, m, f)


cdef inline void put_local_time(IsoWriter* w, int64_t now_us, int month,
                                int day) noexcept nogil:
    """Fields 12 and 13: the switch's time and date in China (UTC+8)."""
    cdef uint64_t local_s = <uint64_t>(now_us // 1000000 + 8 * 3600) % 86400
    w_n(w, 12, (local_s // 3600) * 10000 + ((local_s // 60) % 60) * 100 + local_s % 60)
    w_n(w, 13, <uint64_t>(month * 100 + day))


cdef inline void put_settle_totals(IsoWriter* w, Res* r) noexcept nogil:
    """Field 48 of a 0510: the switch's totals (debit n12, count n6, credit n12, count n6) and
    whether they match the terminal's (n1)."""
    cdef char buf[SETTLE_TEXT]
    cdef int n
    n = number_text(buf, <uint64_t>r.x[0], 12)
    n += number_text(buf + n, <uint64_t>r.x[1], 6)
    n += number_text(buf + n, <uint64_t>r.x[2], 12)
    n += number_text(buf + n, <uint64_t>r.x[3], 6)
    buf[n] = <char>(48 + r.settle_result)
    w_ans(w, 48, buf, n + 1)


cdef inline void put_balance(IsoWriter* w, int64_t balance_fen) noexcept nogil:
    """Field 54 in the CUPS layout: account type 10, amount type 02, currency 156, sign C or D,
    12-digit amount."""
    cdef char buf[20]
    cdef int i
    cdef int64_t b = -balance_fen if balance_fen < 0 else balance_fen
    memcpy(buf, b"1002156", 7)
    buf[7] = 67 if balance_fen >= 0 else 68
    for i in range(19, 7, -1):
        buf[i] = <char>(48 + b % 10)
        b //= 10
    w_ans(w, 54, buf, 20)


cdef inline void read_txn(Pending* pd, Txn* t) noexcept nogil:
    """What decide() needs of an authorised request, read from its fields."""
    cdef IsoMsg* m = &pd.m
    cdef uint8_t kind = pd.kind
    cdef uint64_t v = 0
    t.kind = kind
    t.proto = PROTO_ISO8583
    t.terminal = <uint32_t>pd.term_idx
    field_u64(m, 11, &v)
    t.seq = <uint32_t>v
    if kind != KIND_SIGNON and kind != KIND_SETTLE:
        if field_pan(m, &t.pan) != 0:
            t.pan = 0
        if field_u64(m, 4, &v) == 0:
            t.amount_fen = <int64_t>v
        if has_field(m, 49):
            t.currency = <uint16_t>digits(m, 49, 0, 3)
        if kind == KIND_VOID:
            t.orig_seq = <uint32_t>digits(m, 61, 6, 6)
    if kind == KIND_BATCH_UPLOAD:
        t.batch_no = <uint32_t>digits(m, 60, 2, 6)
        t.x[0] = <int64_t>digits(m, 60, 8, 3)
        if t.x[0] == UPLOAD_END:
            t.x[1] = <int64_t>digits(m, 48, 0, UPLOAD_COUNT_CHARS)
        else:
            t.direction = KIND_VOID if digits(m, 3, 0, 2) == 20 else KIND_PURCHASE
        if has_field(m, 15):
            t.x[2] = <int64_t>digits(m, 15, 0, 4)
    if kind == KIND_SETTLE:
        t.batch_no = <uint32_t>digits(m, 60, 2, 6)
        t.x[0] = <int64_t>digits(m, 48, 0, 12)
        t.x[1] = <int64_t>digits(m, 48, 12, 6)
        t.x[2] = <int64_t>digits(m, 48, 18, 12)
        t.x[3] = <int64_t>digits(m, 48, 30, 6)


cdef inline size_t write_missing(Pending* pd, OutBuf* out) noexcept nogil:
    """The reply to a request without one of its mandatory fields: response code 30, field 44
    "M" and the field's number ("F" when it is there but malformed). Returns the new end of
    out."""
    cdef IsoMsg* m = &pd.m
    cdef IsoWriter w
    cdef char text[4]
    w_begin(&w, out.data, out.len, pd.hdr, reply_mti(m.mti))
    copy_if_present(&w, m, 11)
    w_ans(&w, 39, b"30", 2)
    copy_if_present(&w, m, 41)
    copy_if_present(&w, m, 42)
    w_ans(&w, 44, text, field_label(text, 70 if pd.malformed else 77, pd.missing))
    return w_end(&w)


cdef enum:
    GROUP = 16                   # frames whose MACs are computed together (stack-bound)

cdef uint8_t NO_MAC[8]           # field 64's placeholder until the group's MACs are computed
memset(NO_MAC, 0, 8)


cdef inline bint is_signon(const uint8_t* msg, uint32_t length) noexcept nogil:
    return length > MTI_OFF + 1 and msg[MTI_OFF] == 0x08 and msg[MTI_OFF + 1] == 0x00


cdef inline uint64_t peek_pan(const uint8_t* frame, size_t avail) noexcept nogil:
    """The card number in field 2 of a framed message, read without decoding it (only to
    prefetch; 0 when there is none). Garbage gives a wrong number, which costs one useless
    prefetch and nothing else: the message is decoded and checked properly later."""
    cdef const uint8_t* msg = frame + PREFIX_BYTES
    cdef size_t off = BITMAP_OFF + 8, nd
    if avail < PREFIX_BYTES + MESSAGE_BYTES_MIN + 1 or not (msg[BITMAP_OFF] & 0x40):
        return 0
    if msg[BITMAP_OFF] & 0x80:
        off += 8                     # secondary bitmap
    if PREFIX_BYTES + off + 1 > avail:
        return 0                     # never read past the received bytes
    nd = (msg[off] >> 4) * 10 + (msg[off] & 15)
    if nd < 12 or nd > 19 or PREFIX_BYTES + off + 1 + (nd + 1) // 2 > avail:
        return 0
    return bcd_u64(msg + off + 1, <int>nd)


cdef class IsoPath:
    def __init__(self, Authoriser auth, CoreMetrics mx, Router router,
                 uint32_t frame_bytes_max):
        if frame_bytes_max < MESSAGE_BYTES_MIN or frame_bytes_max > 65535:
            raise ValueError("frame_bytes_max must be within 21..65535 bytes")
        self.auth = auth
        self.router = router
        self.st = auth.state
        self.mx = mx
        self.frame_bytes_max = frame_bytes_max

    cdef size_t run(self, const uint8_t* p, size_t n, OutBuf* out, uint32_t batch,
                    uint32_t* messages, int* close) noexcept nogil:
        # Frames go in groups: decode and check them all, compute their request MACs together
        # (several DES chains at once, see crypto.mac_many), decide and encode in order, then
        # compute the replies' MACs together into the places left for them. Each frame's card
        # number is read from field 2 before decoding, to start loading its index slot.
        # Once a frame must go to another region (router.mode turns MODE_COLLECT) nothing more
        # is answered: pos stays before it while the scan goes on collecting.
        cdef Pending group[GROUP]
        cdef MacJob jobs[GROUP]
        cdef size_t pos = 0, at = 0
        cdef uint32_t length, j, g, n_jobs
        cdef Pending* pd
        while not close[0]:
            g = 0
            while g < GROUP and n - at >= PREFIX_BYTES:
                length = (<uint32_t>p[at] << 8) | p[at + 1]
                if length > self.frame_bytes_max:
                    close[0] = 1             # more than any message: not a frame we can hold
                    break
                if n - at - PREFIX_BYTES < length:
                    break
                # A sign-on changes its terminal's MAC key: it goes in a group of its own, so
                # no MAC of a group is computed with a key that changes within it.
                if g > 0 and is_signon(p + at + PREFIX_BYTES, length):
                    break
                group[g].pan_hint = peek_pan(p + at, n - at)
                self.st.prefetch(group[g].pan_hint, 0)
                self.prepare(p + at + PREFIX_BYTES, length, &group[g])
                at += PREFIX_BYTES + length
                g += 1
                if group[g - 1].kind == KIND_SIGNON:
                    break
            if g == 0:
                break
            # The card lookups in passes over the group (index slots above, then the cards,
            # then after the MACs the accounts): in a tight pass many misses are in flight.
            for j in range(g):
                self.st.prefetch(group[j].pan_hint, 1)
            n_jobs = 0
            for j in range(g):
                pd = &group[j]
                if pd.verify:
                    mac_job(&jobs[n_jobs], &self.st.mac_keys[pd.term_idx], pd.msg + MTI_OFF,
                            pd.m.off[64] - MTI_OFF, pd.mac)
                    pd.job = n_jobs
                    n_jobs += 1
            mac_many(jobs, n_jobs)
            for j in range(g):
                self.st.prefetch(group[j].pan_hint, 2)
            n_jobs = 0
            for j in range(g):
                pd = &group[j]
                if ob_reserve(out, REPLY_MAX):
                    close[0] = 1             # out of memory: drop the connection, keep serving
                    break
                if self.finish(pd, pd.verify and jobs[pd.job].rc == 0
                               and mac_equal(pd.mac, pd.msg + pd.m.off[64]), out, batch,
                               &jobs[n_jobs]):
                    continue                 # waits for its issuer's answer
                if jobs[n_jobs].key != NULL:
                    n_jobs += 1
                pos += PREFIX_BYTES + pd.length
                messages[0] += 1
            mac_many_in(jobs, n_jobs, out.data)
        return pos

    cdef bint repeated(self, IsoMsg* m, const uint8_t* msg) noexcept nogil:
        """Whether the ring or the horizon holds a request of this frame's terminal under its
        STAN: a retransmission, perhaps (a terminal lookup and a ring or horizon probe; the
        MAC and the request's details are checked by run())."""
        cdef uint64_t tid = 0, stan
        cdef int64_t term_idx
        cdef int i
        if not has_field(m, 41) or field_u64(m, 11, &stan) != 0:
            return False
        for i in range(8):
            tid = (tid << 8) | msg[m.off[41] + i]
        term_idx = self.st.find_terminal(tid)
        return term_idx >= 0 and holds(self.st.seen(<uint32_t>term_idx, <uint32_t>stan),
                                       <uint32_t>stan)

    cdef size_t refuse(self, const uint8_t* p, size_t n, OutBuf* out, uint8_t rc,
                       bint repeats, uint32_t batch, uint32_t* frames, uint32_t* answered,
                       int* close) noexcept nogil:
        """Answer every complete frame with ``rc`` (96 when shedding load) and do nothing
        else: no card lookup, no MAC, no state read or changed. A decode (~100 ns) finds the
        fields a terminal matches a reply by (STAN, terminal, merchant); the reply has no
        field 64, as a decline for a switch fault may go without a MAC. With ``repeats``
        (shedding), a frame whose STAN the terminal's ring or horizon holds is a
        retransmission, perhaps: it goes through run() (MAC and all), which answers it as the
        first time if it is one and 96 if not (``shedding``: nothing is decided, forwarded or
        journaled); ``answered`` counts them."""
        cdef bint routing = self.router.enabled
        cdef size_t pos = 0
        cdef uint32_t length
        cdef int dec
        cdef IsoMsg m
        cdef IsoWriter w
        cdef uint8_t hdr[HDR_BYTES]
        cdef const uint8_t* msg
        while n - pos >= PREFIX_BYTES:
            length = (<uint32_t>p[pos] << 8) | p[pos + 1]
            if length > self.frame_bytes_max:
                close[0] = 1                 # as in run(): not a frame we can hold
                break
            if n - pos - PREFIX_BYTES < length:
                break
            if ob_reserve(out, REPLY_MAX):
                close[0] = 1
                break
            msg = p + pos + PREFIX_BYTES
            dec = iso_decode(msg, length, &m)
            if repeats and dec == DEC_OK and self.repeated(&m, msg):
                self.shedding = True
                self.router.enabled = False
                self.run(p + pos, PREFIX_BYTES + length, out, batch, answered, close)
                self.router.enabled = routing
                self.shedding = False
                pos += PREFIX_BYTES + length
                continue
            reply_header(msg, length, hdr)
            w_begin(&w, out.data, out.len, hdr,
                    reply_mti(m.mti) if dec != DEC_SHORT and dec != DEC_MTI else 0)
            if dec == DEC_OK:
                copy_if_present(&w, &m, 11)
            w_ans(&w, 39, rc_chars(rc), 2)
            if dec == DEC_OK:
                copy_if_present(&w, &m, 41)
                copy_if_present(&w, &m, 42)
            out.len = w_end(&w)
            pos += PREFIX_BYTES + length
            frames[0] += 1
        return pos

    cdef void answer_format_error(self, IsoMsg* m, int rc, const uint8_t* hdr, OutBuf* out,
                                  uint32_t batch) noexcept nogil:
        cdef IsoWriter w
        cdef char text[4]
        cdef int f = m.err_field
        cdef uint32_t mti = reply_mti(m.mti) if rc == DEC_FIELD or rc == DEC_TRAILING else 0
        w_begin(&w, out.data, out.len, hdr, mti)
        if rc == DEC_FIELD:
            # Only fields before the broken one were located.
            if has_field(m, 11) and f > 11:
                w_copy(&w, m, 11)
            w_ans(&w, 39, b"30", 2)
            if has_field(m, 41) and f > 41:
                w_copy(&w, m, 41)
            if has_field(m, 42) and f > 42:
                w_copy(&w, m, 42)
            w_ans(&w, 44, text, field_label(text, 70, f))
        else:
            if rc == DEC_TRAILING and has_field(m, 11):
                w_copy(&w, m, 11)
            w_ans(&w, 39, b"30", 2)
            if rc == DEC_TRAILING:
                w_ans(&w, 44, b"TRAILING BYTES", 14)
            elif rc == DEC_MTI:
                w_ans(&w, 44, b"MTI NOT BCD", 11)
            else:
                w_ans(&w, 44, b"TOO SHORT", 9)
        out.len = w_end(&w)
        self.mx.count(batch, KIND_FORMAT, RC_30)

    cdef void prepare(self, const uint8_t* msg, uint32_t length, Pending* pd) noexcept nogil:
        """Decode a request and check what needs no state that a request changes: its fields,
        terminal and merchant; whether its MAC is to be checked (``verify``)."""
        cdef uint64_t v = 0, tid = 0, proc
        cdef int i
        cdef IsoMsg* m = &pd.m
        cdef Terminal* term
        pd.msg = msg
        pd.length = length
        pd.kind = KIND_OTHER
        pd.missing = 0
        pd.malformed = 0
        pd.proc_code = 0
        pd.verify = 0
        pd.term_idx = -1
        pd.rc = RC_00
        pd.dec = iso_decode(msg, length, m)
        reply_header(msg, length, pd.hdr)
        if pd.dec != DEC_OK:
            return
        if m.mti == 800:
            pd.kind = KIND_SIGNON
        elif m.mti == 820:
            pd.kind = KIND_ECHO
        elif m.mti == 500:
            pd.kind = KIND_SETTLE
        elif m.mti == 320:
            pd.kind = KIND_BATCH_UPLOAD
            if field_u64(m, 3, &v) == 0:
                pd.proc_code = <uint32_t>v
        elif m.mti == 200 or m.mti == 400:
            if field_u64(m, 3, &v) == 0:
                pd.proc_code = <uint32_t>v
                proc = v // 10000
                if proc == 0:
                    pd.kind = KIND_PURCHASE if m.mti == 200 else KIND_REVERSAL
                elif proc == 31 and m.mti == 200:
                    pd.kind = KIND_BALANCE
                elif proc == 20:
                    pd.kind = KIND_VOID if m.mti == 200 else KIND_REVERSAL
        if pd.kind != KIND_OTHER:
            pd.missing = required(m, pd.kind)
            if pd.missing == 0 and pd.kind == KIND_BATCH_UPLOAD:
                pd.missing = malformed_upload(m)
                pd.malformed = pd.missing != 0
        elif (m.mti == 200 or m.mti == 400) and not has_field(m, 3):
            pd.missing = 3
        if pd.missing:
            return
        if has_field(m, 41):
            for i in range(8):
                tid = (tid << 8) | msg[m.off[41] + i]
            pd.term_idx = self.st.find_terminal(tid)
        if pd.kind == KIND_OTHER:
            pd.rc = RC_12
        elif pd.term_idx < 0:
            pd.rc = RC_03
        else:
            term = &self.st.term[pd.term_idx]
            if has_field(m, 42) and memcmp(term.merchant, msg + m.off[42], 15) != 0:
                pd.rc = RC_03
            elif pd.kind != KIND_SIGNON and (pd.kind != KIND_ECHO or has_field(m, 64)):
                if not term.signed_on:
                    pd.rc = RC_A0
                else:
                    pd.verify = 1

    cdef int finish(self, Pending* pd, bint mac_ok, OutBuf* out, uint32_t batch,
                    MacJob* reply_mac) noexcept nogil:
        """Answer a prepared request (mac_ok: its MAC was checked and matches), in order; the
        reply's MAC is left to ``reply_mac`` (its key stays NULL when the reply has none).
        1 when nothing was answered: the request waits for another region (router)."""
        cdef Txn t
        cdef Res r
        cdef Terminal* term
        cdef int route
        cdef bint collecting = self.router.mode == MODE_COLLECT
        reply_mac.key = NULL
        if pd.dec != DEC_OK:
            if collecting:
                return 1
            self.answer_format_error(&pd.m, pd.dec, pd.hdr, out, batch)
            return 0
        if pd.missing:
            if collecting:
                return 1
            out.len = write_missing(pd, out)
            self.mx.count(batch, KIND_FORMAT, RC_30)
            return 0
        memset(&r, 0, sizeof(Res))
        memset(&t, 0, sizeof(Txn))
        r.card = NONE32
        r.rc = pd.rc
        t.proc_code = pd.proc_code
        if pd.verify and not mac_ok:
            r.rc = RC_A0
        if r.rc == RC_00 and pd.term_idx >= 0:
            term = &self.st.term[pd.term_idx]
            if term.protocol != PROTO_ISO8583 or not permits(term, pd.kind):
                r.rc = RC_58
        if r.rc == RC_00 and pd.kind != KIND_ECHO:
            read_txn(pd, &t)
            # A retransmission gets its original answer whatever the date (the ring's slot
            # holds its STAN); only a new request of a stale session is sent to sign on.
            if (stale_session(&self.st.term[t.terminal], pd.kind, self.auth.settle_day)
                    and not holds(self.st.seen(t.terminal, t.seq), t.seq)):
                r.rc = RC_77
        if r.rc == RC_00 and pd.kind != KIND_ECHO and self.shedding:
            if not retransmitted(self.auth, &t):
                r.rc = RC_96               # shedding: a new request is not decided
            else:
                decide(self.auth, &t, &r)
        elif r.rc == RC_00 and pd.kind != KIND_ECHO:
            route = self.router.route(&t, &r)
            if route == ROUTE_FORWARD or (route == ROUTE_LOCAL and collecting):
                return 1
            if route == ROUTE_LOCAL:
                decide(self.auth, &t, &r)
        elif collecting:
            return 1
        self.encode_reply(pd, &t, &r, reply_mac if pd.verify and mac_ok else NULL, out)
        self.mx.count(batch, pd.kind, r.rc)
        return 0

    cdef void encode_reply(self, Pending* pd, Txn* t, Res* r, MacJob* later,
                           OutBuf* out) noexcept nogil:
        """Encode the reply; given ``later``, leave field 64 empty and record there (as output
        offsets, for crypto.mac_many_in) the MAC that fills it."""
        cdef IsoMsg* m = &pd.m
        cdef uint8_t kind = pd.kind
        cdef IsoWriter w
        cdef size_t mac_start
        cdef bint money = kind == KIND_PURCHASE or kind == KIND_VOID
        cdef bint ok = r.rc == RC_00
        w_begin(&w, out.data, out.len, pd.hdr, reply_mti(m.mti))
        copy_if_present(&w, m, 2)
        copy_if_present(&w, m, 3)
        copy_if_present(&w, m, 4)
        if money and ok:
            w_n(&w, 6, <uint64_t>r.amount_fen)     # what was charged (or credited) in fen
        copy_if_present(&w, m, 11)           # absent only in requests of no known kind
        put_local_time(&w, self.auth.now_us, self.auth.today_m, self.auth.today_d)
        copy_if_present(&w, m, 14)
        if dated(kind):                      # 0810, 0210, 0510: the settlement date (MMDD)
            w_n(&w, 15, <uint64_t>(self.auth.settle_m * 100 + self.auth.settle_d))
        copy_if_present(&w, m, 25)
        if r.recorded:
            put_text_number(&w, 37, r.record_no, 12)
        if ok and (money or kind == KIND_REVERSAL):
            put_text_number(&w, 38, r.record_no % 1000000, 6)
        w_ans(&w, 39, rc_chars(r.rc), 2)
        copy_if_present(&w, m, 41)
        copy_if_present(&w, m, 42)
        if kind == KIND_SETTLE and ok:
            put_settle_totals(&w, r)
        copy_if_present(&w, m, 49)
        if money and ok:
            w_ans(&w, 51, b"156", 3)
        if kind == KIND_BALANCE and ok:
            put_balance(&w, r.balance_fen)
        copy_if_present(&w, m, 60)
        copy_if_present(&w, m, 61)
        if kind == KIND_SIGNON and ok:
            w_b(&w, 62, r.keys, 40)
        if later != NULL:
            mac_start = w_mac_begin(&w)
            mac_job(later, &self.st.mac_keys[pd.term_idx], <const uint8_t*>mac_start,
                    w.pos - mac_start, <uint8_t*>w.pos)
            w_b(&w, 64, NO_MAC, MAC_BYTES)
        out.len = w_end(&w)

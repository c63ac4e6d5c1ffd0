# cython: language_level=3
"""Compiled terminal simulators for the load generator: build MACed requests and read replies
in batches, measuring each request's latency from its send time, so that one generator core
can keep a switch core busy.

``IsoLoad`` plays one POS terminal (purchases and balance inquiries over ISO 8583).
``NativeLoad`` plays a station's gates, a bus reader and a verifier over the native protocol
(metro tap-in/tap-out pairs, bus taps, identity verifications).
Latencies go into a shared histogram: 1 µs buckets up to 100 ms, then 1 ms buckets up to 60 s
(``bucket_value_us`` maps a bucket back to its value). A request's latency is measured from its
send time, or in open loop from the time it was *scheduled* to be sent (``build(n, first_ns,
interval_ns)``), so a generator that falls behind does not hide queueing.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer

import numpy as np

from onecard.core.codes cimport N_RC, RC_77, RC_96, rc_index
from onecard.core.crypto cimport MAC_BYTES, MacKey, mac8, mackey_clear, mackey_set
from onecard.core.isocodec cimport *
from onecard.core.wire cimport load_be, monotonic_ns, store_be
from onecard.core.mpack cimport *
from onecard.core.native_msg cimport PREFIX, TAG_TAP, TAG_VERIFY
from onecard.core.outbuf cimport OutBuf, ob_free, ob_reserve


cdef enum:
    FINE_US = 100000                      # 1 µs buckets below 100 ms
    COARSE = 60000                        # then 1 ms buckets up to 60 s (the last open-ended)
    N_BUCKETS = FINE_US + COARSE
    SLOTS = 65536                         # in-flight requests tracked per terminal (power of 2)
    STAN_MAX = 999999

LATENCY_BUCKETS = N_BUCKETS


def monotonic_ns_py() -> int:
    """The clock requests are stamped with (CLOCK_MONOTONIC, ns)."""
    return monotonic_ns()


def bucket_values_us():
    """The latency (µs) each histogram bucket stands for."""
    fine = np.arange(FINE_US, dtype=np.int64)
    coarse = FINE_US + np.arange(COARSE, dtype=np.int64) * 1000
    return np.concatenate([fine, coarse])


cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15   # seeds far apart in xorshift's state space


cdef inline uint64_t xorshift(uint64_t* s) noexcept nogil:
    cdef uint64_t x = s[0]
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    s[0] = x
    return x


cdef struct Flight:
    uint64_t sent_ns
    uint32_t seq


cdef class Recorder:
    """Counters shared by all simulated connections of one generator process."""
    cdef readonly object histogram       # uint64[LATENCY_BUCKETS]
    cdef readonly object answered        # the same for replies other than 96 (not shed)
    cdef readonly object codes           # uint64[N_RC] replies by response code
    cdef uint64_t* hist
    cdef uint64_t* hist_answered
    cdef uint64_t* rc
    cdef public uint64_t completed, sent, max_us, unmatched

    def __init__(self):
        self.histogram = np.zeros(N_BUCKETS, dtype=np.uint64)
        self.answered = np.zeros(N_BUCKETS, dtype=np.uint64)
        self.hist_answered = <uint64_t*><size_t>self.answered.ctypes.data
        self.codes = np.zeros(N_RC, dtype=np.uint64)
        self.hist = <uint64_t*><size_t>self.histogram.ctypes.data
        self.rc = <uint64_t*><size_t>self.codes.ctypes.data
        self.completed = self.sent = self.max_us = self.unmatched = 0

    cdef inline void done(self, Flight* f, uint32_t seq, uint8_t rc, uint64_t now) noexcept nogil:
        cdef uint64_t us, b
        if f.seq != seq or f.sent_ns == 0:
            self.unmatched += 1
            return
        us = (now - f.sent_ns) // 1000 if now > f.sent_ns else 0
        f.sent_ns = 0
        if us > self.max_us:
            self.max_us = us
        b = us if us < FINE_US else FINE_US + min((us - FINE_US) // 1000, COARSE - 1)
        self.hist[b] += 1
        if rc != RC_96:
            self.hist_answered[b] += 1          # shed replies (96) kept out of this one
        self.rc[rc if rc < N_RC else RC_96] += 1
        self.completed += 1


cdef class IsoLoad:
    cdef Recorder rec
    cdef uint64_t* pans
    cdef uint32_t n_pans
    cdef object _pans
    cdef MacKey key
    cdef uint8_t hdr[HDR_BYTES]
    cdef char tid[8]
    cdef char merchant[15]
    cdef uint32_t stan
    cdef uint32_t balance_per_mille
    cdef uint64_t rng
    cdef Flight flights[SLOTS]
    cdef OutBuf out
    cdef int mac_alg
    # replies answered 77 (the switch's cut-over: the session is of the previous settlement
    # date) since the caller last set this back to 0 after signing on again
    cdef public uint32_t stale

    def __init__(self, Recorder recorder, str tid, str merchant, int mac_alg, bytes mak,
                 pans, *, double balance_share=0.0, uint64_t seed=1, uint32_t first_stan=1):
        self.rec = recorder
        self._pans = np.ascontiguousarray(pans, dtype=np.uint64)
        if len(self._pans) == 0:
            raise ValueError("no cards to use")
        self.pans = <uint64_t*><size_t>self._pans.ctypes.data
        self.n_pans = len(self._pans)
        memset(&self.key, 0, sizeof(MacKey))
        if len(mak) != 16 or mackey_set(&self.key, mac_alg, mak) != 0:
            raise ValueError("bad MAC key")
        self.mac_alg = mac_alg
        self.stale = 0
        tid_b = tid.encode("ascii")
        merchant_b = merchant.encode("ascii")
        if len(tid_b) != 8 or len(merchant_b) != 15:
            raise ValueError("terminal id is 8 characters, merchant id 15")
        memcpy(self.tid, <const char*>tid_b, 8)
        memcpy(self.merchant, <const char*>merchant_b, 15)
        memset(self.hdr, 0, HDR_BYTES)
        self.hdr[0] = 0x60
        self.hdr[2] = 0x03                  # destination 0003, source 0000
        self.hdr[5] = 0x60
        self.hdr[6] = 0x31
        self.stan = first_stan
        self.balance_per_mille = <uint32_t>(balance_share * 1000)
        self.rng = seed * GOLDEN + 1
        memset(self.flights, 0, sizeof(self.flights))

    def __dealloc__(self):
        mackey_clear(&self.key)
        ob_free(&self.out)

    def rekey(self, bytes mak) -> None:
        """The working MAC key of a new sign-on (after the cut-over sent this one to sign
        on again)."""
        if len(mak) != 16 or mackey_set(&self.key, self.mac_alg, mak) != 0:
            raise ValueError("bad MAC key")

    def build(self, uint32_t count, uint64_t first_ns=0, uint64_t interval_ns=0) -> bytes:
        """``count`` new MACed requests, stamped with their send time (now), or in open loop
        with their scheduled times ``first_ns + i * interval_ns``."""
        cdef IsoWriter w
        cdef uint8_t mac[8]
        cdef char digits[20]
        cdef uint64_t pan, r, now = first_ns if first_ns else monotonic_ns()
        cdef uint32_t _i
        cdef int n
        cdef size_t start
        self.out.len = 0
        for _i in range(count):
            if ob_reserve(&self.out, REPLY_MAX):
                raise MemoryError()
            r = xorshift(&self.rng)
            pan = self.pans[r % self.n_pans]
            n = 0
            while pan:
                digits[19 - n] = <char>(48 + pan % 10)
                pan //= 10
                n += 1
            w_begin(&w, self.out.data, self.out.len, self.hdr, 200)
            w_digits(&w, 2, digits + 20 - n, n)
            if (r >> 40) % 1000 < self.balance_per_mille:
                w_n(&w, 3, 310000)
            else:
                w_n(&w, 3, 0)
                w_n(&w, 4, 100 + (r >> 20) % 4900)
            w_n(&w, 11, self.stan)
            w_n(&w, 22, 21)
            w_n(&w, 25, 0)
            w_ans(&w, 41, self.tid, 8)
            w_ans(&w, 42, self.merchant, 15)
            w_ans(&w, 49, b"156", 3)
            start = w_mac_begin(&w)
            mac8(&self.key, self.out.data + start, w.pos - start, mac)
            w_b(&w, 64, mac, MAC_BYTES)
            self.out.len = w_end(&w)
            self.flights[self.stan & (SLOTS - 1)].seq = self.stan
            self.flights[self.stan & (SLOTS - 1)].sent_ns = now
            now += interval_ns
            self.stan = self.stan + 1 if self.stan < STAN_MAX else 1
        self.rec.sent += count
        return PyBytes_FromStringAndSize(<char*>self.out.data, self.out.len)

    def parse(self, data) -> tuple:
        """Read complete replies: (bytes consumed, replies completed)."""
        cdef Py_buffer view
        cdef const uint8_t* p
        cdef size_t pos = 0, n
        cdef uint32_t length, done = 0
        cdef uint64_t stan, now = monotonic_ns()
        cdef IsoMsg m
        cdef uint8_t rc
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const uint8_t*>view.buf
            n = view.len
            while n - pos >= 2:
                length = <uint32_t>load_be(p + pos, 2)
                if n - pos - 2 < length:
                    break
                if iso_decode(p + pos + 2, length, &m) == DEC_OK and field_u64(&m, 11, &stan) == 0:
                    rc = RC_96
                    if has_field(&m, 39):
                        rc = rc_index(p[pos + 2 + m.off[39]], p[pos + 3 + m.off[39]])
                    if rc == RC_77:
                        self.stale += 1
                    self.rec.done(&self.flights[stan & (SLOTS - 1)], <uint32_t>stan, rc, now)
                else:
                    self.rec.unmatched += 1
                done += 1
                pos += 2 + length
        finally:
            PyBuffer_Release(&view)
        return pos, done


cdef struct Sim:                          # one simulated native terminal
    MacKey key
    uint32_t seq
    uint32_t station
    uint8_t tid[8]
    Flight flights[SLOTS]


cdef class NativeLoad:
    """Gates at two stations of one metro network, a bus reader and a verifier on one link."""
    cdef Recorder rec
    cdef Sim* sims
    cdef int n_sims
    cdef int gate_in, gate_out, bus, verifier
    cdef uint64_t* pans
    cdef uint32_t n_pans
    cdef object _pans
    cdef uint32_t* riders                 # cards inside the metro, waiting to tap out
    cdef uint32_t riders_head, riders_len, riders_cap
    cdef uint32_t verify_per_mille, bus_per_mille
    cdef uint64_t rng
    cdef OutBuf out
    cdef OutBuf body

    def __init__(self, Recorder recorder, list terminals, pans, *, double verify_share=0.1,
                 double bus_share=0.2, uint64_t seed=1):
        """``terminals``: (role, tid, mac_alg, mak, station_id) with roles "gate_in",
        "gate_out", "bus", "verifier" (any may be missing)."""
        cdef int i
        self.rec = recorder
        self._pans = np.ascontiguousarray(pans, dtype=np.uint64)
        if len(self._pans) == 0:
            raise ValueError("no cards to use")
        self.pans = <uint64_t*><size_t>self._pans.ctypes.data
        self.n_pans = len(self._pans)
        self.n_sims = len(terminals)
        self.sims = <Sim*>calloc(self.n_sims, sizeof(Sim))
        self.riders_cap = 1 << 16
        self.riders = <uint32_t*>calloc(self.riders_cap, sizeof(uint32_t))
        if self.sims == NULL or self.riders == NULL:
            raise MemoryError()
        self.gate_in = self.gate_out = self.bus = self.verifier = -1
        for i, (role, tid, alg, mak, station) in enumerate(terminals):
            if len(mak) != 16 or mackey_set(&self.sims[i].key, alg, mak) != 0:
                raise ValueError(f"bad MAC key for {tid}")
            tid_b = tid.encode("ascii")
            if len(tid_b) != 8:
                raise ValueError(f"terminal id must be 8 characters: {tid!r}")
            memcpy(self.sims[i].tid, <const char*>tid_b, 8)
            self.sims[i].seq = 1
            self.sims[i].station = station or 0
            if role == "gate_in":
                self.gate_in = i
            elif role == "gate_out":
                self.gate_out = i
            elif role == "bus":
                self.bus = i
            elif role == "verifier":
                self.verifier = i
            else:
                raise ValueError(f"unknown role {role!r}")
        self.verify_per_mille = <uint32_t>(verify_share * 1000) if self.verifier >= 0 else 0
        self.bus_per_mille = <uint32_t>(bus_share * 1000) if self.bus >= 0 else 0
        self.rng = seed * GOLDEN + 1

    def __dealloc__(self):
        if self.sims != NULL:
            for i in range(self.n_sims):
                mackey_clear(&self.sims[i].key)
            free(self.sims)
        free(self.riders)
        ob_free(&self.out)
        ob_free(&self.body)

    cdef void frame(self, int t, uint8_t tag, uint64_t pan, uint32_t station, uint8_t direction,
                    uint64_t now) noexcept nogil:
        cdef Sim* s = &self.sims[t]
        cdef char digits[20]
        cdef int n = 0
        cdef size_t k = 0, start
        cdef uint8_t mac[8]
        cdef uint8_t* b
        ob_reserve(&self.body, 256)
        b = self.body.data
        b[k] = 0x91                        # one message per frame, as online gates send
        k += 1
        b[k] = 0x96 if tag == TAG_TAP else 0x93
        k += 1
        k += mp_w_int(b + k, tag)
        k += mp_w_int(b + k, s.seq)
        while pan:
            digits[19 - n] = <char>(48 + pan % 10)
            pan //= 10
            n += 1
        k += mp_w_str(b + k, digits + 20 - n, n)
        if tag == TAG_TAP:
            k += mp_w_int(b + k, station)
            k += mp_w_int(b + k, direction)
            k += mp_w_int(b + k, 0)           # 0: the switch stamps the tap with its clock
        mac8(&s.key, b, k, mac)
        ob_reserve(&self.out, k + 64)
        start = self.out.len
        self.out.len += PREFIX
        self.out.data[self.out.len] = 0x94
        self.out.len += 1
        self.out.len += mp_w_int(self.out.data + self.out.len, 1)
        self.out.len += mp_w_str(self.out.data + self.out.len, <const char*>s.tid, 8)
        self.out.len += mp_w_bin(self.out.data + self.out.len, b, <uint32_t>k)
        self.out.len += mp_w_bin(self.out.data + self.out.len, mac, MAC_BYTES)
        store_be(self.out.data + start, self.out.len - start - PREFIX, PREFIX)
        s.flights[s.seq & (SLOTS - 1)].seq = s.seq
        s.flights[s.seq & (SLOTS - 1)].sent_ns = now
        s.seq += 1

    def build(self, uint32_t count, uint64_t first_ns=0, uint64_t interval_ns=0) -> bytes:
        """``count`` new request frames (see IsoLoad.build for the time stamps)."""
        cdef uint64_t r, now = first_ns if first_ns else monotonic_ns()
        cdef uint32_t _i, card, pick
        self.out.len = 0
        for _i in range(count):
            r = xorshift(&self.rng)
            pick = <uint32_t>((r >> 40) % 1000)
            card = <uint32_t>(r % self.n_pans)
            if pick < self.verify_per_mille:
                self.frame(self.verifier, TAG_VERIFY, self.pans[card], 0, 0, now)
            elif pick < self.verify_per_mille + self.bus_per_mille or self.gate_in < 0:
                self.frame(self.bus, TAG_TAP, self.pans[card], 0, 0, now)
            elif self.riders_len and (self.riders_len >= self.riders_cap or (r >> 20) & 1):
                card = self.riders[self.riders_head]
                self.riders_head = (self.riders_head + 1) % self.riders_cap
                self.riders_len -= 1
                self.frame(self.gate_out, TAG_TAP, self.pans[card],
                           self.sims[self.gate_out].station, 1, now)
            else:
                self.riders[(self.riders_head + self.riders_len) % self.riders_cap] = card
                self.riders_len += 1
                self.frame(self.gate_in, TAG_TAP, self.pans[card],
                           self.sims[self.gate_in].station, 0, now)
            now += interval_ns
        self.rec.sent += count
        return PyBytes_FromStringAndSize(<char*>self.out.data, self.out.len)

    def parse(self, data) -> tuple:
        """Read complete reply frames: (bytes consumed, replies completed)."""
        cdef Py_buffer view
        cdef const uint8_t* p
        cdef size_t pos = 0, n
        cdef uint32_t length, done = 0, count, _i, k, tid_len, body_len, rc_len, t
        cdef uint64_t now = monotonic_ns()
        cdef MpReader r, body
        cdef int64_t v, seq
        cdef const uint8_t* tid
        cdef const uint8_t* s
        cdef int sim
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const uint8_t*>view.buf
            n = view.len
            while n - pos >= PREFIX:
                length = <uint32_t>load_be(p + pos, PREFIX)
                if n - pos - PREFIX < length:
                    break
                r.p = p + pos + PREFIX
                r.n = length
                r.pos = 0
                sim = -1
                if (mp_array(&r, &count) == 0 and mp_int(&r, &v) == 0
                        and mp_str(&r, &tid, &tid_len) == 0 and tid_len == 8
                        and mp_bin(&r, &s, &body_len) == 0):
                    for t in range(self.n_sims):
                        if memcmp8(self.sims[t].tid, tid):
                            sim = t
                    body.p = s
                    body.n = body_len
                    body.pos = 0
                    if sim >= 0 and mp_array(&body, &count) == 0:
                        for _i in range(count):
                            if (mp_array(&body, &k) or mp_int(&body, &v) or mp_int(&body, &seq)
                                    or mp_str(&body, &s, &rc_len)):
                                break
                            self.rec.done(&self.sims[sim].flights[seq & (SLOTS - 1)],
                                          <uint32_t>seq,
                                          rc_index(s[0], s[1]) if rc_len == 2 else RC_96,
                                          now)
                            done += 1
                            for _ in range(k - 3):
                                if mp_skip(&body, 0):
                                    break
                if sim < 0:
                    self.rec.unmatched += 1
                pos += PREFIX + length
        finally:
            PyBuffer_Release(&view)
        return pos, done


cdef inline bint memcmp8(const uint8_t* a, const uint8_t* b) noexcept nogil:
    cdef int i
    for i in range(8):
        if a[i] != b[i]:
            return False
    return True

# cython: language_level=3
"""Authorisation rules (SPEC §4) for purchases, balance inquiries, reversals, transit taps,
identity verification and sign-on.

Protocol paths have already checked the frame, the terminal (known, MAC, permitted for the
kind). From here the order is: duplicate (same terminal and STAN/sequence: the original answer
again, never a second effect; the ring is consulted before the card's current status so that a
retry is answered as the original was even if the card has been reported lost since), card
known and usable, function loaded, catalogue acceptance for the card's province at the
terminal's, amount, daily limit, funds. An approved effect is written as a journal record and
applied from that record.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from onecard.core.codes cimport *
from onecard.core.crypto cimport KEY_BYTES, check_value, random_bytes, wrap_key
from onecard.core.journal cimport NONE32, JRec, Journal
from onecard.core.state cimport *

import numpy as np

TXN_DTYPE = np.dtype([("pan", "<u8"), ("amount_fen", "<i8"), ("terminal", "<u4"),
                      ("seq", "<u4"), ("station_id", "<u4"), ("time_s", "<u4"),
                      ("proc_code", "<u4"), ("currency", "<u2"), ("kind", "u1"),
                      ("proto", "u1"), ("direction", "u1")], align=True)
assert TXN_DTYPE.itemsize == sizeof(Txn)

cdef enum:
    PREFETCH_AHEAD = 8               # messages between prefetch stages (slot, card, account)
    CNY = 156
    CST_OFFSET_S = 8 * 3600          # cards are used in China time
    DAYS_1970_TO_2000 = 10957
    DAYS_1900_TO_1970 = 25567


cdef inline void civil(int64_t z, int* y, int* m, int* d) noexcept nogil:
    """Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm)."""
    cdef int64_t era, doe, yoe, doy, mp
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d[0] = <int>(doy - (153 * mp + 2) // 5 + 1)
    m[0] = <int>(mp + 3 if mp < 10 else mp - 9)
    y[0] = <int>(yoe + era * 400 + (1 if m[0] <= 2 else 0))


cdef inline uint8_t status_code(uint8_t status) noexcept nogil:
    if status == CARD_LOST:
        return RC_41
    if status == CARD_FROZEN:
        return RC_05
    return RC_14                       # cancelled, replaced, or a status this build ignores


cdef class Authoriser:
    def __init__(self, State state, Journal journal, *, int64_t daily_limit_fen=500_000,
                 int64_t max_amount_fen=10_000_000):
        if daily_limit_fen <= 0 or max_amount_fen <= 0:
            raise ValueError("limits must be positive")
        self.state = state
        self.journal = journal
        self.daily_limit_fen = daily_limit_fen
        self.max_amount_fen = max_amount_fen
        self.begin(0)

    def set_clock(self, int64_t now_us) -> None:
        """Set the decision time (tests; the paths call begin() per batch)."""
        self.begin(now_us)

    cdef void begin(self, int64_t now_us) noexcept nogil:
        cdef int64_t local_days
        self.now_us = now_us
        self.now_s = <uint32_t>(now_us // 1000000)
        local_days = (now_us // 1000000 + CST_OFFSET_S) // 86400
        self.today = <uint16_t>(local_days - DAYS_1970_TO_2000)
        civil(local_days, &self.today_y, &self.today_m, &self.today_d)
        self.today_yymm = <uint16_t>((self.today_y % 100) * 100 + self.today_m)

    cdef int age(self, uint16_t birth_day) noexcept nogil:
        cdef int y, m, d, years
        civil(<int64_t>birth_day - DAYS_1900_TO_1970, &y, &m, &d)
        years = self.today_y - y
        if self.today_m < m or (self.today_m == m and self.today_d < d):
            years -= 1
        return years

    # ---- shared steps ------------------------------------------------------------------------

    cdef int64_t card_checks(self, Txn* t, int64_t idx, Res* r, uint8_t need_fn,
                             int app) noexcept nogil:
        """Card known and usable, function loaded, accepted here. -1 with r.rc set if not."""
        cdef Card* c
        cdef uint32_t term_prov, card_prov
        if idx < 0:
            r.rc = RC_14
            return -1
        c = &self.state.card[idx]
        if c.status != CARD_ACTIVE:
            r.rc = status_code(c.status)
            return -1
        if c.expiry_yymm < self.today_yymm:
            r.rc = RC_33
            return -1
        if need_fn and not (c.functions & need_fn):
            r.rc = RC_57
            return -1
        term_prov = self.state.region[self.state.term[t.terminal].region].province
        card_prov = self.state.region[c.region].province
        if not ((self.state.accept_mask[app * MAX_PROVINCES + term_prov] >> card_prov) & 1):
            r.rc = RC_62
            return -1
        return idx

    cdef bint duplicate(self, Txn* t, int64_t idx, Res* r) noexcept nogil:
        """Answer a retransmission from the ring. True when the request is a duplicate."""
        cdef RingEntry* e = self.state.slot(t.terminal, t.seq)
        if e.kind == KIND_NONE or e.seq != t.seq:
            return False
        r.duplicate = 1
        r.card = e.card
        if (e.kind != t.kind or e.card != <uint32_t>idx or (e.flags & RING_REVERSED)
                or (t.kind == KIND_PURCHASE and e.amount_fen != t.amount_fen)
                or (t.kind == KIND_TAP and (e.extra != t.station_id or e.aux != t.direction))):
            # Same STAN, different request (or one already reversed): never act on it, and
            # never repeat an approval that no longer stands.
            r.rc = RC_94
            return True
        r.rc = e.rc
        r.amount_fen = e.amount_fen
        r.balance_fen = e.balance_fen
        r.record_no = e.record_no
        r.age_band = e.aux
        return True

    cdef JRec* record(self, Txn* t, Res* r, int64_t idx) noexcept nogil:
        """A new journal record for this request; NULL (and rc 96) if memory ran out."""
        cdef JRec* j = self.journal.append()
        if j == NULL:
            r.rc = RC_96
            return NULL
        j.ts_us = self.now_us
        j.terminal = t.terminal
        j.seq = t.seq
        j.kind = t.kind
        j.proto = t.proto
        j.card = <uint32_t>idx if idx >= 0 else NONE32
        j.account = self.state.card[idx].account if idx >= 0 else NONE32
        r.card = j.card
        r.record_no = self.journal.next_no - 1
        return j

    cdef void commit(self, JRec* j, Res* r) noexcept nogil:
        j.rc = r.rc
        if j.rc == RC_00 and j.kind != KIND_REVERSAL:
            j.flags |= RING_APPROVED
        r.amount_fen = j.amount_fen
        r.balance_fen = j.balance_fen
        # apply() cannot fail for records built here from validated indexes.
        self.state.apply(j, r.record_no)

    cdef int32_t spent_today(self, Account* a) noexcept nogil:
        return a.daily_spent_fen if a.daily_day == self.today else 0

    # ---- kinds -------------------------------------------------------------------------------

    cdef void purchase(self, Txn* t, Res* r) noexcept nogil:
        cdef int64_t idx = self.state.find_card(t.pan)
        cdef Account* a
        cdef JRec* j
        cdef int64_t spent
        if self.duplicate(t, idx, r):
            return
        if self.card_checks(t, idx, r, FN_FINANCIAL, APP_PAYMENT) < 0:
            pass
        elif t.amount_fen <= 0 or t.amount_fen > self.max_amount_fen or (
                t.currency != 0 and t.currency != CNY):
            r.rc = RC_13
        else:
            a = &self.state.acct[self.state.card[idx].account]
            spent = self.spent_today(a) + t.amount_fen
            if spent > self.daily_limit_fen:
                r.rc = RC_61
            elif a.balance_fen < t.amount_fen:
                r.rc = RC_51
            else:
                r.rc = RC_00
        j = self.record(t, r, idx)
        if j == NULL:
            return
        j.b = t.proc_code
        if idx >= 0:
            a = &self.state.acct[self.state.card[idx].account]
            j.balance_fen = a.balance_fen
            if r.rc == RC_00:
                spent = self.spent_today(a) + t.amount_fen
                j.amount_fen = t.amount_fen
                j.balance_fen = a.balance_fen - t.amount_fen
                j.a = (<uint64_t>self.today << 32) | <uint32_t>spent
        self.commit(j, r)

    cdef void balance(self, Txn* t, Res* r) noexcept nogil:
        cdef int64_t idx = self.state.find_card(t.pan)
        cdef JRec* j
        if self.duplicate(t, idx, r):
            return
        if self.card_checks(t, idx, r, FN_FINANCIAL, APP_PAYMENT) >= 0:
            r.rc = RC_00
        j = self.record(t, r, idx)
        if j == NULL:
            return
        if idx >= 0:
            j.balance_fen = self.state.acct[self.state.card[idx].account].balance_fen
        self.commit(j, r)

    cdef void reversal(self, Txn* t, Res* r) noexcept nogil:
        """Undo a purchase identified by its STAN. Idempotent; an unknown original is
        acknowledged and remembered so that a late original is refused."""
        cdef int64_t idx = self.state.find_card(t.pan)
        cdef RingEntry* e = self.state.slot(t.terminal, t.seq)
        cdef Account* a
        cdef JRec* j
        cdef int64_t spent
        cdef bint known = e.kind != KIND_NONE and e.seq == t.seq
        if known and (e.kind != KIND_PURCHASE or e.card != <uint32_t>idx
                      or e.amount_fen != t.amount_fen):
            r.rc = RC_25                   # that STAN was something else: touch nothing
            r.duplicate = 1
            return
        if known and e.flags & RING_REVERSED:
            r.rc = RC_00                   # already reversed: same answer, no second credit
            r.duplicate = 1
            r.card = e.card
            return
        r.rc = RC_00
        j = self.record(t, r, idx)
        if j == NULL:
            return
        j.b = <uint64_t>t.amount_fen
        j.flags = RING_REVERSED
        if not known:
            j.flags |= RING_NO_ORIGINAL
            j.account = NONE32             # nothing to restore
        elif e.flags & RING_APPROVED:
            j.flags |= RING_APPROVED
        if j.account != NONE32:
            a = &self.state.acct[j.account]
            spent = self.spent_today(a)
            j.balance_fen = a.balance_fen
            if j.flags & RING_APPROVED:
                j.amount_fen = t.amount_fen
                j.balance_fen = a.balance_fen + t.amount_fen
                if spent >= t.amount_fen:
                    spent -= t.amount_fen  # yesterday's purchase does not free today's limit
            j.a = (<uint64_t>self.today << 32) | <uint32_t>spent
        self.commit(j, r)

    cdef int32_t concession(self, int32_t fare_fen, Account* a, Region* reg) noexcept nogil:
        cdef int pct = 100
        if reg.elderly_age and self.age(a.birth_day) >= reg.elderly_age:
            pct = reg.elderly_pct
        if a.flags & HOLDER_DISABLED and reg.disabled_pct < pct:
            pct = reg.disabled_pct
        return <int32_t>((<int64_t>fare_fen * pct + 50) // 100)

    cdef void tap(self, Txn* t, Res* r) noexcept nogil:
        cdef int64_t idx = self.state.find_card(t.pan)
        cdef Terminal* term = &self.state.term[t.terminal]
        cdef Operator* op = &self.state.op[term.operator]
        cdef Region* reg = &self.state.region[op.region]
        cdef Card* c
        cdef Account* a
        cdef Operator* open_op
        cdef JRec* j
        cdef int64_t s_idx = -1, fare = 0, need = 0
        cdef uint32_t trip_station = 0, trip_time = 0
        cdef Station* entry
        if self.duplicate(t, idx, r):
            return
        if self.card_checks(t, idx, r, FN_TRANSPORT, APP_TRANSIT) >= 0:
            c = &self.state.card[idx]
            a = &self.state.acct[c.account]
            trip_station = c.trip_station
            trip_time = c.trip_time_s
            if t.direction > 1:
                r.rc = RC_12
            elif op.kind != OP_METRO:
                fare = self.concession(op.flat_fare_fen, a, reg)
                need = fare
                r.rc = RC_00
            else:
                s_idx = self.state.find_station(t.station_id)
                if s_idx < 0 or self.state.stn[s_idx].operator != term.operator:
                    r.rc = RC_12           # a gate may only report its own network's stations
                elif t.direction == 0:
                    if c.trip_station:     # the last trip never tapped out: maximum fare
                        open_op = &self.state.op[self.state.stn[c.trip_station - 1].operator]
                        fare = self.concession(open_op.max_fare_fen, a, reg)
                    need = fare + self.concession(op.flat_fare_fen, a, reg)
                    trip_station = <uint32_t>(s_idx + 1)
                    trip_time = t.time_s if t.time_s else self.now_s
                    r.rc = RC_00
                else:
                    if c.trip_station and self.state.stn[c.trip_station - 1].operator == term.operator:
                        entry = &self.state.stn[c.trip_station - 1]
                        fare = self.state.fare[op.fare_off + entry.local * op.n_stations
                                       + self.state.stn[s_idx].local]
                    else:                  # no tap-in on this network: maximum fare
                        fare = op.max_fare_fen
                    fare = self.concession(<int32_t>fare, a, reg)
                    need = fare
                    trip_station = 0
                    trip_time = 0
                    r.rc = RC_00
            if r.rc == RC_00 and a.balance_fen < need:
                r.rc = RC_51               # the gate stays shut; the trip state is unchanged
        j = self.record(t, r, idx)
        if j == NULL:
            return
        j.b = (<uint64_t>t.station_id << 8) | t.direction
        if idx >= 0:
            a = &self.state.acct[self.state.card[idx].account]
            j.balance_fen = a.balance_fen
            if r.rc == RC_00:
                j.amount_fen = fare
                j.balance_fen = a.balance_fen - fare
                j.a = (<uint64_t>trip_station << 32) | trip_time
        self.commit(j, r)

    cdef void verify(self, Txn* t, Res* r) noexcept nogil:
        cdef int64_t idx = self.state.find_card(t.pan)
        cdef JRec* j
        cdef int years
        if self.duplicate(t, idx, r):
            return
        if self.card_checks(t, idx, r, 0, APP_IDENTITY) >= 0:
            years = self.age(self.state.acct[self.state.card[idx].account].birth_day)
            r.age_band = (0 if years < 18 else 1 if years < 60 else 2 if years < 65 else
                          3 if years < 70 else 4 if years < 80 else 5)
            r.rc = RC_00
        j = self.record(t, r, idx)
        if j == NULL:
            return
        j.c = r.age_band
        self.commit(j, r)

    cdef void signon(self, Txn* t, Res* r) noexcept nogil:
        """New working keys: the PIN key is only handed out; the MAC key is journaled
        (encrypted under the master key) and installed."""
        cdef Terminal* term = &self.state.term[t.terminal]
        cdef uint8_t pik[16]
        cdef uint8_t mak[16]
        cdef uint8_t enc[16]
        cdef JRec* j
        if random_bytes(pik, 16) or random_bytes(mak, 16):
            r.rc = RC_96
            return
        if (wrap_key(term.mac_alg, term.tmk, pik, r.keys, 0)
                or check_value(term.mac_alg, pik, r.keys + 16)
                or wrap_key(term.mac_alg, term.tmk, mak, enc, 0)
                or check_value(term.mac_alg, mak, r.keys + 36)):
            r.rc = RC_96
            return
        memcpy(r.keys + 20, enc, 16)
        r.rc = RC_00
        j = self.record(t, r, -1)
        if j == NULL:
            return
        memcpy(&j.a, enc, 8)
        memcpy(&j.b, enc + 8, 8)
        j.c = term.mac_alg
        self.commit(j, r)
        memset(mak, 0, 16)

    cdef void authorise(self, Txn* t, Res* r) noexcept nogil:
        r.rc = RC_96
        r.duplicate = 0
        r.card = NONE32
        r.amount_fen = 0
        r.balance_fen = 0
        r.record_no = 0
        r.age_band = 0
        if t.kind == KIND_PURCHASE:
            self.purchase(t, r)
        elif t.kind == KIND_BALANCE:
            self.balance(t, r)
        elif t.kind == KIND_REVERSAL:
            self.reversal(t, r)
        elif t.kind == KIND_TAP:
            self.tap(t, r)
        elif t.kind == KIND_VERIFY:
            self.verify(t, r)
        elif t.kind == KIND_SIGNON:
            self.signon(t, r)
        else:
            r.rc = RC_12

    # ---- Python API (tests, tools, benchmarks) -----------------------------------------------

    def authorise_many(self, txns) -> np.ndarray:
        """Authorise decoded requests (a TXN_DTYPE array) in order; their response codes.
        The benchmark of the rules alone, without codecs or MACs."""
        cdef const uint8_t[::1] raw = np.ascontiguousarray(txns, dtype=TXN_DTYPE).view(np.uint8)
        cdef size_t n = len(txns), i
        rcs = np.empty(n, dtype=np.uint8)
        cdef uint8_t[::1] out = rcs
        cdef Res r
        cdef Txn* t
        if n == 0:
            return rcs
        t = <Txn*>&raw[0]
        with nogil:
            for i in range(n + 3 * PREFETCH_AHEAD):
                if i < n:
                    self.state.prefetch(t[i].pan, 0)
                if PREFETCH_AHEAD <= i < n + PREFETCH_AHEAD:
                    self.state.prefetch(t[i - PREFETCH_AHEAD].pan, 1)
                if 2 * PREFETCH_AHEAD <= i < n + 2 * PREFETCH_AHEAD:
                    self.state.prefetch(t[i - 2 * PREFETCH_AHEAD].pan, 2)
                if i >= 3 * PREFETCH_AHEAD:
                    self.authorise(&t[i - 3 * PREFETCH_AHEAD], &r)
                    out[i - 3 * PREFETCH_AHEAD] = r.rc
        return rcs

    def masked_name(self, uint32_t card) -> str:
        """The masked holder name as verification returns it: surname and one * per other
        character of the name."""
        cdef Account* a = &self.state.acct[self.state.card[card].account]
        surname = bytes(self.state.surnames[a.surname]).rstrip(b"\0").decode()
        return surname + "*" * max(a.name_len - len(surname), 0)

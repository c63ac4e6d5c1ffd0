# cython: language_level=3
"""The shared steps of authorisation (SPEC §4) and terminal sign-on.

Protocol paths have already checked the frame and the terminal (known, MAC, permitted for the
kind). The families (payments.pyx, transit.pyx, services.pyx) then follow the same order:
duplicate (same terminal and STAN/sequence: the original answer again, never a second effect;
the ring is consulted before the card's current status so that a retry is answered as the
original was even if the card has been reported lost since), the terminal's application still
in the catalogue, card known and usable, function loaded, catalogue acceptance for the card's
province at the terminal's, amount, limits, funds. An effect is written as a journal record and
applied from that record (ledger.apply).
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset

import numpy as np

from onecard.protocols.clearing import CUTOVER_DEFAULT, cutover_minutes

from onecard.core.codes cimport *
from onecard.core.crypto cimport check_value, random_bytes, wrap_key
from onecard.core.journal cimport (JF_APPROVED, JF_DENY_CLEAR, JF_DENY_SET, JF_STAND_IN, NONE32,
                                   JHead, JRec)
from onecard.core.ledger cimport apply, daily_key
from onecard.core.maps cimport Entry
from onecard.core.state cimport *

TXN_DTYPE = np.dtype([("pan", "<u8"), ("amount_fen", "<i8"), ("x", "<i8", (4,)),
                      ("terminal", "<u4"), ("seq", "<u4"), ("station_id", "<u4"),
                      ("time_s", "<u4"), ("proc_code", "<u4"), ("orig_seq", "<u4"),
                      ("batch_no", "<u4"), ("currency", "<u2"), ("kind", "u1"),
                      ("proto", "u1"), ("direction", "u1"), ("offline", "u1")], align=True)
assert TXN_DTYPE.itemsize == sizeof(Txn)
_CUTOVER_S = cutover_minutes(CUTOVER_DEFAULT) * 60

cdef enum:
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
                 int64_t amount_fen_max=10_000_000, fx_rates=None):
        """``fx_rates``: {ISO 4217 numeric code: fen per 100.00 units}, e.g. {344: 9150}."""
        if daily_limit_fen <= 0 or amount_fen_max <= 0:
            raise ValueError("limits must be positive")
        self.state = state
        self.journal = journal
        self.cutover_s = _CUTOVER_S                # [clearing] cutover sets the switch's
        self.daily_limit_fen = daily_limit_fen
        self.amount_fen_max = amount_fen_max
        self.topup_fen_max = 100_000          # 1,000 yuan a top-up; the switch sets its own
        self.n_fx = 0
        for code, rate in (fx_rates or {}).items():
            if self.n_fx == FX_RATES_MAX or not 0 < int(rate) < 10**9 or int(code) in (0, CNY):
                raise ValueError(f"bad exchange rate {code}: {rate}")
            self.fx_currency[self.n_fx] = int(code)
            self.fx_rate[self.n_fx] = int(rate)
            self.n_fx += 1
        self.begin(0)

    def set_clock(self, int64_t now_us) -> None:
        """Set the decision time (tests; the paths call begin() per batch)."""
        self.begin(now_us)

    cdef void begin(self, int64_t now_us) noexcept nogil:
        cdef int64_t local_s = now_us // 1000000 + CST_OFFSET_S
        cdef int64_t local_days = local_s // 86400
        cdef int64_t settle_days
        cdef int y
        self.now_us = now_us
        self.now_s = <uint32_t>(now_us // 1000000)
        self.today = <uint16_t>(local_days - DAYS_1970_TO_2000)
        civil(local_days, &self.today_y, &self.today_m, &self.today_d)
        self.today_yymm = <uint16_t>((self.today_y % 100) * 100 + self.today_m)
        self.weekday = <int>((local_days + 3) % 7)          # 1970-01-01 was a Thursday
        self.hour = <int>((local_s % 86400) // 3600)
        # protocols.clearing.settlement_days: from the cut-over on, the next date
        settle_days = (local_s + (86400 - self.cutover_s) % 86400) // 86400
        self.settle_day = <uint16_t>(settle_days - DAYS_1970_TO_2000)
        civil(settle_days, &y, &self.settle_m, &self.settle_d)

    cdef int age(self, uint16_t birth_day) noexcept nogil:
        cdef int y, m, d, years
        civil(<int64_t>birth_day - DAYS_1900_TO_1970, &y, &m, &d)
        years = self.today_y - y
        if self.today_m < m or (self.today_m == m and self.today_d < d):
            years -= 1
        return years

    # ---- shared steps ------------------------------------------------------------------------

    cdef int64_t card_checks(self, Txn* t, int64_t idx, Res* r) noexcept nogil:
        """The terminal's application is offered, the card is known and usable, carries the
        application's functions and is accepted here. -1 with r.rc set if not."""
        cdef Card* c
        cdef Terminal* term = &self.state.term[t.terminal]
        cdef App* app = &self.state.app[term.app]
        cdef uint32_t term_prov, card_prov
        if not app.active:
            r.rc = RC_58                   # retired from the catalogue: nothing offered here
            return -1
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
        if app.functions and (c.functions & app.functions) != app.functions:
            r.rc = RC_57
            return -1
        term_prov = self.state.region[term.region].province
        card_prov = self.state.region[c.region].province
        if not ((self.state.accept_mask[<size_t>term.app * PROVINCES_MAX + term_prov]
                 >> card_prov) & 1):
            r.rc = RC_62
            return -1
        return idx

    cdef bint duplicate(self, Txn* t, int64_t idx, Res* r) noexcept nogil:
        """Answer a retransmission from the ring, or from the horizon behind it (whatever
        came in between, for idempotency_days settlement dates). True when the request is a
        duplicate."""
        cdef RingEntry* e = self.state.seen(t.terminal, t.seq)
        cdef bint same
        if not holds(e, t.seq):
            return False
        same = not (e.kind != t.kind or e.card != <uint32_t>idx
                    or (t.kind == KIND_TOPUP and e.amount_fen != t.amount_fen)
                    or ((t.kind == KIND_PURCHASE or t.kind == KIND_VOID)
                        and e.amount_fen != asked(t))
                    or (t.kind == KIND_MEDICAL and ring_medical_bill(e) != t.amount_fen)
                    or (t.kind == KIND_MEDICAL_REFUND
                        and ring_medical_orig_seq(e) != t.orig_seq)
                    or (t.kind == KIND_TAP
                        and (e.extra != t.station_id or e.aux != t.direction))
                    or (t.kind == KIND_MEDICAL_TOTALS
                        and (e.extra != t.batch_no or e.amount_fen != t.amount_fen
                             or e.balance_fen != ring_totals_print(
                                 <uint32_t>t.x[3], t.orig_seq, t.x[0], t.x[1], t.x[2]))))
        if not same and e != self.state.slot(t.terminal, t.seq):
            # Found only behind the ring under another request: the number was used again
            # (a new date, a terminal's counter reset), a new request.
            return False
        r.duplicate = 1
        r.card = e.card
        if (not same or (e.flags & RING_REVERSED)
                or ((t.kind == KIND_PURCHASE or t.kind == KIND_VOID) and e.flags & RING_VOIDED)):
            # Same STAN, different request (or one already reversed or voided): never act on
            # it, and never repeat an approval that no longer stands.
            r.rc = RC_94
            return True
        r.rc = e.rc
        r.amount_fen = e.extra if t.kind == KIND_PURCHASE or t.kind == KIND_VOID else e.amount_fen
        r.balance_fen = e.balance_fen
        r.record_no = e.record_no
        r.recorded = 1
        r.age_band = e.aux
        r.entitlement = e.aux
        if t.kind == KIND_MEDICAL or t.kind == KIND_MEDICAL_REFUND:
            # The original shares (pool, personal, cash); balances as they are now.
            r.x[0] = e.extra
            r.x[2] = ring_medical_cash(e)
            r.x[1] = ring_medical_bill(e) - e.extra - r.x[2]
            r.amount_fen = r.x[2]
            r.balance_fen = self.state.acct[self.state.card[e.card].account].balance_fen
            r.x[3] = self.state.acct[self.state.card[e.card].account].medical_fen
        return True

    cdef JRec* record(self, Txn* t, Res* r, int64_t idx) noexcept nogil:
        """A new journal record for this request; NULL (and rc 96) if memory ran out."""
        cdef JRec* j = self.journal.append()
        cdef JHead* h
        if j == NULL:
            r.rc = RC_96
            return NULL
        h = &j.head
        h.ts_us = self.now_us
        h.terminal = t.terminal
        h.seq = t.seq
        h.kind = t.kind
        h.app = <uint8_t>self.state.term[t.terminal].app if t.terminal != NONE32 else 0
        h.card = <uint32_t>idx if idx >= 0 else NONE32
        h.account = self.state.card[idx].account if idx >= 0 else NONE32
        if h.account != NONE32:
            h.balance_fen_after = self.state.acct[h.account].balance_fen
        r.record_no = self.journal.next_no - 1
        r.recorded = 1
        r.card = h.card
        return j

    cdef void commit(self, JRec* j, Res* r) noexcept nogil:
        cdef JHead* h = &j.head
        cdef Account* acct
        h.rc = r.rc
        if h.rc == RC_00 and h.kind != KIND_REVERSAL and h.kind != KIND_VOID_REVERSAL:
            h.flags |= JF_APPROVED
        if h.rc == RC_00 and h.account != NONE32:
            # An offline tap may leave a balance below zero: the card goes onto the deny
            # list, and comes off it with the first record that brings it back to zero.
            acct = &self.state.acct[h.account]
            if h.balance_fen_after < 0 and (h.kind == KIND_OFFLINE_TAP
                                            or h.flags & JF_STAND_IN):
                h.flags |= JF_DENY_SET
            elif acct.flags & HOLDER_DENIED and h.balance_fen_after >= 0:
                h.flags |= JF_DENY_CLEAR
        r.balance_fen = h.balance_fen_after
        if apply(self.state, j, r.record_no) != 0:
            self.decline_unapplied(j, r)

    cdef void decline_unapplied(self, JRec* j, Res* r) noexcept nogil:
        """The record's effect found no room (a map or the deny list at its limit, or memory
        out): apply() changed nothing, so the record is taken back and the request declined.
        No approval ever leaves without its record applied and journaled."""
        cdef uint32_t account = j.head.account
        self.journal.retract(j)
        r.rc = RC_96
        r.record_no = 0
        r.recorded = 0
        r.amount_fen = 0
        r.balance_fen = self.state.acct[account].balance_fen if account != NONE32 else 0
        memset(r.x, 0, sizeof(r.x))
        memset(r.keys, 0, sizeof(r.keys))

    cdef int32_t spent_today(self, Account* a) noexcept nogil:
        return a.daily_spent_fen if a.daily_day == self.today else 0

    cdef int32_t app_spent_today(self, uint32_t account, uint16_t app) noexcept nogil:
        cdef Entry* e = self.state.daily_app.find(daily_key(account, <uint8_t>app))
        return <int32_t>e.b if e != NULL and e.a == self.today else 0

    cdef int price_pct(self, Policy* p, Account* a, int* entitlement) noexcept nogil:
        """Percent of the price this holder pays under a policy now: the best matching rule."""
        cdef int best = 100, i
        cdef Rule* rule
        cdef bint match
        entitlement[0] = 0
        for i in range(p.n_rules):
            rule = &p.rules[i]
            if not (rule.hour_from <= self.hour < rule.hour_to):
                continue
            if not ((rule.weekdays >> self.weekday) & 1):
                continue
            if rule.kind == RULE_ALL:
                match = True
            elif rule.kind == RULE_AGE_GE:
                match = self.age(a.birth_day) >= rule.param
            elif rule.kind == RULE_DISABLED:
                match = (a.flags & HOLDER_DISABLED) != 0
            elif rule.kind == RULE_GROUP_RESIDENT:
                match = self.state.region[a.region].group == rule.param
            elif rule.kind == RULE_PROVINCE_RESIDENT:
                match = self.state.region[a.region].province == rule.param
            else:
                match = False
            if match and rule.pct < best:
                best = rule.pct
                entitlement[0] = i + 1
        return best

    cdef int32_t concession(self, int32_t fare_fen, Account* a, Region* reg) noexcept nogil:
        cdef int pct = 100
        if reg.elderly_age and self.age(a.birth_day) >= reg.elderly_age:
            pct = reg.elderly_pct
        if a.flags & HOLDER_DISABLED and reg.disabled_pct < pct:
            pct = reg.disabled_pct
        return <int32_t>((<int64_t>fare_fen * pct + 50) // 100)

    cdef int64_t to_fen(self, int64_t amount, uint16_t currency) noexcept nogil:
        """An amount in a currency's minor units in fen, at the configured rate; -1 if the
        currency has no rate."""
        cdef int i
        if currency == 0 or currency == CNY:
            return amount
        for i in range(self.n_fx):
            if self.fx_currency[i] == currency:
                return (amount * self.fx_rate[i] + 5000) // 10000
        return -1

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
        memcpy(j.signon.mac_key_wrapped, enc, 16)
        j.signon.mac_alg = term.mac_alg
        j.signon.session_day = self.settle_day
        self.commit(j, r)
        memset(mak, 0, 16)

    # ---- Python API (tests and tools) --------------------------------------------------------

    def masked_name(self, uint32_t card) -> str:
        """The masked holder name as verification returns it: surname and one * per other
        character of the name."""
        cdef Account* a = &self.state.acct[self.state.card[card].account]
        surname = bytes(self.state.surnames[a.surname]).rstrip(b"\0").decode()
        return surname + "*" * max(a.name_len - len(surname), 0)

# cython: language_level=3
"""Service terminals: identity verification within the terminal's data scope, venue entry
with entitlements, and medical settlement (pooled fund, personal medical account, cash) and
its refund."""

from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint8_t, uint16_t, uint32_t

from onecard.core.authorise cimport ADVICE_STAND_IN, Authoriser, Res, Txn, stand_in_posting
from onecard.core.codes cimport *
from onecard.core.journal cimport JMedical, JMedicalTotals, JRec
from onecard.core.state cimport *


cdef int masked_name(Authoriser a, uint32_t card, char* name) noexcept nogil:
    """Surname, then one '*' per remaining character of the name: never the full name.
    Writes at most 40 bytes."""
    cdef const uint8_t* s
    cdef Account* acct
    cdef int n = 0, chars = 0, i, _star
    acct = &a.state.acct[a.state.card[card].account]
    s = a.state.surname + <size_t>acct.surname * 8
    for i in range(8):
        if s[i] == 0:
            break
        name[n] = <char>s[i]
        n += 1
        if (s[i] & 0xC0) != 0x80:
            chars += 1
    for _star in range(chars, acct.name_len):
        if n < 40:
            name[n] = 42
            n += 1
    return n


cdef int full_holder(Authoriser a, uint32_t card, Res* r) noexcept nogil:
    """Full name and identity number into the reply, from the holder's block of the sealed
    holders file (opened now, core/holders.pyx): 0, or -1 without a holders file or when the
    block does not open (counted and logged; the verification is answered 96, never with
    another scope's data or wrong data)."""
    if a.state.holders is None:
        return -1
    return a.state.holders.name_and_id(a.state.card[card].account, r.name, &r.name_len,
                                       r.id_number, &r.id_len)


cdef void verify(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """Who holds this card, as far as this terminal may know: masked name, age band and
    issuing region by default; full name and identity number for lodging registration."""
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef uint8_t scope = a.state.term[t.terminal].scope
    cdef JRec* j
    cdef int years
    if a.duplicate(t, idx, r):
        scope = <uint8_t>(a.state.seen(t.terminal, t.seq).extra & 0xff)
        if r.rc == RC_00 and scope == SCOPE_LODGING and full_holder(a, r.card, r) != 0:
            r.rc = RC_96
    else:
        if a.card_checks(t, idx, r) >= 0:
            # The holder's record is read before the journal record is made, so that a block
            # that does not open is journaled as the 96 the terminal gets.
            if scope == SCOPE_LODGING and full_holder(a, <uint32_t>idx, r) != 0:
                r.rc = RC_96
            else:
                years = a.age(a.state.acct[a.state.card[idx].account].birth_day)
                r.age_band = (0 if years < 18 else 1 if years < 60 else 2 if years < 65 else
                              3 if years < 70 else 4 if years < 80 else 5)
                r.rc = RC_00
        j = a.record(t, r, idx)
        if j == NULL:
            return
        j.verify.age_band = r.age_band
        j.verify.scope = scope
        a.commit(j, r)
    if r.rc != RC_00:
        r.name_len = r.id_len = 0
        return
    r.region_code = a.state.region[a.state.card[r.card].region].code
    if scope != SCOPE_LODGING:
        r.name_len = <uint8_t>masked_name(a, r.card, <char*>r.name)
        r.id_len = 0


cdef void venue(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """Entry to a museum, library, scenic spot or sports venue: the price policy's base price
    times the best entitlement (age, disability, residence, time window); a free entry (a
    library) is a card check that still counts as an entry."""
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef Policy* p = &a.state.policy[a.state.term[t.terminal].policy]
    cdef Account* acct
    cdef JRec* j
    cdef int pct, entitlement = 0
    cdef int64_t fee = 0
    cdef bint advice = t.offline == ADVICE_STAND_IN
    if not advice and a.duplicate(t, idx, r):
        return
    if a.card_checks(t, idx, r) >= 0:
        acct = &a.state.acct[a.state.card[idx].account]
        pct = a.price_pct(p, acct, &entitlement)
        fee = (<int64_t>p.base_fen * pct + 50) // 100
        # Another region let the holder in: the entry is posted even without the money.
        r.rc = RC_51 if acct.balance_fen < fee and not advice else RC_00
    j = a.record(t, r, idx)
    if j == NULL:
        return
    if advice:
        stand_in_posting(j, t)
    j.venue.entitlement = <uint8_t>entitlement
    j.venue.base_fen = p.base_fen
    if r.rc == RC_00:
        j.venue.amount_fen = fee
        j.venue.balance_fen_after -= fee
    r.amount_fen = fee if r.rc == RC_00 else 0
    r.entitlement = <uint8_t>entitlement
    a.commit(j, r)


cdef inline void year_totals(Authoriser a, uint32_t account, int32_t* deductible_used,
                             int32_t* pool_paid) noexcept nogil:
    medical_year_get(a.state.medical_year.find(account), <uint16_t>a.today_y, deductible_used,
                     pool_paid)


cdef inline JMedical* bill_of(JRec* j, int64_t bill, int64_t ded, int year) noexcept nogil:
    j.medical.bill_fen = <int32_t>bill
    j.medical.deductible_fen = <int32_t>ded
    j.medical.year = <uint16_t>year
    return &j.medical


cdef inline void shares(JMedical* m, int64_t pool, int64_t personal,
                        int64_t medical_after) noexcept nogil:
    m.pool_fen = <int32_t>pool
    m.personal_fen = <int32_t>personal
    m.medical_fen_after = <int32_t>medical_after


cdef void medical(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """Split a bill (t.amount_fen) by the insuring region's policy: the deductible is paid by
    the holder, the pool pays its ratio of the rest up to the annual cap, then the personal
    medical account, then cash from the financial account. Treatment in another province
    needs a filing (备案) for it, else M1: the hospital takes cash."""
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef Terminal* term = &a.state.term[t.terminal]
    cdef Account* acct
    cdef Region* reg
    cdef Entry* filing
    cdef JRec* j
    cdef JMedical* m
    cdef int32_t ded_used = 0, pool_paid = 0
    cdef int64_t bill = t.amount_fen, ded = 0, pool = 0, personal = 0, cash = 0, room
    if a.duplicate(t, idx, r):
        return
    if a.card_checks(t, idx, r) >= 0:
        acct = &a.state.acct[a.state.card[idx].account]
        reg = &a.state.region[acct.region]
        filing = a.state.filings.find(a.state.card[idx].account)
        if bill <= 0 or bill > a.amount_fen_max or bill > INT32_MAX:
            r.rc = RC_13
        elif (a.state.region[term.region].province != reg.province
              and (filing == NULL or not ((filing.a >> a.state.region[term.region].province) & 1))):
            r.rc = RC_M1
        else:
            year_totals(a, a.state.card[idx].account, &ded_used, &pool_paid)
            ded = reg.med_deductible_fen - ded_used
            ded = 0 if ded < 0 else (bill if ded > bill else ded)
            pool = (bill - ded) * reg.med_ratio_pct // 100
            room = reg.med_cap_fen - pool_paid
            pool = 0 if room < 0 else (room if pool > room else pool)
            personal = bill - pool
            if personal > acct.medical_fen:
                personal = acct.medical_fen if acct.medical_fen > 0 else 0
            cash = bill - pool - personal
            r.rc = RC_51 if acct.balance_fen < cash else RC_00
    j = a.record(t, r, idx)
    if j == NULL:
        return
    m = bill_of(j, bill, ded, a.today_y)
    if r.rc == RC_00:
        acct = &a.state.acct[m.account]
        m.amount_fen = cash
        m.balance_fen_after -= cash
        shares(m, pool, personal, acct.medical_fen - personal)
        m.pool_paid_fen_after = <int32_t>(pool_paid + pool)
        m.deductible_used_fen_after = <int32_t>(ded_used + ded)
        r.x[3] = acct.medical_fen - personal
    r.x[0] = pool
    r.x[1] = personal
    r.x[2] = cash
    r.amount_fen = cash
    a.commit(j, r)


cdef void medical_refund(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """Undo a settlement (t.orig_seq) of this terminal: every share goes back where it came
    from, including the annual totals of the year it was made in."""
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef RingEntry* e = a.state.seen(t.terminal, t.orig_seq)
    cdef Account* acct
    cdef JRec* j
    cdef JMedical* m
    cdef int32_t ded_used = 0, pool_paid = 0
    cdef int64_t bill = 0, ded = 0, pool = 0, cash = 0, personal = 0
    cdef bint same_year = False
    if a.duplicate(t, idx, r):
        return
    if not (e.kind == KIND_MEDICAL and e.seq == t.orig_seq and e.card == <uint32_t>idx):
        r.rc = RC_25
    elif not (e.flags & RING_APPROVED) or e.flags & RING_REVERSED:
        r.rc = RC_25
    else:
        r.rc = RC_00
        bill = ring_medical_bill(e)
        ded = ring_medical_deductible(e)
        pool = e.extra
        cash = ring_medical_cash(e)
        personal = bill - pool - cash
        same_year = 2000 + <int32_t>e.aux == <int32_t>a.today_y
    j = a.record(t, r, idx)
    if j == NULL:
        return
    m = bill_of(j, bill, ded, a.today_y)
    m.orig_seq = t.orig_seq
    if r.rc == RC_00:
        acct = &a.state.acct[m.account]
        year_totals(a, m.account, &ded_used, &pool_paid)
        m.amount_fen = cash
        m.balance_fen_after += cash
        shares(m, pool, personal, acct.medical_fen + personal)
        if same_year:                  # an earlier year's totals no longer limit anything
            ded_used = ded_used - <int32_t>ded if ded_used >= ded else 0
            pool_paid = pool_paid - <int32_t>pool if pool_paid >= pool else 0
        m.pool_paid_fen_after = pool_paid
        m.deductible_used_fen_after = ded_used
        r.x[3] = acct.medical_fen + personal
    r.x[0] = pool
    r.x[1] = personal
    r.x[2] = cash
    r.amount_fen = cash
    a.commit(j, r)


cdef void medical_totals(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """An institution's totals of a settlement date on this terminal (3201, as native_msg
    parsed them): journaled as sent and answered 00 with result 0. They are compared in
    clearing, from the journal (switch/clearing/medical.py totals_differences): the core
    keeps no daily totals per terminal, and refunds of earlier dates count on theirs. A date
    after the current settlement date is refused (12) with nothing journaled: no bill of it
    can have been settled yet."""
    cdef JRec* j
    cdef JMedicalTotals* m
    if a.duplicate(t, -1, r):
        return
    if t.batch_no > a.settle_day:
        r.rc = RC_12
        return
    r.rc = RC_00
    r.settle_result = 0
    j = a.record(t, r, -1)
    if j == NULL:
        return
    m = &j.medical_totals
    m.settle_day = <uint16_t>t.batch_no
    m.pool_fen = t.x[0]
    m.personal_fen = t.x[1]
    m.cash_fen = t.x[2]
    m.settlements = <uint32_t>t.x[3]
    m.refunds = t.orig_seq
    a.commit(j, r)

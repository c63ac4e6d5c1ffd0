# cython: language_level=3
"""Payments at POS terminals: purchase (with canteen meal discounts by age tier, Hong Kong and
Macao currencies, daily limits per card and per application), balance inquiry, void (撤销) of
a same-day purchase, reversal of a purchase or of a void, and batch settlement (0500)."""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

from onecard.core.authorise cimport CNY, Authoriser, Res, Txn, asked, currency_or_cny
from onecard.core.codes cimport *
from onecard.core.journal cimport NONE32, JPayment, JRec
from onecard.core.state cimport *


cdef enum:
    STAN_MOD = 1000000           # ISO 8583 field 11: six digits


cdef inline bint cross_border_terminal(Authoriser a, uint32_t terminal) noexcept nogil:
    # Hong Kong (81) and Macao (82) terminals take their own currencies.
    cdef uint32_t code = a.state.region[a.state.term[terminal].region].code // 10000
    return code == 81 or code == 82


cdef inline JPayment* as_asked(JRec* j, Txn* t) noexcept nogil:
    """The payment record, with the amount as the terminal asked it."""
    j.payment.amount_asked_minor = t.amount_fen
    j.payment.currency = currency_or_cny(t)
    return &j.payment


cdef void purchase(Authoriser a, Txn* t, Res* r) noexcept nogil:
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef Terminal* term = &a.state.term[t.terminal]
    cdef Account* acct
    cdef JRec* j
    cdef JPayment* p
    cdef int64_t fen = 0, charged = 0, spent = 0, app_spent = 0
    cdef int pct, entitlement
    cdef int32_t app_limit
    if a.duplicate(t, idx, r):
        return
    if a.card_checks(t, idx, r) >= 0:
        acct = &a.state.acct[a.state.card[idx].account]
        fen = a.to_fen(t.amount_fen, t.currency)
        if (t.amount_fen <= 0 or fen <= 0 or fen > a.amount_fen_max
                or (t.currency and t.currency != CNY and not cross_border_terminal(a, t.terminal))):
            r.rc = RC_13
        else:
            charged = fen
            if term.policy:                 # canteen: meal discount by the holder's age tier
                pct = a.price_pct(&a.state.policy[term.policy], acct, &entitlement)
                charged = (fen * pct + 50) // 100
            spent = a.spent_today(acct) + charged
            app_spent = a.app_spent_today(a.state.card[idx].account, term.app) + charged
            app_limit = a.state.app[term.app].daily_limit_fen
            if spent > a.daily_limit_fen or (app_limit and app_spent > app_limit):
                r.rc = RC_61
            elif acct.balance_fen < charged:
                r.rc = RC_51
            else:
                r.rc = RC_00
    j = a.record(t, r, idx)
    if j == NULL:
        return
    p = as_asked(j, t)
    if r.rc == RC_00:
        p.amount_fen = charged
        p.balance_fen_after -= charged
        p.daily_day = a.today
        p.daily_spent_fen_after = <int32_t>spent
        p.app_spent_fen_after = <int32_t>app_spent
    r.amount_fen = charged if r.rc == RC_00 else 0
    a.commit(j, r)


cdef void balance(Authoriser a, Txn* t, Res* r) noexcept nogil:
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef JRec* j
    if a.duplicate(t, idx, r):
        return
    if a.card_checks(t, idx, r) >= 0:
        r.rc = RC_00
    j = a.record(t, r, idx)
    if j != NULL:
        a.commit(j, r)


cdef inline void undo_spending(Authoriser a, JPayment* p, int64_t amount, int sign) noexcept nogil:
    """Daily totals after giving back (sign -1) or taking again (+1) ``amount`` of today's
    spending; a purchase from an earlier day frees nothing today."""
    cdef Account* acct = &a.state.acct[p.account]
    cdef int64_t spent = a.spent_today(acct)
    cdef int64_t app_spent = a.app_spent_today(p.account, p.app)
    spent += sign * amount
    app_spent += sign * amount
    p.daily_day = a.today
    p.daily_spent_fen_after = <int32_t>(spent if spent > 0 else 0)
    p.app_spent_fen_after = <int32_t>(app_spent if app_spent > 0 else 0)


cdef inline uint64_t seq_modulus(Authoriser a, uint32_t terminal) noexcept nogil:
    """How a terminal's numbers wrap: ISO 8583 STANs after 999999, native sequences at 2^32."""
    if a.state.term[terminal].protocol == PROTO_ISO8583:
        return STAN_MOD
    return <uint64_t>1 << 32


cdef bint reversal_answered(Authoriser a, Txn* t, RingEntry* e, bint known, int64_t idx,
                            Res* r) noexcept nogil:
    """A reversal answered with nothing recorded: its original forgotten (past the horizon),
    other details under its STAN, or reversed already. True when ``r`` is that answer."""
    cdef uint8_t orig_kind = KIND_VOID if t.proc_code // 10000 == 20 else KIND_PURCHASE
    if not known and a.state.horizon.forgot(t.terminal, t.seq, seq_modulus(a, t.terminal)):
        # Its original, if there was one, was decided before the horizon (idempotency_days
        # settlement dates): acknowledging it would be 00 with no effect. 25 also tells an
        # advice's consumer to report it.
        r.rc = RC_25
    elif known and (e.kind != orig_kind or e.card != <uint32_t>idx or e.amount_fen != asked(t)):
        r.rc = RC_25                   # that STAN was something else: touch nothing
    elif known and e.flags & RING_REVERSED:
        r.rc = RC_00                   # already reversed: the first answer, no second effect
        r.card = e.card
        r.record_no = e.record_no      # the slot holds the first reversal's record
        r.recorded = 1
    else:
        return False
    r.duplicate = 1
    return True


cdef void reversal(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """Undo a purchase (processing code 00xxxx) or a void (20xxxx) identified by its STAN.
    Idempotent; an unknown original is acknowledged and remembered so that a late original
    is refused; a reversal whose card or amount differ is refused (25).

    A reversal advice (offline, no card number) comes from another region's switch that
    answered its terminal 91 for a request forwarded here (switch/region/link.py): the
    original, if this switch decided it, is found by terminal and STAN alone."""
    cdef RingEntry* e = a.state.seen(t.terminal, t.seq)
    cdef bint of_void = t.proc_code // 10000 == 20
    cdef bint known = holds(e, t.seq)
    cdef int64_t idx
    if t.offline and t.pan == 0:       # an advice
        idx = <int64_t>e.card if known and e.card != NONE32 else -1
    else:
        idx = a.state.find_card(t.pan)
    cdef JRec* j
    cdef JPayment* p
    cdef int64_t amount = 0
    cdef RingEntry* orig
    cdef bint today_s = False
    if reversal_answered(a, t, e, known, idx, r):
        return
    r.rc = RC_00
    j = a.record(t, r, idx)
    if j == NULL:
        return
    p = as_asked(j, t)
    if of_void:
        p.kind = KIND_VOID_REVERSAL
    p.flags = RING_REVERSED
    if not known:
        p.flags |= RING_NO_ORIGINAL
        p.account = NONE32             # nothing to restore
    elif e.flags & RING_APPROVED and not (e.flags & RING_VOIDED):
        p.flags |= RING_APPROVED
        amount = e.extra               # what was charged (or, for a void, credited)
    if of_void and known:
        p.orig_seq = <uint32_t>e.balance_fen   # the purchase the void undid (same-day)
        orig = a.state.seen(t.terminal, p.orig_seq)
        today_s = (orig.kind == KIND_PURCHASE and orig.seq == p.orig_seq
                   and orig.balance_fen == a.today)
    elif known:
        today_s = e.balance_fen == a.today
    if p.account != NONE32:
        p.daily_day = a.state.acct[p.account].daily_day
        p.daily_spent_fen_after = a.state.acct[p.account].daily_spent_fen
        if amount:
            p.amount_fen = amount
            # Only today's spending counts towards today's limits: undoing yesterday's
            # purchase frees nothing today.
            if of_void:                # the void's credit is taken back, even into the red
                p.balance_fen_after -= amount
                undo_spending(a, p, amount if today_s else 0, 1)
            else:
                p.balance_fen_after += amount
                undo_spending(a, p, amount if today_s else 0, -1)
    a.commit(j, r)


cdef void void_purchase(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """撤销: undo a purchase of today, found by the STAN in field 61, under a new STAN."""
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef RingEntry* e = a.state.seen(t.terminal, t.orig_seq)
    cdef JRec* j
    cdef JPayment* p
    cdef int64_t amount = 0
    if a.duplicate(t, idx, r):
        return
    if not (e.kind == KIND_PURCHASE and e.seq == t.orig_seq and e.card == <uint32_t>idx
            and e.amount_fen == asked(t)):
        r.rc = RC_25                   # no such purchase on this terminal (or details differ)
    elif not (e.flags & RING_APPROVED) or e.flags & (RING_REVERSED | RING_VOIDED):
        r.rc = RC_25                   # declined, or already undone
    elif e.balance_fen != a.today:
        r.rc = RC_12                   # a void is for today's purchases only
    else:
        r.rc = RC_00
        amount = e.extra
    j = a.record(t, r, idx)
    if j == NULL:
        return
    p = as_asked(j, t)
    p.orig_seq = t.orig_seq
    if r.rc == RC_00:
        p.amount_fen = amount
        p.balance_fen_after += amount
        undo_spending(a, p, amount, -1)
    r.amount_fen = amount
    a.commit(j, r)


cdef void settle(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """0500: compare the terminal's batch totals (debits and credits, amounts and counts)
    with the switch's, answer balanced (1) or not (2), and start the next batch."""
    cdef Terminal* term = &a.state.term[t.terminal]
    cdef RingEntry* e
    cdef JRec* j
    if a.duplicate(t, -1, r):
        e = a.state.seen(t.terminal, t.seq)
        r.x[0] = e.amount_fen
        r.x[1] = ring_settle_debits(e)
        r.x[2] = e.balance_fen
        r.x[3] = ring_settle_credits(e)
        r.settle_result = e.aux
        return
    r.rc = RC_00
    r.x[0] = term.debit_fen
    r.x[1] = term.debit_count
    r.x[2] = term.credit_fen
    r.x[3] = term.credit_count
    r.settle_result = 1 if (t.x[0] == term.debit_fen and t.x[1] == term.debit_count
                            and t.x[2] == term.credit_fen and t.x[3] == term.credit_count) else 2
    j = a.record(t, r, -1)
    if j == NULL:
        return
    j.settle.debit_fen = term.debit_fen
    j.settle.credit_fen = term.credit_fen
    j.settle.debit_count = term.debit_count
    j.settle.credit_count = term.credit_count
    j.settle.batch_no_next = t.batch_no + 1
    j.settle.result = r.settle_result
    a.commit(j, r)


cdef inline bint date_to_come(Authoriser a, int64_t mmdd) noexcept nogil:
    """A settlement date (MMDD, no year) after the switch's: within half a year ahead it is
    this year's and has not begun; further ahead it is last year's (a batch of late December
    uploaded in January)."""
    cdef int64_t today = a.settle_m * 100 + a.settle_d
    return mmdd > today and mmdd - today < 600


cdef inline uint64_t masked_pan(uint64_t pan, uint8_t* digits) noexcept nogil:
    """The first six and last four digits of a card number (what a clearing exception may
    show), and how many digits it has."""
    cdef uint64_t lead = pan
    cdef uint8_t n = 0
    while lead:
        lead //= 10
        n += 1
    digits[0] = n
    lead = pan
    while lead >= 1000000:
        lead //= 10
    return lead * 10000 + pan % 10000


cdef void batch_upload(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """0320: one transaction of the batch the last 0500 found unbalanced, as the terminal
    has it, or the end of the upload: journaled for clearing to reconcile (it moves no
    money, changes no state). A batch that is not the one settled unbalanced is 95, a
    settlement date not begun 80: nothing is journaled for either."""
    cdef Terminal* term = &a.state.term[t.terminal]
    cdef int64_t idx
    cdef JRec* j
    if not term.upload_open or t.batch_no + 1 != term.batch_no:
        r.rc = RC_95
        return
    if t.x[2] and date_to_come(a, t.x[2]):
        r.rc = RC_80
        return
    idx = a.state.find_card(t.pan) if t.pan else -1
    r.rc = RC_00
    j = a.record(t, r, idx)
    if j == NULL:
        return
    j.head.account = NONE32             # the cardholder's account is not touched
    j.head.balance_fen_after = 0
    j.upload.batch_no = t.batch_no
    if t.x[0] == 202:                    # the end: how many transactions the terminal sent
        j.upload.count = <uint32_t>t.x[1]
    else:
        j.upload.orig_kind = t.direction
        j.upload.amount_asked_minor = t.amount_fen
        j.upload.currency = currency_or_cny(t)
        j.upload.pan_masked = masked_pan(t.pan, &j.upload.pan_len)
    a.commit(j, r)

# cython: language_level=3
"""Apply journal records (after-images) to the state.

The authoriser builds a record for every decision and applies it through :func:`apply`;
recovery replays committed records through the same function. That is what makes a restart
recover exactly the committed state: there is no second code path to drift from the first.

``apply`` is all or nothing. Whatever can fail (room in a map or in the deny log, a card
index to grow, a key that does not unwrap) is reserved or done before anything changes, so a
record whose effect cannot be applied leaves the state as it was: the authoriser then takes
the record back and declines (96), and recovery stops with the record's number.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport abort
from libc.string cimport memcpy

from onecard.core.codes cimport RC_00
from onecard.core.crypto cimport mackey_set, pan_cipher, wrap_key
from onecard.core.journal cimport *
from onecard.core.maps cimport Entry
from onecard.core.state cimport *


cdef enum:
    ORIGIN_STAND_IN = 2          # protocols/forward.py ORIGIN (checked by core/forward.pyx)


cdef inline void must(int rc) noexcept nogil:
    """For what was reserved before: failing now would leave a half-applied record."""
    if rc != 0:
        abort()


# ---- shared by every kind that touches an account ------------------------------------------

cdef uint32_t deny_changes(State st, JHead* h, bint write) noexcept nogil:
    """The deny-list changes this record's flags make: counted (an upper bound, to reserve
    room), or with ``write`` made. Onto the list goes the card used (what gates learn); off it,
    every card of the account whose latest entry is "added"."""
    cdef Account* a = &st.acct[h.account]
    cdef uint32_t v, card, i, end = st.deny_version, n = 0
    cdef bint listed
    if h.flags & JF_DENY_SET and not (a.flags & HOLDER_DENIED):
        if write:
            a.flags |= HOLDER_DENIED
        if h.card != NONE32:
            n += 1
            if write:
                must(st.deny(h.card, False))
    elif h.flags & JF_DENY_CLEAR and a.flags & HOLDER_DENIED:
        if write:
            a.flags &= ~HOLDER_DENIED
        for v in range(end):
            card = st.deny_log[v] & DENY_INDEX
            if (st.deny_log[v] & (DENY_REMOVED | DENY_FOREIGN)
                    or st.card[card].account != h.account):
                continue
            listed = True
            for i in range(v + 1, st.deny_version):
                if st.deny_log[i] & ~DENY_REMOVED == card:
                    listed = not (st.deny_log[i] & DENY_REMOVED)
            if listed:
                n += 1
                if write:
                    must(st.deny(card, True))
    return n


cdef inline bint approved_account(JHead* h) noexcept nogil:
    return h.rc == RC_00 and h.account != NONE32


cdef inline int money_room(State st, JHead* h) noexcept nogil:
    if approved_account(h) and h.flags & (JF_DENY_SET | JF_DENY_CLEAR):
        if st.deny_reserve(deny_changes(st, h, False)) != 0:
            return APPLY_NO_ROOM
    return 0


cdef inline void money(State st, JHead* h, bint moves_balance) noexcept nogil:
    """An approved record's balance after, and its deny-list change (room reserved)."""
    if not approved_account(h):
        return
    if moves_balance:
        st.acct[h.account].balance_fen = h.balance_fen_after
    if h.flags & (JF_DENY_SET | JF_DENY_CLEAR):
        deny_changes(st, h, True)


cdef inline int horizon_room(State st, JHead* h) noexcept nogil:
    """Room in the idempotency horizon for the request this record's ring slot holds, if
    it holds another one (ring_put files it there)."""
    cdef RingEntry* e = st.slot(h.terminal, h.seq)
    if e.kind == KIND_NONE or e.seq == h.seq:
        return 0
    return APPLY_NO_ROOM if st.horizon.reserve(st.horizon.day_of(h.ts_us)) != 0 else 0


cdef inline void fill(RingEntry* e, JHead* h, uint64_t no, uint8_t kind, int64_t amount,
                      int64_t balance, uint8_t aux, uint32_t extra) noexcept nogil:
    """A request's entry, as the ring and the horizon keep it (core/state.pxd RingEntry)."""
    e.seq = h.seq
    e.card = h.card
    e.record_no = no
    e.rc = h.rc
    e.flags = h.flags & JF_RING_MASK
    e.kind = kind
    e.amount_fen = amount
    e.balance_fen = balance
    e.aux = aux
    e.extra = extra


cdef void ring_put(State st, JHead* h, uint64_t no, uint8_t kind, int64_t amount,
                   int64_t balance, uint8_t aux, uint32_t extra) noexcept nogil:
    cdef RingEntry* e = st.slot(h.terminal, h.seq)
    if e.kind != KIND_NONE and e.seq != h.seq:
        # The slot's request is forgotten by the ring, not by the switch (room reserved by
        # horizon_room in apply).
        st.horizon.file(h.terminal, e.seq, <uint64_t*>e)
    fill(e, h, no, kind, amount, balance, aux, extra)


cdef void mark(State st, uint32_t terminal, uint32_t seq, uint8_t kind, uint8_t set_flags,
               uint8_t clear_flags) noexcept nogil:
    """Change the flags of an earlier request's entry, in the ring or the horizon."""
    cdef RingEntry* e = st.seen(terminal, seq)
    if e.seq == seq and e.kind == kind:
        e.flags = (e.flags | set_flags) & ~clear_flags


# ---- one function per layout ----------------------------------------------------------------

cdef void batch_totals(Terminal* t, uint8_t kind, uint8_t flags, uint8_t rc,
                       int64_t amount_fen) noexcept nogil:
    """The terminal's open batch (settlement, 0500): running sums, applied as deltas."""
    if rc != RC_00:
        return
    if kind == KIND_PURCHASE:
        t.debit_fen += amount_fen
        t.debit_count += 1
    elif kind == KIND_VOID:
        t.credit_fen += amount_fen
        t.credit_count += 1
    elif kind == KIND_REVERSAL and flags & JF_APPROVED:
        t.debit_fen -= amount_fen
        t.debit_count -= 1
    elif kind == KIND_VOID_REVERSAL and flags & JF_APPROVED:
        t.credit_fen -= amount_fen
        t.credit_count -= 1


cdef int apply_payment(State st, JRec* r, uint64_t no) noexcept nogil:
    """PURCHASE, VOID, REVERSAL, VOID_REVERSAL."""
    cdef JPayment* p = &r.payment
    cdef bint limited = (approved_account(&r.head) and p.app < st.n_apps
                         and st.app[p.app].daily_limit_fen > 0)
    cdef uint64_t key = daily_key(p.account, p.app)
    cdef int64_t asked = ring_asked(p.currency, p.amount_asked_minor)
    cdef Account* a
    cdef Entry* ent
    if limited and st.daily_app.reserve(key) != 0:
        return APPLY_NO_ROOM
    if money_room(st, &r.head) != 0:
        return APPLY_NO_ROOM
    money(st, &r.head, True)
    if approved_account(&r.head):
        a = &st.acct[p.account]
        a.daily_day = p.daily_day
        a.daily_spent_fen = p.daily_spent_fen_after
        if limited:
            ent = st.daily_app.upsert(key)
            ent.a = p.daily_day
            ent.b = p.app_spent_fen_after
    batch_totals(&st.term[p.terminal], p.kind, p.flags, p.rc, p.amount_fen)
    # A purchase's slot keeps the day it was made as its balance (void and reversal need it),
    # a void's the purchase's STAN; both keep the fen charged or credited as extra.
    if p.kind == KIND_PURCHASE:
        ring_put(st, &r.head, no, KIND_PURCHASE, asked, p.daily_day, 0, <uint32_t>p.amount_fen)
    elif p.kind == KIND_VOID:
        ring_put(st, &r.head, no, KIND_VOID, asked, p.orig_seq, 0, <uint32_t>p.amount_fen)
        if p.rc == RC_00:
            mark(st, p.terminal, p.orig_seq, KIND_PURCHASE, JF_VOIDED, 0)
    elif p.kind == KIND_REVERSAL:
        ring_put(st, &r.head, no, KIND_PURCHASE, asked, p.daily_day, 0, <uint32_t>p.amount_fen)
    else:
        ring_put(st, &r.head, no, KIND_VOID, asked, p.orig_seq, 0, <uint32_t>p.amount_fen)
        if p.flags & JF_APPROVED:
            mark(st, p.terminal, p.orig_seq, KIND_PURCHASE, 0, JF_VOIDED)
    return 0


cdef inline int posted_room(State st, JHead* h) noexcept nogil:
    if h.flags & JF_STAND_IN and (st.standin_posted.reserve(h.terminal) != 0
                                  or st.horizon.reserve(st.horizon.day_of(h.ts_us)) != 0):
        return APPLY_NO_ROOM
    return 0


cdef inline void posted(State st, JHead* h, uint64_t no, uint8_t kind, int64_t amount,
                        int64_t balance, uint8_t aux, uint32_t extra) noexcept nogil:
    """An issuer's posting of a stand-in advice (room reserved): the terminal's watermark, and
    its entry by (terminal, seq) in the idempotency horizon, not the ring (it must not push
    out the live requests made since): a delivery again is found exactly, in whatever order
    the advices come (forward.post_advice), and a live retransmission is answered as posted."""
    cdef Entry* w = st.standin_posted.upsert(h.terminal)
    cdef uint64_t key = standin_key(h.ts_us, h.seq)
    cdef RingEntry e
    if key > <uint64_t>w.a:
        w.a = <int64_t>key
    fill(&e, h, no, kind, amount, balance, aux, extra)
    st.horizon.file(h.terminal, h.seq, <uint64_t*>&e)


cdef int apply_tap(State st, JRec* r, uint64_t no) noexcept nogil:
    """TAP, OFFLINE_TAP: the fare, the card's open trip and the account's last ride."""
    cdef JTap* p = &r.tap
    cdef Terminal* t = &st.term[p.terminal]
    if money_room(st, &r.head) != 0 or posted_room(st, &r.head) != 0:
        return APPLY_NO_ROOM
    money(st, &r.head, True)
    if approved_account(&r.head):
        st.acct[p.account].last_ride_s = p.last_ride_s_after
        st.acct[p.account].last_ride_region = p.last_ride_region_after
    if p.rc == RC_00 and p.card != NONE32:
        st.card[p.card].trip_station = p.trip_station_after
        st.card[p.card].trip_time_s = p.trip_started_s_after
    if p.flags & JF_STAND_IN:
        posted(st, &r.head, no, KIND_TAP, p.amount_fen, p.balance_fen_after, p.direction,
               p.station_id)
        return 0                              # idempotent by its horizon entry
    if p.kind == KIND_OFFLINE_TAP:
        if p.seq > t.offline_hw:
            t.offline_hw = p.seq
        return 0                              # idempotent by watermark, not by the ring
    ring_put(st, &r.head, no, KIND_TAP, p.amount_fen, p.balance_fen_after, p.direction,
             p.station_id)
    return 0


cdef int apply_medical(State st, JRec* r, uint64_t no) noexcept nogil:
    """MEDICAL, MEDICAL_REFUND: cash share, personal medical account, the year's totals."""
    cdef JMedical* p = &r.medical
    cdef int64_t amount = ring_medical_amount(p.deductible_fen, p.bill_fen)
    if approved_account(&r.head) and st.medical_year.reserve(p.account) != 0:
        return APPLY_NO_ROOM
    if money_room(st, &r.head) != 0:
        return APPLY_NO_ROOM
    money(st, &r.head, True)
    if approved_account(&r.head):
        st.acct[p.account].medical_fen = p.medical_fen_after
        medical_year_set(st.medical_year.upsert(p.account), p.year,
                         p.deductible_used_fen_after, p.pool_paid_fen_after)
    if p.kind == KIND_MEDICAL:
        # aux: the year (from 2000) whose annual totals a refund gives back to
        ring_put(st, &r.head, no, KIND_MEDICAL, amount,
                 ring_medical_balance(0, p.amount_fen), <uint8_t>(p.year - 2000), p.pool_fen)
    else:
        ring_put(st, &r.head, no, KIND_MEDICAL_REFUND, amount,
                 ring_medical_balance(p.orig_seq, p.amount_fen), 0, p.pool_fen)
        if p.rc == RC_00:
            mark(st, p.terminal, p.orig_seq, KIND_MEDICAL, JF_REVERSED, 0)
    return 0


cdef int apply_medical_totals(State st, JRec* r, uint64_t no) noexcept nogil:
    """An institution's totals of a date: nothing in the state changes (clearing reads them
    from the journal) but the terminal's ring slot, so a retransmission is answered as the
    original and a different message under its seq is told apart (94)."""
    cdef JMedicalTotals* p = &r.medical_totals
    ring_put(st, &r.head, no, KIND_MEDICAL_TOTALS, p.pool_fen + p.personal_fen + p.cash_fen,
             ring_totals_print(p.settlements, p.refunds, p.pool_fen, p.personal_fen,
                               p.cash_fen), 0, p.settle_day)
    return 0


cdef int apply_forwarded(State st, JRec* r, uint64_t no) noexcept nogil:
    """The acquirer's side of another region's card: the issuer's record number in the ring
    (a retransmission is recorded as repeated), and the terminal's batch totals."""
    cdef JForwarded* p = &r.forwarded
    cdef Entry* e
    cdef uint64_t pan, day
    if p.repeated:
        return 0
    if p.origin == ORIGIN_STAND_IN and p.rc == RC_00:
        # The card's stand-in total today, against the issuer's per-day limit.
        pan = p.issuer_record_no
        if st.journal_keyed:
            pan = pan_cipher(st.journal_key, pan, NONE32, NONE32, 1)
        if st.standin.reserve(pan) != 0:
            return APPLY_NO_ROOM
        e = st.standin.upsert(pan)
        day = cst_day(p.ts_us)
        if <uint64_t>e.a != day:
            e.a = <int64_t>day
            e.b = 0
        e.b += p.amount_fen
        ring_put(st, &r.head, no, KIND_FORWARDED, p.amount_fen, 0, p.origin, p.orig_kind)
    elif p.issuer_recorded:
        ring_put(st, &r.head, no, KIND_FORWARDED, <int64_t>p.issuer_record_no, 0, p.origin,
                 p.orig_kind)
    batch_totals(&st.term[p.terminal], p.orig_kind, p.flags, p.rc, p.amount_fen)
    return 0


cdef int apply_signon(State st, JSignon* p) noexcept nogil:
    """A new working MAC key, unwrapped under the terminal's master key and installed."""
    cdef Terminal* t = &st.term[p.terminal]
    cdef uint8_t key[16]
    if wrap_key(t.mac_alg, t.tmk, p.mac_key_wrapped, key, 1) != 0:
        return APPLY_BAD                      # an algorithm this build lacks: nothing changed
    memcpy(t.mak, key, 16)
    t.signed_on = 1
    t.session_day = p.session_day
    must(mackey_set(&st.mac_keys[p.terminal], t.mac_alg, key))
    return 0


cdef int apply_settle(State st, JRec* r, uint64_t no) noexcept nogil:
    """0500: the batch is closed; the totals compared are kept for a retransmission."""
    cdef JSettle* p = &r.settle
    cdef Terminal* t = &st.term[p.terminal]
    t.debit_fen = t.credit_fen = 0
    t.debit_count = t.credit_count = 0
    t.batch_no = p.batch_no_next
    t.upload_open = p.result == 2        # its batch may be uploaded (0320) until the next
    ring_put(st, &r.head, no, KIND_SETTLE, p.debit_fen, p.credit_fen, p.result,
             ring_settle_counts(p.debit_count, p.credit_count))
    return 0


cdef int apply_service(State st, JRec* r, uint64_t no) noexcept nogil:
    """VERIFY, VENUE, TOPUP, BALANCE: a slot for retransmissions; venues and kiosks move
    money too."""
    cdef uint8_t kind = r.head.kind
    if money_room(st, &r.head) != 0 or posted_room(st, &r.head) != 0:
        return APPLY_NO_ROOM
    money(st, &r.head, kind == KIND_VENUE or kind == KIND_TOPUP)
    if r.head.flags & JF_STAND_IN:
        posted(st, &r.head, no, kind, r.venue.amount_fen, r.venue.balance_fen_after,
               r.venue.entitlement, <uint32_t>r.venue.base_fen)
    elif kind == KIND_VERIFY:
        ring_put(st, &r.head, no, kind, 0, 0, r.verify.age_band, r.verify.scope)
    elif kind == KIND_VENUE:
        ring_put(st, &r.head, no, kind, r.venue.amount_fen, r.venue.balance_fen_after,
                 r.venue.entitlement, <uint32_t>r.venue.base_fen)
    elif kind == KIND_TOPUP:
        ring_put(st, &r.head, no, kind, r.topup.amount_asked_fen, r.topup.balance_fen_after, 0, 0)
    else:
        ring_put(st, &r.head, no, kind, 0, r.head.balance_fen_after, 0, 0)
    return 0


cdef int apply_credit(State st, JRec* r) noexcept nogil:
    """An operator's top-up or disbursement: no terminal involved."""
    if money_room(st, &r.head) != 0:
        return APPLY_NO_ROOM
    money(st, &r.head, True)
    return 0


cdef int apply_card_admin(State st, JCardAdmin* p) noexcept nogil:
    cdef int64_t idx
    cdef Card* c
    cdef uint64_t pan = p.pan                 # the record stays as written: enciphered
    if st.journal_keyed:
        pan = pan_cipher(st.journal_key, p.pan, p.card, p.account, 1)
    if p.action == CA_NEW and p.card == st.n_cards:
        if p.account >= st.n_accounts:
            return APPLY_BAD
        idx = st.add_card(pan, p.account)
        if idx < 0:
            return <int>idx                   # APPLY_FULL, or APPLY_DUPLICATE
    elif p.card >= st.n_cards or p.account >= st.n_accounts:
        return APPLY_BAD
    c = &st.card[p.card]
    c.pan = pan
    c.account = p.account
    c.region = p.region
    c.expiry_yymm = p.expiry_yymm
    c.status = p.status
    c.functions = p.functions
    return 0


cdef int apply_foreign_deny(State st, JForeignDeny* p) noexcept nogil:
    """Another region's card onto or off this switch's deny list: a deny-log entry when its
    state here changes (a repeat changes nothing). Its foreign index is the order in which
    the cards were first listed, so replay gives every entry the same index and version."""
    cdef uint64_t pan = p.pan, idx = st.foreign_pan.size
    cdef Entry* e
    if p.card != NONE32 or p.account != NONE32 or p.listed > 1:
        return APPLY_BAD
    if st.journal_keyed:
        pan = pan_cipher(st.journal_key, pan, NONE32, NONE32, 1)
    e = st.foreign_deny.find(pan)
    if (e.b != 0 if e != NULL else False) == (p.listed != 0):
        return 0
    if e == NULL and (idx > DENY_INDEX or st.foreign_deny.reserve(pan) != 0
                      or st.foreign_pan.reserve(idx) != 0):
        return APPLY_NO_ROOM
    if st.deny_reserve(1) != 0:
        return APPLY_NO_ROOM
    if e == NULL:
        e = st.foreign_deny.upsert(pan)
        e.a = <int64_t>idx
        st.foreign_pan.upsert(idx).a = <int64_t>pan
    e.b = p.listed
    must(st.deny(<uint32_t>DENY_FOREIGN | <uint32_t>e.a, not p.listed))
    return 0


# ---- the one switch -------------------------------------------------------------------------

cdef int apply(State st, JRec* r, uint64_t no) noexcept nogil:
    """Apply one record's after-images (and, for settlement totals, deltas), all or nothing.
    0, or an APPLY_* code with the state unchanged."""
    cdef JHead* h = &r.head
    cdef uint8_t kind = h.kind
    if kind == KIND_CARD_ADMIN:
        return apply_card_admin(st, &r.card_admin)
    if kind == KIND_FOREIGN_DENY:
        return apply_foreign_deny(st, &r.foreign_deny)
    if ((h.account != NONE32 and h.account >= st.n_accounts)
            or (h.card != NONE32 and h.card >= st.n_cards)):
        return APPLY_BAD
    if kind == KIND_CREDIT:
        return apply_credit(st, r)
    if h.terminal >= st.n_terminals:
        return APPLY_BAD
    if horizon_room(st, h) != 0:
        return APPLY_NO_ROOM
    if (kind == KIND_PURCHASE or kind == KIND_VOID or kind == KIND_REVERSAL
            or kind == KIND_VOID_REVERSAL):
        return apply_payment(st, r, no)
    if kind == KIND_TAP or kind == KIND_OFFLINE_TAP:
        return apply_tap(st, r, no)
    if kind == KIND_MEDICAL or kind == KIND_MEDICAL_REFUND:
        return apply_medical(st, r, no)
    if kind == KIND_SIGNON:
        return apply_signon(st, &r.signon)
    if kind == KIND_MEDICAL_TOTALS:
        return apply_medical_totals(st, r, no)
    if kind == KIND_FORWARDED:
        return apply_forwarded(st, r, no)
    if kind == KIND_SETTLE:
        return apply_settle(st, r, no)
    if kind == KIND_BATCH_UPLOAD or kind == KIND_ADJUSTMENT:
        return 0                         # for clearing to read: no state changes
    if (kind == KIND_VERIFY or kind == KIND_VENUE or kind == KIND_TOPUP
            or kind == KIND_BALANCE):
        return apply_service(st, r, no)
    return APPLY_BAD


def apply_records(State st, data, uint64_t first_no, uint64_t skip_before=0) -> int:
    """Replay packed journal records (the current format) numbered from first_no; records
    numbered below skip_before are already in the checkpoint. Returns how many were applied."""
    cdef const uint8_t[::1] view = data
    cdef size_t n = len(data) // JREC_BYTES, i
    cdef size_t applied = 0
    cdef JRec* recs
    cdef int rc
    if len(data) % JREC_BYTES:
        raise ValueError("journal blob is not a whole number of records")
    if n == 0:
        return 0
    recs = <JRec*>&view[0]
    for i in range(n):
        if first_no + i < skip_before:
            continue
        rc = apply(st, &recs[i], first_no + i)
        if rc == APPLY_FULL:
            st.reserve_cards(1)
            rc = apply(st, &recs[i], first_no + i)
        if rc != 0:
            raise ValueError(f"journal record {first_no + i} does not fit this state ({rc})")
        applied += 1
    return applied

# cython: language_level=3
"""Apply journal records (after-images) to the state.

The authoriser builds a record for every decision and applies it through :func:`apply`;
recovery replays committed records through the same function. That is what makes a restart
recover exactly the committed state: there is no second code path to drift from the first.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from onecard.core.codes cimport RC_00
from onecard.core.crypto cimport mackey_set, wrap_key
from onecard.core.journal cimport (
    JF_DENY_CLEAR,
    JF_DENY_SET,
    JREC_BYTES,
    KIND_VOID_REVERSAL,
    NONE32,
    JRec,
)
from onecard.core.maps cimport Entry
from onecard.core.state cimport *

CARD_NEW = CA_NEW
CARD_CHANGE = CA_CHANGE


cdef inline bint moves_balance(uint8_t kind) noexcept nogil:
    return (kind == KIND_PURCHASE or kind == KIND_VOID or kind == KIND_REVERSAL
            or kind == KIND_VOID_REVERSAL or kind == KIND_TAP or kind == KIND_OFFLINE_TAP
            or kind == KIND_MEDICAL or kind == KIND_MEDICAL_REFUND or kind == KIND_VENUE
            or kind == KIND_CREDIT or kind == KIND_TOPUP)


cdef inline bint counts_daily(uint8_t kind) noexcept nogil:
    return (kind == KIND_PURCHASE or kind == KIND_VOID or kind == KIND_REVERSAL
            or kind == KIND_VOID_REVERSAL)


cdef int deny_account(State st, JRec* r) noexcept nogil:
    """Put the account on the deny list (the card used is what gates learn) or take all of
    its listed cards off it."""
    cdef Account* a = &st.acct[r.account]
    cdef uint32_t v, card, i
    cdef bint listed
    if r.flags & JF_DENY_SET and not (a.flags & HOLDER_DENIED):
        a.flags |= HOLDER_DENIED
        if r.card != NONE32 and st.deny(r.card, False) != 0:
            return -1
    if r.flags & JF_DENY_CLEAR and a.flags & HOLDER_DENIED:
        a.flags &= ~HOLDER_DENIED
        # Every card of this account whose latest entry is "added" gets a removal.
        for v in range(st.deny_version):
            card = st.deny_log[v] & 0x7fffffff
            if st.deny_log[v] >> 31 or st.card[card].account != r.account:
                continue
            listed = True
            for i in range(v + 1, st.deny_version):
                if st.deny_log[i] & 0x7fffffff == card:
                    listed = not (st.deny_log[i] >> 31)
            if listed and st.deny(card, True) != 0:
                return -1
    return 0


cdef int card_admin(State st, JRec* r) noexcept nogil:
    cdef int64_t idx
    cdef Card* c
    if r.e == CA_NEW and r.card == st.n_cards:
        idx = st.add_card(r.a, r.account)
        if idx < 0:
            return <int>idx                   # APPLY_FULL, or -3 for a duplicate number
    elif r.card >= st.n_cards or r.account >= st.n_accounts:
        return -1
    c = &st.card[r.card]
    c.pan = r.a
    c.account = r.account
    c.region = <uint16_t>(r.b & 0xffff)
    c.expiry_yymm = <uint16_t>((r.b >> 16) & 0xffff)
    c.status = <uint8_t>((r.b >> 32) & 0xff)
    c.functions = <uint8_t>((r.b >> 40) & 0xff)
    return 0


cdef void ring_put(State st, JRec* r, uint64_t no, uint8_t kind, int64_t amount,
                   int64_t balance, uint8_t aux, uint32_t extra) noexcept nogil:
    cdef RingEntry* e = st.slot(r.terminal, r.seq)
    e.seq = r.seq
    e.card = r.card
    e.record_no = no
    e.rc = r.rc
    e.flags = r.flags & 0x3f
    e.kind = kind
    e.amount_fen = amount
    e.balance_fen = balance
    e.aux = aux
    e.extra = extra


cdef void mark(State st, uint32_t terminal, uint32_t seq, uint8_t kind, uint8_t set_flags,
               uint8_t clear_flags) noexcept nogil:
    """Change the flags of an earlier request's slot, if the ring still holds it."""
    cdef RingEntry* e = st.slot(terminal, seq)
    if e.seq == seq and e.kind == kind:
        e.flags = (e.flags | set_flags) & ~clear_flags


cdef int apply(State st, JRec* r, uint64_t no) noexcept nogil:
    """Apply one record's after-images (and, for settlement totals, deltas)."""
    cdef Account* a
    cdef Card* c
    cdef Terminal* t
    cdef Entry* ent
    cdef uint8_t enc[16]
    cdef uint8_t key[16]
    cdef uint8_t kind = r.kind
    cdef bint ok = r.rc == RC_00
    if kind == KIND_CARD_ADMIN:
        return card_admin(st, r)
    if r.account != NONE32 and r.account >= st.n_accounts:
        return -1
    if r.card != NONE32 and r.card >= st.n_cards:
        return -1
    if ok and r.account != NONE32:
        a = &st.acct[r.account]
        if moves_balance(kind):
            a.balance_fen = r.balance_fen
        if counts_daily(kind):
            a.daily_day = <uint16_t>(r.a >> 32)
            a.daily_spent_fen = <int32_t><uint32_t>r.a
            if r.app < st.n_apps and st.app[r.app].daily_limit_fen > 0:
                ent = st.daily_app.upsert(daily_key(r.account, r.app))
                if ent == NULL:
                    return -1
                ent.a = a.daily_day
                ent.b = <int32_t>r.c
        if kind == KIND_TAP or kind == KIND_OFFLINE_TAP:
            a.last_ride_s = r.c
            a.last_ride_region = <uint16_t>r.e
        if kind == KIND_MEDICAL or kind == KIND_MEDICAL_REFUND:
            a.medical_fen = <int32_t><uint32_t>(r.a >> 32)
            ent = st.medical_year.upsert(r.account)
            if ent == NULL:
                return -1
            ent.a = (<int64_t>r.e << 32) | <uint32_t>r.b
            ent.b = <int32_t><uint32_t>(r.b >> 32)
        if r.flags & (JF_DENY_SET | JF_DENY_CLEAR) and deny_account(st, r) != 0:
            return -1
    if ok and (kind == KIND_TAP or kind == KIND_OFFLINE_TAP) and r.card != NONE32:
        c = &st.card[r.card]
        c.trip_station = <uint16_t>(r.a >> 32)
        c.trip_time_s = <uint32_t>r.a
    if kind == KIND_CREDIT:
        return 0                              # an operator's change: no terminal involved
    if r.terminal >= st.n_terminals:
        return -1
    t = &st.term[r.terminal]
    if kind == KIND_SIGNON:
        memcpy(enc, &r.a, 8)
        memcpy(enc + 8, &r.b, 8)
        if wrap_key(t.mac_alg, t.tmk, enc, key, 1) != 0:
            return -1
        memcpy(t.mak, key, 16)
        t.signed_on = 1
        return mackey_set(&st.mac_keys[r.terminal], t.mac_alg, key)
    if kind == KIND_OFFLINE_TAP:
        if r.seq > t.offline_hw:
            t.offline_hw = r.seq
        return 0                              # idempotent by watermark, not by the ring
    if ok:
        if kind == KIND_PURCHASE:
            t.debit_fen += r.amount_fen
            t.debit_count += 1
        elif kind == KIND_VOID:
            t.credit_fen += r.amount_fen
            t.credit_count += 1
        elif kind == KIND_REVERSAL and r.flags & RING_APPROVED:
            t.debit_fen -= r.amount_fen
            t.debit_count -= 1
        elif kind == KIND_VOID_REVERSAL and r.flags & RING_APPROVED:
            t.credit_fen -= r.amount_fen
            t.credit_count -= 1
    if kind == KIND_SETTLE:
        t.debit_fen = t.credit_fen = 0
        t.debit_count = t.credit_count = 0
        t.batch_no = <uint32_t>r.a
        ring_put(st, r, no, kind, r.amount_fen, <int64_t>r.b, <uint8_t>r.d,
                 (r.c & 0xffff) | (r.e << 16))
    elif kind == KIND_PURCHASE:
        # amount: as asked, with its currency; balance: the day it was made (a purchase's
        # reply has no balance, and void and reversal need the day); extra: fen charged
        ring_put(st, r, no, kind, <int64_t>r.b, <int64_t>(r.a >> 32), 0, <uint32_t>r.amount_fen)
    elif kind == KIND_VOID:
        # balance: the voided purchase's STAN (a void's reply has no balance; its reversal
        # needs to find the purchase again)
        ring_put(st, r, no, kind, <int64_t>r.b, r.e, 0, <uint32_t>r.amount_fen)
        if ok:
            mark(st, r.terminal, r.e, KIND_PURCHASE, RING_VOIDED, 0)
    elif kind == KIND_REVERSAL:
        ring_put(st, r, no, KIND_PURCHASE, <int64_t>r.b, <int64_t>(r.a >> 32), 0,
                 <uint32_t>r.amount_fen)
    elif kind == KIND_VOID_REVERSAL:
        ring_put(st, r, no, KIND_VOID, <int64_t>r.b, r.e, 0, <uint32_t>r.amount_fen)
        if r.flags & RING_APPROVED:
            mark(st, r.terminal, r.e, KIND_PURCHASE, 0, RING_VOIDED)
    elif kind == KIND_TAP:
        ring_put(st, r, no, kind, r.amount_fen, r.balance_fen, <uint8_t>(r.b & 0xff),
                 <uint32_t>(r.b >> 8))
    elif kind == KIND_VERIFY:
        ring_put(st, r, no, kind, 0, 0, <uint8_t>(r.c & 0xff), r.c >> 8)
    elif kind == KIND_MEDICAL:
        # amount: deductible part << 32 | bill; balance: cash share; extra: pool share;
        # aux: the year (from 2000) whose annual totals a refund gives back to
        ring_put(st, r, no, kind, <int64_t>r.d, r.amount_fen, <uint8_t>(r.e - 2000), r.c)
    elif kind == KIND_MEDICAL_REFUND:
        # as MEDICAL; balance: the refunded settlement's seq << 32 | cash share
        ring_put(st, r, no, kind, <int64_t>r.d, (<int64_t>r.f << 32) | r.amount_fen, 0, r.c)
        if ok:
            mark(st, r.terminal, r.f, KIND_MEDICAL, RING_REVERSED, 0)
    elif kind == KIND_VENUE:
        ring_put(st, r, no, kind, r.amount_fen, r.balance_fen, <uint8_t>r.c, <uint32_t>r.d)
    elif kind == KIND_TOPUP:
        ring_put(st, r, no, kind, <int64_t>r.b, r.balance_fen, 0, 0)
    elif kind == KIND_BALANCE:
        ring_put(st, r, no, kind, 0, r.balance_fen, 0, 0)
    return 0


def apply_records(State st, data, uint64_t first_no, uint64_t skip_before=0) -> int:
    """Replay packed journal records numbered from first_no; records numbered below
    skip_before are already in the checkpoint. Returns how many were applied."""
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

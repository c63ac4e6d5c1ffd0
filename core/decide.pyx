# cython: language_level=3
"""One decision per request: the transaction families by kind."""

from libc.string cimport memset

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.codes cimport RC_12, RC_96
from onecard.core.journal cimport NONE32
from onecard.core.payments cimport (balance, batch_upload, purchase, reversal,
                                    reversal_answered, settle, void_purchase)
from onecard.core.services cimport medical, medical_refund, medical_totals, venue, verify
from onecard.core.state cimport *
from onecard.core.transit cimport tap, topup

cdef enum:
    CHUNK = 32                   # requests whose card lookups are prefetched stage by stage


cdef void decide(Authoriser a, Txn* t, Res* r) noexcept nogil:
    memset(r, 0, sizeof(Res))
    r.rc = RC_96
    r.card = NONE32
    if t.kind == KIND_PURCHASE:
        purchase(a, t, r)
    elif t.kind == KIND_BALANCE:
        balance(a, t, r)
    elif t.kind == KIND_REVERSAL:
        reversal(a, t, r)
    elif t.kind == KIND_VOID:
        void_purchase(a, t, r)
    elif t.kind == KIND_SETTLE:
        settle(a, t, r)
    elif t.kind == KIND_BATCH_UPLOAD:
        batch_upload(a, t, r)
    elif t.kind == KIND_TAP or t.kind == KIND_OFFLINE_TAP:
        t.offline = t.kind == KIND_OFFLINE_TAP
        t.kind = KIND_TAP
        tap(a, t, r)
    elif t.kind == KIND_TOPUP:
        topup(a, t, r)
    elif t.kind == KIND_VERIFY:
        verify(a, t, r)
    elif t.kind == KIND_VENUE:
        venue(a, t, r)
    elif t.kind == KIND_MEDICAL:
        medical(a, t, r)
    elif t.kind == KIND_MEDICAL_REFUND:
        medical_refund(a, t, r)
    elif t.kind == KIND_MEDICAL_TOTALS:
        medical_totals(a, t, r)
    elif t.kind == KIND_SIGNON:
        a.signon(t, r)
    else:
        r.rc = RC_12


cdef bint retransmitted(Authoriser a, Txn* t) noexcept nogil:
    """Whether deciding this request would only answer it again, from the ring or the
    horizon, with no record and no effect: what load shedding still answers
    (switch/admission.py). A request of another region's card (forwarded: its answer is the
    issuer's) and an advice are not."""
    cdef RingEntry* e = a.state.seen(t.terminal, t.seq)
    cdef int64_t idx
    cdef Res probe
    if not holds(e, t.seq) or e.kind == KIND_FORWARDED or t.offline:
        return False
    if t.kind == KIND_SIGNON or t.kind == KIND_BATCH_UPLOAD or t.kind == KIND_OFFLINE_TAP:
        return False                     # a new session, journaled again, or by watermark
    idx = a.state.find_card(t.pan)
    memset(&probe, 0, sizeof(Res))
    if t.kind == KIND_REVERSAL:          # what payments.reversal answers unrecorded
        return reversal_answered(a, t, e, True, idx, &probe)
    if t.kind == KIND_SETTLE or t.kind == KIND_MEDICAL_TOTALS:
        idx = -1                         # as payments.settle and services.medical_totals ask
    return a.duplicate(t, idx, &probe)


def decide_many(Authoriser a, txns):
    """Decide decoded requests (an authorise.TXN_DTYPE array) in order; their response
    codes. The benchmark of the rules alone, without codecs or MACs.

    Card lookups are prefetched in passes over CHUNK requests (all index slots, then all
    cards, then all accounts), then the CHUNK are decided: in a tight pass the cache misses
    of many cards are in flight together. Interleaving one stage of each with a decision
    (the earlier design) kept too few in flight: at 10^8 cards it gave 51% of the rate at
    10^6, the passes 75%."""
    import numpy as np
    from onecard.core.authorise import TXN_DTYPE
    cdef const unsigned char[::1] raw = np.ascontiguousarray(txns, dtype=TXN_DTYPE).view(np.uint8)
    cdef size_t n = len(txns), i, j, m
    rcs = np.empty(n, dtype=np.uint8)
    cdef unsigned char[::1] out = rcs
    cdef Res r
    cdef Txn* t
    cdef State st = a.state
    if n == 0:
        return rcs
    t = <Txn*>&raw[0]
    with nogil:
        i = 0
        while i < n:
            m = min(n - i, CHUNK)
            for j in range(m):
                st.prefetch(t[i + j].pan, 0)
            for j in range(m):
                st.prefetch(t[i + j].pan, 1)
            for j in range(m):
                st.prefetch(t[i + j].pan, 2)
            for j in range(m):
                decide(a, &t[i + j], &r)
                out[i + j] = r.rc
            i += m
    return rcs

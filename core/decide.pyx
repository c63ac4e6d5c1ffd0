# cython: language_level=3
"""One decision per request: the transaction families by kind."""

from libc.string cimport memset

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.codes cimport RC_12, RC_96
from onecard.core.journal cimport NONE32
from onecard.core.payments cimport balance, purchase, reversal, settle, void_purchase
from onecard.core.services cimport medical, medical_refund, venue, verify
from onecard.core.state cimport *
from onecard.core.transit cimport tap, topup

cdef enum:
    AHEAD = 8                    # requests between prefetch stages (slot, card, account)


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
    elif t.kind == KIND_SIGNON:
        a.signon(t, r)
    else:
        r.rc = RC_12


def decide_many(Authoriser a, txns):
    """Decide decoded requests (an authorise.TXN_DTYPE array) in order; their response
    codes. The benchmark of the rules alone, without codecs or MACs: card lookups are
    prefetched a few requests ahead (index slot, card, account)."""
    import numpy as np
    from onecard.core.authorise import TXN_DTYPE
    cdef const unsigned char[::1] raw = np.ascontiguousarray(txns, dtype=TXN_DTYPE).view(np.uint8)
    cdef size_t n = len(txns), i
    rcs = np.empty(n, dtype=np.uint8)
    cdef unsigned char[::1] out = rcs
    cdef Res r
    cdef Txn* t
    cdef State st = a.state
    if n == 0:
        return rcs
    t = <Txn*>&raw[0]
    with nogil:
        for i in range(n + 3 * AHEAD):
            if i < n:
                st.prefetch(t[i].pan, 0)
            if AHEAD <= i < n + AHEAD:
                st.prefetch(t[i - AHEAD].pan, 1)
            if 2 * AHEAD <= i < n + 2 * AHEAD:
                st.prefetch(t[i - 2 * AHEAD].pan, 2)
            if i >= 3 * AHEAD:
                decide(a, &t[i - 3 * AHEAD], &r)
                out[i - 3 * AHEAD] = r.rc
    return rcs

# cython: language_level=3
"""Operators' changes (admin API, CLI): credits (top-ups, disbursements) and card lifecycle.
Each is a journal record applied like any other; the caller releases its answer once the
record is durable (Engine.journal.next_no is what it waits for)."""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

import numpy as np

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.codes cimport *
from onecard.core.crypto cimport pan_cipher
from onecard.core.journal cimport CA_CHANGE, CA_NEW, NONE32, JRec
from onecard.core.ledger cimport APPLY_FULL, apply
from onecard.core.state cimport *

from onecard.protocols.codes import CODES


cdef uint8_t credit_one(Authoriser a, uint64_t pan, int64_t amount, uint32_t programme,
                        uint32_t period, uint32_t operator, uint64_t* record_no) noexcept nogil:
    cdef int64_t idx = a.state.find_card(pan)
    cdef Txn t
    cdef Res r
    cdef JRec* j
    memset(&t, 0, sizeof(Txn))
    memset(&r, 0, sizeof(Res))
    t.kind = KIND_CREDIT
    t.terminal = NONE32
    if idx < 0:
        return RC_14
    if a.state.card[idx].status == CARD_CANCELLED:
        return RC_14                   # a replaced, lost or frozen card still has its account
    if amount <= 0 or amount > <int64_t>0x7fffffffffff:
        return RC_13
    r.rc = RC_00
    j = a.record(&t, &r, idx)
    if j == NULL:
        return RC_96
    j.credit.amount_fen = amount
    j.credit.balance_fen_after += amount
    j.credit.programme = programme
    j.credit.period = period
    j.credit.operator = operator
    a.commit(j, &r)
    record_no[0] = r.record_no
    return r.rc                        # 96 when its effect found no room: nothing written


def credit(Authoriser a, uint64_t pan, int64_t amount_fen, *, uint32_t programme=0,
           uint32_t period=0, uint32_t operator=0) -> tuple:
    """Credit a card's account (a top-up when programme is 0). (code, record number)."""
    cdef uint64_t no = 0
    rc = credit_one(a, pan, amount_fen, programme, period, operator, &no)
    return CODES[rc][0], no


def disburse(Authoriser a, uint32_t programme, uint32_t period, pans, amounts,
             uint32_t operator) -> tuple:
    """Credit every item of a batch; (codes as indexes into CODES, record numbers, 0 when
    nothing was written). Idempotency per (programme, period, card) is the caller's: it
    passes only items not paid before."""
    cdef const uint64_t[::1] p = np.ascontiguousarray(pans, dtype=np.uint64)
    cdef const int64_t[::1] m = np.ascontiguousarray(amounts, dtype=np.int64)
    cdef size_t n = p.shape[0], i
    if m.shape[0] != n:
        raise ValueError("pans and amounts differ in length")
    rcs = np.zeros(n, dtype=np.uint8)
    nos = np.zeros(n, dtype=np.uint64)
    cdef uint8_t[::1] rc = rcs
    cdef uint64_t[::1] no = nos
    with nogil:
        for i in range(n):
            rc[i] = credit_one(a, p[i], m[i], programme, period, operator, &no[i])
    return rcs, nos


def card_change(Authoriser a, uint32_t card, *, int status=-1, int functions=-1,
                int expiry_yymm=-1, int region=-1, uint32_t operator=0) -> int:
    """Change a card's status, functions, expiry or region (-1 keeps it); record number."""
    if card >= a.state.n_cards:
        raise IndexError("no such card")
    c = a.state.cards[card]
    return _card_admin(a, CA_CHANGE, card, int(c["pan"]), int(c["account"]),
                       int(c["region"]) if region < 0 else region,
                       int(c["expiry_yymm"]) if expiry_yymm < 0 else expiry_yymm,
                       int(c["status"]) if status < 0 else status,
                       int(c["functions"]) if functions < 0 else functions, operator)


def card_new(Authoriser a, uint64_t pan, uint32_t account, *, int region, int expiry_yymm,
             int functions, uint32_t operator=0) -> tuple:
    """Issue a card for an existing account; (card index, record number)."""
    if account >= a.state.n_accounts:
        raise IndexError("no such account")
    if a.state.find_card(pan) >= 0:
        raise ValueError("card number already issued")
    card = a.state.n_cards
    no = _card_admin(a, CA_NEW, card, pan, account, region, expiry_yymm, CARD_ACTIVE,
                     functions, operator)
    return card, no


cdef JRec* _operator_record(Authoriser a, uint8_t kind, uint32_t card,
                            uint32_t account) except NULL:
    """A new record of an operator's change (no terminal), its head filled and approved."""
    cdef JRec* j = a.journal.append()
    if j == NULL:
        raise MemoryError()
    j.head.ts_us = a.now_us
    j.head.terminal = NONE32
    j.head.kind = kind
    j.head.card = card
    j.head.account = account
    j.head.rc = RC_00
    return j


cdef inline uint64_t _enciphered(Authoriser a, uint64_t pan, uint32_t card,
                                 uint32_t account) noexcept:
    # Nothing on disk holds a card number in clear; apply deciphers it, as replay does.
    return pan_cipher(a.state.journal_key, pan, card, account, 0) if a.state.journal_keyed \
        else pan


cdef uint64_t _applied(Authoriser a, JRec* j, uint64_t no, str what, type error) except? 0:
    """Apply the record just made (growing the cards once if they are full), or take it back
    (nothing changed: the record must not stay) and raise ``error``. Its record number."""
    cdef int rc = apply(a.state, j, no)
    if rc == APPLY_FULL:
        a.state.reserve_cards(1)
        rc = apply(a.state, j, no)
    if rc != 0:
        a.journal.retract(j)
        raise error(f"{what} could not be applied ({rc})")
    return no


cdef uint64_t _card_admin(Authoriser a, uint32_t what, uint32_t card, uint64_t pan,
                          uint32_t account, int region, int expiry, int status, int functions,
                          uint32_t operator) except? 0:
    cdef JRec* j
    cdef uint64_t no = a.journal.next_no
    if not (0 <= region <= 0xffff and 0 <= expiry <= 0xffff and 0 <= status <= 0xff
            and 0 <= functions <= 0xff):
        raise ValueError("card region, expiry, status or functions out of range")
    j = _operator_record(a, KIND_CARD_ADMIN, card, account)
    j.card_admin.pan = _enciphered(a, pan, card, account)
    j.card_admin.region = <uint16_t>region
    j.card_admin.expiry_yymm = <uint16_t>expiry
    j.card_admin.status = <uint8_t>status
    j.card_admin.functions = <uint8_t>functions
    j.card_admin.operator = operator
    j.card_admin.action = <uint8_t>what
    return _applied(a, j, no, "card change", RuntimeError)


def foreign_deny(Authoriser a, uint64_t pan, bint listed, uint8_t province) -> int:
    """Another region's card onto (``listed``) or off this switch's transit deny list, as
    its issuer published it (switch/region/blocks.py): the record number, or 0 when the list
    already says so (nothing journaled)."""
    cdef JRec* j
    cdef uint64_t no = a.journal.next_no
    if a.state.foreign_listed(pan) == listed:
        return 0
    j = _operator_record(a, KIND_FOREIGN_DENY, NONE32, NONE32)
    j.foreign_deny.pan = _enciphered(a, pan, NONE32, NONE32)
    j.foreign_deny.issuer_province = province
    j.foreign_deny.listed = listed
    return _applied(a, j, no, "another region's deny-list change", MemoryError)


def adjust(Authoriser a, uint32_t terminal, uint32_t seq, uint32_t card, int64_t amount_fen,
           *, uint8_t exception, uint32_t ref, uint8_t direction, uint32_t operator) -> int:
    """差错调整: journal an operator's resolution of a clearing exception (the terminal and
    STAN it is about, its kind and reference) moving ``amount_fen`` between the card's
    issuer and the terminal's acquirer (``direction`` 1: the acquirer is owed it, 2: it owes
    it); no account changes. Without a card (NONE32: a medical institution's totals) it moves
    nothing and acknowledges the exception. The record number."""
    cdef JRec* j
    cdef uint64_t no = a.journal.next_no
    if terminal >= a.state.n_terminals or (card >= a.state.n_cards and card != NONE32):
        raise IndexError("no such terminal or card")
    if card == NONE32 and amount_fen:
        raise ValueError("an adjustment without a card (no issuer) moves 0 fen: it "
                         "acknowledges an exception")
    if not 0 <= amount_fen <= <int64_t>0x7fffffffffff or direction not in (1, 2):
        raise ValueError("an adjustment moves 0 or more fen, one way (direction 1 or 2)")
    j = _operator_record(a, KIND_ADJUSTMENT, card, NONE32)
    j.head.terminal = terminal
    j.head.seq = seq
    j.head.app = <uint8_t>a.state.term[terminal].app
    j.head.amount_fen = amount_fen
    j.adjustment.operator = operator
    j.adjustment.ref = ref
    j.adjustment.exception = exception
    j.adjustment.direction = direction
    return _applied(a, j, no, "adjustment", RuntimeError)

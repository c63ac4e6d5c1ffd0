# cython: language_level=3
"""Forwarding between regional switches: the acquirer's and the issuer's halves.

Acquirer: while the paths answer a received buffer, :meth:`Router.route` sends each request
for another region's card one of three ways. With the issuer's answer installed (in buffer
order) it is answered from it and journaled here as a FORWARDED record. Without one, the paths
stop before that frame (nothing of it or after it is answered) and go on through the rest of
the buffer only to collect what else must be forwarded (``MODE_COLLECT``). The server sends
the collected requests (:meth:`take`: one NATS request per destination), installs the answers
(:meth:`install`) and runs the buffer again from the frame it stopped at. Replies stay in the
order the terminal sent the requests, and a batch costs one round trip per destination.

Issuer: :meth:`Router.serve` decides a forwarded batch in one call, as if its terminals were
local (every region holds the whole terminal registry), so the terminal's ring here makes a
retransmission an idempotent repeat of the original answer.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

from onecard.core.authorise cimport ADVICE_STAND_IN, Authoriser, Res, Txn, currency_or_cny
from onecard.core.codes cimport (RC_00, RC_03, RC_05, RC_12, RC_14, RC_41, RC_51, RC_58, RC_62,
                                 RC_91, RC_94, RC_96)
from onecard.core.crypto cimport pan_cipher
from onecard.core.decide cimport decide
from onecard.core.journal cimport (JF_APPROVED, JF_NO_ORIGINAL, JF_REVERSED, JF_STAND_IN,
                                   JF_VOIDED, NONE32)
from onecard.core.journal cimport JForwarded, JRec
from onecard.core.ledger cimport apply, standin_key
from onecard.core.maps cimport Entry, U64Map
from onecard.core.services cimport venue
from onecard.core.state cimport *
from onecard.core.transit cimport tap

import numpy as np

from onecard.protocols import forward as _spec

cdef enum:
    REQS_MAX = 1 << 16           # requests one process() call may collect (a buffer's worth)
    BLOCKED_MAX = 1 << 26        # other regions' unusable cards known here
    ORIGIN_ISSUER = 1
    ORIGIN_STAND_IN = 2
    ORIGIN_UNAVAILABLE = 3

# The wire records are checked against their tables once, at import.
if sizeof(FwdReq) != _spec.REQUEST.itemsize or sizeof(FwdAns) != _spec.ANSWER.itemsize:
    raise ImportError("core/forward.pxd does not match protocols/forward.py")
if ((_spec.ORIGIN["ISSUER"], _spec.ORIGIN["STAND_IN"], _spec.ORIGIN["UNAVAILABLE"])
        != (ORIGIN_ISSUER, ORIGIN_STAND_IN, ORIGIN_UNAVAILABLE)):
    raise ImportError("core/forward.pyx origins do not match protocols/forward.py")
if _spec.ADVICE_STAND_IN != ADVICE_STAND_IN or set(_spec.STAND_IN_KINDS) != {KIND_TAP, KIND_VENUE}:
    raise ImportError("core stand-in advices do not match protocols/forward.py")
if len(_spec.ORIGINS) + 1 != N_ORIGINS:
    raise ImportError("core/forward.pxd N_ORIGINS does not match protocols/forward.py")
for _name in ("amount_fen", "record_no", "tid", "seq", "rc", "origin", "name", "flags", "kind",
              "recorded"):
    if _name not in _spec.ANSWER.names:
        raise ImportError(f"protocols/forward.py ANSWER lacks {_name}")
_offsets = {name: _spec.ANSWER.fields[name][1] for name in _spec.ANSWER.names}
cdef FwdAns _probe
if (_offsets["record_no"] != <size_t>&_probe.record_no - <size_t>&_probe
        or _offsets["name"] != <size_t>&_probe.name - <size_t>&_probe
        or _offsets["flags"] != <size_t>&_probe.flags - <size_t>&_probe):
    raise ImportError("core/forward.pxd FwdAns field offsets do not match protocols/forward.py")

globals()["NO_PROVINCE"] = <int>NO_PROVINCE

# The issuer's record flags an acquirer keeps: what batch totals and clearing read.
cdef uint8_t KEPT_FLAGS = JF_APPROVED | JF_REVERSED | JF_NO_ORIGINAL | JF_VOIDED


cdef inline uint8_t province_of(uint64_t pan) noexcept nogil:
    """Digits 4 and 5 of the card number (protocols.forward.province_of_pan), 0 if too short."""
    cdef uint64_t p = pan
    cdef int digits = 0
    while p:
        p //= 10
        digits += 1
    if digits < 6:
        return 0
    p = pan
    while digits > 5:
        p //= 10
        digits -= 1
    return <uint8_t>(p % 100)


def province_index(regions) -> np.ndarray:
    """The catalogue's index of each province code (uint8[100]; NO_PROVINCE where the region
    table has none). A card names its province by code (digits 4-5 of its number), the
    catalogue's acceptance masks by index, and a region's code begins with its province's
    (GB/T 2260, as switch/catalogue.py and switch/clearing/hub.py read it): this is how a
    card held only by another region finds its place in the catalogue. A code whose regions
    disagree on the index is left out: stand-in could not tell what the issuer answers."""
    out = np.full(PROVINCE_CODES, NO_PROVINCE, dtype=np.uint8)
    found = {}
    if regions is not None:
        for code, index in zip((regions["code"] // 10000).tolist(),
                               regions["province"].tolist()):
            found.setdefault(code, set()).add(index)
    for code, indexes in found.items():
        if 0 < code < PROVINCE_CODES and len(indexes) == 1:
            out[code] = indexes.pop()
    return out


def _packed(records) -> bytes:
    """Records as wire bytes with their padding zeroed: numpy's selections copy fields, not
    the bytes between them, which would otherwise carry whatever memory held before."""
    out = np.zeros(len(records), dtype=records.dtype)
    out[...] = records
    return out.tobytes()


cdef bint grow(FwdReq** recs, uint8_t** dests, size_t* cap, size_t first) noexcept nogil:
    """Room for more records in a pair of buffers (records, their destinations), doubling
    up to REQS_MAX; False when full or out of memory (the buffers then stay as they were)."""
    cdef size_t bigger
    cdef void* grown
    if cap[0] >= REQS_MAX:
        return False
    bigger = cap[0] * 2 if cap[0] else first
    grown = realloc(recs[0], bigger * sizeof(FwdReq))
    if grown == NULL:
        return False
    recs[0] = <FwdReq*>grown
    grown = realloc(dests[0], bigger)
    if grown == NULL:
        return False
    dests[0] = <uint8_t*>grown
    cap[0] = bigger
    return True


def _by_destination(bytes recs, bytes dests) -> tuple:
    """REQUEST records and their destinations as (destinations, [(destination, records as
    bytes)]), each destination's in the order given."""
    reqs = np.frombuffer(recs, dtype=_spec.REQUEST)
    order = np.frombuffer(dests, dtype=np.uint8)
    return order, [(int(d), _packed(reqs[order == d])) for d in np.unique(order)]


def _answers_for(reqs, got):
    """One chunk's answers to ``reqs``, or 91s when it is missing or the answers do not
    match the requests one for one (marked undelivered when no issuer received them)."""
    ans = None
    if got is not None and got is not _spec.UNDELIVERED:
        raw = bytes(got)
        if len(raw) == len(reqs) * sizeof(FwdAns):
            ans = np.frombuffer(raw, dtype=_spec.ANSWER)
            if not (np.array_equal(ans["tid"], reqs["tid"])
                    and np.array_equal(ans["seq"], reqs["txn"]["seq"])):
                ans = None
    if ans is None:
        ans = np.zeros(len(reqs), dtype=_spec.ANSWER)
        ans["tid"] = reqs["tid"]
        ans["seq"] = reqs["txn"]["seq"]
        ans["rc"] = RC_91
        ans["origin"] = ORIGIN_UNAVAILABLE
        ans["undelivered"] = got is _spec.UNDELIVERED
    return ans


cdef class Router:
    def __cinit__(self):
        self.reqs = NULL
        self.req_dest = NULL
        self.ans = NULL
        self.adv = NULL
        self.adv_dest = NULL

    def __init__(self, Authoriser auth):
        self.auth = auth
        self.st = auth.state
        self.enabled = False
        self.mode = MODE_CONSUME
        memset(self.dest, 0, sizeof(self.dest))
        memset(self.forwardable, 0, sizeof(self.forwardable))
        for kind in _spec.FORWARDED_KINDS:
            self.forwardable[kind] = 1
        self.counts = np.zeros((PROVINCE_CODES, N_ORIGINS), dtype=np.uint64)
        self.counts_p = <uint64_t*><size_t>self.counts.ctypes.data
        memset(self.per_txn_fen, 0, sizeof(self.per_txn_fen))
        memset(self.per_day_fen, 0, sizeof(self.per_day_fen))
        # The region table is reference data, the same in every region and fixed while the
        # switch runs (catalogue versions change the masks, never the province indexes).
        for i, index in enumerate(province_index(self.st.regions).tolist()):
            self.prov_index[i] = index
        self.blocked = U64Map(1024, BLOCKED_MAX)
        self.n_blocked = 0

    def __dealloc__(self):
        free(self.reqs)
        free(self.req_dest)
        free(self.ans)
        free(self.adv)
        free(self.adv_dest)

    def block(self, uint64_t pan, uint8_t status, bint denied) -> None:
        """What another region published about one of its cards (switch/region/blocks.py):
        its status (CardStatus) and whether it is on its deny list. Stand-in refuses a card
        that is not active or is deny-listed, with the code its issuer would give."""
        cdef Entry* e
        if self.blocked.reserve(pan) != 0:
            raise MemoryError(f"more than {BLOCKED_MAX} blocked cards of other regions")
        e = self.blocked.upsert(pan)
        self.n_blocked -= e.a != CARD_ACTIVE or e.b
        e.a = status
        e.b = denied
        self.n_blocked += status != CARD_ACTIVE or denied

    @property
    def blocked_cards(self) -> int:
        """Other regions' cards stand-in refuses now."""
        return self.n_blocked

    def configure_stand_in(self, per_txn_fen, per_day_fen) -> None:
        """The stand-in limits for each province's cards (int64[100] each, fen; 0 none), as
        their issuers published them."""
        txn = np.ascontiguousarray(per_txn_fen, dtype=np.int64)
        day = np.ascontiguousarray(per_day_fen, dtype=np.int64)
        if txn.shape != (PROVINCE_CODES,) or day.shape != (PROVINCE_CODES,):
            raise ValueError(f"stand-in limits need {PROVINCE_CODES} entries each")
        if ((txn < 0) | (day < 0) | (txn > _spec.STAND_IN_FEN_MAX)
                | (day > _spec.STAND_IN_FEN_MAX)).any():
            raise ValueError(f"stand-in limits must be 0..{_spec.STAND_IN_FEN_MAX} fen")
        for i in range(PROVINCE_CODES):
            self.per_txn_fen[i] = txn[i]
            self.per_day_fen[i] = day[i]

    def configure(self, dest) -> None:
        """Set the destination of every province code (uint8[100]: 0 here, k the k-th peer);
        forwarding is on when any province is elsewhere."""
        cdef const uint8_t[::1] d = np.ascontiguousarray(dest, dtype=np.uint8)
        cdef int i
        if d.shape[0] != PROVINCE_CODES:
            raise ValueError(f"dest must have {PROVINCE_CODES} entries")
        for i in range(PROVINCE_CODES):
            if d[i] >= DEST_MAX:
                raise ValueError(f"province {i}: destination {d[i]} above {DEST_MAX - 1}")
        for i in range(PROVINCE_CODES):
            self.dest[i] = d[i]
        self.enabled = any(d[i] for i in range(PROVINCE_CODES))

    cdef void begin_frame(self) noexcept nogil:
        self.peek = self.cursor

    cdef bint collect(self, Txn* t, uint64_t tid, uint8_t d) noexcept nogil:
        if self.n_reqs == self.cap and not grow(&self.reqs, &self.req_dest, &self.cap, 256):
            return False
        memset(&self.reqs[self.n_reqs], 0, sizeof(FwdReq))
        self.reqs[self.n_reqs].tid = tid
        memcpy(&self.reqs[self.n_reqs].txn, t, sizeof(Txn))
        self.req_dest[self.n_reqs] = d
        self.n_reqs += 1
        return True

    cdef int route(self, Txn* t, Res* r) noexcept nogil:
        """Where this request is decided (ROUTE_*), by the mode the path is in."""
        cdef uint8_t prov, d
        cdef uint64_t tid
        cdef FwdAns* a
        cdef RingEntry* e
        if not self.enabled or t.kind >= 32 or not self.forwardable[t.kind]:
            return ROUTE_LOCAL
        prov = province_of(t.pan)
        d = self.dest[prov]
        if d == 0:
            return ROUTE_LOCAL
        tid = self.st.term[t.terminal].tid
        e = self.st.seen(t.terminal, t.seq)
        if e.kind == KIND_FORWARDED and e.seq == t.seq and e.aux == ORIGIN_STAND_IN:
            # This switch stood in for it: the issuer has (or will have) the advice, never
            # the request. Answered here, as the first time, in the order of the buffer.
            if self.mode == MODE_COLLECT:
                return ROUTE_LOCAL
            if self.mode == MODE_CONSUME:
                r.duplicate = 1
                r.rc = RC_00 if e.extra == t.kind else RC_94
                r.amount_fen = e.amount_fen if r.rc == RC_00 else 0
                r.record_no = e.record_no
                r.recorded = True
            return ROUTE_ANSWERED
        if self.mode == MODE_PEEK:
            if (self.peek < self.n_ans and self.ans[self.peek].tid == tid
                    and self.ans[self.peek].seq == t.seq):
                self.peek += 1
                return ROUTE_ANSWERED
            return ROUTE_FORWARD
        if self.mode == MODE_CONSUME and self.cursor < self.n_ans:
            a = &self.ans[self.cursor]
            if a.tid == tid and a.seq == t.seq:
                self.cursor += 1
                self.acquired(t, r, a, d, prov)
                return ROUTE_ANSWERED
        if not self.collect(t, tid, d) and self.mode == MODE_CONSUME:
            # Nothing could be queued for the issuer: a switch fault, said at once.
            r.rc = RC_96
            return ROUTE_ANSWERED
        self.mode = MODE_COLLECT
        return ROUTE_FORWARD

    cdef void acquired(self, Txn* t, Res* r, FwdAns* a, uint8_t d,
                       uint8_t province) noexcept nogil:
        """Answer from the issuer's answer and journal the acquirer's FORWARDED record."""
        cdef JForwarded* f
        cdef RingEntry* e
        cdef uint8_t origin = a.origin if 0 < a.origin < N_ORIGINS else ORIGIN_UNAVAILABLE
        if (origin == ORIGIN_UNAVAILABLE and a.undelivered
                and self.stand_in(t, r, province, d)):
            return
        r.amount_fen = a.amount_fen
        r.balance_fen = a.balance_fen
        memcpy(r.x, a.x, sizeof(r.x))
        r.region_code = a.region_code
        r.rc = a.rc
        r.duplicate = a.duplicate
        r.age_band = a.age_band
        r.entitlement = a.entitlement
        r.settle_result = a.settle_result
        r.name_len = min(a.name_len, sizeof(r.name))
        r.id_len = min(a.id_len, sizeof(r.id_number))
        memcpy(r.name, a.name, sizeof(r.name))
        memcpy(r.id_number, a.id_number, sizeof(r.id_number))
        # The reply's retrieval reference is the issuer's record: a retransmission answered
        # from the issuer's ring repeats it exactly.
        r.record_no = a.record_no if a.recorded else 0
        r.recorded = a.recorded != 0
        self.counts_p[province * N_ORIGINS + origin] += 1
        f = self.forwarded(t, province, origin, a.rc)
        if f == NULL:
            return            # out of memory: the issuer's journal still holds the effect
        f.amount_fen = a.amount_fen
        f.flags = a.flags & KEPT_FLAGS
        f.issuer_record_no = a.record_no if a.recorded else 0
        f.issuer_recorded = a.recorded != 0
        f.pool_fen = <int32_t>a.x[0] if t.kind == KIND_MEDICAL else 0
        f.orig_seq = t.orig_seq
        if a.kind:
            f.orig_kind = a.kind
        e = self.st.seen(t.terminal, t.seq)
        f.repeated = (a.recorded and e.kind == KIND_FORWARDED and e.seq == t.seq
                      and <uint64_t>e.amount_fen == a.record_no)
        self.journaled(f)

    cdef JForwarded* forwarded(self, Txn* t, uint8_t province, uint8_t origin,
                               uint8_t rc) noexcept nogil:
        """A new FORWARDED record of this request, with what every origin fills (the rest
        zero); NULL when out of memory."""
        cdef JRec* j = self.auth.journal.append()
        cdef JForwarded* f
        if j == NULL:
            return NULL
        f = &j.forwarded
        f.ts_us = self.auth.now_us
        f.terminal = t.terminal
        f.seq = t.seq
        f.card = NONE32
        f.account = NONE32
        f.kind = KIND_FORWARDED
        f.app = <uint8_t>self.st.term[t.terminal].app
        f.rc = rc
        f.amount_asked_minor = t.amount_fen
        f.currency = currency_or_cny(t)
        f.orig_kind = t.kind
        f.issuer_province = province
        f.origin = origin
        return f

    cdef bint journaled(self, JForwarded* f) noexcept nogil:
        """Apply the FORWARDED record just made (the journal's last): False, and the record
        taken back, when it does not apply."""
        if apply(self.st, <JRec*>f, self.auth.journal.next_no - 1) != 0:
            self.auth.journal.retract(<JRec*>f)
            return False
        return True

    cdef bint stand_in(self, Txn* t, Res* r, uint8_t province, uint8_t d) noexcept nogil:
        """Decide a tap or venue entry for an issuer that did not answer. Refused, as the
        issuer would, when the catalogue refuses it or the card's published status does
        (:meth:`refusal`); else approved within the limits it published (per request, and
        per card per day, at the full fare or price: the holder's concessions are the
        issuer's to know), with the advice queued. Either is journaled as a FORWARDED record
        (origin STAND_IN). False: not applicable, answered 91 as before."""
        cdef Terminal* term = &self.st.term[t.terminal]
        cdef Operator* op
        cdef int64_t fen, spent = 0
        cdef Entry* e
        cdef uint8_t rc
        if self.per_txn_fen[province] <= 0:
            return False             # the issuer asked for no stand-in: nothing is decided
        if t.kind == KIND_TAP and not t.offline and t.direction <= 1:
            op = &self.st.op[term.operator]
            # A metro tap may be charged up to the network's maximum (a trip left open, or
            # the distance once it ends): what the issuer may post is bounded by that.
            fen = op.flat_fare_fen if op.kind != OP_METRO else op.fare_fen_max
        elif t.kind == KIND_VENUE:
            fen = self.st.policy[term.policy].base_fen
        else:
            return False
        rc = self.refusal(t, province)
        if rc == RC_91:
            return False
        if rc != RC_00:
            # The issuer refuses it whatever the amount: refused here too, before the limits
            # (journaled, no advice: nothing moves). Approving it would let the holder
            # through for a posting the issuer then refuses, charged to nobody.
            r.rc = rc
            return self.stood_in(t, r, province, 0)
        if fen < 0 or fen > self.per_txn_fen[province]:
            return False
        e = self.st.standin.find(t.pan)
        if e != NULL and e.a == self.auth.today:
            spent = e.b
        if (spent + fen > self.per_day_fen[province] or self.st.standin.reserve(t.pan) != 0
                or not self.advice_room()):
            return False
        r.rc = RC_00
        if not self.stood_in(t, r, province, fen):
            return False
        self.advise(t, term.tid, fen, d)
        return True

    cdef uint8_t refusal(self, Txn* t, uint8_t province) noexcept nogil:
        """What the issuer would answer a tap or entry whatever its amount, from what every
        region holds: the catalogue and terminal registry, and what the card's issuer
        published about it. The order of Authoriser.card_checks (application offered, card
        status, the card's province accepted at the terminal's place), then the deny list.
        RC_00: nothing known against it (its expiry and functions are the issuer's to know);
        RC_91: its province is not in the region table, so no stand-in."""
        cdef Terminal* term = &self.st.term[t.terminal]
        cdef uint8_t card_prov = self.prov_index[province]
        cdef uint8_t term_prov = self.st.region[term.region].province
        cdef Entry* e = self.blocked.find(t.pan)
        cdef Entry* listed
        cdef bint denied
        if not self.st.app[term.app].active:
            return RC_58
        if e != NULL and e.a != CARD_ACTIVE:
            return RC_41 if e.a == CARD_LOST else RC_05 if e.a == CARD_FROZEN else RC_14
        if card_prov == NO_PROVINCE:
            return RC_91
        if not ((self.st.accept_mask[<size_t>term.app * PROVINCES_MAX + term_prov]
                 >> card_prov) & 1):
            return RC_62
        # Deny-listed: the issuer's latest word, else this switch's own deny list, which is
        # journaled and so known from the start, before the bucket's watch has delivered.
        if e != NULL:
            denied = e.b != 0
        else:
            listed = self.st.foreign_deny.find(t.pan)
            denied = listed != NULL and listed.b != 0
        if denied:
            # A deny-listed card's balance is below zero: a tap is refused for the listing,
            # an entry (even a free one) for the funds (transit.ride, services.venue).
            return RC_05 if t.kind == KIND_TAP else RC_51
        return RC_00

    cdef bint stood_in(self, Txn* t, Res* r, uint8_t province, int64_t fen) noexcept nogil:
        """Journal this switch's own decision for the issuer (r.rc set: 00 for ``fen``
        approved, else a refusal of nothing): the FORWARDED record, origin STAND_IN; an
        approval carries what its advice is rebuilt from (the card enciphered, the tap's
        direction and station). False when it could not be journaled."""
        cdef JForwarded* f = self.forwarded(t, province, ORIGIN_STAND_IN, r.rc)
        if f == NULL:
            return False
        if r.rc == RC_00:
            f.amount_fen = fen
            f.flags = JF_APPROVED
            f.issuer_record_no = (pan_cipher(self.st.journal_key, t.pan, NONE32, NONE32, 0)
                                  if self.st.journal_keyed else t.pan)
            f.pool_fen = t.direction
            f.orig_seq = t.station_id
        if not self.journaled(f):
            return False
        r.amount_fen = fen if r.rc == RC_00 else 0
        r.record_no = self.auth.journal.next_no - 1
        r.recorded = True
        self.counts_p[province * N_ORIGINS + ORIGIN_STAND_IN] += 1
        return True

    cdef bint advice_room(self) noexcept nogil:
        return self.n_adv < self.adv_cap or grow(&self.adv, &self.adv_dest, &self.adv_cap, 64)

    cdef void advise(self, Txn* t, uint64_t tid, int64_t fen, uint8_t d) noexcept nogil:
        """The stand-in advice, with only what the issuer posts (zero elsewhere: the same
        bytes whether built here or from the journal at a restart, switch/region/advices.py)."""
        cdef FwdReq* q = &self.adv[self.n_adv]
        memset(q, 0, sizeof(FwdReq))
        q.tid = tid
        q.txn.pan = t.pan
        q.txn.amount_fen = fen
        q.txn.seq = t.seq
        q.txn.station_id = t.station_id
        q.txn.time_s = <uint32_t>(self.auth.now_us // 1000000)
        q.txn.kind = t.kind
        q.txn.direction = t.direction
        q.txn.offline = ADVICE_STAND_IN
        self.adv_dest[self.n_adv] = d
        self.n_adv += 1

    def take_advices(self) -> list:
        """The stand-in advices queued since the last call, and forget them: [(destination,
        REQUEST records as bytes)], each in the order stood in (their FORWARDED records are
        journaled: send them once those are durable)."""
        if self.n_adv == 0:
            return []
        _, batches = _by_destination(bytes((<char*>self.adv)[:self.n_adv * sizeof(FwdReq)]),
                                     bytes((<char*>self.adv_dest)[:self.n_adv]))
        self.n_adv = 0
        return batches

    def take(self) -> tuple:
        """The requests collected by the last process() call, and forget them: (order, batches)
        with ``order`` the destination of each request in buffer order (uint8 array) and
        ``batches`` [(destination, REQUEST records as bytes)], each in buffer order. The caller
        keeps ``order`` for :meth:`install` (other connections use the router meanwhile)."""
        if self.n_reqs == 0:
            return np.zeros(0, dtype=np.uint8), []
        taken = _by_destination(bytes((<char*>self.reqs)[:self.n_reqs * sizeof(FwdReq)]),
                                bytes((<char*>self.req_dest)[:self.n_reqs]))
        self.n_reqs = 0
        return taken

    def install(self, order, list answers) -> list:
        """The issuers' answers before the buffer is run again: ``order`` from :meth:`take`
        and [(destination, REQUEST bytes sent, ANSWER bytes or None)], a destination's chunks
        in the order sent. They are merged back into buffer order. A chunk that was not
        answered (None), or whose answers do not match its requests one for one (terminal id
        and sequence), gets 91 for each of its requests: the run then makes progress whatever
        a peer sends. Returns, per entry of ``answers``, its REQUEST records answered 91 (the
        issuer may or may not have decided them: switch/region/advices.py)."""
        order = np.asarray(order, dtype=np.uint8)
        if len(order) > REQS_MAX:
            raise ValueError(f"more than {REQS_MAX} answers")
        sent = [np.frombuffer(s, dtype=_spec.REQUEST) for _, s, _ in answers]
        got = [_answers_for(reqs, g) for reqs, (_, _, g) in zip(sent, answers)]
        unanswered = [reqs[a["origin"] == ORIGIN_UNAVAILABLE] for reqs, a in zip(sent, got)]
        merged = np.zeros(len(order), dtype=_spec.ANSWER)
        for d in np.unique(order):
            parts = [a for (dd, _, _), a in zip(answers, got) if dd == d]
            at = np.flatnonzero(order == d)
            n = sum(len(p) for p in parts)
            if n != len(at):
                raise ValueError(f"destination {d}: {n} requests sent, {len(at)} taken")
            merged[at] = np.concatenate(parts)
        self.clear()
        if len(merged) == 0:
            return unanswered
        grown = realloc(self.ans, len(merged) * sizeof(FwdAns))
        if grown == NULL:
            raise MemoryError()
        self.ans = <FwdAns*>grown
        self.ans_cap = len(merged)
        raw = merged.tobytes()
        memcpy(self.ans, <char*>raw, len(raw))
        self.n_ans = len(merged)
        return unanswered

    def clear(self) -> None:
        """Forget installed answers (after the run they were for)."""
        self.n_ans = 0
        self.cursor = 0
        self.peek = 0
        self.mode = MODE_CONSUME

    @property
    def pending(self) -> int:
        """Requests collected and not yet taken."""
        return self.n_reqs

    def serve(self, data) -> tuple:
        """The issuer's half: decide a forwarded batch (REQUEST records) in order, as the
        terminals' own switch would. Returns (ANSWER records, journal number to await before
        answering: every record of the batch is below it)."""
        cdef const uint8_t[::1] view = data
        cdef size_t n, i
        cdef FwdReq* reqs
        cdef FwdAns* a
        cdef Txn t
        cdef Res r
        if len(data) % sizeof(FwdReq):
            raise ValueError("forwarded batch is not a whole number of requests")
        n = len(data) // sizeof(FwdReq)
        if n > _spec.BATCH_MAX:
            raise ValueError(f"forwarded batch above {_spec.BATCH_MAX} requests")
        out = np.zeros(n, dtype=_spec.ANSWER)
        if n == 0:
            return out.tobytes(), self.auth.journal.next_no
        cdef uint8_t[::1] o = out.view(np.uint8)
        reqs = <FwdReq*>&view[0]
        a = <FwdAns*>&o[0]
        with nogil:
            for i in range(n):
                memcpy(&t, &reqs[i].txn, sizeof(Txn))
                self.serve_one(reqs[i].tid, &t, &r, &a[i])
        return out.tobytes(), self.auth.journal.next_no

    cdef void serve_one(self, uint64_t tid, Txn* t, Res* r, FwdAns* a) noexcept nogil:
        cdef int64_t idx = self.st.find_terminal(tid)
        cdef uint64_t first_new = self.auth.journal.next_no
        cdef JRec* rec
        a.tid = tid
        a.seq = t.seq
        a.origin = ORIGIN_ISSUER
        a.kind = t.kind
        if idx < 0:
            a.rc = RC_03
            return
        t.terminal = <uint32_t>idx
        if t.kind >= 32 or not self.forwardable[t.kind]:
            a.rc = RC_12
            return
        if not (self.st.term[idx].permitted >> t.kind) & 1:
            a.rc = RC_58
            return
        if t.offline != ADVICE_STAND_IN and self.stood_in_before(t):
            a.rc = RC_94
            return
        memset(r, 0, sizeof(Res))
        r.card = NONE32
        r.rc = RC_96
        if t.offline != ADVICE_STAND_IN:
            decide(self.auth, t, r)
        elif not self.post_advice(t, a):
            return
        elif t.kind == KIND_TAP:
            tap(self.auth, t, r)
        else:
            venue(self.auth, t, r)
        a.amount_fen = r.amount_fen
        a.balance_fen = r.balance_fen
        memcpy(a.x, r.x, sizeof(a.x))
        a.record_no = r.record_no
        a.region_code = r.region_code
        a.rc = r.rc
        a.duplicate = r.duplicate
        a.age_band = r.age_band
        a.name_len = r.name_len
        a.id_len = r.id_len
        a.entitlement = r.entitlement
        a.settle_result = r.settle_result
        memcpy(a.name, r.name, sizeof(a.name))
        memcpy(a.id_number, r.id_number, sizeof(a.id_number))
        a.recorded = r.recorded
        if r.recorded and first_new <= r.record_no < self.auth.journal.next_no:
            rec = &self.auth.journal.recs[self.auth.journal.n
                                          - (self.auth.journal.next_no - r.record_no)]
            a.flags = rec.head.flags
            a.kind = rec.head.kind

    cdef bint post_advice(self, Txn* t, FwdAns* a) noexcept nogil:
        """Another region stood in for this tap or entry: True to post it now. False with
        ``a`` answered when it cannot be (12) or was posted before (00, duplicate): a posting
        is kept by (terminal, seq) in the idempotency horizon (ledger.posted), so one
        delivered again, by the stream, by its redelivery after a crash or by the acquirer's
        resend at its start, has no second effect in whatever order it comes. Past the
        horizon the terminal's stand-in watermark still says what was posted."""
        cdef Entry* w
        cdef RingEntry* e
        if (t.kind != KIND_TAP and t.kind != KIND_VENUE) or t.time_s == 0:
            a.rc = RC_12
            return False
        e = self.st.seen(t.terminal, t.seq)
        w = self.st.standin_posted.find(t.terminal)
        if ((e.seq == t.seq and e.kind == t.kind and e.flags & JF_STAND_IN)
                or (w != NULL and self.st.horizon.forgot(t.terminal, t.seq, <uint64_t>1 << 32)
                    and standin_key(<int64_t>t.time_s * 1000000, t.seq) <= <uint64_t>w.a)):
            a.rc = RC_00
            a.duplicate = 1
            return False
        return True

    cdef bint stood_in_before(self, Txn* t) noexcept nogil:
        """A tap or entry at or below its terminal's stand-in watermark, not in the ring: one
        the acquirer stood in for (or an older one) sent again after the acquirer's ring moved
        on. Deciding it would charge twice: refused (94)."""
        cdef Entry* e
        cdef RingEntry* slot
        if (t.kind != KIND_TAP and t.kind != KIND_VENUE) or t.offline:
            return False
        e = self.st.standin_posted.find(t.terminal)
        if e == NULL or standin_key(self.auth.now_us, t.seq) > <uint64_t>e.a:
            return False
        slot = self.st.seen(t.terminal, t.seq)
        return not (slot.seq == t.seq and slot.kind == t.kind)

# cython: language_level=3
"""Transit taps, online and uploaded from offline gates.

Kiosks at stations top cards up (圈存). Bus and ferry readers charge a flat fare on boarding;
metro gates open a trip on tap-in and charge the fare for the network distance on tap-out (a
missing tap-out or tap-in costs the network's maximum fare). Concessions come from the city's
policy table (elderly by age, disabled); a ride that starts within the city's transfer window
after the previous one ended gets the transfer discount. Online taps need the money (the gate
stays shut otherwise) and refuse cards on the deny list; offline taps are applied in sequence
order, once (a watermark per terminal), and may take a balance below zero, which puts the card
on the deny list.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.codes cimport *
from onecard.core.journal cimport JRec
from onecard.core.state cimport *


cdef inline int64_t transfer(Authoriser a, Account* acct, Operator* op, Region* reg,
                             uint32_t when, int64_t fare) noexcept nogil:
    if (reg.transfer_minutes and acct.last_ride_s and acct.last_ride_region == op.region
            and when >= acct.last_ride_s
            and when - acct.last_ride_s <= <uint32_t>reg.transfer_minutes * 60):
        fare -= reg.transfer_discount_fen
    return fare if fare > 0 else 0


cdef void tap(Authoriser a, Txn* t, Res* r) noexcept nogil:
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef Terminal* term = &a.state.term[t.terminal]
    cdef Operator* op = &a.state.op[term.operator]
    cdef Region* reg = &a.state.region[op.region]
    cdef Card* c
    cdef Account* acct
    cdef Operator* open_op
    cdef JRec* j
    cdef int64_t s_idx = -1, fare = 0, need = 0
    cdef uint32_t trip_station = 0, trip_time = 0, when, start, last_ride = 0, last_region = 0
    cdef bint ride_ends = False
    if t.offline:
        if t.seq <= term.offline_hw:
            r.rc = RC_94               # this upload was applied before: acknowledge only
            r.duplicate = 1
            return
        t.kind = KIND_OFFLINE_TAP
    elif a.duplicate(t, idx, r):
        return
    when = t.time_s if t.time_s else a.now_s
    if a.card_checks(t, idx, r) >= 0:
        c = &a.state.card[idx]
        acct = &a.state.acct[c.account]
        trip_station = c.trip_station
        trip_time = c.trip_time_s
        last_ride = acct.last_ride_s
        last_region = acct.last_ride_region
        if not t.offline and acct.flags & HOLDER_DENIED:
            r.rc = RC_05               # on the deny list until topped up
        elif t.direction > 1:
            r.rc = RC_12
        elif op.kind != OP_METRO:
            fare = transfer(a, acct, op, reg, when, a.concession(op.flat_fare_fen, acct, reg))
            need = fare
            ride_ends = True
            r.rc = RC_00
        else:
            s_idx = a.state.find_station(t.station_id)
            if s_idx < 0 or a.state.stn[s_idx].operator != term.operator:
                r.rc = RC_12           # a gate may only report its own network's stations
            elif t.direction == 0:
                if c.trip_station:     # the last trip never tapped out: maximum fare
                    open_op = &a.state.op[a.state.stn[c.trip_station - 1].operator]
                    fare = a.concession(open_op.max_fare_fen, acct, reg)
                need = fare + a.concession(op.flat_fare_fen, acct, reg)
                trip_station = <uint32_t>(s_idx + 1)
                trip_time = when
                r.rc = RC_00
            else:
                start = when
                if c.trip_station and a.state.stn[c.trip_station - 1].operator == term.operator:
                    fare = a.state.fare[op.fare_off + a.state.stn[c.trip_station - 1].local * op.n_stations
                                   + a.state.stn[s_idx].local]
                    start = c.trip_time_s  # the transfer window counts to when the ride began
                else:                  # no tap-in on this network: maximum fare
                    fare = op.max_fare_fen
                fare = transfer(a, acct, op, reg, start,
                                a.concession(<int32_t>fare, acct, reg))
                need = fare
                trip_station = 0
                trip_time = 0
                ride_ends = True
                r.rc = RC_00
            if r.rc == RC_00 and not t.offline and acct.balance_fen < need:
                r.rc = RC_51           # the gate stays shut; the trip state is unchanged
        if ride_ends:
            last_ride = when
            last_region = op.region
    j = a.record(t, r, idx)
    if j == NULL:
        return
    j.b = (<uint64_t>t.station_id << 8) | t.direction
    j.c = last_ride
    j.e = last_region
    if r.rc == RC_00:
        j.amount_fen = fare
        j.balance_fen -= fare
        j.a = (<uint64_t>trip_station << 32) | trip_time
    r.amount_fen = fare if r.rc == RC_00 else 0
    a.commit(j, r)


cdef void topup(Authoriser a, Txn* t, Res* r) noexcept nogil:
    """Cash paid in at a kiosk (圈存) onto the card's account; a card on the deny list comes
    off it once the balance is back at zero or above. Lost, frozen and replaced cards are
    refused like anywhere else: the money would go where the holder cannot spend it."""
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef JRec* j
    if a.duplicate(t, idx, r):
        return
    if a.card_checks(t, idx, r) >= 0:
        r.rc = RC_13 if t.amount_fen <= 0 or t.amount_fen > a.max_topup_fen else RC_00
    j = a.record(t, r, idx)
    if j == NULL:
        return
    j.b = <uint64_t>t.amount_fen       # as asked: a retransmission must match it
    if r.rc == RC_00:
        j.amount_fen = t.amount_fen
        j.balance_fen += t.amount_fen
    r.amount_fen = t.amount_fen if r.rc == RC_00 else 0
    a.commit(j, r)

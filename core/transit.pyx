# cython: language_level=3
"""Transit taps, online and uploaded from offline gates.

Kiosks at stations top cards up (圈存). Bus and ferry readers charge a flat fare on boarding;
metro gates open a trip on tap-in and charge the fare for the network distance on tap-out (a
missing tap-out or tap-in costs the network's maximum fare). Concessions come from the city's
policy table (elderly by age, disabled); a ride that starts within the city's transfer window
after the previous one ended gets the transfer discount (kept in the tap's record, by which
clearing apportions the journey between its operators). Online taps need the money (the gate
stays shut otherwise) and refuse cards on the deny list; offline taps are applied in sequence
order, once (a watermark per terminal), and may take a balance below zero, which puts the card
on the deny list.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t
from libc.string cimport memset

from onecard.core.authorise cimport ADVICE_STAND_IN, Authoriser, Res, Txn, stand_in_posting
from onecard.core.codes cimport *
from onecard.core.journal cimport JRec
from onecard.core.state cimport *


cdef struct Ride:                # what a tap decides; its record keeps it if approved
    int64_t fare
    int64_t discount             # the transfer discount in it (clearing apportions by it)
    int64_t need                 # what the balance must cover (an online gate stays shut)
    uint32_t trip_station        # the card's open metro trip after the tap
    uint32_t trip_time
    bint ends                    # a ride ends here: transfer discounts count from it


cdef inline void transfer(Account* acct, Operator* op, Region* reg, uint32_t when,
                          int64_t fare, Ride* ride) noexcept nogil:
    """The ride's fare, less the transfer discount inside the window. The discount kept is
    what was taken off (never more than the fare), so fare + discount is the undiscounted
    fare the journey is apportioned by (protocols/CLEARING.md)."""
    cdef int64_t off = 0
    if (reg.transfer_minutes and acct.last_ride_s and acct.last_ride_region == op.region
            and when >= acct.last_ride_s
            and when - acct.last_ride_s <= <uint32_t>reg.transfer_minutes * 60):
        off = reg.transfer_discount_fen if reg.transfer_discount_fen < fare else fare
    ride.fare = fare - off if fare > 0 else 0
    ride.discount = off if off > 0 else 0


cdef uint8_t metro(Authoriser a, Txn* t, Card* c, Account* acct, Operator* op, Region* reg,
                   uint32_t when, Ride* ride) noexcept nogil:
    """Tap in opens a trip (and charges the maximum fare for one left open); tap out charges
    the fare between the stations, or the maximum without a tap in on this network."""
    cdef int64_t s_idx = a.state.find_station(t.station_id)
    cdef uint32_t network = a.state.term[t.terminal].operator
    cdef uint32_t start = when
    cdef Station* entry
    cdef int64_t fare
    if s_idx < 0 or a.state.stn[s_idx].operator != network:
        return RC_12                   # a gate may only report its own network's stations
    if t.direction == 0:
        if c.trip_station:             # the last trip never tapped out: maximum fare
            ride.fare = a.concession(a.state.op[a.state.stn[c.trip_station - 1].operator]
                                     .fare_fen_max, acct, reg)
        ride.need = ride.fare + a.concession(op.flat_fare_fen, acct, reg)
        ride.trip_station = <uint32_t>(s_idx + 1)
        ride.trip_time = when
        return RC_00
    if c.trip_station and a.state.stn[c.trip_station - 1].operator == network:
        entry = &a.state.stn[c.trip_station - 1]
        fare = a.state.fare[op.fare_off + entry.local * op.n_stations
                            + a.state.stn[s_idx].local]
        start = c.trip_time_s          # the transfer window counts to when the ride began
    else:
        fare = op.fare_fen_max
    transfer(acct, op, reg, start, a.concession(<int32_t>fare, acct, reg), ride)
    ride.need = ride.fare
    ride.trip_station = 0
    ride.trip_time = 0
    ride.ends = True
    return RC_00


cdef uint8_t ride(Authoriser a, Txn* t, Card* c, Account* acct, Operator* op, Region* reg,
                  uint32_t when, Ride* out) noexcept nogil:
    """The fare of a tap by a usable card: flat on buses and ferries, by distance on metros."""
    cdef uint8_t rc
    if not t.offline and acct.flags & HOLDER_DENIED:
        return RC_05                   # on the deny list until topped up
    if t.direction > 1:
        return RC_12
    if op.kind != OP_METRO:
        transfer(acct, op, reg, when, a.concession(op.flat_fare_fen, acct, reg), out)
        out.need = out.fare
        out.ends = True
        rc = RC_00
    else:
        rc = metro(a, t, c, acct, op, reg, when, out)
    if rc == RC_00 and not t.offline and acct.balance_fen < out.need:
        return RC_51                   # the gate stays shut; the trip state is unchanged
    return rc


cdef void tap(Authoriser a, Txn* t, Res* r) noexcept nogil:
    cdef int64_t idx = a.state.find_card(t.pan)
    cdef Terminal* term = &a.state.term[t.terminal]
    cdef Operator* op = &a.state.op[term.operator]
    cdef Card* c
    cdef Account* acct
    cdef JRec* j
    cdef Ride trip
    cdef uint32_t when, last_ride = 0, last_region = 0
    memset(&trip, 0, sizeof(Ride))
    if t.offline == ADVICE_STAND_IN:
        t.kind = KIND_OFFLINE_TAP      # a tap another region let through: posted like one
    elif t.offline:
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
        trip.trip_station = c.trip_station
        trip.trip_time = c.trip_time_s
        r.rc = ride(a, t, c, acct, op, &a.state.region[op.region], when, &trip)
        last_ride = when if trip.ends else acct.last_ride_s
        last_region = op.region if trip.ends else acct.last_ride_region
    j = a.record(t, r, idx)
    if j == NULL:
        return
    if t.offline == ADVICE_STAND_IN:
        stand_in_posting(j, t)
    j.tap.station_id = t.station_id
    j.tap.direction = t.direction
    j.tap.last_ride_s_after = last_ride
    j.tap.last_ride_region_after = <uint16_t>last_region
    if r.rc == RC_00:
        j.tap.amount_fen = trip.fare
        j.tap.transfer_discount_fen = <uint16_t>trip.discount
        j.tap.balance_fen_after -= trip.fare
        j.tap.trip_station_after = <uint16_t>trip.trip_station
        j.tap.trip_started_s_after = trip.trip_time
    r.amount_fen = trip.fare if r.rc == RC_00 else 0
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
        r.rc = RC_13 if t.amount_fen <= 0 or t.amount_fen > a.topup_fen_max else RC_00
    j = a.record(t, r, idx)
    if j == NULL:
        return
    j.topup.amount_asked_fen = t.amount_fen     # a retransmission must match it
    if r.rc == RC_00:
        j.topup.amount_fen = t.amount_fen
        j.topup.balance_fen_after += t.amount_fen
    r.amount_fen = t.amount_fen if r.rc == RC_00 else 0
    a.commit(j, r)

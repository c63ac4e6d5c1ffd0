"""Stand-in in the core (issue 15): an acquirer whose issuer does not answer approves low-value
taps and venue entries within the limits the issuer published, journals them (FORWARDED,
origin STAND_IN), and hands the advices to the link; the issuer posts each advice once, even
without the money (the card then goes onto the deny list). Without NATS: tests/test_forward.py's
Pair passes batches between two engines; tests/test_region_standin.py runs the switches."""

import time

import numpy as np
import pytest

from onecard.core.engine import NATIVE
from onecard.core.ledger import apply_records
from onecard.core.state import TERM_BUS_READER, TERM_KIOSK, TERM_METRO_GATE, TERM_VENUE
from onecard.protocols import forward, native
from onecard.protocols.journal import FLAGS
from onecard.protocols.journal_codec import decode, unpack

from termsim import NativeTerminal
from test_forward import FOREIGN, HOME, Pair, _code, records

PER_TXN, PER_DAY = 1_000, 3_000
FLAG = {name: bit for name, bit, _ in FLAGS}
STAND_IN, DENY_SET = FLAG["STAND_IN"], FLAG["DENY_SET"]


@pytest.fixture
def pair(demo_dir, terminals) -> Pair:
    p = Pair(demo_dir, terminals)
    txn, day = np.zeros(100, np.int64), np.zeros(100, np.int64)
    txn[FOREIGN], day[FOREIGN] = PER_TXN, PER_DAY
    p.acq.engine.router.configure_stand_in(txn, day)
    p.unanswered = forward.UNDELIVERED           # the issuer's switch is gone
    return p


def stood_in(world) -> list:
    return [r for r in records(world) if r.kind_name == "FORWARDED"
            and r.origin == forward.ORIGIN["STAND_IN"]]


def post(pair, advices: list) -> np.ndarray:
    """The issuer posts the advices (as its advice consumer does): their answers."""
    (_, data), = advices
    return np.frombuffer(pair.serve(data), dtype=forward.ANSWER)


def fare_of(pair, g) -> int:
    op = pair.acq.state.operators[pair.acq.state.terminals["operator"][g.info.idx]]
    return int(op["flat_fare_fen"])


def test_an_issuer_that_does_not_answer_is_stood_in_for_and_posts_the_advice_once(pair):
    g = pair.native(TERM_BUS_READER)
    pan, idx = pair.card()
    fare = fare_of(pair, g)
    records(pair.acq)
    pair.up = False
    (reply,) = g.send([g.tap(pan)])
    assert reply.rc == "00" and reply.fare_fen == fare
    (rec,) = stood_in(pair.acq)
    assert (rec.amount_fen, rec.issuer_recorded, rec.issuer_province) == (fare, 0, FOREIGN)
    assert pair.iss.balance(idx) == 100_000           # nothing at the issuer yet
    advices = pair.acq.engine.router.take_advices()
    assert [d for d, _ in advices] == [1]
    zeroed = np.zeros(1, dtype=forward.REQUEST)       # padding zero: no stale memory sent
    zeroed[...] = np.frombuffer(advices[0][1], dtype=forward.REQUEST)
    assert zeroed.tobytes() == advices[0][1]
    (adv,) = np.frombuffer(advices[0][1], dtype=forward.REQUEST)
    assert adv["txn"]["offline"] == forward.ADVICE_STAND_IN
    assert adv["txn"]["amount_fen"] == fare
    pair.up = True
    records(pair.iss)
    (ans,) = post(pair, advices)
    assert ans["rc"] == _code("00") and not ans["duplicate"]
    (posting,) = records(pair.iss)
    assert posting.kind_name == "OFFLINE_TAP" and posting.flags & STAND_IN
    charged = 100_000 - pair.iss.balance(idx)
    assert 0 < charged <= fare                    # the issuer's concessions may lower it
    for _ in range(2):                            # the stream, or a resend, delivers again
        (again,) = post(pair, advices)
        assert again["rc"] == _code("00") and again["duplicate"]
    assert records(pair.iss) == [] and 100_000 - pair.iss.balance(idx) == charged


def test_stand_in_keeps_to_the_published_limits(pair):
    g = pair.native(TERM_BUS_READER)
    pan, _ = pair.card()
    fare = fare_of(pair, g)
    pair.up = False
    codes = [g.send([g.tap(pan)])[0].rc for _ in range(PER_DAY // fare + 2)]
    allowed = PER_DAY // fare
    assert codes == ["00"] * allowed + ["91"] * 2
    assert sum(r.amount_fen for r in stood_in(pair.acq)) <= PER_DAY
    # another card has its own day's total; a request above the per-request limit is 91
    other, _ = pair.card(nth=1)
    assert g.send([g.tap(other)])[0].rc == "00"
    txn = np.zeros(100, np.int64)
    txn[FOREIGN] = fare - 1
    pair.acq.engine.router.configure_stand_in(txn, txn * 10)
    assert g.send([g.tap(other)])[0].rc == "91"


def test_an_issuer_that_may_have_decided_is_not_stood_in_for(pair):
    """A timeout leaves the request's fate unknown (the issuer may be slow, not gone):
    standing in could charge the card a second time, so the tap gets 91."""
    g = pair.native(TERM_BUS_READER)
    pan, _ = pair.card()
    pair.up, pair.unanswered = False, None
    assert g.send([g.tap(pan)])[0].rc == "91"
    assert stood_in(pair.acq) == []


def test_a_tap_sent_again_after_the_acquirer_forgot_it_gets_the_posted_answer(pair):
    g = pair.native(TERM_BUS_READER)
    pan, idx = pair.card()
    pair.up = False
    seq = g.next_seq()
    assert g.send([native.Tap(seq, pan, 0, native.TAP_IN, 0)])[0].rc == "00"
    pair.up = True
    post(pair, pair.acq.engine.router.take_advices())
    charged = pair.iss.balance(idx)
    # The acquirer forgot it: the issuer holds the posting by terminal and seq (issue 27's
    # horizon) and answers it as posted, without a second charge.
    pair.acq.state.ring[pair.acq.state.ring["seq"] == seq] = 0
    assert g.send([native.Tap(seq, pan, 0, native.TAP_IN, 0)])[0].rc == "00"
    assert pair.iss.balance(idx) == charged
    assert g.send([g.tap(pan)])[0].rc == "00"    # later taps are decided as ever


def test_purchases_and_provinces_without_limits_get_91(pair):
    t = pair.iso()
    pan, _ = pair.card()
    pair.up = False
    (r,) = t.send(t.purchase(pan, 100))
    assert r["39"] == "91"
    g = pair.native(TERM_BUS_READER)
    zero = np.zeros(100, np.int64)
    pair.acq.engine.router.configure_stand_in(zero, zero)
    assert g.send([g.tap(pan)])[0].rc == "91"
    assert stood_in(pair.acq) == [] and pair.acq.engine.router.take_advices() == []


def test_a_stood_in_tap_sent_again_is_answered_by_the_acquirer_not_the_issuer(pair):
    """Once the issuer is back, forwarding the retransmission would charge the card twice
    (the advice posts it too): the acquirer's ring answers it."""
    g = pair.native(TERM_BUS_READER)
    pan, idx = pair.card()
    pair.up = False
    seq = g.next_seq()
    tap = native.Tap(seq, pan, 0, native.TAP_IN, 0)
    first = g.send([tap])[0]
    pair.up = True
    served = pair.rounds
    again = g.send([tap])[0]
    assert (again.rc, again.fare_fen) == (first.rc, first.fare_fen) and first.rc == "00"
    assert pair.rounds == served                  # not forwarded
    assert pair.iss.balance(idx) == 100_000
    assert len(pair.acq.engine.router.take_advices()[0][1]) == forward.REQUEST.itemsize


def test_an_advice_that_overdraws_puts_the_card_on_the_deny_list(pair):
    g = pair.native(TERM_BUS_READER)
    pan, idx = pair.card(balance=0)
    pair.up = False
    assert g.send([g.tap(pan)])[0].rc == "00"    # the acquirer cannot see the balance
    pair.up = True
    (ans,) = post(pair, pair.acq.engine.router.take_advices())
    assert ans["rc"] == _code("00")
    assert pair.iss.balance(idx) < 0
    (posting,) = [r for r in records(pair.iss) if r.kind_name == "OFFLINE_TAP"]
    assert posting.flags & DENY_SET
    assert g.send([g.tap(pan)])[0].rc == "05"    # online now: refused at the issuer


def test_venue_entries_are_stood_in_for_at_the_full_price_within_the_limits(pair):
    st = pair.acq.state
    venues = [t for t in pair.acq.terminals if t.kind == TERM_VENUE and t.province == HOME]
    prices = [int(st.policies["base_fen"][st.terminals["policy"][t.idx]]) for t in venues]
    free, paid = prices.index(0), next(i for i, p in enumerate(prices) if p > PER_TXN)
    gates = {}
    for i in (free, paid):
        gates[i] = NativeTerminal(venues[i], pair.exchange(NATIVE))
        assert gates[i].signon().rc == "00"
    pan, idx = pair.card()
    pair.up = False

    def enter(i):
        (reply,) = gates[i].send([native.VenueEntry(gates[i].next_seq(), pan)])
        return reply.rc, reply.fee_fen

    assert enter(free) == ("00", 0)               # a free museum or library: a card check
    assert enter(paid)[0] == "91"                 # a scenic spot above the limit
    txn = np.zeros(100, np.int64)
    txn[FOREIGN] = prices[paid]
    pair.acq.engine.router.configure_stand_in(txn, txn)
    assert enter(paid) == ("00", prices[paid])
    pair.up = True
    answers = post(pair, pair.acq.engine.router.take_advices())
    assert list(answers["rc"]) == [_code("00")] * 2
    assert 0 <= 100_000 - pair.iss.balance(idx) <= prices[paid]


def test_metro_taps_are_bounded_by_the_networks_maximum_fare(pair):
    gate = pair.native(TERM_METRO_GATE)
    op = pair.acq.state.operators[pair.acq.state.terminals["operator"][gate.info.idx]]
    pan, _ = pair.card()
    txn = np.zeros(100, np.int64)
    txn[FOREIGN] = int(op["fare_fen_max"])
    pair.acq.engine.router.configure_stand_in(txn, txn * 4)
    pair.up = False
    (reply,) = gate.send([gate.tap(pan, station=gate.info.station_id)])
    assert (reply.rc, reply.fare_fen) == ("00", int(op["fare_fen_max"]))


def test_a_restart_keeps_the_days_totals_and_the_issuers_watermark(pair):
    """Both are state rebuilt from the journal: replaying it gives them again."""
    g = pair.native(TERM_BUS_READER)
    pan, _ = pair.card()
    pair.up = False
    for _ in range(2):
        assert g.send([g.tap(pan)])[0].rc == "00"
    advices = pair.acq.engine.router.take_advices()
    pair.up = True
    post(pair, advices)
    for world in (pair.acq, pair.iss):
        fresh = type(world)(world.data_dir, world.terminals)
        first, data = world.engine.journal.take()
        apply_records(fresh.state, data, first)
        for name in ("standin", "standin_posted"):
            assert np.array_equal(np.sort(getattr(fresh.state, name).export()),
                                  np.sort(getattr(world.state, name).export())), name
    assert len(pair.acq.state.standin.export()) == 1
    (ans,) = post(pair, advices)[:1]
    assert ans["duplicate"]


def test_limits_out_of_range_are_refused(pair):
    bad = np.zeros(100, np.int64)
    bad[FOREIGN] = forward.STAND_IN_FEN_MAX + 1
    with pytest.raises(ValueError, match="stand-in limits"):
        pair.acq.engine.router.configure_stand_in(bad, bad)
    with pytest.raises(ValueError, match="100 entries"):
        pair.acq.engine.router.configure_stand_in(bad[:5], bad[:5])



def test_a_restart_sends_again_the_same_stand_in_advice(pair):
    """Rebuilt from the journal (the card number deciphered), the advice and its stream key
    are those the core queued live: the stream drops the copy, the issuer would too."""
    from types import SimpleNamespace

    from onecard.switch.region.advices import Advices

    g = pair.native(TERM_BUS_READER)
    pan, _ = pair.card()
    records(pair.acq)
    pair.up = False
    assert g.send([g.tap(pan)])[0].rc == "00"
    recs = records(pair.acq)
    assert pan not in {r.issuer_record_no for r in recs}     # never in clear at rest
    live = Advices(SimpleNamespace(name="sh"))
    live.queue_stand_in(["js"], pair.acq.engine.router.take_advices(), 0)
    again = Advices(SimpleNamespace(name="sh"))
    n = again.resend(recs, pair.acq.state.terminals["tid"],
                     lambda p: "js" if p == FOREIGN else None, pair.acq.keys.journal_key)
    assert n == 1
    assert list(again.queues) == list(live.queues) == ["onecard.advice.js"]
    ((_, payload, key),) = again.queues["onecard.advice.js"]
    assert [(p, k) for _, p, k in live.queues["onecard.advice.js"]] == [(payload, key)]
    assert ".s." in key
    assert int(np.frombuffer(payload, dtype=forward.REQUEST)["txn"]["pan"][0]) == int(pan)
    # After a data-key rotation (onecard keys rotate-dek) the record is of an earlier
    # generation: the data set's keys pick its journal key by its number.
    from onecard.switch.security.keystore import DataKeys, JournalGeneration

    rotated = DataKeys(bytes(32), 1, recs[-1].no + 1,
                       (JournalGeneration(0, 0, pair.acq.keys.journal_key),))
    later = Advices(SimpleNamespace(name="sh"))
    assert later.resend(recs, pair.acq.state.terminals["tid"],
                        lambda p: "js" if p == FOREIGN else None, rotated) == 1
    assert list(later.queues["onecard.advice.js"]) == list(again.queues["onecard.advice.js"])


def test_a_card_its_issuer_published_as_unusable_is_refused_not_stood_in_for(pair):
    from onecard.core.state import CARD_ACTIVE, CARD_LOST

    g = pair.native(TERM_BUS_READER)
    pan, _ = pair.card()
    router = pair.acq.engine.router
    pair.up = False
    router.block(int(pan), CARD_LOST, False)
    assert router.blocked_cards == 1
    assert g.send([g.tap(pan)])[0].rc == "41"
    router.block(int(pan), CARD_ACTIVE, True)         # deny-listed (a negative balance)
    assert g.send([g.tap(pan)])[0].rc == "05"
    (refusal, _) = stood_in(pair.acq)
    assert refusal.rc != _code("00") and refusal.amount_fen == 0
    assert router.take_advices() == []                # nothing to post
    router.block(int(pan), CARD_ACTIVE, False)         # topped up, found: usable again
    assert router.blocked_cards == 0
    assert g.send([g.tap(pan)])[0].rc == "00"


def test_the_owner_publishes_its_deny_list_and_status_changes_in_bounded_slices(world):
    """switch/region/blocks.py without NATS: a card driven below zero by an offline upload
    and a card an operator changed are each put once, as (number, status, deny-listed); the
    deny log's tail moves on only once every card of its slice is in the bucket."""
    import asyncio
    from types import SimpleNamespace

    from onecard.switch.region import blocks

    class Kv:
        def __init__(self) -> None:
            self.values: dict[str, bytes] = {}

        async def put(self, key: str, value: bytes) -> int:
            self.values[key] = value
            return len(self.values)

    g = world.native(TERM_BUS_READER)
    pan, idx = world.card(31, min_balance=0)
    world.set_balance(idx, 0)
    (r,) = g.send([native.OfflineTap(g.next_seq(), pan, 0, native.TAP_IN, int(time.time()))])
    assert r.rc == "00" and world.state.deny_version >= 1
    region = SimpleNamespace(name="sh", engine=SimpleNamespace(state=world.state))
    b = blocks.Blocks(region)
    b.kv = Kv()
    other = (idx + 1) % world.state.n_cards
    b.cards_changed([other])

    async def once() -> None:
        b.wakeup.set()
        task = asyncio.create_task(b._publish_loop())
        while b.deny_published < world.state.deny_version:
            await asyncio.sleep(0.01)
        b.closed = True
        await task

    asyncio.run(asyncio.wait_for(once(), 10))
    assert blocks.decode(b.kv.values[f"sh.{idx}"]) == (int(pan), 0, True)
    assert blocks.decode(b.kv.values[f"sh.{other}"])[0] == int(world.state.cards["pan"][other])
    assert b.kv.values[blocks.TAIL_PREFIX + "sh"] == str(world.state.deny_version).encode()


def another_regions_card(world) -> int:
    """A well-formed Jiangsu card number this region does not hold."""
    pan = int(world.card(FOREIGN)[0])
    while world.state.card_index(pan) >= 0:
        pan += 10
    return pan


def test_other_regions_deny_listed_cards_reach_the_gates_deny_list_sync(world):
    """FOREIGN_DENY: another region's card goes onto this switch's deny list and off it
    again as its issuer publishes it; gates learn both in their sync, a repeat journals
    nothing, this region's own entries work as before around it (a top-up clears them and
    leaves the foreign one listed), the owner's publisher never sends it back, and replay
    gives the same deny log and foreign tables."""
    from onecard.core import operations
    from onecard.switch.store import loader

    a, st = world.engine.authoriser, world.state
    bus = world.native(TERM_BUS_READER)
    start = bus.send([native.DenyListSync(bus.next_seq(), 0)])[0].version
    foreign = another_regions_card(world)
    world.engine.tick()
    assert operations.foreign_deny(a, foreign, True, FOREIGN) > 0
    assert operations.foreign_deny(a, foreign, True, FOREIGN) == 0        # already listed
    assert st.foreign_listed(foreign) and st.deny_version == start + 1
    own, idx = world.card(HOME, min_balance=0)
    world.set_balance(idx, 0)
    (r,) = bus.send([native.OfflineTap(bus.next_seq(), own, 0, native.TAP_IN, int(time.time()))])
    assert r.rc == "00" and st.deny_version == start + 2                 # overdrawn: listed
    (got,) = bus.send([native.DenyListSync(bus.next_seq(), start)])
    assert (sorted(got.added), got.removed) == (sorted([str(foreign), own]), [])
    assert [pan for _, pan, _ in st.deny_changes(start, foreign=False)] == [int(own)]
    kiosk = world.native(TERM_KIOSK)
    (paid,) = kiosk.send([native.TopUp(kiosk.next_seq(), own, 100_000)])
    assert paid.rc == "00" and st.foreign_listed(foreign)                # own card off only
    assert operations.foreign_deny(a, foreign, False, FOREIGN) > 0       # its issuer: off
    (got,) = bus.send([native.DenyListSync(bus.next_seq(), start)])
    assert (got.added, sorted(got.removed)) == ([], sorted([str(foreign), own]))

    first, data = world.engine.journal.take()
    marks = [r for r in decode(unpack(data), first) if r.kind_name == "FOREIGN_DENY"]
    assert [(m.listed, m.issuer_province, m.card) for m in marks] == [
        (1, FOREIGN, 0xFFFFFFFF), (0, FOREIGN, 0xFFFFFFFF)]
    assert all(m.pan != foreign for m in marks)                          # enciphered on disk
    fresh = loader.load(world.data_dir)
    apply_records(fresh.state, data, first)
    live, replayed = st.snapshot(), fresh.state.snapshot()
    assert np.array_equal(live["deny_log"], replayed["deny_log"])
    for name in ("foreign_deny", "foreign_pan"):
        assert np.array_equal(np.sort(live[name], order="key"),
                              np.sort(replayed[name], order="key")), name


def test_the_follower_journals_a_foreign_deny_list_change_once(world):
    """switch/region/blocks.py's follower without NATS: a value read again (a watch made
    anew, a restart) journals nothing more; this region's own keys are not followed."""
    import asyncio
    from types import SimpleNamespace

    from onecard.switch.region import blocks

    foreign = another_regions_card(world)
    from onecard.switch.durability import OperatorDoor

    durability = SimpleNamespace(submit=lambda: None)
    b = blocks.Blocks(SimpleNamespace(name="sh", engine=world.engine, durability=durability,
                                      door=OperatorDoor(world.engine, durability)))
    before = world.state.deny_version

    async def read(*entries) -> None:
        for key, value in entries:
            await b.entry(key, value)

    listed, cleared = blocks.encode(foreign, 0, True), blocks.encode(foreign, 0, False)
    asyncio.run(read(("js.7", listed), ("js.7", listed), ("sh.7", cleared)))
    assert (b.foreign_deny_changes, world.state.deny_version) == (1, before + 1)
    assert world.state.foreign_listed(foreign)
    asyncio.run(read(("js.7", cleared), ("js.7", cleared)))
    assert (b.foreign_deny_changes, world.state.deny_version) == (2, before + 2)
    assert world.engine.router.blocked_cards == 0


# ---- what stand-in refuses as the issuer would (issue 27) -----------------------------------

BEIJING = 11                 # JJJ: its transit and culture applications refuse YRD cards


def enter(g, pan) -> str:
    return g.send([native.VenueEntry(g.next_seq(), pan)])[0].rc


def tap(g, pan) -> str:
    return g.send([g.tap(pan)])[0].rc


def test_stand_in_refuses_what_the_catalogue_refuses_and_approves_what_it_accepts(pair):
    """A Jiangsu card at a Beijing bus reader or venue is refused 62 by its issuer (the
    applications take their own province's and their group's cards: Beijing is JJJ, Jiangsu
    YRD). With the issuer gone, stand-in refuses it 62 as well, whatever the amount, journaled
    with nothing to post; the same card at a Shanghai reader (YRD) is still approved."""
    pan, idx = pair.card()
    bus = {prov: pair.native(TERM_BUS_READER, prov) for prov in (BEIJING, HOME)}
    venue = pair.native(TERM_VENUE, BEIJING)
    online = (tap(bus[BEIJING], pan), enter(venue, pan), tap(bus[HOME], pan))
    assert online == ("62", "62", "00")                  # the issuer's answers
    opening = pair.iss.balance(idx)
    records(pair.acq)
    pair.up = False
    assert (tap(bus[BEIJING], pan), enter(venue, pan), tap(bus[HOME], pan)) == online
    refused = [r for r in stood_in(pair.acq) if r.rc != _code("00")]
    assert [(r.rc, r.amount_fen, r.issuer_province) for r in refused] == [
        (_code("62"), 0, FOREIGN)] * 2
    (advices,) = pair.acq.engine.router.take_advices()
    assert len(advices[1]) == forward.REQUEST.itemsize   # the Shanghai tap's only
    # Above the published limits a refusal is still the catalogue's; an approval is not
    # possible there (91), as before.
    txn = np.zeros(100, np.int64)
    txn[FOREIGN] = 1
    pair.acq.engine.router.configure_stand_in(txn, txn)
    assert (tap(bus[BEIJING], pan), tap(bus[HOME], pan)) == ("62", "91")
    pair.up = True
    (ans,) = post(pair, [advices])
    assert ans["rc"] == _code("00")
    assert 0 < opening - pair.iss.balance(idx) <= fare_of(pair, bus[HOME])


def test_stand_in_refuses_an_application_retired_from_the_catalogue(pair):
    g = pair.native(TERM_BUS_READER)
    pan, _ = pair.card()
    for world in (pair.acq, pair.iss):                   # one catalogue in every region
        st = world.state
        apps = st.apps.copy()
        apps["active"][st.terminals["app"][g.info.idx]] = 0
        st.set_catalogue(apps, st.accept, st.policies)
    assert tap(g, pan) == "58"                           # online: the issuer's answer
    pair.up = False
    assert tap(g, pan) == "58"
    assert pair.acq.engine.router.take_advices() == []


def test_stand_in_refuses_a_deny_listed_card_with_the_issuers_codes(pair):
    """On its issuer's deny list (a balance below zero) a card is refused a tap (05) and an
    entry, even a free one, for the funds (51). The acquirer knows it from its own journaled
    deny list (FOREIGN_DENY) before the blocked-cards bucket has said anything since its
    start; the catalogue's refusal comes first, as at the issuer."""
    from onecard.core import operations
    from onecard.core.state import CARD_ACTIVE, HOLDER_DENIED

    pan, idx = pair.card()
    bus, venue = pair.native(TERM_BUS_READER), pair.native(TERM_VENUE)
    beijing = pair.native(TERM_BUS_READER, BEIJING)
    account = pair.iss.state.cards["account"][idx]
    pair.iss.set_balance(idx, -100)
    pair.iss.state.accounts["flags"][account] |= HOLDER_DENIED
    online = (tap(bus, pan), enter(venue, pan), tap(beijing, pan))
    assert online == ("05", "51", "62")
    pair.acq.engine.tick()
    assert operations.foreign_deny(pair.acq.engine.authoriser, int(pan), True, FOREIGN) > 0
    pair.up = False
    assert (tap(bus, pan), enter(venue, pan), tap(beijing, pan)) == online
    assert pair.acq.engine.router.take_advices() == []
    # the issuer's latest word wins over the journaled list: topped up, off it
    pair.acq.engine.router.block(int(pan), CARD_ACTIVE, False)
    assert tap(bus, pan) == "00"


def test_a_card_numbers_province_finds_its_catalogue_index(demo_dir):
    """The acceptance masks are indexed by the region table's province order; a foreign
    card has only its number's province code (digits 4-5)."""
    import sqlite3

    from onecard.core.forward import NO_PROVINCE, province_index
    from onecard.switch import catalogue
    from onecard.switch.store import loader

    conn = sqlite3.connect(f"file:{demo_dir / 'onecard.db'}?mode=ro", uri=True)
    codes = catalogue.provinces(conn)
    conn.close()
    regions = loader.load(demo_dir).state.regions
    index = province_index(regions)
    assert [int(index[c]) for c in codes] == list(range(len(codes)))
    assert {int(index[c]) for c in set(range(100)) - set(codes)} == {NO_PROVINCE}
    # regions that disagree on a code's province: no index, so no stand-in for its cards
    mixed = regions.copy()
    rows = np.flatnonzero(mixed["code"] // 10000 == FOREIGN)
    assert len(rows) > 1
    mixed["province"][rows[0]] += 1
    assert province_index(mixed)[FOREIGN] == NO_PROVINCE


def test_stand_in_advices_delivered_out_of_order_are_each_posted_once(pair):
    """A redelivery after the issuer crashed may come after newer advices of the same
    terminal were posted: each posting is found by terminal and seq, not by a watermark that
    the newer ones moved past (issue 27's Jepsen test found 108 of 180 taps never posted)."""
    g = pair.native(TERM_BUS_READER)
    pan, idx = pair.card()
    before = pair.iss.balance(idx)
    pair.up = False
    for _ in range(3):
        assert g.send([g.tap(pan)])[0].rc == "00"
    pair.up = True
    ((_, data),) = pair.acq.engine.router.take_advices()
    advices = np.frombuffer(data, dtype=forward.REQUEST)
    assert len(advices) == 3
    newest_first = advices[::-1].tobytes()
    answers = np.frombuffer(pair.serve(newest_first), dtype=forward.ANSWER)
    assert (answers["rc"] == _code("00")).all() and not answers["duplicate"].any()
    charged = pair.iss.balance(idx)
    assert charged < before
    again = np.frombuffer(pair.serve(data), dtype=forward.ANSWER)     # delivered again
    assert (again["rc"] == _code("00")).all() and again["duplicate"].all()
    assert pair.iss.balance(idx) == charged
    postings = [r for r in records(pair.iss) if r.kind_name == "OFFLINE_TAP"]
    assert len(postings) == 3

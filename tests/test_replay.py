"""Recovery rests on one invariant: applying the journal to the state it started from gives
exactly the live state. This drives every kind of transaction the services add (voids,
settlements, canteen meals, taps, offline uploads into the red, deny-list changes, medical
settlements and refunds, verifications, venue entries, kiosk and operator top-ups,
disbursements, card loss, replacement) through the engine, then replays the journal on a
freshly loaded copy and compares every mutable array and map."""

import shutil
import time

import numpy as np

from onecard.core import ledger, operations
from onecard.core.state import (
    CARD_LOST,
    CARD_REPLACED,
    TERM_BUS_READER,
    TERM_KIOSK,
    TERM_MEDICAL,
    TERM_METRO_GATE,
    TERM_POS,
    TERM_VENUE,
    TERM_VERIFIER,
)
from onecard.protocols import native
from onecard.switch.store import loader, snapshots

from termsim import IsoTerminal, NativeTerminal


def native_at(world, kind: int, place: str | None = None, province: int = 31,
              nth: int = 0) -> NativeTerminal:
    """A signed-on native terminal of a kind (and place) in a province, in-process."""
    infos = [t for t in world.terminals if t.kind == kind and t.province == province
             and (place is None or t.place == place)]
    t = NativeTerminal(infos[nth], world.exchange(1))
    assert t.signon().rc == "00"
    return t


def pos_at(world, place: str) -> IsoTerminal:
    info = next(t for t in world.terminals if t.kind == TERM_POS and t.province == 31
                and t.place == place)
    t = IsoTerminal(info, world.exchange(0))
    assert t.signon()["39"] == "00"
    return t


def drive(world) -> None:
    """A day's traffic of every kind; asserts only that each family did something."""
    cards = [world.card(nth=i) for i in range(12)]
    shop, canteen = pos_at(world, "supermarket"), pos_at(world, "elderly canteen")
    stans = []
    for pan, _ in cards[:6]:
        stan = shop.next_stan()
        assert shop.send(shop.purchase(pan, 1234, stan=stan))[0]["39"] == "00"
        stans.append(stan)
        assert canteen.send(canteen.purchase(pan, 1500))[0]["39"] == "00"
    (void,) = shop.send(shop.void(cards[0][0], 1234, stans[0]))
    assert void["39"] == "00"
    assert shop.send(shop.void_reversal(cards[0][0], 1234, void["11"]))[0]["39"] == "00"
    assert shop.send(shop.reversal(cards[1][0], 1234, stans[1]))[0]["39"] == "00"
    assert shop.send(shop.settlement(1, 1, 0, 0))[0]["39"] == "00"         # unbalanced

    gates = [t for t in world.terminals if t.kind == TERM_METRO_GATE and t.province == 31]
    g_in, g_out = (NativeTerminal(gates[0], world.exchange(1)),
                   NativeTerminal(gates[-1], world.exchange(1)))
    for g in (g_in, g_out):
        assert g.signon().rc == "00"
    bus = native_at(world, TERM_BUS_READER)
    for pan, _ in cards[2:8]:
        assert bus.send([bus.tap(pan)])[0].rc == "00"
        assert g_in.send([g_in.tap(pan, gates[0].station_id)])[0].rc == "00"
        out = g_out.send([g_out.tap(pan, gates[-1].station_id, native.TAP_OUT)])[0]
        assert out.rc == "00"            # fare may be 0: Shanghai elderly ride free
    # an offline upload that takes a card below zero (deny list), then a top-up clears it
    poor_pan, poor = cards[8]
    world.set_balance(poor, 50)
    when = int(time.time()) - 3600
    ups = [native.OfflineTap(10_000 + i, poor_pan, 0, native.TAP_IN, when + 60 * i)
           for i in range(3)]
    assert {r.rc for r in bus.send(ups)} == {"00"} and world.balance(poor) < 0
    assert bus.send([native.DenyListSync(bus.next_seq(), 0)])[0].added == [poor_pan]
    assert operations.credit(world.engine.authoriser, int(poor_pan), 100)[0] == "00"
    kiosk = native_at(world, TERM_KIOSK)
    assert kiosk.send([native.TopUp(kiosk.next_seq(), poor_pan, 10_000)])[0].rc == "00"

    doctor = native_at(world, TERM_MEDICAL, "hospital")
    bills = [doctor.next_seq() for _ in range(3)]
    for seq, (pan, _) in zip(bills, cards[2:5], strict=True):
        assert doctor.send([native.Medical(seq, pan, 250_000)])[0].rc == "00"
    refund = doctor.send([native.MedicalRefund(doctor.next_seq(), cards[2][0], bills[0])])[0]
    assert refund.rc == "00"
    hotel, museum = native_at(world, TERM_VERIFIER, "hotel"), native_at(world, TERM_VENUE, "museum")
    scenic = native_at(world, TERM_VENUE, "scenic spot")
    for pan, _ in cards[5:9]:
        assert hotel.send([hotel.verify(pan)])[0].rc == "00"
        assert museum.send([native.VenueEntry(museum.next_seq(), pan)])[0].rc == "00"
        assert scenic.send([native.VenueEntry(scenic.next_seq(), pan)])[0].rc in ("00", "51")

    a = world.engine.authoriser
    pans = np.array([int(p) for p, _ in cards[:4]], dtype=np.uint64)
    rcs, _ = operations.disburse(a, 1, 202611, pans, np.full(4, 12_000, dtype=np.int64), 1)
    assert (rcs == 0).all()
    lost = cards[9][1]
    operations.card_change(a, lost, status=CARD_LOST, operator=2)
    old = cards[10][1]
    new_pan = 6211119999000000001
    operations.card_new(a, new_pan, int(world.state.cards["account"][old]),
                        region=int(world.state.cards["region"][old]), expiry_yymm=3612,
                        functions=7, operator=2)
    operations.card_change(a, old, status=CARD_REPLACED, operator=2)
    assert shop.send(shop.purchase(str(new_pan), 100))[0]["39"] == "00"


def comparable(snapshot: dict) -> dict:
    out = {}
    for name, arr in snapshot.items():
        if name == "horizon_mark":
            continue                                # how many checkpoints were taken
        if name in ("daily_app", "medical_year", "filings"):
            arr = np.sort(arr, order="key")        # hash maps: order depends on history
        out[name] = arr
    return out


def test_replaying_the_journal_gives_exactly_the_live_state(world):
    drive(world)
    first_no, data = world.engine.journal.take()
    assert len(data) > 0
    live = comparable(world.state.snapshot())

    fresh = loader.load(world.data_dir)
    assert fresh.next_record_no == first_no            # the journal starts where it was
    applied = ledger.apply_records(fresh.state, data, first_no)
    assert applied == len(data) // 80
    replayed = comparable(fresh.state.snapshot())

    assert sorted(live) == sorted(replayed)
    for name in live:
        assert live[name].shape == replayed[name].shape, name
        assert np.array_equal(live[name], replayed[name]), f"{name} differs after replay"
    # and the state moved: this is not two copies of the opening state
    opening = comparable(loader.load(world.data_dir).state.snapshot())
    for name in ("accounts", "cards", "ring", "medical_year", "daily_app", "deny_log"):
        assert not np.array_equal(opening[name], live[name]), name


def test_a_checkpoint_restores_exactly_the_live_state(world, tmp_path):
    """What a graceful stop (or the periodic checkpoint) writes and a start loads: every
    mutable array and map, including terminals' sessions, batch totals and offline
    watermarks, the per-application daily totals, the medical year totals and the deny log."""
    drive(world)
    first_no, data = world.engine.journal.take()
    upto = first_no + len(data) // 80
    live = comparable(world.state.snapshot())
    copy = tmp_path / "data"
    shutil.copytree(world.data_dir, copy)
    snapshots.write(copy, world.state.snapshot(), upto, world.keys)

    loaded = loader.load(copy)
    assert loaded.next_record_no == upto and loaded.replayed == 0
    restored = comparable(loaded.state.snapshot())
    for name in live:
        assert np.array_equal(live[name], restored[name]), f"{name} differs after a checkpoint"

"""Many native frames in one received buffer: their MACs are checked together and their
replies MACed together (several cipher chains at once), so each reply frame must still carry
its own correct MAC, a bad MAC must refuse only its frame, and a lone SignOn inside a buffer
must change the key for what follows it and nothing before."""

import msgspec

from onecard.core import crypto
from onecard.core.engine import NATIVE
from onecard.core.state import TERM_BUS_READER
from onecard.protocols import native

from termsim import NativeTerminal


def reader(world, alg: str) -> NativeTerminal:
    info = next(t for t in world.terminals
                if t.kind == TERM_BUS_READER and t.province == 31 and t.alg_name == alg)
    t = NativeTerminal(info, world.exchange(NATIVE))
    assert t.signon().rc == "00"
    return t


def test_every_frame_of_a_long_buffer_gets_its_own_maced_reply_and_bad_macs_only_theirs(world):
    for alg in ("x919", "sm4"):
        t = reader(world, alg)
        pan, idx = world.card(birth_day=lambda b: b > 30000)
        before = world.balance(idx)
        bad = {5, 17, 39}
        requests = [t.frame([t.tap(pan)], key=b"\x22" * 16 if i in bad else None)
                    for i in range(40)]                          # three groups and more
        replies = t.send_raw(b"".join(requests))
        assert len(replies) == 40
        charged = 0
        for i, frame in enumerate(replies):
            (r,) = native.decode_replies(frame.body)
            if i in bad:
                assert isinstance(r, native.ErrorReply) and r.rc == "A0", (alg, i)
                assert r.message == "MAC check failed" and frame.mac == b""
            else:
                assert isinstance(r, native.TapReply) and r.rc == "00", (alg, i, r)
                assert frame.mac == crypto.mac(alg, t.mak, frame.body), (alg, i)
                charged += r.fare_fen
        assert charged > 0 and world.balance(idx) == before - charged


def test_frames_of_both_algorithms_share_a_buffer(world):
    x, s = reader(world, "x919"), reader(world, "sm4")
    requests = [(x if i % 3 else s).frame([native.Heartbeat((x if i % 3 else s).next_seq())])
                for i in range(20)]
    for i, frame in enumerate(x.send_raw(b"".join(requests))):
        owner = x if i % 3 else s
        (r,) = native.decode_replies(frame.body)
        assert isinstance(r, native.HeartbeatReply) and r.rc == "00"
        assert frame.mac == crypto.mac(owner.alg, owner.mak, frame.body), i


def test_a_signon_inside_a_buffer_changes_the_key_for_what_follows_only(world):
    t = reader(world, "x919")
    old = t.mak
    first = [t.frame([native.Heartbeat(t.next_seq())]) for _ in range(3)]
    signon = t.frame([native.SignOn(t.next_seq())], key=t.info.tmk)
    after = t.frame([native.Heartbeat(t.next_seq())])           # still under the old key
    replies = t.send_raw(b"".join([*first, signon, after]))
    decoded = [native.decode_replies(f.body)[0] for f in replies]
    assert [r.rc for r in decoded] == ["00", "00", "00", "00", "A0"]
    assert all(f.mac == crypto.mac(t.alg, old, f.body) for f in replies[:3])
    assert replies[3].mac == crypto.mac(t.alg, t.info.tmk, replies[3].body)
    t.mak = crypto.decrypt_key(t.alg, t.info.tmk, decoded[3].keys[:16])
    assert t.mak != old
    (r,) = t.send([native.Heartbeat(t.next_seq())])
    assert r.rc == "00"


def untimed(frame) -> list:
    """A reply frame's messages without the switch's clock (a second may pass between)."""
    return [(type(r).__name__, {k: v for k, v in msgspec.structs.asdict(r).items()
                                if k != "time_s"}) for r in native.decode_replies(frame.body)]


def test_a_buffer_in_one_call_is_answered_as_frame_by_frame(demo_dir, terminals):
    """Grouping changes no answer: the same random mix of frames (taps, verifies of a card,
    heartbeats, bad MACs, frames that cannot be read, two readers with both algorithms) sent
    as one buffer and a frame at a time to two engines gets the same replies."""
    import random

    from conftest import World

    rng = random.Random(5)
    worlds = [World(demo_dir, terminals), World(demo_dir, terminals)]
    readers = [[reader(w, "x919"), reader(w, "sm4")] for w in worlds]
    cards = [worlds[0].card(nth=i, birth_day=lambda b: b > 30000)[0] for i in range(4)]
    plan = [(rng.randrange(2), rng.choice(["tap", "tap", "beat", "badmac", "garbage"]),
             rng.randrange(4)) for _ in range(60)]

    def frames(pair) -> list[bytes]:
        out = []
        for who, what, card in plan:
            t = pair[who]
            if what == "tap":
                out.append(t.frame([t.tap(cards[card])]))
            elif what == "beat":
                out.append(t.frame([native.Heartbeat(t.next_seq())]))
            elif what == "badmac":
                out.append(t.frame([t.tap(cards[card])], key=b"\x44" * 16))
            else:
                out.append(b"\x00\x00\x00\x03\x93\x01\x02")
        return out

    together = readers[0][0].send_raw(b"".join(frames(readers[0])))
    one_by_one = [r for f in frames(readers[1]) for r in readers[1][0].send_raw(f)]
    assert len(together) == len(one_by_one) == len(plan)
    for k, (a, b) in enumerate(zip(together, one_by_one, strict=True)):
        assert untimed(a) == untimed(b), (k, plan[k])
        owner = readers[0][plan[k][0]], readers[1][plan[k][0]]
        if a.mac:
            assert a.mac == crypto.mac(owner[0].alg, owner[0].mak, a.body)
            assert b.mac == crypto.mac(owner[1].alg, owner[1].mak, b.body)
        assert bool(a.mac) == bool(b.mac)

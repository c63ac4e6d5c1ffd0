"""Many ISO 8583 requests in one received buffer: the switch checks their MACs together and
computes their replies' MACs together (several DES chains at once), so each reply must still
carry its own correct MAC, a bad MAC must decline only its request, and a sign-on inside a
buffer must change the key for what follows it and nothing before."""

import random

from onecard.core import crypto
from onecard.core.state import TERM_POS

from termsim import IsoTerminal


def iso_by_alg(world, alg: str) -> IsoTerminal:
    pos = [t.alg_name for t in world.terminals if t.kind == TERM_POS and t.province == 31]
    index = pos.index(alg)
    return world.iso(index=index)


def test_every_reply_of_a_long_buffer_is_answered_in_order_with_its_own_mac(world):
    t = iso_by_alg(world, "x919")
    cards = [world.card(nth=i) for i in range(5)]
    before = [world.balance(idx) for _, idx in cards]
    stans = [f"{100 + i:06d}" for i in range(40)]                  # three groups and more
    replies = t.send(*[t.purchase(cards[i % 5][0], 100 + i, stan=stans[i]) for i in range(40)])
    assert [r["11"] for r in replies] == stans
    assert all(r["39"] == "00" and t.verify_reply_mac(r) for r in replies)
    for k, (_, idx) in enumerate(cards):
        assert world.balance(idx) == before[k] - sum(100 + i for i in range(k, 40, 5))


def test_a_bad_mac_inside_a_buffer_declines_only_its_request(world):
    for alg in ("x919", "sm4"):
        t = iso_by_alg(world, alg)
        pan, idx = world.card()
        before = world.balance(idx)
        bad = {5, 17}
        requests = [t.build("0200", {"2": pan, "3": "000000", "4": "000000000100",
                                     "11": t.next_stan(), "49": "156"},
                            mak=b"\x11" * 16 if i in bad else None) for i in range(20)]
        replies = t.send(*requests)
        for i, r in enumerate(replies):
            if i in bad:
                assert r["39"] == "A0" and "64" not in r, (alg, i)
            else:
                assert r["39"] == "00" and t.verify_reply_mac(r), (alg, i)
        assert world.balance(idx) == before - 100 * (20 - len(bad))


def test_terminals_of_both_algorithms_share_a_buffer(world):
    x, s = iso_by_alg(world, "x919"), iso_by_alg(world, "sm4")
    pan, _ = world.card()
    requests = []
    for i in range(24):
        requests.append((x if i % 3 else s).purchase(pan, 50))
    replies = x.send(*requests)
    for i, r in enumerate(replies):
        owner = x if i % 3 else s
        assert r["41"] == owner.info.tid and r["39"] == "00" and owner.verify_reply_mac(r)


def test_a_signon_inside_a_buffer_changes_the_key_for_what_follows_only(world):
    t = iso_by_alg(world, "x919")
    pan, _ = world.card()
    old = t.mak
    first = [t.purchase(pan, 10) for _ in range(3)]
    signon = t.build("0800", {"11": t.next_stan(), "60": "00000001003"}, mac=False)
    after = t.purchase(pan, 10)                      # still under the old key
    replies = t.send(*first, signon, after)
    assert [r["39"] for r in replies] == ["00", "00", "00", "00", "A0"]
    assert all(t.verify_reply_mac(r) for r in replies[:3])      # MACed with the old key
    keys = bytes.fromhex(replies[3]["62"])
    t.mak = crypto.decrypt_key(t.alg, t.info.tmk, keys[20:36])
    assert t.mak != old
    (r,) = t.send(t.purchase(pan, 10))
    assert r["39"] == "00" and t.verify_reply_mac(r)


def test_a_buffer_in_one_call_is_answered_as_frame_by_frame(demo_dir, terminals):
    """Grouping changes no answer: the same random mix (purchases, balance inquiries, echoes,
    bad MACs, missing fields, undecodable frames, two terminals and both algorithms) sent as
    one buffer to one engine and a frame at a time to another gets the same codes, the same
    record numbers and the same balances, and every MAC checks."""
    from conftest import World

    rng = random.Random(7)
    worlds = [World(demo_dir, terminals), World(demo_dir, terminals)]
    term_sets = [[iso_by_alg(w, "x919"), iso_by_alg(w, "sm4")] for w in worlds]
    cards = [worlds[0].card(nth=i) for i in range(6)]
    for i in (3, 4):
        for w in worlds:                              # two cards that will run out of money
            w.set_balance(cards[i][1], 250)
    plan = [(rng.randrange(2), rng.choice(["buy", "buy", "buy", "balance", "echo", "badmac",
                                           "missing", "garbage"]),
             rng.randrange(6), rng.randrange(1, 200)) for _ in range(70)]

    def frames(terms) -> list[bytes]:
        out = []
        for who, what, card, amount in plan:
            t = terms[who]
            pan = cards[card][0]
            if what == "buy":
                out.append(t.purchase(pan, amount))
            elif what == "balance":
                out.append(t.balance(pan))
            elif what == "echo":
                out.append(t.build("0820", {"11": t.next_stan()}))
            elif what == "badmac":
                out.append(t.build("0200", {"2": pan, "3": "000000", "4": f"{amount:012d}",
                                            "11": t.next_stan(), "49": "156"}, mak=b"\x33" * 16))
            elif what == "missing":
                out.append(t.build("0200", {"2": pan, "3": "000000", "11": t.next_stan()}))
            else:
                out.append(b"\x00\x05\x60\x00\x01\x00\x00")
        return out

    together = term_sets[0][0].send(*frames(term_sets[0]))
    one_by_one = [r for f in frames(term_sets[1]) for r in term_sets[1][0].send(f)]
    assert len(together) == len(one_by_one) == len(plan)
    for k, (a, b) in enumerate(zip(together, one_by_one, strict=True)):
        assert (a.get("39"), a.get("37"), a.get("38"), a.get("44"), "64" in a) == (
            b.get("39"), b.get("37"), b.get("38"), b.get("44"), "64" in b), (k, plan[k])
        who = plan[k][0]
        if "64" in a:
            assert term_sets[0][who].verify_reply_mac(a) and term_sets[1][who].verify_reply_mac(b)
    codes = {r["39"] for r in together}
    assert {"00", "A0", "30"} <= codes, codes
    for _, idx in cards:
        assert worlds[0].balance(idx) == worlds[1].balance(idx)

"""Many ISO 8583 requests in one received buffer: the switch checks their MACs together and
computes their replies' MACs together (several DES chains at once), so each reply must still
carry its own correct MAC, a bad MAC must decline only its request, and a sign-on inside a
buffer must change the key for what follows it and nothing before."""

from onecard.core import crypto

from termsim import IsoTerminal


def iso_by_alg(world, alg: str) -> IsoTerminal:
    index = [t.alg_name for t in world.terminals if t.kind == 1 and t.province == 31].index(alg)
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

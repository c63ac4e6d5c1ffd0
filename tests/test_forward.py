"""Forwarding between regional switches in the core (issue 15), without NATS: an acquiring
engine stops before a request for another region's card, the issuing engine decides the batch
(``Engine.serve_forwarded``), the answers are installed and the buffer runs again; the server
does the same around a NATS request (switch/region/link.py, tests/test_region_forward.py).

Both engines load the same demo data set; the acquirer routes Jiangsu (32) cards to the
issuer, so every Jiangsu card's money must move at the issuer only."""

import random

import numpy as np
import pytest

from onecard.core.engine import ISO8583, NATIVE
from onecard.core.state import TERM_BUS_READER, TERM_FERRY_READER, TERM_POS, TERM_VERIFIER
from onecard.protocols import forward, native
from onecard.protocols.journal_codec import decode, unpack

from conftest import World
from termsim import IsoTerminal, NativeTerminal, frames, iso_decode

FOREIGN, HOME = 32, 31


class Pair:
    """An acquirer whose province-32 cards belong to an issuer; ``up`` says whether the
    issuer answers."""

    def __init__(self, demo_dir, terminals) -> None:
        self.acq = World(demo_dir, terminals)
        self.iss = World(demo_dir, terminals)
        dest = np.zeros(100, dtype=np.uint8)
        dest[FOREIGN] = 1
        self.acq.engine.router.configure(dest)
        self.up = True
        # what a chunk gets while the issuer is not up: None (a timeout, fate unknown) or
        # forward.UNDELIVERED (NATS had no responder: the issuer's switch is gone)
        self.unanswered = None
        self.rounds = 0

    def exchange(self, proto: int):
        def run(data: bytes) -> bytes:
            router = self.acq.engine.router
            out, buf, answers, order = b"", data, None, None
            for _ in range(4):          # one round per buffer, unless routing changed
                if answers is not None:
                    router.install(order, answers)
                consumed, replies, _, _ = self.acq.engine.process(proto, buf)
                order, batches = router.take()
                router.clear()
                out += replies
                buf = buf[consumed:]
                if not batches:
                    assert not buf
                    return out
                self.rounds += 1
                answers = [(d, sent, self.serve(sent)) for d, sent in batches]
            raise AssertionError("the buffer was not answered after 4 rounds")
        return run

    def serve(self, sent: bytes) -> bytes | None:
        if not self.up:
            return self.unanswered
        answers, next_no = self.iss.engine.serve_forwarded(sent)
        assert next_no == self.iss.engine.journal.next_no
        return answers

    def iso(self, province: int = HOME) -> IsoTerminal:
        t = IsoTerminal(self.acq.terminal(TERM_POS, province), self.exchange(ISO8583))
        # the terminal signs on at the acquirer (sign-on is never forwarded) and the issuer
        # knows its session from the registry every region holds
        assert t.signon()["39"] == "00"
        return t

    def native(self, kind: int, province: int = HOME) -> NativeTerminal:
        t = NativeTerminal(self.acq.terminal(kind, province), self.exchange(NATIVE))
        assert t.signon().rc == "00"
        return t

    def card(self, province: int = FOREIGN, nth: int = 0, balance: int = 100_000):
        pan, idx = self.iss.card(province, min_balance=0, nth=nth)
        self.iss.set_balance(idx, balance)
        self.acq.set_balance(idx, balance)
        return pan, idx


def records(world: World) -> list:
    j = world.engine.journal
    first, data = j.take()
    return list(decode(unpack(data), first))


@pytest.fixture
def pair(demo_dir, terminals) -> Pair:
    return Pair(demo_dir, terminals)


def test_a_foreign_card_is_decided_and_journaled_by_its_issuer(pair):
    t = pair.iso()
    pan, idx = pair.card()
    records(pair.acq), records(pair.iss)
    (r,) = t.send(t.purchase(pan, 1_234))
    assert r["39"] == "00"
    assert pair.iss.balance(idx) == 100_000 - 1_234         # the issuer's account moved
    assert pair.acq.balance(idx) == 100_000                 # the acquirer's copy did not
    (fwd,) = records(pair.acq)
    (auth,) = records(pair.iss)
    assert (auth.kind_name, auth.amount_fen) == ("PURCHASE", 1_234)
    assert fwd.kind_name == "FORWARDED"
    assert (fwd.issuer_record_no, fwd.amount_asked_minor) == (auth.no, 1_234)
    assert (fwd.issuer_province, fwd.origin) == (FOREIGN, forward.ORIGIN["ISSUER"])
    assert int(r["37"]) == auth.no                   # the RRN is the issuer's record


def test_a_retransmission_repeats_the_issuers_answer_with_one_effect(pair):
    t = pair.iso()
    pan, idx = pair.card()
    stan = t.next_stan()
    (first,) = t.send(t.purchase(pan, 500, stan=stan))
    (again,) = t.send(t.purchase(pan, 500, stan=stan))
    assert first["39"] == again["39"] == "00"
    assert first["37"] == again["37"]
    assert pair.iss.balance(idx) == 100_000 - 500
    fwd = [r for r in records(pair.acq) if r.kind_name == "FORWARDED"]
    assert [r.repeated for r in fwd] == [0, 1]


def test_forwarded_records_carry_their_fields_and_zero_padding(pair):
    """Nothing but the request goes on the wire: no bytes of whatever memory held before."""
    t = pair.iso()
    pans = [pair.card(nth=i)[0] for i in range(3)]
    pair.acq.engine.process(ISO8583, b"".join(t.purchase(pan, 500) for pan in pans))
    _, [(_, sent)] = pair.acq.engine.router.take()
    pair.acq.engine.router.clear()
    fields = np.zeros(3, dtype=forward.REQUEST)
    fields[...] = np.frombuffer(sent, dtype=forward.REQUEST)
    assert fields.tobytes() == sent


def test_local_and_foreign_requests_in_one_buffer_keep_their_order(pair):
    t = pair.iso()
    foreign = [pair.card(nth=i) for i in range(3)]
    local = [pair.card(HOME, nth=i) for i in range(3)]
    mixed = [foreign[0], local[0], local[1], foreign[1], local[2], foreign[2]]
    sent = [(t.next_stan(), pan, 100 + i) for i, (pan, _) in enumerate(mixed)]
    replies = t.send(*(t.purchase(pan, fen, stan=stan) for stan, pan, fen in sent))
    assert [(r["11"], r["39"]) for r in replies] == [(stan, "00") for stan, _, _ in sent]
    assert pair.rounds == 1                   # every foreign request went in one batch
    for i, (_, idx) in enumerate(mixed):
        owner, other = (pair.iss, pair.acq) if (_, idx) in foreign else (pair.acq, pair.iss)
        assert owner.balance(idx) == 100_000 - (100 + i)
        assert other.balance(idx) == 100_000


def test_issuer_unavailable_is_91_and_moves_nothing(pair):
    t = pair.iso()
    pan, idx = pair.card()
    local_pan, local_idx = pair.card(HOME)
    pair.up = False
    r1, r2 = t.send(t.purchase(pan, 700), t.purchase(local_pan, 300))
    assert (r1["39"], r2["39"]) == ("91", "00")
    assert pair.iss.balance(idx) == pair.acq.balance(idx) == 100_000
    assert pair.acq.balance(local_idx) == 100_000 - 300
    (fwd,) = [r for r in records(pair.acq) if r.kind_name == "FORWARDED"]
    assert fwd.origin == forward.ORIGIN["UNAVAILABLE"] and fwd.issuer_record_no == 0


def test_answers_that_do_not_match_their_requests_are_91(pair, monkeypatch):
    t = pair.iso()
    pan, _ = pair.card()
    real = pair.serve

    def wrong(sent):
        ans = np.frombuffer(real(sent), dtype=forward.ANSWER).copy()
        ans["seq"] += 1
        return ans.tobytes()

    monkeypatch.setattr(pair, "serve", wrong)
    (r,) = t.send(t.purchase(pan, 700))
    assert r["39"] == "91"


def test_reversal_of_a_forwarded_purchase_is_decided_by_the_issuer(pair):
    t = pair.iso()
    pan, idx = pair.card()
    stan = t.next_stan()
    (p,) = t.send(t.purchase(pan, 900, stan=stan))
    (rv,) = t.send(t.reversal(pan, 900, stan))
    assert (p["39"], rv["39"]) == ("00", "00")
    assert pair.iss.balance(idx) == 100_000


def test_settlement_counts_forwarded_purchases(pair):
    t = pair.iso()
    pan, _ = pair.card()
    local_pan, _ = pair.card(HOME)
    t.send(t.purchase(pan, 1_000), t.purchase(local_pan, 2_000))
    (s,) = t.send(t.settlement(3_000, 2, 0, 0))
    assert s["39"] == "00"                    # balanced: the acquirer's totals include both


@pytest.mark.parametrize("kind", [TERM_BUS_READER, TERM_FERRY_READER])
def test_native_frames_with_foreign_taps_are_answered_whole_and_in_order(pair, kind):
    g = pair.native(kind)
    cards = [pair.card(FOREIGN, nth=0), pair.card(HOME, nth=0), pair.card(FOREIGN, nth=1)]
    frame1 = g.frame([g.tap(pan) for pan, _ in cards])
    frame2 = g.frame([g.tap(cards[1][0], station=0, direction=native.TAP_IN)])
    f1, f2 = g.send_raw(frame1 + frame2)
    replies = native.decode_replies(f1.body)
    assert [r.rc for r in replies] == ["00"] * 3
    assert len(native.decode_replies(f2.body)) == 1
    charged = [100_000 - pair.iss.balance(idx) for _, idx in cards]
    assert charged[0] > 0 and charged[2] > 0 and charged[1] == 0
    assert pair.acq.balance(cards[0][1]) == pair.acq.balance(cards[2][1]) == 100_000


def test_identity_check_answers_with_the_issuers_holder(pair):
    v = pair.native(TERM_VERIFIER)
    pan, idx = pair.card()
    (reply,) = v.send([v.verify(pan)])
    assert reply.rc == "00"
    name, _ = pair.iss.holder(idx)
    assert reply.name[0] == name[0] and reply.name != name   # masked, from the issuer


def test_unknown_terminal_and_wrong_kind_are_refused_by_the_issuer(pair):
    pan, _ = pair.card()
    t = pair.iso()
    pair.acq.engine.process(ISO8583, t.purchase(pan, 100))
    _, [(_, sent)] = pair.acq.engine.router.take()
    pair.acq.engine.router.clear()
    req = np.frombuffer(sent, dtype=forward.REQUEST).copy()
    req["tid"] = 1                                           # no such terminal
    ans = np.frombuffer(pair.iss.engine.serve_forwarded(req.tobytes())[0],
                        dtype=forward.ANSWER)
    assert ans["rc"][0] == _code("03")
    req = np.frombuffer(sent, dtype=forward.REQUEST).copy()
    req["txn"]["kind"] = 1                                   # sign-on is never forwarded
    ans = np.frombuffer(pair.iss.engine.serve_forwarded(req.tobytes())[0],
                        dtype=forward.ANSWER)
    assert ans["rc"][0] == _code("12")
    with pytest.raises(ValueError, match="whole number"):
        pair.iss.engine.serve_forwarded(sent[:-1])


def _code(code: str) -> int:
    from onecard.protocols.codes import CODE_INDEX

    return CODE_INDEX[code]


@pytest.mark.parametrize("seed", [11, 12])
def test_seeded_traffic_gives_the_single_switchs_codes_and_balances(demo_dir, terminals, seed):
    """The same seeded mix of every forwarded kind (purchases, reversals, voids, balance
    inquiries, taps, offline uploads, top-ups, identity checks, venues, medical bills and
    refunds, retransmissions), half of it for Jiangsu cards: one switch owning everything and
    the acquirer/issuer pair tell the terminals the same, and every card ends with the same
    balance at its owner."""
    from test_invariants import Traffic

    single = World(demo_dir, terminals)
    pair = Pair(demo_dir, terminals)
    pair.acq.exchange = pair.exchange           # the acquirer's terminals go through relay
    runs = []
    for world in (single, pair.acq):
        traffic = Traffic(world, random.Random(seed))
        traffic.cards = [world.card(p, nth=i) for p in (HOME, FOREIGN) for i in range(12)]
        steps = [traffic.purchase, traffic.purchase, traffic.undo, traffic.settle_or_balance,
                 traffic.ride, traffic.ride, traffic.offline, traffic.service, traffic.medical,
                 traffic.retransmit]
        for _ in range(300):
            traffic.rng.choice(steps)()
        runs.append(traffic)
    assert runs[0].codes == runs[1].codes
    assert runs[0].codes.count("00") > 100 and pair.rounds > 50
    opening = World(demo_dir, terminals)
    for pan, idx in runs[0].cards:
        foreign = forward.province_of_pan(int(pan)) == FOREIGN
        owner, other = (pair.iss, pair.acq) if foreign else (pair.acq, pair.iss)
        assert owner.balance(idx) == single.balance(idx)
        if foreign:                             # the acquirer never touched its copy
            assert other.balance(idx) == opening.balance(idx)


def test_a_destinations_chunks_are_answered_each_on_its_own(pair):
    """A batch above BATCH_MAX goes in several NATS requests: one that was answered keeps its
    answers when another of the same destination was not (those get 91, and advices)."""
    t = pair.iso()
    (pan1, idx1), (pan2, idx2) = pair.card(nth=0), pair.card(nth=1)
    router = pair.acq.engine.router
    data = t.purchase(pan1, 100) + t.purchase(pan2, 200)
    consumed, _, _, _ = pair.acq.engine.process(ISO8583, data)
    order, [(d, sent)] = router.take()
    router.clear()
    assert consumed == 0 and list(order) == [d, d]
    size = forward.REQUEST.itemsize
    first, second = sent[:size], sent[size:]
    got = pair.serve(first)
    # install says which requests got 91: those of the chunk that was not answered
    unanswered = router.install(order, [(d, first, got), (d, second, None)])
    assert [len(u) for u in unanswered] == [0, 1]
    assert unanswered[1][0]["tid"] == np.frombuffer(second, dtype=forward.REQUEST)[0]["tid"]
    assert unanswered[1][0]["txn"]["seq"] == np.frombuffer(second, forward.REQUEST)[0]["txn"]["seq"]
    _, replies, _, _ = pair.acq.engine.process(ISO8583, data)
    router.clear()
    r1, r2 = (iso_decode(f) for f in frames(replies, 2))
    assert (r1["39"], r2["39"]) == ("00", "91")
    assert pair.iss.balance(idx1) == 100_000 - 100 and pair.iss.balance(idx2) == 100_000


def test_reversal_advices_are_card_less_reversals_of_purchases_and_voids():
    from onecard.core.state import KIND_PURCHASE, KIND_REVERSAL, KIND_TAP, KIND_VOID
    from onecard.switch.region.advices import reversal_advices

    reqs = np.zeros(3, dtype=forward.REQUEST)
    reqs["txn"]["kind"] = [KIND_PURCHASE, KIND_VOID, KIND_TAP]
    reqs["txn"]["proto"] = [0, 0, 1]
    reqs["txn"]["pan"] = 6213210000000000504
    reqs["txn"]["seq"] = [7, 8, 9]
    out = reversal_advices(reqs)
    assert out["txn"]["seq"].tolist() == [7, 8]              # a tap has no reversal
    assert set(out["txn"]["kind"].tolist()) == {KIND_REVERSAL}
    assert out["txn"]["pan"].tolist() == [0, 0] and out["txn"]["offline"].tolist() == [1, 1]
    assert out["txn"]["proc_code"].tolist() == [0, 200000]
    blank = np.zeros(2, dtype=forward.REQUEST)        # nothing else of the request goes
    blank["txn"][["seq", "kind", "proc_code", "offline"]] = out["txn"][
        ["seq", "kind", "proc_code", "offline"]]
    assert out.tobytes() == blank.tobytes()


def test_an_advice_undoes_an_approval_or_makes_the_late_original_refused(pair):
    from onecard.switch.region.advices import reversal_advices

    t = pair.iso()
    pan, idx = pair.card()
    router = pair.acq.engine.router
    # approved by the issuer, but the acquirer never saw the answer: the advice undoes it
    data = t.purchase(pan, 700)
    pair.acq.engine.process(ISO8583, data)
    _, [(_, sent)] = router.take()
    router.clear()
    pair.serve(sent)
    assert pair.iss.balance(idx) == 100_000 - 700
    advice = reversal_advices(np.frombuffer(sent, dtype=forward.REQUEST)).tobytes()
    for _ in range(2):                                       # at least once: twice is fine
        ans = np.frombuffer(pair.serve(advice), dtype=forward.ANSWER)
        assert ans["rc"][0] == _code("00")
    assert pair.iss.balance(idx) == 100_000
    # the advice first: the original, arriving late, is refused and moves nothing
    data = t.purchase(pan, 800)
    pair.acq.engine.process(ISO8583, data)
    _, [(_, sent)] = router.take()
    router.clear()
    pair.serve(reversal_advices(np.frombuffer(sent, dtype=forward.REQUEST)).tobytes())
    late = np.frombuffer(pair.serve(sent), dtype=forward.ANSWER)
    assert late["rc"][0] == _code("94")
    assert pair.iss.balance(idx) == 100_000


def test_an_advice_after_the_terminals_ring_moved_on_still_undoes_its_original(pair):
    """Issue 27: the issuer finds the original in its idempotency horizon once the terminal's
    ring (64) has moved on, and reverses it once; the advice delivered again changes nothing."""
    from onecard.switch.region.advices import reversal_advices

    t = pair.iso()
    pan, idx = pair.card(balance=1_000_000)
    router = pair.acq.engine.router
    pair.acq.engine.process(ISO8583, t.purchase(pan, 100))
    _, [(_, lost)] = router.take()                 # its answer never reaches the acquirer
    router.clear()
    pair.serve(lost)
    for _ in range(200):                           # far more than the ring (64) since
        (r,) = t.send(t.purchase(pan, 1))
        assert r["39"] == "00"
    records(pair.iss)
    advice = reversal_advices(np.frombuffer(lost, dtype=forward.REQUEST)).tobytes()
    for _ in range(2):
        ans = np.frombuffer(pair.serve(advice), dtype=forward.ANSWER)
        assert ans["rc"][0] == _code("00")
        assert pair.iss.balance(idx) == 1_000_000 - 200
    assert len(records(pair.iss)) == 1             # one reversal, journaled once


def test_a_batch_of_advices_has_one_id_and_says_what_is_stored_once_it_is():
    """A message of advices is deduplicated by one id, its advice's own when alone; once
    stored, it says up to which journal record every advice is (a core batch's advices share
    its last record's number, and one split between messages counts only when complete)."""
    from onecard.switch.region.advices import _upto, batch_id

    assert batch_id("sh", ["sh.1.2.100.156.20261207"]) == "sh.1.2.100.156.20261207"
    two = batch_id("sh", ["a", "b"])
    assert two.startswith("sh.b2.") and two == batch_id("sh", ["a", "b"])
    assert two not in (batch_id("sh", ["b", "a"]), batch_id("sh", ["a", "b", "c"]))
    assert _upto([5, 5, 9], None) == 9              # nothing after it
    assert _upto([5, 5, 9], 12) == 9                # the next core batch's
    assert _upto([5, 5, 9, 9], 9) == 5              # record 9's advices go on in the next
    assert _upto([9, 9], 9) == -1                   # nothing complete yet


def test_a_restart_sends_again_the_advices_of_91s_in_the_journal(pair):
    """What an acquirer reads back from its journal at start gives the same advice it sent
    live (the stream deduplicates, the issuer applies twice harmlessly)."""
    from types import SimpleNamespace

    from onecard.switch.region.advices import Advices, msg_id, reversal_advices

    t = pair.iso()
    pan, _ = pair.card()
    router = pair.acq.engine.router
    records(pair.acq)
    stan = t.next_stan()
    data = t.purchase(pan, 555, stan=stan)
    pair.acq.engine.process(ISO8583, data)
    order, [(d, sent)] = router.take()
    router.clear()
    router.install(order, [(d, sent, None)])          # the issuer did not answer
    _, replies, _, _ = pair.acq.engine.process(ISO8583, data)
    router.clear()
    assert iso_decode(frames(replies, 2)[0])["39"] == "91"
    advices = Advices(SimpleNamespace(name="sh"))
    n = advices.resend(records(pair.acq), pair.acq.state.terminals["tid"],
                       lambda p: "js" if p == FOREIGN else None, pair.acq.keys.journal_key)
    assert n == 1
    assert list(advices.queues) == ["onecard.advice.js"]
    (_, payload, key) = advices.queues["onecard.advice.js"][0]
    advice = np.frombuffer(payload, dtype=forward.REQUEST)[0]
    assert (int(advice["txn"]["seq"]), int(advice["txn"]["amount_fen"])) == (int(stan), 555)
    # the live path builds the same advice (and key) from the request it forwarded
    live = reversal_advices(np.frombuffer(sent, dtype=forward.REQUEST))
    assert live.tobytes() == payload and key == msg_id("sh", live[0], key.rsplit(".", 1)[1])
    assert np.frombuffer(pair.serve(payload), dtype=forward.ANSWER)["rc"][0] == _code("00")

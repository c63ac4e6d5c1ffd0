"""A backlog of advices drains completely, in batches, each applied once (issue 27).

"js" is stopped: NATS has no responder for its subject, so "sh" answers Shanghai POS
terminals' purchases with Jiangsu cards 91 and queues a reversal advice for each, and stands
in for Shanghai bus readers' taps of Jiangsu cards and queues a stand-in advice for each. The
backlog (several thousand advices: more than one stream message and more than one core call
hold) waits in the stream until "js" starts again. Then, from the metrics and from js's
committed journal:
- every advice was delivered once (js applied exactly as many as sh made, none unresolved);
- they travelled and were applied in batches (fewer messages and core calls than advices);
- each 91 purchase has exactly one card-less REVERSAL at js, each stood-in tap exactly one
  STAND_IN posting, and nothing else was reversed or posted;
- "sh", killed (SIGKILL) once the stream holds them and started again, sends none of them
  again: its journal still has their records (no checkpoint since), but the stream's
  stored-up-to number for js covers them.
Every wait is bounded; nothing asserts on how fast it went (bench/advices.py measures that)."""

import asyncio
import time

import pytest

from onecard.core.state import FN_FINANCIAL, FN_TRANSPORT, TERM_BUS_READER, TERM_POS
from onecard.protocols.journal import FLAGS
from onecard.switch.region import advices
from onecard.switch.terminals import read_terminals

from termsim import IsoTerminal, NativeTerminal, socket_exchange
from test_region_forward import JS, card_of, journal, metric, two_regions

pytestmark = pytest.mark.slow

POS_TERMINALS = 4
PURCHASES_PER_POS = 1_300            # 5,200 reversal advices: > CALL_MAX, > one message
PER_SEND = 50                        # purchases a POS sends before reading the replies
READERS = 2
TAPS_PER_READER = 120
CARDS = 40
DRAIN_TIMEOUT_S = 180
FLAG = {name: bit for name, bit, _ in FLAGS}
TRANSIT = FN_FINANCIAL | FN_TRANSPORT


@pytest.fixture(scope="module")
def regions(demo_dir, tmp_path_factory):
    with two_regions(tmp_path_factory.mktemp("advices"), demo_dir) as r:
        yield r


def terminals(regions, kind: int, n: int) -> list:
    found = [t for t in read_terminals(regions.dirs["sh"])
             if t.kind == kind and t.province == 31 and (kind != TERM_POS
                                                           or t.app in ("", "FIN-PAY"))]
    assert len(found) >= n
    return found[:n]


def purchases_91(regions, cards: list[str]) -> list[tuple[str, int]]:
    """Purchases with Jiangsu cards at Shanghai POS terminals while js is down: (terminal
    id, STAN) of each, every one answered 91."""
    told = []
    for i, info in enumerate(terminals(regions, TERM_POS, POS_TERMINALS)):
        sock, exchange = socket_exchange("127.0.0.1", regions.switches["sh"].iso, 2,
                                         timeout=30)
        regions.sockets.append(sock)
        t = IsoTerminal(info, exchange, stan=1000 + 10_000 * i)
        assert t.signon()["39"] == "00"
        for start in range(0, PURCHASES_PER_POS, PER_SEND):
            stans = [t.next_stan() for _ in range(min(PER_SEND, PURCHASES_PER_POS - start))]
            replies = t.send(*(t.purchase(cards[int(s) % len(cards)], 100 + int(s) % 50,
                                          stan=s) for s in stans))
            assert [r["39"] for r in replies] == ["91"] * len(stans)
            told += [(info.tid, int(s)) for s in stans]
    return told


def taps_stood_in(regions, cards: list[str]) -> list[tuple[str, int]]:
    """Bus taps of Jiangsu cards at Shanghai readers while js is down: (terminal id,
    sequence) of each one stood in for (00); the rest (a card's day used up) are 91."""
    stood = []
    for info in terminals(regions, TERM_BUS_READER, READERS):
        sock, exchange = socket_exchange("127.0.0.1", regions.switches["sh"].native, 4,
                                         timeout=30)
        regions.sockets.append(sock)
        g = NativeTerminal(info, exchange)
        assert g.signon().rc == "00"
        for i in range(TAPS_PER_READER):
            tap = g.tap(cards[i % len(cards)])
            (r,) = g.send([tap])
            assert r.rc in ("00", "91"), r
            if r.rc == "00":
                stood.append((info.tid, tap.seq))
    return stood


def wait_until(check, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_a_backlog_of_thousands_of_advices_drains_and_each_is_applied_once(regions):
    regions.stop("js")
    sh = regions.switches["sh"]
    pay_cards = [card_of(regions.dirs["js"], JS, nth=n)[0] for n in range(CARDS)]
    tap_cards = [card_of(regions.dirs["js"], JS, nth=CARDS + n, functions=TRANSIT)[0]
                 for n in range(CARDS)]
    reversed_ = purchases_91(regions, pay_cards)
    posted = taps_stood_in(regions, tap_cards)
    made = len(reversed_) + len(posted)
    assert len(reversed_) > advices.CALL_MAX > advices.ADVICES_PER_MESSAGE and posted
    assert metric(sh, "onecard_advices_queued_total") == made
    # all of it in the stream, with nobody to apply it yet
    wait_until(lambda: metric(sh, "onecard_advices_pending") == 0)
    assert metric(sh, "onecard_advices_published_total") == made
    assert metric(sh, "onecard_advices_messages_published_total") < made
    js = regions.start("js")
    wait_until(lambda: metric(js, "onecard_advices_applied_total") >= made)
    assert metric(js, "onecard_advices_applied_total") == made        # none delivered twice
    assert metric(js, "onecard_advices_unresolved_total") == 0
    assert metric(js, "onecard_advices_posted_total") == len(posted)
    assert metric(js, "onecard_advices_apply_calls_total") * 100 < made
    last = max(r.no for r in journal(regions.dirs["sh"]) if r.kind_name == "FORWARDED")
    wait_until(lambda: stored_upto(regions, "sh", "js") >= last)
    assert stored_upto(regions, "sh", "js") >= last
    regions.switches.pop("sh").kill9()
    sh = regions.start("sh")
    assert metric(sh, "onecard_advices_queued_total") == 0           # nothing sent again
    assert metric(js, "onecard_advices_applied_total") == made
    regions.stop("sh")
    regions.stop("js")
    check(regions, reversed_, posted)


def stored_upto(regions, acquirer: str, issuer: str) -> int:
    """The journal number up to which the stream holds an acquirer's advices for an
    issuer (-1: none noted)."""
    import nats
    from nats.js.errors import KeyNotFoundError

    async def read() -> int:
        nc = await nats.connect(servers=regions.cluster.urls)
        try:
            kv = await nc.jetstream().key_value(advices.STORED_BUCKET)
            return int((await kv.get(f"{acquirer}.{issuer}")).value)
        except KeyNotFoundError:
            return -1
        finally:
            await nc.close()

    return asyncio.run(read())


def check(regions, reversed_: list, posted: list) -> None:
    """In js's committed journal: one card-less reversal per 91 purchase, one stand-in
    posting per stood-in tap, and no other reversal or stand-in posting."""
    tid_of = {t.idx: t.tid for t in read_terminals(regions.dirs["js"])}
    reversals: dict[tuple[str, int], int] = {}
    postings: dict[tuple[str, int], int] = {}
    for rec in journal(regions.dirs["js"]):
        key = (tid_of.get(rec.terminal), rec.seq)
        if rec.kind_name == "REVERSAL":
            assert rec.flags & FLAG["NO_ORIGINAL"], key      # js never saw the purchase
            reversals[key] = reversals.get(key, 0) + 1
        elif rec.kind_name == "OFFLINE_TAP" and rec.flags & FLAG["STAND_IN"]:
            assert rec.flags & FLAG["APPROVED"], key
            postings[key] = postings.get(key, 0) + 1
    assert reversals == dict.fromkeys(reversed_, 1)
    assert postings == dict.fromkeys(posted, 1)

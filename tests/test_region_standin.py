"""Stand-in between regional switches under a fault, checked Jepsen-style (issue 15).

Shanghai bus readers ("sh") tap Jiangsu cards, one request at a time, logging every reply. The
Jiangsu switch ("js") is killed with SIGKILL in the middle of the run: NATS then has no
responder for its subject, and "sh" stands in within the limits "js" published (1,000 fen a
tap, 3,000 fen a card a day by default) and queues the advices. "js" is started again; its
consumer posts them. Then, from both committed journals:
- every tap a reader was told was approved has exactly one effect at the issuer (an online
  TAP record, or the posting of its stand-in advice);
- each card's balance is its opening balance minus the effects, to the fen;
- no card's stand-in total for the day exceeds the published limits.
A Jiangsu card at a Beijing reader (owned by "sh") is refused 62 by "js" while it answers and
by "sh" standing in for it while it is dead: the catalogue's answer, not an approval "js"
would refuse to post (issue 27).
A 91 may have an effect only for a tap in flight when "js" died (decided and committed, never
answered: native taps have no reversal yet, docs/regions.md); they are counted, at most one per
reader."""

import threading
import time

import numpy as np
import pytest

from onecard.core.state import (
    CARD_ACTIVE,
    FN_FINANCIAL,
    FN_TRANSPORT,
    TERM_BUS_READER,
    TERM_POS,
)
from onecard.protocols import forward, native
from onecard.protocols.journal import FLAGS
from onecard.switch.store import loader
from onecard.switch.terminals import read_terminals

from conftest import AdminClient
from termsim import IsoTerminal, NativeTerminal, socket_exchange
from test_region_forward import JS, balance_of, card_of, journal, metric, pos, two_regions

pytestmark = pytest.mark.slow

READERS = 3
TAPS_PER_PHASE = 25                  # per reader, in each of: js up, js dead, js back
TAPS_MAX = 2_000                     # per reader: every load loop is bounded
RUN_TIMEOUT_S = 180
PAUSE_S = 0.004                      # between a reader's taps (a bus boards, one at a time)
FLAG = {name: bit for name, bit, _ in FLAGS}
TRANSIT = FN_FINANCIAL | FN_TRANSPORT            # cards a bus reader takes
BEIJING = 11                 # owned by "sh"; its bus readers take JJJ cards, not Jiangsu's


@pytest.fixture(scope="module")
def regions(demo_dir, tmp_path_factory):
    with two_regions(tmp_path_factory.mktemp("standin"), demo_dir) as r:
        yield r


class Reader(threading.Thread):
    """A Shanghai bus reader tapping Jiangsu cards until told to stop; logs every reply."""

    def __init__(self, regions, info, cards: list[str]) -> None:
        super().__init__(daemon=True)
        sock, exchange = socket_exchange("127.0.0.1", regions.switches["sh"].native, 4,
                                         timeout=30)
        regions.sockets.append(sock)
        self.g = NativeTerminal(info, exchange)
        assert self.g.signon().rc == "00"
        self.tid = info.tid
        self.cards = cards
        self.log: list[tuple[int, str, str, int]] = []      # (sequence, card, code, fare)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            for i in range(TAPS_MAX):
                if self.stop.is_set() or time.monotonic() > deadline:
                    break
                pan = self.cards[i % len(self.cards)]
                tap = self.g.tap(pan)
                (r,) = self.g.send([tap])
                self.log.append((tap.seq, pan, r.rc, r.fare_fen))
                time.sleep(PAUSE_S)
        except BaseException as exc:
            self.error = exc


def wait_posted(sw, at_least: float, timeout_s: float = 60) -> float:
    """Until the issuer has posted this many stand-in advices (or time is up): how many."""
    deadline = time.monotonic() + timeout_s
    while (posted := metric(sw, "onecard_advices_posted_total")) < at_least:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return posted


def postings(regions, tid: str, seq: int) -> list:
    """The issuer's (js) committed postings of the stand-in advice of a terminal's request."""
    idx = next(t.idx for t in read_terminals(regions.dirs["js"]) if t.tid == tid)
    return [r for r in journal(regions.dirs["js"])
            if r.kind_name == "OFFLINE_TAP" and r.flags & FLAG["STAND_IN"]
            and (r.terminal, r.seq) == (idx, seq)]


def wait_for(readers, taps: int) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while min(len(r.log) for r in readers) < taps and time.monotonic() < deadline:
        assert all(r.error is None for r in readers), [r.error for r in readers]
        time.sleep(0.01)


def reader(regions, index: int, province: int = 31) -> NativeTerminal:
    info = [t for t in read_terminals(regions.dirs["sh"])
            if t.kind == TERM_BUS_READER and t.province == province][index]
    sock, exchange = socket_exchange("127.0.0.1", regions.switches["sh"].native, 4)
    regions.sockets.append(sock)
    g = NativeTerminal(info, exchange)
    assert g.signon().rc == "00"
    return g


def test_a_card_reported_lost_at_home_is_known_lost_everywhere_within_a_second(regions):
    """Jiangsu's operator reports a card lost: Shanghai learns it (for stand-in) through the
    blocked-cards bucket; the time is measured, against a generous bound."""
    sh = regions.switches["sh"]
    pan, _ = card_of(regions.dirs["js"], JS, nth=20, functions=TRANSIT)
    before = metric(sh, "onecard_foreign_blocked_cards")
    r = AdminClient(regions.switches["js"]).post(f"/admin/cards/{pan}/loss")
    assert r.status == 200, r.text
    start = time.monotonic()
    while (metric(sh, "onecard_foreign_blocked_cards") < before + 1
           and time.monotonic() - start < 10):
        time.sleep(0.005)
    took_s = time.monotonic() - start
    assert metric(sh, "onecard_foreign_blocked_cards") == before + 1
    assert took_s < 5, f"the loss took {took_s:.3f} s to reach another region"
    print(f"loss known in another region after {took_s * 1000:.0f} ms")
    g = reader(regions, READERS)
    assert g.send([g.tap(pan)])[0].rc == "41"          # online: its issuer refuses it
    regions.state["lost"] = pan


def poorest_card(data_dir, province: int) -> tuple[str, int]:
    """The transit card of a province with the smallest balance: its number and balance."""
    st = loader.load(data_dir).state
    pans = st.cards["pan"]
    prov = np.array([int(str(int(p))[3:5]) for p in pans])
    ok = (prov == province) & (st.cards["status"] == CARD_ACTIVE)
    ok &= (st.cards["functions"] & TRANSIT) == TRANSIT
    balances = st.accounts["balance_fen"][st.cards["account"]]
    idx = int(np.flatnonzero(ok)[np.argmin(balances[ok])])
    return str(int(pans[idx])), int(balances[idx])


def test_a_card_overdrawn_at_home_is_on_every_regions_gate_deny_list_within_a_second(regions):
    """A Jiangsu card driven below zero by an offline upload (its issuer decides it) goes onto
    Jiangsu's deny list; Shanghai's gates get it in their own deny-list sync (a FOREIGN_DENY
    record there) to refuse it offline. The time is measured, against a generous bound."""
    sh = regions.switches["sh"]
    pan, balance_fen = poorest_card(regions.dirs["js"], JS)
    g = reader(regions, READERS + 1)
    start = g.send([native.DenyListSync(g.next_seq(), 0)])[0].version
    (r,) = g.send([native.OfflineTap(g.next_seq(), pan, 0, native.TAP_IN, int(time.time()))])
    assert r.rc == "00" and r.fare_fen > balance_fen, (r, balance_fen)   # now below zero
    began = time.monotonic()
    while time.monotonic() - began < 10:
        listed = g.send([native.DenyListSync(g.next_seq(), start)])[0]
        if pan in listed.added:
            break
        time.sleep(0.005)
    took_s = time.monotonic() - began
    assert (listed.added, listed.removed) == ([pan], [])
    assert took_s < 5, f"the deny listing took {took_s:.3f} s to reach another region's gates"
    print(f"overdrawn card on another region's gate deny list after {took_s * 1000:.0f} ms")
    assert metric(sh, "onecard_foreign_deny_list_changes_total") >= 1
    marks = [x for x in journal(regions.dirs["sh"]) if x.kind_name == "FOREIGN_DENY"]
    assert [(m.listed, m.issuer_province) for m in marks][-1:] == [(1, JS)]


def catalogue_of(sw) -> dict:
    return AdminClient(sw).get("/catalogue", role=None).json()


def test_a_catalogue_change_in_one_region_is_enforced_in_every_region_within_a_second(regions):
    """The catalogue is the scheme's: a change made through Jiangsu's admin API is in
    Shanghai's within a second (measured), with the same version, and enforced there: an
    application retired in Jiangsu is refused (58) at Shanghai's terminals."""
    sh, js = regions.switches["sh"], regions.switches["js"]
    version = catalogue_of(sh)["version"]
    assert catalogue_of(js)["version"] == version
    home = AdminClient(js)
    r = home.call("PATCH", "/admin/catalogue/FIN-PAY", {"daily_limit_fen": 123_400},
                  role="catalogue")
    assert r.status == 200, r.text
    assert r.json()["version"] == version + 1
    start = time.monotonic()
    while metric(sh, "onecard_catalogue_version") < version + 1 and time.monotonic() - start < 10:
        time.sleep(0.005)
    took_s = time.monotonic() - start
    assert took_s < 5, f"the catalogue change took {took_s:.3f} s to reach another region"
    print(f"catalogue version {version + 1} in another region after {took_s * 1000:.0f} ms")
    listing = catalogue_of(sh)
    fin = next(a for a in listing["applications"] if a["code"] == "FIN-PAY")
    assert (listing["version"], fin["daily_limit_fen"]) == (version + 1, 123_400)
    # a change made in Shanghai goes the other way, after the first
    r = AdminClient(sh).call("DELETE", "/admin/catalogue/FIN-PAY", role="catalogue")
    assert r.status == 200, r.text
    start = time.monotonic()
    while metric(js, "onecard_catalogue_version") < version + 2 and time.monotonic() - start < 10:
        time.sleep(0.005)
    assert metric(js, "onecard_catalogue_version") == version + 2
    t = pos(regions)
    pan, _ = card_of(regions.dirs["sh"], 31, nth=40)
    (r,) = t.send(t.purchase(pan, 100))
    assert r["39"] == "58"                                   # retired everywhere
    r = home.call("PATCH", "/admin/catalogue/FIN-PAY", {"active": True}, role="catalogue")
    assert r.status == 200, r.text
    while metric(sh, "onecard_catalogue_version") < version + 3 and time.monotonic() - start < 20:
        time.sleep(0.005)
    (r,) = t.send(t.purchase(pan, 100))
    assert r["39"] == "00"


def test_an_issuer_killed_under_load_is_stood_in_for_and_every_answer_stays_true(regions):
    infos = [t for t in read_terminals(regions.dirs["sh"])
             if t.kind == TERM_BUS_READER and t.province == 31][:READERS]
    assert len(infos) == READERS
    # reader 0 taps one card only: it reaches the day's limit while "js" is dead
    cards = [[card_of(regions.dirs["js"], JS, nth=n, functions=TRANSIT)[0] for n in nths]
             for nths in ([0], [1, 2, 3], [4, 5, 6])][:READERS]
    opening = {pan: balance_of(regions.dirs["js"], pan) for group in cards for pan in group}
    readers = [Reader(regions, info, group) for info, group in zip(infos, cards, strict=True)]
    # A Beijing reader (owned by "sh"): the catalogue refuses Jiangsu cards there (62), at
    # "js" while it answers and at "sh" standing in for it (issue 27).
    beijing = reader(regions, 0, province=BEIJING)
    outsider = card_of(regions.dirs["js"], JS, nth=10, functions=TRANSIT)[0]
    assert beijing.send([beijing.tap(outsider)])[0].rc == "62"
    for r in readers:
        r.start()
    wait_for(readers, TAPS_PER_PHASE)
    regions.switches.pop("js").kill9()
    killed_at = [len(r.log) for r in readers]
    wait_for(readers, max(killed_at) + TAPS_PER_PHASE)
    lost = regions.state.get("lost")
    if lost is not None:                               # stand-in refuses it as js would
        g = reader(regions, READERS + 1)
        assert g.send([g.tap(lost)])[0].rc == "41"
    assert beijing.send([beijing.tap(outsider)])[0].rc == "62"
    regions.start("js")
    back_at = [len(r.log) for r in readers]
    wait_for(readers, max(back_at) + TAPS_PER_PHASE)
    for r in readers:
        r.stop.set()
        r.join(60)
        assert r.error is None, r.error
    dead = [entry for r, a, b in zip(readers, killed_at, back_at, strict=True)
            for entry in r.log[a:b]]
    assert {code for _, _, code, _ in dead} <= {"00", "91"}
    assert "00" in {code for _, _, code, _ in dead}
    # decided by stand-in: the readers' approvals, the lost card's refusal and Beijing's
    stood_in = metric(regions.switches["sh"],
                      'onecard_forwarded_requests_total{origin="stand_in",province="32"}')
    stood_in -= (lost is not None) + 1
    assert stood_in > 0, "nothing was stood in for while the issuer was dead"
    # the advices drained: every stand-in posted at the issuer
    sh, js = regions.switches["sh"], regions.switches["js"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            metric(sh, "onecard_advices_pending")
            or metric(js, "onecard_advices_posted_total") < stood_in):
        time.sleep(0.2)
    assert metric(sh, "onecard_advices_pending") == 0
    assert metric(js, "onecard_advices_posted_total") >= stood_in
    assert metric(js, "onecard_advices_unresolved_total") == 0
    regions.stop("sh")
    regions.stop("js")
    check(regions, readers, opening)


def check(regions, readers, opening: dict[str, int]) -> None:
    tid_of = {t.idx: t.tid for t in read_terminals(regions.dirs["js"])}
    effects: dict[tuple[str, int], int] = {}       # (reader, sequence) -> fen, per effect
    counts: dict[tuple[str, int], int] = {}
    for rec in journal(regions.dirs["js"]):
        online = rec.kind_name == "TAP" and rec.flags & FLAG["APPROVED"]
        posted = rec.kind_name == "OFFLINE_TAP" and rec.flags & FLAG["STAND_IN"]
        if online or (posted and rec.flags & FLAG["APPROVED"]):
            key = (tid_of[rec.terminal], rec.seq)
            effects[key] = effects.get(key, 0) + rec.amount_fen
            counts[key] = counts.get(key, 0) + 1
    charged = dict.fromkeys(opening, 0)
    unanswered_effects = 0
    for r in readers:
        for seq, pan, code, _ in r.log:
            key = (r.tid, seq)
            if code == "00":
                assert counts.get(key) == 1, (key, counts.get(key))
            else:
                assert counts.get(key, 0) <= 1, (key, code)
                unanswered_effects += counts.get(key, 0)
            charged[pan] += effects.get(key, 0)
    assert unanswered_effects <= READERS, unanswered_effects
    for pan, fen in opening.items():
        assert balance_of(regions.dirs["js"], pan) == fen - charged[pan], pan
    # the acquirer's stand-ins per card per day against the published limits
    per_card: dict[tuple[int, int], int] = {}
    for rec in journal(regions.dirs["sh"]):
        if rec.kind_name == "FORWARDED" and rec.origin == forward.ORIGIN["STAND_IN"]:
            assert rec.amount_fen <= forward.STAND_IN_PER_TXN_FEN
            key = (rec.issuer_record_no, (rec.ts_us // 1_000_000 + 8 * 3600) // 86_400)
            per_card[key] = per_card.get(key, 0) + rec.amount_fen
    assert per_card and max(per_card.values()) <= forward.STAND_IN_PER_DAY_FEN


def ready(sw) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sw.http}/readyz", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def test_a_partitioned_issuer_is_stood_in_for_and_converges_when_healed(regions):
    """"js" reaches NATS through one node only; that node is killed: "js" is cut off from the
    other regions (its subject has no responder), while both regions' local traffic goes on.
    Cross traffic at "sh" is stood in for (taps) or gets 91 (purchases), and so does "js"'s
    for Shanghai cards. The node comes back: "js" reconnects, posts the advices, and the
    stood-in tap is charged there exactly once."""
    for name in ("sh", "js"):
        regions.stop(name)
    regions.start("js", nodes=[2])
    regions.start("sh", nodes=[0, 1])
    sh, js = regions.switches["sh"], regions.switches["js"]
    js_pan, _ = card_of(regions.dirs["js"], JS, nth=30, functions=TRANSIT)
    sh_pan, _ = card_of(regions.dirs["sh"], 31, nth=30)
    g = reader(regions, READERS + 2)
    t = pos(regions)
    assert g.send([g.tap(js_pan)])[0].rc == "00"                # forwarded, decided by js
    regions.cluster.kill(2)
    deadline = time.monotonic() + 30
    while ready(js) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ready(js), "js still says it is linked"
    # local traffic on both sides is unaffected
    (local,) = t.send(t.purchase(sh_pan, 100))
    assert local["39"] == "00"
    js_local = js_pos(regions)
    (home,) = js_local.send(js_local.purchase(js_pan, 100))
    assert home["39"] == "00"
    # cross traffic: stand-in for the tap, 91 for the purchase, both ways
    before = metric(sh, 'onecard_forwarded_requests_total{origin="stand_in",province="32"}')
    (stood,) = g.send([g.tap(js_pan)])
    assert stood.rc == "00"
    assert metric(sh, 'onecard_forwarded_requests_total{origin="stand_in",province="32"}') \
        == before + 1
    (cross,) = t.send(t.purchase(js_pan, 100))
    assert cross["39"] == "91"
    (other,) = js_local.send(js_local.purchase(sh_pan, 100))
    assert other["39"] == "91"
    # healed: js reconnects and posts the advice
    posted = metric(js, "onecard_advices_posted_total")
    regions.cluster.start(2)
    assert wait_posted(js, posted + 1) == posted + 1
    assert ready(js)
    assert g.send([g.tap(js_pan)])[0].rc == "00"                # forwarded again
    regions.stop("sh")
    regions.stop("js")
    recs = postings(regions, g.info.tid, stood.seq)
    assert len(recs) == 1 and recs[0].flags & FLAG["APPROVED"]


def js_pos(regions) -> IsoTerminal:
    info = next(t for t in read_terminals(regions.dirs["js"])
                if t.kind == TERM_POS and t.province == JS)
    sock, exchange = socket_exchange("127.0.0.1", regions.switches["js"].iso, 2)
    regions.sockets.append(sock)
    t = IsoTerminal(info, exchange, stan=5000)
    assert t.signon()["39"] == "00"
    return t

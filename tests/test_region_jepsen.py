"""Issue 27's scenario as a Jepsen-style test: the issuer region's switch killed (SIGKILL)
under ISO 8583 and native load with stand-in on, and the reversal advices held back far
longer than the RING_SLOTS requests per terminal a ring remembers.

Three regional switches over a 3-node NATS cluster (test_region_forward.three_regions): "sh"
acquires, "js" issues Jiangsu's cards, "zj" owns Zhejiang (it takes no load: it is the
third region every clearing check and the hub's netting run over). Independent clients log
every answer: Shanghai POS terminals buying with Jiangsu cards (forwarded) and Shanghai cards
(local) in the same frames, and Shanghai bus readers tapping Jiangsu cards. The faults, in
this order, all under load:

1. js's advice consumer is paused (JetStream consumer pause): every advice waits from now on;
2. js stalls (SIGSTOP) longer than sh's forwarding timeout: requests in flight get 91, and js,
   resumed, decides them late (late approvals that only an advice can undo);
3. each POS makes more than RING_SLOTS forwarded requests that js decides, so the ring slots
   that held those STANs are taken (the 64-slot ring alone could not resolve the advices);
4. js is killed (SIGKILL): purchases get 91 (advices queued at sh), taps are stood in for;
5. js starts again (the consumer still paused), and each POS again makes more than RING_SLOTS
   requests js decides;
6. the load stops; the consumer is resumed; the advices drain (a bounded wait). In the
   second variant js crashes again between fetching the first messages of advices and
   committing them (kill_while_applying): those come again after the consumer's ack wait,
   behind the advices the restarted js applied meanwhile.

Each POS then sends its oldest approval again: the original answer, RRN included.

test_acquirer_stopped_with_advices_unsent_keeps_them: the acquirer's side of the same
promise, its advices waiting in memory across checkpoints when it is killed or stopped.

Then, from both committed journals:
- every approval has exactly one effect at its issuer, with the amount (and, ISO, the RRN) the
  terminal was told, and the acquirer's FORWARDED record claims what the issuer charged;
- every ISO 91 has no effect at the issuer: its advice found the original through the
  idempotency horizon and undid it; no advice is unresolved (before the horizon, 17,196 of
  20,978 were); the issuer's journal shows advices applied after the ring slot moved on;
- a native 91 with an effect (no native reversal exists) is listed by clearing's hub as a late
  approval;
- every tap stood in for is posted at the issuer exactly once, at most at the stood-in fare;
- every card's balance, at its issuer, is its opening balance minus the effects, to the fen.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import signal
import threading
import time
from typing import NamedTuple

import numpy as np
import pytest

from onecard.core.state import FN_FINANCIAL, FN_TRANSPORT, TERM_BUS_READER, TERM_POS
from onecard.protocols import clearing, forward
from onecard.protocols.journal import FLAGS
from onecard.protocols.journal_codec import decode
from onecard.switch.store import loader
from onecard.switch.terminals import read_terminals

from checker import committed_journal
from termsim import IsoTerminal, NativeTerminal, socket_exchange
from test_region_forward import HOME, JS, matching_cards, metric, three_regions

pytestmark = pytest.mark.slow

nats = pytest.importorskip("nats")
advices = pytest.importorskip("onecard.switch.region.advices")
hub = pytest.importorskip("onecard.switch.clearing.hub")

POS_TERMINALS = 3
READERS = 3
WINDOW = 4                       # purchases per frame: several in flight when js stalls
LOCAL_SHARE = 0.25               # of a POS's purchases, with Shanghai's own cards
POS_PACE_S = 0.05                # between a POS's frames: bounds the 91s (and advices) while
READER_PACE_S = 0.02             # js is dead; a reader's between taps
RING_SLOTS = 64                  # State(ring_size=64): what a terminal's ring remembers
PAST_RING = RING_SLOTS + 36      # forwarded requests decided per POS to pass its ring
STALL_S = 1.5                    # js stopped: three times sh's forwarding timeout (500 ms)
EXCHANGES_MAX = 1_500            # per client: every load loop is bounded
RUN_TIMEOUT_S = 150              # per client
PHASE_TIMEOUT_S = 60
DRAIN_TIMEOUT_S = 90
PAUSE_S = 300                    # the consumer's pause ends by itself even if the test dies
CONSUMER = "advices-js"          # the issuer's durable consumer (switch/region/advices.py)
FLAG = {name: bit for name, bit, _ in FLAGS}
TRANSIT = FN_FINANCIAL | FN_TRANSPORT


class Told(NamedTuple):
    """One answer as the terminal got it."""

    tid: str
    seq: int                     # STAN or native sequence
    pan: str
    amount_fen: int              # asked (ISO) or the fare told (native)
    code: str
    rrn: int                     # ISO field 37 of an approval, else -1
    forwarded: bool              # a Jiangsu card (decided by js), not a Shanghai one


class Client(threading.Thread):
    """A terminal on its own connection to sh, sending until stopped; logs every answer."""

    def __init__(self, pace_s: float) -> None:
        super().__init__(daemon=True)
        self.pace_s = pace_s
        self.log: list[Told] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            for _ in range(EXCHANGES_MAX):
                if self.stop.is_set() or time.monotonic() > deadline:
                    break
                self.exchange()
                time.sleep(self.pace_s)
        except BaseException as exc:           # reported by the test, not lost in a thread
            self.error = exc

    def decided(self, since: int = 0) -> int:
        """Forwarded requests since log entry ``since`` that the issuer answered (not 91)."""
        return sum(x.forwarded and x.code != "91" for x in self.log[since:])


class Pos(Client):
    """A Shanghai POS: frames of WINDOW purchases, with Jiangsu and Shanghai cards."""

    def __init__(self, regions, info, js_cards: list[str], sh_cards: list[str]) -> None:
        super().__init__(POS_PACE_S)
        sock, exchange = socket_exchange("127.0.0.1", regions.switches["sh"].iso, 2,
                                         timeout=30)
        regions.sockets.append(sock)
        self.t = IsoTerminal(info, exchange)
        assert self.t.signon()["39"] == "00"
        self.rng = random.Random(info.tid)
        self.cards = js_cards, sh_cards

    def exchange(self) -> None:
        sent = []
        for _ in range(WINDOW):
            local = self.rng.random() < LOCAL_SHARE
            pan = self.rng.choice(self.cards[local])
            amount, stan = self.rng.randint(1, 300), self.t.next_stan()
            sent.append((int(stan), pan, amount, not local,
                         self.t.purchase(pan, amount, stan=stan)))
        replies = self.t.send(*(raw for *_, raw in sent))
        for (stan, pan, amount, fwd, _), r in zip(sent, replies, strict=True):
            assert int(r["11"]) == stan, (stan, r)
            rrn = int(r["37"]) if r["39"] == "00" else -1
            self.log.append(Told(self.t.info.tid, stan, pan, amount, r["39"], rrn, fwd))


class Reader(Client):
    """A Shanghai bus reader tapping Jiangsu cards, one at a time."""

    def __init__(self, regions, info, cards: list[str]) -> None:
        super().__init__(READER_PACE_S)
        sock, exchange = socket_exchange("127.0.0.1", regions.switches["sh"].native, 4,
                                         timeout=30)
        regions.sockets.append(sock)
        self.g = NativeTerminal(info, exchange)
        assert self.g.signon().rc == "00"
        self.cards = cards

    def exchange(self) -> None:
        pan = self.cards[len(self.log) % len(self.cards)]
        tap = self.g.tap(pan)
        (r,) = self.g.send([tap])
        self.log.append(Told(self.g.info.tid, tap.seq, pan, r.fare_fen, r.rc, -1, True))


@pytest.fixture(scope="module")
def regions(demo_dir, tmp_path_factory):
    with three_regions(tmp_path_factory.mktemp("jepsen"), demo_dir) as r:
        yield r


def cards_of(data_dir, province: int, functions: int, n: int) -> list[str]:
    """n active cards of a province with these functions and at least BALANCE_FEN."""
    st = loader.load(data_dir).state
    found = [str(int(st.cards["pan"][i])) for i in matching_cards(st, province, functions)[:n]]
    assert len(found) == n, f"{len(found)} such cards of province {province}"
    return found


def balances(data_dir, pans) -> dict[str, int]:
    """Each card's financial balance in the data set's committed state."""
    st = loader.load(data_dir).state
    index = {int(p): i for i, p in enumerate(st.cards["pan"].tolist())}
    account = st.cards["account"]
    return {pan: int(st.accounts["balance_fen"][account[index[int(pan)]]]) for pan in pans}


def jetstream(urls: list[str], api: str, body: dict | None = None) -> dict:
    """One JetStream API request ($JS.API.<api>) on a connection of the test's own."""
    async def call() -> dict:
        nc = await nats.connect(servers=urls, connect_timeout=5, allow_reconnect=False)
        try:
            payload = json.dumps(body).encode() if body is not None else b""
            msg = await nc.request(f"$JS.API.{api}", payload, timeout=5)
        finally:
            await nc.close()
        return json.loads(msg.data)
    return asyncio.run(call())


def pause_consumer(regions, seconds: float) -> None:
    """Pause (seconds > 0) or resume (0) js's advice consumer: nats-server 2.11's consumer
    pause, kept by the server across js's restart (js binds to the durable it finds)."""
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds) if seconds > 0
             else dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
    r = jetstream(regions.cluster.urls, f"CONSUMER.PAUSE.{advices.STREAM}.{CONSUMER}",
                  {"pause_until": until.isoformat(timespec="milliseconds")
                   .replace("+00:00", "Z")})
    assert "error" not in r and r["paused"] == (seconds > 0), r


def consumer(regions) -> dict:
    r = jetstream(regions.cluster.urls, f"CONSUMER.INFO.{advices.STREAM}.{CONSUMER}")
    assert "error" not in r, r
    return r


def wait_until(clients: list[Client], done, what: str) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while not done():
        assert all(c.error is None for c in clients), [c.error for c in clients]
        assert all(c.is_alive() for c in clients), f"a client ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {PHASE_TIMEOUT_S} s"
        time.sleep(0.01)


def past_ring(poses: list[Pos], clients: list[Client]) -> None:
    """Until every POS has made PAST_RING more forwarded requests that js decided."""
    marks = [len(p.log) for p in poses]
    wait_until(clients, lambda: all(p.decided(m) >= PAST_RING
                                    for p, m in zip(poses, marks, strict=True)),
               f"{PAST_RING} forwarded requests decided per POS")


def start_load(regions, lane: int, pos: bool = True
               ) -> tuple[list[Pos], list[Reader], dict[str, int]]:
    """The clients of one test (``lane``: its own terminals and cards, so that tests sharing
    the switches share no terminal's numbers nor any card), started, and the opening balance
    of every card they use."""
    terminals = read_terminals(regions.dirs["sh"])
    pos_infos = [t for t in terminals if t.kind == TERM_POS and t.province == HOME
                 and t.app in ("", "FIN-PAY")][lane * POS_TERMINALS:][:POS_TERMINALS]
    reader_infos = [t for t in terminals if t.kind == TERM_BUS_READER
                    and t.province == HOME][lane * READERS:][:READERS]
    assert (len(pos_infos), len(reader_infos)) == (POS_TERMINALS, READERS)
    # Separate cards for taps and purchases, four per client: a reader's cards reach the
    # day's stand-in limit while js is dead (then 91, no advice), a POS's never run dry.
    per_lane = 4 * (READERS + POS_TERMINALS)
    js_cards = cards_of(regions.dirs["js"], JS, TRANSIT, per_lane * (lane + 1))[-per_lane:]
    sh_cards = cards_of(regions.dirs["sh"], HOME, FN_FINANCIAL, 4 * (lane + 1))[-4:]
    opening = {**balances(regions.dirs["js"], js_cards),
               **balances(regions.dirs["sh"], sh_cards)}
    readers = [Reader(regions, info, js_cards[4 * i:4 * i + 4])
               for i, info in enumerate(reader_infos)]
    poses = [Pos(regions, info, js_cards[4 * (READERS + i):4 * (READERS + i) + 4], sh_cards)
             for i, info in enumerate(pos_infos) if pos]
    for c in (*poses, *readers):
        c.start()
    return poses, readers, opening


def kill_while_applying(regions) -> tuple[object, int]:
    """js crashes between fetching advices and committing them, made certain: js is killed
    (SIGKILL) with its consumer paused, and the test takes the first half of the messages
    waiting for js from its durable consumer itself, without acknowledging them, as the
    dead process would have left them. js starts again: it applies the messages after those,
    and gets those again after the consumer's ack wait (30 s). The killed switch, and how
    many messages it had taken."""
    victim = regions.switches.pop("js")
    victim.kill9()
    want = max(1, consumer(regions)["num_pending"] // 2)
    pause_consumer(regions, 0)

    async def take() -> int:
        nc = await nats.connect(servers=regions.cluster.urls, connect_timeout=5,
                                allow_reconnect=False)
        try:
            sub = await nc.jetstream().pull_subscribe(
                advices.SUBJECT_PREFIX + "js", durable=CONSUMER, stream=advices.STREAM)
            taken = 0
            for _ in range(want):                # bounded: a fetch returns one at least
                taken += len(await sub.fetch(want - taken, timeout=5))
                if taken >= want:
                    break
            return taken
        finally:
            await nc.close()
    handed = asyncio.run(take())
    regions.start("js")
    return victim, handed


def drain(regions) -> float:
    """Wait until sh has stored every advice and js has applied (acknowledged) every one:
    how long that took."""
    sh = regions.switches["sh"]
    began = time.monotonic()
    while True:
        info, queued = consumer(regions), metric(sh, "onecard_advices_pending")
        if queued == 0 and info["num_pending"] == 0 and info["num_ack_pending"] == 0:
            return time.monotonic() - began
        assert time.monotonic() - began < DRAIN_TIMEOUT_S, \
            (queued, info["num_pending"], info["num_ack_pending"])
        time.sleep(0.2)


# The issuer killed again while it applies the held-back advices: what it had fetched and not
# acknowledged comes again after the consumer's ack wait (30 s), behind advices the restarted
# switch has applied meanwhile.
@pytest.mark.parametrize("kill_applying", [False, True],
                         ids=["drained", "killed-while-applying"])
def test_issuer_killed_under_load_with_advices_held_past_the_ring(regions, kill_applying):
    began = time.monotonic()
    for name in ("js", "zj", "sh"):              # stopped by the test before this one
        if name not in regions.switches:
            regions.start(name)
    poses, readers, opening = start_load(regions, lane=int(kill_applying))
    clients = [*poses, *readers]
    wait_until(clients, lambda: min(p.decided() for p in poses) >= 20
               and min(len(r.log) for r in readers) >= 10, "warm-up")
    pause_consumer(regions, PAUSE_S)
    js = regions.switches["js"]
    js.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(STALL_S)
    finally:
        js.proc.send_signal(signal.SIGCONT)
    past_ring(poses, clients)
    killed = [regions.switches.pop("js")]
    killed[0].kill9()
    marks = [len(c.log) for c in clients]
    wait_until(clients, lambda: all(len(c.log) >= m + 20 for c, m in zip(clients, marks,
                                                                          strict=True)),
               "answers while js is dead")
    js = regions.start("js")
    assert consumer(regions).get("paused"), "js's restart resumed the advice consumer"
    past_ring(poses, clients)
    for c in clients:
        c.stop.set()
    for c in clients:
        c.join(60)
        assert c.error is None, c.error
    assert metric(js, "onecard_advices_applied_total") == 0, "advices applied while paused"
    published = metric(regions.switches["sh"], "onecard_advices_published_total")
    counts = {"advices published while paused": published}
    if kill_applying:
        victim, counts["advice messages taken from js"] = kill_while_applying(regions)
        killed.append(victim)
    else:
        pause_consumer(regions, 0)
    counts["drain_s"] = drain(regions)
    counts["old approvals sent again"] = retransmit_oldest(poses)
    # since the last start; the killed switches' are in their logs (checked below)
    counts["advices unresolved"] = metric(regions.switches["js"],
                                          "onecard_advices_unresolved_total")
    regions.stop("sh")
    js = regions.switches["js"]
    regions.stop("js")
    regions.stop("zj")
    logs = "".join(sw.text() for sw in (*killed, js))
    report(counts)                               # shown with a failure below too
    assert "ring moved on" not in logs and "not posted" not in logs
    assert counts["advices unresolved"] == 0, counts
    report(check(regions, poses, readers, opening))
    report(clear_every_region(regions))
    print(f"jepsen: ran {time.monotonic() - began:.1f} s")


def clear_every_region(regions) -> dict:
    """After the crashes, every region clears every date of its journal by every command
    (run, exceptions, files, hub): what it cannot attribute is an UNATTRIBUTED exception held
    by the suspense party (each money record naming no card, e.g. an advice of a request
    the issuer never knew), each region's positions net to zero and so do the regions'."""
    from onecard.switch import cli
    from onecard.switch.clearing.positions import moving_rows, summarise, unattributed
    from onecard.switch.commands import clearing as clearing_cli

    cut = clearing.cutover_minutes(clearing.CUTOVER_DEFAULT)
    journals = {name: committed_journal(regions.dirs[name])[0] for name in ("sh", "js", "zj")}
    dates = sorted({clearing.day_date(d) for recs in journals.values()
                    for d in np.unique(clearing.settlement_days(recs["ts_us"], cut)).tolist()})
    counts = {"dates cleared": len(dates), "unattributed": 0}
    for date in dates:
        days, owners, provinces = {}, {}, {}
        for name, recs in journals.items():
            d = str(regions.dirs[name])
            for command in (["run"], ["exceptions"], ["files", "--out", f"{d}/clearing-check"]):
                assert cli.main(["clearing", *command, "--data-dir", d, "--date",
                                 str(date)]) == 0, (name, date, command)
            ref, date_recs, date_nos = clearing_cli.reference(d, date, date,
                                                              clearing.CUTOVER_DEFAULT)
            day = summarise(clearing_cli.legs(date_recs, date_nos, ref, date), date,
                            clearing.CUTOVER_DEFAULT)
            assert sum(p.net_fen for p in day.positions) == 0, (name, date)
            rows = moving_rows(recs, date, clearing.CUTOVER_DEFAULT)
            odd = int(np.any(list(unattributed(recs, rows, ref).values()), axis=0).sum())
            found = clearing_cli.exceptions.find(date_recs, date_nos, ref, date)
            assert sum(e.kind == "UNATTRIBUTED" for e in found) == odd, (name, date)
            counts["unattributed"] += odd
            days[name] = day
            owners.update({int(p): name for p in np.unique(ref.card_province)})
            provinces.update(zip(ref.terminal_acquirer, ref.terminal_province.tolist(),
                                 strict=True))
        netted = hub.net(days, owners, provinces)
        assert sum(r.net_fen for r in netted.regions) == 0, (date, netted)
        assert cli.main(["clearing", "hub", "--date", str(date),
                         *[x for name in journals
                           for x in ("--region", f"{name}={regions.dirs[name]}")]]) == 0
    return counts


def retransmit_oldest(poses: list[Pos]) -> int:
    """Each POS sends its oldest forwarded approval again, hundreds of requests and two
    restarts of js later: the original answer, RRN included (and ``check`` finds one effect)."""
    for p in poses:
        first = next(x for x in p.log if x.forwarded and x.code == "00")
        (r,) = p.t.send(p.t.purchase(first.pan, first.amount_fen, stan=f"{first.seq:06d}"))
        assert (r["39"], int(r["37"])) == ("00", first.rrn), (first, r)
    return len(poses)


def report(counts: dict) -> None:
    print("jepsen:", ", ".join(f"{k} {round(v, 1):g}" for k, v in counts.items()))


class Effects:
    """What one region's committed journal did to money, by (terminal, STAN or sequence)."""

    def __init__(self, records: list) -> None:
        self.net: dict[tuple[int, int], int] = {}      # fen charged, net of reversals
        self.charges: dict[tuple[int, int], int] = {}  # records that charged
        self.no: dict[tuple[int, int], int] = {}       # the first such record's number
        for r in records:
            if not r.flags & FLAG["APPROVED"]:
                continue                    # declined, or a reversal of nothing approved
            key = (r.terminal, r.seq)
            if r.kind_name == "REVERSAL":
                self.net[key] = self.net.get(key, 0) - r.amount_fen
            elif r.kind_name in ("PURCHASE", "TAP") or (
                    r.kind_name == "OFFLINE_TAP" and r.flags & FLAG["STAND_IN"]):
                self.net[key] = self.net.get(key, 0) + r.amount_fen
                self.charges[key] = self.charges.get(key, 0) + 1
                self.no.setdefault(key, r.no)


def held_past_ring(records: list, terminals: set[int]) -> tuple[int, int]:
    """The reversal advices (the only reversals these POS terminals cause) that the issuer
    applied after a later request of the terminal had taken the ring slot of their STAN: how
    many, and how many of those undid an approval. A declined request left out of the
    journal would take a slot unseen here: this counts low, never high."""
    slot: dict[tuple[int, int], int] = {}          # (terminal, slot) -> STAN it holds
    held = undid = 0
    for r in records:
        if r.terminal not in terminals or r.kind_name not in ("PURCHASE", "REVERSAL"):
            continue
        key = (r.terminal, r.seq % RING_SLOTS)
        if r.kind_name == "REVERSAL" and slot.get(key, r.seq) != r.seq:
            held += 1
            undid += bool(r.flags & FLAG["APPROVED"])
            if not r.flags & FLAG["NO_ORIGINAL"]:
                continue                  # found in the horizon: the slot keeps its STAN
        slot[key] = r.seq
    return held, undid


def late_approvals(sh_recs: np.ndarray, js_recs: np.ndarray, js_nos: np.ndarray
                   ) -> set[tuple[int, int]]:
    """Clearing's list of 91s that js approved anyway (onecard clearing hub)."""
    cut = clearing.cutover_minutes(clearing.CUTOVER_DEFAULT)
    days = np.unique(clearing.settlement_days(sh_recs["ts_us"], cut))
    return {(x.terminal, x.seq) for day in days.tolist()
            for x in hub.late_approvals("sh", sh_recs, "js", js_recs, js_nos,
                                        clearing.day_date(day))}


def check(regions, poses: list[Pos], readers: list[Reader], opening: dict[str, int]) -> dict:
    """The checks of the module's docstring, from both committed journals; the counts."""
    sh_recs, sh_nos, _ = committed_journal(regions.dirs["sh"])
    js_recs, js_nos, _ = committed_journal(regions.dirs["js"])
    sh_journal, js_journal = decode(sh_recs, sh_nos), decode(js_recs, js_nos)
    index = {t.tid: t.idx for t in read_terminals(regions.dirs["js"])}
    forwarded: dict[tuple[int, int], list] = {}     # the acquirer's FORWARDED records
    for r in sh_journal:
        if r.kind_name == "FORWARDED" and not r.repeated:     # not retransmit_oldest's
            forwarded.setdefault((r.terminal, r.seq), []).append(r)
    fx = {"sh": Effects(sh_journal), "js": Effects(js_journal)}
    late = late_approvals(sh_recs, js_recs, js_nos)
    charged: dict[str, int] = {}
    counts = check_purchases(poses, index, fx, forwarded, late, charged)
    counts.update(check_taps(readers, index, fx["js"], forwarded, late, charged))
    if poses:
        held, undid = held_past_ring(js_journal, {index[p.t.info.tid] for p in poses})
        # The premise: advices came after their STAN's ring slot was taken, some of them
        # for late approvals, which only the idempotency horizon could still find and undo.
        assert undid >= 1, (held, undid)
        counts.update({"advices past the ring": held,
                       "late approvals undone past the ring": undid})
    for region, pans in (("js", [p for p in opening if p[3:5] == str(JS)]),
                         ("sh", [p for p in opening if p[3:5] != str(JS)])):
        now = balances(regions.dirs[region], pans)
        for pan in pans:
            assert now[pan] == opening[pan] - charged.get(pan, 0), (region, pan)
    return counts


def check_purchases(poses: list[Pos], index: dict, fx: dict, forwarded: dict, late: set,
                    charged: dict) -> dict:
    """Each POS answer against its issuer's journal and the acquirer's FORWARDED record."""
    n = {"purchases approved": 0, "purchases 91": 0, "purchases otherwise": 0}
    for x in (x for p in poses for x in p.log):
        key = (index[x.tid], x.seq)
        issuer = fx["js" if x.forwarded else "sh"]
        net, charges = issuer.net.get(key, 0), issuer.charges.get(key, 0)
        if x.code == "00":
            n["purchases approved"] += 1
            assert (charges, net, issuer.no.get(key)) == (1, x.amount_fen, x.rrn), (x, charges, net)
        elif x.code == "91":
            n["purchases 91"] += 1
            # its advice undid it (or it never was): not even a late approval to reconcile
            assert x.forwarded and net == 0 and key not in late, (x, charges, net)
        else:
            n["purchases otherwise"] += 1
            assert charges == 0, (x, charges)
        charged[x.pan] = charged.get(x.pan, 0) + net
        if not x.forwarded:
            continue
        (acq,) = forwarded[key]              # the acquirer claims what the issuer charged
        if x.code == "00":
            assert (acq.origin, acq.issuer_record_no, acq.amount_fen) == (
                forward.ORIGIN["ISSUER"], x.rrn, x.amount_fen), (x, acq)
        elif x.code == "91":
            assert acq.origin == forward.ORIGIN["UNAVAILABLE"], (x, acq)
    return n


def check_taps(readers: list[Reader], index: dict, js: Effects, forwarded: dict, late: set,
               charged: dict) -> dict:
    """Each tap's answer against the issuer's journal (an online TAP, or the posting of its
    stand-in advice) and the acquirer's FORWARDED record."""
    n = {"taps approved": 0, "taps stood in": 0, "taps 91": 0, "taps 91 late approvals": 0}
    unposted: list[Told] = []
    for x in (x for r in readers for x in r.log):
        key = (index[x.tid], x.seq)
        net, charges = js.net.get(key, 0), js.charges.get(key, 0)
        (acq,) = forwarded[key]
        if x.code == "00":
            n["taps approved"] += 1
            if charges == 0:
                unposted.append(x)               # told approved, charged nowhere
                continue
            assert charges == 1, (x, charges)
            assert acq.amount_fen == x.amount_fen, (x, acq)
            if acq.origin == forward.ORIGIN["STAND_IN"]:
                n["taps stood in"] += 1          # posted once, at most at the stood-in fare
                assert 0 <= net <= x.amount_fen, (x, net)
            else:
                assert acq.origin == forward.ORIGIN["ISSUER"] and net == x.amount_fen, (x, acq)
        elif x.code == "91":
            n["taps 91"] += 1
            # no native reversal: decided late at most once, and then listed for clearing
            assert charges == 0 or (charges == 1 and key in late), (x, charges)
            n["taps 91 late approvals"] += charges
        else:
            assert charges == 0, (x, charges)
        charged[x.pan] = charged.get(x.pan, 0) + net
    assert not unposted, f"{len(unposted)} approved taps never charged, from {unposted[0]}"
    return n


def start_once_streams_lead(regions, name: str, attempts: int = 3):
    """Start a region's switch after NATS nodes came back: wait_ready sees a meta leader,
    but the streams (routing bucket, advices) may still be electing theirs, and a switch
    that cannot reach them at start does not start (exit 2). So a few tries, bounded."""
    for attempt in range(attempts):
        try:
            return regions.start(name)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            time.sleep(2.0)
    return None


def start_checkpointing(regions, name: str, nodes: list[int]):
    """A region's switch that checkpoints every second (the default is 5 minutes), on these
    NATS nodes."""
    from conftest import start_switch

    path = regions.config(name, nodes=nodes)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write("[store]\ncheckpoint_interval_s = 1\n" + text)
    regions.switches[name] = start_switch(regions.dirs[name], "--config", path)
    return regions.switches[name]


@pytest.mark.parametrize("signal_", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_acquirer_stopped_with_advices_unsent_keeps_them(regions, signal_):
    """The acquirer's advices wait in memory while the stream cannot store them (JetStream
    without a quorum: 2 of 3 NATS nodes killed), their journal records durable, for several
    checkpoint intervals; then the acquirer is killed (SIGKILL) or stopped (SIGTERM). Its
    resend at start reads the journal after its newest checkpoint: no checkpoint may have
    passed those records, and every tap it stood in for must be posted at the issuer once
    (docs/regions.md: "resent from the journal at start")."""
    for name in list(regions.switches):
        regions.stop(name)
    sh = start_checkpointing(regions, "sh", nodes=[0])     # js stays down: stand-in
    regions.cluster.kill(1)
    regions.cluster.kill(2)
    _, readers, opening = start_load(regions, lane=2 + (signal_ == signal.SIGTERM), pos=False)
    try:
        wait_until(readers, lambda: metric(sh, "onecard_advices_pending") >= 3 * READERS,
                   "stand-in advices waiting for the stream")
        checkpoints = metric(sh, "onecard_checkpoints_written_total")
        time.sleep(3.0)                          # three checkpoint intervals
        checkpoints = metric(sh, "onecard_checkpoints_written_total") - checkpoints
    finally:
        for r in readers:
            r.stop.set()
        for r in readers:
            r.join(60)
    pending = metric(sh, "onecard_advices_pending")
    sh = regions.switches.pop("sh")
    if signal_ == signal.SIGKILL:
        sh.kill9()
    else:
        sh.stop(signal_)
    regions.cluster.start(1)
    regions.cluster.start(2)
    regions.cluster.wait_ready(60)
    start_once_streams_lead(regions, "js")
    start_once_streams_lead(regions, "sh")
    drained_s = drain(regions)
    regions.stop("sh")
    regions.stop("js")
    report({"advices unsent at the stop": pending, "checkpoints meanwhile": checkpoints,
            "drain_s": drained_s})
    report(check(regions, [], readers, opening))

"""Faults between regional switches, checked Jepsen-style (issue 15): terminals log what they
were told; after the fault, the issuer's committed journal must give every approved reply
exactly one effect, every 91 none (after the reversal advices drained), and every card's
balance must be its opening balance minus what the terminals were told they paid, to the fen.

The fault here: the NATS server a switch is connected to is killed (SIGKILL, 1 of 3) under
load, and started again."""

import json
import threading
import time
import urllib.request

import pytest

from onecard.protocols.journal import FLAGS
from onecard.switch.terminals import read_terminals

from termsim import IsoTerminal, socket_exchange
from test_region_forward import JS, balance_of, card_of, journal, metric, two_regions

pytestmark = pytest.mark.slow

WORKERS = 4
REQUESTS_PER_WORKER = 120            # STANs of a worker stay within its 1000-wide range
RUN_TIMEOUT_S = 120
APPROVED = next(value for name, value, _ in FLAGS if name == "APPROVED")


@pytest.fixture(scope="module")
def regions(demo_dir, tmp_path_factory):
    with two_regions(tmp_path_factory.mktemp("faults"), demo_dir) as r:
        yield r


def node_of(regions, client: str) -> int:
    """The NATS node a switch's connection (named onecard-<region>) is on."""
    for i, url in enumerate(regions.cluster.monitor_urls):
        with urllib.request.urlopen(f"{url}/connz?limit=1024", timeout=5) as r:
            conns = json.loads(r.read())["connections"] or []
        if any(c.get("name") == client for c in conns):
            return i
    raise AssertionError(f"{client} is on no NATS node")


class Worker(threading.Thread):
    """One Shanghai POS buying with Jiangsu cards, one request at a time; logs every reply."""

    def __init__(self, regions, info, stan_base: int, cards: list[str]) -> None:
        super().__init__(daemon=True)
        sock, exchange = socket_exchange("127.0.0.1", regions.switches["sh"].iso, 2,
                                         timeout=30)
        regions.sockets.append(sock)
        self.t = IsoTerminal(info, exchange, stan=stan_base)
        assert self.t.signon()["39"] == "00"
        self.cards = cards
        self.log: list[tuple[int, str, int, str]] = []      # (STAN, card, amount, code)
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            for i in range(REQUESTS_PER_WORKER):
                if time.monotonic() > deadline:
                    break
                pan, amount = self.cards[i % len(self.cards)], 100 + i
                stan = self.t.next_stan()
                (r,) = self.t.send(self.t.purchase(pan, amount, stan=stan))
                self.log.append((int(stan), pan, amount, r["39"]))
        except BaseException as exc:           # reported by the test, not lost in a thread
            self.error = exc


def test_a_nats_node_killed_under_load_leaves_every_answer_true(regions):
    sh_terminals = [t for t in read_terminals(regions.dirs["sh"])
                    if t.kind == 1 and t.province == 31 and t.app in ("", "FIN-PAY")]
    cards = [card_of(regions.dirs["js"], JS, nth=i)[0] for i in range(8)]
    opening = {pan: balance_of(regions.dirs["js"], pan) for pan in cards}
    workers = [Worker(regions, sh_terminals[i], 1000 * (i + 1), cards[2 * i:2 * i + 2])
               for i in range(WORKERS)]
    for w in workers:
        w.start()
    while sum(len(w.log) for w in workers) < WORKERS * REQUESTS_PER_WORKER // 3:
        time.sleep(0.01)
    victim = node_of(regions, "onecard-sh")
    regions.cluster.kill(victim)
    time.sleep(1.0)
    regions.cluster.start(victim)
    for w in workers:
        w.join(RUN_TIMEOUT_S + 30)
        assert w.error is None, w.error
    regions.cluster.wait_ready(60)
    told = [entry for w in workers for entry in w.log]
    assert len(told) == WORKERS * REQUESTS_PER_WORKER
    assert {code for *_, code in told} <= {"00", "91", "51"}, {c for *_, c in told}
    # the advices drained: every one the acquirer stored was applied by the issuer
    deadline = time.monotonic() + 60
    sh, js = regions.switches["sh"], regions.switches["js"]
    while time.monotonic() < deadline and (
            metric(sh, "onecard_advices_pending")
            or metric(js, "onecard_advices_applied_total")
            < metric(sh, "onecard_advices_published_total")):
        time.sleep(0.2)
    assert metric(sh, "onecard_advices_pending") == 0
    check(regions, told, opening)


def check(regions, told: list, opening: dict[str, int]) -> None:
    """Against the issuer's committed journal: one effect per approval; none per 91, except
    where the issuer reported the advice as unresolved (it came after the terminal's ring
    had moved on: reconciliation's business, counted and logged); and every card's balance
    is its opening balance minus the effects, to the fen."""
    effects: dict[int, int] = {}                   # STAN -> net fen charged at the issuer
    for r in journal(regions.dirs["js"]):
        if r.kind_name in ("PURCHASE", "REVERSAL") and r.flags & APPROVED:
            sign = 1 if r.kind_name == "PURCHASE" else -1
            effects[r.seq] = effects.get(r.seq, 0) + sign * r.amount_fen
    charged = dict.fromkeys(opening, 0)
    standing = 0                                   # 91s whose original stands at the issuer
    for stan, pan, amount, code in told:
        if code == "00":
            assert effects.get(stan) == amount, (stan, effects.get(stan))
        elif code == "91":
            assert effects.get(stan, 0) in (0, amount), (stan, effects.get(stan))
            standing += effects.get(stan, 0) == amount
        else:
            assert effects.get(stan, 0) == 0, (stan, code, effects.get(stan))
        charged[pan] += effects.get(stan, 0)
    unresolved = metric(regions.switches["js"], "onecard_advices_unresolved_total")
    assert standing <= unresolved, (standing, unresolved)
    for pan, fen in opening.items():
        assert balance_of(regions.dirs["js"], pan) == fen - charged[pan]

"""Two regional switches over a real NATS cluster (issue 15): "sh" owns every province but
Jiangsu, "js" owns Jiangsu (32). Terminals connect to "sh"; a Jiangsu card's requests are
forwarded to "js", decided and committed there, and answered through "sh", over real TCP, real
ISO 8583 and the native protocol. The data sets come from ``onecard region split`` of one demo
data set, and the switches are separate processes started as a user would start them.

Exactly-once is checked the checker's way: the issuer's committed journal and the card's
balance after stopping everything, against what the terminal was told."""

import contextlib
import signal
import sqlite3
import time
import urllib.request

import numpy as np
import pytest

from onecard.core.state import CARD_ACTIVE, FN_FINANCIAL, TERM_BUS_READER, TERM_POS
from onecard.protocols.journal_codec import decode
from onecard.switch import cli
from onecard.switch.store import loader

from checker import balance, committed_journal
from conftest import on_postgresql, start_switch, store_config
from termsim import IsoTerminal, NativeTerminal, socket_exchange

pytestmark = pytest.mark.slow

nats_server = pytest.importorskip("onecard.switch.cluster.nats")
routing = pytest.importorskip("onecard.switch.region.routing")
split = pytest.importorskip("onecard.switch.commands.split")

JS, HOME, ZJ = 32, 31, 33
BALANCE_FEN = 100_000


class Regions:
    """The NATS cluster, the two data sets, the routing table and the running switches."""

    def __init__(self, root, demo_dir, pg_server=None, *, zhejiang: bool = False) -> None:
        self.root = root
        self.pg_server = pg_server               # both regions' stores on it, if given
        self.zhejiang = zhejiang                 # a third region, "zj", owning Zhejiang
        self.cluster = nats_server.start_cluster(root / "nats", nodes=3)
        self.switches: dict = {}
        self.state: dict = {}
        self.sockets: list = []
        try:
            self._prepare(root, demo_dir)
        except BaseException:
            self.close()
            raise

    def _prepare(self, root, demo_dir) -> None:
        self.cluster.wait_ready()
        conn = sqlite3.connect(f"file:{demo_dir / 'onecard.db'}?mode=ro", uri=True)
        provinces = [p for (p,) in conn.execute(
            "SELECT DISTINCT province FROM regions ORDER BY province")]
        conn.close()
        self.dirs = {}
        parts = [("sh", [p for p in provinces if p not in (JS, ZJ)]), ("js", [JS]),
                 ("zj", [ZJ])]
        if not self.zhejiang:
            parts = [("sh", [p for p in provinces if p != JS]), ("js", [JS])]
        for name, owns in parts:
            self.dirs[name] = root / name / "data"
            self.dirs[name].parent.mkdir()
            split.split_data_set(demo_dir, self.dirs[name], owns)
            if self.pg_server is not None:
                on_postgresql(self.dirs[name], self.pg_server, f"{root.name}_{name}")
        urls = ",".join(self.cluster.urls)
        sets = [x for name, owns in parts for x in ("--set", f"{','.join(map(str, owns))}={name}")]
        assert cli.main(["region", "route", "--nats", urls, "--replicas", "3", *sets]) == 0

    def config(self, name: str, timeout_ms: int = 500, nodes: list[int] | None = None) -> str:
        path = self.root / name / "region.toml"
        chosen = self.cluster.urls if nodes is None else [self.cluster.urls[i] for i in nodes]
        urls = ", ".join(f'"{u}"' for u in chosen)
        path.write_text(store_config(self.dirs[name]) + "[server]\nlatency_budget_ms = 0\n"
                        f'[region]\nname = "{name}"\nnats_urls = [{urls}]\n'
                        f"timeout_ms = {timeout_ms}\nrouting_replicas = 3\n")
        return str(path)

    def start(self, name: str, nodes: list[int] | None = None):
        """Start a region's switch, connected to these NATS nodes (default all)."""
        self.switches[name] = start_switch(self.dirs[name], "--config",
                                           self.config(name, nodes=nodes))
        return self.switches[name]

    def stop(self, name: str) -> None:
        sw = self.switches.pop(name, None)
        if sw is not None:
            assert sw.stop() == 0

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for name in list(self.switches):
            self.stop(name)
        self.cluster.stop_all()


@contextlib.contextmanager
def two_regions(root, demo_dir, pg_server=None):
    """Both switches running on the split data sets (stopped, with NATS, on leaving); on
    PostgreSQL stores when a server is given."""
    r = Regions(root, demo_dir, pg_server)
    try:
        r.start("js")
        r.start("sh")
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def three_regions(root, demo_dir):
    """two_regions and a third switch, "zj", owning Zhejiang."""
    r = Regions(root, demo_dir, zhejiang=True)
    try:
        for name in ("js", "zj", "sh"):
            r.start(name)
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def regions(demo_dir, tmp_path_factory):
    with two_regions(tmp_path_factory.mktemp("regions"), demo_dir) as r:
        yield r


def matching_cards(st, province: int, functions: int) -> np.ndarray:
    """Indexes of a state's active cards of a province (by card number) with these functions
    and at least BALANCE_FEN."""
    prov = np.array([int(str(int(p))[3:5]) for p in st.cards["pan"]])
    ok = (prov == province) & (st.cards["status"] == CARD_ACTIVE)
    ok &= (st.cards["functions"] & functions) == functions
    ok &= st.accounts["balance_fen"][st.cards["account"]] >= BALANCE_FEN
    return np.flatnonzero(ok)


def card_of(data_dir, province: int, nth: int = 0,
            functions: int = FN_FINANCIAL) -> tuple[str, int]:
    """A Jiangsu (or other) card of a data set with these functions: its number and balance
    (fen), from the data set's own committed state."""
    st = loader.load(data_dir).state
    idx = int(matching_cards(st, province, functions)[nth])
    return (str(int(st.cards["pan"][idx])),
            int(st.accounts["balance_fen"][st.cards["account"][idx]]))


def balance_of(data_dir, pan: str) -> int:
    st = loader.load(data_dir).state
    (idx,) = np.flatnonzero(st.cards["pan"] == int(pan))
    return int(st.accounts["balance_fen"][st.cards["account"][idx]])


def holds(data_dir, pan: str) -> bool:
    return bool((loader.load(data_dir).state.cards["pan"] == int(pan)).any())


def journal(data_dir) -> list:
    recs, nos, _ = committed_journal(data_dir)
    return decode(recs, nos)


def pos(regions, province: int = HOME) -> IsoTerminal:
    from onecard.switch.terminals import read_terminals

    info = next(t for t in read_terminals(regions.dirs["sh"])
                if t.kind == TERM_POS and t.province == province)
    sw = regions.switches["sh"]
    sock, exchange = socket_exchange("127.0.0.1", sw.iso, 2)
    regions.sockets.append(sock)
    # STANs of this terminal's earlier connections stay in its ring: start past them
    t = IsoTerminal(info, exchange, stan=1000 * len(regions.sockets))
    assert t.signon()["39"] == "00"
    return t


def metrics(sw) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{sw.http}/metrics", timeout=10) as r:
        return r.read().decode()


def test_a_jiangsu_card_at_a_shanghai_pos_is_decided_once_by_jiangsu(regions):
    pan, opening_fen = card_of(regions.dirs["js"], JS)
    local_pan, _ = card_of(regions.dirs["sh"], HOME)
    t = pos(regions)
    stan = t.next_stan()
    first, local = t.send(t.purchase(pan, 1_234, stan=stan), t.purchase(local_pan, 99))
    assert (first["39"], local["39"]) == ("00", "00")
    (again,) = t.send(t.purchase(pan, 1_234, stan=stan))          # a retransmission
    assert (again["39"], again["37"], again["38"]) == (first["39"], first["37"], first["38"])
    text = metrics(regions.switches["sh"])
    assert 'onecard_forwarded_requests_total{origin="issuer",province="32"} 2.0' in text
    assert 'onecard_forward_latency_seconds_count{destination="js"}' in text
    assert balance(t, pan) == opening_fen - 1_234            # a forwarded balance inquiry
    regions.state["purchase"] = (pan, stan, first, 1_234, opening_fen)


def test_native_taps_of_both_regions_in_one_frame(regions):
    from onecard.switch.terminals import read_terminals

    info = next(t for t in read_terminals(regions.dirs["sh"])
                if t.kind == TERM_BUS_READER and t.province == HOME)
    sw = regions.switches["sh"]
    sock, exchange = socket_exchange("127.0.0.1", sw.native, 4)
    regions.sockets.append(sock)
    g = NativeTerminal(info, exchange)
    assert g.signon().rc == "00"
    js_pan, _ = card_of(regions.dirs["js"], JS, nth=1)
    sh_pan, _ = card_of(regions.dirs["sh"], HOME, nth=1)
    replies = g.send([g.tap(js_pan), g.tap(sh_pan), g.tap(js_pan)])
    assert [r.rc for r in replies] == ["00", "00", "00"]


def test_retransmission_after_both_switches_restarted_has_one_effect(regions):
    pan, stan, first, amount, _ = regions.state["purchase"]
    regions.stop("sh")
    regions.stop("js")
    regions.start("js")
    regions.start("sh")
    t = pos(regions)
    (again,) = t.send(t.purchase(pan, amount, stan=stan))
    assert (again["39"], again["37"]) == (first["39"], first["37"])


def test_issuer_down_is_91_and_local_cards_are_unaffected(regions):
    pan, _ = card_of(regions.dirs["js"], JS, nth=2)
    local_pan, _ = card_of(regions.dirs["sh"], HOME, nth=2)
    regions.stop("js")
    try:
        t = pos(regions)
        foreign, local = t.send(t.purchase(pan, 500), t.purchase(local_pan, 500))
        assert (foreign["39"], local["39"]) == ("91", "00")
        text = metrics(regions.switches["sh"])
        assert 'onecard_forwarded_requests_total{origin="unavailable",province="32"}' in text
    finally:
        regions.start("js")
    t = pos(regions)
    (back,) = t.send(t.purchase(pan, 500))
    assert back["39"] == "00"


def metric(sw, name: str) -> float:
    for line in metrics(sw).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_late_issuer_approval_is_reversed_by_the_acquirers_advice(regions):
    """The issuer stops (SIGSTOP) with a purchase on its way: the acquirer answers 91 at its
    timeout; the issuer, resumed, may approve and commit the stale request, and the reversal
    advice takes it back (or, first, makes the late original refused). The card ends as the
    terminal was told: nothing charged."""
    pan, _ = card_of(regions.dirs["js"], JS, nth=3)
    t = pos(regions)
    (probe,) = t.send(t.balance(pan))
    assert probe["39"] == "00", probe
    opening_fen = int(probe["54"][8:])
    applied = metric(regions.switches["js"], "onecard_advices_applied_total")
    js = regions.switches["js"].proc
    js.send_signal(signal.SIGSTOP)
    try:
        (r,) = t.send(t.purchase(pan, 4_321))
    finally:
        js.send_signal(signal.SIGCONT)
    assert r["39"] == "91"
    deadline = time.monotonic() + 30
    while (metric(regions.switches["js"], "onecard_advices_applied_total") < applied + 1
           and time.monotonic() < deadline):
        time.sleep(0.1)
    assert metric(regions.switches["sh"], "onecard_advices_published_total") >= 1
    assert metric(regions.switches["js"], "onecard_advices_applied_total") >= applied + 1
    assert balance(t, pan) == opening_fen
    regions.state["reversed"] = (pan, opening_fen, int(r["11"]))


def test_money_moved_once_at_the_issuer_and_nowhere_else(regions):
    """Stop both; read the committed journals: every approved forwarded purchase is one
    PURCHASE in Jiangsu's journal, and the card's balance moved by exactly that."""
    pan, _, first, amount, opening_fen = regions.state["purchase"]
    regions.stop("sh")
    regions.stop("js")
    js_records = journal(regions.dirs["js"])
    sh_records = journal(regions.dirs["sh"])
    rrn = int(first["37"])
    (rec,) = [r for r in js_records if r.no == rrn]
    assert (rec.kind_name, rec.amount_fen) == ("PURCHASE", amount)
    fwd = [r for r in sh_records if r.kind_name == "FORWARDED"
           and r.issuer_recorded and r.issuer_record_no == rrn]
    assert [r.repeated for r in fwd] == [0, 1, 1]         # sent, retransmitted, after restart
    assert balance_of(regions.dirs["js"], pan) == opening_fen - amount
    late_pan, late_opening, late_stan = regions.state["reversed"]
    assert balance_of(regions.dirs["js"], late_pan) == late_opening
    # the issuer journaled the advice as a reversal of that STAN: of the late approval, or
    # of nothing yet (and the late original then refused)
    late = [r for r in js_records if r.seq == late_stan and r.kind_name in ("PURCHASE",
                                                                              "REVERSAL")]
    kinds = [r.kind_name for r in late]
    assert kinds.count("REVERSAL") == 1, kinds
    assert not holds(regions.dirs["sh"], pan)              # Shanghai holds no Jiangsu card


def test_a_province_handed_over_is_routed_to_its_new_owner_without_a_restart(regions):
    """docs/regions.md "Handing a province over", the whole region moving: js stops (its
    journal is final), "js2" starts on a copy of its data set (the state, idempotency records
    included), and the table's next version names js2 for Jiangsu. sh, running throughout,
    applies it: a retransmission of a purchase js approved gets js's original answer from
    js2, and a new purchase is decided and journaled at js2."""
    import shutil

    pan, stan, first, amount, _ = regions.state["purchase"]
    regions.stop("js")
    shutil.copytree(regions.dirs["js"].parent, regions.root / "js2")
    regions.dirs["js2"] = regions.root / "js2" / "data"
    regions.start("js2")
    sh = regions.switches.get("sh") or regions.start("sh")     # running, or again
    version = metric(sh, "onecard_routing_table_version")
    assert cli.main(["region", "route", "--nats", ",".join(regions.cluster.urls),
                     "--set", f"{JS}=js2"]) == 0
    deadline = time.monotonic() + 30
    while metric(sh, "onecard_routing_table_version") <= version:
        assert time.monotonic() < deadline, "sh did not apply the new routing table"
        time.sleep(0.05)
    t = pos(regions)
    (again,) = t.send(t.purchase(pan, amount, stan=stan))
    assert (again["39"], again["37"], again["38"]) == (first["39"], first["37"], first["38"])
    opening = balance_of(regions.dirs["js2"], pan)
    (fresh,) = t.send(t.purchase(pan, 77))
    assert fresh["39"] == "00"
    regions.stop("js2")
    assert balance_of(regions.dirs["js2"], pan) == opening - 77     # decided at js2, once
    assert balance_of(regions.dirs["js"], pan) == opening           # js's data untouched


def test_a_switch_whose_nats_is_unreachable_does_not_start(demo_dir, tmp_path):
    import subprocess
    import sys

    from onecard.switch.cluster.procs import free_ports

    (port,) = free_ports(1)                         # nobody listens there
    data = tmp_path / "data"
    split.split_data_set(demo_dir, data, [JS])
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[region]\nname = "js"\nnats_urls = ["nats://127.0.0.1:{port}"]\n')
    out = subprocess.run([sys.executable, "-m", "onecard.switch.cli", "serve", "--data-dir",
                          str(data), "--config", str(cfg),
                          "--iso8583-port", "0", "--native-port", "0", "--http-port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "onecard: region js: NATS at nats://127.0.0.1:" in out.stderr
    assert "Traceback" not in out.stderr

"""The simulated population: terminals of every kind the switch serves, the cards they see,
and the random requests they make (retransmissions, pipelined buffers, buffers split across
two reads, bad MACs and offline uploads that repeat included)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onecard.core.engine import ISO8583, NATIVE
from onecard.core.state import (
    CARD_ACTIVE,
    TERM_BUS_READER,
    TERM_FERRY_READER,
    TERM_KIOSK,
    TERM_MEDICAL,
    TERM_METRO_GATE,
    TERM_POS,
    TERM_VENUE,
    TERM_VERIFIER,
)
from onecard.protocols import native
from onecard.switch.terminals import TerminalInfo

from .terminals import IsoSim, NativeSim, Request

RECENT_MAX = 8                 # answered requests a terminal may still retransmit (ring: 64)
CARDS_HOME = 48
CARDS_AWAY = 8


@dataclass
class Link:
    """A terminal and its connection: what it sent and has not been answered for yet."""
    sim: IsoSim | NativeSim
    proto: int
    idx: int
    outstanding: list[Request] = field(default_factory=list)
    recent: list[Request] = field(default_factory=list)
    split_rest: bytes = b""    # the second part of a buffer split across two reads
    signed_on: bool = False
    stale: bool = False        # the connection was lost: resend what is unanswered

    @property
    def tid(self) -> str:
        return self.sim.info.tid


def pick_terminals(infos: list[TerminalInfo]) -> list[TerminalInfo]:
    """A fixed cross-section: Shanghai POS of three kinds, gates at four stations, buses, a
    ferry, verifiers, venues, hospitals, a kiosk; and two Guangdong POS (cross-province)."""
    want = [(TERM_POS, 31, "supermarket", 3), (TERM_POS, 31, "elderly canteen", 2),
            (TERM_POS, 31, "pharmacy", 1), (TERM_POS, 44, None, 2),
            (TERM_METRO_GATE, 31, None, 4), (TERM_BUS_READER, 31, None, 2),
            (TERM_FERRY_READER, 31, None, 1), (TERM_VERIFIER, 31, "hotel", 1),
            (TERM_VERIFIER, 31, "government counter", 1), (TERM_VENUE, 31, "museum", 1),
            (TERM_VENUE, 31, "scenic spot", 1), (TERM_MEDICAL, 31, "hospital", 2),
            (TERM_KIOSK, 31, None, 1)]
    out = []
    for kind, province, place, n in want:
        found = [t for t in infos if t.kind == kind and t.province == province
                 and (place is None or t.place == place)]
        step = max(len(found) // n, 1)       # spread out: gates at different stations
        out.extend(found[::step][:n])
    return out


def pick_cards(state, provinces: np.ndarray, rng: random.Random) -> list[tuple[str, int]]:
    """Active cards, mostly Shanghai's (some nearly empty, so insufficient funds and offline
    taps into the red happen), a few from elsewhere."""
    c = state.cards[:state.n_cards]
    active = np.flatnonzero(c["status"] == CARD_ACTIVE)
    home = [int(i) for i in active if provinces[i] == 31]
    away = [int(i) for i in active if provinces[i] != 31]
    chosen = rng.sample(home, CARDS_HOME) + rng.sample(away, CARDS_AWAY)
    return [(str(int(c["pan"][i])), i) for i in chosen]


class Traffic:
    """Draws the next thing a terminal does. Each action returns (link, bytes, requests) to
    send, or None when it had nothing to do."""

    def __init__(self, links: list[Link], cards: list[tuple[str, int]],
                 rng: random.Random) -> None:
        self.links, self.cards, self.rng = links, cards, rng
        self.by_kind: dict[int, list[Link]] = {}
        for link in links:
            self.by_kind.setdefault(link.sim.info.kind, []).append(link)
        self.purchases: list[tuple[Link, str, int, str]] = []
        self.voids: list[tuple[Link, str, int, str]] = []
        self.bills: list[tuple[Link, str, int]] = []
        self.offline_seq = 100_000
        self.actions: list[Callable] = [
            self.purchase, self.purchase, self.purchase, self.pipelined, self.balance,
            self.undo, self.undo, self.settle, self.ride, self.ride, self.ride, self.metro,
            self.offline, self.verify, self.venue, self.medical, self.topup, self.deny_sync,
            self.heartbeat, self.bad_mac]

    def pan(self) -> str:
        return self.rng.choice(self.cards)[0]

    def idle(self, kind: int) -> Link | None:
        free = [t for t in self.by_kind.get(kind, ()) if not t.outstanding and t.signed_on]
        return self.rng.choice(free) if free else None

    def next(self, now_s: int) -> tuple[Link, bytes, list[Request]] | None:
        self.now_s = now_s
        return self.rng.choice(self.actions)()

    # ---- ISO 8583 ------------------------------------------------------------------------

    def _iso(self, link: Link, kind: str, stan: str, frame: bytes) -> tuple:
        req = Request(link.tid, int(stan), kind, frame)
        return link, frame, [req]

    def purchase(self):
        link = self.idle(TERM_POS)
        if link is None:
            return None
        pan, stan = self.pan(), link.sim.next_stan()
        amount = self.rng.choice([1, 99, 1500, self.rng.randrange(1, 80_000), 600_000])
        self.purchases.append((link, pan, amount, stan))
        return self._iso(link, "purchase", stan, link.sim.purchase(pan, amount, stan))

    def pipelined(self):
        """Two or three requests in one buffer (a batch through the core)."""
        link = self.idle(TERM_POS)
        if link is None:
            return None
        frames, reqs = [], []
        for _ in range(self.rng.randrange(2, 4)):
            pan, stan, amount = self.pan(), link.sim.next_stan(), self.rng.randrange(1, 9000)
            frame = link.sim.purchase(pan, amount, stan)
            self.purchases.append((link, pan, amount, stan))
            frames.append(frame)
            reqs.append(Request(link.tid, int(stan), "purchase", frame))
        return link, b"".join(frames), reqs

    def balance(self):
        link = self.idle(TERM_POS)
        if link is None:
            return None
        stan = link.sim.next_stan()
        return self._iso(link, "balance", stan, link.sim.balance(self.pan(), stan))

    def undo(self):
        if not self.purchases:
            return None
        link, pan, amount, stan = self.rng.choice(self.purchases[-40:])
        if link.outstanding or not link.signed_on:
            return None
        what = self.rng.randrange(4)
        if what == 0:
            return self._iso(link, "reversal", stan, link.sim.reversal(pan, amount, stan))
        if what == 1:
            new = link.sim.next_stan()
            self.voids.append((link, pan, amount, new))
            return self._iso(link, "void", new, link.sim.void(pan, amount, stan, new))
        if what == 2 and self.voids:
            link, pan, amount, void_stan = self.rng.choice(self.voids[-20:])
            if link.outstanding or not link.signed_on:
                return None
            return self._iso(link, "void reversal", void_stan,
                             link.sim.void_reversal(pan, amount, void_stan))
        new = link.sim.next_stan()                   # a reversal of a STAN never approved
        return self._iso(link, "reversal", new, link.sim.reversal(pan, amount, new))

    def settle(self):
        link = self.idle(TERM_POS)
        if link is None:
            return None
        stan = link.sim.next_stan()
        return self._iso(link, "settlement", stan,
                         link.sim.settlement(self.rng.randrange(10**6), self.rng.randrange(50),
                                             stan))

    # ---- native --------------------------------------------------------------------------

    def _native(self, link: Link, kind: str, messages: list) -> tuple:
        assert isinstance(link.sim, NativeSim)  # a native terminal's link
        frame = link.sim.frame(messages)
        return link, frame, [Request(link.tid, m.seq, kind, frame) for m in messages]

    def ride(self):
        link = self.idle(self.rng.choice([TERM_BUS_READER, TERM_FERRY_READER]))
        if link is None:
            return None
        return self._native(link, "tap",
                            [native.Tap(link.sim.next_seq(), self.pan(), 0, native.TAP_IN, 0)])

    def metro(self):
        link = self.idle(TERM_METRO_GATE)
        if link is None:
            return None
        tap = native.Tap(link.sim.next_seq(), self.pan(), link.sim.info.station_id or 0,
                         self.rng.randrange(2), 0)
        return self._native(link, "tap", [tap])

    def offline(self):
        """An upload of offline taps; sequence numbers may repeat (idempotent) or skip."""
        link = self.idle(self.rng.choice([TERM_BUS_READER, TERM_METRO_GATE]))
        if link is None:
            return None
        taps = []
        for _ in range(self.rng.randrange(1, 5)):
            self.offline_seq += self.rng.randrange(0, 3)
            when = self.now_s - self.rng.randrange(60, 7200)
            taps.append(native.OfflineTap(self.offline_seq, self.pan(),
                                          link.sim.info.station_id or 0, native.TAP_IN, when))
        return self._native(link, "offline tap", taps)

    def verify(self):
        link = self.idle(TERM_VERIFIER)
        if link is None:
            return None
        return self._native(link, "verify", [native.Verify(link.sim.next_seq(), self.pan())])

    def venue(self):
        link = self.idle(TERM_VENUE)
        if link is None:
            return None
        return self._native(link, "venue", [native.VenueEntry(link.sim.next_seq(), self.pan())])

    def medical(self):
        link = self.idle(TERM_MEDICAL)
        if link is None:
            return None
        if self.bills and self.rng.random() < 0.3:
            doctor, pan, seq = self.bills.pop(self.rng.randrange(len(self.bills)))
            if doctor is link:
                return self._native(link, "medical refund",
                                    [native.MedicalRefund(link.sim.next_seq(), pan, seq)])
        seq, pan = link.sim.next_seq(), self.pan()
        self.bills.append((link, pan, seq))
        return self._native(link, "medical",
                            [native.Medical(seq, pan, self.rng.randrange(1, 400_000))])

    def topup(self):
        link = self.idle(TERM_KIOSK)
        if link is None:
            return None
        return self._native(link, "topup", [native.TopUp(link.sim.next_seq(), self.pan(),
                                                         self.rng.randrange(1, 120_000))])

    def deny_sync(self):
        link = self.idle(TERM_METRO_GATE)
        if link is None:
            return None
        return self._native(link, "deny sync", [native.DenyListSync(link.sim.next_seq(), 0)])

    def heartbeat(self):
        link = self.idle(TERM_BUS_READER)
        if link is None:
            return None
        return self._native(link, "heartbeat", [native.Heartbeat(link.sim.next_seq())])

    def bad_mac(self):
        """A request whose MAC is wrong: answered A0, nothing else happens."""
        link = self.idle(TERM_METRO_GATE)
        if link is None:
            return None
        tap = native.Tap(link.sim.next_seq(), self.pan(), link.sim.info.station_id or 0, 0, 0)
        frame = link.sim.frame([tap], key=bytes(16))
        return link, frame, [Request(link.tid, tap.seq, "bad mac", frame)]

    def signon(self, link: Link):
        if isinstance(link.sim, IsoSim):
            stan = link.sim.next_stan()
            return self._iso(link, "signon", stan, link.sim.signon(stan))
        seq = link.sim.next_seq()
        frame = link.sim.signon_frame(seq)
        return link, frame, [Request(link.tid, seq, "signon", frame)]


def make_links(infos: list[TerminalInfo]) -> list[Link]:
    out = []
    for info in infos:
        if info.protocol == ISO8583:
            out.append(Link(IsoSim(info), ISO8583, info.idx))
        else:
            out.append(Link(NativeSim(info), NATIVE, info.idx))
    return out

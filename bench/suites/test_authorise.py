"""Authorisation of a batch of decoded purchases: the compiled rules over the state arrays
against the same rules written the obvious way in Python over dicts."""

import itertools

import numpy as np

from onecard.core.authorise import TXN_DTYPE
from onecard.core.decide import decide_many
from onecard.core.state import FN_FINANCIAL, KIND_PURCHASE, PROTO_ISO8583
from onecard.switch.terminals import usable_cards

from .support import record

SEQ = itertools.count(1)


def purchases(engine, terminal_idx: int, pans: np.ndarray, n: int) -> np.ndarray:
    txns = np.zeros(n, dtype=TXN_DTYPE)
    txns["pan"] = pans[np.arange(n) % len(pans)]
    txns["amount_fen"] = 100 + np.arange(n) % 900
    txns["terminal"] = terminal_idx
    txns["seq"] = [next(SEQ) % 999_999 + 1 for _ in range(n)]   # fresh STANs every round
    txns["currency"] = 156
    txns["kind"] = KIND_PURCHASE
    txns["proto"] = PROTO_ISO8583
    return txns


def usable(data_dir) -> np.ndarray:
    return usable_cards(data_dir, province=44, functions=FN_FINANCIAL)


def test_authorise_onecard(benchmark, iso_source, data_dir, pos, n):
    engine = iso_source.engine
    t = engine.state.terminal_index(pos.tid)
    pans = usable(data_dir)

    def run(txns):
        rcs = decide_many(engine.authoriser, txns)
        engine.journal.take()
        return rcs

    rcs = benchmark.pedantic(run, setup=lambda: ((purchases(engine, t, pans, n),), {}),
                             rounds=20 if not benchmark.disabled else 1)
    assert (rcs == 0).mean() > 0.9
    record(benchmark, "authorise a batch of purchases", "onecard", n)


class PyAuthoriser:
    """The rules of core/authorise.pyx for purchases, over dicts."""

    def __init__(self, state, terminal_idx: int) -> None:
        cards, accounts = state.cards, state.accounts
        self.cards = {int(c["pan"]): {"status": int(c["status"]), "expiry": int(c["expiry_yymm"]),
                                      "functions": int(c["functions"]),
                                      "province": int(state.regions["province"][c["region"]]),
                                      "account": int(c["account"])} for c in cards}
        self.accounts = {i: {"balance": int(a["balance_fen"]), "spent": 0}
                         for i, a in enumerate(accounts)}
        self.accept = {int(p): set(range(64)) for p in range(64)}
        self.terminal_province = int(state.regions["province"][
            state.terminals["region"][terminal_idx]])
        self.ring: dict[tuple[int, int], tuple] = {}
        self.journal: list[tuple] = []

    def purchase(self, terminal: int, seq: int, pan: int, amount: int) -> str:
        seen = self.ring.get((terminal, seq))
        if seen is not None and seen[0] == pan and seen[1] == amount:
            return seen[2]
        card = self.cards.get(pan)
        if card is None:
            rc = "14"
        elif card["status"] != 0:
            rc = {1: "41", 2: "05"}.get(card["status"], "14")
        elif card["expiry"] < 2611:
            rc = "33"
        elif not card["functions"] & 1:
            rc = "57"
        elif card["province"] not in self.accept[self.terminal_province]:
            rc = "62"
        else:
            account = self.accounts[card["account"]]
            if account["spent"] + amount > 500_000:
                rc = "61"
            elif account["balance"] < amount:
                rc = "51"
            else:
                rc = "00"
                account["balance"] -= amount
                account["spent"] += amount
        self.ring[terminal, seq] = (pan, amount, rc)
        self.journal.append((terminal, seq, pan, amount, rc))
        return rc


def test_authorise_python(benchmark, iso_source, data_dir, pos, n):
    engine = iso_source.engine
    t = engine.state.terminal_index(pos.tid)
    pans = usable(data_dir)
    py = PyAuthoriser(engine.state, t)

    def run(txns):
        return [py.purchase(t, s, p, a) for s, p, a in txns]

    def setup():
        batch = purchases(engine, t, pans, n)
        return ((list(zip(batch["seq"].tolist(), batch["pan"].tolist(),
                          batch["amount_fen"].tolist(), strict=True)),), {})

    rcs = benchmark.pedantic(run, setup=setup, rounds=20 if not benchmark.disabled else 1)
    assert rcs.count("00") > 0.9 * n
    record(benchmark, "authorise a batch of purchases", "peer", n)

"""The operator: the admin API's changes, through the same core operations the admin API
calls (core/operations.pyx), answered only once their records are durable."""

from __future__ import annotations

import random

import numpy as np

from onecard.core import operations
from onecard.core.state import CARD_ACTIVE, CARD_FROZEN, CARD_LOST, CARD_REPLACED

OPERATOR = 2
NEW_PAN_BASE = 6_211_119_900_000_000_000


class Operator:
    def __init__(self, cards: list[tuple[str, int]], rng: random.Random) -> None:
        self.cards, self.rng = cards, rng
        self.issued = 0
        self.period = 202611

    def act(self, engine) -> tuple[str, int] | None:
        """One change; (what, record number to wait for) or None when nothing was written."""
        a, rng = engine.authoriser, self.rng
        engine.tick()                        # the decision clock to now (admin.py does this)
        pan, idx = rng.choice(self.cards)
        what = rng.randrange(10)
        if idx >= a.state.n_cards or int(a.state.cards["pan"][idx]) != int(pan):
            return None          # a replacement lost in a crash: never acknowledged, retried

        if what < 3:
            code, no = operations.credit(a, int(pan), rng.randrange(1, 50_000),
                                         operator=OPERATOR)
            return ("credit", no) if code == "00" else None
        if what < 5:
            pans = np.array([int(rng.choice(self.cards)[0]) for _ in range(3)], dtype=np.uint64)
            self.period += 1                 # idempotency per period is the admin's: new ones
            rcs, nos = operations.disburse(a, 2, self.period, pans,
                                           np.full(3, 9_000, dtype=np.int64), OPERATOR)
            done = [int(n) for rc, n in zip(rcs, nos, strict=True) if rc == 0]
            return ("disbursement", max(done)) if done else None
        if what < 9:
            status = rng.choice([CARD_LOST, CARD_FROZEN, CARD_ACTIVE, CARD_ACTIVE])
            no = operations.card_change(a, idx, status=status, operator=OPERATOR)
            return "card status", no
        # a replacement: a new card number for the same account, the old one refused
        c = a.state.cards[idx]
        self.issued += 1
        new_pan = NEW_PAN_BASE + self.issued
        card, no = operations.card_new(a, new_pan, int(c["account"]), region=int(c["region"]),
                                       expiry_yymm=int(c["expiry_yymm"]),
                                       functions=int(c["functions"]), operator=OPERATOR)
        operations.card_change(a, idx, status=CARD_REPLACED, operator=OPERATOR)
        slot = self.cards.index((pan, idx))
        self.cards[slot] = (str(new_pan), card)
        return "card replaced", no + 1

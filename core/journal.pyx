# cython: language_level=3
"""Pending journal records between authorisation and group commit.

Every state change the core makes is first written as an 80-byte record carrying the
after-image of what it changes (balance after, daily totals after, open trip after, working
key, card record), then applied to the state from that record (``ledger.apply``). Replaying
committed records in order therefore rebuilds exactly the committed state, whatever
checkpoint it starts from. (Terminal batch totals for settlement are the one running sum:
they are applied as deltas, which replay from a checkpoint also reproduces exactly.)

Kind-specific fields (a, b, d are 64-bit, c, e 32-bit):
  PURCHASE   amount = charged (fen); a = daily_day << 32 | daily spent after;
             b = currency << 48 | amount asked (its minor units); c = app spent today after
  VOID       as PURCHASE, amount credited back; e = the purchase's STAN (day: a >> 32)
  REVERSAL   amount credited back; a, c as PURCHASE; b = original amount asked, as PURCHASE
  VOID_REVERSAL  amount debited again; a, b, c as REVERSAL; e = the purchase's STAN
  TAP, OFFLINE_TAP  amount = fare; a = open-trip station << 32 | trip time after;
             b = station id << 8 | direction; c = last ride time after; e = last ride region
  VERIFY     c = age band | scope << 8
  TOPUP      amount = cash paid in at a kiosk (fen); b = amount asked
  SIGNON     a, b = working MAC key encrypted under the terminal master key; c = algorithm
  SETTLE     amount = debit total, b = credit total, c = debit count, e = credit count,
             a = next batch number, d = 1 balanced / 2 not
  MEDICAL    amount = cash share; a = medical account after << 32 | personal share;
             b = pool paid this year after << 32 | deductible used after; c = pool share;
             d = deductible part << 32 | bill; e = year
  MEDICAL_REFUND  as MEDICAL with the shares credited back; f = the settlement's sequence
  VENUE      amount = fee; c = entitlement (rule + 1, 0 none); d = base price
  CREDIT     amount credited; a = programme << 32 | period (0 for a top-up); b = operator
  CARD_ADMIN a = card number; b = region | expiry << 16 | status << 32 | functions << 40;
             c = operator; e = what was done (see ledger.pyx)
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport free, realloc
from libc.string cimport memset

import numpy as np

JREC_DTYPE = np.dtype({
    "names": ["ts_us", "amount_fen", "balance_fen", "a", "b", "d", "terminal", "seq", "card",
              "account", "c", "e", "kind", "app", "rc", "flags", "f"],
    "formats": ["<i8", "<i8", "<i8", "<u8", "<u8", "<u8", "<u4", "<u4", "<u4", "<u4", "<u4",
                "<u4", "u1", "u1", "u1", "u1", "<u4"],
    "offsets": [0, 8, 16, 24, 32, 40, 48, 52, 56, 60, 64, 68, 72, 73, 74, 75, 76],
    "itemsize": JREC_BYTES,
})
assert sizeof(JRec) == JREC_BYTES
NONE = NONE32


cdef class Journal:
    """Records appended by the authoriser and not yet taken by the group committer."""

    def __cinit__(self, uint64_t next_no=0, size_t max_pending=1 << 20):
        self.recs = NULL
        self.n = 0
        self.cap = 0
        self.next_no = next_no
        self.max_pending = max_pending

    def __dealloc__(self):
        free(self.recs)

    cdef JRec* append(self) noexcept nogil:
        """A zeroed record at the end, numbered next_no (then incremented); NULL if out of memory."""
        cdef size_t cap
        cdef JRec* grown
        if self.n == self.cap:
            cap = self.cap * 2 if self.cap else 4096
            grown = <JRec*>realloc(self.recs, cap * sizeof(JRec))
            if grown == NULL:
                return NULL
            self.recs = grown
            self.cap = cap
        memset(&self.recs[self.n], 0, sizeof(JRec))
        self.n += 1
        self.next_no += 1
        return &self.recs[self.n - 1]

    @property
    def pending(self) -> int:
        """Records appended and not yet taken."""
        return self.n

    def take(self) -> tuple[int, bytes]:
        """Hand over the pending records: (number of the first, packed bytes)."""
        first = self.next_no - self.n
        data = PyBytes_FromStringAndSize(<char*>self.recs, self.n * sizeof(JRec))
        self.n = 0
        if self.cap > (1 << 16):
            # Give memory back after a burst instead of keeping the high-water mark.
            free(self.recs)
            self.recs = NULL
            self.cap = 0
        return first, data


def unpack(data: bytes):
    """Packed records as a numpy structured array (read-only view)."""
    return np.frombuffer(data, dtype=JREC_DTYPE)

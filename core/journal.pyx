# cython: language_level=3
"""Pending journal records between authorisation and group commit.

Every state change the core makes is first written as a 64-byte record carrying the after-image
of what it changes (balance after, daily total after, open trip after, working key), then
applied to the state arrays from that record (``State.apply``). Replaying committed records
in order therefore rebuilds exactly the committed state, whatever snapshot it starts from.

Kind-specific fields:
  PURCHASE   a = daily_day << 32 | daily_spent_fen after;   b = processing code
  REVERSAL   a = daily after (as PURCHASE);  b = original amount;  amount_fen = credited back
  TAP        a = open-trip station << 32 | trip time after;  b = station id << 8 | direction
  VERIFY     c = age band
  SIGNON     a, b = working MAC key encrypted under the terminal master key;  c = algorithm
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport free, realloc
from libc.string cimport memset

import numpy as np

JREC_DTYPE = np.dtype({
    "names": ["ts_us", "amount_fen", "balance_fen", "a", "b", "terminal", "seq", "card",
              "account", "kind", "proto", "rc", "flags", "c"],
    "formats": ["<i8", "<i8", "<i8", "<u8", "<u8", "<u4", "<u4", "<u4", "<u4", "u1", "u1", "u1",
                "u1", "<u4"],
    "offsets": [0, 8, 16, 24, 32, 40, 44, 48, 52, 56, 57, 58, 59, 60],
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

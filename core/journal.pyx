# cython: language_level=3
"""Pending journal records between authorisation and group commit.

Every state change the core makes is first written as an 80-byte record carrying the
after-image of what it changes (balance after, daily totals after, open trip after, working
key, card record), then applied to the state from that record (``ledger.apply``). Replaying
committed records in order therefore rebuilds exactly the committed state, whatever
checkpoint it starts from. (Terminal batch totals for settlement are the one running sum:
they are applied as deltas, which replay from a checkpoint also reproduces exactly.)

The fields of each record kind are declared once, in ``protocols/journal.py``: the structs of
``core/records.pxd`` are generated from it, and this module checks at import that the C
compiler laid them out where the table (and so every reader) says.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t
from libc.stdlib cimport abort, free, realloc
from libc.string cimport memcpy, memset

from onecard.core import records as _records
from onecard.core import state as _state
from onecard.protocols import journal as _table
from onecard.protocols.journal_codec import RECORD_DTYPE, unpack

NONE = <uint32_t>NONE32

cdef enum:
    KEPT_CAPACITY_MAX = 65536         # records' room kept between takes; more is given back
FORMAT = JOURNAL_FORMAT
__all__ = ["FORMAT", "NONE", "RECORD_DTYPE", "Journal", "unpack"]


def _check_layout() -> None:
    """The compiled structs, the state's enums and the table agree, or nothing starts."""
    assert _records.RECORD_BYTES == JREC_BYTES == _table.RECORD_BYTES == sizeof(JRec)
    assert JOURNAL_FORMAT == _table.FORMAT and <uint32_t>NONE32 == _table.NONE
    for layout in _table.LAYOUTS:
        want = {f.name: (offset, _table.TYPES[f.type][0])
                for f, offset in _table.layout_fields(layout)}
        got = _records.LAYOUT[layout]
        assert got == want, f"journal layout {layout}: compiled {got}, table {want}"
    for kind in _table.KINDS:
        assert getattr(_state, f"KIND_{kind.name}") == kind.value, kind
    assert {k.value for k in _table.KINDS} | {_state.N_KINDS} == {int(k) for k in _state.Kind}


_check_layout()


cdef class Journal:
    """Records appended by the authoriser and not yet taken by the group committer."""

    def __cinit__(self, uint64_t next_no=0):
        self.recs = NULL
        self.n = 0
        self.cap = 0
        self.next_no = next_no

    def __dealloc__(self):
        free(self.recs)

    cdef JRec* append(self) noexcept nogil:
        """A zeroed record at the end, numbered next_no (then incremented); NULL if out of
        memory."""
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

    cdef void retract(self, JRec* last) noexcept nogil:
        """Take back the record just appended (its effect could not be applied): its number
        goes to the next record, so the journal never holds a record the state lacks."""
        if self.n == 0 or last != &self.recs[self.n - 1]:
            abort()                   # a caller bug: going on could journal an unapplied record
        self.n -= 1
        self.next_no -= 1

    def extend_for_test(self, const unsigned char[::1] data) -> None:
        """Append packed records as they are (tests of the committer's rows)."""
        cdef size_t i, count = data.shape[0] // sizeof(JRec)
        cdef JRec* r
        assert data.shape[0] == count * sizeof(JRec), "whole records only"
        for i in range(count):
            r = self.append()
            if r == NULL:
                raise MemoryError("journal")
            memcpy(r, &data[i * sizeof(JRec)], sizeof(JRec))

    @property
    def pending(self) -> int:
        """Records appended and not yet taken."""
        return self.n

    def take(self) -> tuple[int, bytes]:
        """Hand over the pending records: (number of the first, packed bytes)."""
        first = self.next_no - self.n
        data = PyBytes_FromStringAndSize(<char*>self.recs, self.n * sizeof(JRec))
        self.n = 0
        if self.cap > KEPT_CAPACITY_MAX:
            # Give memory back after a burst instead of keeping the high-water mark.
            free(self.recs)
            self.recs = NULL
            self.cap = 0
        return first, data

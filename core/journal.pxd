# Journal records: fixed 80-byte after-images, the unit of durability and of recovery. Their
# fields are declared in protocols/journal.py; core/records.pxd is generated from it.
from libc.stdint cimport uint64_t

from onecard.core.records cimport *

cdef class Journal:
    cdef JRec* recs
    cdef size_t n
    cdef size_t cap
    cdef readonly uint64_t next_no      # number the next appended record gets
    cdef JRec* append(self) noexcept nogil
    cdef void retract(self, JRec* last) noexcept nogil

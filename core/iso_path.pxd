from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.crypto cimport MacJob
from onecard.core.forward cimport Router
from onecard.core.isocodec cimport HDR_BYTES, IsoMsg
from onecard.core.metrics cimport CoreMetrics
from onecard.core.outbuf cimport OutBuf
from onecard.core.state cimport State

cdef struct Pending:
    # A request between prepare() and finish(), with what its reply needs from the group.
    IsoMsg m
    const uint8_t* msg
    uint32_t length
    int dec                      # iso_decode's result
    int missing                  # first mandatory field missing, 0 when none
    uint8_t malformed            # missing names a field present but malformed (0320)
    uint8_t kind
    uint8_t rc                   # RC_00, or what the terminal checks answered
    uint8_t verify               # its MAC is checked (computed into mac by the group)
    uint32_t proc_code
    uint32_t job                 # its MAC's position in the group's jobs
    int64_t term_idx
    uint64_t pan_hint            # field 2 as peeked for prefetching (0: none)
    uint8_t hdr[HDR_BYTES]
    uint8_t mac[8]


cdef class IsoPath:
    cdef Authoriser auth
    cdef State st
    cdef CoreMetrics mx
    cdef Router router
    cdef uint32_t frame_bytes_max
    cdef size_t run(self, const uint8_t* p, size_t n, OutBuf* out, uint32_t batch,
                    uint32_t* messages, int* close) noexcept nogil
    cdef bint shedding                 # refuse(): only retransmissions are answered
    cdef size_t refuse(self, const uint8_t* p, size_t n, OutBuf* out, uint8_t rc,
                       bint repeats, uint32_t batch, uint32_t* frames, uint32_t* answered,
                       int* close) noexcept nogil
    cdef bint repeated(self, IsoMsg* m, const uint8_t* msg) noexcept nogil
    cdef void answer_format_error(self, IsoMsg* m, int rc, const uint8_t* hdr, OutBuf* out,
                                  uint32_t batch) noexcept nogil
    cdef void prepare(self, const uint8_t* msg, uint32_t length, Pending* pd) noexcept nogil
    cdef int finish(self, Pending* pd, bint mac_ok, OutBuf* out, uint32_t batch,
                    MacJob* reply_mac) noexcept nogil
    cdef void encode_reply(self, Pending* pd, Txn* t, Res* r, MacJob* later,
                           OutBuf* out) noexcept nogil

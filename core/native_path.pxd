from libc.stdint cimport int64_t, uint8_t, uint32_t

from onecard.core.authorise cimport Authoriser, Txn
from onecard.core.crypto cimport MacJob, MacKey
from onecard.core.forward cimport Router
from onecard.core.mpack cimport MpReader
from onecard.core.metrics cimport CoreMetrics
from onecard.core.outbuf cimport OutBuf
from onecard.core.state cimport State

cdef struct Frame:               # where a reply frame's parts are, as offsets into out
    size_t start
    size_t body_header
    size_t body
    uint32_t count

cdef struct Head:                # a request frame's header, read before its group's MACs
    uint32_t length
    const uint8_t* tid
    uint32_t tid_len
    const uint8_t* body_p
    uint32_t body_len
    const uint8_t* mac_p
    uint32_t mac_len
    uint32_t n_msgs
    int64_t term_idx
    const char* problem          # answered with one ErrorReply when set
    uint8_t rc
    bint lone_signon
    bint verify                  # MAC checked with the group's (computed into mac)
    uint32_t job
    uint8_t mac[8]

cdef class NativePath:
    cdef Authoriser auth
    cdef State st
    cdef CoreMetrics mx
    cdef Router router
    cdef uint32_t frame_bytes_max
    cdef uint32_t batch_max
    cdef public bint authenticated   # a frame since the flag was cleared had a valid MAC
    cdef bint shedding               # refuse(): only retransmissions are answered
    cdef size_t refuse(self, const uint8_t* p, size_t n, OutBuf* out, uint8_t rc,
                       const char* text, bint repeats, uint32_t batch, uint32_t* requests,
                       uint32_t* answered, int* close) noexcept nogil
    cdef bint repeated(self, const uint8_t* tid, MpReader body, uint32_t n_msgs) noexcept nogil
    cdef void refuse_messages(self, MpReader* body, uint32_t n_msgs, OutBuf* out, Frame* f,
                              uint8_t rc, const char* text) noexcept nogil
    cdef size_t run(self, const uint8_t* p, size_t n, OutBuf* out, uint32_t batch,
                    uint32_t* messages, int* close) noexcept nogil
    cdef void begin_reply(self, OutBuf* out, Frame* f, const uint8_t* tid,
                          uint32_t tid_len) noexcept nogil
    cdef void end_reply(self, OutBuf* out, Frame* f, MacKey* key, MacJob* later) noexcept nogil
    cdef void append_error(self, OutBuf* out, Frame* f, int64_t seq, uint8_t rc,
                           const char* text) noexcept nogil
    cdef void read_head(self, const uint8_t* p, uint32_t length, Head* h) noexcept nogil
    cdef int answer_frame(self, Head* h, OutBuf* out, uint32_t batch, uint32_t* messages,
                          MacJob* reply_mac) noexcept nogil
    cdef int answer_message(self, MpReader* body, uint32_t term_idx, uint32_t n_msgs, OutBuf* out,
                            Frame* f, uint32_t batch) noexcept nogil
    cdef bint held(self, Head* h) noexcept nogil
    cdef bint scan_frame(self, Head* h, int mode) noexcept nogil
    cdef int answer_broken(self, OutBuf* out, Frame* f, uint32_t batch) noexcept nogil
    cdef int answer_deny_sync(self, Txn* t, OutBuf* out, Frame* f) noexcept nogil

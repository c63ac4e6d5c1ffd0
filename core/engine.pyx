# cython: language_level=3
"""The core's Python face: one :class:`Engine` per switch process.

``Engine.process(proto, buffer)`` is the only call the server makes per received buffer: it
splits the buffer into frames, decodes, authorises and encodes every reply, appends journal
records, counts metrics, and returns how much of the buffer it consumed and the reply bytes.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from onecard.core.authorise cimport Authoriser
from onecard.core.codes cimport RC_96
from onecard.core.forward cimport MODE_CONSUME, Router
from onecard.core.iso_path cimport IsoPath
from onecard.core.journal cimport Journal
from onecard.core.metrics cimport CoreMetrics
from onecard.core.native_path cimport NativePath
from onecard.core.outbuf cimport ob_free
from onecard.core.state cimport PROTO_ISO8583, PROTO_NATIVE, State
from onecard.core.wire cimport realtime_us

import numpy as np

ISO8583 = PROTO_ISO8583
NATIVE = PROTO_NATIVE
# Why a buffer was refused (Engine.refuse): the index into Engine.shed's second axis.
REFUSE_OVERLOAD = 0
REFUSE_JOURNAL = 1
REFUSE_REASONS = ("overload", "journal_unwritable")
cdef const char* REFUSE_TEXT[2]
REFUSE_TEXT[0] = b"switch overloaded: retry later"
REFUSE_TEXT[1] = b"journal not writable: retry later"


cdef class Engine:
    def __init__(self, State state, *, uint64_t next_record_no=0,
                 int64_t daily_limit_fen=500_000, int64_t amount_fen_max=10_000_000,
                 uint32_t iso_frame_bytes_max=8192, uint32_t native_frame_bytes_max=1 << 20,
                 uint32_t native_batch_max=10_000, fx_rates=None):
        self.state = state
        self.journal = Journal(next_record_no)
        self.authoriser = Authoriser(state, self.journal, daily_limit_fen=daily_limit_fen,
                                     amount_fen_max=amount_fen_max, fx_rates=fx_rates)
        self.metrics = CoreMetrics()
        self.router = Router(self.authoriser)
        self.iso = IsoPath(self.authoriser, self.metrics, self.router, iso_frame_bytes_max)
        self.native = NativePath(self.authoriser, self.metrics, self.router,
                                 native_frame_bytes_max, native_batch_max)
        self.clock_offset_us = 0
        self.clock_us = 0
        self.shed = np.zeros((2, 2), dtype=np.uint64)   # [protocol, reason]
        self.shed_p = <uint64_t*><size_t>self.shed.ctypes.data

    def __dealloc__(self):
        ob_free(&self.out)

    def tick(self) -> None:
        """Bring the decision clock to now (before an operator's change between batches)."""
        self.authoriser.begin(self.now_us())

    cdef int64_t now_us(self) noexcept nogil:
        # The simulator drives the clock itself so that a seed replays byte for byte.
        if self.clock_us:
            return self.clock_us
        return realtime_us() + self.clock_offset_us

    def process(self, int proto, data) -> tuple:
        """Handle every complete frame in ``data``.

        Returns ``(consumed, replies, batch, close)``: bytes of ``data`` used (the caller keeps
        the rest for the next call), the reply bytes to write once durable, the batch id to
        report to ``metrics.written`` after writing (0 when there were no messages), and
        whether the stream cannot be framed and must be closed after the replies.

        With forwarding configured, ``consumed`` may stop before a request for another
        region's card: ``router.take()`` has what to send, ``router.install()`` takes the
        answers, then the caller runs the rest of the buffer again and ``router.clear()``s
        them (switch/region/link.py).
        """
        cdef Py_buffer view
        cdef uint32_t batch
        cdef int close = 0
        cdef size_t consumed
        if proto != PROTO_ISO8583 and proto != PROTO_NATIVE:
            raise ValueError(f"unknown protocol {proto}")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            replies = self.feed(proto, <const uint8_t*>view.buf, view.len, &consumed, &batch,
                                &close)
        finally:
            PyBuffer_Release(&view)
        return consumed, replies, batch, bool(close)

    cdef bytes feed(self, int proto, const uint8_t* data, size_t n, size_t* consumed,
                    uint32_t* batch, int* close):
        """What :meth:`process` does, on ``n`` bytes at ``data`` (``proto`` checked by the
        caller): sets ``consumed``, ``batch`` (0 when there were no messages) and ``close``;
        returns the reply bytes."""
        cdef uint32_t messages = 0
        cdef uint32_t b
        self.authoriser.begin(self.now_us())
        b = self.metrics.begin_batch(<uint8_t>proto)
        self.out.len = 0
        close[0] = 0
        self.router.mode = MODE_CONSUME      # a run that stopped left it collecting
        if proto == PROTO_ISO8583:
            consumed[0] = self.iso.run(data, n, &self.out, b, &messages, close)
        else:
            self.native.authenticated = 0
            consumed[0] = self.native.run(data, n, &self.out, b, &messages, close)
        self.metrics.end_batch(b, messages)
        batch[0] = b if messages else 0
        if self.out.len:
            return PyBytes_FromStringAndSize(<char*>self.out.data, self.out.len)
        return b""

    def serve_forwarded(self, data) -> tuple:
        """Decide a batch another region forwarded (protocols.forward REQUEST records): the
        ANSWER records and the journal number every record of it is below (the server
        answers once that is durable)."""
        self.authoriser.begin(self.now_us())
        return self.router.serve(data)

    @property
    def authenticated(self) -> bool:
        """Whether the last native ``process`` call saw a frame with a valid MAC (a signed-on
        terminal's, or a sign-on under its master key): the server lifts a connection's
        small first-frame limit on it."""
        return bool(self.native.authenticated)

    def refuse(self, int proto, data, int reason) -> tuple:
        """Answer every request in ``data`` with ``96`` (ISO 8583) or an ErrorReply ``96``
        with its seq (native) and change nothing: no journal record, no ring slot, no balance.
        For load shedding and a journal that cannot be written; ``reason`` is REFUSE_OVERLOAD
        or REFUSE_JOURNAL. One call per buffer, no Python object per frame.

        While shedding (REFUSE_OVERLOAD) a retransmission still gets its original answer: a
        frame whose STAN or seq its terminal's ring or horizon holds goes through the normal
        path (MAC, then the duplicate check), and a new request in it is answered 96. Nothing
        is ever decided, forwarded or journaled here.

        Returns ``(consumed, replies, batch, close)`` as :meth:`process` does, with batch -1
        when every request was refused (counted in :attr:`shed`, not in the latency
        histograms): the replies of a batch that answered retransmissions wait, as any
        answer does, for the records before them to be durable.
        """
        cdef Py_buffer view
        cdef uint32_t requests = 0, answered = 0, batch
        cdef int close = 0
        cdef size_t consumed
        if proto != PROTO_ISO8583 and proto != PROTO_NATIVE:
            raise ValueError(f"unknown protocol {proto}")
        if reason != REFUSE_OVERLOAD and reason != REFUSE_JOURNAL:
            raise ValueError(f"unknown refusal reason {reason}")
        cdef bint repeats = reason == REFUSE_OVERLOAD
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.authoriser.begin(self.now_us())
            batch = self.metrics.begin_batch(<uint8_t>proto)
            self.out.len = 0
            self.router.mode = MODE_CONSUME
            if proto == PROTO_ISO8583:
                consumed = self.iso.refuse(<const uint8_t*>view.buf, view.len, &self.out,
                                           RC_96, repeats, batch, &requests, &answered,
                                           &close)
            else:
                consumed = self.native.refuse(<const uint8_t*>view.buf, view.len, &self.out,
                                              RC_96, REFUSE_TEXT[reason], repeats, batch,
                                              &requests, &answered, &close)
            self.shed_p[proto * 2 + reason] += requests
            self.metrics.end_batch(batch, answered)
        finally:
            PyBuffer_Release(&view)
        replies = (PyBytes_FromStringAndSize(<char*>self.out.data, self.out.len)
                   if self.out.len else b"")
        return consumed, replies, batch if answered else -1, bool(close)

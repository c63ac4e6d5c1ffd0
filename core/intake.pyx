# cython: language_level=3
"""The compiled half of the switch's intake: what runs for every read and every released
batch, so that the common read costs no Python bytecode (switch/intake.py, issue 29 item 6).

- :class:`Conn`, the base of ``switch.intake.Connection``: ``data_received`` keeps the
  connection's partial frame, asks :class:`Gate` whether the read may run, calls the core
  (``Engine.feed``, what ``Engine.process`` runs, on a pointer: no tuple, no buffer view)
  and hands the replies to :class:`Replies`. Every other read (refusing, a full read, a
  loop iteration over its budget, a partial frame to time or check, a request another region
  decides) goes to the Python intake, as before.
- :class:`Gate`, the base of ``switch.admission.Admission``: the two things a read needs of
  admission (whether it admits, the iteration's reading budget), as C fields.
- :class:`Replies`, the base of ``switch.durability.Durability``: reply batches held until
  the journal records they depend on are durable, written in each connection's order.

The layering holds: this module imports only the core; the switch's classes derive from these
and keep everything that is not per read in Python.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from onecard.core.engine cimport Engine
from onecard.core.state cimport PROTO_ISO8583, PROTO_NATIVE

cdef enum:
    FULL_READ = 64 << 10

FULL_READ_BYTES = FULL_READ    # a read this big means the peer is ahead (switch/admission.py)


cdef inline double monotonic_s() noexcept nogil:
    # time.monotonic(), without a float object.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class Gate:
    """What every read needs of admission: ``admitting`` (nothing is being refused) and
    ``iteration_max_s`` (a loop iteration that has read for this long refuses its other
    reads). ``switch.admission.Admission`` keeps them current."""
    cdef public bint admitting
    cdef public double iteration_max_s

    def __cinit__(self, *args, **kwargs):
        self.admitting = True
        self.iteration_max_s = 1e18


cdef class Conn:
    """One terminal link's state the compiled read path uses; ``switch.intake.Connection``
    adds the connection's life (made, lost, held, paused)."""
    cdef public object intake              # switch.intake.Intake: every read not common
    cdef readonly int proto
    cdef public object transport
    cdef public bytearray _buf             # the partial frame (touched in the intake only)
    cdef public bint closing
    cdef public bint paused                # Durability: too many batches waiting
    cdef public bint forwarding            # waiting for other regions' answers
    cdef public bint authenticated         # a frame passed a MAC (first-frame limit lifted)
    cdef public double last_rx
    cdef public double partial_since
    cdef public uint64_t waiting_need      # journal record its last queued batch needs
    cdef public int fd                     # for FIONREAD on full reads (admission.py)
    cdef public object peer
    cdef public object peer_host           # set once admission.accept() counted it
    cdef Engine engine
    cdef Gate gate
    cdef Replies replies
    cdef uint64_t released_in              # Replies.write_many: the release it was seen in
    cdef object first                      # ... its first batch there
    cdef list more                         # ... and the others, when several

    def __init__(self, intake, int proto):
        if proto != PROTO_ISO8583 and proto != PROTO_NATIVE:
            raise ValueError(f"unknown protocol {proto}")
        self.intake = intake
        self.engine = intake.engine
        self.gate = intake.admission
        self.replies = intake.durability
        self.proto = proto
        self._buf = bytearray()
        self.last_rx = self.partial_since = monotonic_s()
        self.fd = -1

    def data_received(self, data) -> None:
        cdef double now
        cdef Py_ssize_t held
        cdef bytearray buf
        if self.closing:
            return
        self.last_rx = now = monotonic_s()
        buf = self._buf
        held = PyByteArray_GET_SIZE(buf)
        if self.forwarding:
            # Read before reading paused: it waits behind the requests being forwarded.
            buf += data
            self.intake.partial(self, held, 0, now)
            return
        if held:
            buf += data
            data = buf
        self.run(data, held, now)

    cdef run(self, data, Py_ssize_t held, double now):
        cdef const uint8_t* p
        cdef size_t n, consumed
        cdef uint32_t batch
        cdef int close
        cdef Gate gate = self.gate
        cdef Replies r = self.replies
        if type(data) is bytes:
            p = <const uint8_t*>PyBytes_AS_STRING(data)
            n = <size_t>PyBytes_GET_SIZE(data)
        elif type(data) is bytearray:
            p = <const uint8_t*>PyByteArray_AS_STRING(data)
            n = <size_t>PyByteArray_GET_SIZE(data)
        else:                                     # another buffer type: as bytes
            data = bytes(data)
            p = <const uint8_t*>PyBytes_AS_STRING(data)
            n = <size_t>PyBytes_GET_SIZE(data)
        if (gate.admitting and n < FULL_READ
                and (not r.submit_soon or now - r.iteration_start < gate.iteration_max_s)):
            replies = self.engine.feed(self.proto, p, n, &consumed, &batch, &close)
            if not self.authenticated and batch > 0 and self.engine.native.authenticated:
                self.authenticated = True
            self.ran_c(data, held, consumed, replies, batch, close, True)
            return
        # Refusing, a full read, or an iteration over its budget: as admission says.
        consumed_o, replies_o, batch_o, close_o = self.intake.handle(self, data, now)
        if not self.authenticated and batch_o > 0 and self.engine.native.authenticated:
            self.authenticated = True
        self.ran_c(data, held, consumed_o, replies_o, batch_o, close_o, True)

    def ran(self, data, Py_ssize_t held, tuple result, *, bint relay=True) -> None:
        """After a core run over ``data`` (the buffer, or a read when nothing was held):
        keep what it did not consume, hand over the replies, and forward what the core
        stopped at (``relay``; a rerun after forwarding relays itself)."""
        consumed, replies, batch, close = result
        self.ran_c(data, held, consumed, replies, batch, close, relay)

    cdef ran_c(self, data, Py_ssize_t held, Py_ssize_t consumed, bytes replies,
               int64_t batch, bint close, bint relay):
        cdef bytearray buf = self._buf
        if data is buf:
            if consumed:
                del buf[:consumed]
        elif consumed < len(data):
            buf += data[consumed:]
        if replies:
            self.replies.deliver(self, replies, batch, close)
        elif close and self.transport is not None:
            self.transport.close()
        if close:
            self.closing = True
            self.intake.admission.partial_bytes -= held
            buf.clear()
            self.engine.router.take()             # nothing to forward for a closed connection
        elif held or PyByteArray_GET_SIZE(buf):
            self.intake.partial(self, held, consumed, self.last_rx)
        if relay and self.engine.router.n_reqs:
            self.intake.relay(self)


cdef class Replies:
    """Reply batches waiting for their journal records to be durable (``waiting``: need,
    connection, replies, batch, close), released in order; ``switch.durability.Durability``
    adds operators' waits, submitting and failure."""
    cdef readonly Engine engine
    cdef public object committer
    cdef public uint64_t durable_no
    cdef public Py_ssize_t waiting_batches_max
    cdef readonly object waiting
    cdef readonly set paused
    cdef public bint submit_soon
    cdef public double iteration_start     # this loop iteration's first read (intake)
    cdef public list record_waiters        # (record number, future) of operators waiting
    cdef public object loop
    cdef object on_durable                 # the switch's checkpoint waiting for end_no
    cdef object submit_batches             # bound: handed to call_soon once an iteration
    cdef uint64_t releases

    def __init__(self, Engine engine, committer, uint64_t durable_no,
                 Py_ssize_t waiting_batches_max, on_durable):
        from collections import deque     # at construction only
        assert waiting_batches_max > 0
        self.engine = engine
        self.committer = committer
        self.durable_no = durable_no
        self.waiting_batches_max = waiting_batches_max
        self.waiting = deque()
        self.paused = set()
        self.record_waiters = []
        self.on_durable = on_durable
        self.submit_batches = self._submit_batches

    def _submit_batches(self) -> None:
        self.submit_soon = False
        self.submit()

    cpdef submit(self):
        """Hand the journal's pending records (this iteration's batches', or operators'
        changes made outside a terminal batch) to the writer."""
        if self.engine.journal.n:
            self.committer.submit(self.engine.journal)

    cpdef deliver(self, Conn conn, bytes replies, int64_t batch, bint close):
        """Write ``replies`` once the records of their batch are durable. The records go to
        the writer once per loop iteration, after every socket that was ready has been read
        (call_soon runs after the iteration's I/O callbacks): handed over per read, a
        waiting writer would start a commit for the first terminal's record alone and the
        rest would wait a whole fsync for the next one."""
        cdef uint64_t need = self.engine.journal.next_no
        cdef uint64_t durable
        if batch < 0:
            # A refusal made no record: it waits only for this connection's earlier replies
            # (never for a commit the disk cannot take now), and keeps their order.
            batch = 0
            if conn.waiting_need <= self.durable_no:
                self.write(conn, replies, batch, close)
                return
            need = conn.waiting_need
        if not self.submit_soon and need > self.committer.submitted_no:
            self.submit_soon = True
            self.iteration_start = conn.last_rx   # this loop iteration's first read
            self.loop.call_soon(self.submit_batches)
        durable = self.committer.durable_no
        if durable > self.durable_no:
            # A commit finished while this loop iteration was busy with sockets: release its
            # replies now rather than when the event loop reaches the eventfd.
            self.released(durable)
        if need <= self.durable_no:
            self.write(conn, replies, batch, close)
            return
        self.waiting.append((need, conn, replies, batch, close))
        conn.waiting_need = need
        if len(self.waiting) > self.waiting_batches_max and not conn.paused:
            conn.paused = True
            self.paused.add(conn)
            assert conn.transport is not None, "a reply queued for a connection gone"
            conn.transport.pause_reading()

    cdef write(self, Conn conn, bytes replies, int64_t batch, bint close):
        transport = conn.transport
        if transport is None:
            return                           # the terminal went away; its state is journaled
        transport.write(replies)
        self.engine.metrics.note_written(<uint32_t>batch)
        if close:
            transport.close()

    cpdef released(self, uint64_t end_no):
        """Records below ``end_no`` are durable: release what waited for them."""
        self.durable_no = end_no
        if self.record_waiters:
            self.wake_operators(end_no)
        waiting = self.waiting
        if waiting and (<tuple>waiting[0])[0] <= end_no:
            self.write_many(end_no)
        if self.paused and len(waiting) < self.waiting_batches_max // 2:
            self.resume_paused()
        self.on_durable(end_no)

    cdef wake_operators(self, uint64_t end_no):
        still = []
        for no, future in self.record_waiters:
            if no < end_no:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((no, future))
        self.record_waiters = still

    cdef resume_paused(self):
        cdef Conn conn
        cdef double now = monotonic_s()
        for conn in list(self.paused):
            conn.paused = False
            conn.last_rx = now                   # the pause is not the terminal's silence
            if conn.transport is not None and not conn.forwarding:
                conn.transport.resume_reading()
        self.paused.clear()

    cdef write_many(self, uint64_t end_no):
        # Batches released at once: one write per connection (fewer syscalls), in the order
        # connections first appear, each connection's batches in its request order.
        cdef Conn conn
        cdef tuple item
        cdef list conns = []
        cdef uint64_t release
        waiting = self.waiting
        self.releases += 1
        release = self.releases
        while waiting and (<tuple>waiting[0])[0] <= end_no:
            item = waiting.popleft()
            conn = <Conn>item[1]
            if conn.released_in != release:
                conn.released_in = release
                conn.first = item
                conn.more = None
                conns.append(conn)
            elif conn.more is None:
                conn.more = [item]
            else:
                conn.more.append(item)
        for conn in conns:
            item = <tuple>conn.first
            conn.first = None
            if conn.more is None:
                self.write(conn, item[2], item[3], item[4])
            else:
                self.write_joined(conn, item, conn.more)
                conn.more = None

    cdef write_joined(self, Conn conn, tuple first, list more):
        cdef tuple item
        cdef bint close = first[4]
        transport = conn.transport
        if transport is None:
            return
        parts = [first[2]]
        for item in more:
            parts.append(item[2])
            close = close or item[4]
        transport.write(b"".join(parts))
        self.engine.metrics.note_written(<uint32_t>first[3])
        for item in more:
            self.engine.metrics.note_written(<uint32_t>item[3])
        if close:
            transport.close()

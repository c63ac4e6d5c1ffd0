"""Advices between regional switches (issue 15, docs/regions.md): reversal and stand-in.

An acquirer that answered its terminal ``91`` for a forwarded purchase or void cannot know
whether the issuer decided it (the answer may have been lost, or late): the issuer may hold a
debit the terminal was told was declined. So the acquirer sends a reversal advice: a
REQUEST record of kind REVERSAL for the same terminal and STAN, without the card number
(``offline``: the issuer finds the original by terminal and STAN alone, ``core/payments.pyx``).
The issuer applies it like a terminal's reversal: it undoes the original if it approved it,
and otherwise remembers the STAN so that the original, arriving late, is refused. Either way
the issuer ends with no effect, as the terminal was told. Applying an advice twice changes
nothing, so delivery only needs to be at least once.

A stand-in advice tells the issuer of a tap or venue entry the acquirer approved while the
issuer did not answer (``core/forward.pyx``, ``Router.stand_in``): the issuer posts it, even
without the money (the card then goes onto the deny list), once: its terminal's stand-in
watermark makes a second delivery a duplicate.

Delivery: the acquirer's journal first (its FORWARDED record, origin UNAVAILABLE, is durable
before the advice leaves; on start, those after the newest checkpoint are sent again), then a
JetStream stream (file storage, ``Nats-Msg-Id`` deduplication, ``sync_interval: always`` on
the servers), retried until the stream acknowledges. The issuer reads its subject with a
durable consumer and acknowledges an advice once its own journal holds the reversal.

Batches, both ways (issue 27: a backlog built while an issuer was down must drain faster than
advices are made). Each stored message costs the servers an fsync per replica and the
acquirer a round trip, so one message per advice capped the drain near the round-trip rate
(hundreds a second under load). The acquirer keeps one queue per issuer and publishes
whatever waits there, up to ``ADVICES_PER_MESSAGE``, as one message: the payload is the
advices' REQUEST records end to end, which the issuer reads exactly as it read single ones,
so switches of both kinds interoperate. A batch is made once and retried as it is, same bytes
and same ``Nats-Msg-Id`` (the advice's own for a batch of one, else a digest of its advices'
ids), so a publish whose acknowledgement was lost is stored once. The issuer fetches many
messages at a time and applies them in core calls of up to ``forward.BATCH_MAX`` advices, in
stream order (a terminal's stand-in watermark needs its advices in order), then acknowledges.

A batch's id cannot deduplicate the resend at a start, which batches the journal's advices
afresh. So the acquirer also keeps, per issuer, the journal number up to which every advice is
stored (key ``<acquirer>.<issuer>`` of the bucket ``onecard_advices_stored``, written after
the stream acknowledged), and its start sends again only the advices of later records. The
issuer's core makes any advice delivered twice harmless anyway (a reversal finds its own
slot, a stand-in advice the terminal's watermark).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onecard.core import crypto
from onecard.core.state import (
    KIND_PURCHASE,
    KIND_REVERSAL,
    KIND_VOID,
    PROTO_ISO8583,
    unpack_tid,
)
from onecard.protocols import forward
from onecard.protocols.codes import CODE_INDEX
from onecard.switch.region import routing

if TYPE_CHECKING:
    from onecard.switch.region.context import RegionContext
    from onecard.switch.security.keystore import DataKeys

log = logging.getLogger("onecard.region")

STREAM = "ONECARD_ADVICES"
SUBJECT_PREFIX = "onecard.advice."           # + issuer region
DUPLICATE_WINDOW_S = 24 * 3600.0             # a resend after a restart is within a day
QUEUED_MAX = 1_000_000                       # advices waiting for the stream
# 96 KiB of REQUEST records: well under NATS's default 1 MiB max_payload, and a quarter of
# the issuer's core call, so one fetch fills calls of whole messages.
ADVICES_PER_MESSAGE = 1024
FETCH_MAX = 256                              # messages fetched at once (max_ack_pending: 1000)
CALL_MAX = forward.BATCH_MAX                 # advices applied in one core call
FETCH_WAIT_S = 1.0
RETRY_S = (0.05, 0.2, 1.0, 5.0)              # backoff while the stream does not acknowledge
PUBLISH_TIMEOUT_S = 5.0
STORED_BUCKET = "onecard_advices_stored"    # <acquirer>.<issuer>: journal no stored up to
VOID_PROC = 200000                           # processing code 20xxxx: a void's reversal
CST = dt.timezone(dt.timedelta(hours=8))
CODES_INDEX_00 = CODE_INDEX["00"]
CODES_INDEX_25 = CODE_INDEX["25"]
CODE_OF_INDEX = {index: code for code, index in CODE_INDEX.items()}
NONE32 = 0xFFFFFFFF


def reversal_advices(reqs: np.ndarray) -> np.ndarray:
    """The reversal advices for forwarded requests answered 91: ISO 8583 purchases and voids
    (the requests whose effect a reversal undoes), as REQUEST records."""
    txn = reqs["txn"]
    money = ((txn["kind"] == KIND_PURCHASE) | (txn["kind"] == KIND_VOID)) & (
        txn["proto"] == PROTO_ISO8583)
    src = reqs[money]
    # Only what the issuer's reversal reads, every other byte zero (padding included): the
    # same advice whether built live or from the journal at a restart.
    out = np.zeros(len(src), dtype=forward.REQUEST)
    out["tid"] = src["tid"]
    t = out["txn"]
    for name in ("seq", "amount_fen", "currency"):
        t[name] = src["txn"][name]
    t["proc_code"] = np.where(src["txn"]["kind"] == KIND_VOID, VOID_PROC, 0)
    t["kind"] = KIND_REVERSAL
    t["proto"] = PROTO_ISO8583
    t["offline"] = forward.ADVICE_REVERSAL
    return out


def stand_in_advice(tid: int, rec, pan: int) -> np.ndarray:
    """The stand-in advice of a FORWARDED record of origin STAND_IN (the card number
    deciphered), byte for byte what the core queued when it stood in (Router.advise)."""
    out = np.zeros(1, dtype=forward.REQUEST)
    out["tid"] = tid
    t = out["txn"]
    t["pan"], t["amount_fen"], t["seq"] = pan, rec.amount_fen, rec.seq
    t["station_id"], t["direction"] = rec.orig_seq, rec.pool_fen
    t["time_s"], t["kind"] = rec.ts_us // 1_000_000, rec.orig_kind
    t["offline"] = forward.ADVICE_STAND_IN
    return out


def msg_id(acquirer: str, advice: np.void, day: str) -> str:
    """Deduplication key: (acquiring region, terminal, STAN, amount, day), marked for a
    stand-in advice."""
    t = advice["txn"]
    mark = "s." if t["offline"] == forward.ADVICE_STAND_IN else ""
    return (f"{acquirer}.{mark}{int(advice['tid'])}.{int(t['seq'])}.{int(t['amount_fen'])}."
            f"{int(t['currency'])}.{day}")


def batch_id(acquirer: str, keys: list[str]) -> str:
    """Deduplication key of a message of advices: the advice's own for one (what a switch
    sending one advice a message used), else the count and a digest of the advices' keys, in
    order. Only a retry of the same batch, or the same advices batched alike, has it."""
    if len(keys) == 1:
        return keys[0]
    digest = hashlib.blake2b("\n".join(keys).encode(), digest_size=16).hexdigest()
    return f"{acquirer}.b{len(keys)}.{digest}"


@dataclass(frozen=True)
class Batch:
    """One message of advices for an issuer, made once and retried unchanged until stored."""

    journal_no: int                              # durable first: the newest record it needs
    payload: bytes                               # REQUEST records end to end
    key: str                                     # Nats-Msg-Id
    count: int
    upto: int                                    # once stored: every advice of records up to
                                                 # this one is (-1: no such record yet)


class Advices:
    """The acquirer's queues of advices to publish and the issuer's consumer of its own."""

    def __init__(self, region: RegionContext) -> None:
        self.region = region
        # Per issuer subject, in journal order: (journal no to await, REQUEST bytes, id).
        self.queues: dict[str, deque] = {}
        self.sending: dict[str, Batch] = {}      # made, not yet acknowledged by the stream
        self.stored_upto: dict[str, int] = {}    # per issuer subject: Batch.upto stored
        self.stored_changed = asyncio.Event()
        # Issuers an advice was dropped for: their stored-up-to number stays where it was,
        # so that the next start sends the dropped one (its record is newer than any batch).
        self.held: set[str] = set()
        self.wakeup = asyncio.Event()
        self.queued = 0                          # advices made here (acquirer)
        self.published = 0
        self.messages = 0                        # stream messages they travelled in
        self.applied = 0
        self.calls = 0                           # core calls that applied them (issuer)
        self.inbound_pending = 0                 # messages for us not yet fetched, last seen
        self.posted = 0                          # stand-in advices posted here (issuer)
        self.unresolved = 0
        self.dropped = 0
        self.closed = False                      # the link is stopping: loops end

    @property
    def pending(self) -> int:
        """Advices waiting for the stream: queued, or in a batch not yet acknowledged."""
        return (sum(len(q) for q in self.queues.values())
                + sum(b.count for b in self.sending.values()))

    async def start(self, js, replicas: int) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import BadRequestError

        self.js = js
        config = StreamConfig(name=STREAM, subjects=[SUBJECT_PREFIX + ">"],
                              storage=StorageType.FILE, num_replicas=replicas,
                              duplicate_window=DUPLICATE_WINDOW_S)
        try:
            await js.add_stream(config)
        except BadRequestError:                  # made by another switch, maybe otherwise
            await js.stream_info(STREAM)
        name = self.region.name
        self.sub = await js.pull_subscribe(SUBJECT_PREFIX + name, durable=f"advices-{name}",
                                           stream=STREAM)
        self.kv = await routing.open_bucket(js, replicas, STORED_BUCKET, history=1,
                                            description="onecard: advices stored up to")
        self.region.spawn_loop(self._publish_loop())
        self.region.spawn_loop(self._consume_loop())
        self.region.spawn_loop(self._stored_loop())

    async def stored(self, peers: list[str]) -> dict[str, int]:
        """Per issuer, the journal number up to which this switch's advices are stored (a
        start resends only later ones); none where unknown (every advice is resent)."""
        import nats.errors
        from nats.js.errors import KeyNotFoundError

        out = {}
        for peer in peers:
            try:
                out[peer] = int((await self.kv.get(f"{self.region.name}.{peer}")).value or b"")
            except KeyNotFoundError:
                pass
            except (TimeoutError, ValueError, nats.errors.Error) as exc:
                log.warning("region %s: advices stored for %s unknown, all sent again: %r",
                            self.region.name, peer, exc)
        return out

    async def _stored_loop(self) -> None:
        """Write each issuer's stored-up-to number, the latest only: a lost write costs a
        few advices sent twice at the next start, never one left out."""
        import nats.errors

        written: dict[str, int] = {}
        while not self.closed:
            await self.stored_changed.wait()
            self.stored_changed.clear()
            for subject, upto in list(self.stored_upto.items()):
                if written.get(subject) == upto:
                    continue
                peer = subject.removeprefix(SUBJECT_PREFIX)
                try:
                    await self.kv.put(f"{self.region.name}.{peer}", str(upto).encode())
                    written[subject] = upto
                except (TimeoutError, nats.errors.Error) as exc:
                    log.warning("region %s: advices stored for %s not noted: %r",
                                self.region.name, peer, exc)
                    self.stored_changed.set()
                    await asyncio.sleep(RETRY_S[-1])

    # ---- acquirer ----------------------------------------------------------------------------

    def queue_unanswered(self, peer: str, reqs: np.ndarray, journal_no: int) -> None:
        """Forwarded requests answered 91 (REQUEST records): queue the reversal advices they
        need, to leave once the journal (``journal_no`` and before) is durable."""
        advices = reversal_advices(reqs)
        day = dt.datetime.now(CST).strftime("%Y%m%d")
        for advice in advices:
            self._enqueue(journal_no, peer, advice, day)

    def queue_stand_in(self, peers: list[str], advices: list, journal_no: int) -> None:
        """The core's stand-in advices (``Router.take_advices``), to leave once the journal
        (``journal_no`` and before) holds their FORWARDED records."""
        for d, data in advices:
            for advice in np.frombuffer(data, dtype=forward.REQUEST):
                day = dt.datetime.fromtimestamp(int(advice["txn"]["time_s"]), CST)
                self._enqueue(journal_no, peers[d - 1], advice, day.strftime("%Y%m%d"))

    def _enqueue(self, journal_no: int, peer: str, advice: np.void, day: str) -> None:
        subject = SUBJECT_PREFIX + peer
        if self.pending >= QUEUED_MAX:
            self.dropped += 1
            self.held.add(subject)
            log.error("region %s: %d advices waiting for the stream; one for %s dropped "
                      "(it is in the journal and is sent again at the next start)",
                      self.region.name, QUEUED_MAX, peer)
            return
        queue = self.queues.get(subject)
        if queue is None:
            queue = self.queues[subject] = deque()
        queue.append((journal_no, advice.tobytes(), msg_id(self.region.name, advice, day)))
        self.queued += 1
        self.wakeup.set()

    def resend(self, records, tids: np.ndarray, owner_of, journal_key: DataKeys | bytes | None,
               stored: dict[str, int] | None = None) -> int:
        """At start: the advices of FORWARDED records answered 91 or stood in after the newest
        checkpoint (their journal is durable; the stream may not have them), but not those
        of records up to where ``stored`` (per issuer) says the stream has them. The data
        set's keys decipher stood-in card numbers, each under the journal key of its record's
        generation (a bare key: one for every record; None: they are in clear, as a test's
        core keeps them)."""
        n = 0
        stored = stored or {}
        for rec in records:
            if rec.kind_name != "FORWARDED":
                continue
            peer = owner_of(rec.issuer_province)
            if peer is None or rec.no <= stored.get(peer, -1):
                continue
            if rec.origin == forward.ORIGIN["STAND_IN"]:
                pan = rec.issuer_record_no
                if journal_key is not None:
                    key = (journal_key if isinstance(journal_key, bytes)
                           else journal_key.journal_key_at(rec.no))
                    pan = crypto.pan_crypt(key, pan, NONE32, NONE32, decrypt=True)
                day = dt.datetime.fromtimestamp(rec.ts_us // 1_000_000, CST).strftime("%Y%m%d")
                advice = stand_in_advice(int(tids[rec.terminal]), rec, pan)[0]
                self._enqueue(rec.no, peer, advice, day)
                n += 1
                continue
            if (rec.origin != forward.ORIGIN["UNAVAILABLE"]
                    or rec.orig_kind not in (KIND_PURCHASE, KIND_VOID)):
                continue
            req = np.zeros(1, dtype=forward.REQUEST)
            req["tid"] = tids[rec.terminal]
            t = req["txn"]
            t["seq"], t["amount_fen"], t["currency"] = rec.seq, rec.amount_asked_minor, \
                rec.currency
            t["kind"], t["proto"] = rec.orig_kind, PROTO_ISO8583
            day = dt.datetime.fromtimestamp(rec.ts_us / 1e6, CST).strftime("%Y%m%d")
            for advice in reversal_advices(req):
                self._enqueue(rec.no, peer, advice, day)
                n += 1
        return n

    def _batch(self, subject: str) -> Batch:
        """The message to send next on a subject: the one not yet stored, else a new one of
        the advices at the head of its queue."""
        batch = self.sending.get(subject)
        if batch is None:
            queue = self.queues[subject]
            taken = [queue.popleft() for _ in range(min(len(queue), ADVICES_PER_MESSAGE))]
            nos = [no for no, _, _ in taken]
            batch = Batch(nos[-1], b"".join(p for _, p, _ in taken),
                          batch_id(self.region.name, [k for _, _, k in taken]), len(taken),
                          _upto(nos, queue[0][0] if queue else None))
            self.sending[subject] = batch
        return batch

    async def _publish_loop(self) -> None:
        sw = self.region
        while not self.closed:
            subjects = [s for s, q in self.queues.items() if q or s in self.sending]
            if not subjects:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            # One message per issuer per round: each issuer's advices stay in journal order,
            # and none waits behind another issuer's whole backlog.
            for subject in subjects:
                batch = self._batch(subject)
                if batch.journal_no:
                    await sw.durability.committed(batch.journal_no)
                if await self._store(subject, batch):
                    del self.sending[subject]
                    self.published += batch.count
                    self.messages += 1
                    if (subject not in self.held
                            and batch.upto > self.stored_upto.get(subject, -1)):
                        self.stored_upto[subject] = batch.upto
                        self.stored_changed.set()

    async def _store(self, subject: str, batch: Batch) -> bool:
        """Publish a batch, retried with backoff: whether the stream acknowledged it."""
        for delay_s in (*RETRY_S, None):
            try:
                await self.js.publish(subject, batch.payload, timeout=PUBLISH_TIMEOUT_S,
                                      headers={"Nats-Msg-Id": batch.key,
                                               forward.HEADER: str(forward.VERSION)})
                return True
            except Exception as exc:             # any NATS failure: the advices must wait
                log.warning("region %s: %d advices to %s not stored yet: %r",
                            self.region.name, batch.count, subject, exc)
                await asyncio.sleep(delay_s if delay_s is not None else RETRY_S[-1])
        return False

    # ---- issuer ------------------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        import nats.errors

        while not self.closed:
            try:
                msgs = await self.sub.fetch(FETCH_MAX, timeout=FETCH_WAIT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as exc:
                log.warning("region %s: advices: %r", self.region.name, exc)
                await asyncio.sleep(RETRY_S[-1])
                continue
            await self._apply(msgs)

    async def _apply(self, msgs: list) -> None:
        """Apply fetched messages of advices in stream order, in as few core calls as whole
        messages allow, and acknowledge them once the journal holds what they did."""
        sw = self.region
        good = []
        for m in msgs:
            n, rest = divmod(len(m.data), forward.REQUEST.itemsize)
            if (rest == 0 and 0 < n <= CALL_MAX
                    and (m.headers or {}).get(forward.HEADER) == str(forward.VERSION)):
                good.append(m)
            else:                                # never applicable: say so, do not retry
                log.error("region %s: malformed advice message dropped (%d bytes)",
                          self.region.name, len(m.data))
                await m.term()
        if msgs:
            with contextlib.suppress(Exception):     # only a gauge: never stop the loop
                self.inbound_pending = int(msgs[-1].metadata.num_pending)
        end_no = 0
        for i, call in enumerate(_calls(good)):
            if i:
                # A fetch may hold a long backlog: let terminals' batches in between calls.
                await asyncio.sleep(0)
            data = b"".join(m.data for m in call)
            answers, end_no = sw.engine.serve_forwarded(data)
            self.calls += 1
            self.applied += len(data) // forward.REQUEST.itemsize
            self._report(np.frombuffer(data, dtype=forward.REQUEST),
                         np.frombuffer(answers, dtype=forward.ANSWER))
        if end_no:
            await sw.durability.committed(end_no - 1)
        for m in good:
            await m.ack()

    def _report(self, reqs: np.ndarray, answers: np.ndarray) -> None:
        """Count the stand-in advices posted; count and log the advices that could not be
        applied, for reconciliation (clearing's exceptions, issue 16): a reversal advice that
        came after its terminal's ring moved on (25: the original may stand here while the
        terminal was told 91), and a stand-in advice this switch could not post (the card
        unknown, lost or expired here: the acquirer's operator let the holder through)."""
        stand_in = reqs["txn"]["offline"] == forward.ADVICE_STAND_IN
        posted = stand_in & (answers["rc"] == CODES_INDEX_00)
        self.posted += int((posted & (answers["duplicate"] == 0)).sum())
        late = ~stand_in & (answers["rc"] == CODES_INDEX_25)
        refused = stand_in & ~posted
        if not (late.any() or refused.any()):
            return
        self.unresolved += int(late.sum() + refused.sum())
        for req in reqs[late]:
            log.error("region %s: reversal advice for terminal %s STAN %06d came after that "
                      "terminal's ring moved on: reconcile it (the original may stand)",
                      self.region.name, unpack_tid(int(req["tid"])), int(req["txn"]["seq"]))
        for req, ans in zip(reqs[refused], answers[refused], strict=True):
            log.error("region %s: stand-in advice from terminal %s sequence %d not posted "
                      "(%s): reconcile it with the acquirer", self.region.name,
                      unpack_tid(int(req["tid"])), int(req["txn"]["seq"]),
                      CODE_OF_INDEX.get(int(ans["rc"]), "?"))


def _calls(msgs: list) -> list[list]:
    """Consecutive messages grouped into core calls of at most CALL_MAX advices each."""
    calls: list[list] = []
    size = CALL_MAX
    for m in msgs:
        n = len(m.data) // forward.REQUEST.itemsize
        if size + n > CALL_MAX:
            calls.append([])
            size = 0
        calls[-1].append(m)
        size += n
    return calls


def _upto(nos: list[int], next_no: int | None) -> int:
    """A batch's stored-up-to journal number, from its advices' journal numbers (in order)
    and the next queued advice's. All the advices of one core batch carry its last record's
    number, and may be split between two messages: a number the next advice shares is not
    complete until that one is stored."""
    if next_no is None or next_no > nos[-1]:
        return nos[-1]
    return max((no for no in nos if no < next_no), default=-1)

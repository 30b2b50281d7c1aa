"""What happens in the proxy, as typed events: the one hook of metrics, status page and audit trail.

The DICOM code calls :func:`publish` with one of the dataclasses below (one line where something
happens: association accepted/rejected, C-FIND done, job started/resolved/finished, an instance
sent, a retry, start/stop). Subscribers (:mod:`dicomproxy.console.metrics`, :mod:`dicomproxy.audit.trail`, the
status page's live view) register with :func:`subscribe`.

Publishing must not slow the relay: :func:`publish` appends to a :class:`queue.SimpleQueue`
(no lock held by Python code, no I/O) and returns; one dispatcher thread calls the subscribers in
order, in batches: after handling what is queued it pauses :data:`BATCH_PAUSE` (20 ms), so a relay's
per-instance events do not wake it one by one. With no subscriber (``[http] port = 0`` and no
audit) nothing is queued at all.
A subscriber with an ``end_batch()`` method (:class:`BatchSubscriber`: the audit trail, which writes a
batch's rows in one transaction) is told when a batch it received ends: when the queue is empty,
and before a :func:`flush` returns.
:func:`flush` waits until everything published so far has been handled, ``end_batch`` included
(tests, and the server's stop so that the last audit rows are written before the journal closes).

One bus per process: a process serves one proxy.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

LOG = logging.getLogger("dicomproxy.events")

#: Seconds the dispatcher collects events after a batch before it looks again (the delay a
#: subscriber may see; :func:`flush` waits at most this much longer).
BATCH_PAUSE = 0.02


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Event:
    """Base: when it happened (UTC)."""

    time: dt.datetime = field(default_factory=_utcnow, kw_only=True)


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of an association."""

    calling_ae: str
    address: str
    port: int = 0
    #: TLS client certificate subject, "" on plain TCP or without a client certificate.
    tls_identity: str = ""


@dataclass(frozen=True)
class ProcessStarted(Event):
    ae_title: str
    version: str


@dataclass(frozen=True)
class ProcessStopped(Event):
    ae_title: str
    clean: bool


@dataclass(frozen=True)
class AssociationAccepted(Event):
    peer: Peer
    called_ae: str


@dataclass(frozen=True)
class AssociationRejected(Event):
    peer: Peer
    called_ae: str
    reason: str
    #: A-ASSOCIATE-RJ reason (PS3.8 Table 9-21).
    reason_code: int = 0x01


@dataclass(frozen=True)
class FindDone(Event):
    """One C-FIND answered (PS3.4 C.4.1)."""

    peer: Peer
    model: str  # PATIENT | STUDY (information model)
    level: str  # Query/Retrieve Level
    source: str  # view | pacs
    #: The query keys with a value (keyword → value): patient data, for the audit trail only.
    keys: dict[str, str]
    matches: int
    status: int
    seconds: float


@dataclass(frozen=True)
class JobStarted(Event):
    """A C-MOVE/C-GET job is in the journal (``jobs.id``)."""

    job_id: int
    kind: str
    peer: Peer
    destination: str
    #: Request keys naming patient data (PatientID, AccessionNumber, StudyInstanceUID...): audit only.
    keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrieveRefused(Event):
    """A C-MOVE/C-GET answered with a failure before any job existed (not permitted, malformed)."""

    kind: str
    peer: Peer
    destination: str
    keys: dict[str, str]
    status: int


@dataclass(frozen=True)
class JobResolved(Event):
    """The job's studies are known (from the exam view)."""

    job_id: int
    level: str
    study_uids: tuple[str, ...]


@dataclass(frozen=True)
class InstanceSent(Event):
    """One sub-operation ended (sent | warning | failed)."""

    job_id: int
    state: str
    transfer_syntax: str
    bytes: int
    sop_class_uid: str = ""


@dataclass(frozen=True)
class Transcoded(Event):
    """One instance converted for its destination (in the transcoding pool)."""

    job_id: int
    transfer_syntax: str
    seconds: float


@dataclass(frozen=True)
class JobFinished(Event):
    job_id: int
    kind: str
    outcome: str
    status: int
    completed: int
    failed: int
    warning: int
    bytes_out: int
    seconds: float


@dataclass(frozen=True)
class JobInterrupted(Event):
    """A job the process died in (no JobFinished ever came), found at the next start and written
    to the audit trail then (``AuditSubscriber.interrupted_records``): for the ATNA message."""

    job_id: int
    kind: str
    peer: Peer
    destination: str
    study_uids: tuple[str, ...]
    patient_ids: tuple[str, ...]
    #: Instances the destination confirmed before the process ended.
    instances: int


@dataclass(frozen=True)
class RetryRequested(Event):
    """``jobs retry`` (or the automatic resume) asked for a job to be sent again."""

    job_id: int
    by: str


@dataclass(frozen=True)
class ConsoleRequest(Event):
    """A request to the HTTP console that needed a token (served or refused): who by role, what,
    the HTTP status (the token itself is never carried)."""

    role: str  # admin | operator | auditor | "" (no or unknown token)
    method: str
    path: str
    status: int
    client: str


@dataclass(frozen=True)
class ConfigReloaded(Event):
    """A reload of the config file (SIGHUP, ``dicomproxy reload``): applied, or refused with the
    error; the keys it changed and those left for a restart (names only, never values)."""

    path: str
    applied: bool
    changed: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Failure(Event):
    """An error worth showing an administrator (PACS, database, destination); no patient data."""

    where: str  # pacs | view | journal | destination | relay | query process
    message: str


@dataclass(frozen=True)
class PushQueued(Event):
    """The push watcher queued (or re-queued) this many (study, destination) items."""

    count: int


@dataclass(frozen=True)
class CommitmentAnswered(Event):
    """A Storage Commitment transaction ended (PS3.4 J.3.3): answered, or given up after its
    attempts (``unanswered``); counts only, no patient data."""

    destination: str
    committed: int
    failed: int
    unanswered: int = 0


@dataclass(frozen=True)
class PushDelivered(Event):
    """One push queue item's attempt ended: delivered | images-delivered | waiting | failed |
    dropped | destination-down (no patient data: the item ID only)."""

    item_id: int
    destination: str
    outcome: str
    instances: int


@dataclass(frozen=True)
class CorrectionFound(Event):
    """The view corrected a study after its delivery (IOCM, docs/identity.md): ``kind`` is
    identity-corrected | exam-relinked | row-withdrawn; ``changed`` names fields, not values;
    ``acted``: the destination gets a rejection note (``iocm = true``). The patient IDs are for
    the audit trail only (never logged)."""

    destination: str
    study_uid: str
    kind: str
    changed: tuple[str, ...] = ()
    acted: bool = False
    old_patient_id: str = ""
    new_patient_id: str = ""
    relinked_to: str = ""


@dataclass(frozen=True)
class CorrectionSent(Event):
    """A correction was carried out at its destination (or given up): ``outcome`` is done |
    failed | retry; ``referenced``: instances the rejection note rejects; ``copies``: corrected
    copies confirmed; ``note_uid``: the note's SOP Instance UID."""

    destination: str
    study_uid: str
    kind: str
    outcome: str
    referenced: int = 0
    copies: int = 0
    note_uid: str = ""
    patient_id: str = ""


@dataclass(frozen=True)
class PushDestination(Event):
    """A push destination went down (its queue held) or came back."""

    destination: str
    up: bool
    reason: str = ""


Subscriber = Callable[[Event], None]


@runtime_checkable
class BatchSubscriber(Protocol):
    """A subscriber that buffers what it is handed and finishes the work once per batch."""

    def __call__(self, event: Event) -> None: ...

    def end_batch(self) -> None:
        """Everything handed over so far is done (written): called on the dispatcher thread after
        a drained batch and before :meth:`Bus.flush` returns."""


class Bus:
    """Publish/subscribe with one dispatcher thread."""

    def __init__(self) -> None:
        self._subscribers: tuple[Subscriber, ...] = ()
        self._queue: queue.SimpleQueue[Event | threading.Event | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: The batch subscribers handed an event since their last ``end_batch`` (dispatcher thread
        #: only): one unsubscribed in the middle of a batch still gets its ``end_batch``.
        self._open: dict[int, BatchSubscriber] = {}
        #: The batch subscribers among a tuple of subscribers (recomputed when it changes).
        self._batchers: tuple[tuple[Subscriber, ...], dict[int, BatchSubscriber]] = ((), {})

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event: Event) -> None:
        """Hand ``event`` to the subscribers (asynchronously); a no-op without subscribers."""
        if self._subscribers:
            self._queue.put(event)

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="events", daemon=True)
                self._thread.start()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Remove ``subscriber`` after what was published before has reached it."""
        self.flush()
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event published before this call has been dispatched."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            item: Event | threading.Event | None = self._queue.get()  # idle: the first event wakes it
            while item is not None:
                self._dispatch(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            self._end_batch()
            # Busy (a relay publishes one InstanceSent per instance): collect for a moment instead
            # of being woken by every publish — a wake-up costs the publishing thread ~25 µs of CPU
            # and a GIL hand-over (issue 29).
            time.sleep(BATCH_PAUSE)

    def _dispatch(self, item: Event | threading.Event) -> None:
        if isinstance(item, threading.Event):  # a flush(): what came before it is done, batches too
            self._end_batch()
            item.set()
            return
        subscribers = self._subscribers  # one snapshot: who got the event gets its end_batch
        for subscriber in subscribers:
            try:
                subscriber(item)
            except Exception:  # one broken subscriber must not silence the others
                LOG.exception("event subscriber %r failed on %s", subscriber, type(item).__name__)
        if self._batchers[0] is not subscribers:
            self._batchers = (subscribers, {id(s): s for s in subscribers if isinstance(s, BatchSubscriber)})
        if self._batchers[1]:
            self._open.update(self._batchers[1])

    def _end_batch(self) -> None:
        open_, self._open = self._open, {}
        for subscriber in open_.values():
            try:
                subscriber.end_batch()
            except Exception:  # as above: the dispatcher and the other subscribers go on
                LOG.exception("event subscriber %r failed at the end of a batch", subscriber)


BUS = Bus()
publish = BUS.publish
subscribe = BUS.subscribe
unsubscribe = BUS.unsubscribe
flush = BUS.flush


def association_rejected(assoc: Any, rq: Any, reason: str, reason_code: int) -> None:
    """Publish :class:`AssociationRejected` for an A-ASSOCIATE-RQ ``rq`` we reject."""
    if BUS.active:
        peer = Peer(
            str(rq.calling_ae_title).strip(), str(assoc.requestor.address), int(assoc.requestor.port or 0)
        )
        publish(AssociationRejected(peer, str(rq.called_ae_title).strip(), reason, reason_code))

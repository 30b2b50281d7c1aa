"""The producer side of a relay job: fetching from the archives into the job's spool.

:class:`Upstream` runs in a thread of its own, holds one retrieval slot per archive and retrieves
the job's studies (C-MOVE to us or C-GET, ``dicomproxy.pacs.client``) into the
:class:`~dicomproxy.relay.spool.Spool` that the job's consumer (``dicomproxy.relay.pump``) forwards
from. :class:`Finder` lists an early-started job's instances (IMAGE-level C-FIND) beside the
transfer.
"""

from __future__ import annotations

import threading

from dicomproxy.errors import PacsUnavailable
from dicomproxy.pacs.client import InstanceRef, PacsClient, RetrieveKey
from dicomproxy.relay.spool import Spool
from dicomproxy.transport.link import Link

#: Seconds an archive gets to end a cancelled C-MOVE/C-GET (final Cancel response) before it is aborted.
CANCEL_GRACE = 2.0


class Finder:
    """The IMAGE-level C-FIND of an early-started job, in a thread (see ``RelayService._study_summary``)."""

    def __init__(self, client: PacsClient, key: RetrieveKey) -> None:
        self.refs: list[InstanceRef] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(client, key), name="relay-finder", daemon=True)
        self.thread.start()

    def _run(self, client: PacsClient, key: RetrieveKey) -> None:
        try:
            self.refs = client.find_instances(key)
        except BaseException as exc:  # reported by the job, never raised in this thread
            self.error = exc
        finally:
            self.done.set()


class Upstream:
    """The producer side of a job: a thread fetching the studies into the spool; stoppable."""

    def __init__(
        self,
        plan: list[tuple[PacsClient, RetrieveKey, list[InstanceRef]]],
        spool: Spool,
        sop_classes: list[str] | None = None,
    ) -> None:
        self.plan = plan
        self.spool = spool
        self.sop_classes = sop_classes  # for a C-GET started before the instance list is known
        self.stop_requested = threading.Event()
        self.timed_out = threading.Event()
        self._assoc: Link | None = None
        self._lock = threading.Lock()
        self._grace: threading.Timer | None = None  # aborts a cancelled retrieval that did not end
        self.thread = threading.Thread(target=self._run, name="relay-upstream", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _attach(self, assoc: Link) -> None:
        with self._lock:
            self._assoc = assoc
            if self.stop_requested.is_set():
                assoc.abort()

    def stop(self) -> None:
        """Stop fetching. The retrieval gets a C-CANCEL where its link offers one (the raw link:
        PS3.4 C.4.2.3 / C.4.3.3, the archive ends it with a Cancel response and the association is
        released) and is aborted only if it is not over within :data:`CANCEL_GRACE`; otherwise
        (pynetdicom: TLS, ``fast_path = false``) the association is aborted, and its
        sub-operations end with it."""
        self.stop_requested.set()
        with self._lock:
            assoc = self._assoc
            if assoc is None or not assoc.is_established or self._grace is not None:
                return
            if assoc.cancel():
                self._grace = threading.Timer(CANCEL_GRACE, assoc.abort)
                self._grace.daemon = True
                self._grace.start()
                return
        assoc.abort()

    def _run(self) -> None:
        """Archive after archive (one slot of each at a time); a failing archive does not stop the
        others, its error is reported at the end."""
        error: BaseException | None = None
        timer: threading.Timer | None = None
        try:
            for pacs in dict.fromkeys(client for client, _, _ in self.plan):
                if self.stop_requested.is_set():
                    break
                with pacs.slot(self.stop_requested) as got:
                    limit = pacs.config.total_timeout
                    if got and limit > 0:
                        timer = threading.Timer(limit, self._time_out, args=(pacs,))
                        timer.daemon = True
                        timer.start()
                    for _, key, refs in [p for p in self.plan if p[0] is pacs] if got else []:
                        if self.stop_requested.is_set():
                            break
                        outcome = pacs.retrieve(
                            key, refs, self.spool, on_assoc=self._attach, sop_classes=self.sop_classes
                        )
                        if outcome.error and not self.stop_requested.is_set():
                            error = error or PacsUnavailable(outcome.error)
                            break
                    if timer is not None:
                        timer.cancel()
                        timer = None
        except Exception as exc:
            error = exc
        finally:
            if timer is not None:
                timer.cancel()
            if not self.timed_out.is_set():  # else _time_out already ended the job's queue
                self.spool.finish(error)

    def _time_out(self, pacs: PacsClient) -> None:
        """The archive's ``total_timeout`` passed: end the retrieval as a failure, not a hung association.

        The job's queue is ended here, not when the thread returns: after an abort pynetdicom
        may still wait out its DIMSE timeout."""
        self.timed_out.set()
        limit = pacs.config.total_timeout
        self.spool.finish(
            PacsUnavailable(f"PACS {pacs.config.ae_title} exceeded total_timeout ({limit:g} s)")
        )
        self.stop()

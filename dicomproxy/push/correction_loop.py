"""The corrections thread of the push service (IOCM; docs/identity.md): detection, then the due
corrections carried out, every ``[push] poll_interval``; every delivered study compared at start
and every ``[push] corrections_sweep`` seconds."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dicomproxy.config import Config
from dicomproxy.push.correcting import CorrectionSender
from dicomproxy.push.corrections import CorrectionDetector
from dicomproxy.push.corrections_store import CorrectionStore
from dicomproxy.push.queue import PushQueue
from dicomproxy.relay.journal import Journal

LOG = logging.getLogger("dicomproxy.push.corrections")

#: Seconds a node holds a correction it claimed (a node that died leaves it to the others then).
CLAIM_LEASE = 900.0


class CorrectionLoop:
    """Detects corrections and carries out the due ones; one per process."""

    def __init__(self, config: Config, view: Any, journal: Journal, relay: Any, queue: PushQueue) -> None:
        self.config = config
        self.store = CorrectionStore(journal.engine, queue.node)
        self.detector = CorrectionDetector(config, view, queue, self.store)
        self.sender = CorrectionSender(config, view, journal, relay, self.store)
        self._swept: float | None = None
        #: Passes run to their end (tests wait on it).
        self.passes = 0

    def run_pass(self) -> int:
        """One pass: the changed rows (and the sweep when due), then every due correction; the
        corrections found."""
        found = self.detector.changed()
        sweep = self.config.push.corrections_sweep
        now = time.monotonic()
        if self._swept is None or (sweep > 0 and now - self._swept >= sweep):
            found += self.detector.sweep()
            self._swept = now
        # a correction's copies are a whole study's job: a lease long enough not to be taken over
        while (row := self.store.claim(max(self.config.push.lease, CLAIM_LEASE))) is not None:
            self.sender.run(row)
        self.passes += 1
        return found

    def loop(self, stop: threading.Event) -> None:
        """Passes until ``stop``; a failing pass is logged once per reason and retried."""
        error = ""
        while not stop.is_set():
            try:
                self.run_pass()
                if error:
                    LOG.info("corrections: the view and the journal can be read again")
                    error = ""
            except Exception as exc:
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                if reason != error:
                    LOG.warning("corrections: pass failed (%s); retrying", reason)
                    error = reason
            stop.wait(self.config.push.poll_interval)

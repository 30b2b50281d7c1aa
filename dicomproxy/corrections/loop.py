"""One pass of corrections after delivery (IOCM; docs/identity.md): detection, then the due
corrections carried out; every delivered study of the last ``[corrections] sweep_days`` compared
at start and every ``[corrections] sweep`` seconds. Run by
:class:`~dicomproxy.corrections.service.CorrectionService`.

Pacing (docs/identity.md, "Pacing"): a correction is a safety matter, so it does not wait for
push's off-peak ``window`` nor share push's per-lane ``max_mbps``; what leaves the hospital is
still charged to the ``[[bandwidth]]`` timetable (each job's opener), and a destination on hold —
paused by the operator or held down by push (``held``), or one that a correction could not reach
during this pass — is not claimed for until the hold ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from dicomproxy.config import Config
from dicomproxy.corrections.detect import CorrectionDetector
from dicomproxy.corrections.schema import DUE, FAILED
from dicomproxy.corrections.sending import CorrectionSender
from dicomproxy.corrections.store import CorrectionStore
from dicomproxy.relay.journal import Journal

#: Seconds a node holds a correction it claimed (a node that died leaves it to the others then).
CLAIM_LEASE = 900.0


def nothing_held() -> Collection[str]:
    return ()


class CorrectionLoop:
    """Detects corrections and carries out the due ones; one per process."""

    def __init__(
        self,
        config: Config,
        view: Any,
        journal: Journal,
        relay: Any,
        node: str,
        held: Callable[[], Collection[str]] = nothing_held,
    ) -> None:
        self.config = config
        self.store = CorrectionStore(journal.engine, node)
        self.detector = CorrectionDetector(config, view, self.store)
        self.sender = CorrectionSender(config, view, journal, relay, self.store)
        #: The destinations on hold now (`push pause`, push's down holds: `push.holds.held_now`).
        self.held = held
        self._swept: float | None = None
        #: Passes run to their end (tests wait on it).
        self.passes = 0

    def reconfigure(self, config: Config) -> None:
        self.config = self.detector.config = self.sender.config = self.sender.followups.config = config

    def run_pass(self) -> int:
        """One pass: the changed rows (and the sweep when due), then every due correction to a
        destination not on hold; the corrections found."""
        found = self.detector.changed()
        sweep = self.config.corrections.sweep
        now = time.monotonic()
        if self._swept is None or (sweep > 0 and now - self._swept >= sweep):
            found += self.detector.sweep()
            self._swept = now
        skip = set(self.held())
        # a correction's copies are a whole study's job: a lease long enough not to be taken over
        while (row := self.store.claim(CLAIM_LEASE, skip)) is not None:
            if self.sender.run(row) in (DUE, FAILED):
                skip.add(row.destination)  # not reached: its other corrections wait for the next pass
        self.passes += 1
        return found

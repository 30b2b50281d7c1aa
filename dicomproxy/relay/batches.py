"""Several instances per request, for a destination that takes them so (STOW-RS, PS3.18 10.5).

:class:`BatchLane` has the interface of :class:`~dicomproxy.relay.sending.InlineLane` and
:class:`~dicomproxy.relay.lanes.Lanes`, so the pump's one loop drives it unchanged: it is chosen
when the destination's :attr:`~dicomproxy.relay.destinations.Destination.max_batch` is above 1.
:meth:`BatchLane.submit` holds a prepared instance instead of sending it; the held ones go in one
request (:meth:`~dicomproxy.relay.sending.InstanceSender.send_batch`, on the pump's thread) when

- ``max_batch`` are held (the lane is not :attr:`free`, so the pump waits on :meth:`take`),
- the pump waits for results only (:meth:`take` with a timeout: nothing else to hand out now,
  or the archive finished), or
- the first of them has waited :data:`BATCH_LINGER` seconds (a slow archive).

The results come back together from :meth:`take`, one per instance, and the pump records each
through the job's :class:`~dicomproxy.relay.recorder.InstanceRecorder` as it does a C-STORE's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dicomproxy.relay.destinations import Destination
from dicomproxy.relay.forward import SendResult
from dicomproxy.relay.sending import Prepared

#: Longest time the first held instance waits for more to join its request (seconds).
BATCH_LINGER = 0.5


class BatchLane:
    """The job's destination, fed ``max_batch`` instances per request (module docstring)."""

    unopened = 0
    bytes_out = 0  # the destination counts its own bytes

    def __init__(
        self,
        forwarder: Destination,
        send_batch: Callable[[Destination, list[Prepared]], list[SendResult]],
        linger: float = BATCH_LINGER,
    ) -> None:
        self.forwarder = forwarder
        self._send = send_batch
        self._linger = linger
        self._held: list[Prepared] = []
        self._since = 0.0
        self._results: list[tuple[Prepared, SendResult]] = []

    @property
    def up(self) -> int:
        """1 while the destination answers (it is down once a request got no answer at all)."""
        return 1 if self.forwarder.alive else 0

    @property
    def in_flight(self) -> int:
        return len(self._held)

    @property
    def free(self) -> bool:
        return self.forwarder.alive and len(self._held) < self.forwarder.max_batch

    def submit(self, work: Prepared) -> None:
        if not self._held:
            self._since = time.monotonic()
        self._held.append(work)

    def take(self, timeout: float) -> list[tuple[Prepared, SendResult]]:
        """The results of the last request; sends the held instances first when they are due."""
        if self._held and (timeout > 0 or not self.free or time.monotonic() - self._since >= self._linger):
            batch, self._held = self._held, []
            self._results.extend(zip(batch, self._send(self.forwarder, batch), strict=True))
        out, self._results = self._results, []
        return out

    def close(self, wait: float) -> tuple[list[tuple[Prepared, SendResult]], list[Prepared]]:
        """(results not taken yet, instances held and never sent)."""
        left, self._held = self._held, []
        out, self._results = self._results, []
        return out, left

"""Several onward associations of one C-MOVE job to its destination (``onward_associations``, issue 17).

Each C-STORE sub-operation waits for its response before the next goes on the same association
(PS3.7 9.3.1: we never ask for asynchronous operations, PS3.7 D.3.3.3), so on a far link every
instance costs at least one round trip. A :class:`Lanes` runs N associations side by side, one
thread each. The pump's thread hands out prepared instances one at a time to whichever lane is
free (at most one in flight per live lane) and takes their results back, so every instance goes
to exactly one lane, and is counted and journalled once, on the pump's thread. A lane whose
association drops re-opens it with backoff (``[proxy] reconnect_window``) and resends the instance
it held; while it does, the other lanes go on. A lane that cannot get its association back
stops taking work; the job's destination is lost only when no lane is left.

Lane 0 is the job's first association (opened before anything is fetched, 0xC003 if refused);
lanes 1..N-1 open theirs in their own thread, so they never delay the first instance — one that
cannot open is simply not used.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from dicomproxy.errors import DestinationUnavailable
from dicomproxy.relay.destinations import Destination
from dicomproxy.relay.forward import SendResult

LOG = logging.getLogger("dicomproxy.relay")

T = TypeVar("T")

#: Seconds a further association waits for its A-ASSOCIATE-AC. A destination that serves one
#: association at a time (DCMTK storescp without ``--fork``) leaves it in its listen backlog;
#: it must give up soon, or it would hold up the destination's next association.
EXTRA_ACSE_TIMEOUT = 3.0


class _Down:
    """A lane's last word: it has no association any more and takes no more work."""


#: What a lane gives back: (the work, its result, whether the lane is down after it), or that it is
#: down without a result (its association never opened).
_Result = tuple[T, SendResult, bool] | _Down


class Lanes(Generic[T]):
    """``count`` onward associations to one destination, one thread each (module docstring).

    ``send(forwarder, work)`` sends one instance and returns its result, or None when the
    association was lost under it; ``reopen(forwarder, stop)`` re-opens it (True when back, False
    after ``[proxy] reconnect_window`` or when ``stop`` is set). ``resend(work)`` is what to send
    again after a re-open (the instance unconverted: a prepared file may be gone).
    """

    def __init__(
        self,
        primary: Destination,
        count: int,
        send: Callable[[Destination, T], SendResult | None],
        reopen: Callable[[Destination, threading.Event], bool],
        resend: Callable[[T], T],
        retries: int,
        label: str,
    ) -> None:
        self._primary = primary
        self._send, self._reopen, self._resend = send, reopen, resend
        self._retries = retries
        self._label = label
        self._work: queue.Queue[T | None] = queue.Queue()
        self._results: queue.Queue[_Result[T]] = queue.Queue()
        self._stop = threading.Event()
        self._extra: list[Destination] = []
        #: Lanes that have their association (the others are still opening theirs, or down).
        self._serving: set[int] = {0}
        #: Lanes whose association could not be opened.
        self.unopened = 0
        self._lock = threading.Lock()
        #: Lanes not yet down (a lane still opening counts: its share waits in the queue meanwhile).
        self.up = count
        #: Work handed out whose result has not been taken back yet.
        self.in_flight = 0
        self._threads = [
            threading.Thread(
                target=self._serve,
                args=(k, primary if k == 0 else None),
                name=f"{label}-lane{k}",
                daemon=True,
            )
            for k in range(count)
        ]
        for t in self._threads:
            t.start()

    @property
    def free(self) -> bool:
        """A live lane could take one more instance now."""
        return self.in_flight < self.up

    def submit(self, work: T) -> None:
        self._work.put(work)
        self.in_flight += 1

    def take(self, timeout: float) -> list[tuple[T, SendResult]]:
        """The results that came back (waiting up to ``timeout`` s for the first, 0 = not at all)."""
        out: list[tuple[T, SendResult]] = []
        try:
            got = self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait()
            while True:
                if isinstance(got, _Down):
                    self.up -= 1
                else:
                    work, res, down = got
                    self.in_flight -= 1
                    self.up -= down
                    out.append((work, res))
                got = self._results.get_nowait()
        except queue.Empty:
            pass
        return out

    @property
    def bytes_out(self) -> int:
        """Bytes sent on lanes 1..N-1 (lane 0's are the primary forwarder's own)."""
        with self._lock:
            return sum(f.bytes_out for f in self._extra)

    def close(self, wait: float) -> tuple[list[tuple[T, SendResult]], list[T]]:
        """Stop the lanes (each finishes the C-STORE it is in, up to ``wait`` s in all):
        (results that still came back, work never taken by a lane)."""
        self._stop.set()
        left: list[T] = []
        while True:  # first what no lane has taken; the sentinels after it
            try:
                w = self._work.get_nowait()
            except queue.Empty:
                break
            if w is not None:
                left.append(w)
        for _ in self._threads:
            self._work.put(None)
        for k, t in enumerate(self._threads):
            if k in self._serving:  # one still opening its association is not waited for
                t.join(timeout=wait)
        late = self.take(0)
        return late, left

    def _serve(self, k: int, forwarder: Destination | None) -> None:
        own = forwarder is None
        try:
            if forwarder is None:
                try:
                    forwarder = self._open_extra()
                except DestinationUnavailable as exc:
                    with self._lock:
                        self.unopened += 1
                    LOG.warning(
                        "%s: onward association %d not opened (%s); going on with the others",
                        self._label,
                        k + 1,
                        exc,
                    )
                    self._results.put(_Down())
                    return
                with self._lock:
                    self._serving.add(k)
                if self._stop.is_set():  # opened after the job ended: released at once
                    return
            while True:
                work = self._work.get()
                if work is None:
                    return
                res, lost = self._one(forwarder, work)
                if lost:
                    LOG.warning("%s: onward association %d lost for good", self._label, k + 1)
                self._results.put((work, res, lost))
                if lost:
                    return
        finally:
            if own and forwarder is not None:
                forwarder.close()

    def _open_extra(self) -> Destination:
        """A further association; one that opens after the job ended is released at once
        (its thread then finds the stop sentinel)."""
        forwarder = self._primary.another(EXTRA_ACSE_TIMEOUT)
        with self._lock:
            self._extra.append(forwarder)
        return forwarder

    def _one(self, forwarder: Destination, work: T) -> tuple[SendResult, bool]:
        """Send ``work``, re-opening a lost association and resending (at most ``retries`` times).
        (result, whether this lane's association is gone for good)."""
        losses = 0
        while True:
            res = self._send(forwarder, work)
            if res is not None:
                return res, False
            losses += 1
            if losses > self._retries or self._stop.is_set() or not self._reopen(forwarder, self._stop):
                return SendResult(None, error="destination association lost"), not forwarder.alive
            work = self._resend(work)

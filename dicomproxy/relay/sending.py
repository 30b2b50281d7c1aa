"""Sending one instance onward, and the single-association sender the pump drives.

:class:`InstanceSender` prepares an instance (its syntax chosen and converted in the transcoding
pool, or sent as held) and sends it on a :class:`~dicomproxy.relay.destinations.Destination`; it never
counts or journals (that is :class:`~dicomproxy.relay.recorder.InstanceRecorder`'s job, on the
pump's thread). :class:`InlineLane` offers the interface of :class:`~dicomproxy.relay.lanes.Lanes`
for one association, sending on the pump's own thread (no thread hop: ``none`` mode measured ~5 %
faster this way), so the pump has one loop for one or several onward associations.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from dicomproxy import events
from dicomproxy.config import ProxyConfig
from dicomproxy.errors import CannotTranscode
from dicomproxy.relay.destinations import Destination
from dicomproxy.relay.forward import MAX_RETRY_DELAY, SendResult
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.response import RetrieveResponse
from dicomproxy.relay.spool import SpooledInstance
from dicomproxy.status import Status
from dicomproxy.transcode import TranscodePool, TranscodeResult
from dicomproxy.transcode.codec import ConversionFailed

LOG = logging.getLogger("dicomproxy.relay")

#: First pause before re-opening a dropped destination; doubles up to forward.MAX_RETRY_DELAY.
RECONNECT_FIRST_DELAY = 0.5


@dataclass
class Prepared:
    """A spooled instance in the look-ahead window, in arrival order (its syntax chosen by the pool
    worker, or by :meth:`Destination.plan` without a pool).

    ``plan``: None = send inline (:meth:`Destination.send`, no pool) or, with a ``future``, in what
    the pool worker chose and wrote (:func:`~dicomproxy.transcode.codec.convert_for`: the spooled
    file itself when it goes as held, else ``tmp``); a SendResult = planning failed (re-planned by
    ``send_with_retries``, which reports it); a syntax = send the spooled file as it is.
    """

    item: SpooledInstance
    plan: str | SendResult | None = None
    future: Future[TranscodeResult] | None = None
    tmp: Path | None = None
    pool: TranscodePool | None = None

    @property
    def ready(self) -> bool:
        """Its conversion (if any) is done: it can be handed to a lane."""
        return self.future is None or self.future.done()

    def again(self) -> Prepared:
        """To be sent again after a re-open: unconverted (a prepared file may be gone)."""
        return Prepared(self.item)

    def discard(self) -> None:
        """Not to be sent (job stopped): cancel the conversion, or delete its file once written."""
        future, tmp = self.future, self.tmp
        if future is None or tmp is None or future.cancel():
            return
        future.add_done_callback(lambda _: tmp.unlink(missing_ok=True))


class InstanceSender:
    """Prepares and sends the instances of one job (``label``, e.g. ``job 12``)."""

    def __init__(
        self,
        proxy: ProxyConfig,
        pools: Callable[[], TranscodePool],
        drop_pool: Callable[[TranscodePool], None],
        job_id: int,
    ) -> None:
        self.proxy = proxy
        self._pools = pools
        self._drop = drop_pool
        self.job_id = job_id
        self.label = f"job {job_id}"

    def prepare(self, forwarder: Destination, item: SpooledInstance, use_pool: bool) -> Prepared:
        """Hand ``item`` to the pool, which chooses its syntax and converts it if it must (the
        header is read there, not on this thread); no accepted context: fail it here."""
        if not use_pool:
            return Prepared(item)
        accepted = forwarder.accepted(item.sop_class_uid)
        if not accepted:
            return Prepared(item, forwarder.plan(item))  # the failure, without reading the file
        tmp = forwarder.converted_path(item)
        pool = self._pools()
        try:
            future = pool.submit_for(item.path, tmp, tuple(accepted), forwarder.policy)
        except BrokenProcessPool:
            self._drop(pool)
            return Prepared(item)  # converted inline; the next instance gets a new pool
        except RuntimeError:  # the pool was shut down (the proxy is stopping)
            return Prepared(item)
        return Prepared(item, None, future, tmp, pool)

    def send(self, forwarder: Destination, prepared: Prepared) -> SendResult | None:
        """Send one instance (nothing recorded); None when a C-MOVE destination's association was
        lost under it and may be re-opened (the caller reconnects and sends it again). Safe on a
        lane thread: it touches only ``forwarder`` and the instance's own files."""
        item = prepared.item
        proxy = self.proxy
        # A C-MOVE destination is reconnected by the pump or its lane, not here.
        defer = forwarder.can_reconnect and proxy.reconnect_window > 0
        try:
            sent_as = self._sent_as(prepared)
            if isinstance(sent_as, SendResult):
                return sent_as
            res = forwarder.store(
                item, sent_as, proxy.retries, proxy.retry_delay, self.label, reconnect=not defer
            )
        finally:
            if prepared.tmp is not None:
                prepared.tmp.unlink(missing_ok=True)
        if defer and res.status is None and not forwarder.alive:
            return None
        return res

    def send_batch(self, forwarder: Destination, batch: list[Prepared]) -> list[SendResult]:
        """Send ``batch`` together (:meth:`Destination.store_batch`, one STOW-RS request); one
        result per instance, in order (nothing recorded)."""
        results: list[SendResult | None] = [None] * len(batch)
        todo: list[tuple[int, SpooledInstance, tuple[Path, str] | None]] = []
        try:
            for k, prepared in enumerate(batch):
                sent_as = self._sent_as(prepared)
                if isinstance(sent_as, SendResult):
                    results[k] = sent_as
                else:
                    todo.append((k, prepared.item, sent_as))
            sent = forwarder.store_batch(
                [(item, sent_as) for _, item, sent_as in todo],
                self.proxy.retries,
                self.proxy.retry_delay,
                self.label,
            )
            for (k, _, _), res in zip(todo, sent, strict=True):
                results[k] = res
        finally:
            for prepared in batch:
                if prepared.tmp is not None:
                    prepared.tmp.unlink(missing_ok=True)
        return [res or SendResult(None, error="not sent") for res in results]

    def _sent_as(self, prepared: Prepared) -> tuple[Path, str] | SendResult | None:
        """The file and syntax ``prepared`` goes in (the pool's conversion, or the spooled file as
        planned), None when it is planned and converted inline by the destination, or its failure."""
        item = prepared.item
        if prepared.future is not None:
            converted, res = self._converted(prepared)
            if res is not None:
                return res
            assert converted is not None
            if converted.path != item.path:  # converted, not sent as held
                events.publish(events.Transcoded(self.job_id, converted.transfer_syntax, converted.seconds))
            return (converted.path, converted.transfer_syntax)
        if isinstance(prepared.plan, str):  # passed through as it is held
            return (item.path, prepared.plan)
        return None  # no pool, or planning failed (re-planned and reported by the destination)

    def _converted(self, prepared: Prepared) -> tuple[TranscodeResult | None, SendResult | None]:
        """The pool's conversion, or the instance's failure (never the job's)."""
        assert prepared.future is not None
        try:
            return prepared.future.result(), None
        except CannotTranscode as exc:  # nothing accepted can carry it (0xC010)
            return None, SendResult(exc.status, error=str(exc))
        except ConversionFailed as exc:
            return None, SendResult(Status.UNABLE_TO_PROCESS, exc.target, error=str(exc))
        except Exception as exc:  # the pool itself (a worker died)
            if isinstance(exc, BrokenProcessPool) and prepared.pool is not None:
                self._drop(prepared.pool)
            return None, SendResult(Status.UNABLE_TO_PROCESS, error=f"cannot convert: {exc}")

    def reopen_quietly(self, forwarder: Destination, stop: threading.Event) -> bool:
        """A lane's re-open of its lost association: backoff for ``[proxy] reconnect_window``,
        without Pending responses (the pump's thread keeps answering). True when it is back."""
        window = self.proxy.reconnect_window
        if window <= 0:
            return False
        started = time.monotonic()
        deadline = started + window
        delay = RECONNECT_FIRST_DELAY
        LOG.warning("%s: an onward association was lost; reconnecting for up to %.0f s", self.label, window)
        while not stop.is_set():
            if forwarder.reconnect():
                LOG.info("%s: onward association back after %.1f s", self.label, time.monotonic() - started)
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            stop.wait(min(delay, deadline - now))
            delay = min(delay * 2, MAX_RETRY_DELAY)
        return False

    def reopen_answering(
        self,
        state: JobState,
        forwarder: Destination,
        pending_interval: float,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
    ) -> Generator[RetrieveResponse, None, bool]:
        """The pump's re-open of its one lost C-MOVE destination association: backoff for up to
        ``[proxy] reconnect_window`` seconds, Pending responses going on meanwhile (every
        ``pending_interval``) so the requester does not time out. True when it is back."""
        window = self.proxy.reconnect_window
        started = time.monotonic()
        deadline = started + window
        delay = RECONNECT_FIRST_DELAY
        last_pending = started
        LOG.warning("job %d: destination lost mid-study; reconnecting for up to %.0f s", state.job_id, window)
        while True:
            if is_cancelled() or not alive():
                return False
            if forwarder.reconnect():
                LOG.info(
                    "job %d: destination back after %.1f s; resending what it did not confirm",
                    state.job_id,
                    time.monotonic() - started,
                )
                return True
            now = time.monotonic()
            if now >= deadline:
                LOG.warning("job %d: destination not back within %.0f s", state.job_id, window)
                return False
            pause_until = min(now + delay, deadline)
            while (left := pause_until - time.monotonic()) > 0:
                time.sleep(min(left, pending_interval))
                if state.counted and time.monotonic() - last_pending >= pending_interval:
                    last_pending = time.monotonic()
                    yield state.response(Status.PENDING)  # the requester's DIMSE timer

            delay = min(delay * 2, MAX_RETRY_DELAY)


class InlineLane:
    """One onward association driven on the pump's thread, with the interface of
    :class:`~dicomproxy.relay.lanes.Lanes`: :meth:`submit` sends at once and keeps the result
    for :meth:`take`. When the association is lost under an instance, that instance waits in
    :attr:`lost` for the pump to reconnect (with Pending responses) or give up."""

    unopened = 0
    bytes_out = 0  # the forwarder counts its own bytes
    in_flight = 0

    def __init__(
        self, forwarder: Destination, send: Callable[[Destination, Prepared], SendResult | None]
    ) -> None:
        self.forwarder = forwarder
        self._send = send
        self._results: list[tuple[Prepared, SendResult]] = []
        #: The instance whose association was lost under it (not recorded yet).
        self.lost: Prepared | None = None

    @property
    def up(self) -> int:
        return 1 if self.forwarder.alive or self.lost is not None else 0

    @property
    def free(self) -> bool:
        return self.lost is None and self.forwarder.alive

    def submit(self, work: Prepared) -> None:
        res = self._send(self.forwarder, work)
        if res is None:
            self.lost = work
        else:
            self._results.append((work, res))

    def take(self, timeout: float) -> list[tuple[Prepared, SendResult]]:
        out, self._results = self._results, []
        return out

    def close(self, wait: float) -> tuple[list[tuple[Prepared, SendResult]], list[Prepared]]:
        left = [self.lost] if self.lost is not None else []
        self.lost = None
        return self.take(0), left

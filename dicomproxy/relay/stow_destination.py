"""A DICOMweb STOW-RS destination (PS3.18 10.5): ``[[peers]] kind = "dicomweb"``.

:class:`StowDestination` is a :class:`~dicomproxy.relay.destinations.Destination` like the C-STORE
:class:`~dicomproxy.relay.forward.Forwarder`: the pump, the recorder, the journal and push use it
unchanged. What differs is inside:

- **Syntax.** The syntaxes it "accepts" for a SOP class are those a C-STORE would propose for it
  (:func:`~dicomproxy.transcode.proposed_syntaxes`: the compression mode's targets, then what the
  archives send, then uncompressed), so :func:`~dicomproxy.relay.forward.plan_instance` and the
  conversion pool choose and convert exactly as for a C-STORE peer that accepts every context.
- **Batches.** Up to ``max_batch`` instances and ``max_batch_mb`` MiB go in one request
  (:meth:`store_batch`, driven by :class:`~dicomproxy.relay.batches.BatchLane`).
- **Results, per instance** (PS3.18 10.5.3): in the Referenced SOP Sequence = stored (Success, or
  Warning with its Warning Reason: 0xB000 coercion, 0xB006 elements discarded, 0xB007 data set
  does not match); in the Failed SOP Sequence = failed with its Failure Reason, tried again only
  for 0xA7xx Out of Resources (PS3.4 B.2.3, :attr:`SendResult.transient`), final otherwise
  (0xA900, 0xC000, 0x0122 …); named nowhere = not confirmed, tried again (even after a 200: a
  confirmation is what the server names, never what it leaves out).
- **HTTP** (PS3.18 10.5.3.1): 429 and 503 wait for ``Retry-After`` (at most
  :data:`MAX_RETRY_AFTER` s); other 5xx and network errors (the connection dropped mid-request)
  are tried again with backoff (``[proxy] retries``, ``retry_delay`` doubling); any other 4xx is
  final for the request's instances. After the last attempt failed without an answer the
  destination is down (:attr:`alive` False): the pump stops as for a lost association, and
  push holds the destination.

An instance sent again after a dropped connection may reach the server twice; STOW-RS stores by
SOP Instance UID, so the server keeps one, and the journal records each instance once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dicomproxy.config import Config, PeerConfig
from dicomproxy.errors import DestinationUnavailable
from dicomproxy.identity import Coercer
from dicomproxy.pacs.client import RECEIVE_SYNTAXES
from dicomproxy.relay.forward import MAX_RETRY_DELAY, SendResult, plan_instance
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.spool import SpooledInstance
from dicomproxy.status import Status
from dicomproxy.transcode import Policy, policy_for, proposed_syntaxes, transcode_file
from dicomproxy.transport.rewritten import Loaded, Rewritten
from dicomproxy.transport.stow import Part, StowClient, StowReply

LOG = logging.getLogger("dicomproxy.stow")

#: Longest ``Retry-After`` honoured before one attempt (seconds); a longer one ends the attempts.
MAX_RETRY_AFTER = 300.0
#: HTTP statuses that ask to come back later (RFC 6585 4, RFC 9110 15.6.4).
COME_BACK = (429, 503)


@dataclass
class _Out:
    """One instance of a batch on its way: what is sent, what to delete afterwards."""

    item: SpooledInstance
    part: Part | None = None
    result: SendResult | None = None
    size: int = 0
    scratch: list[Path] = field(default_factory=list)
    #: The SOP Instance UID sent (a corrected copy's is not the spooled one's): what the reply names.
    uid: str = ""


class StowDestination:
    """Stores a job's instances at one STOW-RS endpoint (module docstring)."""

    can_reconnect = False  # no association: a dropped connection is simply tried again

    def __init__(
        self, client: StowClient, policy: Policy, work_dir: Path, max_batch: int, max_batch_mb: int
    ) -> None:
        self.client = client
        self.policy = policy
        self.work_dir = work_dir
        self.max_batch = max_batch
        self.max_bytes = max_batch_mb * 2**20
        self.bytes_out = 0
        self.throttle: Callable[[int], None] | None = None
        self.on_converted: Callable[[str, float], None] | None = None
        self.coercer: Coercer | None = None
        self._down = False
        self._accepted: dict[str, list[str]] = {}

    @property
    def alive(self) -> bool:
        return not self._down

    def reconnect(self) -> bool:
        return self.alive

    def another(self, acse_timeout: float | None = None) -> StowDestination:
        raise DestinationUnavailable("a STOW-RS destination sends on one connection pool")

    def accepted(self, sop_class_uid: str) -> list[str]:
        if sop_class_uid not in self._accepted:
            syntaxes = [str(ts) for ts in RECEIVE_SYNTAXES]
            self._accepted[sop_class_uid] = proposed_syntaxes(self.policy, sop_class_uid, syntaxes)
        return list(self._accepted[sop_class_uid])

    def plan(self, item: SpooledInstance) -> str | SendResult:
        return plan_instance(self.policy, self.accepted(item.sop_class_uid), item)

    def converted_path(self, item: SpooledInstance) -> Path:
        return self.work_dir / f"{item.path.stem}.out.dcm"

    def store(
        self,
        item: SpooledInstance,
        prepared: tuple[Path, str] | None,
        retries: int,
        delay: float,
        label: str,
        *,
        reconnect: bool = True,
    ) -> SendResult:
        return self.store_batch([(item, prepared)], retries, delay, label)[0]

    def store_batch(
        self,
        items: list[tuple[SpooledInstance, tuple[Path, str] | None]],
        retries: int,
        delay: float,
        label: str,
    ) -> list[SendResult]:
        """Store ``items`` in requests of at most ``max_batch`` instances / ``max_batch_mb``
        MiB; one result per instance, in order."""
        outs = [self._ready(item, prepared) for item, prepared in items]
        try:
            for batch in self._batches([o for o in outs if o.result is None]):
                self._send(batch, retries, delay, label)
        finally:
            for o in outs:
                for path in o.scratch:
                    path.unlink(missing_ok=True)
        return [o.result or SendResult(None, error="not sent") for o in outs]

    def close(self) -> None:
        self.client.close()

    # --- one instance made ready: planned, converted, given the view's identity ---

    def _ready(self, item: SpooledInstance, prepared: tuple[Path, str] | None) -> _Out:
        out = _Out(item, uid=item.sop_instance_uid)
        if prepared is None:
            target = self.plan(item)
            if isinstance(target, SendResult):
                out.result = target
                return out
            path = item.path
            if target != item.transfer_syntax:  # converted inline, as Forwarder.send does
                tmp = self.converted_path(item)
                out.scratch.append(tmp)
                started = time.thread_time()
                try:
                    path = transcode_file(item.path, tmp, target, self.policy).path
                except Exception as exc:
                    out.result = SendResult(
                        Status.UNABLE_TO_PROCESS, target, error=f"cannot convert to {target}: {exc}"
                    )
                    return out
                if self.on_converted is not None:
                    self.on_converted(target, time.thread_time() - started)
            prepared = (path, target)
        path, syntax = prepared
        source: Path | Rewritten = path
        if self.coercer is not None:
            spare = path.with_name(f"{path.stem}.id.dcm")
            out.scratch.append(spare)
            try:
                sent = self.coercer.rewrite(path, spare)  # given a path: never a Loaded file
                source = sent.path if isinstance(sent, Loaded) else sent
                out.uid = self.coercer.sent_uid(item.sop_instance_uid)
            except Exception as exc:  # an unreadable header: not sent with the PACS's identity
                out.result = SendResult(
                    Status.UNABLE_TO_PROCESS, syntax, error=f"cannot give it the view's identity: {exc}"
                )
                return out
        out.part = Part(source, syntax)
        out.size = out.part.size
        return out

    def _batches(self, outs: list[_Out]) -> list[list[_Out]]:
        batches: list[list[_Out]] = []
        size = 0
        for o in outs:
            if not batches or len(batches[-1]) >= self.max_batch or size + o.size > self.max_bytes:
                batches.append([])
                size = 0
            batches[-1].append(o)
            size += o.size
        return batches

    # --- one batch: requests until each instance has its final result ---

    def _send(self, batch: list[_Out], retries: int, delay: float, label: str) -> None:
        left = batch
        why = ""
        wait: float | None = None
        answered = False
        for attempt in range(retries + 1):
            if attempt:
                pause = max(min(delay * 2 ** (attempt - 1), MAX_RETRY_DELAY), wait or 0.0)
                if pause > MAX_RETRY_AFTER:
                    break
                LOG.warning(
                    "%s: STOW-RS of %d instance(s) failed (%s); retry %d of %d in %.1f s",
                    label,
                    len(left),
                    why,
                    attempt,
                    retries,
                    pause,
                )
                time.sleep(pause)
            wait = None
            try:
                reply = self.client.post([o.part for o in left if o.part is not None])
            except (httpx.HTTPError, OSError) as exc:  # no answer: connect/read/write errors, a dropped
                # connection, a spool file that could not be read while the body was made
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                answered = False
                continue
            why = reply.reason
            if reply.status_code in COME_BACK or reply.status_code >= 500:
                wait = reply.retry_after if reply.status_code in COME_BACK else None
                answered = False
                continue
            answered = True
            if 400 <= reply.status_code < 500 and reply.status_code != 409:
                code = Status.NOT_AUTHORIZED if reply.status_code in (401, 403) else Status.UNABLE_TO_PROCESS
                for o in left:
                    o.result = SendResult(
                        code, o.part.transfer_syntax if o.part else "", error=f"STOW-RS: {why}"
                    )
                return
            left = [o for o in left if not self._settle(o, reply)]
            if not left:
                return
        for o in left:
            if o.result is None or not answered:
                o.result = SendResult(None, o.part.transfer_syntax if o.part else "", error=f"STOW-RS: {why}")
        if not answered:
            self._down = True
            LOG.warning("%s: STOW-RS destination not answering (%s); giving up for now", label, why)

    def _settle(self, o: _Out, reply: StowReply) -> bool:
        """Record ``reply``'s word on ``o``; True when it is final (not to be sent again)."""
        assert o.part is not None
        uid, syntax = o.uid, o.part.transfer_syntax
        if uid in reply.failed:
            code = reply.failed[uid]
            o.result = SendResult(code, syntax, error=f"STOW-RS Failure Reason 0x{code:04X}")
            return not o.result.transient
        if uid in reply.stored:  # named as stored (an instance it does not name is not confirmed)
            warning = reply.stored.get(uid)
            o.result = SendResult(
                warning or Status.SUCCESS,
                syntax,
                o.size,
                error=f"STOW-RS Warning Reason 0x{warning:04X}" if warning else "",
            )
            self.bytes_out += o.size
            if self.throttle is not None:
                self.throttle(o.size)
            return True
        if reply.status_code == 409:  # Conflict: none stored (10.5.3.1); this one not named
            o.result = SendResult(Status.UNABLE_TO_PROCESS, syntax, error=f"STOW-RS: {reply.reason}")
            return True
        o.result = SendResult(None, syntax, error="not named in the STOW-RS response")
        return False


class StowPeer:
    """``[[peers]] kind = "dicomweb"``: the peer's compression, its STOW-RS endpoint."""

    name = "dicomweb"

    def opener(
        self,
        config: Config,
        peer: PeerConfig,
        originator: tuple[str, int] | None,
        throttle: Callable[[int], None] | None,
    ) -> Callable[[JobState, list[str], Path], StowDestination]:
        web = peer.dicomweb
        if web is None:
            raise DestinationUnavailable(f"peer {peer.ae_title} has no DICOMweb url")

        def opener(state: JobState, sop_classes: list[str], work_dir: Path) -> StowDestination:
            client = StowClient(web, peer.tls, config.proxy.dimse_timeout, 10.0)
            dest = StowDestination(
                client, policy_for(config, peer), work_dir, web.max_batch, web.max_batch_mb
            )
            dest.throttle = throttle
            return dest

        return opener

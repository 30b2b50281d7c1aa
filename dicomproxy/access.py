"""Who may associate with us (PS3.8 7.1.1: A-ASSOCIATE-RJ reasons).

Checked once per association in ``EVT_REQUESTED``: the called AE title must be ours;
the calling AE must be a configured peer (or the PACS, whose C-STOREs arrive during our
own retrievals); a peer must connect from its configured host unless ``check_host`` is
false. Each rejection is logged in one line with the reason and the remote address.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from pynetdicom import evt

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.config.holder import Settings

LOG = logging.getLogger("dicomproxy.access")

# A-ASSOCIATE-RJ (result, source, reason): PS3.8 Table 9-21
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling-AE-title-not-recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called-AE-title-not-recognized
REJECT_NO_REASON = (0x01, 0x01, 0x01)  # rejected-permanent, service-user, no-reason-given
REJECT_LOCAL_LIMIT = (
    0x02,
    0x03,
    0x02,
)  # rejected-transient, service-provider (presentation), local-limit-exceeded


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str = ""
    rjd: tuple[int, int, int] = REJECT_NO_REASON


@lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    """All IP addresses a configured host name stands for (cached; hosts rarely move)."""
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError:
        return frozenset({host})


def host_matches(configured: str, remote_ip: str) -> bool:
    if configured == remote_ip:
        return True
    return remote_ip in _addresses(configured)


def decide(config: Config, calling: str, called: str, remote_ip: str) -> Decision:
    """Whether to accept an association; pure so that it can be tested without sockets."""
    calling = calling.strip()
    if called.strip() != config.proxy.ae_title:
        return Decision(False, f"called AE title {called.strip()!r} is not ours", REJECT_CALLED_AE)
    peer = config.peer(calling)
    if peer is not None:
        if peer.check_host and not host_matches(peer.host, remote_ip):
            return Decision(False, f"peer {calling!r} must connect from {peer.host}", REJECT_CALLING_AE)
        return Decision(True)
    archive = config.archive_for_ae(calling)
    if archive is not None:  # an archive's C-STOREs during our own C-MOVE retrievals
        if not host_matches(archive.host, remote_ip):
            reason = f"archive {calling!r} must connect from {archive.host}"
            return Decision(False, reason, REJECT_CALLING_AE)
        return Decision(True)
    return Decision(False, f"calling AE title {calling!r} is not a configured peer", REJECT_CALLING_AE)


def permitted(config: Config, calling: str, service: str) -> bool:
    """Whether the calling AE may use ``service`` ("echo", "find", "move", "get").

    Handlers call this first and answer 0x0124 "Refused: Not authorized" (PS3.7 Annex C general
    status, :class:`~dicomproxy.errors.NotAuthorized`) when it is false.
    """
    peer = config.peer(calling)
    return peer is not None and service in peer.services


class RejectionLog:
    """One WARNING per remote address per ``window`` seconds; the rest are counted and summarised."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, remote_ip: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(remote_ip, (-1e18, 0))
            if now - last < self.window:
                self._last[remote_ip] = (last, suppressed + 1)
                return
            self._last[remote_ip] = (now, 0)
            if len(self._last) > 4096:  # bound memory under a scan from many addresses
                self._last = {remote_ip: (now, 0)}
        more = f" ({suppressed} more rejection(s) from this address were not logged)" if suppressed else ""
        LOG.warning("association from %s rejected: %s%s", remote_ip, reason, more)


def on_requested(
    event: evt.Event, settings: Settings, log: RejectionLog, others: Callable[[], int] = lambda: 0
) -> None:
    """EVT_REQUESTED handler: reject before any negotiation if ``decide`` says so (with the
    access rules current when the association is requested: a reload applies to the next one),
    or when pynetdicom's associations (this one included) and ``others()`` — the raw acceptors'
    and the query process's, which pynetdicom's own limit does not see — exceed
    ``maximum_associations``: rejected transient, local limit exceeded (PS3.8 9.3.4)."""
    config = settings.current
    assoc = event.assoc
    rq = assoc.requestor.primitive
    if rq is None:  # pragma: no cover - EVT_REQUESTED always carries the A-ASSOCIATE-RQ
        return
    remote_ip = assoc.requestor.address
    decision = decide(config, rq.calling_ae_title, rq.called_ae_title, remote_ip)
    reason, rjd = decision.reason, decision.rjd
    if decision.accept:
        most = int(assoc.ae.maximum_associations)
        if len(assoc.ae.active_associations) + others() <= most:
            return
        reason, rjd = f"more than {most} associations", REJECT_LOCAL_LIMIT
    log.warn(remote_ip, reason)
    events.association_rejected(assoc, rq, reason, rjd[2])
    assoc.acse.send_reject(*rjd)
    assoc.is_rejected = True
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def raw_gate(
    settings: Settings, log: RejectionLog, active: Callable[[], int], maximum: Callable[[], int]
) -> Callable[[str, str, str], tuple[str, tuple[int, int, int]] | None]:
    """The gate of the raw acceptors (:mod:`dicomproxy.transport.raw.acceptance`): the same rules
    as :func:`on_requested` (current at the request), then the limit pynetdicom applies to its own
    associations: ``active()`` (all open now, this one included) above ``maximum()`` → rejected
    transient, local limit exceeded. Logged and published as for pynetdicom's associations."""

    def over_limit() -> str | None:
        most = maximum()
        return f"more than {most} associations" if active() > most else None

    def gate(calling: str, called: str, remote_ip: str) -> tuple[str, tuple[int, int, int]] | None:
        peer = events.Peer(calling.strip(), remote_ip)
        decision = decide(settings.current, calling, called, remote_ip)
        reason, rjd = decision.reason, decision.rjd
        if decision.accept:
            limit = over_limit()
            if limit is None:
                events.publish(events.AssociationAccepted(peer, called.strip()))
                return None
            reason, rjd = limit, REJECT_LOCAL_LIMIT
        log.warn(remote_ip, reason)
        events.publish(events.AssociationRejected(peer, called.strip(), reason, rjd[2]))
        return reason, rjd

    return gate

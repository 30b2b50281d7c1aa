"""Where a job's instances go: the :class:`Destination` interface and one class per kind.

The engine and the pump send to a :class:`Destination` and know nothing of how it carries an
instance. Today's kinds, each a class behind :data:`KINDS` (as mercure's ``dispatch/target_types/``):

- :class:`DicomPeer` (``"dimse"``): a ``[[peers]]`` entry reached by DIMSE C-STORE (PS3.4 B.2) over
  a :class:`~dicomproxy.transport.link.Link` — a C-MOVE destination, a push destination, a retry's;
  a :class:`~dicomproxy.relay.forward.Forwarder` does the sending;
- :class:`~dicomproxy.relay.stow_destination.StowPeer` (``"dicomweb"``): a DICOMweb STOW-RS
  endpoint (PS3.18 10.5); a :class:`~dicomproxy.relay.stow_destination.StowDestination` stores up
  to ``max_batch`` instances per request (:attr:`Destination.max_batch`,
  :class:`~dicomproxy.relay.batches.BatchLane`);
- :func:`requester` : the C-GET requester's own association (PS3.4 C.4.3.2), not a configured kind.

A new kind of destination is a new class that returns a :class:`Destination`; the pump does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pynetdicom.association import Association

from dicomproxy.config import Config, PeerConfig
from dicomproxy.identity import Coercer
from dicomproxy.pacs.client import RECEIVE_SYNTAXES
from dicomproxy.relay.forward import SendResult, contexts_for, open_destination, requester_forwarder
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.spool import SpooledInstance
from dicomproxy.relay.stow_destination import StowPeer
from dicomproxy.transcode import Policy, policy_for


class Destination(Protocol):
    """What the pump sends to (:class:`~dicomproxy.relay.forward.Forwarder` is the DIMSE one)."""

    policy: Policy
    bytes_out: int
    #: Told the bytes sent as they go (push's ``max_mbps``, ``[[bandwidth]]``); None = no cap.
    throttle: Callable[[int], None] | None
    #: Told (transfer syntax, CPU seconds) of each conversion made while sending.
    on_converted: Callable[[str, float], None] | None
    #: Gives each instance the exam view's identity as it goes (docs/identity.md); None = as held.
    coercer: Coercer | None
    #: Most instances one request carries (1: C-STORE; a STOW-RS request carries several).
    max_batch: int

    @property
    def alive(self) -> bool: ...

    @property
    def can_reconnect(self) -> bool: ...

    def accepted(self, sop_class_uid: str) -> list[str]:
        """The transfer syntaxes it takes for ``sop_class_uid`` (empty: it cannot take the class)."""
        ...

    def plan(self, item: SpooledInstance) -> str | SendResult:
        """The syntax ``item`` goes in, or the failure that it cannot go."""
        ...

    def converted_path(self, item: SpooledInstance) -> Path: ...

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
        """Send one instance (``prepared``: the file and syntax chosen for it, else planned
        here), retried within ``retries``; never raises for network problems."""
        ...

    def store_batch(
        self,
        items: list[tuple[SpooledInstance, tuple[Path, str] | None]],
        retries: int,
        delay: float,
        label: str,
    ) -> list[SendResult]:
        """Send up to :attr:`max_batch` instances together (each with its ``prepared`` file, as
        :meth:`store`); one result per instance, in order; never raises for network problems."""
        ...

    def reconnect(self) -> bool: ...

    def another(self, acse_timeout: float | None = None) -> Destination:
        """One more connection to the same destination (raises DestinationUnavailable, 0xC003)."""
        ...

    def close(self) -> None: ...


#: How a job opens its destination: (its state, the onward SOP classes, its spool folder) → Destination.
Opener = Callable[[JobState, list[str], Path], Destination]


class DestinationKind(Protocol):
    """One kind of configured destination."""

    name: str

    def opener(
        self,
        config: Config,
        peer: PeerConfig,
        originator: tuple[str, int] | None,
        throttle: Callable[[int], None] | None,
    ) -> Opener: ...


class DicomPeer:
    """A peer reached by C-STORE: the peer's compression, presentation contexts for the job's
    SOP classes (PS3.8 9.3.2.2: at most 128), ``originator`` as Move Originator (PS3.7 9.1.1.1;
    None when no C-MOVE asked)."""

    name = "dimse"

    def opener(
        self,
        config: Config,
        peer: PeerConfig,
        originator: tuple[str, int] | None,
        throttle: Callable[[int], None] | None,
    ) -> Opener:
        def opener(state: JobState, sop_classes: list[str], work_dir: Path) -> Destination:
            policy = policy_for(config, peer)
            # SOP classes unknown (not all listed, or started before the list): the common ones
            complete = bool(sop_classes) and all(r.sop_class_uid for r in state.expected.values())
            contexts = contexts_for(policy, sop_classes, [str(ts) for ts in RECEIVE_SYNTAXES], complete)
            forwarder = open_destination(peer, config.proxy, contexts, policy, work_dir, originator)
            forwarder.throttle = throttle
            return forwarder

        return opener


#: The configured kinds of destination by ``[[peers]] kind`` (:data:`~dicomproxy.config.PEER_KINDS`).
KINDS: dict[str, DestinationKind] = {DicomPeer.name: DicomPeer(), StowPeer.name: StowPeer()}


def destination_opener(
    config: Config,
    peer: PeerConfig,
    originator: tuple[str, int] | None,
    throttle: Callable[[int], None] | None = None,
) -> Opener:
    """How a job opens its destination, the configured ``peer`` it sends to (by its ``kind``)."""
    return KINDS[peer.kind].opener(config, peer, originator, throttle)


def requester(
    assoc: Association,
    config: Config,
    peer: PeerConfig | None,
    throttle: Callable[[int], None] | None = None,
) -> Opener:
    """C-GET: the sub-operations go on the requester's own association (PS3.4 C.4.3.2), with the
    compression configured for it (if it is a peer) and its ``cap_pulls`` throttle."""

    def opener(state: JobState, sop_classes: list[str], work_dir: Path) -> Destination:
        forwarder = requester_forwarder(assoc, policy_for(config, peer), work_dir, config.proxy.fast_path)
        forwarder.throttle = throttle
        return forwarder

    return opener

"""A correction after delivery journalled, once for every node (IOCM; docs/identity.md): the node
whose insert wins writes one WARNING (UIDs, kind and field names only: no patient data) and
publishes :class:`~dicomproxy.events.CorrectionFound` (the audit trail and ATNA take the patient
IDs from it; ``/metrics`` counts it)."""

from __future__ import annotations

import logging

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.corrections.store import CorrectionStore
from dicomproxy.identity import Identity
from dicomproxy.identity.corrections import Correction

LOG = logging.getLogger("dicomproxy.corrections")


def pushed_to(config: Config, destination: str) -> bool:
    """Whether push delivers this node's new rows to ``destination`` (then push sends a changed
    row's new study and objects, and finds a revised report when it sends the new object)."""
    return config.push.enabled and destination in config.push.destinations


def iocm_of(config: Config, destination: str) -> bool:
    """``[[peers]] iocm`` of the destination (off for a requester that is not a peer)."""
    peer = config.peer(destination)
    return bool(peer is not None and peer.iocm)


def record_correction(
    config: Config,
    store: CorrectionStore,
    destination: str,
    correction: Correction,
    old: Identity | None,
    now: Identity | None,
    object_uid: str = "",
) -> bool:
    """Journal ``correction``; when this call inserted it (not another node, not an earlier pass):
    one WARNING (UIDs, kind and field names only) and :class:`~dicomproxy.events.CorrectionFound`."""
    iocm = iocm_of(config, destination)
    if not store.record(destination, correction, iocm, object_uid):
        return False
    LOG.warning(
        "correction after delivery: study %s at %s: %s%s%s; %s",
        correction.study_uid,
        destination,
        correction.kind.value,
        f" ({', '.join(correction.changed)})" if correction.changed else "",
        f" of {object_uid}" if object_uid else "",
        "a rejection note follows (iocm = true)"
        if iocm
        else "the destination holds it as delivered (iocm = false; see `dicomproxy reconcile`)",
    )
    events.publish(
        events.CorrectionFound(
            destination=destination,
            study_uid=correction.study_uid,
            kind=correction.kind.value,
            changed=correction.changed,
            acted=iocm,
            old_patient_id=old.patient_id if old is not None else "",
            new_patient_id=now.patient_id if now is not None else "",
            relinked_to=correction.relinked_to,
        )
    )
    return True

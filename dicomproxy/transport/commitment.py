"""Storage Commitment Push Model, SCU side (PS3.4 Annex J; SOP Class 1.2.840.10008.1.20.1).

The DIMSE half only — what goes on the wire and what comes back:

- :func:`request_commitment`: one N-ACTION (Action Type 1, "Request Storage Commitment", PS3.4
  J.3.2) with a Transaction UID (0008,1195) and the Referenced SOP Sequence (0008,1199), on an
  association of its own. The SCP may send its N-EVENT-REPORT on that same association (J.3.3):
  ``on_report`` gets it there, and the association stays open up to ``grace`` seconds for it.
- :func:`parse_report`: an N-EVENT-REPORT (Event Type 1: all committed; 2: some failed, with the
  Failed SOP Sequence (0008,1198) and each Failure Reason (0008,1197), J.3.3.1) as a
  :class:`Report`; the status to answer it with if it is malformed.

Which references are asked, journalled and asked again is :mod:`dicomproxy.relay.commitments`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]

from dicomproxy.status import Status
from dicomproxy.transport.net import NoAssociation, Remote, open_association

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.1).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
COMMITMENT_CLASS = str(StorageCommitmentPushModel)
#: N-ACTION Action Type ID "Request Storage Commitment" (PS3.4 Table J.3-1).
REQUEST_COMMITMENT = 1
#: N-EVENT-REPORT Event Type IDs (PS3.4 Table J.3-2).
ALL_COMMITTED, SOME_FAILED = 1, 2
#: Failure Reason when the SCP gave none (PS3.4 J.3.3.1.1: 0x0110 Processing failure).
PROCESSING_FAILURE = 0x0110
#: N-EVENT-REPORT response statuses (PS3.7 10.1.1.1.8) for a report we cannot use.
NO_SUCH_EVENT_TYPE = 0x0113
INVALID_ARGUMENT_VALUE = 0x0115


@dataclass(frozen=True)
class Ref:
    """One referenced instance: SOP Class and SOP Instance UID."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Report:
    """An N-EVENT-REPORT's content: the transaction, the committed UIDs, the failed ones with
    their Failure Reason."""

    transaction_uid: str
    committed: frozenset[str]
    failed: dict[str, int] = field(default_factory=dict)


def action_dataset(transaction_uid: str, refs: Sequence[Ref]) -> Dataset:
    """The N-ACTION-RQ Action Information (PS3.4 Table J.3-1)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for ref in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def parse_report(event_type: int, info: Dataset | None) -> Report | int:
    """The report in an N-EVENT-REPORT's Event Information, or the status to refuse it with."""
    if event_type not in (ALL_COMMITTED, SOME_FAILED):
        return NO_SUCH_EVENT_TYPE
    uid = str(getattr(info, "TransactionUID", "") or "").strip() if info is not None else ""
    if not uid:
        return INVALID_ARGUMENT_VALUE
    committed = frozenset(
        str(item.ReferencedSOPInstanceUID)
        for item in getattr(info, "ReferencedSOPSequence", [])
        if getattr(item, "ReferencedSOPInstanceUID", None)
    )
    failed = {
        str(item.ReferencedSOPInstanceUID): int(getattr(item, "FailureReason", None) or PROCESSING_FAILURE)
        for item in getattr(info, "FailedSOPSequence", [])
        if getattr(item, "ReferencedSOPInstanceUID", None)
    }
    return Report(uid, committed - failed.keys(), failed)


def request_commitment(
    calling_ae: str,
    remote: Remote,
    transaction_uid: str,
    refs: Sequence[Ref],
    on_report: Callable[[Report], int],
    *,
    timeout: float = 30.0,
    grace: float = 1.0,
    tls_args: Sequence[Any] | None = None,
) -> int:
    """Send one N-ACTION; the N-ACTION-RSP status (0x0000: the SCP took the request). Reports
    the SCP sends on this association within ``grace`` seconds go to ``on_report`` (whose return
    is the N-EVENT-REPORT-RSP status). Raises :class:`NoAssociation` when there is no association
    or no response."""
    answered = threading.Event()

    def handle(event: evt.Event) -> tuple[int, None]:
        report = parse_report(int(event.event_type or 0), event.event_information)
        if isinstance(report, int):
            return report, None
        status = on_report(report)
        if report.transaction_uid == transaction_uid:
            answered.set()
        return status, None

    assoc = open_association(
        calling_ae,
        remote,
        add_contexts=lambda ae: ae.add_requested_context(COMMITMENT_CLASS),
        acse_timeout=timeout,
        dimse_timeout=timeout,
        connect_timeout=timeout,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, handle)],  # a report on this association (J.3.3)
    )
    try:
        status, _reply = assoc.send_n_action(
            action_dataset(transaction_uid, refs), REQUEST_COMMITMENT, COMMITMENT_CLASS, COMMITMENT_INSTANCE
        )
        if status is None or "Status" not in status:
            raise NoAssociation(remote, "no N-ACTION response (aborted or timed out)")
        code = int(status.Status)
        if code == Status.SUCCESS:
            answered.wait(grace)
        return code
    finally:
        if assoc.is_established:
            assoc.release()
        assoc.ae.shutdown()


def negotiates(
    calling_ae: str, remote: Remote, *, timeout: float = 10.0, tls_args: Sequence[Any] | None = None
) -> tuple[bool, str]:
    """Whether ``remote`` accepts the Storage Commitment Push Model SOP Class as SCP (one
    association, nothing sent); the reason when not."""
    try:
        assoc = open_association(
            calling_ae,
            remote,
            add_contexts=_with_verification,  # so that a peer without the class still associates
            acse_timeout=timeout,
            connect_timeout=timeout,
            tls_args=tls_args,
        )
    except NoAssociation as exc:
        return False, exc.detail
    try:
        if any(cx.abstract_syntax == COMMITMENT_CLASS for cx in assoc.accepted_contexts):
            return True, "Storage Commitment Push Model accepted"
        return False, "Storage Commitment Push Model (1.2.840.10008.1.20.1) not accepted"
    finally:
        assoc.release()
        assoc.ae.shutdown()


def _with_verification(ae: AE) -> None:
    ae.add_requested_context(COMMITMENT_CLASS)
    ae.add_requested_context(Verification)

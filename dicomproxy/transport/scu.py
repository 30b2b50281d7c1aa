"""C-MOVE / C-GET requester side, for admins (``dicomproxy move|get``) and tests: any AE, progress callbacks.

Both return a :class:`RetrieveSummary` built from the final response (PS3.4 C.4.2.1.4);
C-GET also writes the received instances into ``out_dir`` (if given).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from dicomproxy.status import Status
from dicomproxy.transport.net import NoAssociation, Remote, open_association
from dicomproxy.transport.pynetdicom_compat import valid_context_id

#: Storage classes proposed by ``get`` (128 contexts at most, one is the Q/R GET model).
GET_STORAGE_CLASSES: list[str] = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts][:120]


@dataclass
class RetrieveSummary:
    status: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None
    failed_uids: list[str] = field(default_factory=list)
    comment: str = ""
    pending: int = 0
    received: int = 0
    error: str = ""

    @property
    def category(self) -> str:
        return "Failure" if self.status is None else code_to_category(self.status)

    def line(self) -> str:
        status = "none" if self.status is None else f"0x{self.status:04X} ({self.category})"
        text = (
            f"status {status}: completed={self.completed} failed={self.failed} "
            f"warning={self.warning} received={self.received}"
        )
        if self.comment:
            text += f" comment={self.comment!r}"
        if self.error:
            text += f" error={self.error}"
        return text


def identifier(
    level: str = "STUDY",
    *,
    study_uids: Sequence[str] = (),
    series_uids: Sequence[str] = (),
    sop_uids: Sequence[str] = (),
    accession: str | None = None,
    patient_id: str | None = None,
) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    if study_uids:
        ds.StudyInstanceUID = list(study_uids) if len(study_uids) > 1 else study_uids[0]
    if series_uids:
        ds.SeriesInstanceUID = list(series_uids) if len(series_uids) > 1 else series_uids[0]
    if sop_uids:
        ds.SOPInstanceUID = list(sop_uids) if len(sop_uids) > 1 else sop_uids[0]
    if accession is not None:
        ds.AccessionNumber = accession
    if patient_id is not None:
        ds.PatientID = patient_id
    return ds


def _collect(
    summary: RetrieveSummary,
    responses: Any,
    progress: Callable[[RetrieveSummary], None] | None,
    cancel: Callable[[RetrieveSummary], bool] | None,
    send_cancel: Callable[[], None],
) -> None:
    cancelled = False
    for status, ds in responses:
        if "Status" not in status:
            summary.error = "no response (timeout, abort or association lost)"
            return
        summary.status = int(status.Status)
        summary.completed = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
        summary.failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
        summary.warning = int(status.get("NumberOfWarningSuboperations", 0) or 0)
        remaining = status.get("NumberOfRemainingSuboperations", None)
        summary.remaining = int(remaining) if remaining is not None else None
        summary.comment = str(status.get("ErrorComment", "") or "")
        if ds is not None and "FailedSOPInstanceUIDList" in ds:
            value = ds.FailedSOPInstanceUIDList
            summary.failed_uids = [str(v) for v in ([value] if isinstance(value, str) else value) if v]
        if code_to_category(summary.status) == "Pending":
            summary.pending += 1
            if progress is not None:
                progress(summary)
            if not cancelled and cancel is not None and cancel(summary):
                cancelled = True
                send_cancel()


def _retrieve(
    summary: RetrieveSummary,
    remote: Remote,
    model: Any,
    associate: Callable[[], Any],
    send: Callable[[Any], Any],
    progress: Callable[[RetrieveSummary], None] | None,
    cancel: Callable[[RetrieveSummary], bool] | None,
) -> RetrieveSummary:
    """Open the association (``associate``), send the C-MOVE or C-GET request on it (``send``)
    and collect its responses into ``summary``, with a C-CANCEL (PS3.4 C.4.2.2) when ``cancel``
    says so; the association is released (or was lost) when it returns."""
    try:
        assoc = associate()
    except NoAssociation:
        summary.error = f"no association with {remote}"
        return summary
    try:
        cx_id = valid_context_id(assoc, model, "scu")
        responses = send(assoc)
        _collect(summary, responses, progress, cancel, lambda: assoc.send_c_cancel(1, cx_id))
    finally:
        if assoc.is_established:
            assoc.release()
        assoc.ae.shutdown()
    return summary


def move(
    remote: Remote,
    destination: str,
    query: Dataset,
    *,
    calling_ae: str = "DICOMPROXY-SCU",
    patient_root: bool = False,
    timeout: float = 300.0,
    progress: Callable[[RetrieveSummary], None] | None = None,
    cancel: Callable[[RetrieveSummary], bool] | None = None,
    tls_args: Sequence[Any] | None = None,
) -> RetrieveSummary:
    """C-MOVE ``query`` to ``remote`` with Move Destination ``destination`` (``tls_args``: DICOM
    TLS, :func:`dicomproxy.transport.tls.client_tls_args`)."""
    model = (
        PatientRootQueryRetrieveInformationModelMove
        if patient_root
        else StudyRootQueryRetrieveInformationModelMove
    )
    return _retrieve(
        RetrieveSummary(),
        remote,
        model,
        lambda: open_association(
            calling_ae,
            remote,
            add_contexts=lambda ae: ae.add_requested_context(model),
            dimse_timeout=timeout,
            network_timeout=timeout,
            tls_args=tls_args,
        ),
        lambda assoc: assoc.send_c_move(query, destination, model, msg_id=1),
        progress,
        cancel,
    )


def get(
    remote: Remote,
    query: Dataset,
    *,
    calling_ae: str = "DICOMPROXY-SCU",
    out_dir: Path | None = None,
    patient_root: bool = False,
    timeout: float = 300.0,
    syntaxes: Sequence[str] = (),
    store_status: Callable[[Dataset], int] | None = None,
    progress: Callable[[RetrieveSummary], None] | None = None,
    cancel: Callable[[RetrieveSummary], bool] | None = None,
) -> RetrieveSummary:
    """C-GET ``query`` from ``remote``; instances are written to ``out_dir`` as ``<SOP Instance UID>.dcm``."""
    model = (
        PatientRootQueryRetrieveInformationModelGet
        if patient_root
        else StudyRootQueryRetrieveInformationModelGet
    )
    # Explicit VR LE first: pynetdicom acceptors take the first proposed syntax they support
    offered = list(syntaxes) or [
        ExplicitVRLittleEndian,
        *(t for t in ALL_TRANSFER_SYNTAXES if t != ExplicitVRLittleEndian),
    ]

    def contexts(ae: Any) -> None:
        ae.add_requested_context(model)
        for uid in GET_STORAGE_CLASSES[:127]:
            ae.add_requested_context(uid, offered)

    roles: Any = [build_role(uid, scp_role=True) for uid in GET_STORAGE_CLASSES[:127]]
    summary = RetrieveSummary()
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            ds.save_as(out_dir / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        with lock:
            summary.received += 1
        return store_status(ds) if store_status is not None else Status.SUCCESS

    return _retrieve(
        summary,
        remote,
        model,
        lambda: open_association(
            calling_ae,
            remote,
            add_contexts=contexts,
            dimse_timeout=timeout,
            network_timeout=timeout,
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        ),
        lambda assoc: assoc.send_c_get(query, model, msg_id=1),
        progress,
        cancel,
    )

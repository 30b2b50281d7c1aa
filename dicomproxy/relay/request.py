"""A C-MOVE/C-GET request at the boundary: who asks what, and which visible studies it names.

:func:`retrieve_request` normalises the pynetdicom event (access rule for the calling AE, the
identifier decoded); :func:`parse_keys` turns the identifier into the studies to fetch (PS3.4
C.4.2.2.1, Patient and Study Root), each with the exam-view row that routes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomproxy.access import permitted
from dicomproxy.config import Config
from dicomproxy.errors import InvalidIdentifier, NotAuthorized
from dicomproxy.pacs.client import RetrieveKey
from dicomproxy.pacs.routing import StudyRef


class StudyResolver(Protocol):
    """``dicomproxy.view.repository.ExamView`` (branch view): only visible Study Instance UIDs."""

    def resolve_study_uids(
        self, *, study_uids: Sequence[str] = (), accession: str | None = None, patient_id: str | None = None
    ) -> list[str]: ...


def _resolve(resolver: StudyResolver, **keys: Any) -> list[StudyRef]:
    """Visible studies with their routing fields (``ExamView.resolve_studies``); a resolver that
    only knows UIDs gives empty Sysid/ExamineType, which only a catch-all ``[pacs]`` serves."""
    resolve_studies = getattr(resolver, "resolve_studies", None)
    if callable(resolve_studies):
        return list(resolve_studies(**keys))
    return [StudyRef(uid) for uid in resolver.resolve_study_uids(**keys)]


@dataclass(frozen=True)
class RetrieveRequest:
    kind: str  # "move" | "get"
    identifier: Dataset
    calling_ae: str
    calling_host: str = ""
    move_destination: str = ""
    #: Message ID (0000,0110) of the C-MOVE/C-GET request.
    message_id: int = 0


def _values(ds: Dataset, keyword: str) -> list[str]:
    """A key's values: multi-valued (list of UID matching, PS3.4 C.2.2.2.2) or single; blanks dropped."""
    if keyword not in ds or ds[keyword].value in (None, ""):
        return []
    value = ds[keyword].value
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def parse_keys(
    identifier: Dataset, resolver: StudyResolver
) -> tuple[str, list[tuple[RetrieveKey, StudyRef]]]:
    """The identifier's level and the visible studies it names (PS3.4 C.4.2.2.1, Patient/Study Root),
    each with the view row that routes it."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    studies = _values(identifier, "StudyInstanceUID")
    if level == "PATIENT":
        patient = _values(identifier, "PatientID")
        if len(patient) != 1:
            raise InvalidIdentifier("PATIENT level needs one Patient ID")
        return level, [(RetrieveKey(ref.uid), ref) for ref in _resolve(resolver, patient_id=patient[0])]
    if level == "STUDY":
        if studies:
            return level, [(RetrieveKey(ref.uid), ref) for ref in _resolve(resolver, study_uids=studies)]
        accession = _values(identifier, "AccessionNumber")
        patient = _values(identifier, "PatientID")
        if len(patient) > 1:  # Patient ID is single-valued (PS3.4 C.6.2.1.2); a list is malformed
            raise InvalidIdentifier("STUDY level takes one Patient ID")
        if len(accession) == 1:
            refs = _resolve(resolver, accession=accession[0], patient_id=patient[0] if patient else None)
            return level, [(RetrieveKey(ref.uid), ref) for ref in refs]
        if len(patient) == 1:
            return level, [(RetrieveKey(ref.uid), ref) for ref in _resolve(resolver, patient_id=patient[0])]
        raise InvalidIdentifier("STUDY level needs Study Instance UID, Accession Number or Patient ID")
    if level in ("SERIES", "IMAGE"):
        series = _values(identifier, "SeriesInstanceUID")
        sops = _values(identifier, "SOPInstanceUID") if level == "IMAGE" else []
        if len(studies) != 1 or not series or (level == "IMAGE" and (len(series) != 1 or not sops)):
            raise InvalidIdentifier(f"{level} level needs the unique keys of the levels above")
        visible = _resolve(resolver, study_uids=studies)
        return level, [(RetrieveKey(ref.uid, tuple(series), tuple(sops)), ref) for ref in visible]
    raise InvalidIdentifier("Query/Retrieve Level must be PATIENT, STUDY, SERIES or IMAGE")


def retrieve_request(event: Any, kind: str, config: Config | None = None) -> RetrieveRequest:
    """Normalise the pynetdicom event at the boundary.

    Raises NotAuthorized (0x0124) when ``config`` says the peer may not use ``kind``,
    InvalidIdentifier when the identifier cannot be decoded.
    """
    calling = str(event.assoc.requestor.ae_title).strip()
    if config is not None and not permitted(config, calling, kind):
        raise NotAuthorized(f"C-{kind.upper()} not permitted for {calling}")
    try:
        identifier = event.identifier
    except Exception as exc:
        raise InvalidIdentifier(f"cannot decode the identifier: {exc}") from None
    requestor = event.assoc.requestor
    dest = event.move_destination if kind == "move" else ""
    if isinstance(dest, bytes):
        dest = dest.decode("ascii", "replace")
    return RetrieveRequest(
        kind,
        identifier,
        requestor.ae_title.strip(),
        str(requestor.address),
        str(dest or "").strip(),
        int(event.request.MessageID or 0),
    )

"""One study's identity as the exam view names it: what every outgoing instance of it carries.

Built from the study's view rows with the same functions the C-FIND answers use
(:func:`dicomproxy.mapping.study_attributes`, the destination's ``name_style``), so a cloud finds
in the images exactly what it found by C-FIND. The issuers' Universal Entity IDs come from
``[hospital] issuers`` / ``accession_issuer`` (PS3.3 C.7.1.1, Table 10-17).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dicomproxy.config import HospitalConfig, NameStyle, UniversalId
from dicomproxy.mapping import study_attributes


@dataclass(frozen=True)
class Identity:
    """The patient and study identifiers the view gives one study (empty = the view has no value)."""

    study_uid: str
    patient_id: str  # (0010,0020) LO
    issuer: str  # (0010,0021) Issuer of Patient ID, LO: the view's PIDAssigningAuthority
    patient_name: str  # (0010,0010) PN, in the destination's name style
    birth_date: str  # (0010,0030) DA
    sex: str  # (0010,0040) CS
    accession: str  # (0008,0050) SH
    institution: str  # (0008,0080) LO, the view's HospitalName
    #: Issuer of Patient ID Qualifiers Sequence (0010,0024): the issuer's Universal Entity ID.
    issuer_uid: UniversalId | None = None
    #: Issuer of Accession Number Sequence (0008,0051).
    accession_issuer: UniversalId | None = None

    def values(self) -> dict[str, str]:
        """DICOM keyword → value of the single-valued attributes (the order they are checked in)."""
        return {
            "PatientID": self.patient_id,
            "IssuerOfPatientID": self.issuer,
            "PatientName": self.patient_name,
            "PatientBirthDate": self.birth_date,
            "PatientSex": self.sex,
            "AccessionNumber": self.accession,
            "InstitutionName": self.institution,
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): what the journal keeps of a delivery's identity."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """SHA-256 of :meth:`to_json`: two deliveries carried the same identity iff digests match."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> Identity:
        data: dict[str, Any] = json.loads(text)
        for key in ("issuer_uid", "accession_issuer"):
            if data.get(key) is not None:
                data[key] = UniversalId(**data[key])
        return cls(**data)


def identity_of(
    study_uid: str, rows: Sequence[Mapping[str, Any]], style: NameStyle, hospital: HospitalConfig
) -> Identity:
    """The identity of one study from its view rows (merged as C-FIND merges them)."""
    attrs = study_attributes(study_uid, rows, style)
    issuer = str(attrs["IssuerOfPatientID"])
    accession = str(attrs["AccessionNumber"])
    return Identity(
        study_uid=study_uid,
        patient_id=str(attrs["PatientID"]),
        issuer=issuer,
        patient_name=str(attrs["PatientName"]),
        birth_date=str(attrs["PatientBirthDate"]),
        sex=str(attrs["PatientSex"]),
        accession=accession,
        institution=str(attrs["InstitutionName"]),
        issuer_uid=hospital.issuer(issuer) if issuer else None,
        accession_issuer=hospital.accession_issuer if accession else None,
    )

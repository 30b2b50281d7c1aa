"""The IOCM rejection note: a Key Object Selection Document (PS3.3 A.35.4, SOP Class
1.2.840.10008.5.1.4.1.1.88.59) whose Document Title is from PS3.16 CID 7011 and whose Current
Requested Procedure Evidence Sequence (0040,A375) lists exactly the rejected instances.

Built with highdicom (``highdicom.ko.KeyObjectSelectionDocument``), which writes the SR content
tree (TID 2010), the evidence sequence and the modules of the IOD and checks them; chosen because
it is maintained against the standard and tested against dciodvfy, where a hand-made SR tree is
easy to get subtly wrong.

The note carries the patient and study of the instances it rejects — the identity they were
delivered with (``job_identities``) — so a receiver files it with them (IHE RAD TF-2 RAD-66).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicomproxy.identity.coerce import entity_item
from dicomproxy.identity.corrections import Title
from dicomproxy.identity.model import Identity

#: Key Object Selection Document Storage (PS3.4 B.5).
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
#: (0020,0011) of our rejection notes' series, beside the report series (9901, 9902).
NOTE_SERIES_NUMBER = 9903


@dataclass(frozen=True)
class Delivered:
    """One instance a destination holds: what the note references."""

    sop_class_uid: str
    series_uid: str
    sop_instance_uid: str


def rejection_note(
    identity: Identity,
    instances: Sequence[Delivered],
    title: Title,
    *,
    sop_instance_uid: str,
    series_uid: str,
    manufacturer: str,
    description: str = "",
) -> Dataset:
    """The rejection note of ``instances`` (all of ``identity.study_uid``) with ``title``."""
    if not instances:
        raise ValueError("a rejection note references at least one instance")
    evidence = [_evidence(identity, i) for i in instances]
    content = KeyObjectSelection(
        document_title=Code(title.value, title.scheme, title.meaning),
        referenced_objects=evidence,
        description=description or None,
    )
    doc = KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=NOTE_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        institution_name=identity.institution or None,
    )
    # highdicom's name check warns on an ideographic-only name ("=王小东", PS3.5 6.2.1.2 allows it):
    # the evidence carries a placeholder, the note the view's name
    doc.PatientName = identity.patient_name
    if identity.issuer:  # (0010,0021), (0010,0024): highdicom copies neither from the evidence
        doc.IssuerOfPatientID = identity.issuer
    if identity.issuer_uid is not None:
        doc.IssuerOfPatientIDQualifiersSequence = [entity_item(identity.issuer_uid)]
    if any(not t.isascii() for t in identity.values().values()):
        doc.SpecificCharacterSet = "ISO_IR 192"
    return doc


def _evidence(identity: Identity, ref: Delivered) -> Dataset:
    """What highdicom needs of one referenced instance: its UIDs and its patient and study."""
    ds = Dataset()
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_instance_uid
    ds.SeriesInstanceUID = ref.series_uid
    ds.StudyInstanceUID = identity.study_uid
    ds.PatientID = identity.patient_id
    ds.PatientName = "^"  # set on the note afterwards (see rejection_note)
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.sex
    ds.AccessionNumber = identity.accession
    ds.StudyID = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    return ds

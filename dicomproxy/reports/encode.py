"""Order and report files (the view's OrderFilePath / ReportFilePath) as DICOM objects of the study.

- **Encode**: a PDF becomes an Encapsulated PDF (PS3.3 A.45.1), a JPEG a Secondary Capture Image
  (PS3.3 A.8.1) whose pixel data *is* the JPEG bitstream (JPEG Baseline/Extended transfer
  syntax, PS3.5 A.4.1 — nothing decoded or re-encoded). The type comes from the bytes.
- **Identity**: patient and study attributes from the view row (:func:`study_attributes`, as
  C-FIND answers them); each role (order, report) in a series of its own — one object kind,
  hence one Modality, per series (PS3.3 C.7.3.1) — whose UID derives from the Study Instance
  UID and the role (:func:`series_uid`: C-FIND can name it before any file is read); the SOP
  Instance UID derives from the study, the role and the file's bytes
  (``generate_uid(entropy_srcs=…)``): sending the same file again gives the same SOP Instance
  UID (never a duplicate), a revised file is a new instance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    generate_uid,
)

from dicomproxy import __version__
from dicomproxy.config import NameStyle
from dicomproxy.mapping import study_attributes
from dicomproxy.reports.fetch import ReportUnavailable

#: The study's visible view rows (patient and study attributes, merged as C-FIND merges them).
Rows = Sequence[Mapping[str, Any]]

#: (0008,0016) SOP Class UIDs (PS3.4 B.5).
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

TITLES = {"order": "Scanned order", "report": "Report"}
#: (0020,0011) Series Number of each role's series.
SERIES_NUMBERS = {"order": 9901, "report": 9902}
#: (0008,103E) Series Description of each role's series.
SERIES_DESCRIPTIONS = {"order": "Scanned order (dicomproxy)", "report": "Report (dicomproxy)"}


def series_uid(study_uid: str, role: str) -> str:
    """(0020,000E) of ``role``'s series in ``study_uid``: the same on every node and every run."""
    return str(generate_uid(entropy_srcs=[study_uid, "dicomproxy-reports-series", role]))


def role_of_series(study_uid: str, uid: str) -> str | None:
    """The role whose series ``uid`` is in ``study_uid`` (None: not one of ours)."""
    return next((role for role in TITLES if series_uid(study_uid, role) == uid), None)


@dataclass(frozen=True)
class ReportObject:
    """One DICOM object made from one file."""

    role: str
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)


def jpeg_frame(data: bytes) -> tuple[int, int, int, int, str]:
    """(rows, columns, components, precision, transfer syntax) from a JPEG's SOF marker
    (ISO 10918-1 B.2.2); raises ReportUnavailable for progressive or lossless JPEG, or a frame
    header cut short (a file still being written, a truncated copy)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1):  # baseline / extended sequential DCT
            if i + 10 > len(data):  # P, Y, X and Nf: the bytes read below
                raise ReportUnavailable("JPEG frame header cut short")
            precision = data[i + 4]
            rows = int.from_bytes(data[i + 5 : i + 7], "big")
            cols = int.from_bytes(data[i + 7 : i + 9], "big")
            comps = data[i + 9]
            syntax = JPEGBaseline8Bit if marker == 0xC0 and precision == 8 else JPEGExtended12Bit
            return rows, cols, comps, precision, syntax
        if 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise ReportUnavailable(
                "progressive/lossless JPEG: not a transfer syntax DICOM carries (PS3.5 A.4.1)"
            )
        i += 2 + length
    raise ReportUnavailable("JPEG without a frame header")


def kind_of(data: bytes) -> str:
    """ "pdf" or "jpeg" from the file's magic bytes (the path's extension is not trusted)."""
    if data[:5] == b"%PDF-":
        return "pdf"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    raise ReportUnavailable("neither a PDF nor a JPEG")


def _common(sop_class: str, study_uid: str, role: str, data: bytes, rows: Rows, style: NameStyle) -> Dataset:
    """Patient, General Study, series, equipment and SOP Common modules (PS3.3 C.7, C.12.1)."""
    digest = hashlib.sha256(data).hexdigest()
    attrs = study_attributes(study_uid, rows, style)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # (0008,0005): names are Chinese
    ds.SOPClassUID = sop_class  # (0008,0016)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[study_uid, role, digest])  # (0008,0018)
    now = dt.datetime.now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    # Patient module (C.7.1.1)
    for key in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, key, attrs.get(key, ""))
    # General Study module (C.7.2.1)
    ds.StudyInstanceUID = study_uid
    for key in ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        setattr(ds, key, attrs.get(key, ""))
    if attrs.get("StudyDescription"):
        ds.StudyDescription = attrs["StudyDescription"]
    # Series (C.7.3.1 / C.24.1): one series per role, the same for every file of that role
    ds.SeriesInstanceUID = series_uid(study_uid, role)
    ds.SeriesNumber = SERIES_NUMBERS[role]
    ds.SeriesDescription = SERIES_DESCRIPTIONS[role]
    ds.InstanceNumber = 1
    # General Equipment (C.7.5.1) and SC Equipment (C.8.6.1)
    ds.Manufacturer = "dicomproxy"
    ds.SoftwareVersions = __version__
    ds.ConversionType = "SD"  # scanned document
    if attrs.get("InstitutionName"):
        ds.InstitutionName = attrs["InstitutionName"]
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return ds


def encapsulated_pdf(study_uid: str, role: str, data: bytes, rows: Rows, style: NameStyle) -> Dataset:
    """Encapsulated PDF IOD (PS3.3 A.45.1): Encapsulated Document module C.24.2."""
    ds = _common(ENCAPSULATED_PDF, study_uid, role, data, rows, style)
    ds.Modality = "DOC"  # (0008,0060), Encapsulated Document Series C.24.1
    ds.AcquisitionDateTime = ""  # (0008,002A) type 2
    ds.BurnedInAnnotation = "YES"  # (0028,0301) type 1: a report shows the patient's data
    ds.DocumentTitle = TITLES[role]  # (0042,0010) type 2
    ds.ConceptNameCodeSequence = []  # (0040,A043) type 2
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"  # (0042,0012)
    padded = data + b"\x00" if len(data) % 2 else data
    ds.EncapsulatedDocument = padded  # (0042,0011) OB
    ds.EncapsulatedDocumentLength = len(data)  # (0042,0015) UL: without the pad byte
    ds.file_meta = _meta(ds, ExplicitVRLittleEndian)
    return ds


def secondary_capture(study_uid: str, role: str, data: bytes, rows: Rows, style: NameStyle) -> Dataset:
    """Secondary Capture Image IOD (PS3.3 A.8.1) holding the JPEG as its one frame (PS3.5 A.4)."""
    height, width, comps, precision, syntax = jpeg_frame(data)
    if comps not in (1, 3):
        raise ReportUnavailable(f"JPEG with {comps} components")
    ds = _common(SECONDARY_CAPTURE, study_uid, role, data, rows, style)
    ds.Modality = "OT"  # (0008,0060) General Series C.7.3.1
    ds.Laterality = ""  # (0020,0060) type 2C: a document has no side
    ds.PatientOrientation = ""  # (0020,0020) type 2C, General Image C.7.6.1
    ds.BurnedInAnnotation = "YES"
    # Image Pixel module (C.7.6.3) as the bitstream says
    ds.SamplesPerPixel = comps
    ds.PhotometricInterpretation = "YBR_FULL_422" if comps == 3 else "MONOCHROME2"
    if comps == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated = 8 if precision <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = precision, precision - 1, 0
    # Lossy Image Compression (C.7.6.1.1.5): the file is a lossy JPEG already
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    fragment = data + b"\x00" if len(data) % 2 else data  # fragments have even length (PS3.5 A.4)
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta = _meta(ds, syntax)
    return ds


def _meta(ds: Dataset, syntax: str) -> FileMetaDataset:
    """File Meta Information (PS3.10 7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def build(study_uid: str, role: str, data: bytes, rows: Rows, style: NameStyle) -> ReportObject:
    """The DICOM object for one fetched file (raises ReportUnavailable for other formats)."""
    kind = kind_of(data)
    make = encapsulated_pdf if kind == "pdf" else secondary_capture
    return ReportObject(role, make(study_uid, role, data, rows, style))

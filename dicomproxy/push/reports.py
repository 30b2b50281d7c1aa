"""Order and report files (the view's OrderFilePath / ReportFilePath) as DICOM objects of the study.

- **Fetch** (:func:`fetch`): ``http://``/``https://`` and ``ftp://`` URLs (urllib), ``file://``
  URLs and local paths; a UNC path (``\\\\ris\\reports\\a.pdf``) is read from where the share is
  mounted (``[reports] shares``). Size-capped; any failure is a :class:`ReportUnavailable`
  (logged and retried by the push service; it never holds back the images).
- **Encode**: a PDF becomes an Encapsulated PDF (PS3.3 A.45.1), a JPEG a Secondary Capture Image
  (PS3.3 A.8.1) whose pixel data *is* the JPEG bitstream (JPEG Baseline/Extended transfer
  syntax, PS3.5 A.4.1 — nothing decoded or re-encoded).
- **Identity**: patient and study attributes from the view row (:func:`study_attributes`, as
  C-FIND answers them), a series of their own, and UIDs derived from the Study Instance UID,
  the file's role and its bytes (``generate_uid(entropy_srcs=…)``): sending the same file again
  gives the same SOP Instance UID (never a duplicate); a revised file is a new instance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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
from dicomproxy.config import NameStyle, ReportsConfig
from dicomproxy.view.mapping import study_attributes

#: (0008,0016) SOP Class UIDs (PS3.4 B.5).
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

#: View column → the role's name (entropy for the UID, Document Title / Series Description).
ROLES = {"OrderFilePath": "order", "ReportFilePath": "report"}
TITLES = {"order": "Scanned order", "report": "Report"}
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "Order and report (dicomproxy)"


class ReportUnavailable(Exception):
    """The file cannot be fetched or is not a PDF or JPEG (the reason, without patient data)."""


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


def local_path(location: str, shares: Mapping[str, str]) -> Path:
    """A ``file://`` URL, a local path, or a UNC path under a mounted share → a local path."""
    if location.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    if location.startswith("\\\\") or location.startswith("//"):
        unc = location.replace("/", "\\")
        for prefix, mounted in shares.items():
            norm = prefix.replace("/", "\\").rstrip("\\")
            if unc.lower().startswith(norm.lower() + "\\"):
                rest = unc[len(norm) + 1 :].split("\\")
                return Path(mounted).joinpath(*rest)
        raise ReportUnavailable("UNC path on a share that is not mounted (see [reports] shares)")
    return Path(location)


def fetch(location: str, config: ReportsConfig) -> bytes:
    """The file's bytes (raises :class:`ReportUnavailable` with a reason)."""
    location = location.strip()
    limit = int(config.max_mb * 1024 * 1024)
    scheme = urllib.parse.urlsplit(location).scheme.lower()
    if scheme in ("http", "https", "ftp"):
        try:
            with urllib.request.urlopen(location, timeout=config.timeout) as rsp:
                data = bytes(rsp.read(limit + 1))
        except Exception as exc:  # HTTPError, URLError, timeouts, ftplib errors
            raise ReportUnavailable(f"{scheme} fetch failed: {exc}") from None
    else:
        path = local_path(location, dict(config.shares))
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise ReportUnavailable(f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ReportUnavailable(f"larger than [reports] max_mb = {config.max_mb}")
    if not data:
        raise ReportUnavailable("empty file")
    return data


def jpeg_frame(data: bytes) -> tuple[int, int, int, int, str]:
    """(rows, columns, components, precision, transfer syntax) from a JPEG's SOF marker
    (ISO 10918-1 B.2.2); raises ReportUnavailable for progressive or lossless JPEG."""
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


def _common(
    sop_class: str, study_uid: str, role: str, data: bytes, row: Mapping[str, Any], style: NameStyle
) -> Dataset:
    """Patient, General Study, series, equipment and SOP Common modules (PS3.3 C.7, C.12.1)."""
    digest = hashlib.sha256(data).hexdigest()
    attrs = study_attributes(study_uid, [row], style)
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
    # Series (C.7.3.1 / C.24.1): a series of its own, the same for every file of the study
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "dicomproxy-reports-series"])
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.InstanceNumber = 1 if role == "order" else 2
    # General Equipment (C.7.5.1) and SC Equipment (C.8.6.1)
    ds.Manufacturer = "dicomproxy"
    ds.SoftwareVersions = __version__
    ds.ConversionType = "SD"  # scanned document
    if attrs.get("InstitutionName"):
        ds.InstitutionName = attrs["InstitutionName"]
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return ds


def encapsulated_pdf(
    study_uid: str, role: str, data: bytes, row: Mapping[str, Any], style: NameStyle
) -> Dataset:
    """Encapsulated PDF IOD (PS3.3 A.45.1): Encapsulated Document module C.24.2."""
    ds = _common(ENCAPSULATED_PDF, study_uid, role, data, row, style)
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


def secondary_capture(
    study_uid: str, role: str, data: bytes, row: Mapping[str, Any], style: NameStyle
) -> Dataset:
    """Secondary Capture Image IOD (PS3.3 A.8.1) holding the JPEG as its one frame (PS3.5 A.4)."""
    rows, cols, comps, precision, syntax = jpeg_frame(data)
    if comps not in (1, 3):
        raise ReportUnavailable(f"JPEG with {comps} components")
    ds = _common(SECONDARY_CAPTURE, study_uid, role, data, row, style)
    ds.Modality = "OT"  # (0008,0060) General Series C.7.3.1
    ds.Laterality = ""  # (0020,0060) type 2C: a document has no side
    ds.PatientOrientation = ""  # (0020,0020) type 2C, General Image C.7.6.1
    ds.BurnedInAnnotation = "YES"
    # Image Pixel module (C.7.6.3) as the bitstream says
    ds.SamplesPerPixel = comps
    ds.PhotometricInterpretation = "YBR_FULL_422" if comps == 3 else "MONOCHROME2"
    if comps == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
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


def build(study_uid: str, role: str, data: bytes, row: Mapping[str, Any], style: NameStyle) -> ReportObject:
    """The DICOM object for one fetched file (raises ReportUnavailable for other formats)."""
    kind = kind_of(data)
    make = encapsulated_pdf if kind == "pdf" else secondary_capture
    return ReportObject(role, make(study_uid, role, data, row, style))

"""Realistic sample studies and matching exam-view rows, for the demo, tests and benchmarks.

Kinds (PS3.3 IODs, minimal but valid modules):
- ``CT``: 512×512, 16-bit allocated, BitsStored 12, unsigned, MONOCHROME2 (CT Image Storage)
- ``MR``: 256×256, signed 16-bit, BitsStored 16 (MR Image Storage)
- ``US``: 480×640 RGB 8-bit (Ultrasound Image Storage)
- ``MF``: multi-frame 8-bit MONOCHROME2, 16 frames 256×256 (Multi-frame Grayscale Byte SC)

Patient names are Chinese, written in the chosen Specific Character Set (0008,0005).
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

#: Our UID root for generated test data (2.25 = UUID-derived, PS3.5 B.2).
UID_PREFIX = "2.25."

KINDS = ("CT", "MR", "US", "MF")

_SOP_CLASS = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "US": UltrasoundImageStorage,
    "MF": MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
}
_MODALITY = {"CT": "CT", "MR": "MR", "US": "US", "MF": "OT"}


def uid_from(*parts: object) -> str:
    """A deterministic UID under 2.25 from arbitrary parts."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return UID_PREFIX + str(int.from_bytes(digest[:15], "big"))


@dataclass(frozen=True)
class Patient:
    patient_id: str = "P0001"
    name: str = "王小东"
    pinyin: str = "Wang^Xiaodong"
    sex: str = "M"  # DICOM CS
    birth_date: str = "19800115"
    issuer: str = "74580626.PACS"


@dataclass(frozen=True)
class StudySpec:
    """What to generate: one study of one kind."""

    kind: str = "CT"
    patient: Patient = field(default_factory=Patient)
    accession: str = "A0001"
    series: int = 1
    images_per_series: int = 3
    charset: str = "ISO_IR 192"
    name_style: str = "ideographic"  # "ideographic" → "=王小东"; "single" → "王小东"; "both"
    study_date: str = "20240102"
    study_time: str = "083000"
    description: str = "胸部CT平扫"
    seed: int = 0

    @property
    def study_uid(self) -> str:
        return uid_from("study", self.kind, self.patient.patient_id, self.accession, self.seed)

    def series_uid(self, s: int) -> str:
        return uid_from("series", self.study_uid, s)

    def sop_uid(self, s: int, i: int) -> str:
        return uid_from("sop", self.study_uid, s, i)

    @property
    def instance_count(self) -> int:
        return self.series * self.images_per_series

    def dicom_name(self) -> str:
        if self.name_style == "single":
            return self.patient.name
        if self.name_style == "both":
            return f"{self.patient.pinyin}={self.patient.name}"
        return f"={self.patient.name}"


def _pixels(kind: str, s: int, i: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng([seed, s, i])
    if kind == "CT":
        y, x = np.mgrid[0:512, 0:512]
        body = ((x - 256) ** 2 / 200**2 + (y - 256) ** 2 / 170**2) < 1
        img = np.where(body, 1000 + 40 * np.sin(x / 17.0 + i) * np.cos(y / 23.0), 24).astype(np.float64)
        img += rng.normal(0, 8, img.shape)
        arr = np.clip(img, 0, 4095).astype(np.uint16)
        return arr, {
            "Rows": 512,
            "Columns": 512,
            "BitsAllocated": 16,
            "BitsStored": 12,
            "HighBit": 11,
            "PixelRepresentation": 0,
            "SamplesPerPixel": 1,
            "PhotometricInterpretation": "MONOCHROME2",
            "RescaleIntercept": "-1024",
            "RescaleSlope": "1",
            "RescaleType": "HU",
        }
    if kind == "MR":
        y, x = np.mgrid[0:256, 0:256]
        img = 800 * np.sin(x / 11.0 + i) * np.cos(y / 13.0) + rng.normal(0, 20, (256, 256))
        arr = np.clip(img, -32768, 32767).astype(np.int16)
        return arr, {
            "Rows": 256,
            "Columns": 256,
            "BitsAllocated": 16,
            "BitsStored": 16,
            "HighBit": 15,
            "PixelRepresentation": 1,
            "SamplesPerPixel": 1,
            "PhotometricInterpretation": "MONOCHROME2",
        }
    if kind == "US":
        y, x = np.mgrid[0:480, 0:640]
        base = 128 + 100 * np.sin(x / 29.0 + i) * np.cos(y / 31.0)
        rgb = np.stack([base, base * 0.8, base * 0.6], axis=-1) + rng.normal(0, 6, (480, 640, 3))
        arr = np.clip(rgb, 0, 255).astype(np.uint8)
        return arr, {
            "Rows": 480,
            "Columns": 640,
            "BitsAllocated": 8,
            "BitsStored": 8,
            "HighBit": 7,
            "PixelRepresentation": 0,
            "SamplesPerPixel": 3,
            "PhotometricInterpretation": "RGB",
            "PlanarConfiguration": 0,
        }
    if kind == "MF":
        frames = 16
        y, x = np.mgrid[0:256, 0:256]
        stack = [128 + 90 * np.sin(x / 19.0 + f) * np.cos(y / 21.0 + i) for f in range(frames)]
        arr = np.clip(np.stack(stack) + rng.normal(0, 4, (frames, 256, 256)), 0, 255).astype(np.uint8)
        return arr, {
            "Rows": 256,
            "Columns": 256,
            "BitsAllocated": 8,
            "BitsStored": 8,
            "HighBit": 7,
            "PixelRepresentation": 0,
            "SamplesPerPixel": 1,
            "PhotometricInterpretation": "MONOCHROME2",
            "NumberOfFrames": frames,
        }
    raise ValueError(f"unknown sample kind {kind!r}; expected one of {', '.join(KINDS)}")


def make_instance(spec: StudySpec, s: int, i: int) -> Dataset:
    """One instance (series ``s``, image ``i``, both from 0) of the study."""
    ds = Dataset()
    ds.SpecificCharacterSet = spec.charset
    ds.SOPClassUID = _SOP_CLASS[spec.kind]
    ds.SOPInstanceUID = spec.sop_uid(s, i)
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.ContentDate = spec.study_date
    ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.Modality = _MODALITY[spec.kind]
    ds.Manufacturer = "dicomproxy samples"
    ds.InstitutionName = "温岭市第一人民医院"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = spec.description
    ds.SeriesDescription = f"series {s + 1}"
    ds.PatientName = spec.dicom_name()
    ds.PatientID = spec.patient.patient_id
    ds.IssuerOfPatientID = spec.patient.issuer
    ds.PatientBirthDate = spec.patient.birth_date
    ds.PatientSex = spec.patient.sex
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid(s)
    ds.StudyID = spec.accession[-16:]
    ds.SeriesNumber = s + 1
    ds.InstanceNumber = i + 1
    ds.PatientOrientation = ""
    if spec.kind == "MF":
        ds.ConversionType = "WSD"
    if spec.kind in ("CT", "MR"):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = uid_from("for", spec.study_uid)
        ds.PositionReferenceIndicator = ""
        ds.Laterality = ""
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [0, 0, float(i) * 2.5]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = "2.5"
        ds.SliceLocation = str(float(i) * 2.5)
    if spec.kind == "CT":
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
    if spec.kind == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = "10"
        ds.RepetitionTime = "500"
        ds.EchoTrainLength = 1
    arr, attrs = _pixels(spec.kind, s, i, spec.seed)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW" if attrs["BitsAllocated"] > 8 else "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def iter_study(spec: StudySpec) -> Iterator[Dataset]:
    """Every instance of the study, series by series."""
    for s in range(spec.series):
        for i in range(spec.images_per_series):
            yield make_instance(spec, s, i)


def write_study(spec: StudySpec, folder: Path) -> list[Path]:
    """Write the study as DICOM files (PS3.10) under ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in iter_study(spec):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


_SEX_TO_VIEW = {"M": "男", "F": "女", "O": "未知"}


def exam_row(spec: StudySpec, *, hospital_id: str = "74580626", **overrides: Any) -> dict[str, Any]:
    """An exam-view row (seed column names) describing ``spec``; ``overrides`` win."""
    when = dt.datetime.strptime(spec.study_date + spec.study_time, "%Y%m%d%H%M%S")
    birth = dt.datetime.strptime(spec.patient.birth_date, "%Y%m%d").date()
    age_years = max(0, (when.date() - birth).days // 365)
    row: dict[str, Any] = {
        "ExamineID": f"E{spec.accession}",
        "PatientID": spec.patient.patient_id,
        "PIDAssigningAuthority": spec.patient.issuer,
        "PatientName": spec.patient.name,
        "PatientSex": _SEX_TO_VIEW.get(spec.patient.sex, "未知"),
        "PatientAge": str(age_years),
        "PatientAgeUnit": "岁",
        "PatientBirthday": birth.isoformat(),
        "PatientType": "门诊",
        "AccessionNumber": spec.accession,
        "ExamineType": _MODALITY.get(spec.kind, spec.kind),
        "ExamineItem": spec.description,
        "RegTime": when - dt.timedelta(hours=1),
        "ReqDoctor": "李医生",
        "PerformTime": when,
        "ReportPhysician": "张医生",
        "State": "审核完成",
        "Privacy": 0,
        "HospitalID": hospital_id,
        "HospitalName": "温岭市第一人民医院",
        "StudyInstanceUID": spec.study_uid,
        "RowTimestamp": when + dt.timedelta(hours=2),
        "Sysid": "UIS" if spec.kind == "US" else "RIS",
    }
    row.update(overrides)
    return row


def demo_specs() -> list[StudySpec]:
    """The demo's data: one CT, one MR, one US, one multi-frame, two patients."""
    wang = Patient()
    li = Patient(patient_id="P0002", name="李秀英", pinyin="Li^Xiuying", sex="F", birth_date="19621103")
    return [
        StudySpec("CT", wang, "A0001", series=2, images_per_series=5),
        StudySpec("MR", wang, "A0002", images_per_series=4, study_date="20240305", description="头颅MR平扫"),
        StudySpec(
            "US",
            li,
            "A0003",
            images_per_series=2,
            study_date="20240410",
            description="腹部彩超",
            charset="GB18030",
        ),
        StudySpec("MF", li, "A0004", images_per_series=1, study_date="20240411", description="胃镜"),
    ]

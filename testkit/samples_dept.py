"""Test objects of every kind the hospital's departmental systems produce (issue 8).

Each ``make_*`` returns one PS3.10-ready Dataset (with ``file_meta``) belonging to a
:class:`~testkit.samples.StudySpec`'s patient and study; :func:`write_wsi` streams a
whole-slide image of any size straight to disk. IODs (PS3.3 Annex A):

- :func:`make_us_cine` — Ultrasound Multi-frame Image (A.7), JPEG Baseline cine
- :func:`make_us_image` — Ultrasound Image (A.6), a single JPEG Baseline still
- :func:`make_endoscopy_image` — VL Endoscopic Image (A.32.1), JPEG Baseline
- :func:`make_ecg` — 12-Lead ECG (A.34.3) or General ECG (A.34.4) Waveform
- :func:`make_pdf_report` — Encapsulated PDF (A.45.1)
- :func:`make_basic_text_sr` — Basic Text SR (A.35.1), TID 2000 report
- :func:`make_key_object_selection` — Key Object Selection Document (A.35.4), TID 2010
- :func:`make_presentation_state` — Grayscale Softcopy Presentation State (A.33.1)
- :func:`make_secondary_capture` — Secondary Capture Image (A.8.1)
- :func:`write_wsi` — VL Whole Slide Microscopy Image (A.32.8), TILED_FULL

JPEG frames are encoded with imagecodecs (``jpeg8_encode``, libjpeg-turbo): it is already a
dependency, maintained, and lets us ask for YCbCr 4:2:2 explicitly, which is what
``YBR_FULL_422`` declares (PS3.5 8.2.1). pydicom has no JPEG encoder; Pillow is not installed.

:func:`dept_study_specs` gives one study per departmental system (``Sysid``), written by
:func:`write_dept_study` and described by :func:`dept_exam_row`.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, itemize_frame
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    GeneralECGWaveformStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEGBaseline8Bit,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
    TwelveLeadECGWaveformStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    VLEndoscopicImageStorage,
    VLWholeSlideMicroscopyImageStorage,
)

from testkit.samples import Patient, StudySpec, exam_row, make_instance, uid_from

#: StudySpec.kind → (exam-view Sysid, ExamineType). "CT" is samples.py's radiology kind.
DEPT_KINDS: dict[str, tuple[str, str]] = {
    "CT": ("RIS", "CT"),
    "USCINE": ("UIS", "US"),
    "ES": ("EIS", "ES"),
    "ECG": ("ECG", "ECG"),
    "SM": ("PIS", "SM"),
}

#: Default size of the demo/test whole-slide image written by :func:`write_dept_study`.
SMALL_WSI_BYTES = 4 * 1024 * 1024

_WSI_TILE = 256


def _code(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    """One Code Sequence item (PS3.3 Table 8.8-1, Basic Code Sequence Macro)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if version is not None:
        item.CodingSchemeVersion = version  # 1C: schemes without a registry-wide version (SCPECG)
    item.CodeMeaning = meaning
    return item


@functools.cache
def srgb_icc_profile() -> bytes:
    """An sRGB ICC profile made by Little CMS (``imagecodecs.cms_profile``), for colour images."""
    return bytes(imagecodecs.cms_profile("srgb"))


def _seq(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _base(spec: StudySpec, s: int, i: int, sop_class: UID, modality: str, syntax: UID) -> Dataset:
    """Patient (C.7.1.1), General Study (C.7.2.1), General Series (C.7.3.1) or its
    document equivalent, General Equipment (C.7.5.1) and SOP Common (C.12.1).

    Series ``s`` of a department study gets its own Series Instance UID; the UIDs are
    derived from ``spec`` like samples.py's, so the same spec always gives the same objects.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = spec.charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = spec.sop_uid(s, i)
    ds.InstanceCreationDate = spec.study_date
    ds.InstanceCreationTime = spec.study_time
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.Modality = modality
    ds.Manufacturer = "dicomproxy samples"
    ds.InstitutionName = "温岭市第一人民医院"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = spec.description
    ds.SeriesDescription = f"{modality} series {s + 1}"
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
    ds.ContentDate = spec.study_date
    ds.ContentTime = spec.study_time
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    return ds


def _acquisition_datetime(spec: StudySpec) -> str:
    return spec.study_date + spec.study_time


# --- JPEG-compressed colour images ---------------------------------------------------------------


def jpeg_baseline_rgb(frame: np.ndarray, quality: int = 85) -> bytes:
    """Encode an 8-bit RGB frame as JPEG Baseline (ISO 10918-1), YCbCr 4:2:2, no padding."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an 8-bit RGB frame (rows, columns, 3), got {frame.dtype} {frame.shape}")
    return bytes(
        imagecodecs.jpeg8_encode(
            frame, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling="422"
        )
    )


def colour_frame(
    rows: int, columns: int, phase: float, seed: tuple[int, ...], tint: tuple[float, ...]
) -> np.ndarray:
    """A smooth, speckled RGB picture (ultrasound sector / endoscope view / stained tissue)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    base = 128 + 90 * np.sin(x / 29.0 + phase) * np.cos(y / 31.0 - phase / 2)
    rgb = np.stack([base * t for t in tint], axis=-1) + rng.normal(0, 6, (rows, columns, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _jpeg_pixel_module(ds: Dataset, rows: int, columns: int, frames: list[bytes], ratio: float) -> None:
    """Image Pixel (C.7.6.3) for YBR_FULL_422 JPEG frames plus the lossy attributes (C.7.6.1.1.5)."""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    padded = [f + b"\x00" if len(f) % 2 else f for f in frames]
    ds.PixelData = encapsulate(padded, has_bot=len(frames) > 1)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def cine_frames(
    spec: StudySpec, s: int, i: int, frames: int, rows: int, columns: int
) -> Iterator[np.ndarray]:
    """The RGB frames :func:`make_us_cine` compresses (for comparing decoded pixels)."""
    for f in range(frames):
        yield colour_frame(rows, columns, f / 3.0, (spec.seed, s, i, f), (1.0, 0.9, 0.8))


def endoscopy_frame(spec: StudySpec, s: int, i: int, rows: int, columns: int) -> np.ndarray:
    """The RGB frame :func:`make_endoscopy_image` compresses."""
    return colour_frame(rows, columns, float(i), (spec.seed, s, i), (1.0, 0.55, 0.5))


def make_us_cine(
    spec: StudySpec,
    s: int = 0,
    i: int = 0,
    *,
    frames: int = 30,
    rows: int = 480,
    columns: int = 640,
    quality: int = 85,
) -> Dataset:
    """Ultrasound Multi-frame Image (PS3.3 A.7): a JPEG Baseline cine loop, one fragment per frame.

    Modules: US Image (C.8.5.6), Cine (C.7.6.5, Frame Time), Multi-frame (C.7.6.6).
    Lossy Image Compression is "01" — the relay must never recompress it lossy again.
    """
    ds = _base(spec, s, i, UltrasoundMultiFrameImageStorage, "US", JPEGBaseline8Bit)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "HEART"
    ds.PatientOrientation = ""
    ds.AcquisitionDateTime = _acquisition_datetime(spec)
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
    ds.FrameTime = "33.3"
    ds.CineRate = 30
    ds.RecommendedDisplayFrameRate = 30
    ds.PreferredPlaybackSequencing = 0
    encoded = [jpeg_baseline_rgb(frame, quality) for frame in cine_frames(spec, s, i, frames, rows, columns)]
    _jpeg_pixel_module(ds, rows, columns, encoded, rows * columns * 3 * frames / sum(map(len, encoded)))
    return ds


def make_us_image(
    spec: StudySpec, s: int = 0, i: int = 0, *, rows: int = 480, columns: int = 640, quality: int = 90
) -> Dataset:
    """Ultrasound Image (PS3.3 A.6), a single JPEG Baseline still (US Image module C.8.5.6)."""
    ds = make_us_cine(spec, s, i, frames=1, rows=rows, columns=columns, quality=quality)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    for keyword in (
        "NumberOfFrames",
        "FrameIncrementPointer",
        "FrameTime",
        "CineRate",
        "RecommendedDisplayFrameRate",
        "PreferredPlaybackSequencing",
    ):
        delattr(ds, keyword)
    return ds


def make_endoscopy_image(
    spec: StudySpec, s: int = 0, i: int = 0, *, rows: int = 480, columns: int = 640, quality: int = 90
) -> Dataset:
    """VL Endoscopic Image (PS3.3 A.32.1), single frame, JPEG Baseline.

    Modules: VL Image (C.8.12.1), Acquisition Context (C.7.6.14, empty).
    """
    ds = _base(spec, s, i, VLEndoscopicImageStorage, "ES", JPEGBaseline8Bit)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "STOMACH"
    ds.PatientOrientation = ""
    ds.AcquisitionDateTime = _acquisition_datetime(spec)
    ds.AcquisitionContextSequence = _seq()
    frame = jpeg_baseline_rgb(endoscopy_frame(spec, s, i, rows, columns), quality)
    _jpeg_pixel_module(ds, rows, columns, [frame], rows * columns * 3 / len(frame))
    return ds


# --- ECG waveforms -------------------------------------------------------------------------------

#: The twelve standard leads, CID 3001 (MDC codes), in acquisition order.
ECG_LEADS: tuple[tuple[str, str], ...] = (
    ("2:1", "Lead I"),
    ("2:2", "Lead II"),
    ("2:61", "Lead III"),
    ("2:62", "Lead aVR"),
    ("2:63", "Lead aVL"),
    ("2:64", "Lead aVF"),
    ("2:3", "Lead V1"),
    ("2:4", "Lead V2"),
    ("2:5", "Lead V3"),
    ("2:6", "Lead V4"),
    ("2:7", "Lead V5"),
    ("2:8", "Lead V6"),
)


def ecg_signals(seconds: float, rate: int, seed: int = 0, heart_rate: float = 72.0) -> np.ndarray:
    """Synthetic 12-lead ECG in µV, shape (samples, 12), leads in :data:`ECG_LEADS` order.

    A heart vector made of Gaussian P, Q, R, S, T waves per beat, projected onto each lead;
    III, aVR, aVL, aVF follow Einthoven/Goldberger from I and II.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = (t * heart_rate / 60.0) % 1.0
    waves = [(0.10, 0.025, 150, 0.4), (0.22, 0.010, -120, 0.0), (0.25, 0.012, 1200, 0.3)]
    waves += [(0.28, 0.012, -300, -0.2), (0.50, 0.045, 300, 0.5)]
    x = sum(a * np.exp(-(((phase - c) / w) ** 2)) for c, w, a, _ in waves)
    y = sum(a * ang * np.exp(-(((phase - c) / w) ** 2)) for c, w, a, ang in waves)
    lead_i = x
    lead_ii = 0.5 * x + 0.9 * y
    limb = [
        lead_i,
        lead_ii,
        lead_ii - lead_i,
        -(lead_i + lead_ii) / 2,
        lead_i - lead_ii / 2,
        lead_ii - lead_i / 2,
    ]
    chest = [np.cos(a) * x + np.sin(a) * y * 0.6 for a in np.linspace(-2.2, 0.6, 6)]
    leads = np.stack(limb + chest, axis=1) + rng.normal(0, 8, (t.size, 12))
    return np.asarray(leads)


def make_ecg(
    spec: StudySpec,
    s: int = 0,
    i: int = 0,
    *,
    general: bool = False,
    seconds: float = 10.0,
    rate: int = 500,
    leads: int = 12,
) -> Dataset:
    """12-Lead ECG (PS3.3 A.34.3) or, with ``general``, General ECG (A.34.4) Waveform.

    One RHYTHM multiplex group (Waveform module C.10.9) of signed 16-bit samples at 1 µV per
    bit; Waveform Identification (C.10.8), Acquisition Context (C.7.6.14, lead placement).
    12-lead limits (A.34.3.4): 1–13 channels, 200–1000 Hz, ≤ 16384 samples.
    """
    if not 1 <= leads <= len(ECG_LEADS):
        raise ValueError(f"leads must be 1..{len(ECG_LEADS)}, got {leads}")
    if not general and (not 200 <= rate <= 1000 or seconds * rate > 16384):
        raise ValueError(f"a 12-lead ECG needs 200-1000 Hz and <= 16384 samples, got {rate} Hz × {seconds} s")
    sop_class = GeneralECGWaveformStorage if general else TwelveLeadECGWaveformStorage
    ds = _base(spec, s, i, sop_class, "ECG", ExplicitVRLittleEndian)
    ds.AcquisitionDateTime = _acquisition_datetime(spec)
    ds.ManufacturerModelName = "SampleECG-12"
    context = Dataset()
    context.ValueType = "CODE"
    context.ConceptNameCodeSequence = _seq(_code("5.4.5-33-1", "SCPECG", "Electrode Placement", "1.3"))
    context.ConceptCodeSequence = _seq(
        _code("5.4.5-33-1-1", "SCPECG", "Standard 12-lead positions: limb leads placed at extremities", "1.3")
    )
    ds.AcquisitionContextSequence = _seq(context)
    samples = np.clip(np.rint(ecg_signals(seconds, rate, seed=spec.seed * 1000 + s * 100 + i)), -32768, 32767)
    samples = samples[:, :leads].astype("<i2")
    channels = []
    for value, meaning in ECG_LEADS[:leads]:
        ch = Dataset()
        ch.ChannelSourceSequence = _seq(_code(value, "MDC", meaning))
        ch.ChannelSensitivity = "1"
        ch.ChannelSensitivityUnitsSequence = _seq(_code("uV", "UCUM", "microvolt"))
        ch.ChannelSensitivityCorrectionFactor = "1"
        ch.ChannelBaseline = "0"
        ch.ChannelSampleSkew = "0"
        ch.WaveformBitsStored = 16
        ch.FilterLowFrequency = "0.05"
        ch.FilterHighFrequency = "150"
        ch.NotchFilterFrequency = "50"
        channels.append(ch)
    group = Dataset()
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = leads
    group.NumberOfWaveformSamples = samples.shape[0]
    group.SamplingFrequency = str(rate)
    group.MultiplexGroupLabel = "RHYTHM"
    group.ChannelDefinitionSequence = DicomSequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = samples.tobytes()  # interleaved by sample: (samples, channels), PS3.3 C.10.9.1.5
    group["WaveformData"].VR = "OW"
    ds.WaveformSequence = _seq(group)
    return ds


# --- documents and reports -----------------------------------------------------------------------


def minimal_pdf(lines: Sequence[str]) -> bytes:
    """A one-page PDF 1.4 (Helvetica, ASCII text) with a correct cross-reference table."""
    escaped = [ln.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for ln in lines]
    text = "BT /F1 12 Tf 72 770 Td 16 TL " + " ".join(f"({ln}) '" for ln in escaped) + " ET"
    stream = text.encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def make_pdf_report(spec: StudySpec, s: int = 0, i: int = 0, *, title: str = "Examination report") -> Dataset:
    """Encapsulated PDF (PS3.3 A.45.1): Encapsulated Document Series (C.24.1, Modality DOC),
    SC Equipment (C.8.6.1), Encapsulated Document (C.24.2) holding a :func:`minimal_pdf`."""
    ds = _base(spec, s, i, EncapsulatedPDFStorage, "DOC", ExplicitVRLittleEndian)
    ds.ConversionType = "WSD"
    ds.AcquisitionDateTime = _acquisition_datetime(spec)
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = _seq(_code("18748-4", "LN", "Diagnostic imaging report"))
    pdf = minimal_pdf(
        [
            title,
            f"Patient ID: {spec.patient.patient_id}  Accession: {spec.accession}",
            f"Study date: {spec.study_date}",
            "Findings: no abnormality detected (generated test document).",
        ]
    )
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + b"\x00" if len(pdf) % 2 else pdf
    return ds


def _hierarchical_refs(referenced: Sequence[Dataset]) -> DicomSequence:
    """Hierarchical SOP Instance Reference Macro (PS3.3 Table C.17-3), one item per study."""
    studies: dict[str, dict[str, list[Dataset]]] = {}
    for ref in referenced:
        studies.setdefault(ref.StudyInstanceUID, {}).setdefault(ref.SeriesInstanceUID, []).append(ref)
    items = []
    for study_uid, series in studies.items():
        study = Dataset()
        study.StudyInstanceUID = study_uid
        series_items = []
        for series_uid, instances in series.items():
            se = Dataset()
            se.SeriesInstanceUID = series_uid
            se.ReferencedSOPSequence = DicomSequence([_sop_ref(ref) for ref in instances])
            series_items.append(se)
        study.ReferencedSeriesSequence = DicomSequence(series_items)
        items.append(study)
    return DicomSequence(items)


def _sop_ref(ref: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    return item


def _content_item(value_type: str, concept: Dataset, relationship: str = "CONTAINS") -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = _seq(concept)
    return item


def _template(tid: str) -> DicomSequence:
    item = Dataset()
    item.MappingResource = "DCMR"
    item.TemplateIdentifier = tid
    return _seq(item)


def make_basic_text_sr(
    spec: StudySpec,
    s: int = 0,
    i: int = 0,
    *,
    findings: str = "肝脏大小形态正常，实质回声均匀。",
    impression: str = "未见明显异常。",
    referenced: Sequence[Dataset] = (),
) -> Dataset:
    """Basic Text SR (PS3.3 A.35.1), a final verified report after TID 2000.

    SR Document General (C.17.2): COMPLETE, VERIFIED with a verifying observer; SR Document
    Content (C.17.3): CONTAINER "Diagnostic imaging report" → Findings / Impressions TEXT.
    ``referenced`` instances go to Current Requested Procedure Evidence.
    """
    ds = _base(spec, s, i, BasicTextSRStorage, "SR", ExplicitVRLittleEndian)
    ds.ReferencedPerformedProcedureStepSequence = _seq()  # type 2 (C.17.1 / C.17.6.1)
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = "Zhang^Wei"
    observer.VerifyingObserverIdentificationCodeSequence = _seq()
    observer.VerifyingOrganization = "温岭市第一人民医院"
    observer.VerificationDateTime = _acquisition_datetime(spec)
    ds.VerifyingObserverSequence = _seq(observer)
    ds.PerformedProcedureCodeSequence = _seq()
    if referenced:
        ds.CurrentRequestedProcedureEvidenceSequence = _hierarchical_refs(referenced)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = _seq(_code("18748-4", "LN", "Diagnostic imaging report"))
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentTemplateSequence = _template("2000")
    sections = []
    for (sec_code, sec_name), (txt_code, txt_name), value in (
        (("121070", "Findings"), ("121071", "Finding"), findings),
        (("121072", "Impressions"), ("121073", "Impression"), impression),
    ):
        section = _content_item("CONTAINER", _code(sec_code, "DCM", sec_name))
        section.ContinuityOfContent = "SEPARATE"
        text = _content_item("TEXT", _code(txt_code, "DCM", txt_name))
        text.TextValue = value
        section.ContentSequence = _seq(text)
        sections.append(section)
    ds.ContentSequence = DicomSequence(sections)
    return ds


def make_key_object_selection(
    spec: StudySpec, referenced: Sequence[Dataset], s: int = 0, i: int = 0, *, description: str = "关键图像"
) -> Dataset:
    """Key Object Selection Document (PS3.3 A.35.4), TID 2010 "Of Interest" flagging ``referenced``.

    Key Object Document (C.17.6.2) with Current Requested Procedure Evidence; one IMAGE
    content item per referenced instance.
    """
    if not referenced:
        raise ValueError("a Key Object Selection needs at least one referenced instance")
    ds = _base(spec, s, i, KeyObjectSelectionDocumentStorage, "KO", ExplicitVRLittleEndian)
    ds.ReferencedPerformedProcedureStepSequence = _seq()  # type 2 (C.17.1 / C.17.6.1)
    ds.CurrentRequestedProcedureEvidenceSequence = _hierarchical_refs(referenced)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = _seq(_code("113000", "DCM", "Of Interest"))
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentTemplateSequence = _template("2010")
    text = _content_item("TEXT", _code("113012", "DCM", "Key Object Description"))
    text.TextValue = description
    images = []
    for ref in referenced:
        item = _content_item("IMAGE", _code("113000", "DCM", "Of Interest"))
        del item.ConceptNameCodeSequence  # IMAGE items in TID 2010 have no concept name
        item.ReferencedSOPSequence = _seq(_sop_ref(ref))
        images.append(item)
    ds.ContentSequence = DicomSequence([text, *images])
    return ds


def make_presentation_state(
    spec: StudySpec,
    referenced: Sequence[Dataset],
    s: int = 0,
    i: int = 0,
    *,
    window: tuple[float, float] = (40.0, 400.0),
    label: str = "SOFT_TISSUE",
) -> Dataset:
    """Grayscale Softcopy Presentation State (PS3.3 A.33.1) applying a window and a text
    annotation to ``referenced`` images (all of one study; same Rows/Columns).

    Modules: Presentation Series (C.11.9), Presentation State Identification (C.11.10),
    Presentation State Relationship (C.11.11), Displayed Area (C.10.4), Graphic Annotation
    (C.10.5), Graphic Layer (C.10.7), Modality LUT (C.11.1, copied from the images),
    Softcopy VOI LUT (C.11.8), Softcopy Presentation LUT (C.11.6).
    """
    if not referenced:
        raise ValueError("a presentation state needs at least one referenced image")
    first = referenced[0]
    ds = _base(spec, s, i, GrayscaleSoftcopyPresentationStateStorage, "PR", ExplicitVRLittleEndian)
    del ds.ContentDate, ds.ContentTime  # not in this IOD: Presentation Creation Date/Time instead
    ds.BodyPartExamined = first.get("BodyPartExamined", "CHEST")
    ds.ContentLabel = label
    ds.ContentDescription = "窗宽窗位"
    ds.PresentationCreationDate = spec.study_date
    ds.PresentationCreationTime = spec.study_time
    ds.ContentCreatorName = "Zhang^Wei"
    series: dict[str, list[Dataset]] = {}
    for ref in referenced:
        series.setdefault(ref.SeriesInstanceUID, []).append(ref)
    ref_series = []
    for series_uid, refs in series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedImageSequence = DicomSequence([_sop_ref(r) for r in refs])
        ref_series.append(item)
    ds.ReferencedSeriesSequence = DicomSequence(ref_series)
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 1]
    area.DisplayedAreaBottomRightHandCorner = [int(first.Columns), int(first.Rows)]
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelAspectRatio = [1, 1]
    ds.DisplayedAreaSelectionSequence = _seq(area)
    layer = Dataset()
    layer.GraphicLayer = "ANNOTATION"
    layer.GraphicLayerOrder = 1
    ds.GraphicLayerSequence = _seq(layer)
    text = Dataset()
    text.UnformattedTextValue = "ROI"
    text.AnchorPointAnnotationUnits = "PIXEL"
    text.AnchorPoint = [float(first.Columns) / 2, float(first.Rows) / 2]
    text.AnchorPointVisibility = "Y"
    annotation = Dataset()
    annotation.GraphicLayer = "ANNOTATION"
    annotation.TextObjectSequence = _seq(text)
    ds.GraphicAnnotationSequence = _seq(annotation)
    if "RescaleSlope" in first:
        ds.RescaleIntercept = first.RescaleIntercept
        ds.RescaleSlope = first.RescaleSlope
        ds.RescaleType = first.get("RescaleType", "US")
    voi = Dataset()
    voi.WindowCenter = f"{window[0]:g}"
    voi.WindowWidth = f"{window[1]:g}"
    ds.SoftcopyVOILUTSequence = _seq(voi)
    ds.PresentationLUTShape = "IDENTITY"
    return ds


def make_secondary_capture(
    spec: StudySpec, s: int = 0, i: int = 0, *, rows: int = 512, columns: int = 512
) -> Dataset:
    """Secondary Capture Image (PS3.3 A.8.1): an uncompressed RGB screen capture (e.g. a 3D
    rendering), SC Equipment (C.8.6.1) Conversion Type WSD."""
    ds = _base(spec, s, i, SecondaryCaptureImageStorage, "OT", ExplicitVRLittleEndian)
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BodyPartExamined = "CHEST"
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = colour_frame(rows, columns, float(i), (spec.seed, s, i), (0.9, 0.9, 1.0)).tobytes()
    ds["PixelData"].VR = "OB"
    return ds


# --- whole-slide microscopy, streamed to disk ----------------------------------------------------


@dataclass(frozen=True)
class WsiInfo:
    """What :func:`write_wsi` wrote."""

    path: Path
    sop_instance_uid: str
    frames: int
    tiles_across: int
    tiles_down: int
    compressed: bool
    file_size: int


def _wsi_tile_pool(seed: int, count: int, compressed: bool, quality: int) -> list[bytes]:
    """``count`` distinct 256×256 tissue-like RGB tiles, JPEG-encoded or raw; reused cyclically."""
    pool = []
    for n in range(count):
        tile = colour_frame(_WSI_TILE, _WSI_TILE, n * 0.7, (seed, n), (0.85, 0.55, 0.8))
        data = jpeg_baseline_rgb(tile, quality) if compressed else tile.tobytes()
        pool.append(data + b"\x00" if len(data) % 2 else data)
    return pool


def _wsi_dataset(
    spec: StudySpec,
    s: int,
    i: int,
    sop_uid: UID,
    frames: int,
    across: int,
    down: int,
    compressed: bool,
    ratio: float,
) -> Dataset:
    """Every attribute of the WSI instance except Pixel Data (PS3.3 A.32.8).

    Modules: Whole Slide Microscopy Series (C.8.12.3), Frame of Reference (C.7.4.1), Enhanced
    General Equipment (C.7.5.2), Whole Slide Microscopy Image (C.8.12.4, TILED_FULL),
    Multi-frame Functional Groups (C.7.6.16, shared only), Multi-frame Dimension (C.7.6.17),
    Specimen (C.7.6.22), Optical Path (C.8.12.5), Acquisition Context (C.7.6.14).
    """
    syntax = JPEGBaseline8Bit if compressed else ExplicitVRLittleEndian
    ds = _base(spec, s, i, VLWholeSlideMicroscopyImageStorage, "SM", syntax)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.AcquisitionDateTime = _acquisition_datetime(spec)
    ds.FrameOfReferenceUID = uid_from("wsi-for", spec.study_uid, s, i)
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.ManufacturerModelName = "SampleScanner"
    ds.DeviceSerialNumber = "SN0001"
    ds.SoftwareVersions = "1.0"
    ds.VolumetricProperties = "VOLUME"
    ds.SpecimenLabelInImage = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.ImagedVolumeWidth = across * _WSI_TILE * 0.00025
    ds.ImagedVolumeHeight = down * _WSI_TILE * 0.00025
    ds.ImagedVolumeDepth = 0.001
    ds.TotalPixelMatrixColumns = across * _WSI_TILE
    ds.TotalPixelMatrixRows = down * _WSI_TILE
    ds.TotalPixelMatrixFocalPlanes = 1
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = _seq(origin)
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    ds.DimensionOrganizationType = "TILED_FULL"
    organization = Dataset()
    organization.DimensionOrganizationUID = uid_from("wsi-dim", spec.study_uid, s, i)
    ds.DimensionOrganizationSequence = _seq(organization)
    ds.NumberOfOpticalPaths = 1
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422" if compressed else "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = _WSI_TILE
    ds.Columns = _WSI_TILE
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if compressed:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = _seq()
    ds.ContainerIdentifier = f"SLIDE-{spec.accession}-{i + 1}"
    ds.IssuerOfTheContainerIdentifierSequence = _seq()
    ds.ContainerTypeCodeSequence = _seq(_code("433466003", "SCT", "Microscope slide"))
    specimen = Dataset()
    specimen.SpecimenIdentifier = f"S-{spec.accession}-{i + 1}"
    specimen.SpecimenUID = uid_from("specimen", spec.study_uid, s, i)
    specimen.IssuerOfTheSpecimenIdentifierSequence = _seq()
    specimen.SpecimenPreparationSequence = _seq()
    ds.SpecimenDescriptionSequence = _seq(specimen)
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.IlluminationColorCodeSequence = _seq(_code("414298005", "SCT", "Full Spectrum"))
    path.IlluminationTypeCodeSequence = _seq(_code("111744", "DCM", "Brightfield illumination"))
    path.ICCProfile = srgb_icc_profile()  # required for colour images (C.8.12.5)
    ds.OpticalPathSequence = _seq(path)
    measures = Dataset()
    measures.PixelSpacing = [0.00025, 0.00025]
    measures.SliceThickness = 0.001
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    path_ref = Dataset()
    path_ref.OpticalPathIdentifier = "1"
    shared = Dataset()
    shared.PixelMeasuresSequence = _seq(measures)
    shared.WholeSlideMicroscopyImageFrameTypeSequence = _seq(frame_type)
    shared.OpticalPathIdentificationSequence = _seq(path_ref)
    ds.SharedFunctionalGroupsSequence = _seq(shared)
    return ds


def _tile_index(frame: int, pool: int) -> int:
    """Which pool tile frame ``frame`` shows: neighbours differ, no short repeating period."""
    return (frame * 7 + frame // 13) % pool


def write_wsi(
    spec: StudySpec,
    path: Path,
    *,
    target_bytes: int = SMALL_WSI_BYTES,
    s: int = 0,
    i: int = 0,
    compressed: bool = True,
    quality: int = 92,
    pool_size: int = 64,
    chunk_bytes: int = 8 * 1024 * 1024,
) -> WsiInfo:
    """Write a VL Whole Slide Microscopy Image (PS3.3 A.32.8) of at least ``target_bytes``.

    256×256 RGB tiles, TILED_FULL; JPEG Baseline tiles (encapsulated: undefined-length Pixel
    Data, empty Basic Offset Table, one item per frame, sequence delimiter — PS3.5 A.4) or
    uncompressed (explicit length known in advance). The dataset up to Pixel Data is written
    by pydicom; the frames are appended in ``chunk_bytes`` batches from a small pool of
    distinct tiles, so memory stays flat whatever the size.
    """
    if target_bytes <= 0:
        raise ValueError(f"target_bytes must be positive, got {target_bytes}")
    pool = _wsi_tile_pool(spec.seed * 1000 + s * 100 + i, pool_size, compressed, quality)
    item_overhead = 8 if compressed else 0
    frames, total = 0, 0
    while total < target_bytes:
        total += len(pool[_tile_index(frames, pool_size)]) + item_overhead
        frames += 1
    across = max(1, int(np.ceil(np.sqrt(frames))))
    down = -(-frames // across)
    frames = across * down  # TILED_FULL: the matrix is completely covered
    raw = _WSI_TILE * _WSI_TILE * 3
    encoded = sum(len(pool[_tile_index(f, pool_size)]) for f in range(frames))
    # a slide of another size or encoding is another instance: its UID says so (same spec,
    # same parameters → same UID), so two sizes can sit in one archive without clashing
    sop_uid = UID(uid_from("wsi", spec.sop_uid(s, i), frames, compressed, quality, pool_size))
    ds = _wsi_dataset(spec, s, i, sop_uid, frames, across, down, compressed, raw * frames / encoded)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fp:
        dcmwrite(fp, ds, enforce_file_format=True)
        if compressed:
            # (7FE0,0010) OB, undefined length; then the empty Basic Offset Table item
            fp.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
            fp.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
        else:
            fp.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, raw * frames))
        batch: list[bytes] = []
        size = 0
        for f in range(frames):
            tile = pool[_tile_index(f, pool_size)]
            data = b"".join(itemize_frame(tile, 1)) if compressed else tile
            batch.append(data)
            size += len(data)
            if size >= chunk_bytes:
                fp.write(b"".join(batch))
                batch, size = [], 0
        fp.write(b"".join(batch))
        if compressed:
            fp.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))  # Sequence Delimitation Item
    return WsiInfo(path, ds.SOPInstanceUID, frames, across, down, compressed, path.stat().st_size)


# --- one study per departmental system -----------------------------------------------------------


def dept_study_specs() -> list[StudySpec]:
    """One study per Sysid of the exam view: RIS CT, UIS cine, EIS endoscopy, ECG, PIS slide."""
    zhou = Patient(patient_id="P0101", name="周建国", pinyin="Zhou^Jianguo", sex="M", birth_date="19560322")
    chen = Patient(patient_id="P0102", name="陈美玲", pinyin="Chen^Meiling", sex="F", birth_date="19790814")
    return [
        StudySpec("CT", zhou, "D0001", images_per_series=3, study_date="20240601", description="胸部CT平扫"),
        StudySpec(
            "USCINE", chen, "D0002", images_per_series=2, study_date="20240602", description="心脏彩超"
        ),
        StudySpec("ES", zhou, "D0003", images_per_series=3, study_date="20240603", description="电子胃镜"),
        StudySpec("ECG", zhou, "D0004", images_per_series=1, study_date="20240604", description="常规心电图"),
        StudySpec(
            "SM", chen, "D0005", images_per_series=1, study_date="20240605", description="乳腺穿刺病理"
        ),
    ]


def iter_dept_study(spec: StudySpec) -> Iterator[Dataset]:
    """Every in-memory instance of a department study (a PIS study's slide is written by
    :func:`write_dept_study`; here only its report).

    - CT (RIS): samples.py CT images, then a Basic Text SR, a KO and a GSPS on them, and a SC;
    - USCINE (UIS): cine loops, a still and a PDF report; ES (EIS): endoscopic images and a PDF report;
    - ECG: 12-lead ECGs, a 3-lead General ECG and a PDF report; SM (PIS): a Basic Text SR.
    """
    n = spec.images_per_series
    if spec.kind == "CT":
        images = [make_instance(spec, s, i) for s in range(spec.series) for i in range(n)]
        yield from images
        base = spec.series
        yield make_basic_text_sr(spec, base, 0, referenced=images)
        yield make_key_object_selection(spec, images[:2], base + 1, 0)
        yield make_presentation_state(spec, images, base + 2, 0)
        yield make_secondary_capture(spec, base + 3, 0)
    elif spec.kind == "USCINE":
        yield from (make_us_cine(spec, 0, i) for i in range(n))
        yield make_us_image(spec, 0, n)
        yield make_pdf_report(spec, 1, 0, title="Echocardiography report")
    elif spec.kind == "ES":
        yield from (make_endoscopy_image(spec, 0, i) for i in range(n))
        yield make_pdf_report(spec, 1, 0, title="Endoscopy report")
    elif spec.kind == "ECG":
        yield from (make_ecg(spec, 0, i) for i in range(n))
        yield make_ecg(spec, 1, 0, general=True, leads=3, seconds=30.0, rate=1000)
        yield make_pdf_report(spec, 2, 0, title="ECG report")
    elif spec.kind == "SM":
        yield make_basic_text_sr(spec, 1, 0, findings="浸润性导管癌。", impression="建议免疫组化。")
    else:
        raise ValueError(f"unknown department kind {spec.kind!r}; expected one of {', '.join(DEPT_KINDS)}")


def write_dept_study(spec: StudySpec, folder: Path, *, wsi_bytes: int = SMALL_WSI_BYTES) -> list[Path]:
    """Write a department study as PS3.10 files under ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if spec.kind == "SM":
        for i in range(spec.images_per_series):
            info = write_wsi(spec, folder / f"slide-{i}.dcm", target_bytes=wsi_bytes, i=i)
            paths.append(info.path.rename(folder / f"{info.sop_instance_uid}.dcm"))
    for ds in iter_dept_study(spec):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dept_exam_row(spec: StudySpec, **overrides: Any) -> dict[str, Any]:
    """The exam-view row of a department study: samples.exam_row with its Sysid/ExamineType."""
    sysid, examine_type = DEPT_KINDS[spec.kind]
    fields: dict[str, Any] = {"Sysid": sysid, "ExamineType": examine_type, **overrides}
    return exam_row(spec, **fields)

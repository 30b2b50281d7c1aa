"""A study of *real* CT pixels for benchmarks (issue 17): the 512 × 512 CT Image Storage slices of the
PyPI package ``pydicom-data`` (``693_UNCR``, ``693_UNCI``, ``693_J2KR``, ``explicit_VR-UN``,
``bad_sequence``), decoded once and cycled under new UIDs into a study of any size.

``693_J2KR`` holds the same pixels as ``693_UNCR`` (JPEG 2000 lossless of it), so the corpus has four
distinct images; duplicates are dropped by pixel hash. Each written instance is the synthetic CT
header of :func:`testkit.samples.make_instance` (patient, study, the exam-view row) with the real
slice's Image Pixel module (PS3.3 C.7.6.3: Bits Stored, High Bit, Pixel Representation) and its
Rescale Intercept/Slope, uncompressed Explicit VR Little Endian, as a PACS would hold it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage

from testkit.samples import StudySpec, make_instance

#: The files of pydicom-data used, in order of preference when two hold the same pixels.
CORPUS_FILES = ("693_UNCR.dcm", "693_UNCI.dcm", "693_J2KR.dcm", "explicit_VR-UN.dcm", "bad_sequence.dcm")


class CorpusMissing(RuntimeError):
    """pydicom-data is not installed (``pip install pydicom-data``; in the ``bench`` extra)."""


@dataclass(frozen=True)
class RealSlice:
    name: str
    pixels: np.ndarray  # (512, 512) uint16 or int16, as decoded
    bits_stored: int
    pixel_representation: int
    rescale_intercept: str
    rescale_slope: str


def data_dir() -> Path:
    """Where pydicom-data keeps its files (the package is importable as ``data_store``)."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        raise CorpusMissing("the real-CT corpus needs pydicom-data: pip install pydicom-data")
    return Path(spec.origin).parent / "data"


@lru_cache(maxsize=1)
def real_slices() -> tuple[RealSlice, ...]:
    """The distinct decoded 512 × 512 CT slices of the corpus."""
    out: list[RealSlice] = []
    seen: set[str] = set()
    for name in CORPUS_FILES:
        ds = pydicom.dcmread(data_dir() / name)
        if ds.SOPClassUID != CTImageStorage or (ds.Rows, ds.Columns) != (512, 512):
            continue
        arr = ds.pixel_array
        digest = hashlib.sha256(arr.tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        out.append(
            RealSlice(
                name,
                arr,
                int(ds.BitsStored),
                int(ds.PixelRepresentation),
                str(ds.get("RescaleIntercept", "0")),
                str(ds.get("RescaleSlope", "1")),
            )
        )
    return tuple(out)


def write_real_study(spec: StudySpec, folder: Path) -> list[Path]:
    """Write ``spec`` (kind CT) with the real slices cycled through its instances; returns the paths."""
    slices = real_slices()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    k = 0
    for s in range(spec.series):
        for i in range(spec.images_per_series):
            src = slices[k % len(slices)]
            k += 1
            ds = make_instance(spec, s, i)
            ds.BitsStored = src.bits_stored
            ds.HighBit = src.bits_stored - 1
            ds.PixelRepresentation = src.pixel_representation
            ds.RescaleIntercept = src.rescale_intercept
            ds.RescaleSlope = src.rescale_slope
            ds.PixelData = src.pixels.astype(np.int16 if src.pixel_representation else np.uint16).tobytes()
            ds["PixelData"].VR = "OW"
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths

"""Cheap facts about one stored instance, read from its header without touching Pixel Data."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from dicomproxy.transcode.syntaxes import is_lossy_syntax

# (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)


@dataclass(frozen=True)
class InstanceInfo:
    """What choosing a target syntax needs to know about an instance (PS3.3 C.7.6.3 Image Pixel)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    modality: str
    #: (7FE0,0010) Pixel Data present. Float/Double Float Pixel Data count as no (integer) pixel data.
    has_pixel_data: bool
    #: Lossy compression was applied at some time (PS3.3 C.7.6.1.1.5) or the syntax is lossy.
    already_lossy: bool
    bits_allocated: int | None
    samples_per_pixel: int | None
    photometric: str | None
    number_of_frames: int
    bits_stored: int | None = None
    pixel_representation: int | None = None
    rows: int | None = None
    columns: int | None = None
    #: (7FE0,0008)/(7FE0,0009) Float or Double Float Pixel Data: never compressed (no codec takes it).
    float_pixels: bool = False

    @property
    def pixel_bytes(self) -> int:
        """Size of the uncompressed pixel data, as Bits Allocated × Rows × Columns × Samples × Frames."""
        if not self.has_pixel_data or not (self.rows and self.columns and self.bits_allocated):
            return 0
        bits = self.rows * self.columns * (self.samples_per_pixel or 1) * self.bits_allocated
        return (bits * max(1, self.number_of_frames) + 7) // 8


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def info_from_dataset(
    ds: Dataset, transfer_syntax: str, has_pixel_data: bool, float_pixels: bool
) -> InstanceInfo:
    """Build :class:`InstanceInfo` from an already-read header."""
    # (0028,2110) Lossy Image Compression | CS | "00" / "01"; absent → decide by the syntax.
    lic = str(ds.get("LossyImageCompression", "") or "").strip()
    if lic == "01":
        lossy = True
    elif lic == "00":
        lossy = False
    else:
        lossy = is_lossy_syntax(transfer_syntax) and has_pixel_data
    photometric = ds.get("PhotometricInterpretation")
    return InstanceInfo(
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        transfer_syntax=transfer_syntax,
        modality=str(ds.get("Modality", "") or ""),
        has_pixel_data=has_pixel_data,
        already_lossy=lossy,
        bits_allocated=_int(ds, "BitsAllocated"),
        samples_per_pixel=_int(ds, "SamplesPerPixel"),
        photometric=str(photometric).strip() if photometric else None,
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
        bits_stored=_int(ds, "BitsStored"),
        pixel_representation=_int(ds, "PixelRepresentation"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        float_pixels=float_pixels,
    )


@dataclass(frozen=True)
class Header:
    """A Part 10 file read up to Pixel Data (:func:`read_header`)."""

    #: The data set as read, File Meta and preamble included; elements still raw where not accessed.
    dataset: Dataset
    info: InstanceInfo
    #: File offset of the (7FE0,0010) Pixel Data element's tag; None when the next element is not it.
    pixel_tell: int | None


def read_header(path: Path) -> Header:
    """Read a Part 10 file's header up to (not into) Pixel Data and describe the instance.

    pydicom's ``stop_before_pixels`` rewinds to the start of the pixel element, so the next four bytes
    are its tag; no pixel byte is read, so this costs the same for a 100 kB slice and a 4 GB WSI.
    Deflated files (PS3.5 A.5) are inflated as a whole by pydicom; they are small in practice.
    """
    pixel_tell = None
    with open(path, "rb") as fp:
        ds = dcmread(fp, stop_before_pixels=True)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if syntax == DeflatedExplicitVRLittleEndian:
            tag = None
        else:
            tell = fp.tell()
            raw = fp.read(4)
            tag = None
            if len(raw) == 4:
                group, elem = struct.unpack(">HH" if syntax == ExplicitVRBigEndian else "<HH", raw)
                tag = (group << 16) | elem
                pixel_tell = tell if tag == _PIXEL_DATA else None
    if tag is None and syntax == DeflatedExplicitVRLittleEndian:
        full = dcmread(path, defer_size=256)
        has_pixels = "PixelData" in full
        floats = "FloatPixelData" in full or "DoubleFloatPixelData" in full
    else:
        has_pixels = tag == _PIXEL_DATA
        floats = tag in _FLOAT_PIXEL_DATA
    return Header(ds, info_from_dataset(ds, syntax, has_pixels, floats), pixel_tell)


def read_info(path: Path) -> InstanceInfo:
    """:func:`read_header`'s description of the instance."""
    return read_header(path).info

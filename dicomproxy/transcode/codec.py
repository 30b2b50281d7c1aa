"""Decode and re-encode one Part 10 file into a target transfer syntax.

Encoders: pydicom's own (PS3.5 A.4.1 JPEG-LS via pyjpegls, A.4.4 JPEG 2000 via pylibjpeg-openjpeg,
A.4.2 RLE via pylibjpeg-rle) and imagecodecs for what pydicom 3.0 cannot encode: HTJ2K (OpenJPH,
PS3.5 A.4.11) and JPEG Baseline (libjpeg-turbo, PS3.5 A.4.1). Encapsulation is one fragment per
frame (PS3.5 A.4, Table A.4-1) with a Basic Offset Table.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from dicomproxy.errors import CannotTranscode
from dicomproxy.transcode import jpegls
from dicomproxy.transcode.info import Header, InstanceInfo, info_from_dataset, read_header
from dicomproxy.transcode.policy import Policy, choose_target, codec_applies, lossy_allowed
from dicomproxy.transcode.syntaxes import LOSSLESS_TARGETS, LOSSY_METHOD, LOSSY_TARGETS, is_native


@dataclass(frozen=True)
class TranscodeResult:
    """What :func:`transcode_file` wrote. ``pixel_bytes`` is the uncompressed pixel size (for MB/s)."""

    path: Path
    transfer_syntax: str
    sop_instance_uid: str
    bytes_in: int
    bytes_out: int
    pixel_bytes: int
    lossy: bool
    #: CPU seconds the conversion took in its worker (0 when not measured).
    seconds: float = 0.0


@contextmanager
def _atomic(dst: Path) -> Iterator[Path]:
    """Write to a temporary name next to ``dst``, then rename it.

    Readers never see half a file, a failure leaves nothing behind, and an existing ``dst`` that is a
    hard link to some source is replaced, not written through.
    """
    part = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    try:
        yield part
        os.replace(part, dst)
    finally:
        part.unlink(missing_ok=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Pass-through: a hard link where possible, else a streamed copy. Pixel Data is never parsed."""
    with _atomic(dst) as part:
        try:
            os.link(src, part)
        except OSError:
            shutil.copyfile(src, part)


def _clear_unused_bits(arr: np.ndarray, info: InstanceInfo, in_place: bool = False) -> np.ndarray:
    """PS3.5 8.1.1 / PS3.3 C.7.6.3.1: bits above Bits Stored are not pixel data (old overlays).

    Cleared (unsigned) or replaced by the sign of Bits Stored (signed, two's complement), in a new
    array or, with ``in_place``, in ``arr`` itself (writable); ``arr`` is returned untouched when
    every allocated bit is stored."""
    stored, allocated = info.bits_stored or 0, info.bits_allocated or 0
    if not 0 < stored < allocated:
        return arr
    out = arr if in_place else None
    if info.pixel_representation == 1:
        shift = arr.dtype.itemsize * 8 - stored
        return np.right_shift(np.left_shift(arr, shift, out=out), shift, out=out)
    return np.bitwise_and(arr, np.asarray((1 << stored) - 1, dtype=arr.dtype), out=out)


#: Pixel Data up to this size is read into one buffer per thread, kept for the next instance (a
#: fresh 512 kB buffer per CT slice, and another for the cleared bits, cost ~0.2 ms of page faults).
_REUSED_PIXEL_BUFFER = 16 * 2**20
_pixel_buffers = threading.local()


def _pixel_buffer(length: int) -> memoryview:
    """A writable buffer of ``length`` bytes: this thread's kept one when it is small enough."""
    if length > _REUSED_PIXEL_BUFFER:
        return memoryview(bytearray(length))
    buf: bytearray | None = getattr(_pixel_buffers, "buf", None)
    if buf is None or len(buf) < length:
        buf = _pixel_buffers.buf = bytearray(max(length, 2**20))
    return memoryview(buf)[:length]


def _decoded_pixels(ds: Dataset, info: InstanceInfo) -> np.ndarray:
    """All frames as ``(frames, rows, columns[, samples])``, colour interleaved, unused high bits cleared.

    Compressed colour sources are converted to RGB (YBR_FULL(_422) JPEG, YBR_ICT/RCT JPEG 2000), and
    Photometric Interpretation is updated; native sources keep their colour space (bit-exact).
    """
    compressed = not is_native(info.transfer_syntax)
    ds.pixel_array_options(as_rgb=compressed)
    arr = ds.pixel_array
    if info.number_of_frames == 1 or arr.ndim == (2 if info.samples_per_pixel == 1 else 3):
        arr = arr[np.newaxis, ...]
    photometric = info.photometric or "MONOCHROME2"
    if info.samples_per_pixel == 3:
        if compressed and photometric.startswith("YBR"):
            photometric = "RGB"
        elif photometric == "YBR_FULL_422":  # native 4:2:2 is upsampled by the decoder
            photometric = "YBR_FULL"
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    arr = _clear_unused_bits(arr, info)
    if arr.dtype.byteorder == ">":  # from Explicit VR Big Endian; encoders want native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _imagecodecs_encode(ds: Dataset, arr: np.ndarray, target: str, policy: Policy) -> list[bytes]:
    import imagecodecs

    frames: list[bytes] = []
    colour = arr.ndim == 4 and arr.shape[-1] == 3
    if target == HTJ2KLossless:
        # Reversible 5/3 wavelet; RGB gets the reversible colour transform → YBR_RCT (PS3.5 8.2.4/A.4.11).
        rct = colour and ds.PhotometricInterpretation == "RGB"
        for frame in arr:
            frames.append(bytes(imagecodecs.htj2k_encode(frame, reversible=True, rgb=rct)))
        if rct:
            ds.PhotometricInterpretation = "YBR_RCT"
        return frames
    if target == JPEGBaseline8Bit:
        # 8-bit, colour as YCbCr 4:2:2 → YBR_FULL_422 (PS3.5 8.2.1, PS3.3 C.7.6.3.1.2).
        for frame in arr:
            if colour:
                frames.append(
                    bytes(imagecodecs.jpeg8_encode(frame, level=policy.jpeg_quality, subsampling="422"))
                )
            else:
                frames.append(bytes(imagecodecs.jpeg8_encode(frame, level=policy.jpeg_quality)))
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        return frames
    raise ValueError(f"no imagecodecs encoder for {target}")


def _pydicom_encode(ds: Dataset, info: InstanceInfo, arr: np.ndarray, target: str, policy: Policy) -> None:
    kwargs: dict[str, Any] = {}
    colour = arr.ndim == 4 and arr.shape[-1] == 3
    if target in (JPEG2000Lossless, JPEG2000) and colour and ds.PhotometricInterpretation == "RGB":
        # PS3.5 8.2.4: the multi-component transform makes it YBR_RCT (reversible) / YBR_ICT (irreversible).
        ds.PhotometricInterpretation = "YBR_RCT" if target == JPEG2000Lossless else "YBR_ICT"
    if target == JPEG2000:
        if policy.j2k_psnr > 0:
            kwargs["j2k_psnr"] = [policy.j2k_psnr]
        else:
            kwargs["j2k_cr"] = [policy.j2k_ratio]
    elif target == JPEGLSNearLossless:
        kwargs["jls_error"] = policy.jpegls_near
    elif target == RLELossless:
        kwargs["encoding_plugin"] = "pylibjpeg"
    data = arr[0] if info.number_of_frames == 1 else arr
    ds.compress(target, data, generate_instance_uid=False, **kwargs)


def _set_encapsulated(ds: Dataset, frames: list[bytes]) -> None:
    # A 32-bit Basic Offset Table overflows past 4 GiB; use the Extended Offset Table there (PS3.5 A.4).
    if sum(len(f) + 8 for f in frames) >= 2**32:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    else:
        ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _mark_lossy(ds: Dataset, method: str, ratio: float | None) -> None:
    """PS3.3 C.7.6.1.1.5: (0028,2110) = 01 for good; Ratio (0028,2112) and Method (0028,2114) appended."""
    ds.LossyImageCompression = "01"
    ratios = _values(ds, "LossyImageCompressionRatio")
    methods = _values(ds, "LossyImageCompressionMethod")
    if ratio is not None and len(ratios) == len(methods):
        ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
    ds.LossyImageCompressionMethod = [*methods, method]


def _derive(ds: Dataset, method: str, ratio: float) -> None:
    """uid_policy = "new": a new SOP Instance derived from the original (PS3.3 C.7.6.1.1.5, C.7.6.1.1.2)."""
    old_class, old_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    new_uid = generate_uid()
    ds.SOPInstanceUID = new_uid
    ds.file_meta.MediaStorageSOPInstanceUID = new_uid
    if "ImageType" in ds:
        image_type = _values(ds, "ImageType") or ["DERIVED"]
        ds.ImageType = ["DERIVED", *image_type[1:]]
    # (0008,2111) Derivation Description | ST
    ds.DerivationDescription = f"Lossy compression {method} {ratio:.1f}:1 by dicomproxy"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113040", "DCM", "Lossy Compression"
    ds.DerivationCodeSequence = Sequence([code])
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121320", "DCM"
    purpose.CodeMeaning = "Uncompressed predecessor"
    ref = Dataset()
    ref.ReferencedSOPClassUID = old_class
    ref.ReferencedSOPInstanceUID = old_uid
    ref.PurposeOfReferenceCodeSequence = Sequence([purpose])
    ds.SourceImageSequence = Sequence([*ds.get("SourceImageSequence", []), ref])


def _note_source_lossy(ds: Dataset, info: InstanceInfo) -> None:
    """Decoding lossy data keeps it lossy: make sure (0028,2110) says so (PS3.3 C.7.6.1.1.5)."""
    if info.already_lossy and str(ds.get("LossyImageCompression", "")) != "01":
        method = LOSSY_METHOD.get(info.transfer_syntax)
        if method is not None and "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = method
        ds.LossyImageCompression = "01"


def _to_native(ds: Dataset, info: InstanceInfo) -> None:
    if info.has_pixel_data and not is_native(info.transfer_syntax):
        ds.decompress(generate_instance_uid=False)  # as_rgb: YBR JPEG → RGB, Photometric updated
        _note_source_lossy(ds, info)
    elif info.has_pixel_data and info.transfer_syntax == ExplicitVRBigEndian:
        arr = ds.pixel_array  # native byte order; rewritten little endian below
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        ds["PixelData"].VR = "OW" if (info.bits_allocated or 8) > 8 else "OB"


_LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


def _patched_meta(meta: bytes, syntax: str) -> bytes | None:
    """File Meta group (PS3.10 7.1, always Explicit VR LE) with (0002,0010) replaced and (0002,0000) fixed.

    Byte-level so the pass does not pay for pydicom's meta validation and writer per file; None if the
    group is not laid out as expected (the caller then uses pydicom).
    """
    out: list[bytes] = []
    pos, found = 0, False
    while pos < len(meta):
        if pos + 8 > len(meta):
            return None
        group, elem, vr = struct.unpack_from("<HH2s", meta, pos)
        if group != 0x0002:
            return None
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", meta, pos + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H", meta, pos + 6)
            header = 8
        end = pos + header + length
        if (group, elem) == (0x0002, 0x0000):
            pass  # rewritten below
        elif (group, elem) == (0x0002, 0x0010):
            value = syntax.encode("ascii")
            if len(value) % 2:
                value += b"\0"
            out.append(struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(value)) + value)
            found = True
        else:
            out.append(meta[pos:end])
        pos = end
    if not found:
        return None
    rest = b"".join(out)
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(rest)) + rest


def _encode_mono_frames(arr: np.ndarray, info: InstanceInfo, target: str, policy: Policy) -> list[bytes]:
    """Encode ``(frames, rows, columns)`` single-sample frames, one codestream per frame."""
    import imagecodecs

    if target == HTJ2KLossless:
        return [bytes(imagecodecs.htj2k_encode(frame, reversible=True)) for frame in arr]
    if target == JPEGBaseline8Bit:
        return [bytes(imagecodecs.jpeg8_encode(frame, level=policy.jpeg_quality)) for frame in arr]
    charls = jpegls.encoder() if target in (JPEGLSLossless, JPEGLSNearLossless) else None
    if charls is not None:  # pyjpegls's codestream, a faster CharLS build and no buffer copies
        near = policy.jpegls_near if target == JPEGLSNearLossless else 0
        return [charls(frame, info.bits_stored or info.bits_allocated or 8, near) for frame in arr]
    from pydicom.pixels import get_encoder

    encoder = get_encoder(UID(target))
    opts: dict[str, Any] = {
        "rows": info.rows,
        "columns": info.columns,
        "samples_per_pixel": 1,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored or info.bits_allocated,
        "pixel_representation": info.pixel_representation or 0,
        "photometric_interpretation": info.photometric,
        "number_of_frames": 1,
    }
    if target == RLELossless:
        opts["encoding_plugin"] = "pylibjpeg"
    elif target == JPEGLSNearLossless:
        opts["jls_error"] = policy.jpegls_near
    elif target == JPEG2000 and policy.j2k_psnr > 0:
        opts["j2k_psnr"] = [policy.j2k_psnr]
    elif target == JPEG2000:
        opts["j2k_cr"] = [policy.j2k_ratio]
    return [encoder.encode(frame, **opts) for frame in arr]


#: (0028,2110) Lossy Image Compression, (0028,2112) Ratio, (0028,2114) Method; (0028,0000) group length.
_LOSSY_TAGS = (0x00282110, 0x00282112, 0x00282114)
_GROUP_0028_LENGTH = 0x00280000


def _lossy_insert_at(ds: Dataset, pixel_tell: int) -> int | None:
    """File offset where the lossy attributes go in an Explicit VR LE data set read up to Pixel Data:
    the start of the first element after (0028,2114), else Pixel Data. None if any of them (or a
    (0028,0000) group length that would change) is there already: the general path handles those."""
    if any(tag in ds for tag in (*_LOSSY_TAGS, _GROUP_0028_LENGTH)):
        return None
    for tag in sorted(ds.keys()):
        if tag <= _LOSSY_TAGS[-1]:
            continue
        elem = ds.get_item(tag)
        tell = getattr(elem, "value_tell", None)
        if tell is None:
            tell = getattr(elem, "file_tell", None)
        if tell is None:
            return None
        return int(tell) - (12 if str(elem.VR).encode("ascii") in _LONG_VRS else 8)
    return pixel_tell


def _text_element(tag: int, vr: str, value: str) -> bytes:
    """One short Explicit VR Little Endian text element (PS3.5 7.1.2), space-padded to even length."""
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(raw)) + raw


def _fast_mono(src: Path, dst: Path, header: Header, target: str, policy: Policy) -> TranscodeResult | None:
    """Single-sample Explicit VR Little Endian source into a compressed syntax, header bytes copied.

    Lossless: nothing but File Meta and Pixel Data changes (PS3.5 A.4: same VR encoding; the Image
    Pixel attributes stay valid). Lossy with ``uid_policy = "keep"``: also (0028,2110/2112/2114)
    (PS3.3 C.7.6.1.1.5), inserted in tag order. The header is not re-serialised. Returns None when
    the instance does not qualify (the general path handles it).
    """
    info, ds = header.info, header.dataset
    lossy = target in LOSSY_TARGETS
    if (
        info.transfer_syntax != ExplicitVRLittleEndian
        or target not in (*LOSSLESS_TARGETS, *LOSSY_TARGETS)
        or header.pixel_tell is None
        or ds.preamble is None
        or info.samples_per_pixel != 1
        or not codec_applies(policy, info, target)
        or (lossy and (policy.uid_policy != "keep" or not lossy_allowed(policy, info)))
    ):
        return None
    meta_length = ds.file_meta.get("FileMetaInformationGroupLength")
    insert_at = _lossy_insert_at(ds, header.pixel_tell) if lossy else header.pixel_tell
    if meta_length is None or insert_at is None:
        return None
    body_start = 128 + 4 + 12 + int(meta_length)
    with open(src, "rb") as fp:
        fp.seek(132)
        old_meta = fp.read(body_start - 132)
        body = fp.read(header.pixel_tell - body_start)
        head = fp.read(12)
        if len(head) < 12:
            return None
        group, elem, vr, _, length = struct.unpack("<HH2s2sI", head)
        if (group, elem) != (0x7FE0, 0x0010) or vr not in (b"OB", b"OW") or length != info.pixel_bytes:
            return None
        raw = _pixel_buffer(length)
        if fp.readinto(raw) != length:
            return None
        tail = fp.read()  # elements after Pixel Data (rare, e.g. Data Set Trailing Padding) stay as they are
    dtype = np.dtype(f"<{'i' if info.pixel_representation == 1 else 'u'}{(info.bits_allocated or 8) // 8}")
    arr = np.frombuffer(raw, dtype=dtype).reshape(info.number_of_frames, info.rows or 0, info.columns or 0)
    arr = _clear_unused_bits(arr, info, in_place=True)
    pixels = encapsulate(_encode_mono_frames(arr, info, target, policy))
    if lossy:
        split = insert_at - body_start
        ratio = info.pixel_bytes / max(1, len(pixels))
        body = b"".join(
            (
                body[:split],
                _text_element(_LOSSY_TAGS[0], "CS", "01"),
                _text_element(_LOSSY_TAGS[1], "DS", f"{ratio:.2f}"),
                _text_element(_LOSSY_TAGS[2], "CS", LOSSY_METHOD[target]),
                body[split:],
            )
        )
    meta_bytes = _patched_meta(old_meta, target)
    if meta_bytes is None:
        meta = FileMetaDataset(ds.file_meta)
        meta.TransferSyntaxUID = UID(target)
        meta_buf = DicomBytesIO()
        meta_buf.is_little_endian, meta_buf.is_implicit_VR = True, False
        write_file_meta_info(meta_buf, meta, enforce_standard=True)
        meta_bytes = meta_buf.getvalue()
    pixel_header = struct.pack("<HH2s2sI", 0x7FE0, 0x0010, b"OB", b"\0\0", 0xFFFFFFFF)
    with _atomic(dst) as part, open(part, "wb") as out:
        out.write(ds.preamble)
        out.write(b"DICM")
        out.write(meta_bytes)
        out.write(body)
        out.write(pixel_header)
        out.write(pixels)
        out.write(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")  # (FFFE,E0DD) Sequence Delimitation Item
        out.write(tail)
    return TranscodeResult(
        dst,
        str(target),
        info.sop_instance_uid,
        src.stat().st_size,
        dst.stat().st_size,
        info.pixel_bytes,
        lossy,
    )


class ConversionFailed(RuntimeError):
    """:func:`convert_for` chose ``target`` but could not write it (undecodable pixels, codec error)."""

    def __init__(self, target: str, error: str) -> None:
        super().__init__(target, error)  # both in args: it crosses the pool's process boundary
        self.target = target

    def __str__(self) -> str:
        return f"cannot convert to {self.args[0]}: {self.args[1]}"


def convert_for(
    src: Path, dst: Path, accepted: list[str] | tuple[str, ...], policy: Policy
) -> TranscodeResult:
    """Choose the syntax ``src`` goes out in (:func:`choose_target`) and write it to ``dst``.

    What a pool worker does for the relay: the header is read once for both steps, off the relay's
    thread. A result whose ``path`` is ``src`` means "send it as held" (nothing is written).
    Raises :class:`~dicomproxy.errors.CannotTranscode` when nothing accepted can carry it,
    :class:`ConversionFailed` when the chosen conversion fails.
    """
    src = Path(src)
    header = read_header(src)
    target = choose_target(policy, header.info, accepted)
    if target == header.info.transfer_syntax:
        size = src.stat().st_size
        return TranscodeResult(
            src, target, header.info.sop_instance_uid, size, size, header.info.pixel_bytes, False
        )
    try:
        return transcode_file(src, dst, target, policy, header)
    except CannotTranscode:
        raise
    except Exception as exc:
        raise ConversionFailed(target, str(exc) or type(exc).__name__) from exc


def transcode_file(
    src: Path, dst: Path, target: str, policy: Policy, header: Header | None = None
) -> TranscodeResult:
    """Write ``src`` to ``dst`` (a valid PS3.10 file) in transfer syntax ``target``.

    ``target == source``: hard link or copy, Pixel Data is not even read. Native targets re-encode the
    data set (and decompress). Compressed targets decode all frames, clear unused bits, encode per frame.
    Lossless output and decompression keep the SOP Instance UID; lossy output gets the lossy attributes
    and, with ``uid_policy = "new"``, a new UID and the derivation attributes. ``header``: the file's
    :func:`read_header`, when the caller has it already.
    """
    src, dst = Path(src), Path(dst)
    bytes_in = src.stat().st_size
    header = header or read_header(src)  # header only, no pixel byte is read
    source = header.info.transfer_syntax
    if str(target) == source:
        _link_or_copy(src, dst)
        return TranscodeResult(
            dst, str(target), header.info.sop_instance_uid, bytes_in, bytes_in, header.info.pixel_bytes, False
        )
    fast = _fast_mono(src, dst, header, str(target), policy)
    if fast is not None:
        return fast
    ds = dcmread(src)
    info = info_from_dataset(
        ds,
        source,
        "PixelData" in ds,
        "FloatPixelData" in ds or "DoubleFloatPixelData" in ds,
    )
    lossy = target in LOSSY_TARGETS
    if not is_native(target):
        if not codec_applies(policy, info, target):
            raise CannotTranscode(
                f"{target} cannot carry this instance ({info.photometric}, {info.bits_allocated}-bit)"
            )
        if lossy and not lossy_allowed(policy, info):
            raise CannotTranscode(f"lossy {target} is not allowed for this instance")
    if is_native(target):
        _to_native(ds, info)
    else:
        arr = _decoded_pixels(ds, info)
        _note_source_lossy(ds, info)
        if target in (HTJ2KLossless, JPEGBaseline8Bit):
            _set_encapsulated(ds, _imagecodecs_encode(ds, arr, target, policy))
        elif target in (JPEGLSLossless, JPEGLSNearLossless) and arr.ndim == 3 and jpegls.encoder():
            _set_encapsulated(ds, _encode_mono_frames(arr, info, target, policy))  # as ds.compress would
        else:
            _pydicom_encode(ds, info, arr, target, policy)
        if lossy:
            ratio = info.pixel_bytes / max(1, len(ds.PixelData))
            _mark_lossy(ds, LOSSY_METHOD[target], ratio)
            if policy.uid_policy == "new":
                _derive(ds, LOSSY_METHOD[target], ratio)
    ds.file_meta.TransferSyntaxUID = UID(target)
    with _atomic(dst) as part:
        if info.transfer_syntax == ExplicitVRBigEndian:
            # Retired big endian (PS3.5 A.3): values are parsed, so writing them little endian re-encodes
            # them; Pixel Data was swapped above. pydicom wants this spelled out.
            for _ in ds.iterall():
                pass
            dcmwrite(
                part,
                ds,
                implicit_vr=UID(target).is_implicit_VR,
                little_endian=True,
                force_encoding=True,  # not with enforce_file_format; the read file has preamble and meta
            )
        else:
            ds.save_as(part, enforce_file_format=True)
    out_info = info_from_dataset(ds, str(target), info.has_pixel_data, info.float_pixels)
    return TranscodeResult(
        path=dst,
        transfer_syntax=str(target),
        sop_instance_uid=out_info.sop_instance_uid,
        bytes_in=bytes_in,
        bytes_out=dst.stat().st_size,
        pixel_bytes=info.pixel_bytes,
        lossy=lossy,
    )


__all__ = ["ConversionFailed", "TranscodeResult", "convert_for", "transcode_file"]

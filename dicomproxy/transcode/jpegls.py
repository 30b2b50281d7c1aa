"""JPEG-LS encoding (PS3.5 A.4.3, ISO/IEC 14495-1) through CharLS's C API, the codestream pyjpegls writes.

pydicom's JPEG-LS encoder is pyjpegls, whose CharLS 2.4.2 build was 52 % of a pool worker's CPU on
real CT, plus 14 % more for its buffers (a zero-filled destination twice the raw size, copied once
more, and the frame copied to ``bytes``) — issue 29's profile. imagecodecs ships CharLS 2.4.3 as a
shared library built by a newer compiler (17–27 % faster on the same slices) but its own
``jpegls_encode`` writes the sample precision P as the container's 16 bits and a SPIFF header;
DICOM wants P = Bits Stored (pydicom and DCMTK check it). So this module calls that library's
``charls_jpegls_encoder_*`` functions (CharLS's stable C API, ``charls_jpegls_encoder.h``) with
pyjpegls's frame parameters: one component, interleave none, P = max(2, Bits Stored), NEAR as given,
default preset parameters, no SPIFF header. The codestream is byte for byte pyjpegls's (tested).

:func:`encoder` is None when the library is not there or does not answer as CharLS 2.x; the caller
then uses pydicom's encoder.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Encodes one single-sample frame: (pixels, Bits Stored, NEAR) → codestream.
Encoder = Callable[[np.ndarray, int, int], bytes]


class _FrameInfo(ctypes.Structure):
    """``charls_frame_info``."""

    _fields_ = [
        ("width", ctypes.c_uint32),
        ("height", ctypes.c_uint32),
        ("bits_per_sample", ctypes.c_int32),
        ("component_count", ctypes.c_int32),
    ]


def _library_paths() -> list[Path]:
    """CharLS as imagecodecs' wheel ships it (``imagecodecs.libs/libcharls-<hash>.so.<version>``)."""
    try:
        import imagecodecs
    except ImportError:
        return []
    libs = Path(imagecodecs.__file__).resolve().parent.parent / "imagecodecs.libs"
    return sorted(libs.glob("libcharls*.so*"))


def _bind(path: Path) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(path))  # CDLL: the GIL is released during each call
        lib.charls_jpegls_encoder_create.restype = ctypes.c_void_p
        lib.charls_jpegls_encoder_create.argtypes = []
        lib.charls_jpegls_encoder_destroy.restype = None
        lib.charls_jpegls_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.charls_jpegls_encoder_set_frame_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(_FrameInfo)]
        lib.charls_jpegls_encoder_set_near_lossless.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.charls_jpegls_encoder_set_interleave_mode.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.charls_jpegls_encoder_get_estimated_destination_size.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
        ]
        lib.charls_jpegls_encoder_set_destination_buffer.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        lib.charls_jpegls_encoder_encode_from_buffer.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint32,
        ]
        lib.charls_jpegls_encoder_get_bytes_written.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
        ]
        lib.charls_get_error_message.restype = ctypes.c_char_p
        lib.charls_get_error_message.argtypes = [ctypes.c_int]
        major, minor, patch = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
        lib.charls_get_version_number(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    except (OSError, AttributeError):
        return None
    return lib if major.value == 2 else None


class _CharLS:
    """One loaded CharLS library; a destination buffer per thread, grown when a frame needs more."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._local = threading.local()

    def _check(self, code: int, step: str) -> None:
        if code:
            message = self._lib.charls_get_error_message(code) or b"unknown error"
            raise RuntimeError(f"CharLS {step}: {message.decode('utf-8', 'replace')}")

    def _buffer(self, size: int) -> bytearray:
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < size:
            buf = self._local.buf = bytearray(size)
        return buf

    def encode(self, frame: np.ndarray, bits_stored: int, near: int) -> bytes:
        """``frame``: (rows, columns) integers within ``bits_stored`` (signed: sign-extended, as
        pydicom hands them to pyjpegls); 1-byte samples up to 8 bits stored, else 2-byte."""
        if frame.ndim != 2 or not 1 <= bits_stored <= 16:
            raise ValueError(f"not a single-sample frame of 1-16 bits: {frame.shape}, {bits_stored}")
        itemsize = 1 if bits_stored <= 8 else 2
        if frame.dtype.itemsize != itemsize:
            frame = frame.astype(f"{frame.dtype.kind}{itemsize}")
        frame = np.ascontiguousarray(frame)
        rows, columns = frame.shape
        info = _FrameInfo(columns, rows, max(2, bits_stored), 1)
        lib = self._lib
        handle = lib.charls_jpegls_encoder_create()
        if not handle:
            raise MemoryError("CharLS: no encoder")
        try:
            self._check(lib.charls_jpegls_encoder_set_frame_info(handle, ctypes.byref(info)), "frame info")
            self._check(lib.charls_jpegls_encoder_set_near_lossless(handle, near), "NEAR")
            self._check(lib.charls_jpegls_encoder_set_interleave_mode(handle, 0), "interleave mode")
            size = ctypes.c_size_t()
            self._check(
                lib.charls_jpegls_encoder_get_estimated_destination_size(handle, ctypes.byref(size)), "size"
            )
            buf = self._buffer(size.value)
            dst = (ctypes.c_char * len(buf)).from_buffer(buf)
            self._check(
                lib.charls_jpegls_encoder_set_destination_buffer(handle, dst, len(buf)), "destination"
            )
            self._check(
                lib.charls_jpegls_encoder_encode_from_buffer(
                    handle, frame.ctypes.data, frame.nbytes, columns * itemsize
                ),
                "encode",
            )
            written = ctypes.c_size_t()
            self._check(lib.charls_jpegls_encoder_get_bytes_written(handle, ctypes.byref(written)), "length")
            del dst
            return bytes(memoryview(buf)[: written.value])
        finally:
            lib.charls_jpegls_encoder_destroy(handle)


@lru_cache(maxsize=1)
def encoder() -> Encoder | None:
    """The CharLS encoder of this module, or None (then pydicom's pyjpegls encoder is used)."""
    for path in _library_paths():
        lib = _bind(path)
        if lib is not None:
            return _CharLS(lib).encode
    return None


__all__ = ["Encoder", "encoder"]

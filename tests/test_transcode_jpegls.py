"""JPEG-LS through CharLS's C API (issue 29): the codestream pyjpegls writes, byte for byte, for any
single-sample frame of 2-16 bits stored, signed or not, lossless or near-lossless; the fast path
(Explicit VR LE sources) and the general path use it; real CT slices convert to the same files as
with pydicom's encoder."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import jpeg_ls
import jpeg_ls.CharLS
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless

from dicomproxy.transcode import Policy, jpegls
from dicomproxy.transcode.codec import convert_for
from testkit.realct import write_real_study
from testkit.samples import StudySpec

POLICY = Policy.default("lossless")


def _encoder() -> jpegls.Encoder:
    encode = jpegls.encoder()
    assert encode is not None, "imagecodecs' wheel ships libcharls; without it pyjpegls encodes (slower)"
    return encode


@st.composite
def frames(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    """(frame as the fast path hands it over, Bits Stored, NEAR)."""
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    rows, columns = draw(st.integers(8, 40)), draw(st.integers(8, 40))
    near = draw(st.sampled_from([0, 0, 1, 3]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    smooth = draw(st.booleans())  # runs and small gradients, like CT, or noise
    if smooth:
        base = rng.integers(low, high)
        arr = np.clip(base + np.cumsum(rng.integers(-2, 3, rows * columns)), low, high - 1)
    else:
        arr = rng.integers(low, high, rows * columns)
    dtype = f"{'i' if signed else 'u'}{1 if bits <= 8 and draw(st.booleans()) else 2}"
    return arr.reshape(rows, columns).astype(dtype), bits, near


@settings(max_examples=300, deadline=None)
@given(frames())
def test_codestream_is_pyjpegls_byte_for_byte(case: tuple[np.ndarray, int, int]) -> None:
    """Same bytes as pyjpegls's ``encode_buffer`` given the frame as pydicom passes it (samples of
    1 byte up to 8 bits stored, else 2), and lossless (NEAR 0) decodes to the stored bits."""
    arr, bits, near = case
    itemsize = 1 if bits <= 8 else 2
    got = _encoder()(arr, bits, near)
    try:
        expected = jpeg_ls.encode_buffer(
            arr.astype(f"{arr.dtype.kind}{itemsize}").tobytes(), *arr.shape, 1, bits, lossy_error=near
        )
    except RuntimeError as exc:  # a small noisy frame: see test_tiny_frames
        assert "too small" in str(exc)
        event("pyjpegls: destination too small")
    else:
        assert got == bytes(expected)
    p = got.index(b"\xff\xf7") + 4  # SOF55: Lf (2 bytes), then P
    assert got[p] == max(2, bits)
    if near == 0:
        decoded = imagecodecs.jpegls_decode(got).astype(np.int64)
        assert np.array_equal(decoded, arr.astype(np.int64) & ((1 << bits) - 1))


def test_tiny_frames() -> None:
    """A frame whose codestream outgrows twice its raw size (pyjpegls's destination, so it raises:
    "destination buffer is too small") is encoded: CharLS estimates the size itself."""
    arr = np.array([[436], [17], [300]], np.uint16)
    with pytest.raises(RuntimeError):
        jpeg_ls.encode_buffer(arr.tobytes(), 3, 1, 1, 9)
    assert np.array_equal(imagecodecs.jpegls_decode(_encoder()(arr, 9, 0)).reshape(3, 1), arr)


def test_wrong_frames_are_refused() -> None:
    with pytest.raises(ValueError):
        _encoder()(np.zeros((2, 2, 3), np.uint8), 8, 0)
    with pytest.raises(ValueError):
        _encoder()(np.zeros((2, 2), np.uint32), 17, 0)


def _real_ct(folder: Path, count: int, syntax: str) -> list[Path]:
    """Real CT slices as the PACS holds them, in ``syntax`` (Implicit VR: the general path)."""
    paths = write_real_study(StudySpec(kind="CT", series=1, images_per_series=count), folder)
    if syntax == ImplicitVRLittleEndian:
        for path in paths:
            ds = dcmread(path)
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return paths


SOURCE_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]  # fast path, general path


@pytest.mark.parametrize("syntax", SOURCE_SYNTAXES, ids=["fast-path", "general-path"])
def test_real_ct_converts_to_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str
) -> None:
    """The real CT corpus (12-bit unsigned, 14- and 16-bit signed slices): the relay's conversion
    with CharLS through its C API and with pydicom's pyjpegls encoder gives identical files, whose
    pixels are the source's."""
    accepted = (JPEGLSLossless, ExplicitVRLittleEndian)
    for k, src in enumerate(_real_ct(tmp_path / "src", 4, syntax)):
        ours = convert_for(src, tmp_path / f"ours{k}.dcm", accepted, POLICY)
        with monkeypatch.context() as m:
            m.setattr(jpegls, "encoder", lambda: None)
            theirs = convert_for(src, tmp_path / f"theirs{k}.dcm", accepted, POLICY)
        assert ours.transfer_syntax == theirs.transfer_syntax == JPEGLSLossless
        assert ours.path.read_bytes() == theirs.path.read_bytes()
        assert np.array_equal(dcmread(ours.path).pixel_array, dcmread(src).pixel_array)


@pytest.mark.parametrize("syntax", SOURCE_SYNTAXES, ids=["fast-path", "general-path"])
def test_pyjpegls_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str) -> None:
    """A single-sample instance is encoded by CharLS through its C API, not pyjpegls, on both paths."""

    def refuse(*args: object, **kwargs: object) -> bytearray:
        raise AssertionError("pyjpegls called")

    monkeypatch.setattr(jpeg_ls.CharLS, "encode_buffer", refuse)  # what pydicom's plugin calls
    src = _real_ct(tmp_path / "src", 1, syntax)[0]
    out = convert_for(src, tmp_path / "out.dcm", (JPEGLSLossless,), POLICY)
    assert out.transfer_syntax == JPEGLSLossless
    assert np.array_equal(dcmread(out.path).pixel_array, dcmread(src).pixel_array)

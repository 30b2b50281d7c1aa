"""Transcoding real files: bit-exact lossless round trips, lossy targets and attributes, a real
validator (dciodvfy), independent decoders (DCMTK, GDCM, OpenJPEG for HTJ2K), the process pool."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicomproxy.errors import CannotTranscode
from dicomproxy.transcode import (
    LOSSLESS_TARGETS,
    LOSSY_TARGETS,
    Policy,
    TranscodePool,
    choose_target,
    read_info,
    transcode_file,
)
from dicomproxy.transcode.codec import _mark_lossy
from dicomproxy.transcode.syntaxes import DEFAULT_LOSSLESS, DEFAULT_LOSSY
from testkit.samples import StudySpec, make_instance

KINDS = ("CT", "MR", "US", "MF")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # local only: tests never download
POLICY = Policy.default("lossless")
LOSSY = replace(POLICY, mode="lossy")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; scripts/setup-peers.sh installs it")
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One instance of each generated kind; CT carries junk in its unused high bits (old overlays)."""
    root = tmp_path_factory.mktemp("src")
    paths = {}
    for kind in KINDS:
        ds = make_instance(StudySpec(kind, images_per_series=1), 0, 0)
        if kind == "CT":
            arr = ds.pixel_array.copy()
            arr[::7, ::5] |= 0xF000  # bits 12-15 set: not pixel data with BitsStored 12
            ds.PixelData = arr.tobytes()
        paths[kind] = root / f"{kind}.dcm"
        ds.save_as(paths[kind], enforce_file_format=True)
    return paths


def expected_pixels(path: Path) -> np.ndarray:
    """The source's pixel values as a conforming decoder should see them (high bits cleared)."""
    ds = dcmread(path)
    arr = ds.pixel_array
    stored = ds.BitsStored
    if stored < ds.BitsAllocated and ds.PixelRepresentation == 0:
        arr = arr & ((1 << stored) - 1)
    return arr


def psnr(a: np.ndarray, b: np.ndarray, bits: int) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(((1 << bits) - 1) ** 2 / mse)


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's Error lines. It does not know HTJ2K (.4.201) yet, so those files are checked with the
    Transfer Syntax UID swapped to JPEG 2000 Lossless: same encapsulation, same IOD rules (PS3.5 A.4.4)."""
    exe = need("dciodvfy")
    ts = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if ts == HTJ2KLossless:
        ds = dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        alias = path.with_suffix(".as-j2k.dcm")
        ds.save_as(alias, enforce_file_format=True)
        path = alias
    proc = subprocess.run([exe, str(path)], capture_output=True, timeout=60)
    text = (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
    return {line.strip() for line in text.splitlines() if line.startswith("Error")}


# --- lossless: bit-exact on every target, every kind ------------------------------------------


@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
@pytest.mark.parametrize("kind", KINDS)
def test_lossless_round_trip_is_bit_exact(
    sources: dict[str, Path], tmp_path: Path, kind: str, target: str
) -> None:
    src = sources[kind]
    result = transcode_file(src, tmp_path / "out.dcm", target, POLICY)
    out = dcmread(result.path)
    before = dcmread(src)
    assert out.file_meta.TransferSyntaxUID == target == result.transfer_syntax
    assert out.SOPInstanceUID == before.SOPInstanceUID == result.sop_instance_uid
    assert out.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID
    assert "LossyImageCompression" not in out and not result.lossy
    assert result.pixel_bytes == len(before.PixelData)
    np.testing.assert_array_equal(out.pixel_array, expected_pixels(src))
    if out.SamplesPerPixel == 3:
        assert out.PlanarConfiguration == 0
        assert out.PhotometricInterpretation == (
            "YBR_RCT" if target in (HTJ2KLossless, JPEG2000Lossless) else "RGB"
        )
    if kind == "MF":
        assert out.NumberOfFrames == 16
        frames = list(pydicom.encaps.generate_frames(out.PixelData, number_of_frames=16))
        assert len(frames) == 16  # one fragment per frame


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("target", "tool"),
    [(JPEGLSLossless, "dcmdjpls"), (RLELossless, "dcmdrle"), (JPEG2000Lossless, "gdcmconv")],
)
@pytest.mark.parametrize("kind", KINDS)
def test_lossless_output_decodes_in_dcmtk_or_gdcm(
    sources: dict[str, Path], tmp_path: Path, kind: str, target: str, tool: str
) -> None:
    """A second, independent decoder reads our output and gets the same pixels."""
    exe = need(tool)
    out = transcode_file(sources[kind], tmp_path / "c.dcm", target, POLICY).path
    raw = tmp_path / "raw.dcm"
    args = [exe, "--raw", str(out), str(raw)] if tool == "gdcmconv" else [exe, str(out), str(raw)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    decoded = dcmread(raw)
    assert decoded.file_meta.TransferSyntaxUID.is_compressed is False
    arr = decoded.pixel_array
    if decoded.SamplesPerPixel == 3 and decoded.PhotometricInterpretation != "RGB":
        pytest.fail(f"{tool} left {decoded.PhotometricInterpretation}")
    np.testing.assert_array_equal(arr, expected_pixels(sources[kind]))


def test_htj2k_decodes_with_openjpeg(sources: dict[str, Path], tmp_path: Path) -> None:
    """HTJ2K is encoded by OpenJPH (imagecodecs); OpenJPEG (pylibjpeg-openjpeg) is the other decoder.
    Neither DCMTK nor GDCM 3.0 decode HTJ2K."""
    from pydicom.pixels import get_decoder

    assert "pylibjpeg" in get_decoder(HTJ2KLossless).available_plugins
    for kind in ("CT", "US"):
        out = dcmread(transcode_file(sources[kind], tmp_path / f"{kind}.dcm", HTJ2KLossless, POLICY).path)
        out.pixel_array_options(decoding_plugin="pylibjpeg")
        np.testing.assert_array_equal(out.pixel_array, expected_pixels(sources[kind]))


# --- lossy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_lossy_j2k_meets_ratio_and_marks_lossy(sources: dict[str, Path], tmp_path: Path, kind: str) -> None:
    src = sources[kind]
    result = transcode_file(src, tmp_path / "l.dcm", JPEG2000, LOSSY)
    out = dcmread(result.path)
    ratio = result.pixel_bytes / len(out.PixelData)
    assert ratio >= 0.9 * LOSSY.j2k_ratio
    assert result.lossy
    assert out.LossyImageCompression == "01"
    assert float(out.LossyImageCompressionRatio) == pytest.approx(ratio, rel=0.01)
    assert out.LossyImageCompressionMethod == "ISO_15444_1"
    assert out.SOPInstanceUID == dcmread(src).SOPInstanceUID  # uid_policy = keep
    if out.SamplesPerPixel == 3:
        assert out.PhotometricInterpretation == "YBR_ICT"
    before = expected_pixels(src)
    assert psnr(out.pixel_array, before, out.BitsStored) > 30


def test_lossy_j2k_psnr_target(sources: dict[str, Path], tmp_path: Path) -> None:
    target_db = 60.0
    policy = replace(LOSSY, j2k_psnr=target_db)
    out = dcmread(transcode_file(sources["CT"], tmp_path / "p.dcm", JPEG2000, policy).path)
    # PSNR as OpenJPEG computes it: over the Bits Stored range
    assert psnr(out.pixel_array, expected_pixels(sources["CT"]), 12) >= target_db - 0.5


@pytest.mark.parametrize("kind", ["CT", "US", "MF"])
def test_jpegls_near_lossless_error_bound(sources: dict[str, Path], tmp_path: Path, kind: str) -> None:
    result = transcode_file(sources[kind], tmp_path / "n.dcm", JPEGLSNearLossless, LOSSY)
    out = dcmread(result.path)
    diff = np.abs(out.pixel_array.astype(np.int64) - expected_pixels(sources[kind]).astype(np.int64))
    assert 0 < diff.max() <= LOSSY.jpegls_near
    assert out.LossyImageCompressionMethod == "ISO_14495_1" and out.LossyImageCompression == "01"


@pytest.mark.dcmtk
@pytest.mark.parametrize("kind", ["US", "MF"])
def test_jpeg_baseline_8bit(sources: dict[str, Path], tmp_path: Path, kind: str) -> None:
    exe = need("dcmdjpeg")
    result = transcode_file(sources[kind], tmp_path / "j.dcm", JPEGBaseline8Bit, LOSSY)
    out = dcmread(result.path)
    assert out.LossyImageCompressionMethod == "ISO_10918_1"
    assert out.PhotometricInterpretation == ("YBR_FULL_422" if kind == "US" else "MONOCHROME2")
    raw = tmp_path / "raw.dcm"
    subprocess.run([exe, str(result.path), str(raw)], check=True, capture_output=True, timeout=60)
    decoded = dcmread(raw)  # DCMTK (IJG) decodes what libjpeg-turbo wrote, YBR → RGB
    assert psnr(decoded.pixel_array, expected_pixels(sources[kind]), 8) > 30


def test_lossy_refused_for_lossy_or_excluded(sources: dict[str, Path], tmp_path: Path) -> None:
    lossy = transcode_file(sources["CT"], tmp_path / "once.dcm", JPEG2000, LOSSY)
    with pytest.raises(CannotTranscode):
        transcode_file(lossy.path, tmp_path / "twice.dcm", JPEGLSNearLossless, LOSSY)
    with pytest.raises(CannotTranscode):
        transcode_file(
            sources["MR"], tmp_path / "mr.dcm", JPEG2000, replace(LOSSY, never_lossy_modalities=("MR",))
        )
    # decompressing lossy data keeps the record that it is lossy
    back = dcmread(transcode_file(lossy.path, tmp_path / "back.dcm", ExplicitVRLittleEndian, LOSSY).path)
    assert back.LossyImageCompression == "01" and back.LossyImageCompressionMethod == "ISO_15444_1"


def test_lossy_values_are_appended_never_reset() -> None:
    ds = pydicom.Dataset()
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = "8.5"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    _mark_lossy(ds, "ISO_15444_1", 2.5)
    assert ds.LossyImageCompression == "01"
    assert [float(v) for v in ds.LossyImageCompressionRatio] == [8.5, 2.5]
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]


def test_uid_policy_new_derives_a_new_instance(sources: dict[str, Path], tmp_path: Path) -> None:
    src = dcmread(sources["CT"])
    result = transcode_file(sources["CT"], tmp_path / "d.dcm", JPEG2000, replace(LOSSY, uid_policy="new"))
    out = dcmread(result.path)
    assert result.sop_instance_uid == out.SOPInstanceUID != src.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.ImageType[0] == "DERIVED" and list(out.ImageType[1:]) == list(src.ImageType[1:])
    assert "ISO_15444_1" in out.DerivationDescription
    assert out.DerivationCodeSequence[0].CodeValue == "113040"
    ref = out.SourceImageSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
    # lossless never changes the UID, whatever the policy
    kept = transcode_file(sources["CT"], tmp_path / "k.dcm", JPEGLSLossless, replace(LOSSY, uid_policy="new"))
    assert kept.sop_instance_uid == src.SOPInstanceUID


# --- validator ----------------------------------------------------------------------------------


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("kind", "target", "uid_policy"),
    [
        *[(k, t, "keep") for k in ("CT", "US") for t in LOSSLESS_TARGETS],
        ("MF", HTJ2KLossless, "keep"),
        ("MR", JPEGLSLossless, "keep"),
        ("CT", JPEG2000, "keep"),
        ("CT", JPEG2000, "new"),
        ("US", JPEG2000, "keep"),
        ("US", JPEGBaseline8Bit, "new"),
        ("MF", JPEGLSNearLossless, "keep"),
        ("CT", ImplicitVRLittleEndian, "keep"),
    ],
)
def test_dciodvfy_adds_no_error(
    sources: dict[str, Path], tmp_path: Path, kind: str, target: str, uid_policy: str
) -> None:
    policy = replace(LOSSY, uid_policy=uid_policy)  # type: ignore[arg-type]
    out = transcode_file(sources[kind], tmp_path / "v.dcm", target, policy).path
    new_errors = dciodvfy_errors(out) - dciodvfy_errors(sources[kind])
    assert not new_errors, "\n".join(sorted(new_errors))


def test_dciodvfy_check_can_fail(tmp_path: Path) -> None:
    """The validator comparison sees a broken output (guards the test above against passing vacuously)."""
    ds = make_instance(StudySpec("CT"), 0, 0)
    good = tmp_path / "good.dcm"
    ds.save_as(good, enforce_file_format=True)
    del ds.Rows
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    assert dciodvfy_errors(bad) - dciodvfy_errors(good)


# --- real compressed inputs (pydicom's own test files) ----------------------------------------

REAL = [
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless, signed 16
    "MR_small_RLE.dcm",  # RLE, signed 16
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "SC_rgb_rle_2frame.dcm",  # RLE RGB multi-frame
    "SC_rgb_rle_16bit.dcm",  # RLE RGB 16-bit
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1 RGB
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline YBR_FULL (lossy)
    "JPGExtended.dcm",  # JPEG extended 12-bit (lossy)
    "JPEG2000.dcm",  # JPEG 2000 lossy, signed
    "SC_rgb_gdcm_KY.dcm",  # JPEG 2000 RGB
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "image_dfl.dcm",  # Deflated Explicit VR LE
    "MR_small_implicit.dcm",
]


@pytest.mark.parametrize("name", REAL)
def test_real_inputs_decompress_and_reencode_losslessly(tmp_path: Path, name: str) -> None:
    src = TEST_FILES / name
    if not src.exists():
        pytest.skip(f"{name} is not shipped with this pydicom")
    info = read_info(src)
    reference = dcmread(src).pixel_array  # what pydicom's decoder sees (YBR → RGB)
    native = dcmread(transcode_file(src, tmp_path / "native.dcm", ExplicitVRLittleEndian, POLICY).path)
    np.testing.assert_array_equal(native.pixel_array, reference)
    assert native.SOPInstanceUID == info.sop_instance_uid
    if info.already_lossy:
        assert native.LossyImageCompression == "01"
    for target in LOSSLESS_TARGETS:
        policy = replace(POLICY, lossless_syntaxes=(target,))
        chosen = choose_target(policy, info, [target, ExplicitVRLittleEndian])
        if chosen != target:
            continue  # e.g. a lossy source stays as held, or a codec that cannot carry it
        out = dcmread(transcode_file(src, tmp_path / f"{target}.dcm", target, policy).path)
        np.testing.assert_array_equal(out.pixel_array, reference, err_msg=target)
        assert ("LossyImageCompression" in out) == info.already_lossy


def test_htj2k_input_is_decoded(sources: dict[str, Path], tmp_path: Path) -> None:
    ht = transcode_file(sources["US"], tmp_path / "ht.dcm", HTJ2KLossless, POLICY).path
    back = dcmread(transcode_file(ht, tmp_path / "back.dcm", ImplicitVRLittleEndian, POLICY).path)
    assert back.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(back.pixel_array, expected_pixels(sources["US"]))


# --- pass-through and non-image objects ---------------------------------------------------------


def test_same_syntax_is_not_decoded(sources: dict[str, Path], tmp_path: Path) -> None:
    """target == source copies bytes; a file whose Pixel Data is truncated garbage still passes."""
    data = sources["CT"].read_bytes()
    broken = tmp_path / "truncated.dcm"
    broken.write_bytes(data[: len(data) - 100_000])  # pixel value shorter than its length
    info = read_info(broken)
    assert info.has_pixel_data and info.transfer_syntax == ExplicitVRLittleEndian
    result = transcode_file(broken, tmp_path / "copy.dcm", ExplicitVRLittleEndian, POLICY)
    assert result.path.read_bytes() == broken.read_bytes()
    assert result.bytes_out == result.bytes_in and not result.lossy


@pytest.mark.parametrize("name", ["test-SR.dcm", "waveform_ecg.dcm", "rtplan.dcm"])
def test_non_image_objects(tmp_path: Path, name: str) -> None:
    src = TEST_FILES / name
    info = read_info(src)
    assert not info.has_pixel_data
    for mode in ("none", "lossless", "lossy"):
        policy = replace(POLICY, mode=mode)  # type: ignore[arg-type]
        assert choose_target(policy, info, [*DEFAULT_LOSSLESS, *DEFAULT_LOSSY, info.transfer_syntax]) == (
            info.transfer_syntax
        )
    same = transcode_file(src, tmp_path / "same.dcm", info.transfer_syntax, LOSSY)
    assert same.path.read_bytes() == src.read_bytes()
    other = (
        ImplicitVRLittleEndian if info.transfer_syntax != ImplicitVRLittleEndian else ExplicitVRLittleEndian
    )
    converted = dcmread(transcode_file(src, tmp_path / "conv.dcm", other, LOSSY).path)
    original = dcmread(src)
    assert converted.file_meta.TransferSyntaxUID == other
    assert [e.tag for e in converted] == [e.tag for e in original]
    with pytest.raises(CannotTranscode):
        transcode_file(src, tmp_path / "x.dcm", JPEG2000Lossless, POLICY)


def test_read_info_kinds(sources: dict[str, Path]) -> None:
    ct, us, mf = read_info(sources["CT"]), read_info(sources["US"]), read_info(sources["MF"])
    assert (ct.bits_allocated, ct.bits_stored, ct.modality, ct.already_lossy) == (16, 12, "CT", False)
    assert (us.samples_per_pixel, us.photometric) == (3, "RGB")
    assert mf.number_of_frames == 16 and mf.pixel_bytes == 16 * 256 * 256
    assert read_info(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").already_lossy
    assert read_info(TEST_FILES / "image_dfl.dcm").has_pixel_data
    assert read_info(TEST_FILES / "MR_small_bigendian.dcm").has_pixel_data
    assert not read_info(TEST_FILES / "MR_small_jpeg_ls_lossless.dcm").already_lossy


# --- pool ---------------------------------------------------------------------------------------


def test_pool_keeps_results_per_instance(sources: dict[str, Path], tmp_path: Path) -> None:
    jobs = [
        (sources["CT"], HTJ2KLossless),
        (sources["MR"], JPEGLSLossless),
        (sources["US"], JPEG2000),
        (sources["MF"], RLELossless),
        (sources["CT"], ExplicitVRLittleEndian),
        (sources["US"], JPEGBaseline8Bit),
    ]
    with TranscodePool(workers=2) as pool:
        futures = [
            pool.submit(src, tmp_path / f"pool{i}.dcm", target, LOSSY) for i, (src, target) in enumerate(jobs)
        ]
        results = [f.result(timeout=120) for f in futures]
        ordered = list(
            pool.map_ordered((src, tmp_path / f"m{i}.dcm", t, LOSSY) for i, (src, t) in enumerate(jobs))
        )
    for i, ((src, target), result) in enumerate(zip(jobs, results, strict=True)):
        assert result.path == tmp_path / f"pool{i}.dcm"
        assert result.transfer_syntax == target
        assert result.sop_instance_uid == read_info(src).sop_instance_uid
        single = transcode_file(src, tmp_path / f"single{i}.dcm", target, LOSSY)
        assert dcmread(result.path).PixelData == dcmread(single.path).PixelData
        assert ordered[i].transfer_syntax == target and ordered[i].path == tmp_path / f"m{i}.dcm"


FAST_CASES = [
    *((kind, target, POLICY) for kind in ("CT", "MR", "MF") for target in LOSSLESS_TARGETS),
    ("CT", JPEGLSNearLossless, LOSSY),
    ("CT", JPEG2000, LOSSY),
    ("MR", JPEG2000, LOSSY),  # signed: JPEG-LS near-lossless does not apply (codec_applies)
    ("MF", JPEGBaseline8Bit, LOSSY),
]


@pytest.mark.parametrize(
    ("kind", "target", "policy"),
    FAST_CASES,
    ids=[f"{kind}-{target}-{policy.mode}" for kind, target, policy in FAST_CASES],
)
def test_fast_path_equals_general_path(
    sources: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    target: str,
    policy: Policy,
) -> None:
    """The header-copying fast path (Explicit VR LE, one sample) writes what the general path (pydicom
    parse, encode, serialise) writes: same elements, same values — the lossy attributes inserted in
    tag order included — and the same Pixel Data."""
    from dicomproxy.transcode import codec
    from dicomproxy.transcode.info import read_header

    fast = codec._fast_mono(sources[kind], tmp_path / "fast.dcm", read_header(sources[kind]), target, policy)
    assert fast is not None
    monkeypatch.setattr(codec, "_fast_mono", lambda *a: None)
    general = transcode_file(sources[kind], tmp_path / "general.dcm", target, policy)
    a, b = dcmread(fast.path), dcmread(general.path)
    assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID == target
    # the byte-patched File Meta group equals what pydicom writes, group length included
    assert [(e.tag, e.value) for e in a.file_meta] == [(e.tag, e.value) for e in b.file_meta]
    assert a.PixelData == b.PixelData
    assert [(e.tag, e.value) for e in a if e.tag != 0x7FE00010] == [
        (e.tag, e.value) for e in b if e.tag != 0x7FE00010
    ]
    assert (fast.sop_instance_uid, fast.pixel_bytes, fast.lossy) == (
        general.sop_instance_uid,
        general.pixel_bytes,
        general.lossy,
    )
    assert ("LossyImageCompression" in a) is (target in LOSSY_TARGETS)


def test_fast_path_leaves_existing_lossy_attributes_to_the_general_path(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    """A native source that already carries (0028,2110) "00": the general path rewrites it, so the
    byte-level insertion declines (it would otherwise write the element twice)."""
    from dicomproxy.transcode import codec
    from dicomproxy.transcode.info import read_header

    ds = dcmread(sources["CT"])
    ds.LossyImageCompression = "00"
    src = tmp_path / "marked.dcm"
    ds.save_as(src, enforce_file_format=True)
    assert codec._fast_mono(src, tmp_path / "fast.dcm", read_header(src), JPEGLSNearLossless, LOSSY) is None
    out = transcode_file(src, tmp_path / "out.dcm", JPEGLSNearLossless, LOSSY)
    written = dcmread(out.path)
    assert written.LossyImageCompression == "01"
    assert written.LossyImageCompressionMethod == "ISO_14495_1"


@pytest.mark.parametrize(
    ("accepted", "expected"),
    [
        ((JPEGLSLossless, ExplicitVRLittleEndian), JPEGLSLossless),
        ((ExplicitVRLittleEndian,), ExplicitVRLittleEndian),  # the source's own: sent as held
        ((ImplicitVRLittleEndian,), ImplicitVRLittleEndian),
    ],
)
def test_convert_for_chooses_and_writes(
    sources: dict[str, Path], tmp_path: Path, accepted: tuple[str, ...], expected: str
) -> None:
    """What a pool worker does for the relay: choose among the accepted syntaxes, then convert; the
    source itself comes back (nothing written) when it can go as held."""
    from dicomproxy.transcode.codec import convert_for

    dst = tmp_path / "out.dcm"
    result = convert_for(sources["CT"], dst, accepted, POLICY)
    assert result.transfer_syntax == expected
    if expected == ExplicitVRLittleEndian:
        assert result.path == sources["CT"] and not dst.exists()
    else:
        assert result.path == dst and read_info(dst).transfer_syntax == expected


def test_pool_task_carries_the_policy_pickled_once() -> None:
    """A pool task carries the Policy as bytes pickled once per policy, unpickled once per worker."""
    from dicomproxy.transcode import pool

    blob = pool._packed(POLICY)
    assert isinstance(blob, bytes)
    assert pool._packed(replace(POLICY)) is blob  # an equal policy: the same bytes, not pickled again
    assert pool._unpacked(blob) == POLICY
    assert pool._unpacked(bytes(bytearray(blob))) is pool._unpacked(blob)
    assert pool._unpacked(pool._packed(LOSSY)) == LOSSY


def test_convert_for_refusal_keeps_its_status_across_the_pool(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    """Nothing accepted can carry the instance: CannotTranscode, with its status, also when raised in a
    worker process (the relay reports that status for the instance)."""
    with TranscodePool(workers=1) as pool:
        future = pool.submit_for(sources["CT"], tmp_path / "x.dcm", (JPEGBaseline8Bit,), POLICY)
        with pytest.raises(CannotTranscode) as raised:
            future.result(timeout=120)
    assert raised.value.status == CannotTranscode.status
    assert not (tmp_path / "x.dcm").exists()


def test_failed_encode_leaves_nothing(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomproxy.transcode import codec

    def broken(*args: object, **kwargs: object) -> list[bytes]:
        raise RuntimeError("codec failed")

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(codec, "_encode_mono_frames", broken)
    with pytest.raises(RuntimeError, match="codec failed"):
        transcode_file(sources["CT"], out / "x.dcm", HTJ2KLossless, POLICY)
    assert list(out.iterdir()) == []
    # and an existing destination that is a hard link to the source is replaced, not written through
    before = sources["MR"].read_bytes()
    os.link(sources["MR"], out / "mr.dcm")
    monkeypatch.undo()
    transcode_file(sources["MR"], out / "mr.dcm", JPEGLSLossless, POLICY)
    assert sources["MR"].read_bytes() == before
    assert read_info(out / "mr.dcm").transfer_syntax == JPEGLSLossless
    assert [p.name for p in out.iterdir()] == ["mr.dcm"]


# --- lossy marking: the cases the mutation runs found unguarded (issue 18) ----------------------


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (None, "ISO_10918_1"),  # no Method: the source syntax's is recorded
        ("ISO_15444_1", "ISO_15444_1"),  # a Method already recorded (an earlier compression) is kept
    ],
)
def test_decoding_lossy_data_marks_it_lossy(tmp_path: Path, method: str | None, expected: str) -> None:
    """A JPEG Baseline source without (0028,2110): decompressing it says "01" (PS3.3 C.7.6.1.1.5)
    and never rewrites a Method the data set already names."""
    ds = dcmread(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    del ds.LossyImageCompression
    del ds.LossyImageCompressionMethod
    if method is not None:
        ds.LossyImageCompressionMethod = method
    src = tmp_path / "unmarked.dcm"
    ds.save_as(src, enforce_file_format=True)
    out = dcmread(transcode_file(src, tmp_path / "native.dcm", ExplicitVRLittleEndian, POLICY).path)
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == expected


@pytest.mark.parametrize("first_later", ["DA", "UT"])
def test_fast_path_inserts_lossy_attributes_in_tag_order(
    sources: dict[str, Path], tmp_path: Path, first_later: str
) -> None:
    """Elements between (0028,2114) and Pixel Data: the lossy attributes go before the first of
    them, whose header is 8 bytes (short VR, DA) or 12 (long VR, UT; PS3.5 7.1.2), so the file
    stays in ascending tag order (PS3.5 7.1), as the general path writes it."""
    from dicomproxy.transcode import codec
    from dicomproxy.transcode.info import read_header

    ds = dcmread(sources["CT"])
    if first_later == "UT":
        ds.add_new(0x00400241, "UT", "a long-VR element first")  # (0040,0241) Performed Station AE (as UT)
    ds.PerformedProcedureStepStartDate = "20240101"  # (0040,0244)
    ds.PerformedProcedureStepDescription = "CT CHEST"  # (0040,0254)
    src = tmp_path / "later-elements.dcm"
    ds.save_as(src, enforce_file_format=True)
    fast = codec._fast_mono(src, tmp_path / "fast.dcm", read_header(src), JPEGLSNearLossless, LOSSY)
    assert fast is not None and fast.lossy
    out = dcmread(fast.path)
    in_file_order = list(out.keys())
    assert in_file_order == sorted(in_file_order)
    assert {0x00282110, 0x00282114, 0x00400244, 0x00400254} <= set(in_file_order)
    assert (out.LossyImageCompression, out.LossyImageCompressionMethod) == ("01", "ISO_14495_1")
    assert (out.PerformedProcedureStepStartDate, out.PerformedProcedureStepDescription) == (
        "20240101",
        "CT CHEST",
    )
    if first_later == "UT":
        assert out[0x00400241].value == "a long-VR element first"
    assert np.array_equal(
        out.pixel_array,
        dcmread(transcode_file(src, tmp_path / "g.dcm", JPEGLSNearLossless, LOSSY).path).pixel_array,
    )


def test_mark_lossy_keeps_ratio_and_method_paired() -> None:
    """No ratio known: only the Method is appended; Ratio and Method lists of unequal length (a
    ratio was never recorded for an earlier step): no ratio is appended, which would pair it with
    the wrong Method."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    _mark_lossy(ds, "ISO_14495_1", None)
    assert (ds.LossyImageCompression, ds.LossyImageCompressionMethod) == ("01", "ISO_14495_1")
    assert "LossyImageCompressionRatio" not in ds
    ds = Dataset()
    ds.LossyImageCompressionRatio = "8.5"
    ds.LossyImageCompressionMethod = ["ISO_10918_1", "ISO_15444_1"]
    _mark_lossy(ds, "ISO_14495_1", 3.0)
    assert float(ds.LossyImageCompressionRatio) == 8.5
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1", "ISO_14495_1"]

"""The department test objects are valid (dciodvfy, dcmdump), travel intact to real peers
(DCMTK storescp, Orthanc), decode (pydicom, dcmdjpeg), and the WSI writer streams."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, VLWholeSlideMicroscopyImageStorage

from testkit.dcmtk import StoreSCP, run_tool
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, make_instance
from testkit.samples_dept import (
    DEPT_KINDS,
    ECG_LEADS,
    WsiInfo,
    cine_frames,
    dept_exam_row,
    dept_study_specs,
    endoscopy_frame,
    iter_dept_study,
    make_basic_text_sr,
    make_ecg,
    make_endoscopy_image,
    make_key_object_selection,
    make_pdf_report,
    make_presentation_state,
    make_secondary_capture,
    make_us_cine,
    make_us_image,
    write_dept_study,
    write_wsi,
)
from tests.conftest import running_orthanc

SPECS = {spec.kind: spec for spec in dept_study_specs()}

#: object name → (dciodvfy IOD name, payload attribute compared byte for byte after transfer)
OBJECTS: dict[str, tuple[str, str | None]] = {
    "us_cine": ("USMultiFrameImage", "PixelData"),
    "us_image": ("USImage", "PixelData"),
    "endoscopy": ("VLEndoscopicImage", "PixelData"),
    "ecg_12lead": ("TwelveLeadECG", "WaveformData"),
    "ecg_general": ("GeneralECG", "WaveformData"),
    "pdf": ("EncapsulatedPDF", "EncapsulatedDocument"),
    "basic_text_sr": ("BasicTextSR", None),
    "key_objects": ("KeyObjectSelectionDocument", None),
    "presentation_state": ("GrayscaleSoftcopyPresentationState", None),
    "secondary_capture": ("SCImage", "PixelData"),
    "wsi_jpeg": ("VLWholeSlideMicroscopyImage", "PixelData"),
    "wsi_raw": ("VLWholeSlideMicroscopyImage", "PixelData"),
}
JPEG_OBJECTS = ["us_cine", "us_image", "endoscopy", "wsi_jpeg"]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; scripts/setup-peers.sh installs it")
        pytest.skip(f"{tool} is not installed")


def _payload(ds: Dataset, attr: str | None) -> bytes | Dataset:
    """The bytes that must arrive unchanged (or, for SR/KO/PR, the whole dataset)."""
    if attr is None:
        return ds
    if attr == "WaveformData":
        return bytes(ds.WaveformSequence[0].WaveformData)
    return bytes(ds[attr].value)


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file of each kind, all of the department studies' patients."""
    root = tmp_path_factory.mktemp("dept-objects")
    ct, us, es, ecg, sm = (SPECS[k] for k in ("CT", "USCINE", "ES", "ECG", "SM"))
    images = [make_instance(ct, 0, i) for i in range(3)]
    made: dict[str, Dataset] = {
        "us_cine": make_us_cine(us),
        "us_image": make_us_image(us, 0, 5),
        "endoscopy": make_endoscopy_image(es),
        "ecg_12lead": make_ecg(ecg),
        "ecg_general": make_ecg(ecg, 1, 0, general=True, leads=3, seconds=30.0, rate=1000),
        "pdf": make_pdf_report(ecg, 2, 0, title="ECG report"),
        "basic_text_sr": make_basic_text_sr(ct, 1, 0, referenced=images),
        "key_objects": make_key_object_selection(ct, images[:2], 2, 0),
        "presentation_state": make_presentation_state(ct, images, 3, 0),
        "secondary_capture": make_secondary_capture(ct, 4, 0),
    }
    paths = {}
    for name, ds in made.items():
        paths[name] = root / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    paths["wsi_jpeg"] = write_wsi(sm, root / "wsi_jpeg.dcm", target_bytes=2 << 20).path
    paths["wsi_raw"] = write_wsi(sm, root / "wsi_raw.dcm", target_bytes=2 << 20, i=1, compressed=False).path
    return paths


# --- validity ------------------------------------------------------------------------------------


@pytest.mark.dcmtk
@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_dciodvfy_finds_no_errors(objects: dict[str, Path], name: str) -> None:
    _need("dciodvfy")
    proc = subprocess.run(["dciodvfy", str(objects[name])], capture_output=True, timeout=120)
    report = (proc.stdout + proc.stderr).decode(errors="replace")
    # dciodvfy names the IOD it checked on a line of its own: proves it recognised the SOP class
    assert OBJECTS[name][0] in report.splitlines(), report
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], "\n".join(errors)


@pytest.mark.dcmtk
@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_dcmdump_reads_every_object(objects: dict[str, Path], name: str) -> None:
    _need("dcmdump")
    proc = run_tool("dcmdump", "-q", "+M", str(objects[name]))
    assert proc.returncode == 0, proc.stderr
    assert "E: " not in proc.stderr and "W: " not in proc.stderr, proc.stderr
    ds = pydicom.dcmread(objects[name], stop_before_pixels=True)
    assert ds.SOPInstanceUID in proc.stdout


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_objects_belong_to_their_department_study(objects: dict[str, Path], name: str) -> None:
    ds = pydicom.dcmread(objects[name], stop_before_pixels=True)
    spec = next(spec for spec in SPECS.values() if spec.study_uid == ds.StudyInstanceUID)
    assert ds.PatientID == spec.patient.patient_id
    assert ds.AccessionNumber == spec.accession
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


# --- transfer to real peers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    _need("storescp")
    scp = StoreSCP(tmp_path_factory.mktemp("dept-storescp"), "DEPTSCP", syntaxes="all").start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def dept_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Our own Orthanc (the session one holds the demo studies and is not ours to fill)."""
    with running_orthanc(tmp_path_factory.mktemp("dept-pacs"), ae_title="DEPTPACS") as server:
        yield server


def _storescu(path: Path, ae_title: str, port: int) -> None:
    # -R: propose only the file's SOP class (WSI is not in storescu's default list);
    # -xy: propose JPEG Baseline for a JPEG file, so it travels as it is, never converted
    jpeg = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    flags = ["-R", "-xy"] if jpeg else ["-R"]
    proc = run_tool(
        "storescu", *flags, "-aet", "DEPTTEST", "-aec", ae_title, "127.0.0.1", str(port), str(path)
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout


@pytest.mark.dcmtk
@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_storescp_receives_identical_payload(
    objects: dict[str, Path], module_storescp: StoreSCP, name: str
) -> None:
    sent = pydicom.dcmread(objects[name])
    _storescu(objects[name], module_storescp.ae_title, module_storescp.port)
    [received_path] = [p for p in module_storescp.received() if p.name.endswith(sent.SOPInstanceUID)]
    received = pydicom.dcmread(received_path)
    assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    attr = OBJECTS[name][1]
    assert _payload(received, attr) == _payload(sent, attr)


@pytest.mark.orthanc
@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_orthanc_stores_identical_payload(objects: dict[str, Path], dept_orthanc: Orthanc, name: str) -> None:
    _need("storescu")
    sent = pydicom.dcmread(objects[name])
    _storescu(objects[name], dept_orthanc.ae_title, dept_orthanc.dicom_port)
    [found] = dept_orthanc.request("POST", "/tools/lookup", sent.SOPInstanceUID.encode())
    assert found["Type"] == "Instance"
    raw = _orthanc_file(dept_orthanc, found["ID"])
    received = pydicom.dcmread(io.BytesIO(raw))
    assert received.SOPClassUID == sent.SOPClassUID
    assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    attr = OBJECTS[name][1]
    assert _payload(received, attr) == _payload(sent, attr)


def _orthanc_file(server: Orthanc, instance_id: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/instances/{instance_id}/file", timeout=60) as rsp:
        return bytes(rsp.read())


# --- content: pixels, waveforms, documents, references --------------------------------------------


def _source_frames(name: str) -> np.ndarray:
    if name == "us_cine":
        return np.stack(list(cine_frames(SPECS["USCINE"], 0, 0, 30, 480, 640)))
    if name == "us_image":
        return next(cine_frames(SPECS["USCINE"], 0, 5, 1, 480, 640))
    return endoscopy_frame(SPECS["ES"], 0, 0, 480, 640)


@pytest.mark.parametrize("name", ["us_cine", "us_image", "endoscopy"])
def test_jpeg_frames_decode_with_pydicom_close_to_source(objects: dict[str, Path], name: str) -> None:
    ds = pydicom.dcmread(objects[name])
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.LossyImageCompression == "01"
    assert len(
        list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=ds.get("NumberOfFrames", 1)))
    )
    decoded = pixel_array(ds, decoding_plugin="pylibjpeg")  # pylibjpeg-libjpeg; YBR_FULL_422 → RGB
    source = _source_frames(name)
    assert decoded.shape == source.shape
    error = np.abs(decoded.astype(np.int16) - source.astype(np.int16)).mean()
    assert error < 6.0, f"mean absolute error {error:.2f} after JPEG round trip"


@pytest.mark.dcmtk
@pytest.mark.parametrize("name", JPEG_OBJECTS)
def test_jpeg_frames_decode_with_dcmdjpeg(objects: dict[str, Path], tmp_path: Path, name: str) -> None:
    _need("dcmdjpeg")
    out = tmp_path / "plain.dcm"
    proc = run_tool("dcmdjpeg", str(objects[name]), str(out))
    assert proc.returncode == 0, proc.stderr
    plain = pydicom.dcmread(out)
    original = pydicom.dcmread(objects[name])
    assert plain.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert plain.get("NumberOfFrames", 1) == original.get("NumberOfFrames", 1)
    ours = original.pixel_array.astype(np.int16)
    dcmtk = plain.pixel_array.astype(np.int16)  # dcmdjpeg converts YCbCr to RGB
    assert plain.PhotometricInterpretation == "RGB"
    assert np.abs(ours - dcmtk).mean() < 2.0


def test_ecg_leads_follow_einthoven_and_limits(objects: dict[str, Path]) -> None:
    ds = pydicom.dcmread(objects["ecg_12lead"])
    [group] = ds.WaveformSequence
    leads = ds.waveform_array(0)
    assert leads.shape == (5000, 12) and group.NumberOfWaveformChannels == 12
    names = [ch.ChannelSourceSequence[0].CodeMeaning for ch in group.ChannelDefinitionSequence]
    assert names == [meaning for _, meaning in ECG_LEADS]
    lead_i, lead_ii, lead_iii = leads[:, 0], leads[:, 1], leads[:, 2]
    # III = II − I up to the noise added per lead (σ 8 µV each)
    assert np.abs(lead_iii - (lead_ii - lead_i)).mean() < 30
    assert leads[:, 1].max() - leads[:, 1].min() > 800  # R waves of roughly 1 mV


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 2000}, "200-1000 Hz"),
        ({"seconds": 40.0}, "16384 samples"),
        ({"leads": 13}, "leads must be"),
    ],
)
def test_ecg_rejects_what_a_12_lead_ecg_cannot_hold(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_ecg(SPECS["ECG"], **kwargs)  # type: ignore[arg-type]


def test_pdf_document_is_a_valid_pdf(objects: dict[str, Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(objects["pdf"])
    doc = bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength]
    assert doc.startswith(b"%PDF-1.4") and doc.rstrip().endswith(b"%%EOF")
    # the cross-reference table points at each object
    xref = int(re.search(rb"startxref\n(\d+)", doc).group(1))  # type: ignore[union-attr]
    assert doc[xref:].startswith(b"xref")
    offsets = [int(m) for m in re.findall(rb"(\d{10}) 00000 n", doc)]
    assert [doc[o:].split(b" ", 1)[0] for o in offsets] == [b"%d" % n for n in range(1, len(offsets) + 1)]
    if shutil.which("gs") is None:
        pytest.skip("ghostscript (optional) is not installed; structure checked above")
    path = tmp_path / "report.pdf"
    path.write_bytes(doc)
    text = subprocess.run(
        [
            "gs",
            "-q",
            "-dNOPAUSE",
            "-dBATCH",
            "-dPDFSTOPONERROR",
            "-sDEVICE=txtwrite",
            "-sOutputFile=-",
            str(path),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode(errors="replace")
    assert "ECG report" in text and SPECS["ECG"].accession in text


def test_key_objects_and_presentation_state_reference_the_study(objects: dict[str, Path]) -> None:
    ct = SPECS["CT"]
    ko = pydicom.dcmread(objects["key_objects"])
    [study] = ko.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == ct.study_uid
    flagged = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in ko.ContentSequence[1:]}
    assert flagged == {ct.sop_uid(0, 0), ct.sop_uid(0, 1)}
    pr = pydicom.dcmread(objects["presentation_state"])
    refs = {r.ReferencedSOPInstanceUID for r in pr.ReferencedSeriesSequence[0].ReferencedImageSequence}
    assert refs == {ct.sop_uid(0, i) for i in range(3)}
    assert pr.SoftcopyVOILUTSequence[0].WindowWidth == 400


@pytest.mark.parametrize(
    ("maker", "message"),
    [
        (make_key_object_selection, "at least one referenced"),
        (make_presentation_state, "at least one referenced"),
    ],
)
def test_reference_objects_need_references(maker: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        maker(SPECS["CT"], [])  # type: ignore[operator]


# --- department studies and exam rows ------------------------------------------------------------


def test_one_study_per_sysid_with_matching_rows(tmp_path: Path) -> None:
    specs = dept_study_specs()
    rows = [dept_exam_row(spec) for spec in specs]
    assert sorted(row["Sysid"] for row in rows) == sorted({sysid for sysid, _ in DEPT_KINDS.values()})
    assert {row["ExamineType"] for row in rows} == {"CT", "US", "ES", "ECG", "SM"}
    for spec, row in zip(specs, rows, strict=True):
        paths = write_dept_study(spec, tmp_path / spec.kind, wsi_bytes=1 << 20)
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        assert {h.StudyInstanceUID for h in headers} == {row["StudyInstanceUID"]}
        assert {h.PatientID for h in headers} == {row["PatientID"]}
        assert {h.AccessionNumber for h in headers} == {row["AccessionNumber"]}
        assert len({h.SOPInstanceUID for h in headers}) == len(headers)
        assert row["ExamineType"] in {h.Modality for h in headers}


def test_dept_studies_are_deterministic() -> None:
    spec = SPECS["ECG"]
    first = [ds.SOPInstanceUID for ds in iter_dept_study(spec)]
    assert first == [ds.SOPInstanceUID for ds in iter_dept_study(spec)]
    assert bytes(make_ecg(spec).WaveformSequence[0].WaveformData) == bytes(
        make_ecg(spec).WaveformSequence[0].WaveformData
    )


def test_unknown_department_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown department kind 'XA'"):
        list(iter_dept_study(StudySpec("XA")))


# --- whole-slide image: size, structure, memory --------------------------------------------------


def _pixel_items(path: Path) -> int:
    """Items in the encapsulated Pixel Data (Basic Offset Table + one per frame), per dcmdump."""
    proc = run_tool("dcmdump", "-q", "+M", str(path))
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"\(7fe0,0010\) OB \(PixelSequence #=(\d+)\)", proc.stdout)
    assert match, proc.stdout[-2000:]
    return int(match.group(1))


@pytest.mark.parametrize("compressed", [True, False], ids=["jpeg", "raw"])
def test_wsi_streams_with_flat_memory(tmp_path: Path, compressed: bool) -> None:
    target = 64 << 20
    tracemalloc.start()
    try:
        info = write_wsi(SPECS["SM"], tmp_path / "slide.dcm", target_bytes=target, compressed=compressed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.file_size >= target
    assert peak < 40 << 20, f"peak Python allocation {peak >> 20} MB for a {info.file_size >> 20} MB file"
    ds = pydicom.dcmread(info.path, stop_before_pixels=True)
    assert ds.NumberOfFrames == info.frames == info.tiles_across * info.tiles_down
    assert ds.TotalPixelMatrixColumns == info.tiles_across * 256
    assert ds.file_meta.TransferSyntaxUID == (JPEGBaseline8Bit if compressed else ExplicitVRLittleEndian)
    if compressed and shutil.which("dcmdump"):
        assert _pixel_items(info.path) == info.frames + 1


def test_wsi_tiles_decode(objects: dict[str, Path]) -> None:
    for name in ("wsi_jpeg", "wsi_raw"):
        ds = pydicom.dcmread(objects[name])
        frames = ds.pixel_array
        assert frames.shape == (ds.NumberOfFrames, 256, 256, 3)
        assert len({frames[f].tobytes() for f in range(min(8, ds.NumberOfFrames))}) > 1


BIG_WSI_BYTES = 500_000_000

_BIG_SCRIPT = """
import resource, sys
from pathlib import Path
from testkit.samples_dept import dept_study_specs, write_wsi
spec = next(s for s in dept_study_specs() if s.kind == "SM")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
info = write_wsi(spec, Path(sys.argv[1]), target_bytes=int(sys.argv[2]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(info.frames, info.file_size, before, after)
"""


@pytest.mark.slow
def test_wsi_of_500_mb_keeps_peak_rss_small(tmp_path: Path) -> None:
    """Runs in CI (a few seconds): a fresh interpreter, so ru_maxrss is the generator's own peak."""
    path = tmp_path / "big-slide.dcm"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _BIG_SCRIPT, str(path), str(BIG_WSI_BYTES)],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr
        frames, size, before_kb, after_kb = map(int, proc.stdout.split())
        assert size >= BIG_WSI_BYTES and path.stat().st_size == size
        growth_mb = (after_kb - before_kb) / 1024
        assert growth_mb < 100, f"peak RSS grew {growth_mb:.0f} MB writing {size >> 20} MB"
        if shutil.which("dcmdump"):
            assert _pixel_items(path) == frames + 1
    finally:
        path.unlink(missing_ok=True)


def test_conftest_fixtures_write_department_studies_and_a_big_slide(
    dept_files: dict[str, list[Path]], big_wsi: Callable[..., WsiInfo]
) -> None:
    assert sorted(dept_files) == ["ECG", "EIS", "PIS", "RIS", "UIS"]
    info = big_wsi(target_bytes=8 << 20)
    assert info.path.exists() and info.file_size >= 8 << 20
    slide = pydicom.dcmread(dept_files["PIS"][0], stop_before_pixels=True)
    assert slide.SOPClassUID == VLWholeSlideMicroscopyImageStorage


@pytest.mark.dcmtk
def test_every_file_of_the_department_studies_passes_dciodvfy(dept_files: dict[str, list[Path]]) -> None:
    _need("dciodvfy")
    failures = {}
    for path in (p for paths in dept_files.values() for p in paths):
        proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, timeout=120)
        errors = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.startswith("Error")]
        if errors:
            failures[path.name] = errors
    assert failures == {}


@pytest.mark.orthanc
def test_whole_department_studies_load_into_orthanc_in_one_association(
    dept_files: dict[str, list[Path]], dept_orthanc: Orthanc
) -> None:
    """How a relay test loads an archive: one ``storescu -R -xy`` for every kind at once."""
    _need("storescu")
    paths = [p for sysid in sorted(dept_files) for p in dept_files[sysid]]
    proc = run_tool(
        "storescu", "-R", "-xy", "-aec", dept_orthanc.ae_title, "127.0.0.1", str(dept_orthanc.dicom_port),
        *map(str, paths),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for path in paths:
        sent = pydicom.dcmread(path)
        [found] = dept_orthanc.request("POST", "/tools/lookup", sent.SOPInstanceUID.encode())
        received = pydicom.dcmread(io.BytesIO(_orthanc_file(dept_orthanc, found["ID"])))
        assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID, path.name
        for attr in ("PixelData", "EncapsulatedDocument"):
            assert (attr in received) == (attr in sent)
            if attr in sent:
                assert bytes(received[attr].value) == bytes(sent[attr].value), path.name
        if "WaveformSequence" in sent:
            assert _payload(received, "WaveformData") == _payload(sent, "WaveformData")


def test_wsi_uid_follows_its_content(tmp_path: Path) -> None:
    """Same spec and parameters → same instance; another size or encoding → another UID."""
    spec = SPECS["SM"]
    a = write_wsi(spec, tmp_path / "a.dcm", target_bytes=1 << 20)
    again = write_wsi(spec, tmp_path / "again.dcm", target_bytes=1 << 20)
    bigger = write_wsi(spec, tmp_path / "b.dcm", target_bytes=3 << 20)
    raw = write_wsi(spec, tmp_path / "c.dcm", target_bytes=1 << 20, compressed=False)
    assert a.sop_instance_uid == again.sop_instance_uid
    assert a.path.read_bytes() == again.path.read_bytes()
    assert len({a.sop_instance_uid, bigger.sop_instance_uid, raw.sop_instance_uid}) == 3
    assert pydicom.dcmread(bigger.path, stop_before_pixels=True).SOPInstanceUID == bigger.sop_instance_uid

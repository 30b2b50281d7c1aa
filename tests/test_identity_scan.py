"""The header scan (dicomproxy/identity/scan.py) against pydicom's element reader, and the
coercion it speeds up against the coercion without it (issue 26: coercion's cost in ``none`` mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import split_dataset

from dicomproxy.identity import Coercer, Identity
from dicomproxy.identity import files as files_module
from dicomproxy.identity.files import Header
from dicomproxy.identity.scan import FIRST_READ, scan
from dicomproxy.transport.rewritten import Loaded, Rewritten, load
from testkit.realct import write_real_study
from testkit.samples import Patient, StudySpec, make_instance

STUDY = "1.2.826.0.1.3680043.8.498.77"
VIEW = Identity(STUDY, "H000123", "74580626.HIS", "王小东", "19800115", "M", "A1", "温岭市第一人民医院")


def _instance(n: int = 0) -> Dataset:
    ds = make_instance(
        StudySpec("CT", Patient(patient_id="P9", name="ANON"), "D9", images_per_series=8), 0, n
    )
    ds.StudyInstanceUID = STUDY
    return ds


def _item(depth: int, undefined: bool) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113038", "DCM", "Incorrect"
    item.is_undefined_length_sequence_item = undefined
    if depth:
        item.ConceptNameCodeSequence = Sequence([_item(depth - 1, undefined)])
        item["ConceptNameCodeSequence"].is_undefined_length = undefined
    return item


def _save(ds: Dataset, path: Path, syntax: str) -> Path:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _same_as_pydicom(path: Path) -> None:
    scanned = scan(path)
    header = Header.read(path)
    assert scanned is not None
    assert scanned.bounds == header.bounds
    assert (scanned.tail, scanned.head, scanned.study) == (header.tail, header.head, header.study)
    key = files_module.patch_key(scanned.study, scanned.implicit, True, scanned.head, scanned.bounds)
    assert key == header.key()  # a patch made from pydicom's reading is found by the scan


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    syntax=st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    depth=st.integers(0, 3),
    undefined=st.booleans(),
    items=st.integers(0, 3),
    private=st.integers(0, 3 * FIRST_READ // 2),
    pixels=st.booleans(),
)
def test_scan_finds_the_elements_pydicom_finds(
    tmp_path: Path, syntax: str, depth: int, undefined: bool, items: int, private: int, pixels: bool
) -> None:
    """Sequences nested ``depth`` deep, of defined or undefined length (PS3.5 7.5), empty ones,
    a private element that pushes the header past the first read, with and without Pixel Data."""
    ds = _instance()
    ds.ReferencedImageSequence = Sequence([_item(depth, undefined) for _ in range(items)])
    ds["ReferencedImageSequence"].is_undefined_length = undefined
    if private:
        ds.add_new(0x00091010, "LO", "DICOMPROXY TEST")
        ds.add_new(0x00091000, "OB", b"\x01" * (private + private % 2))
    if not pixels:
        del ds.PixelData
    _same_as_pydicom(_save(ds, tmp_path / f"{syntax}-{depth}-{undefined}-{items}-{private}.dcm", syntax))


def test_scan_reads_real_ct_as_pydicom_does(tmp_path: Path) -> None:
    spec = StudySpec("CT", Patient(patient_id="P8", name="ANON"), "D8", images_per_series=3, seed=8)
    for path in write_real_study(spec, tmp_path / "ct"):
        _same_as_pydicom(path)


@pytest.mark.parametrize("case", ["group length", "big endian", "deflated", "no preamble", "not dicom"])
def test_what_the_scan_does_not_know_is_left_to_pydicom(tmp_path: Path, case: str) -> None:
    ds = _instance()
    path = tmp_path / "x.dcm"
    if case == "group length":  # pydicom writes none: put (0008,0000) UL in front of the data set
        _save(ds, path, ExplicitVRLittleEndian)
        _, start = split_dataset(path)
        raw = path.read_bytes()
        path.write_bytes(raw[:start] + b"\x08\x00\x00\x00UL\x04\x00\x00\x00\x00\x00" + raw[start:])
        assert 0x00080000 in dcmread(path)
    elif case == "big endian":  # retired (PS3.5 A.3)
        _save(ds, path, ExplicitVRBigEndian)
        assert dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    elif case == "deflated":
        _save(ds, path, DeflatedExplicitVRLittleEndian)
    elif case == "no preamble":
        _save(ds, path, ExplicitVRLittleEndian)
        path.write_bytes(path.read_bytes()[128:])
    else:
        path.write_bytes(b"\x00" * 300)
    assert scan(path) is None


def _coerced_bytes(coercer: Coercer, src: Path, tmp: Path) -> bytes:
    send = coercer.rewrite(src, tmp / "spare.dcm")
    if isinstance(send, Rewritten):
        return send.write(tmp / "out.dcm").read_bytes()
    return Path(send).read_bytes()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_coercion_with_the_scan_sends_what_it_sent_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str
) -> None:
    paths = [_save(_instance(n), tmp_path / f"{n}.dcm", syntax) for n in range(5)]
    paths.append(_save(_instance(5), tmp_path / "other.dcm", syntax))
    other = dcmread(paths[-1])
    other.PatientID = "SOMEONE-ELSE"  # a header of another patient: a patch of its own
    other.save_as(paths[-1], enforce_file_format=True)
    fast = Coercer({STUDY: VIEW}, "DICOMPROXY", "job 1")
    with_scan = [_coerced_bytes(fast, p, tmp_path) for p in paths]
    assert fast.coerced == len(paths) and len(fast._patches) == 2
    monkeypatch.setattr(files_module, "scan", lambda path, data=None: None)
    slow = Coercer({STUDY: VIEW}, "DICOMPROXY", "job 1")
    without = [_coerced_bytes(slow, p, tmp_path) for p in paths]
    assert [_drop_time(b) for b in with_scan] == [_drop_time(b) for b in without]
    assert dcmread(paths[1]).SOPInstanceUID != dcmread(paths[2]).SOPInstanceUID
    assert {str(dcmread(tmp_path / "out.dcm").PatientID)} == {"H000123"}


def _drop_time(data: bytes) -> bytes:
    """The coercion's date-time (PS3.3 C.12.1.1.9) differs between two coercers a second apart."""
    from io import BytesIO

    ds = dcmread(BytesIO(data))
    ds.OriginalAttributesSequence[0].AttributeModificationDateTime = ""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_defined_length_items_in_a_sequence_of_undefined_length(tmp_path: Path) -> None:
    """PS3.5 7.5.1: a sequence of undefined length may hold items of defined length (and the other
    way round)."""
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        for outer in (True, False):
            ds = _instance()
            ds.ReferencedImageSequence = Sequence([_item(1, not outer), _item(0, not outer)])
            ds["ReferencedImageSequence"].is_undefined_length = outer
            _same_as_pydicom(_save(ds, tmp_path / f"mixed-{syntax}-{outer}.dcm", syntax))


def test_an_element_header_cut_by_the_first_read_is_read_again(tmp_path: Path) -> None:
    """The first read ends 6 bytes into an element's 8-byte header: the scan reads more, it does
    not give up (nor read past what it has)."""
    ds = _instance()
    ds.add_new(0x00091010, "LO", "DICOMPROXY TEST")
    ds.add_new(0x00091000, "OB", b"\x01" * 1000)
    probe = _save(ds, tmp_path / "probe.dcm", ExplicitVRLittleEndian)
    after = min(start for tag, (start, _) in Header.read(probe).bounds.items() if tag > 0x00091000)
    grow = FIRST_READ - 6 - after
    ds[0x00091000].value = b"\x01" * (1000 + grow)
    path = _save(ds, tmp_path / "cut.dcm", ExplicitVRLittleEndian)
    assert min(s for t, (s, _) in Header.read(path).bounds.items() if t > 0x00091000) == FIRST_READ - 6
    _same_as_pydicom(path)


def test_an_item_tag_among_the_top_level_elements_is_left_to_pydicom(tmp_path: Path) -> None:
    """A stray Item (FFFE,E000) between the last element and Pixel Data (implicit VR, where it
    would otherwise pass as an element): not a header the scan knows."""
    path = _save(_instance(), tmp_path / "x.dcm", ImplicitVRLittleEndian)
    raw = path.read_bytes()
    at = raw.index(b"\xe0\x7f\x10\x00")  # Pixel Data
    path.write_bytes(raw[:at] + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + raw[at:])
    assert scan(path) is None


def _sent_bytes(send: Path | Loaded | Rewritten) -> bytes:
    """The file a destination gets for ``send`` (a loaded file's bytes from memory)."""
    if isinstance(send, Loaded):
        return bytes(send.data)
    if isinstance(send, Rewritten) and send.data is not None:
        return bytes(send.data[: send.start]) + send.head + bytes(send.data[send.tail :])
    return _coerced_bytes_of(send)


def _coerced_bytes_of(send: Path | Rewritten) -> bytes:
    if isinstance(send, Rewritten):
        return send.write(send.path.with_name("written.dcm")).read_bytes()
    return send.read_bytes()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_loaded_file_is_coerced_as_its_path_is(tmp_path: Path, syntax: str) -> None:
    """The onward sender reads a file once (issue 29: :func:`load`); scanned and patched in memory,
    it gives what the same file given by its path gives — and its tail is sent from memory."""
    paths = [_save(_instance(n), tmp_path / f"{n}.dcm", syntax) for n in range(4)]
    paths.append(_save(_instance(4), tmp_path / "other.dcm", syntax))
    other = dcmread(paths[-1])
    other.PatientID = "SOMEONE-ELSE"
    other.save_as(paths[-1], enforce_file_format=True)
    coercer = Coercer({STUDY: VIEW}, "DICOMPROXY", "job 1")  # one: the same patch (and its time)
    buf = bytearray(1 << 20)
    for p in paths:
        expected = _coerced_bytes(coercer, p, tmp_path)
        loaded = load(p, buf)
        assert loaded is not None
        send = coercer.rewrite(loaded, tmp_path / "spare.dcm")
        assert isinstance(send, Rewritten) and send.data is not None  # the tail from memory
        assert _sent_bytes(send) == expected
    unknown = Coercer({}, "DICOMPROXY", "job 1")  # a study the view does not name: sent as loaded
    loaded = load(paths[0], buf)
    assert unknown.rewrite(loaded, tmp_path / "spare.dcm") is loaded  # type: ignore[arg-type]

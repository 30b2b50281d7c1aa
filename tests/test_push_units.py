"""Push mode's pure parts and its CLI: the off-peak window, the rate limiter, config errors, the
report objects (checked by dciodvfy, dicom3tools), file fetching, ``dicomproxy push`` commands."""

from __future__ import annotations

import datetime as dt
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydicom import dcmread, dcmwrite
from pydicom.encaps import generate_fragments
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit

from dicomproxy.cli import cli
from dicomproxy.config import ReportsConfig, parse_config
from dicomproxy.errors import ConfigError
from dicomproxy.push.pacing import RateLimiter, in_window, next_opening, parse_window
from dicomproxy.push.queue import PushQueue, push_queue, utcnow
from dicomproxy.relay.journal import Journal
from dicomproxy.reports.encode import (
    ENCAPSULATED_PDF,
    SECONDARY_CAPTURE,
    build,
    jpeg_frame,
    role_of_series,
    series_uid,
)
from dicomproxy.reports.fetch import ReportUnavailable, fetch, local_path
from testkit.samples import StudySpec, exam_row
from testkit.samples_dept import colour_frame, jpeg_baseline_rgb
from tests.conftest import _need, base_config_dict, push_cli_toml

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
DAY = dt.datetime(2026, 3, 2)


@pytest.mark.parametrize(
    ("window", "hhmm", "open_"),
    [("20:00-07:00", "23:00", True), ("20:00-07:00", "06:59", True), ("20:00-07:00", "07:00", False),
     ("20:00-07:00", "12:00", False), ("20:00-07:00", "20:00", True), ("01:30-05:00", "01:29", False),
     ("01:30-05:00", "04:59", True), ("01:30-05:00", "05:00", False), ("", "12:00", True)],
)  # fmt: skip
def test_window(window: str, hhmm: str, open_: bool) -> None:
    now = DAY.replace(hour=int(hhmm[:2]), minute=int(hhmm[3:]))
    assert in_window(parse_window(window), now) is open_
    opening = next_opening(parse_window(window), now)
    assert (opening == now) is open_
    if not open_:
        assert opening > now and in_window(parse_window(window), opening)
        assert opening - now < dt.timedelta(days=1)


def test_rate_limiter_keeps_the_average() -> None:
    clock = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    limiter = RateLimiter(8.0, clock=lambda: clock[0], sleep=sleep)  # 8 Mbit/s = 1 MB/s
    for _ in range(10):
        limiter.take(500_000)
    # 5 MB at 1 MB/s from an empty bucket: 5 s of waiting
    assert sum(slept) == pytest.approx(5.0)
    clock[0] += 100  # idle: credit is capped at BURST (0.2 s), no long burst afterwards
    assert limiter.take(200_000) == 0.0
    assert limiter.take(1_000_000) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("push", "key", "message"),
    [({"enabled": True}, "push.destinations", "at least one"),
     ({"destinations": ["nope"]}, "push.destinations[0]", "not a [[peers]]"),
     ({"window": "8-7"}, "push.window", "HH:MM-HH:MM"),
     ({"window": "07:00-07:00"}, "push.window", "empty"),
     ({"start_from": "yesterday"}, "push.start_from", "ISO"),
     ({"destinations": ["jobserver"], "max_mbps": {"jobserver": -1}}, "push.max_mbps.jobserver", "> 0"),
     ({"destinations": ["jobserver"], "max_mbps": {"other": 5}}, "push.max_mbps.other", "not one of"),
     ({"max_concurrent": 0}, "push.max_concurrent", "between"),
     ({"max_takeovers": -1}, "push.max_takeovers", "between 0 and 1000"),
     ({"max_takeovers": "3"}, "push.max_takeovers", "must be an integer"),
     ({"max_takeovers": 2.5}, "push.max_takeovers", "must be an integer"),
     ({"poll_intervall": 3}, "push.poll_intervall", "unknown key")],
)  # fmt: skip
def test_push_config_errors_name_the_key(
    tmp_path: Path, push: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(base_config_dict(tmp_path, "sqlite:///v.db", push=push), "/etc/proxy.toml")
    assert key in str(err.value) and message in str(err.value) and "/etc/proxy.toml" in str(err.value)


def test_push_config_defaults(tmp_path: Path) -> None:
    config = parse_config(base_config_dict(tmp_path, "sqlite:///v.db"))
    assert not config.push.enabled and config.push.states == ("检查完成", "书写完成", "审核完成", "修订完成")
    assert config.reports.enabled and config.reports.max_attempts == 10
    assert config.push.max_takeovers == 3
    never = parse_config(base_config_dict(tmp_path, "sqlite:///v.db", push={"max_takeovers": 0}))
    assert never.push.max_takeovers == 0


# --- report objects -----------------------------------------------------------------------------

SPEC = StudySpec("CT", accession="RP001", seed=7)


def _dciodvfy(path: Path) -> str:
    _need("dciodvfy")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


@pytest.mark.parametrize("kind", ["pdf", "jpeg"])
def test_report_objects_are_valid_iods(kind: str, tmp_path: Path) -> None:
    data = PDF if kind == "pdf" else jpeg_baseline_rgb(colour_frame(48, 64, 0.5, (1, 2), (1.0, 0.9, 0.8)))
    obj = build(SPEC.study_uid, "report", data, [exam_row(SPEC)], "ideographic")
    path = tmp_path / "r.dcm"
    dcmwrite(path, obj.dataset, enforce_file_format=True)
    report = _dciodvfy(path)
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report
    ds = dcmread(path)
    assert ds.SOPClassUID == (ENCAPSULATED_PDF if kind == "pdf" else SECONDARY_CAPTURE)
    assert ds.StudyInstanceUID == SPEC.study_uid and ds.PatientID == SPEC.patient.patient_id
    assert ds.AccessionNumber == SPEC.accession and str(ds.PatientName) == f"={SPEC.patient.name}"
    if kind == "jpeg":
        assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (48, 64, 3)
        assert ds.pixel_array.shape == (48, 64, 3)  # the bitstream decodes as declared
    # deterministic: the same file again is the same instance; another file is another one
    again = build(SPEC.study_uid, "report", data, [exam_row(SPEC)], "ideographic")
    other = build(SPEC.study_uid, "report", data + b"\n", [exam_row(SPEC)], "ideographic")
    order = build(SPEC.study_uid, "order", data, [exam_row(SPEC)], "ideographic")
    assert again.sop_instance_uid == obj.sop_instance_uid
    assert len({obj.sop_instance_uid, other.sop_instance_uid, order.sop_instance_uid}) == 3
    # one series per role (one Modality per series), named before any file is read
    assert (
        again.dataset.SeriesInstanceUID
        == obj.dataset.SeriesInstanceUID
        == series_uid(SPEC.study_uid, "report")
    )
    assert (
        order.dataset.SeriesInstanceUID
        == series_uid(SPEC.study_uid, "order")
        != obj.dataset.SeriesInstanceUID
    )


@pytest.mark.parametrize(
    "data",
    [b"GIF89a...", b"", b"\xff\xd8\xff\xe0" + b"\x00" * 20, b"\xff\xd8\xff\xc2\x00\x11" + b"\x00" * 20],
)
def test_other_files_are_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(ReportUnavailable):
        if data[:3] == b"\xff\xd8\xff":
            jpeg_frame(data)
        build(SPEC.study_uid, "report", data, [exam_row(SPEC)], "ideographic")


def test_fetch_local_unc_and_limits(tmp_path: Path) -> None:
    share = tmp_path / "mnt" / "reports"
    (share / "2026").mkdir(parents=True)
    (share / "2026" / "a.pdf").write_bytes(PDF)
    config = ReportsConfig(shares=(("\\\\ris\\reports", str(share)),), max_mb=0.001)
    assert fetch(str(share / "2026" / "a.pdf"), config) == PDF
    assert fetch(f"file://{share}/2026/a.pdf", config) == PDF
    assert fetch("\\\\RIS\\reports\\2026\\a.pdf", config) == PDF  # share names are case-insensitive
    assert local_path("//ris/reports/2026/a.pdf", dict(config.shares)) == share / "2026" / "a.pdf"
    with pytest.raises(ReportUnavailable, match="not mounted"):
        fetch("\\\\other\\share\\a.pdf", config)
    with pytest.raises(ReportUnavailable, match="cannot read"):
        fetch(str(share / "missing.pdf"), config)
    (share / "big.pdf").write_bytes(PDF + b"x" * 2000)
    with pytest.raises(ReportUnavailable, match="max_mb"):
        fetch(str(share / "big.pdf"), config)
    with pytest.raises(ReportUnavailable, match="http fetch failed"):
        fetch("http://127.0.0.1:9/nothing.pdf", ReportsConfig(timeout=2))


@pytest.mark.filterwarnings("ignore:The (asyncore|asynchat) module is deprecated:DeprecationWarning")
def test_fetch_over_ftp(tmp_path: Path) -> None:
    """A report on an FTP server (pyftpdlib, anonymous read, passive mode as urllib uses it)."""
    import threading

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    (tmp_path / "ris").mkdir()
    (tmp_path / "ris" / "r1.pdf").write_bytes(PDF)
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(str(tmp_path / "ris"))
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "banner": "test"})
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.1}, daemon=True)
    thread.start()
    try:
        assert fetch(f"ftp://127.0.0.1:{port}/r1.pdf", ReportsConfig(timeout=10)) == PDF
        with pytest.raises(ReportUnavailable, match="ftp fetch failed"):
            fetch(f"ftp://127.0.0.1:{port}/missing.pdf", ReportsConfig(timeout=10))
    finally:
        server.close_all()
        thread.join(5)


# --- report objects: the JPEG's frame header, the IODs' attributes, fetching at the limits ------


def _seg(marker: int, payload: bytes) -> bytes:
    """A JPEG marker segment (ISO 10918-1 B.1.1.4): FF, marker, length (itself included), payload."""
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _sof(marker: int = 0xC0, precision: int = 8, rows: int = 300, cols: int = 513, comps: int = 3) -> bytes:
    """A frame header (B.2.2): P, Y, X, Nf and one (id, sampling, table) triple per component."""
    head = bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([comps])
    return _seg(marker, head + b"\x01\x22\x00" * comps)


#: Payload of every segment before the frame header: decoy frame headers (7 × 7, one component),
#: so that a scan that loses its place in the segments finds a wrong frame instead of the real one.
DECOYS = _sof(rows=7, cols=7, comps=1) * 30
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
#: A scan that never ends (a step of 0, a step backwards) fails here rather than at the suite's 300 s.
NO_HANG = pytest.mark.timeout(20)


@NO_HANG
def test_jpeg_frame_header_is_found_past_segments_fill_bytes_and_standalone_markers() -> None:
    """B.1.1.2/B.1.1.3: segments are skipped by their length (≥ 256 here, two bytes big-endian),
    standalone markers (SOI, TEM, RST0–RST7) have none, 0xFF fill bytes and stray bytes between
    markers are passed over; DHT (C4), JPG (C8) and DAC (CC) before the frame are not frames."""
    data = (
        SOI
        + _seg(0xE1, DECOYS)
        + _seg(0xE0, DECOYS)  # right after another segment
        + b"\xff"  # a fill byte
        + _seg(0xC4, DECOYS)
        + b"\xff\x01"  # TEM
        + _seg(0xCC, DECOYS)
        + b"\xff\xd0"  # RST0
        + _seg(0xC8, DECOYS)
        + b"\xff\xd7"  # RST7
        + SOI
        + _seg(0xE2, DECOYS + b"\xff")  # payload bytes are arbitrary: one ending in 0xFF
        + b"\x00"  # a stray byte
        + _sof()
        + EOI
    )
    assert jpeg_frame(data) == (300, 513, 3, 8, JPEGBaseline8Bit)


@NO_HANG
@pytest.mark.parametrize(
    ("marker", "precision", "syntax"),
    [
        (0xC0, 8, JPEGBaseline8Bit),
        (0xC0, 12, JPEGExtended12Bit),
        (0xC1, 8, JPEGExtended12Bit),  # extended sequential, 8 bits: the Extended syntax (PS3.5 A.4.1)
        (0xC1, 12, JPEGExtended12Bit),
    ],
)
def test_jpeg_frame_transfer_syntax(marker: int, precision: int, syntax: str) -> None:
    data = SOI + _seg(0xDB, DECOYS) + _sof(marker, precision, rows=1024, cols=2, comps=1) + EOI
    assert jpeg_frame(data) == (1024, 2, 1, precision, syntax)


@NO_HANG
@pytest.mark.parametrize("marker", [0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
def test_jpeg_frames_dicom_does_not_carry_are_refused(marker: int) -> None:
    """Progressive, lossless, hierarchical and arithmetic-coded frames (SOF2–SOF15)."""
    with pytest.raises(ReportUnavailable, match="progressive/lossless"):
        jpeg_frame(SOI + _seg(0xE0, b"JFIF\x00") + _sof(marker) + EOI)


@NO_HANG
def test_a_jpeg_cut_short_is_refused_with_a_reason() -> None:
    """Never an IndexError: callers expect ReportUnavailable for every unusable file."""
    whole = SOI + _sof(rows=1, cols=1, comps=1)
    assert jpeg_frame(whole[:12]) == (1, 1, 1, 8, JPEGBaseline8Bit)  # P, Y, X and Nf are enough
    for cut in (11, 6):  # without Nf; marker and length only
        with pytest.raises(ReportUnavailable, match="cut short"):
            jpeg_frame(whole[:cut])
    with pytest.raises(ReportUnavailable, match="without a frame header"):
        jpeg_frame(whole[:5])  # not even a segment's length
    with pytest.raises(ReportUnavailable, match="without a frame header"):
        jpeg_frame(SOI + _seg(0xE0, b"JFIF\x00") + EOI)


@NO_HANG
@pytest.mark.parametrize(
    ("comps", "precision", "photometric", "bits"),
    [
        (1, 8, "MONOCHROME2", (8, 8, 7)),
        (3, 8, "YBR_FULL_422", (8, 8, 7)),
        (1, 12, "MONOCHROME2", (16, 12, 11)),
    ],
)
def test_secondary_capture_describes_the_bitstream(
    comps: int, precision: int, photometric: str, bits: tuple[int, int, int]
) -> None:
    """Image Pixel module as the frame header says; the JPEG is the one fragment, padded to even."""
    marker = 0xC0 if precision == 8 else 0xC1
    for data in (  # an even length that is no multiple of 3, an odd one
        SOI + _sof(marker, precision, 300, 513, comps) + b"\x00" * 3 + EOI,
        SOI + _sof(marker, precision, 300, 513, comps) + EOI,
    ):
        assert len(data) % 3 or len(data) % 2
        ds = build(SPEC.study_uid, "order", data, [exam_row(SPEC)], "ideographic").dataset
        assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.Modality == "OT"
        assert (ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation) == (
            300,
            513,
            comps,
            photometric,
        )
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (*bits, 0)
        assert ds.get("PlanarConfiguration") == (0 if comps == 3 else None)
        assert ds.file_meta.TransferSyntaxUID == (JPEGBaseline8Bit if precision == 8 else JPEGExtended12Bit)
        assert ds["PixelData"].is_undefined_length  # encapsulated (PS3.5 A.4)
        _offsets, fragment = generate_fragments(ds.PixelData)  # the Basic Offset Table, the one fragment
        assert fragment == (data + b"\x00" if len(data) % 2 else data)


@NO_HANG
@pytest.mark.parametrize("comps", [2, 4])
def test_secondary_capture_refuses_other_component_counts(comps: int) -> None:
    with pytest.raises(ReportUnavailable, match=f"JPEG with {comps} components"):
        build(SPEC.study_uid, "order", SOI + _sof(comps=comps) + EOI, [exam_row(SPEC)], "ideographic")


@pytest.mark.parametrize("size", [81, 80])  # odd (and a multiple of 3); even (and not)
def test_encapsulated_pdf_pads_to_even_and_states_the_true_length(size: int) -> None:
    data = PDF[: size - 6].ljust(size - 6, b" ") + b"%%EOF\n"
    assert len(data) == size
    for role, title, number in (("report", "Report", 9902), ("order", "Scanned order", 9901)):
        obj = build(SPEC.study_uid, role, data, [exam_row(SPEC)], "ideographic")
        ds = obj.dataset
        assert ds.EncapsulatedDocument == (data + b"\x00" if size % 2 else data)
        assert ds.EncapsulatedDocumentLength == size
        assert (ds.Modality, ds.DocumentTitle, ds.MIMETypeOfEncapsulatedDocument) == (
            "DOC",
            title,
            "application/pdf",
        )
        # docs/conformance.md: Series Number 9901 order, 9902 report; one instance per series
        assert (ds.SeriesNumber, ds.InstanceNumber) == (number, 1)
        assert ds.SeriesInstanceUID == series_uid(SPEC.study_uid, role)
        assert role_of_series(SPEC.study_uid, ds.SeriesInstanceUID) == role
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == obj.sop_instance_uid
    assert role_of_series(SPEC.study_uid, SPEC.series_uid(0)) is None


def test_optional_study_attributes_are_copied_only_when_the_view_has_them() -> None:
    full = build(SPEC.study_uid, "report", PDF, [exam_row(SPEC)], "ideographic").dataset
    assert full.StudyDescription and full.InstitutionName
    bare_row = {**exam_row(SPEC), "ExamineItem": None, "HospitalName": None}
    bare = build(SPEC.study_uid, "report", PDF, [bare_row], "ideographic").dataset
    assert "StudyDescription" not in bare and "InstitutionName" not in bare


@pytest.mark.parametrize("where", ["local", "http"])
def test_fetch_takes_a_file_of_exactly_max_mb_and_refuses_one_byte_more(
    where: str, tmp_path: Path, http_folder: tuple[str, Path]
) -> None:
    """``max_mb`` is in MiB (0.001 MiB: 1048 bytes); a file at the limit is read whole, one byte
    more is refused; an empty file is refused."""
    base, served = http_folder
    folder = served if where == "http" else tmp_path
    config = ReportsConfig(max_mb=0.001, timeout=5)
    at_limit = PDF.ljust(1048, b" ")
    for name, data in (("at.pdf", at_limit), ("over.pdf", at_limit + b" "), ("empty.pdf", b"")):
        (folder / name).write_bytes(data)

    def location(name: str) -> str:
        return f"{base}/{name}" if where == "http" else str(folder / name)

    assert fetch(location("at.pdf"), config) == at_limit
    with pytest.raises(ReportUnavailable, match=r"max_mb = 0\.001"):
        fetch(location("over.pdf"), config)
    with pytest.raises(ReportUnavailable, match="empty file"):
        fetch(location("empty.pdf"), config)


def test_fetch_reasons_name_no_path_and_urls_and_shares_are_mapped(tmp_path: Path) -> None:
    """The reason is logged: it names no path (a path may hold a patient's name)."""
    folder = tmp_path / "王小东 2026"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(PDF)
    config = ReportsConfig(shares=(("//ris/reports/", str(folder)),))
    with pytest.raises(ReportUnavailable) as refused:
        fetch(str(folder / "missing.pdf"), config)
    assert str(refused.value) == "cannot read the file: No such file or directory"
    assert fetch(f"file://{urllib.parse.quote(str(folder / 'a.pdf'))}", config) == PDF  # %-escapes undone
    assert fetch("\\\\ris\\reports\\a.pdf", config) == PDF  # a share given with / and a trailing one
    with pytest.raises(ReportUnavailable, match="not mounted"):
        fetch("\\\\ris\\reportsold\\a.pdf", config)  # a share's name is not a prefix of another


# --- CLI ----------------------------------------------------------------------------------------


def test_push_cli(tmp_path: Path) -> None:
    toml = push_cli_toml(tmp_path)
    journal = Journal.for_config("", tmp_path / "var")
    queue = PushQueue(journal.engine, "t")
    now = utcnow()
    with journal.engine.begin() as conn:
        conn.execute(
            push_queue.insert(),
            [
                {"study_uid": f"1.2.3.{i}", "destination": "CLOUD", "state": s, "next_at": now,
                 "created": now, "updated": now, "error": "boom" if s == "failed" else ""}
                for i, s in enumerate(["done", "failed", "queued"])
            ],
        )  # fmt: skip
    run = CliRunner().invoke
    out = run(cli, ["push", "-c", str(toml), "status"])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("CLOUD"))
    # queued running waiting committing done failed dropped
    assert line.split()[1:8] == ["1", "0", "0", "0", "1", "1", "0"]
    assert run(cli, ["push", "-c", str(toml), "pause"]).exit_code == 0
    assert "(paused)" in run(cli, ["push", "-c", str(toml), "status"]).output
    assert run(cli, ["push", "-c", str(toml), "resume"]).exit_code == 0
    assert "(paused)" not in run(cli, ["push", "-c", str(toml), "status"]).output
    bad = run(cli, ["push", "-c", str(toml), "pause", "NOPE"])
    assert bad.exit_code == 2 and "not a [push] destination" in bad.output
    assert run(cli, ["push", "-c", str(toml), "retry", "2"]).exit_code == 0
    assert queue.get(2)["state"] == "queued"  # type: ignore[index]
    refused = run(cli, ["push", "-c", str(toml), "retry", "1"])
    assert refused.exit_code == 1 and "is done" in refused.output
    assert run(cli, ["push", "-c", str(toml), "retry", "99"]).exit_code == 1
    out = run(cli, ["push", "-c", str(toml), "requeue", "--since", "2000-01-01"])
    assert out.exit_code == 0 and "3 item(s)" in out.output
    assert {i["generation"] for i in queue.items()} == {1}  # sent in full: a new generation
    assert run(cli, ["push", "-c", str(toml), "requeue", "--since", "last week"]).exit_code == 2
    journal.close()


def test_example_config_documents_every_push_key() -> None:
    import dataclasses

    from dicomproxy.config import PushConfig

    text = (Path(__file__).parent.parent / "conf" / "dicomproxy.example.toml").read_text(encoding="utf-8")
    push, reports = text.split("\n[push]", 1)[1].split("\n[reports]", 1)
    for cls, section in ((PushConfig, push), (ReportsConfig, reports)):
        for f in dataclasses.fields(cls):
            assert f"\n{f.name} = " in section or f"# [{cls.__name__[:-6].lower()}.{f.name}]" in section, (
                f.name
            )

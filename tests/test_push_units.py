"""Push mode's pure parts and its CLI: the off-peak window, the rate limiter, config errors, the
report objects (checked by dciodvfy, dicom3tools), file fetching, ``dicomproxy push`` commands."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydicom import dcmread, dcmwrite

from dicomproxy.cli import cli
from dicomproxy.config import ReportsConfig, parse_config
from dicomproxy.errors import ConfigError
from dicomproxy.push.pacing import RateLimiter, in_window, next_opening, parse_window
from dicomproxy.push.queue import PushQueue, push_queue, utcnow
from dicomproxy.relay.journal import Journal
from dicomproxy.reports.encode import ENCAPSULATED_PDF, SECONDARY_CAPTURE, build, jpeg_frame, series_uid
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
    assert line.split()[1:7] == ["1", "0", "0", "1", "1", "0"]  # queued running waiting done failed dropped
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

"""``dicomproxy check-config``: one line per check, non-zero exit on any FAIL (real Orthanc, real SQLite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from testkit import free_port


def _config(tmp: Path, view_url: str, pacs_port: int, extra: str = "") -> Path:
    path = tmp / "check.toml"
    path.write_text(
        f"""
[proxy]
ae_title = "DICOMPROXY"
[hospital]
id = "74580626"
[view]
url = "{view_url}"
[pacs]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {pacs_port}
{extra}
""",
        encoding="utf-8",
    )
    return path


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomproxy", "check-config", "-c", str(path), "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_all_ok(tmp_path: Path, sqlite_url: str, sqlite_view, orthanc) -> None:
    proc = _run(_config(tmp_path, sqlite_url, orthanc.dicom_port))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    # config, database, columns, RowTimestamp, study UID lookup, PACS echo
    assert [ln.split()[0] for ln in lines] == ["OK"] * 6, proc.stdout
    assert "all 78 columns" in proc.stdout
    assert "OK    view RowTimestamp: RowTimestamp: date-time; re-reads 60 s below" in proc.stdout
    assert "OK    study UID lookup: Study UID of ExamineID EA0001 found via side table" in proc.stdout


def test_failures_are_listed(tmp_path: Path, orthanc) -> None:
    url = f"sqlite:///{tmp_path / 'partial.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE v_image_cloud (examineid VARCHAR(64), patientname VARCHAR(64))"))
    engine.dispose()
    dead = free_port()
    extra = f"""
[[archives]]
name = "ultrasound"
ae_title = "UISPACS"
host = "127.0.0.1"
port = {dead}
sysids = ["UIS"]
"""
    proc = _run(_config(tmp_path, url, orthanc.dicom_port, extra))
    assert proc.returncode == 1
    out = proc.stdout
    assert "FAIL  view columns: V_IMAGE_CLOUD: missing MedNo" in out
    assert "OK    pacs echo" in out
    assert f"FAIL  archive ultrasound echo: no association with UISPACS@127.0.0.1:{dead}" in out


def test_unreachable_database(tmp_path: Path, orthanc) -> None:
    url = "postgresql+psycopg2://nobody@127.0.0.1:1/none"
    proc = _run(_config(tmp_path, url, orthanc.dicom_port))
    assert proc.returncode == 1
    assert "FAIL  view database:" in proc.stdout
    assert "Traceback" not in proc.stderr

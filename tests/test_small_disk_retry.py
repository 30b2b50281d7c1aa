"""A retry streams like the relay (issue 23): on a data disk that holds less than half of the
study, ``jobs retry`` delivers all of it.

The data directory (spool and journal) is a 20 MB tmpfs; the study is 80 CT slices of 512 KB
(41 MB) in a real Orthanc. The first C-MOVE meets a destination that is down (0xC003, nothing
fetched); once it is up, ``jobs retry`` must fetch the study again and send it on — through a
spool that never holds more than what arrived and was not yet confirmed. A retry that fetched
the remainder into the spool before sending (the recovery before issue 23) runs out of space.
The spool holds the archive back once the disk is below `spool_headroom_mb` (256 MiB, more than this
disk holds): each C-STORE response waits for the destination, so the spool never outgrows the disk (before
  that, under load, a slow destination let it reach 20 MB and the archive met ENOSPC).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomproxy.relay.journal import Journal
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import Process, wait_for_echo
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakeDestination
from testkit.orthanc import Orthanc
from testkit.orthancrig import proxy_site
from testkit.samples import Patient, StudySpec

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.dcmtk]

CLOUD, DEST = "CLOUD", "STORESCP"
SERIES, PER_SERIES = 2, 40
DISK_MB = 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs (root needed): {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
@pytest.mark.parametrize("level", ["STUDY", "SERIES"])
def test_retry_of_a_study_twice_the_disk(
    tmp_path: Path, small_disk: Path, orthanc: Orthanc, retrieve: str, level: str
) -> None:
    """STUDY: an early start, killed by the destination before the instance list was journalled
    (the retry lists it again); SERIES: the list journalled before anything was fetched (the
    retry resends it) — both fetch the whole study again through the small disk."""
    seed = 300 + (7 if retrieve == "c-move" else 0) + (3 if level == "SERIES" else 0)
    spec = StudySpec(
        "CT",
        Patient(patient_id=f"P{seed}", name="郑强"),
        f"D{seed}",
        series=SERIES,
        images_per_series=PER_SERIES,
        seed=seed,
    )
    dest = StoreSCP(tmp_path / "scp", DEST)  # not started yet: the destination is down
    site = proxy_site(tmp_path, orthanc, spec, retrieve, {CLOUD: 1, DEST: dest.port}, data_dir=small_disk)
    size = sum(p.stat().st_size for p in site.files)
    assert size > 2 * DISK_MB * 2**20, size  # the point of the test
    expected, toml, ae_title, port = set(site.expected), site.toml, site.ae_title, site.port
    series = [spec.series_uid(s) for s in range(SERIES)] if level == "SERIES" else []
    serve = Process([sys.executable, "-m", "dicomproxy", "serve", "-c", str(toml)], tmp_path / "serve.log")
    try:
        wait_for_echo(Remote(ae_title, "127.0.0.1", port), 30, calling=CLOUD, proc=serve.proc)
        first = scu.move(
            Remote(ae_title, "127.0.0.1", port),
            DEST,
            scu.identifier(level, study_uids=[spec.study_uid], series_uids=series),
            calling_ae=CLOUD,
        )
        assert first.status == 0xC003, first.line()  # the destination is down
        if retrieve == "c-get":
            serve.stop()  # `jobs retry` runs by itself (a C-GET needs no listener)
        dest.start()
        retry = Process(
            [sys.executable, "-m", "dicomproxy", "jobs", "-c", str(toml), "retry", "1"],
            tmp_path / "retry.log",
        )
        retry.proc.wait(300)
        out = retry.log_path.read_text()
        assert retry.proc.returncode == 0, out + serve.log_path.read_text()
        assert "No space left" not in out + serve.log_path.read_text()
        got = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dest.received()}
        assert got == expected
        journal = Journal.for_config("", small_disk)
        row = journal.get(1).row  # type: ignore[union-attr]
        assert (row["outcome"], row["completed"], row["failed"]) == ("success", len(expected), 0), row
        journal.close()
        assert not any((small_disk / "spool").rglob("*.dcm"))
    finally:
        serve.stop()
        dest.stop()


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
def test_a_slow_destination_holds_the_archive_back(
    tmp_path: Path, small_disk: Path, orthanc: Orthanc, retrieve: str
) -> None:
    """A fresh C-MOVE of a study twice the disk to a destination that takes 50 ms per instance
    (Orthanc sends the 41 MB in about a second): without back-pressure the spool outgrows the
    20 MB disk and the archive's association ends with ENOSPC; with it every instance arrives."""
    seed = 320 + (1 if retrieve == "c-move" else 0)
    spec = StudySpec(
        "CT",
        Patient(patient_id=f"P{seed}", name="钱敏"),
        f"D{seed}",
        series=SERIES,
        images_per_series=PER_SERIES,
        seed=seed,
    )
    dest = FakeDestination(DEST)
    dest.behaviour.delay = 0.05
    site = proxy_site(tmp_path, orthanc, spec, retrieve, {CLOUD: 1, DEST: dest.port}, data_dir=small_disk)
    assert sum(p.stat().st_size for p in site.files) > 2 * DISK_MB * 2**20
    serve = Process(
        [sys.executable, "-m", "dicomproxy", "serve", "-c", str(site.toml)], tmp_path / "serve.log"
    )
    dest.start()
    try:
        remote = Remote(site.ae_title, "127.0.0.1", site.port)
        wait_for_echo(remote, 30, calling=CLOUD, proc=serve.proc)
        result = scu.move(
            remote, DEST, scu.identifier("STUDY", study_uids=[spec.study_uid]), calling_ae=CLOUD
        )
        log = serve.log_path.read_text()
        assert result.status == 0x0000, result.line() + log
        assert "No space left" not in log
        assert "below spool_headroom_mb" in log  # it did hold the archive back
        assert {uid for uid, _ in dest.received} == set(site.expected)
        assert not any((small_disk / "spool").rglob("*.dcm"))
    finally:
        serve.stop()
        dest.stop()

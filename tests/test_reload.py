"""Reload without restart (issue 28 item 4), on a real ``serve`` with a real Orthanc behind it.

A C-MOVE is held mid-study by a slow destination while the config file changes (a peer's
compression, a peer added, a peer removed) and the serve is told to reload (SIGHUP, as
``systemctl reload`` sends; ``dicomproxy reload``). The running transfer finishes uncompressed,
as it started; the new peer is let in and the removed one turned away at once; the next C-MOVE
is compressed. A restart-only change (the port) is named in one WARNING and left alone; an
invalid file changes nothing (one ERROR naming file and key). Each reload is an audit row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from dicomproxy.audit.trail import AuditTrail
from dicomproxy.relay.journal import Journal
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote, c_echo
from testkit import Process, free_port, wait_for_echo, wait_until
from testkit.fakepacs import FakeDestination
from testkit.orthanc import Orthanc
from testkit.orthancrig import ProxySite, proxy_site
from testkit.samples import Patient, StudySpec

pytestmark = [pytest.mark.slow, pytest.mark.orthanc]

CLOUD, NEW, OLD, DEST = "CLOUD", "NEWCLOUD", "OLDCLOUD", "DEST"


def peer(ae: str, port: int, **keys: str) -> str:
    extra = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    return f'\n[[peers]]\nae_title = "{ae}"\nhost = "127.0.0.1"\nport = {port}\n{extra}'


@dataclass
class Site:
    site: ProxySite
    base: str
    dest: FakeDestination
    serve: Process
    data: Path

    def write(
        self, *peers: str, compression: str = 'mode = "none"', port: int | None = None, extra: str = ""
    ) -> None:
        text = (
            self.base
            if port is None
            else self.base.replace(f"port = {self.site.port}\n", f"port = {port}\n", 1)
        )
        self.site.toml.write_text(
            text
            + f'\n[compression]\n{compression}\nlossless_syntaxes = ["{JPEGLSLossless}"]\n'
            + extra
            + "".join(peers),
            encoding="utf-8",
        )

    def echo(self, calling: str) -> bool:
        return c_echo(calling, self.site.remote, timeout=5.0).ok

    def result(self) -> dict[str, object] | None:
        try:
            return dict(json.loads((self.data / "reload.json").read_text()))
        except (OSError, ValueError):
            return None

    def hangup(self) -> dict[str, object]:
        """SIGHUP the serve (as systemctl reload does) and wait for its answer."""
        before = self.result()
        os.kill(self.serve.proc.pid, signal.SIGHUP)
        wait_until(lambda: self.result() not in (None, before), 30, "the reload's answer")
        result = self.result()
        assert result is not None
        return result

    def move(self, spec: StudySpec) -> scu.RetrieveSummary:
        return scu.move(
            self.site.remote, DEST, scu.identifier("STUDY", study_uids=[spec.study_uid]), calling_ae=CLOUD
        )

    def audit_rows(self) -> list[dict[str, object]]:
        journal = Journal.for_config("", self.data)
        try:
            return [r for r in AuditTrail(journal.engine).rows() if r["action"] == "reload"]
        finally:
            journal.close()


@pytest.fixture
def site(tmp_path: Path, orthanc: Orthanc) -> Iterator[tuple[Site, StudySpec]]:
    spec = StudySpec("CT", Patient(patient_id="P2804", name="孙丽"), "D2804", images_per_series=6, seed=2804)
    data = tmp_path / "var"
    built = proxy_site(tmp_path, orthanc, spec, "c-move", {}, data_dir=data)
    dest = FakeDestination(DEST).start()
    s = Site(built, built.toml.read_text(), dest, None, data)  # type: ignore[arg-type]
    s.write(peer(CLOUD, 1), peer(DEST, dest.port), peer(OLD, 1))
    s.serve = Process(
        [sys.executable, "-m", "dicomproxy", "serve", "-c", str(built.toml)], tmp_path / "serve.log"
    )
    try:
        wait_for_echo(built.remote, 30, calling=CLOUD, proc=s.serve.proc)
        wait_until(lambda: (data / "dicomproxy.pid").exists(), 10, "the pid file")
        yield s, spec
    finally:
        dest.behaviour.hold.set()
        s.serve.stop()
        dest.stop()


def test_a_reload_during_a_transfer_applies_to_the_next_one(site: tuple[Site, StudySpec]) -> None:
    s, spec = site
    assert s.echo(OLD) and not s.echo(NEW)
    s.dest.behaviour.hold_from = 2  # the first C-MOVE stops at its third instance
    first: list[scu.RetrieveSummary] = []
    running = threading.Thread(target=lambda: first.append(s.move(spec)))
    running.start()
    try:
        assert s.dest.behaviour.holding.wait(60), s.serve.log_text()
        s.write(peer(CLOUD, 1), peer(DEST, s.dest.port, compression="lossless"), peer(NEW, 1))
        result = s.hangup()
        assert result["applied"] is True and result["changed"] == ["peers"], result
        # the access rules apply to the next association at once, the transfer still running
        assert s.echo(NEW) and not s.echo(OLD)
        assert running.is_alive()
    finally:
        s.dest.behaviour.hold.set()
        running.join(120)
    assert first and first[0].status == 0x0000, (first, s.serve.log_text())
    syntaxes = {ts for _, ts in s.dest.received}
    assert len(s.dest.received) == 6 and syntaxes == {ExplicitVRLittleEndian}, syntaxes  # as it started
    s.dest.received.clear()
    second = s.move(spec)
    assert second.status == 0x0000, second.line()
    assert {ts for _, ts in s.dest.received} == {JPEGLSLossless}  # the reloaded peer's compression
    rows = s.audit_rows()
    assert [(r["outcome"], json.loads(str(r["detail"]))["changed"]) for r in rows] == [("applied", ["peers"])]


def test_restart_only_keys_and_an_invalid_file(site: tuple[Site, StudySpec], tmp_path: Path) -> None:
    s, _ = site
    toml = str(s.site.toml)

    def reload_cmd() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dicomproxy", "reload", "-c", toml],
            capture_output=True,
            text=True,
            timeout=60,
        )

    # a new port (restart-only) beside a new peer and log level: those now, the port named once and kept
    new_port = free_port()
    s.write(
        peer(CLOUD, 1),
        peer(DEST, s.dest.port),
        peer(NEW, 1),
        port=new_port,
        extra='[logging]\nlevel = "WARNING"\n',
    )
    done = reload_cmd()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reload applied" in done.stdout and "peers, logging.level" in done.stdout
    assert "needs a restart, left unchanged: proxy.port" in done.stdout
    warnings = [line for line in s.serve.log_text().splitlines() if "WARNING" in line and "restart" in line]
    assert len(warnings) == 1 and "proxy.port" in warnings[0], warnings
    seen = len(s.serve.log_text())
    assert s.echo(NEW)  # answered on the port it started on
    assert not c_echo(NEW, Remote(s.site.ae_title, "127.0.0.1", new_port), timeout=2.0).ok  # nothing there
    assert " INFO " not in s.serve.log_text()[seen:]  # "association accepted" is INFO: now below the level

    # an invalid file: `dicomproxy reload` says so without signalling; a SIGHUP is refused by the serve
    s.write(peer(CLOUD, 1), peer(DEST, s.dest.port), compression='mode = "zip"')
    done = reload_cmd()
    assert done.returncode == 2 and "compression.mode" in done.stderr and toml in done.stderr, done.stderr
    result = s.hangup()
    assert result["applied"] is False and "compression.mode" in str(result["error"]), result
    errors = [line for line in s.serve.log_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and toml in errors[0] and "compression.mode" in errors[0], errors
    assert s.echo(NEW) and s.echo(OLD) is False  # nothing changed

    rows = s.audit_rows()
    assert [r["outcome"] for r in rows] == ["applied", "refused"]
    assert json.loads(str(rows[0]["detail"]))["restart"] == ["proxy.port"]
    assert json.loads(str(rows[0]["detail"]))["changed"] == ["peers", "logging.level"]

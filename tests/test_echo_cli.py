"""``dicomproxy echo`` against a real Orthanc and a closed port; ``serve`` shutdown on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dicomproxy.transport.net import Remote, c_echo, guard_requestor
from testkit import free_port, wait_for_echo

PY = [sys.executable, "-m", "dicomproxy"]


def test_echo_orthanc_ok(orthanc) -> None:
    proc = subprocess.run(
        [*PY, "echo", "--host", "127.0.0.1", "--port", str(orthanc.dicom_port), "--aet", orthanc.ae_title],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: C-ECHO to ORTHANC@127.0.0.1")


def test_echo_closed_port_fails_clearly() -> None:
    port = free_port()
    proc = subprocess.run(
        [*PY, "echo", "--host", "127.0.0.1", "--port", str(port), "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1].startswith(f"FAIL: no association with ANY-SCP@127.0.0.1:{port}")
    )
    assert "Traceback" not in proc.stderr


def _write_config(tmp_path: Path, port: int, pacs_port: int = 1) -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(
        f"""
[proxy]
ae_title = "DICOMPROXY"
host = "127.0.0.1"
port = {port}
data_dir = "{tmp_path / "var"}"
drain_timeout = 10

[hospital]
id = "74580626"

[view]
url = "sqlite:///{tmp_path / "view.db"}"

[pacs]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {pacs_port}

[[peers]]
ae_title = "jobserver"
host = "127.0.0.1"
port = 104

[http]
port = {free_port()}  # the console runs and stops with serve; not on 8080, which concurrent runs share
""",
        encoding="utf-8",
    )
    return path


def test_echo_configured_pacs(orthanc, tmp_path: Path) -> None:
    cfg = _write_config(tmp_path, free_port(), orthanc.dicom_port)
    proc = subprocess.run([*PY, "echo", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_sigterm_with_open_association_exits_zero(tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    port = free_port()
    cfg = _write_config(tmp_path, port)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*PY, "serve", "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_echo(Remote("DICOMPROXY", "127.0.0.1", port), calling="jobserver", proc=proc)  # type: ignore[arg-type]
        ae = AE(ae_title="jobserver")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMPROXY")
        guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
        assert assoc.is_established
        proc.send_signal(signal.SIGTERM)
        # While draining, the open association still works; new ones are refused.
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        assert proc.wait(timeout=30) == 0
        text = (tmp_path / "serve.log").read_text()
        assert "stop requested: draining" in text and "stopped" in text
        assert not c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", port), timeout=2).ok
        ae.shutdown()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_sigterm_idle_exits_zero(tmp_path: Path) -> None:
    port = free_port()
    cfg = _write_config(tmp_path, port)
    proc = subprocess.Popen(
        [*PY, "serve", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_echo(Remote("DICOMPROXY", "127.0.0.1", port), calling="jobserver", proc=proc)  # type: ignore[arg-type]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

"""A C-MOVE destination that goes away mid-study (issue 14): a real DCMTK storescp is killed while
the job is half-way and started again on the same port; the proxy reconnects with backoff, sends
what it had not confirmed, keeps the requester informed with Pending responses meanwhile, and
ends with Success — nothing counted failed. A destination that does not come back within
``[proxy] reconnect_window`` fails the rest, as before.

The PACS is the controllable pynetdicom PACS (in-process, upstream C-MOVE), held at its gate so
the outage happens at a known point of the study.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomproxy.relay.journal import Journal
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import wait_until
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakePacs
from testkit.moverig import MoveProxies
from testkit.samples import StudySpec, write_study

CLOUD, DEST = "CLOUD", "STORESCP"
N, GATE = 8, 3


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = StudySpec("CT", accession="RC001", series=2, images_per_series=N // 2, seed=31)
    return write_study(spec, tmp_path_factory.mktemp("reconnect-study"))


def _uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


@pytest.fixture
def setup(
    move_proxies: MoveProxies, study_files: list[Path], tmp_path: Path
) -> Callable[[float], tuple[FakePacs, StoreSCP, Server]]:
    def make(window: float) -> tuple[FakePacs, StoreSCP, Server]:
        dest = StoreSCP(tmp_path / "scp-1", DEST, extra=["+uf"]).start()
        move_proxies.started.append(dest)
        pacs, server = move_proxies.start(
            study_files,
            [
                {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
                {"ae_title": DEST, "host": "127.0.0.1", "port": dest.port},
            ],
            proxy={"retries": 3, "retry_delay": 0.05, "reconnect_window": window},
        )
        pacs.behaviour.gate_at = GATE  # read at the C-MOVE, which the test sends later
        return pacs, dest, server

    return make


def _move_in_background(server: Server, study: str) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {"pending": 0}

    def progress(_summary: scu.RetrieveSummary) -> None:
        out["pending"] = int(out["pending"]) + 1  # type: ignore[call-overload]

    def run() -> None:
        out["result"] = scu.move(
            Remote("DICOMPROXY", "127.0.0.1", server.port),
            DEST,
            scu.identifier(study_uids=[study]),
            calling_ae=CLOUD,
            timeout=60,
            progress=progress,
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_storescp_killed_and_restarted_mid_study(
    setup: Callable[[float], tuple[FakePacs, StoreSCP, Server]], study_files: list[Path], tmp_path: Path
) -> None:
    pacs, dest, server = setup(60.0)
    study = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
    thread, out = _move_in_background(server, study)
    wait_until(lambda: pacs.behaviour.at_gate.is_set(), 30, "PACS at its gate")
    wait_until(lambda: len(dest.received()) >= GATE, 30, "first instances at storescp")
    first = list(dest.received())
    dest.stop()  # storescp gone mid-study
    pacs.behaviour.gate.set()  # the rest arrives at the proxy, which cannot send it on
    wait_until(lambda: "destination lost mid-study" in _log_of(server), 30, "the relay noticing")
    pending_before = int(out["pending"])  # type: ignore[call-overload]
    again = StoreSCP(tmp_path / "scp-2", DEST, extra=["+uf"])
    again.port = dest.port  # the same address: the destination restarted
    wait_until(lambda: int(out["pending"]) > pending_before, 30, "Pending responses during the outage")  # type: ignore[call-overload]
    again.start()
    try:
        thread.join(60)
        result = out["result"]
        assert isinstance(result, scu.RetrieveSummary)
        assert (result.status, result.completed, result.failed) == (0x0000, N, 0), result.line()
        delivered = _uids(first) | _uids(again.received())
        assert delivered == _uids(study_files)  # every instance, none counted failed
        journal = Journal.for_config("", server.config.data_path)
        job = journal.recent(1)[0]
        assert (job["outcome"], job["completed"], job["failed"]) == ("success", N, 0)
        journal.close()
        assert "destination back after" in _log_of(server)
    finally:
        again.stop()


def test_destination_not_back_within_the_window_fails_the_rest(
    setup: Callable[[float], tuple[FakePacs, StoreSCP, Server]], study_files: list[Path]
) -> None:
    pacs, dest, server = setup(1.0)
    study = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
    thread, out = _move_in_background(server, study)
    wait_until(lambda: pacs.behaviour.at_gate.is_set(), 30, "PACS at its gate")
    wait_until(lambda: len(dest.received()) >= GATE, 30, "first instances at storescp")
    dest.stop()
    pacs.behaviour.gate.set()
    thread.join(60)
    result = out["result"]
    assert isinstance(result, scu.RetrieveSummary)
    assert (result.status, result.completed, result.failed) == (0xB000, GATE, N - GATE), result.line()
    assert "destination not back within 1 s" in _log_of(server)


_LOGS: list[str] = []


def _log_of(server: Server) -> str:
    """What the relay logged (captured by the handler installed below)."""
    return "\n".join(_LOGS)


@pytest.fixture(autouse=True)
def _capture_relay_log() -> Iterator[None]:
    import logging

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            _LOGS.append(record.getMessage())

    handler = Keep(level=logging.INFO)
    logger = logging.getLogger("dicomproxy.relay")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    _LOGS.clear()
    yield
    logger.removeHandler(handler)
    logger.setLevel(old_level)

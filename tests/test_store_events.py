"""The archive's own C-STORE association during our C-MOVE (served on the raw-socket fast path,
not by pynetdicom) is published like any other: accepted with its calling AE and address, so the
audit trail and the association metrics see the PACS delivering to us (issue 15)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dicomproxy import events
from dicomproxy.app import build_context
from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import free_port
from testkit.fakepacs import FakeDestination, FakePacs
from testkit.samples import StudySpec, write_study
from tests.test_recovery import AllVisible


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_study(StudySpec("CT", accession="SE001", seed=44), tmp_path_factory.mktemp("store-events"))


def test_archive_store_association_is_published(
    make_config: Callable[..., Config], study_files: list[Path]
) -> None:
    seen: list[Any] = []
    subscriber = seen.append
    events.subscribe(subscriber)
    proxy_port = free_port()
    dest = FakeDestination().start()
    pacs = FakePacs(
        study_files, destinations={"DICOMPROXY": Remote("DICOMPROXY", "127.0.0.1", proxy_port)}
    ).start()
    config = make_config(
        proxy={"port": proxy_port},
        pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port, "retrieve": "c-move"},
        peers=[
            {"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1},
            {"ae_title": "FAKEDEST", "host": "127.0.0.1", "port": dest.port},
        ],
    )
    assert config.proxy.fast_path
    server = Server(config, build_context(config, view=AllVisible(), pending_interval=0.1))
    server.start()
    try:
        study = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
        result = scu.move(Remote("DICOMPROXY", "127.0.0.1", server.port), "FAKEDEST",
                          scu.identifier(study_uids=[study]), calling_ae="CLOUD", timeout=60)  # fmt: skip
        assert result.status == 0x0000, result.line()
        events.flush()
        accepted = [e for e in seen if isinstance(e, events.AssociationAccepted)]
        assert pacs.ae_title in {e.peer.calling_ae for e in accepted}
        archive = next(e for e in accepted if e.peer.calling_ae == pacs.ae_title)
        assert archive.peer.address == "127.0.0.1" and archive.called_ae == "DICOMPROXY"
    finally:
        events.unsubscribe(subscriber)
        server.stop(drain_timeout=2.0)
        pacs.stop()
        dest.stop()

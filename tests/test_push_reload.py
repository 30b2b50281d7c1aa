"""A reload reaching the push service (PushService.reconfigure, docs/operations.md Reload): the next
pass reads the new filters and window, the next job the new ``max_mbps``; a cap that did not change
keeps its token bucket (the running jobs share it), a changed one gets a new bucket, and a running
job keeps the bucket it started with."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomproxy.config import Config, parse_config
from dicomproxy.config.holder import Settings
from dicomproxy.push.pacing import in_window
from dicomproxy.push.service import PushService
from dicomproxy.relay.journal import Journal
from tests.conftest import base_config_dict

PEERS = [{"ae_title": ae, "host": "127.0.0.1", "port": 1} for ae in ("CLOUD", "BACKUP")]


def config(tmp: Path, **push: object) -> Config:
    doc = base_config_dict(
        tmp,
        "sqlite://",
        peers=PEERS,
        push={"enabled": True, "destinations": ["CLOUD", "BACKUP"], **push},
    )
    return parse_config(doc, str(tmp / "proxy.toml"))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    yield journal
    journal.close()


def test_a_reloaded_push_section_reaches_each_part(tmp_path: Path, journal: Journal) -> None:
    old = config(tmp_path, max_mbps={"CLOUD": 10, "BACKUP": 5}, modalities=["CT"])
    settings = Settings(old)
    service = PushService(old, None, journal, None)
    settings.subscribe(service.reconfigure)
    cloud, backup = service.limiters["CLOUD"], service.limiters["BACKUP"]
    running = service.limiters.get("BACKUP")  # what a job started before the reload holds

    new = config(tmp_path, max_mbps={"CLOUD": 10, "BACKUP": 1}, modalities=["CT", "MR"], window="20:00-07:00")
    settings.replace(new)

    assert service.watcher.push.modalities == ("CT", "MR")  # the next watcher pass
    assert service.holds.push is new.push and service.rechecks.push is new.push
    assert service.files.config is new and service.commitments.config is new
    assert not in_window(service.window, dt.datetime(2026, 1, 1, 12, 0))  # the next claim waits
    assert service.limiters["CLOUD"] is cloud  # unchanged cap: the same bucket
    assert service.limiters["BACKUP"] is not backup and service.limiters["BACKUP"].rate == 1e6 / 8
    assert running is backup and running.rate == 5e6 / 8  # the running job's bucket is left as it was

"""Back-pressure of the spool on the archive when the data disk runs low (``[proxy] spool_headroom_mb``).

Unit tests with a stand-in for the disk; the proof on a real 20 MB tmpfs with a real Orthanc is
``tests/test_small_disk_retry.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dicomproxy.relay import spool as spool_module
from dicomproxy.relay.spool import DiskRoom, Spool
from dicomproxy.transport.recycle import RecycledFiles


class FakeRoom(DiskRoom):
    def __init__(self, path: Path, low: bool) -> None:
        super().__init__(path, 1)
        self.is_low = low

    def free(self) -> int:
        return 0 if self.is_low else 2**40

    def low(self) -> bool:
        return self.is_low


def _accept(spool: Spool, tmp_path: Path, n: int) -> None:
    src = tmp_path / f"in{n}.dcm"
    src.write_bytes(b"x" * 10)
    assert spool.accept(src, "1.2", f"1.2.3.{n}", "1.2.840.10008.1.2.1")


def test_no_wait_while_the_disk_has_room(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "job", FakeRoom(tmp_path, low=False))
    _accept(spool, tmp_path, 1)
    assert spool.wait_for_room() == 0.0
    assert spool.holds == 0


def test_a_low_disk_holds_the_response_until_the_instance_was_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "job", FakeRoom(tmp_path, low=True))
    _accept(spool, tmp_path, 1)
    item = spool.get(1)
    assert item is not None and not isinstance(item, spool_module.End)
    timer = threading.Timer(0.3, Spool.settled, args=(item,))
    timer.start()
    waited = spool.wait_for_room()
    timer.join()
    assert 0.25 <= waited < 2.0
    assert spool.unsettled == 0 and spool.holds == 1


def test_a_low_disk_with_nothing_unsent_does_not_wait(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "job", FakeRoom(tmp_path, low=True))
    _accept(spool, tmp_path, 1)
    item = spool.get(1)
    assert item is not None and not isinstance(item, spool_module.End)
    Spool.settled(item)
    assert spool.wait_for_room() < 0.1


def test_room_coming_back_ends_the_wait(tmp_path: Path) -> None:
    room = FakeRoom(tmp_path, low=True)
    spool = Spool(tmp_path / "spool", "job", room)
    _accept(spool, tmp_path, 1)
    threading.Timer(0.3, lambda: setattr(room, "is_low", False)).start()
    waited = spool.wait_for_room()
    assert 0.25 <= waited < 1.5
    assert spool.unsettled == 1


def test_closing_the_spool_ends_the_wait(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "job", FakeRoom(tmp_path, low=True))
    _accept(spool, tmp_path, 1)
    threading.Timer(0.3, spool.close).start()
    assert 0.25 <= spool.wait_for_room() < 1.5


def test_the_wait_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "HOLD_MAX", 0.4)
    spool = Spool(tmp_path / "spool", "job", FakeRoom(tmp_path, low=True))
    _accept(spool, tmp_path, 1)
    start = time.monotonic()
    spool.wait_for_room()
    assert 0.35 <= time.monotonic() - start < 1.5


def test_disk_room_reads_the_real_file_system(tmp_path: Path) -> None:
    assert not DiskRoom(tmp_path, 0).low()  # 0 = never
    assert DiskRoom(tmp_path, 2**62).low()
    assert not DiskRoom(tmp_path, 1).low()


def test_a_low_disk_takes_back_the_kept_files_and_keeps_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Confirmed files kept for reuse (up to 64 MiB, issue 29) are the disk's again once it runs
    low: deleted when a response first waits for room, and what the job confirms then is deleted,
    not kept (a 20 MB data disk filled with kept files left the journal no room)."""
    recycled = RecycledFiles(tmp_path / "recycled", keep_seconds=0)
    room = FakeRoom(tmp_path, low=False)
    spool = Spool(tmp_path / "spool", "job", room, recycled)
    for n in (1, 2):
        _accept(spool, tmp_path, n)
    first = spool.get(1)
    assert first is not None and not isinstance(first, spool_module.End)
    Spool.settled(first)
    Spool.confirmed(first)
    assert len(recycled) == 1  # room enough: kept
    room.is_low = True
    monkeypatch.setattr(spool_module, "HOLD_MAX", 0.1)  # one unsent instance: it waits that long
    spool.wait_for_room()
    assert spool.holds == 1
    assert len(recycled) == 0 and not list((tmp_path / "recycled").iterdir())
    second = spool.get(1)
    assert second is not None and not isinstance(second, spool_module.End)
    Spool.settled(second)
    Spool.confirmed(second)
    assert len(recycled) == 0 and not second.path.exists()
    spool.close()

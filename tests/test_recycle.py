"""Recycled spool files (issue 29): a confirmed instance's file is overwritten by the next received
one instead of a new file being created — and the received file is still exactly the meta group plus
the bytes sent, whatever the recycled file held; nothing is kept once no job runs."""

from __future__ import annotations

import errno
import io
import os
import socket
import threading
from pathlib import Path

import pytest
from pynetdicom.presentation import build_context as presentation_context

from dicomproxy.relay import spool as spool_module
from dicomproxy.relay.spool import Spool
from dicomproxy.transport import recycle
from dicomproxy.transport.raw import dimse, pdu, wire
from dicomproxy.transport.raw import sender as fastsender
from dicomproxy.transport.recycle import RecycledFiles

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def a_file(path: Path, size: int, fill: int = 0xAB) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([fill]) * size)
    return path


def give(files: RecycledFiles, path: Path) -> None:
    files.give(path, path.stat().st_size)


def test_kept_while_a_job_runs_then_deleted(tmp_path: Path) -> None:
    files = RecycledFiles(tmp_path / "recycled", capacity=2, keep_seconds=0)
    assert files.take() is None
    give(files, a_file(tmp_path / "a.dcm", 10))  # no job holds it: deleted
    assert not (tmp_path / "a.dcm").exists() and len(files) == 0
    files.hold()
    for name in ("b", "c", "d"):
        give(files, a_file(tmp_path / f"{name}.dcm", 10))
    assert len(files) == 2  # capacity: the third was deleted
    assert sorted(p.suffix for p in (tmp_path / "recycled").iterdir()) == [".free", ".free"]
    assert not any((tmp_path / f"{n}.dcm").exists() for n in "bcd")
    taken = files.take()
    assert taken is not None and taken.read_bytes() == b"\xab" * 10 and len(files) == 1
    files.release()  # the last job ended: what is kept goes (keep_seconds = 0: at once)
    assert len(files) == 0 and [p for p in (tmp_path / "recycled").iterdir()] == [taken]


def test_bytes_kept_are_bounded(tmp_path: Path) -> None:
    """A few large instances (whole-slide images) are deleted, not kept: the disk stays the spool's."""
    files = RecycledFiles(tmp_path / "recycled", keep_seconds=0, max_bytes=100)
    files.hold()
    give(files, a_file(tmp_path / "a.dcm", 60))
    give(files, a_file(tmp_path / "b.dcm", 60))  # 120 > 100: deleted
    assert len(files) == 1 and not (tmp_path / "b.dcm").exists()
    assert files.take() is not None
    give(files, a_file(tmp_path / "c.dcm", 100))  # what was taken no longer counts
    assert len(files) == 1
    files.release()


def test_drain_waits_for_the_last_job_and_its_delay(tmp_path: Path) -> None:
    files = RecycledFiles(tmp_path / "recycled", keep_seconds=60)
    files.hold()
    files.hold()
    give(files, a_file(tmp_path / "a.dcm", 4))
    files.release()
    assert len(files) == 1  # another job still runs
    files.release()
    assert len(files) == 1  # kept for the next job's first instances (the timer has not fired)
    stale_generation = 2
    files.hold()  # a new job started: a drain planned before it is void
    assert files.drain(stale_generation) == 0 and len(files) == 1
    files.release()
    assert files.drain(3) == 1 and len(files) == 0
    assert list((tmp_path / "recycled").iterdir()) == []


def test_drain_timer_deletes_after_the_delay(tmp_path: Path) -> None:
    files = RecycledFiles(tmp_path / "recycled", keep_seconds=0.05)
    files.hold()
    give(files, a_file(tmp_path / "a.dcm", 4))
    drained = threading.Event()
    real = files.drain

    def drain(generation: int | None = None) -> int:
        n = real(generation)
        drained.set()
        return n

    files.drain = drain  # type: ignore[method-assign]
    files.release()
    assert drained.wait(5)
    assert len(files) == 0 and list((tmp_path / "recycled").iterdir()) == []


def test_a_file_that_cannot_be_renamed_is_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = RecycledFiles(tmp_path / "recycled", keep_seconds=0)
    files.hold()
    src = a_file(tmp_path / "a.dcm", 4)

    def cross_device(a: object, b: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(recycle.os, "rename", cross_device)
    give(files, src)
    assert not src.exists() and len(files) == 0


def test_clear_removes_what_a_killed_process_left(tmp_path: Path) -> None:
    root = tmp_path / "recycled"
    a_file(root / "123-0.free", 4)
    a_file(root / "keep.txt", 4)
    recycle.clear(root)
    recycle.clear(tmp_path / "missing")
    assert [p.name for p in root.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("old_size", [0, 100, 600_000, 5 * 1024 * 1024])
@pytest.mark.parametrize("length", [1, dimse.WRITE_CHUNK + 1, 525_000])
def test_received_into_a_recycled_file_is_exactly_the_data_set(
    tmp_path: Path, old_size: int, length: int
) -> None:
    """The receiver overwrites a recycled file from its start and truncates it to what it wrote: a
    longer old instance leaves nothing behind, a shorter one is grown; two messages in a row."""
    files = RecycledFiles(tmp_path / "recycled", keep_seconds=0)
    files.hold()
    for name in ("old1", "old2"):
        give(files, a_file(tmp_path / f"{name}.dcm", old_size, fill=0xEE))
    kept = {p.name for p in (tmp_path / "recycled").iterdir()}
    context = presentation_context(CT_IMAGE, [EXPLICIT])
    context.context_id = 5
    a, b = socket.socketpair()
    data = bytes((i * 13 + 1) & 0xFF for i in range(length))
    command = wire.encode_command(fastsender.store_command(7, CT_IMAGE, "1.2.3.4", None))

    def write() -> None:
        for _ in range(2):
            pdu.send_message(a, 5, command, io.BytesIO(data), length, 16378, bytearray(pdu.READ_CHUNK))

    (tmp_path / "incoming").mkdir()
    writer = threading.Thread(target=write)
    writer.start()
    stream = dimse.MessageStream(b, {5: context}, tmp_path / "incoming", 16378, recycled=files)
    try:
        for _ in range(2):
            msg = stream.read()
            assert msg.path is not None and msg.path.name in kept  # a recycled file, not a new one
            assert msg.path.read_bytes() == wire.file_preamble_and_meta(CT_IMAGE, "1.2.3.4", EXPLICIT) + data
    finally:
        writer.join(30)
        stream.close()
        a.close()
        b.close()
    assert list((tmp_path / "incoming").iterdir()) == []  # nothing created
    assert files.take() is None


def test_half_received_recycled_file_is_removed(tmp_path: Path) -> None:
    """An association that breaks off mid data set: the recycled file it was overwriting goes."""
    files = RecycledFiles(tmp_path / "recycled", keep_seconds=0)
    files.hold()
    give(files, a_file(tmp_path / "old.dcm", 1000))
    context = presentation_context(CT_IMAGE, [EXPLICIT])
    context.context_id = 5
    a, b = socket.socketpair()
    command = wire.encode_command(fastsender.store_command(7, CT_IMAGE, "1.2.3.4", None))
    message = b"".join(pdu.message_pdus(5, command, io.BytesIO(b"x" * 50_000), 50_000, 16378))
    a.sendall(message[: len(message) // 2])
    a.close()
    stream = dimse.MessageStream(b, {5: context}, tmp_path, 16378, recycled=files)
    with pytest.raises(pdu.PeerClosed):
        stream.read()
    stream.close()
    b.close()
    assert list((tmp_path / "recycled").iterdir()) == []


def test_spool_gives_confirmed_files_back_and_releases_on_close(tmp_path: Path) -> None:
    files = RecycledFiles(tmp_path / "incoming" / recycle.FOLDER, keep_seconds=0)
    spool = Spool(tmp_path / "spool", "job-1", recycled=files)
    for n in range(3):
        assert spool.accept(
            a_file(tmp_path / "incoming" / f"{n}.dcm", 10 + n), CT_IMAGE, f"1.2.{n}", EXPLICIT
        )
    items = [spool.poll() for _ in range(3)]
    Spool.confirmed(items[0])  # type: ignore[arg-type]
    Spool.confirmed(items[1])  # type: ignore[arg-type]
    assert sorted(p.name for p in spool.dir.iterdir()) == ["000003.dcm"]  # the unconfirmed one stays
    assert len(files) == 2
    spool.close()
    spool.close()  # twice: released once
    assert len(files) == 0 and list(files.root.iterdir()) == []
    assert (spool.dir / "000003.dcm").exists()  # kept for a retry


def test_spool_accept_falls_back_to_a_copy_across_file_systems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool", "job-1")
    src = a_file(tmp_path / "elsewhere" / "x.dcm", 77)
    real_rename = os.rename
    calls: list[object] = []

    def rename(a: object, b: object) -> None:
        calls.append(a)
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "cross-device link")
        real_rename(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(spool_module.os, "rename", rename)
    assert spool.accept(src, CT_IMAGE, "1.2.3", EXPLICIT)
    item = spool.poll()
    assert not src.exists() and item is not None and item.size == 77  # type: ignore[union-attr]

    def denied(a: object, b: object) -> None:
        raise PermissionError(errno.EACCES, "denied")

    monkeypatch.setattr(spool_module.os, "rename", denied)
    with pytest.raises(PermissionError):
        spool.accept(a_file(tmp_path / "elsewhere" / "y.dcm", 5), CT_IMAGE, "1.2.4", EXPLICIT)

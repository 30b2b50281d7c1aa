"""Issue 5 item 4: the relay encodes in a pool of worker processes and still sends in arrival order.

Real peers over the network (FakePacs as the PACS, FakeDestination as the C-MOVE destination,
both pynetdicom), a real proxy and a real :class:`~dicomproxy.transcode.TranscodePool` with two
worker processes. The pool class the relay uses is replaced by a subclass that records what is
submitted and, in the ordering test, holds back the first conversion until the last one finished,
so a relay sending in completion order instead of arrival order would fail. No sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from dicomproxy.app import build_context
from dicomproxy.config import Config
from dicomproxy.context import AppContext
from dicomproxy.relay import engine as relay
from dicomproxy.server import Server
from dicomproxy.transcode import Policy, TranscodePool, TranscodeResult
from dicomproxy.transcode.syntaxes import DEFAULT_LOSSLESS
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import free_port
from testkit.fakepacs import FakeDestination, FakePacs
from testkit.fakeview import AllVisible
from testkit.samples import StudySpec, write_study

CLOUD = "CLOUD"
N = 6  # = the look-ahead window of a 2-worker pool (2 × 2 + 2): every instance can be in flight


class SpyPool(TranscodePool):
    """The real pool, recording each submission (SOP file name, accepted syntaxes) and its future.

    ``hold_first``: the first submission's future completes only once the ``N``-th submission's
    conversion is done, so conversions finish out of arrival order.
    """

    created: ClassVar[list[SpyPool]] = []
    hold_first: ClassVar[bool] = False

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(workers)
        self.submitted: list[tuple[str, tuple[str, ...]]] = []
        self.futures: list[Future[TranscodeResult]] = []
        self._held: tuple[Future[TranscodeResult], Future[TranscodeResult]] | None = None
        self._lock = threading.Lock()
        SpyPool.created.append(self)

    def submit_for(
        self, src: Path, dst: Path, accepted: tuple[str, ...], policy: Policy
    ) -> Future[TranscodeResult]:
        real = super().submit_for(src, dst, accepted, policy)
        with self._lock:
            self.submitted.append((Path(src).name, tuple(accepted)))
            self.futures.append(real)
            count = len(self.submitted)
            if self.hold_first and count == 1:
                held: Future[TranscodeResult] = Future()
                self._held = (held, real)
                return held
            if self.hold_first and count == N and self._held is not None:
                held, first = self._held
                real.add_done_callback(lambda _: first.add_done_callback(lambda f: _copy(f, held)))
        return real


def _copy(src: Future[TranscodeResult], dst: Future[TranscodeResult]) -> None:
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[SpyPool]]:
    SpyPool.created = []
    SpyPool.hold_first = False
    monkeypatch.setattr(relay, "TranscodePool", SpyPool)
    yield SpyPool


@dataclass
class Rig:
    pacs: FakePacs
    dest: FakeDestination
    server: Server
    ctx: AppContext
    files: list[Path]
    study_uid: str

    def move(self) -> scu.RetrieveSummary:
        proxy = Remote("DICOMPROXY", "127.0.0.1", self.server.port)
        query = scu.identifier(study_uids=[self.study_uid])
        return scu.move(proxy, "FAKEDEST", query, calling_ae=CLOUD, timeout=60)

    def instances(self) -> list[dict[str, Any]]:
        job = self.ctx.journal.get(self.ctx.journal.recent(1)[0]["id"], all_instances=True)
        assert job is not None
        return list(job.instances)


@pytest.fixture
def make_rig(make_config: Callable[..., Config], tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def start(mode: str, files: list[Path], **proxy: Any) -> Rig:
        proxy_port = free_port()
        dest = FakeDestination().start()
        dest.behaviour.keep_datasets = True
        pacs = FakePacs(files, destinations={"DICOMPROXY": Remote("DICOMPROXY", "127.0.0.1", proxy_port)})
        pacs.start()
        config = make_config(
            proxy={"port": proxy_port, "dimse_timeout": 30.0, **proxy},
            pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port},
            compression={"mode": mode, "workers": 2},
            peers=[
                {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
                {"ae_title": "FAKEDEST", "host": "127.0.0.1", "port": dest.port},
            ],
        )
        ctx = build_context(config, view=AllVisible())
        server = Server(config, ctx)
        server.start()
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        rig = Rig(pacs, dest, server, ctx, files, study_uid)
        rigs.append(rig)
        return rig

    yield start
    for rig in rigs:
        rig.pacs.stop()
        rig.server.stop(drain_timeout=2.0)  # closes the relay, and so its pool
        rig.dest.stop()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = StudySpec("MR", accession="POOL1", series=2, images_per_series=N // 2, seed=11)
    files = write_study(spec, tmp_path_factory.mktemp("pool-study"))
    assert len(files) == N
    return files


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_pool_relay_sends_every_instance_once_in_arrival_order_bit_exact(
    spy: type[SpyPool], make_rig: Callable[..., Rig], study: list[Path]
) -> None:
    spy.hold_first = True  # the first conversion completes last
    rig = make_rig("lossless", study)
    result = rig.move()
    assert (result.status, result.completed, result.failed) == (0x0000, N, 0), result.line()

    # every conversion went through the relay's one pool of 2 workers, none inline
    (pool,) = spy.created
    assert pool.workers == 2
    assert len(pool.submitted) == N
    # the workers chose the target among what the destination accepted (it accepts them all)
    assert all(DEFAULT_LOSSLESS[0] in accepted for _, accepted in pool.submitted)
    assert {f.result().transfer_syntax for f in pool.futures} == {DEFAULT_LOSSLESS[0]}

    # exactly once each, in the order the PACS sent them (= the order they reached the proxy)
    received = [uid for uid, _ in rig.dest.received]
    assert received == rig.pacs.sent
    assert sorted(received) == sorted(map(sop_uid, study))

    # the journal records the syntax actually sent and its bytes
    journal = {i["sop_instance_uid"]: i for i in rig.instances()}
    source = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, study)}
    for (uid, ts), ds in zip(rig.dest.received, rig.dest.datasets, strict=True):
        assert ts == DEFAULT_LOSSLESS[0] == str(ds.file_meta.TransferSyntaxUID)
        assert journal[uid]["transfer_syntax"] == ts
        assert journal[uid]["state"] == "sent" and journal[uid]["bytes"] > 0
        assert np.array_equal(ds.pixel_array, source[uid].pixel_array)  # lossless: bit-exact
    # converted copies are deleted after sending; confirmed spool files too
    spool = rig.ctx.relay.spool_root
    assert not any(spool.rglob("*.dcm"))


def test_failed_conversion_fails_that_instance_only(
    spy: type[SpyPool], make_rig: Callable[..., Rig], study: list[Path], tmp_path: Path
) -> None:
    # Third instance: Pixel Data half as long as Rows × Columns says. Its header reads fine (its
    # target is chosen in the worker), decoding it there fails.
    files = []
    for i, path in enumerate(study):
        ds = dcmread(path)
        if i == 2:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
            bad = str(ds.SOPInstanceUID)
        files.append(tmp_path / f"{i}.dcm")
        ds.save_as(files[-1])
    rig = make_rig("lossless", files)
    result = rig.move()
    assert result.status == 0xB000, result.line()
    assert (result.completed, result.failed) == (N - 1, 1)
    assert result.failed_uids == [bad]

    (pool,) = spy.created
    assert len(pool.submitted) == N  # it went to the pool like the others
    assert [uid for uid, _ in rig.dest.received] == [uid for uid in rig.pacs.sent if uid != bad]
    journal = {i["sop_instance_uid"]: i for i in rig.instances()}
    assert journal[bad]["state"] == "failed"
    assert journal[bad]["status"] == 0xC000
    assert journal[bad]["error"].startswith(f"cannot convert to {DEFAULT_LOSSLESS[0]}")
    job = rig.ctx.journal.recent(1)[0]
    assert (job["outcome"], job["completed"], job["failed"]) == ("partial", N - 1, 1)


def test_prepared_files_survive_retries_and_a_reopened_association(
    spy: type[SpyPool], make_rig: Callable[..., Rig], study: list[Path]
) -> None:
    """A transient 0xA700 and an aborted association: the converted file is sent again, not re-made."""
    rig = make_rig("lossless", study, retries=2, retry_delay=0.01)
    uids = [sop_uid(p) for p in study]
    rig.dest.behaviour.flaky = {uids[1]: [0xA700]}
    rig.dest.behaviour.abort_once_at = 3  # counted over C-STOREs: the retry of uids[1] is one
    result = rig.move()
    assert (result.status, result.completed, result.failed) == (0x0000, N, 0), result.line()
    (pool,) = spy.created
    assert len(pool.submitted) == N  # each converted once
    assert sorted(uid for uid, _ in rig.dest.received) == sorted(uids)
    assert {ts for _, ts in rig.dest.received} == {DEFAULT_LOSSLESS[0]}
    assert rig.dest.attempts.count(uids[1]) == 2
    assert not any(rig.ctx.relay.spool_root.rglob("*.dcm"))


def test_none_mode_never_uses_the_pool(
    spy: type[SpyPool], make_rig: Callable[..., Rig], study: list[Path]
) -> None:
    rig = make_rig("none", study)
    result = rig.move()
    assert (result.status, result.completed) == (0x0000, N), result.line()
    assert spy.created == []  # not even started: no conversion can go through it
    journal = {i["sop_instance_uid"]: i["transfer_syntax"] for i in rig.instances()}
    # passed through as the PACS sent it: it offers Implicit, Explicit and Deflated VR LE, the proxy
    # takes Explicit (server.STORAGE_SYNTAXES) and so does the destination
    for uid, ts in rig.dest.received:
        assert ts == journal[uid] == ExplicitVRLittleEndian
    assert [uid for uid, _ in rig.dest.received] == rig.pacs.sent

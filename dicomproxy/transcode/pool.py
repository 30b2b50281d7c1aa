"""Encoding on all cores: a process pool (codecs hold the GIL only partly; processes scale cleanly)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

from dicomproxy.transcode.codec import TranscodeResult, convert_for, transcode_file
from dicomproxy.transcode.policy import Policy


def _warm_up() -> None:
    """Import the codec stack once per worker so the first instance does not pay for it."""
    import imagecodecs  # noqa: F401
    import pydicom.pixels  # noqa: F401


def _ready() -> None:
    """A task that does nothing: :meth:`TranscodePool.warm` starts the workers with it."""


class TranscodePool:
    """Worker processes running :func:`transcode_file`.

    ``workers``: process count, 0/None = ``os.cpu_count()``. Workers are started with ``forkserver``
    (never ``fork``: the relay process runs pynetdicom threads). Each :meth:`submit` returns its own
    future, so results stay attached to their instance whatever order workers finish in.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        ctx = multiprocessing.get_context("forkserver")
        self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_warm_up)

    def submit(self, src: Path, dst: Path, target: str, policy: Policy) -> Future[TranscodeResult]:
        return self._executor.submit(transcode_file, Path(src), Path(dst), str(target), policy)

    def submit_for(
        self, src: Path, dst: Path, accepted: tuple[str, ...], policy: Policy
    ) -> Future[TranscodeResult]:
        """:func:`convert_for` in a worker: the target is chosen there too (the header is read once,
        off the caller's thread); a result whose path is ``src`` means "send as held"."""
        syntaxes = tuple(str(s) for s in accepted)  # plain str: pydicom UIDs unpickle slowly
        return self._executor.submit(_timed_convert_for, str(src), str(dst), syntaxes, _packed(policy))

    def warm(self) -> None:
        """Start the worker processes now (in the background) instead of on the first instance."""
        for _ in range(self.workers):
            self._executor.submit(_ready)

    def map_ordered(
        self, jobs: Iterable[tuple[Path, Path, str, Policy]], window: int = 0
    ) -> Iterator[TranscodeResult]:
        """Results in submission order, keeping at most ``window`` (default 4 × workers) jobs in flight."""
        limit = window or 4 * self.workers
        pending: list[Future[TranscodeResult]] = []
        for job in jobs:
            pending.append(self.submit(*job))
            if len(pending) >= limit:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)

    def __enter__(self) -> TranscodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@lru_cache(maxsize=32)
def _packed(policy: Policy) -> bytes:
    """``policy`` pickled once: a task carries these bytes, not the Policy (whose UIDs took ~80 µs
    to unpickle in the worker for every instance — issue 29)."""
    return pickle.dumps(policy)


@lru_cache(maxsize=32)
def _unpacked(blob: bytes) -> Policy:
    """The worker's Policy for :func:`_packed`'s bytes, unpickled once per worker."""
    policy = pickle.loads(blob)
    if not isinstance(policy, Policy):  # only _packed's bytes come here; not an assert (python -O)
        raise TypeError(f"a transcode task carried a {type(policy).__name__}, not a Policy")
    return policy


def _timed_convert_for(src: str, dst: str, accepted: tuple[str, ...], policy: bytes) -> TranscodeResult:
    """:func:`convert_for` with the worker's CPU seconds for it (one task at a time per worker)."""
    started = time.process_time()
    result = convert_for(Path(src), Path(dst), accepted, _unpacked(policy))
    return dataclasses.replace(result, seconds=time.process_time() - started)

"""Spool files recycled: a confirmed instance's file is overwritten by the next received one (issue 29).

Per relayed instance the data disk used to see a new file (``mkstemp`` in ``<data>/incoming``), a
rename into the job's spool folder and, once the destination confirmed it, an ``unlink``. On this
project's VM (ext4) creating and removing the inode cost ~60 µs each and writing 512 kB into fresh
pages ~100 µs more — about a fifth of the relay's CPU per instance (docs/performance.md, issue 29).
:class:`RecycledFiles` keeps a few confirmed files instead (renamed into ``<data>/incoming/recycled``,
named by process and sequence); the store receiver takes one, overwrites it from the start and
truncates it to what it wrote (:meth:`~dicomproxy.transport.raw.dimse.MessageStream.read`).

The receiver usually runs ahead of the onward sender, so the files confirmed at the end of one job
are what the next job's first instances overwrite. Patient data does not linger: the files are kept
while relay jobs run (:meth:`hold` / :meth:`release`, one per job spool) and :data:`KEEP_SECONDS`
after the last one ended, then deleted, as they would have been one by one. At most
:data:`CAPACITY` files and :data:`MAX_BYTES` are kept (a whole-slide image's files are deleted as
before: their creation is nothing beside their size); on another file system (a rename fails) a
file is deleted as before.
``serve`` deletes what a killed process left (:func:`clear`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from pathlib import Path

#: Confirmed files kept at most (per process) …
CAPACITY = 256
#: … and bytes (~120 CT slices): the disk's free space stays the spool's (``[proxy]
#: spool_headroom_mb``). The bytes are the bound that matters; the archive runs up to ~75 CT slices
#: ahead of the destination, and a job's last files are the next job's first (issue 29: with 32
#: files, a quarter of a C-MOVE's instances still created and later deleted a file).
MAX_BYTES = 64 * 1024 * 1024
#: Seconds the files are kept once no job runs (the next job's first instances reuse them).
KEEP_SECONDS = 30.0
#: Folder of the recycled files, under the incoming folder.
FOLDER = "recycled"
SUFFIX = ".free"


class RecycledFiles:
    """A bounded, thread-safe set of files to overwrite, alive while at least one job holds it."""

    def __init__(
        self,
        root: Path,
        capacity: int = CAPACITY,
        keep_seconds: float = KEEP_SECONDS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.root = root
        self.capacity = capacity
        self.keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        self._free: list[tuple[Path, int]] = []
        self._bytes = 0  # of the kept files
        self._users = 0
        self._generation = 0  # jobs started so far: a drain planned before the last one is void
        self._lock = threading.Lock()
        pid = os.getpid()  # once: a system call per name was ~1 µs of every confirmed instance
        self._names = (f"{pid}-{n}{SUFFIX}" for n in itertools.count())
        self._made = False

    def hold(self) -> None:
        """A job starts: keep what it confirms."""
        with self._lock:
            self._users += 1
            self._generation += 1

    def release(self) -> None:
        """A job ended; when it was the last, every kept file is deleted :attr:`keep_seconds` later
        unless another job started in between."""
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users:
                return
            generation = self._generation
        if self.keep_seconds <= 0:
            self.drain(generation)
            return
        timer = threading.Timer(self.keep_seconds, self.drain, (generation,))
        timer.daemon = True
        timer.start()

    def drain(self, generation: int | None = None) -> int:
        """Delete every kept file — with ``generation``, only if no job ran since it was taken and
        none runs now; how many were deleted."""
        with self._lock:
            if generation is not None and (self._users or generation != self._generation):
                return 0
            free, self._free, self._bytes = self._free, [], 0
        for path, _ in free:
            path.unlink(missing_ok=True)
        return len(free)

    def give(self, path: Path, size: int) -> None:
        """``path`` (a confirmed instance of ``size`` bytes) is not needed any more: keep it, or
        delete it."""
        with self._lock:
            if self._users and len(self._free) < self.capacity and self._bytes + size <= self.max_bytes:
                kept = self._keep(path)
                if kept is not None:
                    self._free.append((kept, size))
                    self._bytes += size
                    return
        path.unlink(missing_ok=True)

    def _keep(self, path: Path) -> Path | None:
        try:
            if not self._made:
                self.root.mkdir(parents=True, exist_ok=True)
                self._made = True
            dst = self.root / next(self._names)
            os.rename(path, dst)
        except OSError:  # another file system, a vanished file: deleted instead
            return None
        return dst

    def take(self) -> Path | None:
        """A kept file to overwrite (the caller owns it now), or None."""
        with self._lock:
            if not self._free:
                return None
            path, size = self._free.pop()
            self._bytes -= size
            return path

    def __len__(self) -> int:
        with self._lock:
            return len(self._free)


def clear(root: Path) -> None:
    """Delete the recycled files a previous process left in ``root`` (at start-up, before serving)."""
    if not root.is_dir():
        return
    for stale in root.glob(f"*{SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink()


__all__ = ["CAPACITY", "FOLDER", "RecycledFiles", "clear"]

"""Per-job spool: every instance received from the PACS is a file on disk until the destination confirms it.

pynetdicom writes each incoming C-STORE data set straight to a file
(``_config.STORE_RECV_CHUNKED_DATASET``, set in :func:`dicomproxy.server.configure_pynetdicom`);
the store handler moves that file into ``<data_dir>/spool/<job>/`` and queues a small
:class:`SpooledInstance` record (a path and three UIDs). Memory therefore holds references
only, never data sets: a slow destination makes the spool grow on disk, not in RAM. A file is
deleted only after the destination confirmed it (:meth:`Spool.confirmed`); unconfirmed files
stay for ``jobs retry`` (issue 6). With a :class:`~dicomproxy.transport.recycle.RecycledFiles`
(the relay's), a confirmed file is handed to it instead of being deleted: the raw store receiver
overwrites it with the next instance rather than creating a file, as long as a job runs.

The PACS is not held back while the data disk has ``[proxy] spool_headroom_mb`` free. Below
that (:class:`DiskRoom`), each received instance's C-STORE response waits
(:meth:`Spool.wait_for_room`) until the destination has taken what this job holds or the disk
has room again — at most :data:`HOLD_MAX` seconds per instance, under the 10 s DIMSE timeout
many archives use. The archive sends its next sub-operation only after the response (PS3.7
9.1.1), so the spool stops growing instead of meeting a full disk (0xA700, the association
lost) halfway through a study.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dicomproxy.transport.recycle import RecycledFiles

LOG = logging.getLogger("dicomproxy.spool")

#: Longest wait of one C-STORE response for room on the data disk (seconds); below the DIMSE
#: timeout archives commonly use (Orthanc's ``DicomScuTimeout`` defaults to 10 s).
HOLD_MAX = 8.0
#: How often a waiting response looks at the disk again (seconds).
HOLD_POLL = 0.2


class DiskRoom:
    """Whether the file system holding the spool is below its headroom (``[proxy] spool_headroom_mb``)."""

    def __init__(self, path: Path, headroom_bytes: int) -> None:
        self.path = path
        self.headroom = headroom_bytes

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def low(self) -> bool:
        return self.headroom > 0 and self.free() < self.headroom


@dataclass(frozen=True)
class SpooledInstance:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int
    #: The spool that counts it as unsettled until :meth:`Spool.settled` (None: found on disk by a retry).
    owner: Spool | None = field(default=None, compare=False, repr=False)


class _End:
    """Queue sentinel: the producer finished (``error`` set when it failed)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Spool:
    """One job's folder and the queue of received instances between the PACS side and the destination side."""

    def __init__(
        self, root: Path, job_id: str, room: DiskRoom | None = None, recycled: RecycledFiles | None = None
    ) -> None:
        self.dir = root / job_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[SpooledInstance | _End] = queue.Queue()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self.bytes_in = 0
        self.received = 0
        #: Accepted and not yet sent (confirmed or failed): what waiting can free.
        self.unsettled = 0
        #: C-STORE responses that waited for room, and how long in all (seconds).
        self.holds = 0
        self.held_seconds = 0.0
        self.room = room
        self._closed = False
        #: Where confirmed files go instead of being deleted (held from here to :meth:`close`).
        self.recycled = recycled
        if recycled is not None:
            recycled.hold()

    def accept(self, src: Path, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bool:
        """Take ownership of a received file (moved, not copied). False once the job stopped listening."""
        with self._lock:
            if self._closed:
                return False
            dst = self.dir / f"{next(self._seq):06d}.dcm"
            try:
                os.rename(src, dst)  # same file system (<data>/incoming): no shutil.move checks
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.move(str(src), dst)  # pynetdicom's temporary folder elsewhere
            size = dst.stat().st_size
            self.bytes_in += size
            self.received += 1
            self.unsettled += 1
        self._queue.put(SpooledInstance(dst, sop_class_uid, sop_instance_uid, transfer_syntax, size, self))
        return True

    def wait_for_room(self) -> float:
        """Hold the archive back while the data disk is below its headroom and this job still
        holds instances the destination has not taken (at most :data:`HOLD_MAX` s); the seconds waited."""
        room = self.room
        if room is None or not room.low():
            return 0.0
        start = time.monotonic()
        deadline = start + HOLD_MAX
        if self.recycled is not None:
            self.recycled.drain()  # kept files give their room back; none kept while this job holds
        with self._settled:
            if self.holds == 0:
                LOG.warning(
                    "spool %s: %d MiB free on the data disk, below spool_headroom_mb (%d MiB): each "
                    "received instance now waits for the destination (at most %.0f s)",
                    self.dir.name,
                    room.free() // 2**20,
                    room.headroom // 2**20,
                    HOLD_MAX,
                )
            self.holds += 1
            while not self._closed and self.unsettled > 0 and room.low():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._settled.wait(min(left, HOLD_POLL))
            waited = time.monotonic() - start
            self.held_seconds += waited
        return waited

    @staticmethod
    def settled(item: SpooledInstance) -> None:
        """``item`` was sent (confirmed or failed): a response waiting for room may go on."""
        owner = item.owner
        if owner is None:
            return
        with owner._settled:
            owner.unsettled = max(0, owner.unsettled - 1)
            owner._settled.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        """The producer is done (or failed with ``error``)."""
        self._queue.put(_End(error))

    def get(self, timeout: float) -> SpooledInstance | _End | None:
        """Next instance, the end marker, or None after ``timeout`` seconds without news."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def poll(self) -> SpooledInstance | _End | None:
        """The next instance or end marker if one is waiting, else None at once (look-ahead)."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    @staticmethod
    def confirmed(item: SpooledInstance) -> None:
        """The destination accepted ``item``: its file may go (to be overwritten by a later instance,
        when the spool recycles and its job never found the data disk below its headroom)."""
        owner = item.owner
        if owner is not None and owner.recycled is not None and not owner.holds:
            owner.recycled.give(item.path, item.size)
        else:  # (a job that found the data disk low keeps nothing: the room is the spool's)
            item.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop accepting; remove the folder if every file was confirmed."""
        with self._settled:
            was_closed, self._closed = self._closed, True
            self._settled.notify_all()
        if self.recycled is not None and not was_closed:
            self.recycled.release()
        with contextlib.suppress(OSError):  # unconfirmed files remain for a retry
            self.dir.rmdir()


End = _End

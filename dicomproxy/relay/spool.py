"""Per-job spool: every instance received from the PACS is a file on disk until the destination confirms it.

pynetdicom writes each incoming C-STORE data set straight to a file
(``_config.STORE_RECV_CHUNKED_DATASET``, set in :func:`dicomproxy.server.configure_pynetdicom`);
the store handler moves that file into ``<data_dir>/spool/<job>/`` and queues a small
:class:`SpooledInstance` record (a path and three UIDs). Memory therefore holds references
only, never data sets: a slow destination makes the spool grow on disk, not in RAM, and the
PACS is never held back. A file is deleted only after the destination confirmed it
(:meth:`Spool.confirmed`); unconfirmed files stay for ``jobs retry`` (issue 6).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SpooledInstance:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int


class _End:
    """Queue sentinel: the producer finished (``error`` set when it failed)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Spool:
    """One job's folder and the queue of received instances between the PACS side and the destination side."""

    def __init__(self, root: Path, job_id: str) -> None:
        self.dir = root / job_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[SpooledInstance | _End] = queue.Queue()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self.bytes_in = 0
        self.received = 0
        self._closed = False

    def accept(self, src: Path, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bool:
        """Take ownership of a received file (moved, not copied). False once the job stopped listening."""
        with self._lock:
            if self._closed:
                return False
            dst = self.dir / f"{next(self._seq):06d}.dcm"
            shutil.move(str(src), dst)
            size = dst.stat().st_size
            self.bytes_in += size
            self.received += 1
        self._queue.put(SpooledInstance(dst, sop_class_uid, sop_instance_uid, transfer_syntax, size))
        return True

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
        """The destination accepted ``item``: its file may go."""
        item.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop accepting; remove the folder if every file was confirmed."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):  # unconfirmed files remain for a retry
            self.dir.rmdir()


End = _End

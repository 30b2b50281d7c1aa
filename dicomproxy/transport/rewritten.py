"""A DICOM file sent with the first part of its data set replaced, the rest streamed from disk.

:class:`Rewritten` is what :mod:`dicomproxy.identity` makes of a spooled file whose header it
changed (issue 26): the file's meta information and everything from byte ``tail`` on (the Pixel
Data element and what follows) stay on disk; ``head`` holds the new encoding of the data set in
between. The raw C-STORE senders stream ``head`` and then the file's tail (:func:`open_data`), so a
large instance is neither copied nor read into memory; pynetdicom's own sender gets a written file
(:meth:`Rewritten.write`).

:class:`Loaded` is a file read whole into the caller's buffer, once (issue 29): the coercion scan,
the file meta and the raw sender's PDVs all take their bytes from there. A CT slice used to be
opened three times on the way out (the scan's 64 kB, the file meta's 4 kB, then the data set).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_CHUNK = 8 * 1024 * 1024

#: Largest file :func:`load` reads into memory (a CT or MR slice; anything larger is streamed).
LOAD_MAX = 1024 * 1024


@dataclass(frozen=True, eq=False)
class Loaded:
    """The whole of the file at ``path``, read into memory: ``data`` is a view of the reader's
    buffer, valid until that reads its next file (one send)."""

    path: Path
    data: memoryview


def load(path: Path, buf: bytearray) -> Loaded | None:
    """``path`` read whole into ``buf`` (open, fstat, one read, close), or None when it is larger
    than ``buf`` or cannot be read — the caller then goes the streaming way, which reports
    an unreadable file as before."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > len(buf) or size == 0:
            return None
        view = memoryview(buf)[:size]
        got = 0
        while got < size:
            n = os.readv(fd, [view[got:]])
            if n == 0:  # shorter than its size: changed under us; stream it instead
                return None
            got += n
        return Loaded(path, view)
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Rewritten:
    """``path`` with its bytes ``[start, tail)`` (the data set up to its unchanged part) replaced
    by ``head``; ``data``: the file's bytes when it was :func:`load`-ed (the tail is sent from
    there, not read again)."""

    path: Path
    start: int  # where the data set begins (after the file meta information, PS3.10 7.1)
    head: bytes
    tail: int
    data: memoryview | None = field(default=None, compare=False, repr=False)

    def stat_size(self) -> int:
        """The size of the file as it is sent (meta, new head, tail)."""
        size = len(self.data) if self.data is not None else os.stat(self.path).st_size
        return self.start + len(self.head) + size - self.tail

    def write(self, dst: Path) -> Path:
        """The whole file written to ``dst`` (the tail copied in the kernel, ``os.copy_file_range``)."""
        with self.path.open("rb") as fin, dst.open("wb") as out:
            out.write(fin.read(self.start))
            out.write(self.head)
        self.append_tail(dst)
        return dst

    def append_tail(self, dst: Path) -> None:
        """The bytes of ``path`` from ``tail`` on, appended to ``dst`` unread."""
        with self.path.open("rb") as fin, dst.open("ab") as out:
            left = os.fstat(fin.fileno()).st_size - self.tail
            offset = self.tail
            try:
                while left > 0:
                    n = os.copy_file_range(fin.fileno(), out.fileno(), min(left, _CHUNK), offset)
                    if n == 0:
                        raise OSError(f"{self.path} ended before its size")
                    offset, left = offset + n, left - n
            except OSError:  # a file system that cannot: copy in Python
                fin.seek(offset)
                shutil.copyfileobj(fin, out, _CHUNK)


class _Chain(io.RawIOBase):
    """``head`` then ``fh`` (positioned at the tail): a readable stream for the senders."""

    def __init__(self, head: bytes, fh: io.RawIOBase) -> None:
        self._head = memoryview(head)
        self._fh = fh

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._fh.readinto(buffer) or 0


@contextlib.contextmanager
def open_data(source: Path | Rewritten, offset: int) -> Iterator[tuple[io.RawIOBase, int]]:
    """The encoded data set of ``source`` as (a stream, its length): a plain file from ``offset``
    (where its data set begins), or a rewritten one's head and then its tail."""
    path = source if isinstance(source, Path) else source.path
    with path.open("rb", buffering=0) as fh:
        size = fh.seek(0, 2)
        if isinstance(source, Path):
            fh.seek(offset)
            yield fh, size - offset
        else:
            fh.seek(source.tail)
            yield _Chain(source.head, fh), len(source.head) + size - source.tail

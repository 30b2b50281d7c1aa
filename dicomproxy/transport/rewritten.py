"""A DICOM file sent with the first part of its data set replaced, the rest streamed from disk.

:class:`Rewritten` is what :mod:`dicomproxy.identity` makes of a spooled file whose header it
changed (issue 26): the file's meta information and everything from byte ``tail`` on (the Pixel
Data element and what follows) stay on disk; ``head`` holds the new encoding of the data set in
between. The raw C-STORE senders stream ``head`` and then the file's tail (:func:`open_data`), so a
large instance is neither copied nor read into memory; pynetdicom's own sender gets a written file
(:meth:`Rewritten.write`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Rewritten:
    """``path`` with its bytes ``[start, tail)`` (the data set up to its unchanged part) replaced
    by ``head``."""

    path: Path
    start: int  # where the data set begins (after the file meta information, PS3.10 7.1)
    head: bytes
    tail: int

    def stat_size(self) -> int:
        """The size of the file as it is sent (meta, new head, tail)."""
        return self.start + len(self.head) + os.stat(self.path).st_size - self.tail

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

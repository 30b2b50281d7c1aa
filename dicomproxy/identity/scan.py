"""Where each top-level element of a file's header lies, without decoding any of them.

The coercion of every outgoing instance (:class:`~dicomproxy.identity.files.Coercer`) needs, for
all but the first instance of a study, only three things of a header: the Study Instance UID, the
bytes of the elements it may change (to find the patch already made for the same bytes) and where
every top-level element begins and ends (to splice the patch in). pydicom's element reader gives
them at ~1 ms per CT header — as much as the rest of the relay's work per instance (issue 26's
target: coercion within 10 % of ``none`` without it). :func:`scan` walks the element headers of
PS3.5 7.1 with ``struct`` instead (tag, VR, length; sequences of undefined length followed item by
item, PS3.5 7.5) and decodes nothing: ~0.1 ms.

It is deliberately narrow. Anything it does not know for sure — no preamble, big endian or
deflated transfer syntax, a group length (PS3.5 7.2), elements out of order, a header longer than
:data:`MAX_HEADER` — gives None, and the caller reads the file with pydicom as before. The first
instance of every study, whose patch is made from a pydicom data set, is always read by pydicom;
the tests compare :func:`scan` with pydicom's element positions on generated headers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Bytes read at first; a longer header is read again, up to :data:`MAX_HEADER`.
FIRST_READ = 64 * 1024
MAX_HEADER = 4 * 1024 * 1024

PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
STUDY_INSTANCE_UID = 0x0020000D
TRANSFER_SYNTAX_UID = 0x00020010
#: Explicit VRs with a 12-byte element header (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
IMPLICIT_LE = "1.2.840.10008.1.2"
#: Transfer syntaxes whose data set is little endian and not deflated, with explicit VR.
_NOT_EXPLICIT_LE = frozenset({IMPLICIT_LE, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})

ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


class _Unsure(Exception):
    """The header is not one :func:`scan` handles: read it with pydicom."""


@dataclass(frozen=True)
class Scanned:
    """A header's bytes up to Pixel Data and where its top-level elements lie (as
    :class:`~dicomproxy.identity.files.Header` has them)."""

    head: bytes
    bounds: dict[int, tuple[int, int]]
    tail: int
    implicit: bool
    study: str


def scan(path: Path, data: memoryview | None = None) -> Scanned | None:
    """The element positions of ``path``'s data set up to Pixel Data, or None (see the module
    docstring); from ``data`` (the whole file, already read) when given."""
    if data is not None:
        return _scan_growing(lambda size: bytes(data[:size]))  # the first bytes, as a read gives them
    with path.open("rb", buffering=0) as fh:

        def read(size: int) -> bytes:
            if size > FIRST_READ:  # a longer header: read again from the start
                fh.seek(0)
            return fh.read(size)

        return _scan_growing(read)


def _scan_growing(read: Callable[[int], bytes]) -> Scanned | None:
    """:func:`_scan` of the first ``FIRST_READ`` bytes, four times more while the header goes on
    (at most ``MAX_HEADER``)."""
    size = FIRST_READ
    while True:
        buf = read(size)
        try:
            return _scan(buf, complete=len(buf) < size)
        except _Truncated:
            if size >= MAX_HEADER or len(buf) < size:
                return None
            size *= 4
        except (_Unsure, struct.error, UnicodeDecodeError):
            return None


class _Truncated(Exception):
    """The bytes read end inside the header."""


def _scan(buf: bytes, complete: bool) -> Scanned:
    if buf[128:132] != b"DICM":
        raise _Unsure("no preamble")
    pos, syntax = _meta(buf, 132)
    if syntax in _NOT_EXPLICIT_LE and syntax != IMPLICIT_LE:
        raise _Unsure(syntax)
    implicit = syntax == IMPLICIT_LE
    bounds: dict[int, tuple[int, int]] = {}
    last = -1
    study = ""
    end = len(buf)
    while True:
        if pos == end and complete:
            break  # a data set without pixel data
        if pos + 8 > end:
            raise _Truncated
        group, elem = _TAG.unpack_from(buf, pos)
        tag = group << 16 | elem
        if tag in PIXEL_TAGS:
            break
        if tag <= last or elem == 0 or group == 0xFFFE:
            raise _Unsure("order, group length or a stray item")
        start = pos
        pos, length = _element_header(buf, pos, implicit)
        if length == UNDEFINED:
            pos = _skip_undefined(buf, pos, implicit)
        else:
            pos += length
            if pos > end:
                raise _Truncated
        if tag == STUDY_INSTANCE_UID:
            study = buf[pos - length : pos].decode("ascii").rstrip("\x00 ")
        bounds[tag] = (start, pos)
        last = tag
    if not bounds:
        raise _Unsure("empty data set")
    return Scanned(buf[:pos], bounds, pos, implicit, study)


def _meta(buf: bytes, pos: int) -> tuple[int, str]:
    """Skip the file meta information (group 2, always explicit VR little endian, PS3.10 7.1);
    where the data set begins and its transfer syntax."""
    syntax = ""
    while True:
        if pos + 8 > len(buf):
            raise _Truncated
        group, elem = _TAG.unpack_from(buf, pos)
        if group != 0x0002:
            return pos, syntax
        tag = group << 16 | elem
        pos, length = _element_header(buf, pos, False)
        if length == UNDEFINED:
            raise _Unsure("undefined length in the file meta")
        if tag == TRANSFER_SYNTAX_UID:
            syntax = buf[pos : pos + length].decode("ascii").rstrip("\x00 ")
        pos += length


def _element_header(buf: bytes, pos: int, implicit: bool) -> tuple[int, int]:
    """(where the value begins, its length) of the element at ``pos`` (PS3.5 7.1.1–7.1.3)."""
    if implicit:
        return pos + 8, _U32.unpack_from(buf, pos + 4)[0]
    vr = buf[pos + 4 : pos + 6]
    if vr in LONG_VRS:
        if pos + 12 > len(buf):
            raise _Truncated
        return pos + 12, _U32.unpack_from(buf, pos + 8)[0]
    if not vr.isalpha() or not vr.isupper():
        raise _Unsure("not an explicit VR")
    return pos + 8, _U16.unpack_from(buf, pos + 6)[0]


def _skip_undefined(buf: bytes, pos: int, implicit: bool) -> int:
    """Past a sequence of undefined length starting at ``pos`` (its first item): items of defined
    or undefined length, then the Sequence Delimitation Item (PS3.5 7.5.1–7.5.2)."""
    end = len(buf)
    while True:
        if pos + 8 > end:
            raise _Truncated
        group, elem = _TAG.unpack_from(buf, pos)
        tag = group << 16 | elem
        length = _U32.unpack_from(buf, pos + 4)[0]
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise _Unsure("not an item")
        if length != UNDEFINED:
            pos += length
            continue
        while True:  # the item's elements up to its Item Delimitation Item
            if pos + 8 > end:
                raise _Truncated
            group, elem = _TAG.unpack_from(buf, pos)
            if group << 16 | elem == ITEM_END:
                pos += 8
                break
            pos, length = _element_header(buf, pos, implicit)
            pos = _skip_undefined(buf, pos, implicit) if length == UNDEFINED else pos + length

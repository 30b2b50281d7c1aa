"""The view's identity written into a DICOM file's header; the pixel data left where it is.

:func:`coerce` reads the data set up to Pixel Data with pydicom (its element reader, ``dcmread`` for
what that cannot read: :meth:`Header.read`), makes the changes of :mod:`dicomproxy.identity.coerce`
and encodes only the changed elements, in the file's own transfer syntax (explicit or implicit VR,
its byte order); every other element keeps its bytes.
The result is a :class:`~dicomproxy.transport.rewritten.Rewritten`: the new header in memory, the
rest of the file — the Pixel Data element and what follows — streamed from disk unread by the
sender (no pixel is decoded, nothing large passes through Python). A data set that cannot be
patched element by element (deflated, PS3.5 A.5; with group lengths; a character-set switch that
re-encodes texts) is written whole to a spare file instead.

pydicom was chosen for the header because it already reads and writes every data set the relay
handles (character sets, sequences, both VR encodings); only the splice is ours.

:class:`Coercer` is one job's coercion toward one destination: the identities of its studies by
Study Instance UID. It is called on the thread that sends (the pump or a lane), per file.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_data_element
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom.dsutils import split_dataset

from dicomproxy.identity.coerce import apply_changes, declared_of, plan_changes
from dicomproxy.identity.model import Identity
from dicomproxy.identity.scan import Scanned, scan
from dicomproxy.transport.rewritten import Loaded, Rewritten

LOG = logging.getLogger("dicomproxy.identity")

#: Patches a Coercer remembers (distinct headers of one job: usually one per study).
MAX_PATCHES = 256

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian (PS3.5 A.5)


class Result(Enum):
    """What :func:`coerce` did."""

    COERCED = "coerced"  # the copy was written
    UNCHANGED = "unchanged"  # the file carries the view's identity already: send it as it is
    UNKNOWN = "unknown"  # the view names no patient for the file's study: send it as it is


#: Tag → the element's new encoding (None: removed): what coercion does to one header.
Patch = dict[int, bytes | None]

ORIGINAL_ATTRIBUTES = 0x04000561  # (0400,0561)
SPECIFIC_CHARSET = 0x00080005  # (0008,0005)
#: Every element a coercion may touch: a header whose bytes of these are those of a header
#: already coerced for the same study gets the same patch (:class:`Coercer`'s cache).
COERCED_TAGS = (
    SPECIFIC_CHARSET,
    *(int(Tag(k)) for k in ("AccessionNumber", "IssuerOfAccessionNumberSequence", "InstitutionName")),
    *(
        int(Tag(k))
        for k in ("PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence")
    ),
    *(int(Tag(k)) for k in ("PatientBirthDate", "PatientSex")),
    ORIGINAL_ATTRIBUTES,
)
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
#: What coercion reads of a header.
READ_TAGS = frozenset({*COERCED_TAGS, int(Tag("StudyInstanceUID"))})
#: Explicit VRs whose element header is 12 bytes (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


@dataclass
class Header:
    """A file's data set up to Pixel Data: parsed (``ds``), as bytes (``head``), where each
    top-level element lies in them (``bounds``) and where the rest of the file starts (``tail``)."""

    ds: Dataset
    head: bytes
    bounds: dict[int, tuple[int, int]]
    tail: int

    @classmethod
    def read(cls, path: Path) -> Header:
        """The header, from pydicom's element reader (no Dataset of every element is built: the
        per-instance cost on the send path); ``ds`` holds only what coercion reads. A file it cannot
        read that way (deflated, or whose data set is not in its declared VR encoding) is read by
        ``dcmread`` instead."""
        meta, start = split_dataset(path)
        syntax = UID(str(meta.get("TransferSyntaxUID", "")))
        if syntax != DEFLATED and syntax.is_transfer_syntax:
            try:
                return cls._elements(path, meta, start, syntax)
            except Exception:
                pass
        with path.open("rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True)
            tail = fh.tell()
            bounds = element_bounds(ds, tail)  # before any element is decoded: raw positions
            fh.seek(0)
            return cls(ds, fh.read(tail), bounds, tail)

    @classmethod
    def _elements(cls, path: Path, meta: Dataset, start: int, syntax: UID) -> Header:
        implicit, little = bool(syntax.is_implicit_VR), bool(syntax.is_little_endian)
        with path.open("rb") as fh:
            fh.seek(start)
            elements = list(data_element_generator(fh, implicit, little, stop_when=_at_pixel_data))
            tail = fh.tell()
            fh.seek(0)
            head = fh.read(tail)
        ds = Dataset({e.tag: e for e in elements if int(e.tag) in READ_TAGS})
        ds.file_meta = meta  # type: ignore[assignment]
        ds.set_original_encoding(implicit, little, None)
        starts = sorted((int(e.tag), _start(e, implicit)) for e in elements)
        if starts and (starts[0][1] != start or any(b[1] <= a[1] for a, b in itertools.pairwise(starts))):
            raise ValueError("elements out of order")
        ends = [s for _, s in starts[1:]] + [tail]
        return cls(ds, head, {t: (s, e) for (t, s), e in zip(starts, ends, strict=True)}, tail)

    @property
    def study(self) -> str:
        return str(self.ds.get("StudyInstanceUID", "") or "")

    @property
    def spliceable(self) -> bool:
        """Patchable element by element: positions known, not deflated (PS3.5 A.5), no group length
        the patch would make wrong (PS3.5 7.2, retired but still written)."""
        syntax = str(self.ds.file_meta.get("TransferSyntaxUID", ""))
        return bool(self.bounds) and syntax != DEFLATED and not any(t & 0xFFFF == 0 for t in self.bounds)

    def key(self) -> tuple[object, ...]:
        implicit, little = self.ds.original_encoding
        return patch_key(self.study, bool(implicit), bool(little), self.head, self.bounds)


def patch_key(
    study: str, implicit: bool, little: bool, head: bytes, bounds: Mapping[int, tuple[int, int]]
) -> tuple[object, ...]:
    """What a patch depends on: the study, the encoding, the bytes of :data:`COERCED_TAGS`."""
    raw = tuple(head[slice(*bounds[t])] if t in bounds else None for t in COERCED_TAGS)
    return (study, implicit, little, raw)


@dataclass(frozen=True)
class Coerced:
    """What :func:`coerce` did to one file, and what to send: the file itself, a file written whole
    (``spare``), or the file with its header rewritten (:class:`Rewritten`: the tail stays on disk)."""

    result: Result
    study: str
    #: The patch made (None: the header was written whole or nothing was coerced).
    patch: Patch | None
    send: Path | Rewritten


def coerce(
    src: Path,
    spare: Path,
    identities: Mapping[str, Identity],
    *,
    system: str,
    sources: Mapping[str, str] | None = None,
    header: Header | None = None,
) -> Coerced:
    """``src`` with the identity ``identities`` gives its study (by Study Instance UID;
    ``sources``: Source of Previous Values by study). ``spare`` is written only when the header
    cannot be patched element by element (see the module docstring)."""
    h = header or Header.read(src)
    identity = identities.get(h.study)
    if identity is None:
        return Coerced(Result.UNKNOWN, h.study, None, src)
    changes = plan_changes(h.ds, identity)
    if not changes:
        return Coerced(Result.UNCHANGED, h.study, {}, src)
    source = (sources or {}).get(h.study, "")
    if not h.spliceable:
        ds = dcmread(src)  # read whole and written again
        apply_changes(ds, plan_changes(ds, identity), system=system, source=source)
        ds.save_as(spare, enforce_file_format=True)
        return Coerced(Result.COERCED, h.study, None, spare)
    declared = declared_of(h.ds)
    before = set(h.ds.keys())
    apply_changes(h.ds, changes, system=system, source=source)
    charset = declared_of(h.ds)
    if charset != declared and declared not in ([], ["ISO_IR 6"]):
        # texts of the old set are re-encoded: the whole header is written again, the tail copied
        with src.open("rb") as fh:
            full = dcmread(fh, stop_before_pixels=True)
        apply_changes(full, plan_changes(full, identity), system=system, source=source)
        with spare.open("wb") as out:
            full.save_as(out, enforce_file_format=True)
        bare = Rewritten(src, 0, b"", h.tail)  # nothing but the tail, appended
        bare.append_tail(spare)
        return Coerced(Result.COERCED, h.study, None, spare)
    touched = {int(Tag(c.keyword)) for c in changes} | {ORIGINAL_ATTRIBUTES, SPECIFIC_CHARSET}
    patch = encode_patch(h.ds, {t for t in touched if t in h.ds or t in before}, charset)
    return Coerced(Result.COERCED, h.study, patch, patched(src, h, patch))


def _at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    """Pixel Data, Float or Double Float Pixel Data (PS3.3 C.7.6.3): where the header ends."""
    return tag in PIXEL_TAGS


def _start(elem: Any, implicit: bool) -> int:
    """Where an element read by pydicom begins: its value's position less its header (PS3.5 7.1)."""
    tell = getattr(elem, "value_tell", None) or getattr(elem, "file_tell", None)
    if tell is None:
        raise ValueError(f"no position for {elem.tag}")
    return int(tell) - (12 if not implicit and elem.VR in LONG_VRS else 8)


def element_bounds(ds: Dataset, end: int) -> dict[int, tuple[int, int]]:
    """Tag → (first byte, byte after) of each top-level element in the file, from the raw
    elements' value positions (an element ends where the next begins; the last at ``end``)."""
    implicit = bool(ds.original_encoding[0])
    starts: list[tuple[int, int]] = []
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset decodes its elements)
        elem = ds.get_item(tag)
        # a raw element's value position; pydicom decodes (0008,0005) while reading (file_tell)
        tell = getattr(elem, "value_tell", None) or getattr(elem, "file_tell", None)
        if tell is None:
            return {}
        vr = None if implicit else elem.VR
        starts.append((int(tag), int(tell) - (12 if vr in LONG_VRS else 8)))
    starts.sort(key=lambda t: t[1])
    ends = [s for _, s in starts[1:]] + [end]
    return {tag: (start, stop) for (tag, start), stop in zip(starts, ends, strict=True)}


def encode_patch(ds: Dataset, touched: set[int], charset: list[str]) -> Patch:
    """The ``touched`` elements of ``ds`` encoded in the file's own VR encoding and byte order."""
    encodings = convert_encodings(charset or ["ISO_IR 6"])
    implicit, little = ds.original_encoding
    patch: Patch = {}
    for tag in touched:
        if tag not in ds:
            patch[tag] = None
            continue
        fp = DicomBytesIO()
        fp.is_little_endian = bool(little)
        fp.is_implicit_VR = bool(implicit)
        write_data_element(fp, ds[tag], encodings)
        patch[tag] = bytes(fp.getvalue())
    return patch


def patched(src: Path, header: Header | Scanned, patch: Patch, data: memoryview | None = None) -> Rewritten:
    """``src`` with ``patch`` applied to its header (every other element as it was): the new bytes
    of the data set up to Pixel Data, the rest to be read from ``src`` (or sent from ``data``,
    ``src`` loaded)."""
    head, bounds = header.head, header.bounds
    first = min((b[0] for b in bounds.values()), default=len(head))  # after preamble and file meta
    parts = []
    for tag in sorted(bounds.keys() | patch.keys()):
        if tag in patch:
            new = patch[tag]
            if new is not None:
                parts.append(new)
        else:
            parts.append(head[slice(*bounds[tag])])
    return Rewritten(src, first, b"".join(parts), header.tail, data)


class Coercer:
    """One job's coercion toward one destination (``label`` names the job in the log).

    ``identities``: Study Instance UID → the view's identity; ``sources``: Study Instance UID →
    the archive it came from (Source of Previous Values). A study the view cannot name is sent
    unchanged, with one WARNING per study (its UID only: no patient data in the log)."""

    def __init__(
        self,
        identities: Mapping[str, Identity],
        system: str,
        label: str,
        sources: Mapping[str, str] | None = None,
    ) -> None:
        self.identities = dict(identities)
        self.system = system
        self.label = label
        self.sources = dict(sources or {})
        self._warned: set[str] = set()
        #: Header key (:meth:`Header.key`) → its patch ({} = nothing to change).
        self._patches: dict[tuple[object, ...], Patch] = {}
        self._lock = threading.Lock()
        #: Instances whose header was rewritten (for the job's log line).
        self.coerced = 0

    def rewrite(self, src: Path | Loaded, spare: Path) -> Path | Loaded | Rewritten:
        """What to send for ``src``: itself (nothing differs, or its study is unknown), its header
        rewritten (:class:`Rewritten`), or ``spare`` written whole. A :class:`Loaded` file is
        scanned in memory, and its rewritten tail is sent from there.

        The instances of a study carry the same identifying elements: the patch made for the
        first is applied to the next ones whose bytes of those elements are the same; their
        headers are only scanned (:mod:`dicomproxy.identity.scan`), not read by pydicom."""
        data = src.data if isinstance(src, Loaded) else None
        path = src.path if isinstance(src, Loaded) else src
        scanned = scan(path, data)
        if scanned is not None and scanned.study not in self.identities:
            self._warn(scanned.study)
            return src
        if scanned is not None:
            patch = self._patches.get(
                patch_key(scanned.study, scanned.implicit, True, scanned.head, scanned.bounds)
            )
            if patch == {}:
                return src
            if patch is not None:
                with self._lock:
                    self.coerced += 1
                return patched(path, scanned, patch, data)
        sent = self._read_and_patch(path, spare)
        return src if sent == path else sent  # as it is: loaded, if it was

    def _read_and_patch(self, src: Path, spare: Path) -> Path | Rewritten:
        """:meth:`rewrite` of a header the scan did not take (or a study's first): pydicom reads it."""
        header = Header.read(src)
        key = header.key() if header.spliceable else None
        patch = self._patches.get(key) if key is not None else None
        if patch == {}:
            done = Coerced(Result.UNCHANGED, header.study, patch, src)
        elif patch is not None:
            done = Coerced(Result.COERCED, header.study, patch, patched(src, header, patch))
        else:
            done = coerce(
                src, spare, self.identities, system=self.system, sources=self.sources, header=header
            )
            if key is not None and done.patch is not None and len(self._patches) < MAX_PATCHES:
                self._patches[key] = done.patch
        if done.result is Result.UNKNOWN:
            self._warn(done.study)
        elif done.result is Result.COERCED:
            with self._lock:
                self.coerced += 1
        return done.send

    def coerce(self, src: Path, dst: Path) -> bool:
        """Write the coerced copy of ``src`` into ``dst``; False = send ``src`` as it is."""
        send = self.rewrite(src, dst)
        if isinstance(send, Rewritten):
            send.write(dst)
        return send != src

    def sent_uid(self, uid: str) -> str:
        """The SOP Instance UID :meth:`rewrite` gives the instance ``uid``: the same (coercion
        keeps it; a corrected copy's differs, :class:`~dicomproxy.identity.copies.CorrectedCopies`)."""
        return uid

    def _warn(self, study: str) -> None:
        with self._lock:
            if study in self._warned:
                return
            self._warned.add(study)
        LOG.warning(
            "%s: the exam view names no patient for study %s; its instances go with the PACS's attributes",
            self.label,
            study or "(no Study Instance UID)",
        )

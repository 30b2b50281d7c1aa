"""``[hospital]``, ``[view]``, ``[pacs]`` and ``[[archives]]``: where exams and images come from."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from dicomproxy.config.reader import Section, port, relative_sqlite, unique_entries
from dicomproxy.config.tls import TlsConfig, tls
from dicomproxy.errors import ConfigError

RetrieveMethod = Literal["c-move", "c-get"]
NameStyle = Literal["ideographic", "single", "pinyin"]
RETRIEVE_METHODS: tuple[str, ...] = ("c-move", "c-get")
NAME_STYLES: tuple[str, ...] = ("ideographic", "single", "pinyin")
CHARSETS: tuple[str, ...] = ("ISO_IR 192", "GB18030", "GBK")
#: Universal Entity ID Type (0040,0033) defined terms (PS3.3 Table 10-17, HL7v2 Hierarchic Designator).
ENTITY_ID_TYPES: tuple[str, ...] = ("ISO", "UUID", "URI", "DNS", "EUI64", "X400", "X500")
_OID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


@dataclass(frozen=True)
class UniversalId:
    """A Universal Entity ID (0040,0032) and its type (0040,0033): an assigning authority's OID."""

    id: str
    type: str = "ISO"


@dataclass(frozen=True)
class HospitalConfig:
    """医院组织机构代码 / 名称: must equal HospitalID / HospitalName in the view."""

    id: str
    name: str = ""
    #: The view's PIDAssigningAuthority values → their Universal Entity ID (Issuer of Patient ID
    #: Qualifiers Sequence (0010,0024) on coerced instances, docs/identity.md).
    issuers: tuple[tuple[str, UniversalId], ...] = ()
    #: Who assigns the view's AccessionNumber (Issuer of Accession Number Sequence (0008,0051)).
    accession_issuer: UniversalId | None = None

    def issuer(self, authority: str) -> UniversalId | None:
        """The Universal Entity ID of a PIDAssigningAuthority value, if the table names it."""
        return next((uid for name, uid in self.issuers if name == authority), None)


@dataclass(frozen=True)
class ViewConfig:
    """The exam view (影像云视图)."""

    url: str
    name: str = "V_IMAGE_CLOUD"
    max_privacy: int = 0
    #: Charset of C-FIND answers when the request's is not GB18030, GBK or ISO_IR 192.
    default_charset: str = "ISO_IR 192"
    #: How PatientName is rendered by default; peers may override.
    name_style: NameStyle = "ideographic"
    pool_size: int = 5
    query_timeout: float = 30.0
    #: Stop a C-FIND after this many matches (0 = unlimited).
    max_results: int = 1000
    #: Date-time RowTimestamps: seconds re-read below the high-water mark (late commits).
    stamp_overlap: float = 60.0
    #: Bind string parameters as nvarchar (SQL Server views whose columns are nvarchar);
    #: false = varchar, matching the seed's varchar columns (no implicit conversion).
    unicode_params: bool = False


@dataclass(frozen=True)
class PacsConfig:
    """An upstream archive: ``[pacs]`` (the default) or one ``[[archives]]`` entry."""

    ae_title: str
    host: str
    port: int
    retrieve: RetrieveMethod = "c-move"
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0
    #: Longest a whole retrieval (C-MOVE/C-GET of one job) may take, however the PACS keeps the
    #: association alive; then it is aborted and the job ends as a failure. 0 = no limit.
    total_timeout: float = 3600.0
    max_concurrent: int = 4
    max_pdu: int = 0
    #: Outbound DICOM TLS to the PACS; None = plain TCP.
    tls: TlsConfig | None = None
    #: Name used in logs and the journal ("pacs" for the ``[pacs]`` table).
    name: str = "pacs"
    #: View ``Sysid`` values this archive serves; empty on ``[pacs]`` = every exam no other archive claims.
    sysids: tuple[str, ...] = ()
    #: Optional narrowing by the view's ``ExamineType`` (modality); empty = any.
    modalities: tuple[str, ...] = ()
    #: Archives (by name) asked in this order when this one has no instance of a routed study;
    #: empty = no fallback (the default: a study is only ever looked for where it is routed).
    fallback: tuple[str, ...] = ()


def hospital(s: Section) -> HospitalConfig:
    raw = s.value("accession_issuer", None)
    config = HospitalConfig(
        id=s.string("id"),
        name=s.string("name", ""),
        issuers=issuers(s),
        accession_issuer=None if raw is None else universal_id(s, "accession_issuer", raw),
    )
    if not config.id.strip():
        raise s.error("id", "must not be empty")
    s.finish()
    return config


def issuers(s: Section) -> tuple[tuple[str, UniversalId], ...]:
    """``[hospital] issuers``: a table of PIDAssigningAuthority value → OID (or ``{ id, type }``)."""
    raw = s.value("issuers", {})
    if not isinstance(raw, dict):
        raise s.error("issuers", 'must be a table of PIDAssigningAuthority value = "OID"')
    out = []
    for name, value in raw.items():
        if not name.strip() or len(name) > 64:  # (0010,0021) LO: 64 characters
            raise s.error(f"issuers.{name}", "the authority must be 1-64 characters")
        out.append((name, universal_id(s, f"issuers.{name}", value)))
    return tuple(out)


def universal_id(s: Section, key: str, value: object) -> UniversalId:
    """An OID string (type ISO) or ``{ id = "...", type = "UUID" }`` (PS3.3 Table 10-17)."""
    if isinstance(value, str):
        found = UniversalId(value.strip())
    elif isinstance(value, dict) and set(value) <= {"id", "type"} and isinstance(value.get("id"), str):
        found = UniversalId(str(value["id"]).strip(), str(value.get("type", "ISO")))
    else:
        raise s.error(key, "must be an OID string or a table { id = ..., type = ... }")
    if found.type not in ENTITY_ID_TYPES:
        raise s.error(key, f"type must be one of {', '.join(ENTITY_ID_TYPES)}, not {found.type!r}")
    if found.type == "ISO" and (not _OID_RE.match(found.id) or len(found.id) > 64):
        raise s.error(key, f"{found.id!r} is not an OID (digits and dots, e.g. 1.2.156.112604.1)")
    if not found.id:
        raise s.error(key, "must not be empty")
    return found


def view(s: Section) -> ViewConfig:
    vd = ViewConfig(url="")
    config = ViewConfig(
        url=relative_sqlite(s.string("url"), s.path),
        name=s.string("name", vd.name),
        max_privacy=s.integer("max_privacy", vd.max_privacy, lo=0),
        default_charset=s.string("default_charset", vd.default_charset, choices=CHARSETS),
        name_style=s.string("name_style", vd.name_style, choices=NAME_STYLES),
        pool_size=s.integer("pool_size", vd.pool_size, lo=1),
        query_timeout=s.number("query_timeout", vd.query_timeout),
        max_results=s.integer("max_results", vd.max_results, lo=0),
        stamp_overlap=s.number("stamp_overlap", vd.stamp_overlap),
        unicode_params=s.boolean("unicode_params", vd.unicode_params),
    )
    s.finish()
    return config


def archive(s: Section, fixed_name: str | None) -> PacsConfig:
    """``[pacs]`` (``fixed_name`` = "pacs") or one ``[[archives]]`` entry (its own ``name``)."""
    d = PacsConfig(ae_title="X", host="", port=0)
    config = PacsConfig(
        ae_title=s.ae_title("ae_title"),
        host=s.string("host"),
        port=port(s, "port"),
        retrieve=s.string("retrieve", d.retrieve, choices=RETRIEVE_METHODS),
        connect_timeout=s.number("connect_timeout", d.connect_timeout),
        acse_timeout=s.number("acse_timeout", d.acse_timeout),
        dimse_timeout=s.number("dimse_timeout", d.dimse_timeout),
        total_timeout=s.number("total_timeout", d.total_timeout),
        max_concurrent=s.integer("max_concurrent", d.max_concurrent, lo=1),
        max_pdu=s.integer("max_pdu", d.max_pdu, lo=0),
        tls=tls(s, inbound=False),
        name=fixed_name if fixed_name is not None else s.string("name"),
        sysids=tuple(x.strip().upper() for x in s.strings("sysids", ())),
        modalities=tuple(x.strip().upper() for x in s.strings("modalities", ())),
        fallback=tuple(x.strip() for x in s.strings("fallback", ())),
    )
    s.finish()
    return config


def _routed_archive(s: Section) -> PacsConfig:
    """One ``[[archives]]`` entry, which must name the Sysids it serves."""
    entry = archive(s, None)
    if not entry.sysids:
        raise s.error("sysids", "is required (which view Sysid values this archive serves)")
    return entry


def archives(path: str, entries: Iterable[Section], pacs: PacsConfig) -> tuple[PacsConfig, ...]:
    """The ``[[archives]]`` entries: each serves some Sysids; names unique; fallbacks name another."""
    found = unique_entries(entries, _routed_archive, "name", "is used twice", taken=(pacs.name,))
    names = {a.name for a in (pacs, *found)}
    for where, each in [("pacs", pacs), *((f"archives[{i}]", a) for i, a in enumerate(found))]:
        for name in each.fallback:
            if name not in names or name == each.name:
                raise ConfigError(path, f"{where}.fallback", f"{name!r} is not another archive's name")
    return found

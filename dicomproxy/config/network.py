"""``[proxy]`` (this node) and ``[[peers]]`` (who may call us; the only C-MOVE destinations)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dicomproxy.config.compression import COMPRESSION_MODES, CompressionMode
from dicomproxy.config.dicomweb import PEER_KINDS, DicomWebConfig, dicomweb
from dicomproxy.config.reader import REQUIRED, Section, port, unique_entries
from dicomproxy.config.sources import NAME_STYLES, NameStyle
from dicomproxy.config.tls import TlsConfig, tls

#: DIMSE services a peer may be allowed to use.
SERVICES: tuple[str, ...] = ("echo", "find", "move", "get")
#: Most onward associations per job (``onward_associations``): each is one more peer connection and thread.
MAX_ONWARD = 16


@dataclass(frozen=True)
class ProxyConfig:
    """This node: the "DICOM 服务地址/端口/标识" handed to the cloud."""

    ae_title: str = "DICOMPROXY"
    host: str = "0.0.0.0"
    port: int = 11112
    #: Maximum PDU we receive; 0 = unlimited (PS3.8 D.1). Large PDUs cut per-PDU overhead.
    max_pdu: int = 0
    #: Seconds an association may wait for an A-ASSOCIATE-RQ/AC.
    acse_timeout: float = 30.0
    #: Seconds to wait for a DIMSE message from a peer.
    dimse_timeout: float = 300.0
    #: Idle seconds before an inbound association is dropped; 0 = never (see dicom-notes on network_timeout).
    network_timeout: float = 0.0
    maximum_associations: int = 32
    #: Seconds to let in-flight work finish after SIGTERM.
    drain_timeout: float = 30.0
    #: Extra attempts of an onward C-STORE after a transient failure (association lost, 0xA7xx).
    retries: int = 3
    #: Seconds before the first retry; doubles with each further attempt.
    retry_delay: float = 2.0
    #: A C-MOVE destination that drops mid-study is reconnected (with backoff, Pending responses
    #: going on) for up to this many seconds before its unconfirmed instances count as failed.
    reconnect_window: float = 60.0
    #: Onward associations a C-MOVE job opens to its destination; instances are spread over them,
    #: each sent once (issue 17). More than one hides per-instance round trips on a far link.
    onward_associations: int = 1
    #: Proxy-owned state: journal, spool, UID side table.
    data_dir: str = "var"
    #: Below this much free space (MiB) on the data disk, each archive C-STORE response waits
    #: for the destination to take what the job holds (dicomproxy.relay.spool); 0 = never wait.
    spool_headroom_mb: int = 256
    #: Inbound DICOM TLS; None = plain TCP.
    tls: TlsConfig | None = None
    #: Move instances on raw sockets where it is safe (plain TCP): the archives' C-STOREs
    #: during our C-MOVE and our onward C-STOREs (dicomproxy.transport.raw). False = pynetdicom only.
    fast_path: bool = True
    #: Serve C-FIND/C-ECHO-only associations in a process of their own (dicomproxy.queryproc):
    #: queries do not wait for the images' threads (GIL, CPU). Needs the raw query acceptor
    #: (``fast_path``, plain TCP); ``serve`` only.
    query_process: bool = True
    #: Nice increment ``serve`` takes for the process that moves images once the query process
    #: runs at the priority it was started with (man 2 nice); 0 = none.
    data_path_nice: int = 5


@dataclass(frozen=True)
class PeerConfig:
    """An AE allowed to call us; also the only valid C-MOVE destinations."""

    ae_title: str
    host: str
    port: int
    check_host: bool = True
    compression: CompressionMode | None = None
    name_style: NameStyle | None = None
    #: Outbound DICOM TLS when we C-STORE to this peer; None = plain TCP.
    tls: TlsConfig | None = None
    #: Services this peer may request (PS3.4 A, C); others are refused with their DIMSE status.
    services: tuple[str, ...] = SERVICES
    #: Overrides ``[proxy] onward_associations`` for C-MOVEs to this peer; None = that value.
    onward_associations: int | None = None
    #: Ask this peer to commit what it stored (Storage Commitment Push Model, PS3.4 Annex J).
    storage_commitment: bool = False
    #: Seconds to wait for its N-EVENT-REPORT before asking again (doubling each time).
    commit_timeout: float = 600.0
    #: N-ACTIONs per transaction before its instances are reported ``unanswered``.
    commit_attempts: int = 3
    #: Instances sent to it carry the exam view's identity (docs/identity.md); False = the PACS's bytes.
    coerce: bool = True
    #: ``kind = "dicomweb"``: instances go to it by STOW-RS (PS3.18 10.5), not C-STORE; None = DIMSE.
    dicomweb: DicomWebConfig | None = None

    @property
    def kind(self) -> str:
        """``dimse`` or ``dicomweb`` (:data:`~dicomproxy.config.dicomweb.PEER_KINDS`)."""
        return "dimse" if self.dicomweb is None else "dicomweb"

    @property
    def speaks_dimse(self) -> bool:
        """It has a DIMSE port we can call (C-ECHO, C-FIND, Storage Commitment)."""
        return self.dicomweb is None

    #: The bandwidth timetable (``[[bandwidth]]``) also caps the onward C-STOREs of C-MOVE and
    #: C-GET jobs to this peer (its own pulls); False = only push deliveries are capped.
    cap_pulls: bool = False
    #: Corrections after delivery go to it as IOCM rejection notes and corrected copies
    #: (docs/identity.md); False = a WARNING, an audit row and a ``reconcile`` line only.
    iocm: bool = False


def proxy(s: Section) -> ProxyConfig:
    d = ProxyConfig()
    config = ProxyConfig(
        ae_title=s.ae_title("ae_title", d.ae_title),
        host=s.string("host", d.host),
        port=port(s, "port", d.port),
        max_pdu=s.integer("max_pdu", d.max_pdu, lo=0),
        acse_timeout=s.number("acse_timeout", d.acse_timeout),
        dimse_timeout=s.number("dimse_timeout", d.dimse_timeout),
        network_timeout=s.number("network_timeout", d.network_timeout),
        maximum_associations=s.integer("maximum_associations", d.maximum_associations, lo=1),
        drain_timeout=s.number("drain_timeout", d.drain_timeout),
        retries=s.integer("retries", d.retries, lo=0, hi=100),
        retry_delay=s.number("retry_delay", d.retry_delay),
        reconnect_window=s.number("reconnect_window", d.reconnect_window),
        onward_associations=s.integer("onward_associations", d.onward_associations, lo=1, hi=MAX_ONWARD),
        fast_path=s.boolean("fast_path", d.fast_path),
        query_process=s.boolean("query_process", d.query_process),
        data_path_nice=s.integer("data_path_nice", d.data_path_nice, lo=0, hi=19),
        data_dir=s.string("data_dir", d.data_dir),
        spool_headroom_mb=s.integer("spool_headroom_mb", d.spool_headroom_mb, lo=0),
        tls=tls(s, inbound=True),
    )
    s.finish()
    return config


def peer(s: Section) -> PeerConfig:
    """One ``[[peers]]`` entry: a DIMSE peer (``host``, ``port``), or with ``kind = "dicomweb"`` a
    STOW-RS endpoint (``url``; ``host`` only when it also calls us)."""
    comp = s.string("compression", None, choices=COMPRESSION_MODES)
    style = s.string("name_style", None, choices=NAME_STYLES)
    web = dicomweb(s) if s.string("kind", "dimse", choices=PEER_KINDS) == "dicomweb" else None
    config = PeerConfig(
        ae_title=s.ae_title("ae_title"),
        host=s.string("host", "" if web else REQUIRED),
        port=port(s, "port", 0 if web else REQUIRED),
        check_host=s.boolean("check_host", True),
        compression=comp,
        name_style=style,
        tls=tls(s, inbound=False),
        services=s.strings("services", SERVICES),
        onward_associations=(
            s.integer("onward_associations", lo=1, hi=MAX_ONWARD)
            if "onward_associations" in s.table
            else None
        ),
        storage_commitment=s.boolean("storage_commitment", False),
        commit_timeout=s.number("commit_timeout", 600.0, lo=0.1),
        commit_attempts=s.integer("commit_attempts", 3, lo=1, hi=20),
        coerce=s.boolean("coerce", True),
        dicomweb=web,
        cap_pulls=s.boolean("cap_pulls", False),
        iocm=s.boolean("iocm", False),
    )
    if web is not None and config.storage_commitment:
        raise s.error("storage_commitment", "is DIMSE (PS3.4 Annex J); a dicomweb peer cannot commit")
    bad = [x for x in config.services if x not in SERVICES]
    if bad:
        raise s.error("services", f"unknown service {bad[0]!r}; expected some of {', '.join(SERVICES)}")
    s.finish()
    return config


def peers(entries: Iterable[Section]) -> tuple[PeerConfig, ...]:
    """The ``[[peers]]`` entries; an AE title is listed once."""
    return unique_entries(entries, peer, "ae_title", "is listed twice")

"""Onward C-STORE sub-operations (PS3.4 C.4.2.2 / C.4.3.2): spooled file → destination, per-instance syntax.

A :class:`Forwarder` wraps one association on which we are the Storage SCU: the onward
association we open to a C-MOVE destination (:func:`open_destination`), or the requester's
own association for C-GET. Per instance it picks the transfer syntax among those accepted
for the SOP class (``choose_target``): when the spooled file's syntax was accepted the file
is sent as-is, byte for byte, straight from disk (``_config.STORE_SEND_CHUNKED_DATASET``);
otherwise it is converted into a temporary file first (``transcode_file``).

The syntax functions are :mod:`dicomproxy.transcode` (issue 5). Fast path: in ``none`` mode an
instance whose syntax was accepted is sent without even reading its header.

Three steps: :meth:`Forwarder.plan` (the target syntax, cheap), the conversion (inline in
:meth:`Forwarder.send`, or in the relay's :class:`~dicomproxy.transcode.TranscodePool`), and
:meth:`Forwarder.send_file` (the C-STORE alone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

from dicomproxy.config import PeerConfig, ProxyConfig
from dicomproxy.errors import CannotTranscode, DestinationUnavailable
from dicomproxy.identity import Coercer
from dicomproxy.relay.spool import SpooledInstance
from dicomproxy.status import Status, is_out_of_resources
from dicomproxy.transcode import Policy, choose_target, proposed_syntaxes, read_info, transcode_file
from dicomproxy.transcode.syntaxes import UNCOMPRESSED_FALLBACK
from dicomproxy.transport.link import Link, NoAssociation, Timeouts, open_link
from dicomproxy.transport.net import MAX_CONTEXTS, Remote, storage_classes_for
from dicomproxy.transport.pynetdicom_link import PynetdicomLink
from dicomproxy.transport.raw.dimse import message_ids
from dicomproxy.transport.raw.link import RawLink
from dicomproxy.transport.rewritten import LOAD_MAX, Loaded, Rewritten, load

LOG = logging.getLogger("dicomproxy.forward")

UNCOMPRESSED = UNCOMPRESSED_FALLBACK[:2]  # Explicit VR LE, Implicit VR LE: never trimmed away

#: Longest wait between two attempts of one onward C-STORE (seconds).
MAX_RETRY_DELAY = 60.0


@dataclass(frozen=True)
class SendResult:
    #: C-STORE response status; None when no response came (association lost or timed out).
    status: int | None
    transfer_syntax: str = ""
    bytes_out: int = 0
    error: str = ""

    @property
    def category(self) -> str:
        return "Failure" if self.status is None else code_to_category(self.status)

    @property
    def transient(self) -> bool:
        """Worth retrying: no response (association lost or refused) or 0xA7xx Out of Resources
        (PS3.4 B.2.3). 0xA9xx (data set does not match SOP class), 0xCxxx (cannot understand) and
        0x0122 (SOP class not supported) would fail again."""
        return self.status is None or is_out_of_resources(self.status)


#: Storage classes departments usually hold compressed already (US and endoscopy cine, slides):
#: with unknown SOP classes they also get one context per syntax of :data:`STORED_COMPRESSED`, so
#: such an instance goes out as it is instead of being decoded (issue 8).
COMPRESSED_SOURCE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image (PS3.3 A.7)
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image (A.6)
    "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic Image (A.32.1)
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image (A.32.4)
    "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL Whole Slide Microscopy Image (A.32.8)
)
#: JPEG Baseline (lossy, 8 bit) and JPEG Lossless SV1: the syntaxes those archives store.
STORED_COMPRESSED = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70")


def contexts_for(
    policy: Policy, sop_classes: list[str], source_syntaxes: list[str], complete: bool = True
) -> list[PresentationContext]:
    """One context per (SOP class, syntax), best syntaxes first, trimmed to 128 in total.

    ``complete=False`` (some SOP classes unknown): one context per storage class of
    :func:`storage_classes_for`, listing the mode's targets and the uncompressed syntaxes; the
    destination picks one. The PACS's compressed source syntaxes are left out of those: an SCP
    that prefers compression (DCMTK ``storescp +xa``) would otherwise pick a codec for
    instances held uncompressed, and ``none`` mode must then re-encode them. They get
    contexts of their own, one syntax each, for :data:`COMPRESSED_SOURCE_CLASSES` only.
    """
    if not complete:
        extra = [build_context(uid, ts) for uid in COMPRESSED_SOURCE_CLASSES for ts in STORED_COMPRESSED]
        classes = storage_classes_for([*sop_classes, *COMPRESSED_SOURCE_CLASSES])[: MAX_CONTEXTS - len(extra)]
        return [
            *(build_context(uid, proposed_syntaxes(policy, uid, list(UNCOMPRESSED))) for uid in classes),
            *extra,
        ]
    per_class = {uid: proposed_syntaxes(policy, uid, source_syntaxes) for uid in sop_classes}
    if len(sop_classes) > MAX_CONTEXTS:
        raise DestinationUnavailable(f"study has {len(sop_classes)} SOP classes; one association carries 128")
    budget = MAX_CONTEXTS // max(1, len(sop_classes))
    out: list[PresentationContext] = []
    for uid, syntaxes in per_class.items():
        # the uncompressed fallbacks survive any trimming: every instance must find a context
        must = [ts for ts in UNCOMPRESSED if ts in syntaxes][:budget]
        rest = [ts for ts in syntaxes if ts not in must][: budget - len(must)]
        out.extend(build_context(uid, ts) for ts in [*rest, *must])
    return out


def plan_instance(policy: Policy, accepted: list[str], item: SpooledInstance) -> str | SendResult:
    """The transfer syntax ``item`` goes out in, among the ``accepted`` ones, or the failure that
    keeps it from going — the one rule for every kind of destination (C-STORE, STOW-RS)."""
    if not accepted:
        return SendResult(
            Status.SOP_CLASS_NOT_SUPPORTED, error="destination accepted no context for this SOP class"
        )
    if policy.mode == "none" and item.transfer_syntax in accepted:
        return item.transfer_syntax  # pass-through: the header is not even parsed
    try:
        return choose_target(policy, read_info(item.path), accepted)
    except CannotTranscode as exc:
        return SendResult(exc.status, error=str(exc))
    except Exception as exc:  # unreadable file
        return SendResult(Status.UNABLE_TO_PROCESS, error=f"cannot read the spooled instance: {exc}")


class Forwarder:
    """Sends spooled instances on one :class:`Link`; counts bytes; never raises for network problems."""

    #: One C-STORE carries one instance (PS3.4 B.2).
    max_batch = 1

    def __init__(
        self,
        link: Link,
        policy: Policy,
        work_dir: Path,
        *,
        originator: tuple[str, int] | None = None,
        reopen: Callable[..., Link] | None = None,
    ) -> None:
        self.link = link
        self._reopen = reopen
        self.policy = policy
        self.work_dir = work_dir
        self.originator = originator
        self.bytes_out = 0
        #: Told the bytes of each C-STORE as they are written (push's ``max_mbps``, ``[[bandwidth]]``:
        #: the one place every onward C-STORE is capped, :mod:`dicomproxy.relay.bandwidth`; the link
        #: calls it per batch of PDUs, :data:`~dicomproxy.transport.seam.Pace`); None = no cap.
        self.throttle: Callable[[int], None] | None = None
        #: Told (transfer syntax, CPU seconds) of each conversion made here, inline — the pool's are
        #: reported by the pump (the ``dicomproxy_transcode_seconds`` metric counts both).
        self.on_converted: Callable[[str, float], None] | None = None
        #: Gives each instance the exam view's identity as it goes (docs/identity.md); None = as held.
        self.coercer: Coercer | None = None
        self._msg_ids = message_ids()
        self._accepted: dict[str, list[str]] = {}
        #: The buffer a file to send is read into (:func:`load`; raw links only, allocated on first use).
        self._loading: bytearray | None = None
        self._adopt(link)

    def _adopt(self, link: Link) -> None:
        self.link = link
        self._accepted = {}
        for cx in link.accepted_contexts:
            if cx.as_scu and cx.abstract_syntax:
                self._accepted.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))

    @property
    def can_reconnect(self) -> bool:
        return self._reopen is not None

    def reconnect(self) -> bool:
        """Re-open a lost onward association (C-MOVE only; a C-GET requester's cannot be)."""
        if self.alive:
            return True
        if self._reopen is None:
            return False
        try:
            link = self._reopen()
        except DestinationUnavailable as exc:
            LOG.warning("re-opening the onward association failed: %s", exc)
            return False
        self.close()
        self._adopt(link)
        return True

    def another(self, acse_timeout: float | None = None) -> Forwarder:
        """One more onward association to the same destination, with the same contexts and
        originator (C-MOVE only; raises DestinationUnavailable, status 0xC003). ``acse_timeout``:
        how long to wait for its A-ASSOCIATE-AC (default ``[proxy] acse_timeout``)."""
        if self._reopen is None:
            raise DestinationUnavailable("the requester's own association cannot be duplicated")
        twin = Forwarder(
            self._reopen(acse_timeout),
            self.policy,
            self.work_dir,
            originator=self.originator,
            reopen=self._reopen,
        )
        twin.throttle = self.throttle  # push's max_mbps: one cap for all of the job's associations
        twin.on_converted = self.on_converted
        twin.coercer = self.coercer
        return twin

    @property
    def alive(self) -> bool:
        return bool(self.link.is_established)

    def store(
        self,
        item: SpooledInstance,
        prepared: tuple[Path, str] | None,
        retries: int,
        delay: float,
        label: str,
        *,
        reconnect: bool = True,
    ) -> SendResult:
        """One onward C-STORE with retries (:func:`send_with_retries`)."""
        return send_with_retries(self, item, retries, delay, label, prepared, reconnect=reconnect)

    def store_batch(
        self,
        items: list[tuple[SpooledInstance, tuple[Path, str] | None]],
        retries: int,
        delay: float,
        label: str,
    ) -> list[SendResult]:
        """C-STORE sends one instance per request (:attr:`max_batch` 1): one after the other."""
        return [self.store(item, prepared, retries, delay, label) for item, prepared in items]

    def accepted(self, sop_class_uid: str) -> list[str]:
        return list(self._accepted.get(sop_class_uid, []))

    def plan(self, item: SpooledInstance) -> str | SendResult:
        """The transfer syntax ``item`` goes out in, or the failure that keeps it from going.

        Cheap: the accepted contexts and the header (:func:`read_info`), no pixel is decoded. In
        ``none`` mode an instance whose syntax was accepted is passed through unread.
        """
        return plan_instance(self.policy, self.accepted(item.sop_class_uid), item)

    def converted_path(self, item: SpooledInstance) -> Path:
        """Where the converted copy of ``item`` is written (inline or by a pool worker)."""
        return self.work_dir / f"{item.path.stem}.out.dcm"

    def send(self, item: SpooledInstance) -> SendResult:
        """Plan, convert inline when the target differs from the held syntax, send."""
        target = self.plan(item)
        if isinstance(target, SendResult):
            return target
        if target == item.transfer_syntax:
            return self.send_file(item, item.path, target)
        tmp = self.converted_path(item)
        try:
            started = time.thread_time()
            try:
                path = transcode_file(item.path, tmp, target, self.policy).path
            except Exception as exc:
                return SendResult(
                    Status.UNABLE_TO_PROCESS, target, error=f"cannot convert to {target}: {exc}"
                )
            if self.on_converted is not None:
                self.on_converted(target, time.thread_time() - started)
            return self.send_file(item, path, target)
        finally:
            tmp.unlink(missing_ok=True)

    def send_file(self, item: SpooledInstance, path: Path, target: str) -> SendResult:
        """The C-STORE of ``path`` (``item`` as prepared in syntax ``target``), with the view's
        identity when a :attr:`coercer` is set (its header rewritten in memory, the pixel data
        streamed from ``path`` unread, :mod:`dicomproxy.identity.files`); never raises."""
        loaded: Path | Loaded = path
        if isinstance(self.link, RawLink):  # read once: scanned, its meta and its PDVs from memory
            if self._loading is None:
                self._loading = bytearray(LOAD_MAX)
            loaded = load(path, self._loading) or path
        source: Path | Loaded | Rewritten = loaded
        spare = path.with_name(f"{path.stem}.id.dcm")  # written only when a header cannot be patched
        if self.coercer is not None:
            try:
                source = self.coercer.rewrite(loaded, spare)
            except Exception as exc:  # an unreadable header: not sent with the PACS's identity
                spare.unlink(missing_ok=True)
                return SendResult(
                    Status.UNABLE_TO_PROCESS, target, error=f"cannot give it the view's identity: {exc}"
                )
        try:
            if isinstance(source, Loaded):
                size = len(source.data)
            else:
                size = source.stat().st_size if isinstance(source, Path) else source.stat_size()
            # the throttle paces the C-STORE as it is written (per batch of PDUs, raw.pdu.SEND_BATCH)
            code = self.link.store(source, next(self._msg_ids), self.originator, self.throttle)
        except Exception as exc:  # association gone, no context, unreadable file
            return SendResult(None, target, error=str(exc) or type(exc).__name__)
        finally:
            if source == spare:
                spare.unlink(missing_ok=True)
        if code is None:
            return SendResult(None, target, error="no C-STORE response (timeout or abort)")
        self.bytes_out += size
        return SendResult(code, target, size)

    def close(self) -> None:
        """Release an association we opened; the C-GET requester's stays (its link does not own it)."""
        self.link.close()


def send_with_retries(
    forwarder: Forwarder,
    item: SpooledInstance,
    retries: int,
    delay: float,
    label: str,
    prepared: tuple[Path, str] | None = None,
    *,
    reconnect: bool = True,
) -> SendResult:
    """One onward C-STORE, retried with backoff (``delay``, doubling, at most
    :data:`MAX_RETRY_DELAY`) after a transient failure (:attr:`SendResult.transient`),
    re-opening a lost onward association first. ``label`` names the job in the log.

    ``prepared``: (file, syntax) already made for ``item`` (by a :class:`TranscodePool`); it is
    sent as it is, unless a re-opened association no longer accepts that syntax for the SOP
    class, in which case the instance is planned and converted again inline.

    ``reconnect=False``: a lost association is returned at once (status None), for a caller
    that reconnects itself while it keeps its requester informed (the relay's pump)."""
    res = SendResult(None, error="destination association lost")
    for attempt in range(retries + 1):
        if not reconnect and not forwarder.alive and forwarder.can_reconnect:
            return SendResult(None, error="destination association lost")
        if attempt:
            LOG.warning(
                "%s: onward C-STORE failed (%s); retry %d of %d",
                label,
                res.error or f"0x{res.status:04X}",
                attempt,
                retries,
            )
            time.sleep(min(delay * 2 ** (attempt - 1), MAX_RETRY_DELAY))
        if not forwarder.alive and not forwarder.reconnect():
            res = SendResult(None, error="destination cannot be reached")
            if not forwarder.can_reconnect:
                break  # the C-GET requester's association: gone for good
            continue
        if prepared is not None and prepared[1] in forwarder.accepted(item.sop_class_uid):
            res = forwarder.send_file(item, *prepared)
        else:
            res = forwarder.send(item)
        if not res.transient:
            break
    return res


def _associate_destination(
    peer: PeerConfig,
    proxy: ProxyConfig,
    contexts: list[PresentationContext],
    connect_timeout: float,
    acse_timeout: float | None = None,
) -> Link:
    """An established onward association to ``peer`` (raises DestinationUnavailable, status 0xC003):
    raw sockets on plain TCP with ``[proxy] fast_path``, pynetdicom otherwise (:func:`open_link`)."""
    try:
        link = open_link(
            proxy.ae_title,
            Remote(peer.ae_title, peer.host, peer.port),
            contexts,
            timeouts=Timeouts(connect_timeout, acse_timeout or proxy.acse_timeout, proxy.dimse_timeout),
            max_pdu=proxy.max_pdu,
            tls=peer.tls,
            fast_path=proxy.fast_path,
            sends_stores=True,
        )
    except NoAssociation as exc:
        raise DestinationUnavailable(f"destination {peer.ae_title} {exc.what}") from exc
    if not link.accepted_contexts:
        link.close()
        raise DestinationUnavailable(f"destination {peer.ae_title} accepted no storage context")
    return link


def open_destination(
    peer: PeerConfig,
    proxy: ProxyConfig,
    contexts: list[PresentationContext],
    policy: Policy,
    work_dir: Path,
    originator: tuple[str, int] | None,
    connect_timeout: float = 10.0,
) -> Forwarder:
    """The onward association for a C-MOVE (raises DestinationUnavailable, status 0xC003).

    The forwarder can re-open it (:meth:`Forwarder.reconnect`) after it was lost.
    """
    link = _associate_destination(peer, proxy, contexts, connect_timeout)
    return Forwarder(
        link,
        policy,
        work_dir,
        originator=originator,
        reopen=lambda acse=None: _associate_destination(peer, proxy, contexts, connect_timeout, acse),
    )


def requester_forwarder(assoc: Association, policy: Policy, work_dir: Path, fast_path: bool) -> Forwarder:
    """C-GET: the sub-operations go on the requester's own association (PS3.4 C.4.3.2), which
    stays the requester's (not released here, never re-opened)."""
    return Forwarder(
        PynetdicomLink(assoc, owns=False, sends_stores=True, fast_send=fast_path), policy, work_dir
    )

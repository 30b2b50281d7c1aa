"""DICOM audit messages (PS3.15 A.5, the IHE ATNA message format) sent over syslog.

``[audit] syslog = "udp://HOST:PORT" | "tcp://HOST:PORT" | "tls://HOST:PORT"``: each event of
:mod:`dicomproxy.events` that PS3.15 A.5.3 describes becomes one XML ``AuditMessage``:

============================  ============================================  ========================
event                          PS3.15 message (EventID, DCM)                 EventTypeCode
============================  ============================================  ========================
start / stop                   Application Activity (110100)                 Application Start/Stop
association accepted           User Authentication (110114)                  Login (110122)
association rejected           Security Alert (110113)                       Node Authentication (110126)
C-FIND answered                Query (110112)
C-MOVE/C-GET studies resolved  Begin Transferring DICOM Instances (110102)
C-MOVE/C-GET finished          DICOM Instances Transferred (110104)
============================  ============================================  ========================

Transport: RFC 5424 syslog messages (facility authpriv, severity notice, MSGID ``DICOM+RFC3881``
as IHE ITI-20 asks), one UDP datagram each (RFC 5426), or octet-counted frames over TCP/TLS
(RFC 6587 3.4.1 / RFC 5425 4.3). A sender thread with a bounded queue does the network I/O; a
syslog server that is down costs a WARNING and dropped messages, never a slower DICOM service
(the durable record is the audit table).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import queue
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.status import Status

LOG = logging.getLogger("dicomproxy.atna")

#: RFC 5424 PRI: facility 10 (authpriv) * 8 + severity 5 (notice).
PRI = 10 * 8 + 5
MSGID = "DICOM+RFC3881"
QUEUE_SIZE = 10_000

# PS3.15 A.5.1 EventOutcomeIndicator
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"


@dataclass(frozen=True)
class Code:
    """A coded value as the schema writes it: ``csd-code``, ``codeSystemName``, ``originalText``."""

    code: str
    system: str
    text: str

    def element(self, parent: ET.Element, tag: str) -> ET.Element:
        return ET.SubElement(
            parent, tag, {"csd-code": self.code, "codeSystemName": self.system, "originalText": self.text}
        )


# PS3.16 CID 400 (Audit Event ID), CID 401 (Audit Event Type Code), CID 402 (Audit Active Participant Role)
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
BEGIN_TRANSFERRING = Code("110102", "DCM", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
PROCEDURE_RECORD = Code("110111", "DCM", "Procedure Record")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
SOFTWARE_CONFIGURATION = Code("110131", "DCM", "Software Configuration")
ROLE_APPLICATION = Code("110150", "DCM", "Application")
ROLE_DESTINATION = Code("110152", "DCM", "Destination Role ID")
ROLE_SOURCE = Code("110153", "DCM", "Source Role ID")
# PS3.15 A.5.2 / RFC 3881: participant object ID types
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
NODE_ID = Code("110182", "DCM", "Node ID")
URI = Code("12", "RFC-3881", "URI")

#: Key Object Selection Document Storage: the IOCM rejection note (dicomproxy.identity.rejection).
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


def _time(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class MessageBuilder:
    """Builds PS3.15 A.5 ``AuditMessage`` documents for one proxy."""

    def __init__(self, ae_title: str, hostname: str, source_id: str) -> None:
        self.ae_title = ae_title
        self.hostname = hostname
        self.source_id = source_id

    def _message(
        self, event_id: Code, action: str, when: dt.datetime, outcome: str, type_code: Code | None = None
    ) -> ET.Element:
        root = ET.Element("AuditMessage")
        ident = ET.SubElement(
            root,
            "EventIdentification",
            {"EventActionCode": action, "EventDateTime": _time(when), "EventOutcomeIndicator": outcome},
        )
        event_id.element(ident, "EventID")
        if type_code is not None:
            type_code.element(ident, "EventTypeCode")
        return root

    def _participant(
        self,
        root: ET.Element,
        user_id: str,
        requestor: bool,
        address: str = "",
        role: Code | None = None,
        alternative: str = "",
    ) -> None:
        attrs = {"UserID": user_id or "-", "UserIsRequestor": "true" if requestor else "false"}
        if alternative:
            attrs["AlternativeUserID"] = alternative
        if address:
            attrs["NetworkAccessPointID"] = address
            # PS3.15 A.5.1 / RFC 3881: 1 = machine name, 2 = IP address
            attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(address) else "1"
        p = ET.SubElement(root, "ActiveParticipant", attrs)
        if role is not None:
            role.element(p, "RoleIDCode")

    def _ourselves(self, root: ET.Element, requestor: bool, role: Code | None) -> None:
        self._participant(root, self.ae_title, requestor, self.hostname, role, alternative=str(_pid()))

    def _source(self, root: ET.Element) -> None:
        src = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": self.source_id})
        ET.SubElement(
            src, "AuditSourceTypeCode", {"csd-code": "4", "codeSystemName": "DCM", "originalText": "4"}
        )

    @staticmethod
    def _patients(root: ET.Element, patient_ids: Iterable[str]) -> None:
        for pid in dict.fromkeys(p for p in patient_ids if p):
            obj = ET.SubElement(
                root,
                "ParticipantObjectIdentification",
                {
                    "ParticipantObjectID": pid,
                    "ParticipantObjectTypeCode": "1",
                    "ParticipantObjectTypeCodeRole": "1",
                },
            )
            PATIENT_NUMBER.element(obj, "ParticipantObjectIDTypeCode")

    @staticmethod
    def _studies(root: ET.Element, study_uids: Iterable[str], classes: dict[str, int] | None = None) -> None:
        """Each study; with one study, its SOP classes and instance counts (PS3.15 A.5.2.3)."""
        uids = list(dict.fromkeys(u for u in study_uids if u))
        for uid in uids:
            obj = ET.SubElement(
                root,
                "ParticipantObjectIdentification",
                {
                    "ParticipantObjectID": uid,
                    "ParticipantObjectTypeCode": "2",
                    "ParticipantObjectTypeCodeRole": "3",
                },
            )
            STUDY_INSTANCE_UID.element(obj, "ParticipantObjectIDTypeCode")
            if classes and len(uids) == 1:
                desc = ET.SubElement(obj, "ParticipantObjectDescription")
                for sop_class, count in sorted(classes.items()):
                    ET.SubElement(desc, "SOPClass", {"UID": sop_class, "NumberOfInstances": str(count)})

    def build(self, event: events.Event, context: dict[str, object] | None = None) -> ET.Element | None:
        """The message for ``event`` (None for events PS3.15 has no message for), made by its
        builder in :attr:`_BUILDERS`. ``context``: what :class:`AtnaSubscriber` kept of the job
        (its JobStarted, studies, patients, SOP classes); a job's messages need it."""
        for cls in type(event).__mro__:
            builder = self._BUILDERS.get(cls)
            if builder is not None:
                return builder(self, event, context)
        return None

    # --- one builder per event type (the table below) -------------------------------------------

    def _application_activity(
        self, event: events.ProcessStarted | events.ProcessStopped, context: object
    ) -> ET.Element:
        start = isinstance(event, events.ProcessStarted)
        root = self._message(
            APPLICATION_ACTIVITY, "E", event.time, SUCCESS, APPLICATION_START if start else APPLICATION_STOP
        )
        self._ourselves(root, False, ROLE_APPLICATION)
        self._source(root)
        return root

    def _login(self, event: events.AssociationAccepted, context: object) -> ET.Element:
        root = self._message(USER_AUTHENTICATION, "E", event.time, SUCCESS, LOGIN)
        self._peer(root, event.peer)
        self._ourselves(root, False, None)
        self._source(root)
        return root

    def _security_alert(self, event: events.AssociationRejected, context: object) -> ET.Element:
        root = self._message(SECURITY_ALERT, "E", event.time, MINOR_FAILURE, NODE_AUTHENTICATION)
        self._peer(root, event.peer)
        self._ourselves(root, False, None)
        self._source(root)
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": event.peer.address,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "13",  # Security Resource
            },
        )
        NODE_ID.element(obj, "ParticipantObjectIDTypeCode")
        ET.SubElement(
            obj, "ParticipantObjectDetail", {"type": "Alert Description", "value": _b64(event.reason)}
        )
        return root

    def _configuration(self, event: events.ConfigReloaded, context: object) -> ET.Element:
        """A reload (PS3.15 A.5.3.11 Security Alert, Software Configuration): we report it, the
        config file is the alert's subject; its description names keys, never their values."""
        outcome = SUCCESS if event.applied else MINOR_FAILURE
        root = self._message(SECURITY_ALERT, "E", event.time, outcome, SOFTWARE_CONFIGURATION)
        self._ourselves(root, True, None)
        self._source(root)
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": event.path,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "13",  # Security Resource
            },
        )
        URI.element(obj, "ParticipantObjectIDTypeCode")
        if event.applied:
            text = f"reload applied: {', '.join(event.changed) or 'no change'}"
            text += f"; needs a restart: {', '.join(event.restart)}" if event.restart else ""
        else:
            text = f"reload refused: {event.error}"
        ET.SubElement(obj, "ParticipantObjectDetail", {"type": "Alert Description", "value": _b64(text)})
        return root

    def _query(self, event: events.FindDone, context: object) -> ET.Element:
        outcome = SUCCESS if event.status in (Status.SUCCESS, Status.CANCEL) else SERIOUS_FAILURE
        root = self._message(QUERY, "E", event.time, outcome)
        self._peer(root, event.peer, ROLE_SOURCE)
        self._ourselves(root, False, ROLE_DESTINATION)
        self._source(root)
        sop = PATIENT_ROOT_FIND if event.model == "PATIENT" else STUDY_ROOT_FIND
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": sop,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        SOP_CLASS_UID.element(obj, "ParticipantObjectIDTypeCode")
        query = "\n".join(f"{k}={v}" for k, v in event.keys.items())
        ET.SubElement(obj, "ParticipantObjectQuery").text = _b64(query)
        ET.SubElement(obj, "ParticipantObjectDetail", {"type": "QueryEncoding", "value": _b64("UTF-8")})
        self._patients(root, _split(event.keys.get("PatientID", "")))
        return root

    def _begin_transferring(
        self, event: events.JobResolved, context: dict[str, object] | None
    ) -> ET.Element | None:
        if context is None:
            return None
        started = cast(events.JobStarted, context["started"])
        root = self._transfer(BEGIN_TRANSFERRING, "E", event.time, SUCCESS, started.destination, started.peer)
        self._studies(root, event.study_uids)
        self._patients(root, _job_patients(started, context))
        return root

    def _interrupted(self, event: events.JobInterrupted, context: object) -> ET.Element:
        # the process ended during the job (found at the next start): some instances may have
        # been sent (minor failure) or none (serious failure), PS3.15 A.5.3.4 / A.5.1
        outcome = MINOR_FAILURE if event.instances else SERIOUS_FAILURE
        root = self._transfer(INSTANCES_TRANSFERRED, "R", event.time, outcome, event.destination, event.peer)
        self._studies(root, event.study_uids)
        self._patients(root, event.patient_ids)
        return root

    def _transferred(self, event: events.JobFinished, context: dict[str, object] | None) -> ET.Element | None:
        if context is None:
            return None
        started = cast(events.JobStarted, context["started"])
        studies = cast(tuple[str, ...], context.get("studies", ()))
        classes = cast(dict[str, int], context.get("classes", {}))
        outcome = {"success": SUCCESS, "partial": MINOR_FAILURE, "empty": SUCCESS}.get(
            event.outcome, SERIOUS_FAILURE
        )
        root = self._transfer(
            INSTANCES_TRANSFERRED, "R", event.time, outcome, started.destination, started.peer
        )
        self._studies(root, studies or tuple(_split(started.keys.get("StudyInstanceUID", ""))), classes)
        self._patients(root, _job_patients(started, context))
        return root

    def _correction_found(self, event: events.CorrectionFound, context: object) -> ET.Element:
        """The RIS corrected an exam after delivery (IOCM): Procedure Record, Update (PS3.15
        A.5.3.11); the study and both patient IDs."""
        root = self._message(PROCEDURE_RECORD, "U", event.time, SUCCESS)
        self._ourselves(root, False, ROLE_APPLICATION)
        self._participant(root, event.destination, False, role=ROLE_DESTINATION)
        self._source(root)
        self._studies(root, [event.study_uid, event.relinked_to])
        self._patients(root, [event.old_patient_id, event.new_patient_id])
        return root

    def _correction_sent(self, event: events.CorrectionSent, context: object) -> ET.Element:
        """A rejection note sent (DICOM Instances Transferred, PS3.15 A.5.3.4): the KOS class;
        the corrected copies are a push job of their own, audited as every job."""
        outcome = SUCCESS if event.outcome == "done" else SERIOUS_FAILURE
        root = self._message(INSTANCES_TRANSFERRED, "R", event.time, outcome)
        self._ourselves(root, False, ROLE_SOURCE)
        self._participant(root, event.destination, False, role=ROLE_DESTINATION)
        self._source(root)
        self._studies(root, [event.study_uid], {KOS_SOP_CLASS: 1} if event.note_uid else None)
        self._patients(root, [event.patient_id])
        return root

    #: Event type → its builder (an event of a type not listed has no message).
    _BUILDERS: ClassVar[
        dict[type[events.Event], Callable[[MessageBuilder, Any, dict[str, object] | None], ET.Element | None]]
    ] = {
        events.ProcessStarted: _application_activity,
        events.ProcessStopped: _application_activity,
        events.AssociationAccepted: _login,
        events.AssociationRejected: _security_alert,
        events.ConfigReloaded: _configuration,
        events.FindDone: _query,
        events.JobResolved: _begin_transferring,
        events.JobInterrupted: _interrupted,
        events.JobFinished: _transferred,
        events.CorrectionFound: _correction_found,
        events.CorrectionSent: _correction_sent,
    }

    def _transfer(
        self,
        event_id: Code,
        action: str,
        when: dt.datetime,
        outcome: str,
        destination: str,
        peer: events.Peer,
    ) -> ET.Element:
        """The start of a transfer message (PS3.15 A.5.3.3/A.5.3.4): we are the source, the job's
        destination and the peer that asked participate."""
        root = self._message(event_id, action, when, outcome)
        self._ourselves(root, False, ROLE_SOURCE)
        self._participant(root, destination, False, role=ROLE_DESTINATION)
        self._peer(root, peer, None)
        self._source(root)
        return root

    def _peer(self, root: ET.Element, peer: events.Peer, role: Code | None = None) -> None:
        alternative = peer.tls_identity[:200] if peer.tls_identity else ""
        self._participant(root, peer.calling_ae, True, peer.address, role, alternative)


def _is_ip(address: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


def _job_patients(started: events.JobStarted, context: dict[str, object]) -> list[str]:
    """The job's patients: the PatientID it asked for, then those of the studies it resolved."""
    return [*_split(started.keys.get("PatientID", "")), *cast(tuple, context.get("patients", ()))]


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split("\\") if v.strip()]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _pid() -> int:
    import os

    return os.getpid()


def to_bytes(message: ET.Element) -> bytes:
    return ET.tostring(message, encoding="utf-8", xml_declaration=False)


def syslog_frame(xml: bytes, hostname: str, when: dt.datetime, app: str = "dicomproxy") -> bytes:
    """One RFC 5424 message: ``<85>1 TIMESTAMP HOST APP PROCID MSGID - BOM XML``."""
    header = f"<{PRI}>1 {_time(when)} {hostname or '-'} {app} {_pid()} {MSGID} - ".encode("ascii")
    return header + b"\xef\xbb\xbf" + xml


class SyslogSender:
    """A thread sending frames to ``udp://``, ``tcp://`` or ``tls://HOST:PORT``."""

    def __init__(self, url: str, tls_context: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = int(parts.port or 0)
        self.tls_context = tls_context
        self.timeout = timeout
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_SIZE)
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="atna-syslog", daemon=True)
        self.sent = 0
        self.dropped = 0
        self._warned = False

    def start(self) -> None:
        self._thread.start()

    def send(self, frame: bytes) -> None:
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.dropped += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued (within ``timeout``), then close."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._close()

    def _connect(self) -> socket.socket:
        if self.scheme == "udp":
            return socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.scheme == "tls":
            ctx = self.tls_context or ssl.create_default_context()
            sock = ctx.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _send_one(self, frame: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        if self.scheme == "udp":
            self._sock.sendto(frame, (self.host, self.port))
        else:  # octet counting (RFC 6587 3.4.1, RFC 5425 4.3)
            self._sock.sendall(str(len(frame)).encode("ascii") + b" " + frame)

    def _run(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            for attempt in (1, 2):  # a dropped TCP/TLS connection: reconnect once
                try:
                    self._send_one(frame)
                    self.sent += 1
                    self._warned = False
                    break
                except OSError as exc:
                    self._close()
                    if attempt == 2:
                        self.dropped += 1
                        if not self._warned:
                            LOG.warning("audit syslog %s://%s:%d: %s", self.scheme, self.host, self.port, exc)
                            self._warned = True


class AtnaSubscriber:
    """Events → PS3.15 A.5 messages → syslog."""

    def __init__(self, builder: MessageBuilder, sender: SyslogSender, identities: Any = None) -> None:
        self.builder = builder
        self.sender = sender
        self.identities = identities  # dicomproxy.audit.trail.JobIdentities
        self._jobs: dict[int, dict[str, object]] = {}

    def __call__(self, event: events.Event) -> None:
        context: dict[str, object] | None = None
        if isinstance(event, events.JobStarted):
            self._jobs[event.job_id] = {"started": event}
            return
        if isinstance(event, events.JobResolved):
            context = self._jobs.get(event.job_id)
            if context is None:
                return
            context["studies"] = tuple(event.study_uids)
            if self.identities is not None:
                context["patients"] = self.identities.get(event.job_id)[0]
        elif isinstance(event, events.InstanceSent):
            job = self._jobs.get(event.job_id)
            if job is not None and event.state != "failed" and event.sop_class_uid:
                classes = cast(dict[str, int], job.setdefault("classes", {}))
                classes[event.sop_class_uid] = classes.get(event.sop_class_uid, 0) + 1
            return
        elif isinstance(event, events.JobFinished):
            context = self._jobs.pop(event.job_id, None)
            if context is None:
                return
        message = self.builder.build(event, context)
        if message is not None:
            self.sender.send(syslog_frame(to_bytes(message), self.builder.hostname, event.time))


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """TLS to the syslog server (RFC 5425): verified against ``ca`` (system CAs when empty);
    ``cert``/``key``: our client certificate when the server asks for one."""
    ctx = ssl.create_default_context(cafile=ca or None)
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


def start_atna(config: Config, identities: Any = None) -> AtnaSubscriber:
    """The ATNA sender of ``[audit] syslog``, started and subscribed to the events."""
    audit = config.audit
    ctx = (
        client_context(audit.syslog_ca, audit.syslog_cert, audit.syslog_key)
        if audit.syslog.startswith("tls:")
        else None
    )
    sender = SyslogSender(audit.syslog, ctx)
    sender.start()
    host = socket.gethostname()
    builder = MessageBuilder(config.proxy.ae_title, host, f"{config.proxy.ae_title}@{host}")
    subscriber = AtnaSubscriber(builder, sender, identities)
    events.subscribe(subscriber)
    return subscriber

"""DICOM audit messages over syslog (issue 15): a real rsyslogd (Debian's, started here on free
ports) receives the PS3.15 A.5 messages of real traffic over UDP, TCP and TLS (RFC 5424/5425);
every message is validated against the A.5.1 structure (tests/data/dicom-audit-message.rng) and
checked for what A.5.3 asks of its event (roles, participant objects)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from pydicom.dataset import Dataset

from dicomproxy.config import Config
from dicomproxy.errors import ConfigError
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.findscu import run_find
from dicomproxy.transport.net import Remote, c_echo
from testkit import wait_until
from testkit.orthanc import Orthanc
from testkit.rsyslog import Rsyslog
from testkit.samples import demo_specs
from tests.conftest import ConfigFactory, _need

CT, MR, US, MF = demo_specs()
SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parent / "data" / "dicom-audit-message.rng")))
BOM = "\ufeff"


@pytest.fixture
def rsyslog(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Rsyslog]:
    _need("rsyslogd")
    daemon = Rsyslog(
        tmp_path / "rsyslog", cert=pki["server_crt"], key=pki["server_key"], ca=pki["ca"]
    ).start()
    yield daemon
    daemon.stop()


def parse(line: str) -> tuple[list[str], etree._Element]:
    """An RFC 5424 line → (header fields, the AuditMessage)."""
    header, _, xml = line.partition(" - " + BOM)
    fields = header.split(" ")
    return fields, etree.fromstring(xml.encode("utf-8"))


def codes(msg: etree._Element, path: str) -> list[str]:
    return [e.get("csd-code") for e in msg.iterfind(path)]


def roles(msg: etree._Element) -> dict[str, etree._Element]:
    out = {}
    for p in msg.iterfind("ActiveParticipant"):
        for r in p.iterfind("RoleIDCode"):
            out[r.get("csd-code")] = p
    return out


def objects(msg: etree._Element, id_type: str) -> list[etree._Element]:
    return [
        o
        for o in msg.iterfind("ParticipantObjectIdentification")
        if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type
    ]


def check_a53(msg: etree._Element) -> str:
    """What PS3.15 A.5.3 asks of each message kind; returns the EventID code."""
    event_id = msg.find("EventIdentification/EventID").get("csd-code")
    type_codes = codes(msg, "EventIdentification/EventTypeCode")
    action = msg.find("EventIdentification").get("EventActionCode")
    if event_id == "110100":  # A.5.3.1 Application Activity
        assert type_codes in (["110120"], ["110121"]) and action == "E"
        assert "110150" in roles(msg)  # the application itself
        assert roles(msg)["110150"].get("UserIsRequestor") == "false"
    elif event_id == "110114":  # A.5.3.x User Authentication: Login
        assert type_codes == ["110122"]
        # the peer logs in: it is the one requestor, we are not
        assert [p.get("UserIsRequestor") for p in msg.iterfind("ActiveParticipant")].count("true") == 1
    elif event_id == "110113" and type_codes == ["110131"]:  # Security Alert: a reload of the config
        (subject,) = objects(msg, "12")
        assert subject.get("ParticipantObjectTypeCodeRole") == "13"
        assert [p.get("UserIsRequestor") for p in msg.iterfind("ActiveParticipant")] == ["true"]
    elif event_id == "110113":  # A.5.3.x Security Alert
        assert type_codes == ["110126"]
        (node,) = objects(msg, "110182")
        assert node.get("ParticipantObjectTypeCodeRole") == "13"
        assert [p.get("UserIsRequestor") for p in msg.iterfind("ActiveParticipant")].count("true") == 1
    elif event_id == "110112":  # A.5.3.x Query: requestor = Source, we = Destination, the SOP class + query
        assert action == "E"
        r = roles(msg)
        assert r["110153"].get("UserIsRequestor") == "true" and r["110152"].get("UserIsRequestor") == "false"
        (sop,) = objects(msg, "110181")
        assert sop.get("ParticipantObjectTypeCode") == "2" and sop.get("ParticipantObjectTypeCodeRole") == "3"
        assert sop.find("ParticipantObjectQuery") is not None
    elif event_id in ("110102", "110104"):  # Begin Transferring / DICOM Instances Transferred
        assert action == ("E" if event_id == "110102" else "R")
        r = roles(msg)
        assert {"110153", "110152"} <= set(r)
        # the requestor is the peer that asked (no role of its own), never we (Source) or the Destination
        assert r["110153"].get("UserIsRequestor") == "false" and r["110152"].get("UserIsRequestor") == "false"
        requestors = [p for p in msg.iterfind("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
        assert len(requestors) == 1 and requestors[0].find("RoleIDCode") is None
        studies = objects(msg, "110180")
        assert studies and all(s.get("ParticipantObjectTypeCode") == "2" for s in studies)
        (patient,) = objects(msg, "2")
        assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == (
            "1",
            "1",
        )
    else:
        raise AssertionError(f"unexpected EventID {event_id}")
    return event_id


@pytest.mark.orthanc
@pytest.mark.dcmtk
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_audit_messages_reach_rsyslog(
    transport: str,
    rsyslog: Rsyslog,
    pki: dict[str, Path],
    orthanc: Orthanc,
    sqlite_view: Any,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    storescp: Callable[..., Any],
) -> None:
    port = {"udp": rsyslog.udp_port, "tcp": rsyslog.tcp_port, "tls": rsyslog.tls_port}[transport]
    audit: dict[str, Any] = {"syslog": f"{transport}://127.0.0.1:{port}"}
    if transport == "tls":
        audit["syslog_ca"] = str(pki["ca"])
    dest = storescp("DEST")
    r = orthanc.remote
    config = make_config(
        pacs={"ae_title": r.ae_title, "host": r.host, "port": r.port, "retrieve": "c-get"},
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1},
            {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.port},
        ],
        audit=audit,
    )
    server = run_proxy(config)
    proxy = Remote("DICOMPROXY", "127.0.0.1", server.port)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = CT.patient.patient_id
    q.StudyInstanceUID = ""
    assert run_find("jobserver", proxy, "study", q).status == 0
    m = Dataset()
    m.QueryRetrieveLevel = "STUDY"
    m.StudyInstanceUID = CT.study_uid
    assert scu.move(proxy, "DEST", m, calling_ae="jobserver").completed == 10
    assert not c_echo("STRANGER", proxy).ok
    server.stop(drain_timeout=2.0)  # Application Stop; the sender empties its queue before it closes

    # start, 2 logins (find, move), query, begin, transferred, security alert, stop
    wait_until(lambda: len(rsyslog.messages(transport)) >= 8, 30, f"8 audit messages over {transport}")
    seen = []
    for line in rsyslog.messages(transport):
        fields, msg = parse(line)
        assert fields[0] == "<85>1" and fields[3] == "dicomproxy" and fields[5] == "DICOM+RFC3881"
        SCHEMA.assertValid(msg)
        seen.append(check_a53(msg))
    assert seen[0] == "110100" and seen[-1] == "110100"
    lines = rsyslog.messages(transport)
    start, stop = parse(lines[0])[1], parse(lines[-1])[1]
    assert codes(start, "EventIdentification/EventTypeCode") == ["110120"]  # Application Start
    assert codes(stop, "EventIdentification/EventTypeCode") == ["110121"]  # Application Stop
    assert sorted(seen) == sorted(
        ["110100", "110114", "110112", "110114", "110102", "110104", "110113", "110100"]
    )

    by_id = {}
    for line in rsyslog.messages(transport):
        _, msg = parse(line)
        by_id[msg.find("EventIdentification/EventID").get("csd-code")] = msg
    query = by_id["110112"]
    assert query.find("EventIdentification").get("EventOutcomeIndicator") == "0"  # the C-FIND succeeded
    (sop_class,) = objects(query, "110181")
    assert sop_class.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND
    text = base64.b64decode(
        query.find("ParticipantObjectIdentification/ParticipantObjectQuery").text
    ).decode()
    assert f"PatientID={CT.patient.patient_id}" in text
    done = by_id["110104"]
    (study,) = objects(done, "110180")
    assert study.get("ParticipantObjectID") == CT.study_uid
    (sop,) = study.iterfind("ParticipantObjectDescription/SOPClass")
    assert sop.get("NumberOfInstances") == "10"
    assert objects(done, "2")[0].get("ParticipantObjectID") == CT.patient.patient_id
    assert roles(done)["110152"].get("UserID") == "DEST"


def test_job_events_without_their_start_make_no_message() -> None:
    """A job's Resolved/Finished event whose JobStarted was not seen (e.g. the subscriber started
    mid-job) has no requestor to name: no message rather than a half one."""
    from dicomproxy import events
    from dicomproxy.audit.atna import MessageBuilder

    builder = MessageBuilder("DICOMPROXY", "host", "dicomproxy@host")
    finished = events.JobFinished(
        job_id=1,
        kind="move",
        outcome="success",
        status=0,
        completed=1,
        failed=0,
        warning=0,
        bytes_out=1,
        seconds=1,
    )
    assert builder.build(finished, None) is None
    assert builder.build(events.JobResolved(job_id=1, level="STUDY", study_uids=("1.2.3",)), None) is None


@pytest.mark.parametrize("applied", [True, False])
def test_a_reload_is_a_security_alert(applied: bool) -> None:
    """A reload of the config (docs/operations.md, Reload): Security Alert, Software Configuration,
    the file as its subject; the keys named, no value."""
    from dicomproxy import events
    from dicomproxy.audit.atna import MessageBuilder, to_bytes

    builder = MessageBuilder("DICOMPROXY", "host", "dicomproxy@host")
    event = events.ConfigReloaded(
        "/etc/dicomproxy/dicomproxy.toml",
        applied,
        changed=("peers",) if applied else (),
        restart=("proxy.port",) if applied else (),
        error="" if applied else "/etc/dicomproxy/dicomproxy.toml: compression.mode: must be one of none",
    )
    message = builder.build(event, None)
    assert message is not None
    msg = etree.fromstring(to_bytes(message))
    assert SCHEMA.validate(msg), SCHEMA.error_log
    assert check_a53(msg) == "110113"
    assert msg.find("EventIdentification").get("EventOutcomeIndicator") == ("0" if applied else "4")
    detail = base64.b64decode(
        msg.find("ParticipantObjectIdentification/ParticipantObjectDetail").get("value")
    )
    expected = "reload applied: peers; needs a restart: proxy.port" if applied else "reload refused: "
    assert detail.decode().startswith(expected)


def test_schema_rejects_a_malformed_message() -> None:
    """The schema is not vacuous: a message without AuditSourceIdentification fails."""
    bad = etree.fromstring(
        b'<AuditMessage><EventIdentification EventActionCode="E" EventDateTime="2026-01-01T00:00:00Z"'
        b' EventOutcomeIndicator="0"><EventID csd-code="110112" codeSystemName="DCM" originalText="Query"/>'
        b'</EventIdentification><ActiveParticipant UserID="X" UserIsRequestor="true"/></AuditMessage>'
    )
    assert not SCHEMA.validate(bad)


@pytest.mark.parametrize(
    "url", ["syslog://h:1", "udp://:514", "tcp://host", "tls//host:6514", "udp://h:99999"]
)
def test_syslog_url_errors_name_the_key(make_config: ConfigFactory, url: str) -> None:
    with pytest.raises(ConfigError, match=r"audit\.syslog"):
        make_config(audit={"syslog": url})


@pytest.mark.parametrize("sent", [3, 0])
def test_a_job_the_process_died_in_gets_its_transfer_message_at_the_next_start(
    sent: int,
    rsyslog: Rsyslog,
    sqlite_view: Any,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
) -> None:
    """A C-MOVE whose process was killed never sent its DICOM Instances Transferred message; the
    next start finds it (the journal says interrupted, the audit trail has no row yet) and sends
    it: EventOutcomeIndicator 4 (minor failure) when some instances were confirmed, 8 when none
    (PS3.15 A.5.3.4), with the study, the patient (from the exam view) and both AEs."""
    from dicomproxy.relay.journal import InstanceRecord, Journal
    from dicomproxy.relay.recovery import reconcile
    from dicomproxy.status import JobKind

    config = make_config(
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1},
            {"ae_title": "DEST", "host": "127.0.0.1", "port": 1},
        ],
        audit={"syslog": f"udp://127.0.0.1:{rsyslog.udp_port}"},
    )
    journal = Journal.for_config("", config.data_path)  # what the killed process left behind
    job = journal.start(JobKind.MOVE, "jobserver", "127.0.0.1", "DEST", "pacs")
    journal.update(job, level="STUDY", study_uids=[CT.study_uid], expected=10)
    journal.add_instances(job, [InstanceRecord(CT.sop_uid(0, i), "sent") for i in range(sent)])
    assert reconcile(config, journal).interrupted == [job]  # what `serve` does before it starts
    journal.close()

    run_proxy(config)

    def transferred() -> list[etree._Element]:
        found = []
        for line in rsyslog.messages("udp"):
            _, msg = parse(line)
            if msg.find("EventIdentification/EventID").get("csd-code") == "110104":
                found.append(msg)
        return found

    wait_until(lambda: bool(transferred()), 30, "the interrupted job's Instances Transferred message")
    (msg,) = transferred()
    SCHEMA.assertValid(msg)
    assert check_a53(msg) == "110104"
    outcome = msg.find("EventIdentification").get("EventOutcomeIndicator")
    assert outcome == ("4" if sent else "8")
    (study,) = objects(msg, "110180")
    assert study.get("ParticipantObjectID") == CT.study_uid
    assert [o.get("ParticipantObjectID") for o in objects(msg, "2")] == [CT.patient.patient_id]
    assert roles(msg)["110152"].get("UserID") == "DEST"
    requestor = [p for p in msg.iterfind("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert [p.get("UserID") for p in requestor] == ["jobserver"]
    # the audit trail's row of the job counts what the destination confirmed before the crash
    import json

    from dicomproxy.audit.trail import AuditTrail

    journal = Journal.for_config("", config.data_path)
    try:
        (row,) = [r for r in AuditTrail(journal.engine).rows(study=CT.study_uid) if r["job_id"] == job]
    finally:
        journal.close()
    assert (row["action"], row["outcome"]) == ("move", "interrupted")
    detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
    assert detail["instances"] == sent


@pytest.mark.orthanc
@pytest.mark.parametrize(("refused", "outcome", "indicator"), [(3, "partial", "4"), (10, "failed", "8")])
def test_a_finished_job_with_failed_sub_operations_is_not_reported_as_success(
    refused: int,
    outcome: str,
    indicator: str,
    rsyslog: Rsyslog,
    orthanc: Orthanc,
    sqlite_view: Any,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
) -> None:
    """A C-MOVE whose destination refuses some instances ends partial (0xB000): its DICOM Instances
    Transferred message says minor failure (4); refusing all of them, serious failure (8)
    (PS3.15 A.5.1 EventOutcomeIndicator, A.5.3.4)."""
    from testkit.fakepacs import FakeDestination

    dest = FakeDestination("DEST")
    uids = [CT.sop_uid(s, i) for s in range(CT.series) for i in range(CT.images_per_series)]
    dest.behaviour.reject = {uid: 0xC000 for uid in uids[:refused]}  # a failure not retried
    dest.start()
    try:
        r = orthanc.remote
        config = make_config(
            pacs={"ae_title": r.ae_title, "host": r.host, "port": r.port, "retrieve": "c-get"},
            peers=[
                {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1},
                {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.port},
            ],
            audit={"syslog": f"udp://127.0.0.1:{rsyslog.udp_port}"},
        )
        server = run_proxy(config)
        m = Dataset()
        m.QueryRetrieveLevel = "STUDY"
        m.AccessionNumber = CT.accession  # the study is named by the view, not by the request
        result = scu.move(Remote("DICOMPROXY", "127.0.0.1", server.port), "DEST", m, calling_ae="jobserver")
        assert (result.completed, result.failed) == (10 - refused, refused), result.line()
        assert result.status == (0xB000 if refused < 10 else 0xA702), result.line()
    finally:
        dest.stop()

    def transferred() -> list[etree._Element]:
        found = []
        for line in rsyslog.messages("udp"):
            _, msg = parse(line)
            if msg.find("EventIdentification/EventID").get("csd-code") == "110104":
                found.append(msg)
        return found

    wait_until(lambda: bool(transferred()), 30, "the job's Instances Transferred message")
    (msg,) = transferred()
    SCHEMA.assertValid(msg)
    assert check_a53(msg) == "110104"
    got = msg.find("EventIdentification").get("EventOutcomeIndicator")
    assert got == indicator, f"a {outcome} job reported as EventOutcomeIndicator {got}"
    assert roles(msg)["110152"].get("UserID") == "DEST"
    assert [o.get("ParticipantObjectID") for o in objects(msg, "110180")] == [CT.study_uid]

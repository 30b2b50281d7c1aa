"""What a correction after delivery leaves behind (docs/identity.md): the audit trail's rows (the
patient IDs there, never in the log), its DICOM audit messages (PS3.15 A.5, validated against the
schema), the ``/metrics`` counter, and the ``reconcile`` line. The detection and the sending are
tested end to end in tests/test_iocm_real.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from lxml import etree
from sqlalchemy import create_engine

from dicomproxy import events
from dicomproxy.audit.atna import MessageBuilder, to_bytes
from dicomproxy.audit.trail import Action, AuditSubscriber, AuditTrail
from dicomproxy.cli import cli
from dicomproxy.cli.reconcile import corrections_not_done
from dicomproxy.console.metrics import Metrics
from dicomproxy.corrections.store import CorrectionStore
from dicomproxy.identity import Identity
from dicomproxy.identity.corrections import decide
from dicomproxy.relay.journal import Journal
from tests.conftest import ConfigFactory, push_cli_toml
from tests.test_atna import SCHEMA

FOUND = events.CorrectionFound(
    destination="CLOUD",
    study_uid="1.2.840.99.7",
    kind="identity-corrected",
    changed=("patient_id",),
    acted=False,
    old_patient_id="P-OLD",
    new_patient_id="P-NEW",
)
SENT = events.CorrectionSent("CLOUD", "1.2.840.99.7", "row-withdrawn", "done", 3, 0, "2.25.1", "P-NEW")


def _message(event: events.Event) -> etree._Element:
    xml = MessageBuilder("DICOMPROXY", "host", "dicomproxy@host").build(event, None)
    assert xml is not None
    root = etree.fromstring(to_bytes(xml))
    assert SCHEMA.validate(root), SCHEMA.error_log
    return root


def test_atna_procedure_record_update_names_both_patients_and_the_study() -> None:
    root = _message(FOUND)
    ident = root.find("EventIdentification")
    assert ident is not None and ident.get("EventActionCode") == "U"
    assert ident.find("EventID").get("csd-code") == "110111"  # type: ignore[union-attr]
    objects = {o.get("ParticipantObjectID") for o in root.iter("ParticipantObjectIdentification")}
    assert objects == {"P-OLD", "P-NEW", "1.2.840.99.7"}


def test_atna_rejection_note_is_an_instances_transferred_message() -> None:
    root = _message(SENT)
    assert root.find("EventIdentification/EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    classes = [c.get("UID") for c in root.iter("SOPClass")]
    assert classes == ["1.2.840.10008.5.1.4.1.1.88.59"]
    failed = _message(events.CorrectionSent("CLOUD", "1.2.840.99.7", "row-withdrawn", "failed"))
    assert failed.find("EventIdentification").get("EventOutcomeIndicator") != "0"  # type: ignore[union-attr]


def test_audit_rows_hold_the_patient_ids() -> None:
    trail = AuditTrail(create_engine("sqlite://"))
    subscriber = AuditSubscriber(trail)
    subscriber(FOUND)
    subscriber(SENT)
    subscriber.end_batch()  # as the events bus does after a batch: the records are written now
    rows = [r for r in trail.rows() if r["action"] == Action.CORRECTION]
    assert [r["outcome"] for r in rows] == ["warned", "done"]
    assert "P-OLD" in rows[0]["patient_ids"] and "P-NEW" in rows[0]["patient_ids"]
    assert rows[0]["study_uids"].strip() == "1.2.840.99.7" and rows[0]["destination"] == "CLOUD"
    assert '"changed": ["patient_id"]' in rows[0]["detail"]


def test_metrics_count_corrections_by_destination_kind_and_outcome(make_config: ConfigFactory) -> None:
    metrics = Metrics(make_config(), lambda: 0, lambda: 0, lambda: 0)
    metrics(FOUND)
    metrics(SENT)
    metrics(SENT)
    text = metrics.exposition().decode()
    assert (
        'dicomproxy_corrections_total{destination="CLOUD",kind="identity-corrected",outcome="warned"} 1.0'
        in text
    )
    assert 'dicomproxy_corrections_total{destination="CLOUD",kind="row-withdrawn",outcome="done"} 2.0' in text


def test_reconcile_lists_what_is_not_corrected_without_patient_data() -> None:
    journal = Journal("sqlite://")
    store = CorrectionStore(journal.engine, "node")
    old = Identity("1.2.840.99.7", "P-OLD", "", "王^小东", "19800101", "M", "A1", "H")
    new = Identity("1.2.840.99.7", "P-NEW", "", "王^小东", "19800101", "M", "A1", "H")
    correction = decide(old, new)
    assert correction is not None
    assert store.record("CLOUD", correction, iocm=False)
    assert not store.record("CLOUD", correction, iocm=False)  # a second node, a second pass
    assert store.record("OTHER", correction, iocm=True)
    lines = corrections_not_done(journal, ["CLOUD"])
    assert lines == ["correction warned: study 1.2.840.99.7 at CLOUD: identity-corrected (patient_id)"]
    assert not any("P-OLD" in line or "P-NEW" in line for line in lines)
    assert store.counts() == {
        ("CLOUD", "identity-corrected", "warned"): 1,
        ("OTHER", "identity-corrected", "due"): 1,
    }


@pytest.mark.parametrize("db", ["sqlite", "postgresql", "mariadb"])
def test_two_nodes_claim_a_correction_once(db: str, request: pytest.FixtureRequest) -> None:
    """On each journal database: one node inserts, one claims; the other gets nothing."""
    url = (
        "sqlite://"
        if db == "sqlite"
        else request.getfixturevalue(f"{'pg' if db == 'postgresql' else db}_journal")
    )
    journal = Journal(url)
    one, two = CorrectionStore(journal.engine, "node-1"), CorrectionStore(journal.engine, "node-2")
    old = Identity("1.2.840.99.8", "P-OLD", "", "", "", "", "", "")
    correction = decide(old, None)
    assert correction is not None and one.record("CLOUD", correction, iocm=True)
    row = one.claim(60)
    assert row is not None and row.owner == "node-1" and row.attempts == 1
    assert two.claim(60) is None  # running, its lease alive
    assert not two.update(row.id, error="x")  # not ours
    assert not two.record("CLOUD", correction, iocm=True)  # the unique key: one row
    assert one.finish(row.id, "done")
    assert one.claim(60) is None and two.claim(60) is None
    assert one.counts() == {("CLOUD", "row-withdrawn", "done"): 1}
    journal.close()


def test_push_status_counts_corrections_per_destination(tmp_path: Path) -> None:
    toml = push_cli_toml(tmp_path)
    journal = Journal.for_config("", tmp_path / "var")
    store = CorrectionStore(journal.engine, "node")
    old = Identity("1.2.840.99.9", "P-OLD", "", "", "", "", "", "")
    for new_id in ("P-A", "P-B"):
        correction = decide(old, dataclasses.replace(old, patient_id=new_id))
        assert correction is not None
        store.record("CLOUD", dataclasses.replace(correction, old_digest=new_id), iocm=False)
    journal.close()
    out = CliRunner().invoke(cli, ["push", "status", "--json", "-c", str(toml)])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["destinations"]["CLOUD"]["corrections"] == {
        "warned": 2,
        "due": 0,
        "running": 0,
        "done": 0,
        "failed": 0,
    }
    text = CliRunner().invoke(cli, ["push", "status", "-c", str(toml)]).output
    assert "corrections after delivery, CLOUD: warned=2" in text

"""The decisions of corrections after delivery (dicomproxy/identity/corrections.py), the rejection
note (identity/rejection.py, checked by dciodvfy) and the corrected copy's UID (identity/copies.py).
End to end at an Orthanc cloud: tests/test_iocm_real.py."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from dicomproxy.config import UniversalId
from dicomproxy.identity import Identity
from dicomproxy.identity.copies import CORRECT_REASON, copy_of
from dicomproxy.identity.corrections import (
    IDENTIFYING,
    INCORRECT_WORKLIST_ENTRY,
    PATIENT_SAFETY,
    QUALITY,
    Kind,
    corrected_uid,
    decide,
    held_as_listed,
    name_key,
    note_series_uid,
    note_uid,
    revised,
)
from dicomproxy.identity.rejection import KOS_SOP_CLASS, Delivered, rejection_note
from dicomproxy.view.uids import is_valid_uid
from tests.conftest import _need

OLD = Identity(
    study_uid="1.2.840.99.1",
    patient_id="P1",
    issuer="74580626.HIS",
    patient_name="=王小东",
    birth_date="19800101",
    sex="M",
    accession="ACC1",
    institution="温岭市第一人民医院",
    issuer_uid=UniversalId("1.2.156.112604.1", "ISO"),
    accession_issuer=None,
)

texts = st.text(alphabet="ABCDEFGHIJ0123456789王李小东=^", min_size=1, max_size=12).filter(
    lambda t: t.strip("=^")
)
uids = st.lists(st.integers(1, 99999), min_size=2, max_size=8).map(lambda p: "1.2." + ".".join(map(str, p)))


def _with(field: str, value: str) -> Identity:
    if field in ("issuer_uid", "accession_issuer"):
        return dataclasses.replace(
            OLD, **{field: UniversalId(f"1.2.{len(value)}.{abs(hash(value)) % 999}", "ISO")}
        )
    return dataclasses.replace(OLD, **{field: value})


def test_the_same_identity_needs_nothing() -> None:
    assert decide(OLD, OLD) is None
    assert decide(OLD, dataclasses.replace(OLD, institution="another name")) is None  # not an identifier


@given(field=st.sampled_from(IDENTIFYING), value=texts)
def test_one_identifier_changed_is_an_identity_correction(field: str, value: str) -> None:
    new = _with(field, value)
    got = decide(OLD, new)
    key = name_key if field == "patient_name" else (lambda v: v)
    if key(getattr(new, field)) == key(getattr(OLD, field)):
        assert got is None
        return
    assert got is not None
    assert got.kind is Kind.IDENTITY and got.changed == (field,)
    assert got.old_digest == OLD.digest and got.new_digest == new.digest
    assert got.title == INCORRECT_WORKLIST_ENTRY and got.resends


@pytest.mark.parametrize("field", [f for f in IDENTIFYING if f not in ("issuer_uid", "accession_issuer")])
def test_an_emptied_view_cell_is_no_correction(field: str) -> None:
    assert decide(OLD, dataclasses.replace(OLD, **{field: ""})) is None
    if field == "issuer":
        assert decide(OLD, dataclasses.replace(OLD, issuer_uid=None)) is None


def test_no_visible_row_is_a_withdrawal_and_a_new_uid_a_relink() -> None:
    gone = decide(OLD, None)
    assert gone is not None and gone.kind is Kind.WITHDRAWN and gone.new_digest == ""
    assert gone.title == PATIENT_SAFETY and not gone.resends
    moved = decide(OLD, None, relinked_to="1.2.840.99.2")
    assert moved is not None and moved.kind is Kind.RELINKED and moved.relinked_to == "1.2.840.99.2"
    assert moved.title == INCORRECT_WORKLIST_ENTRY and not moved.resends
    same = decide(OLD, None, relinked_to=OLD.study_uid)  # the exam still names this study: withdrawn
    assert same is not None and same.kind is Kind.WITHDRAWN
    with pytest.raises(ValueError, match="two studies"):
        decide(OLD, dataclasses.replace(OLD, study_uid="1.2.3"))


def test_fingerprints_tell_corrections_apart_and_repeat() -> None:
    a = decide(OLD, _with("patient_id", "P2"))
    b = decide(OLD, _with("patient_id", "P3"))
    c = decide(OLD, None)
    assert a is not None and b is not None and c is not None
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    assert a.fingerprint == decide(OLD, _with("patient_id", "P2")).fingerprint  # type: ignore[union-attr]
    assert len(a.fingerprint) == 32


@given(old=uids, one=st.text(min_size=1, max_size=40), two=st.text(min_size=1, max_size=40))
def test_corrected_uids_are_valid_new_and_deterministic(old: str, one: str, two: str) -> None:
    uid = corrected_uid(old, one)
    assert is_valid_uid(uid) and len(uid) <= 64 and uid.startswith("2.25.")
    assert uid != old and uid == corrected_uid(old, one)
    if one != two:
        assert uid != corrected_uid(old, two)
    assert is_valid_uid(note_uid(old, one, "CLOUD")) and is_valid_uid(note_series_uid(old))
    assert note_uid(old, one, "CLOUD") != note_uid(old, one, "OTHER")


def test_copy_keeps_the_old_uid_in_original_attributes() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.840.99.1.1.1"
    new = copy_of(ds, "f" * 32, system="DICOMPROXY")
    assert new == corrected_uid("1.2.840.99.1.1.1", "f" * 32) == ds.SOPInstanceUID
    (item,) = ds.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == CORRECT_REASON
    assert item.ModifiedAttributesSequence[0].SOPInstanceUID == "1.2.840.99.1.1.1"
    assert item.ModifyingSystem == "DICOMPROXY"


def test_rejection_note_references_exactly_the_instances_and_passes_dciodvfy(tmp_path: Path) -> None:
    _need("dciodvfy")
    refs = [
        Delivered("1.2.840.10008.5.1.4.1.1.2", "1.2.840.99.1.1", "1.2.840.99.1.1.1"),
        Delivered("1.2.840.10008.5.1.4.1.1.2", "1.2.840.99.1.1", "1.2.840.99.1.1.2"),
        Delivered("1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.99.1.2", "1.2.840.99.1.2.1"),
    ]
    note = rejection_note(
        OLD,
        refs,
        PATIENT_SAFETY,
        sop_instance_uid=note_uid(OLD.study_uid, "x", "CLOUD"),
        series_uid=note_series_uid(OLD.study_uid),
        manufacturer="dicomproxy",
    )
    assert note.SOPClassUID == KOS_SOP_CLASS
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113037",
        "DCM",
        "Rejected for Patient Safety Reasons",
    )
    (study,) = note.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == OLD.study_uid
    got = {
        (str(series.SeriesInstanceUID), str(sop.ReferencedSOPClassUID), str(sop.ReferencedSOPInstanceUID))
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert got == {(r.series_uid, r.sop_class_uid, r.sop_instance_uid) for r in refs}
    assert (note.PatientID, note.PatientName, note.IssuerOfPatientID) == ("P1", "=王小东", "74580626.HIS")
    assert note.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.156.112604.1"
    assert note.SpecificCharacterSet == "ISO_IR 192"
    path = tmp_path / "note.dcm"
    note.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    assert [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")] == []
    with pytest.raises(ValueError, match="at least one"):
        rejection_note(
            OLD, [], PATIENT_SAFETY, sop_instance_uid="1.2.3", series_uid="1.2.4", manufacturer="x"
        )


def test_reconcile_counts_a_corrected_copy_as_its_pacs_instance() -> None:
    listed = {"1.2.3.1", "1.2.3.2", "1.2.3.3"}
    fp = "a" * 32
    copy1, copy2 = corrected_uid("1.2.3.1", fp), corrected_uid("1.2.3.2", fp)
    # the cloud deleted the rejected originals and holds the copies, and one original never corrected
    assert held_as_listed(listed, {copy1, copy2, "1.2.3.3"}, [fp]) == listed
    # without a correction nothing is translated; an unknown UID stays what it is
    assert held_as_listed(listed, {copy1, "9.9"}, []) == {copy1, "9.9"}
    assert held_as_listed(listed, {copy1, "9.9"}, ["b" * 32]) == {copy1, "9.9"}


def test_a_revised_report_is_one_correction_per_superseded_object() -> None:
    assert revised("1.2.3", "report", "1.2.3.9.1", "1.2.3.9.1") is None
    got = revised("1.2.3", "report", "1.2.3.9.1", "1.2.3.9.2")
    assert got is not None and got.kind is Kind.REPORT and got.changed == ("report",)
    assert got.title == QUALITY and not got.resends
    assert len(got.old_digest) == 64 and got.old_digest != got.new_digest
    other = revised("1.2.3", "order", "1.2.3.9.1", "1.2.3.9.2")
    assert other is not None and other.old_digest != got.old_digest  # roles apart


def test_configuration_changes_are_no_corrections_but_a_renamed_patient_is() -> None:
    """A peer's name_style or the [hospital] issuers table edited: every delivered study would
    otherwise look corrected."""
    for style in ("王小东", "Wang^Xiaodong=王小东", "=王小东"):
        assert decide(OLD, dataclasses.replace(OLD, patient_name=style)) is None
    assert decide(OLD, dataclasses.replace(OLD, issuer_uid=UniversalId("1.2.3", "ISO"))) is None
    assert decide(OLD, dataclasses.replace(OLD, accession_issuer=UniversalId("1.2.4", "ISO"))) is None
    pinyin = dataclasses.replace(OLD, patient_name="Wang^Xiaodong=王小东")
    renamed = decide(pinyin, dataclasses.replace(OLD, patient_name="Wang^Xiaodong=王晓东"))  # same pinyin
    assert renamed is not None and renamed.changed == ("patient_name",)
    assert name_key("SMITH^JOHN") == "SMITH^JOHN" and name_key("=王小东") == "王小东"


def test_derived_uids_never_change_between_versions() -> None:
    """Pinned: a repeat after an upgrade must derive the same UIDs, or it would send new copies
    and a second note (the mutation run's survivors: the UUID version bits)."""
    assert corrected_uid("1.2.840.99.1.1.1", "f" * 32) == "2.25.145724192376844238779785145259327519983"
    assert note_uid("1.2.840.99.1", "f" * 32, "CLOUD") == "2.25.292314584849270190709739412126749811820"
    assert note_series_uid("1.2.840.99.1") == "2.25.194486894644088469088907631155794696611"


def test_name_key_of_names_without_an_ideographic_group_and_frozen_values() -> None:
    assert name_key("SMITH^JOHN=") == "SMITH^JOHN"
    assert name_key("SMITH^JOHN==スミス") == "SMITH^JOHN"  # a phonetic group is not the ideographic one
    correction = decide(OLD, None)
    assert correction is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        correction.kind = Kind.IDENTITY  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        INCORRECT_WORKLIST_ENTRY.value = "1"  # type: ignore[misc]

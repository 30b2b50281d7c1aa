"""The coercion decisions and the header-only rewrite (issue 26 item 1), without a network.

The decisions are checked as properties over generated data sets (hypothesis); the file rewrite
is checked against pydicom's own full rewrite of the same changes (the oracle), for each way a
header is written: spliced element by element (explicit and implicit VR), the whole header when
the character set must change under non-ASCII text, the whole file when it is deflated.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import split_dataset

from dicomproxy.config import Config, ConfigError, HospitalConfig, UniversalId, parse_config
from dicomproxy.identity import (
    Coercer,
    Identity,
    Result,
    apply_changes,
    identity_of,
    plan_changes,
)
from dicomproxy.identity.coerce import charset_for
from dicomproxy.identity.files import Patch, coerce
from dicomproxy.relay.journal import Journal
from dicomproxy.transport.rewritten import Rewritten, open_data
from testkit.samples import StudySpec, exam_row, make_instance

STUDY = "1.2.826.0.1.3680043.8.498.1"


def coerce_file(
    src: Path, dst: Path, identities: dict[str, Identity], **kw: Any
) -> tuple[Result, str, Patch | None]:
    """:func:`coerce` with what it sends written to ``dst``."""
    done = coerce(src, dst, identities, **kw)
    if isinstance(done.send, Rewritten):
        done.send.write(dst)
    return done.result, done.study, done.patch


WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
VIEW = Identity(
    STUDY,
    patient_id="H000123",
    issuer="74580626.HIS",
    patient_name="=王小东",
    birth_date="19800115",
    sex="M",
    accession="RIS-1",
    institution="温岭市第一人民医院",
    issuer_uid=UniversalId("1.2.156.1"),
    accession_issuer=UniversalId("1.2.156.2"),
)
KEYWORDS = list(VIEW.values())

#: Values each attribute may take (valid for its VR), "" = none (in the view) or empty.
VALUES = {
    "PatientID": ["", "P1", "H000123"],
    "IssuerOfPatientID": ["", "74580626.PACS", "74580626.HIS"],
    "PatientName": ["", "ANON", "=王小东", "Wang^Xiaodong=王小东"],
    "PatientBirthDate": ["", "19800115", "19991231"],
    "PatientSex": ["", "M", "F"],
    "AccessionNumber": ["", "RIS-1", "MOD-0815"],
    "InstitutionName": ["", "WENLING", "温岭市第一人民医院"],
}


def _dataset(values: dict[str, str | None], charset: str = "ISO_IR 192") -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = STUDY
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


@settings(max_examples=150, deadline=None)
@given(
    before=st.fixed_dictionaries({k: st.one_of(st.none(), st.sampled_from(v)) for k, v in VALUES.items()}),
    view=st.fixed_dictionaries({k: st.sampled_from(v) for k, v in VALUES.items()}),
)
def test_coercion_decisions(before: dict[str, str | None], view: dict[str, str]) -> None:
    """The view's non-empty values win, empty ones keep the instance's; the previous values of
    exactly the replaced or removed attributes are kept; applying twice changes nothing more."""
    identity = Identity(
        STUDY,
        patient_id=view["PatientID"],
        issuer=view["IssuerOfPatientID"],
        patient_name=view["PatientName"],
        birth_date=view["PatientBirthDate"],
        sex=view["PatientSex"],
        accession=view["AccessionNumber"],
        institution=view["InstitutionName"],
    )
    ds = _dataset(before)
    original = copy.deepcopy(ds)
    changes = plan_changes(ds, identity)
    changed = apply_changes(ds, changes, system="DICOMPROXY", source="PACS", when=WHEN)
    assert changed == bool(changes)
    assert plan_changes(ds, identity) == []  # a fixed point: a coerced instance is not coerced again
    assert ds.SOPInstanceUID == "1.2.3.4"
    pid_replaced = bool(view["PatientID"]) and before["PatientID"] != view["PatientID"]
    for keyword in KEYWORDS:
        old, new = before[keyword], view[keyword]
        if new:
            assert str(ds[keyword].value) == new
        elif keyword == "IssuerOfPatientID" and pid_replaced and old:
            assert keyword not in ds  # it named the PACS's ID domain
        else:
            assert (str(ds[keyword].value) if keyword in ds else None) == old
    kept = {c.keyword for c in changes if c.keyword in original}
    if not kept:
        assert "OriginalAttributesSequence" not in ds
        return
    [item] = ds.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "COERCE"
    assert item.AttributeModificationDateTime == "20260102030405.000000+0000"
    previous = item.ModifiedAttributesSequence[0]
    assert {e.keyword for e in previous} == kept
    for elem in previous:
        assert elem.value == original[elem.keyword].value


def test_issuer_sequences_follow_their_value() -> None:
    """The qualifiers are set from the issuers table; without one, an old qualifier of a replaced
    value goes (with the value's old issuer), and an unchanged value keeps its own."""
    ds = _dataset({"PatientID": "P1", "IssuerOfPatientID": "PACS", "AccessionNumber": "RIS-1"})
    ds.IssuerOfPatientIDQualifiersSequence = [Dataset()]
    ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID = "9.9"
    ds.IssuerOfAccessionNumberSequence = [Dataset()]
    ds.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID = "RIS"
    bare = Identity(STUDY, "H1", "", "", "", "", "RIS-1", "")
    apply_changes(ds, plan_changes(ds, bare), system="X", source="")
    assert ds.PatientID == "H1" and "IssuerOfPatientID" not in ds
    assert "IssuerOfPatientIDQualifiersSequence" not in ds
    assert ds.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == "RIS"  # accession unchanged
    previous = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert previous.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "9.9"
    apply_changes(ds, plan_changes(ds, VIEW), system="X", source="")
    assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.156.1"
    assert ds.IssuerOfAccessionNumberSequence[0].UniversalEntityID == "1.2.156.2"
    assert len(ds.OriginalAttributesSequence) == 2  # one item per modification


def test_an_issuer_is_judged_by_the_first_item_of_its_sequence() -> None:
    """PS3.3 10.14 / C.7.1.1: the qualifiers are one item; a second one (another system's) is kept."""
    ds = _dataset({k: v for k, v in VIEW.values().items()})
    items = [Dataset(), Dataset()]
    for item, uid in zip(items, ("1.2.156.1", "9.9.9"), strict=True):
        item.UniversalEntityID, item.UniversalEntityIDType = uid, "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = items
    ds.IssuerOfAccessionNumberSequence = [copy.deepcopy(items[0])]
    ds.IssuerOfAccessionNumberSequence[0].UniversalEntityID = "1.2.156.2"
    assert plan_changes(ds, VIEW) == []


@pytest.mark.parametrize(
    ("declared", "texts", "expected"),
    [
        ([], ["ASCII^ONLY"], None),
        ([], ["=王小东"], "ISO_IR 192"),
        (["GB18030"], ["=王小东"], None),
        (["GBK"], ["=王小东"], None),
        (["ISO_IR 100"], ["=王小东"], "ISO_IR 192"),
        (["ISO_IR 100"], ["Müller"], None),
        (["", "ISO 2022 IR 58"], ["=王小东"], "ISO_IR 192"),
        (["ISO_IR 192"], ["=王小东"], None),
    ],
)
def test_character_set_switches_only_when_it_cannot_carry_the_names(
    declared: list[str], texts: list[str], expected: str | None
) -> None:
    assert charset_for(declared, texts) == expected


def _file(tmp: Path, syntax: str, charset: str = "ISO_IR 192", **values: Any) -> Path:
    ds = make_instance(StudySpec("CT", images_per_series=1, charset=charset), 0, 0)
    ds.StudyInstanceUID = STUDY
    ds.InstitutionName = "WENLING"
    ds.StudyDescription = "CT"
    ds.PatientName = "ANON"
    ds.PatientID = "P1"
    ds.IssuerOfPatientID = "74580626.HIS"  # kept: copied right before a replaced sequence
    ref = Dataset()  # SQ elements (12-byte headers in explicit VR): one copied, one replaced
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, "1.2.3.5"
    ds.ReferencedImageSequence = [ref]
    old_issuer = Dataset()
    old_issuer.UniversalEntityID, old_issuer.UniversalEntityIDType = "9.9", "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [old_issuer]
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    if not charset:
        del ds.SpecificCharacterSet
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp / f"{len(list(tmp.iterdir()))}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("syntax", "charset", "extra", "how"),
    [
        (ExplicitVRLittleEndian, "ISO_IR 192", {}, "spliced"),
        (ImplicitVRLittleEndian, "ISO_IR 192", {}, "spliced"),
        (ExplicitVRLittleEndian, "", {}, "spliced"),  # ISO_IR 6 → ISO_IR 192: ASCII bytes stay valid
        (ExplicitVRLittleEndian, "GB18030", {"StudyDescription": "胸部CT"}, "spliced"),
        (ExplicitVRLittleEndian, "ISO_IR 100", {"ReferringPhysicianName": "Müller^Hans"}, "header"),
        (DeflatedExplicitVRLittleEndian, "ISO_IR 192", {}, "whole"),
    ],
)
def test_file_rewrite_equals_pydicoms_full_rewrite(
    tmp_path: Path, syntax: str, charset: str, extra: dict[str, str], how: str
) -> None:
    src = _file(tmp_path, syntax, charset, **extra)
    dst = tmp_path / "out.dcm"
    result, study, patch = coerce_file(src, dst, {STUDY: VIEW}, system="DICOMPROXY", sources={STUDY: "PACS"})
    assert (result, study) == (Result.COERCED, STUDY)
    assert (patch is not None) == (how == "spliced")
    expected = dcmread(src)
    apply_changes(expected, plan_changes(expected, VIEW), system="DICOMPROXY", source="PACS")
    got = dcmread(dst)
    for ds in (got, expected):
        ds.OriginalAttributesSequence[0].AttributeModificationDateTime = ""
    assert got == expected  # every element, decoded: names, pixel data, the rest
    assert got.file_meta.TransferSyntaxUID == syntax
    for keyword, value in extra.items():
        assert str(got[keyword].value) == value  # text of the old set decoded right after a switch
    if how == "spliced":
        raw_src, raw_dst = src.read_bytes(), dst.read_bytes()
        assert raw_dst.endswith(raw_src[raw_src.index(b"\xe0\x7f\x10\x00") :])  # Pixel Data bytes as held
        # what the raw senders stream: the new head, then the file's tail from disk
        spare = tmp_path / "spare.dcm"
        done = coerce(src, spare, {STUDY: VIEW}, system="DICOMPROXY", sources={STUDY: "PACS"})
        assert isinstance(done.send, Rewritten) and not spare.exists()
        written = done.send.write(tmp_path / "written.dcm").read_bytes()
        _, offset = split_dataset(tmp_path / "written.dcm")
        with open_data(done.send, offset) as (stream, length):
            streamed = stream.read()
        assert length == len(streamed) and streamed == written[offset:]
        assert done.send.stat_size() == len(written)


def test_coercer_warns_once_per_unknown_study_and_reuses_its_patch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = _file(tmp_path, ExplicitVRLittleEndian, InstanceNumber=1)
    second = _file(tmp_path, ExplicitVRLittleEndian, InstanceNumber=2, SOPInstanceUID="1.2.3.99")
    unknown = [_file(tmp_path, ExplicitVRLittleEndian, StudyInstanceUID="1.2.3.7") for _ in range(2)]
    coercer = Coercer({STUDY: VIEW}, "DICOMPROXY", "job 7")
    caplog.set_level(logging.INFO, logger="dicomproxy.identity")
    assert [coercer.coerce(p, tmp_path / "u.dcm") for p in unknown] == [False, False]
    assert caplog.text.count("names no patient for study 1.2.3.7") == 1
    assert "ANON" not in caplog.text and "P1" not in caplog.text  # no patient data in the log
    for n, path in enumerate((first, second), 1):
        out = tmp_path / f"c{n}.dcm"
        assert coercer.coerce(path, out)
        ds = dcmread(out)
        assert (ds.PatientID, ds.InstanceNumber, ds.SOPInstanceUID) == (
            "H000123",
            n,
            dcmread(path).SOPInstanceUID,
        )  # the patch of the first is applied to the second, its own elements stay
    assert len(coercer._patches) == 1 and coercer.coerced == 2
    again = tmp_path / "again.dcm"
    assert not coercer.coerce(tmp_path / "c1.dcm", again) and not again.exists()  # already coerced


def test_identity_from_a_view_row_and_back_from_json() -> None:
    spec = StudySpec("CT")
    row = exam_row(spec, PatientID="H9", PIDAssigningAuthority="74580626.HIS", AccessionNumber="A" * 20)
    hospital = HospitalConfig("74580626", issuers=(("74580626.HIS", UniversalId("1.2.3")),))
    ident = identity_of(spec.study_uid, [row], "pinyin", hospital)
    assert ident.patient_name == "Wang^Xiaodong=王小东"
    assert ident.accession == "A" * 16  # SH: as C-FIND answers it
    assert ident.issuer_uid == UniversalId("1.2.3") and ident.accession_issuer is None
    assert ident.sex == "M" and ident.birth_date == "19800115"
    assert Identity.from_json(ident.to_json()) == ident
    assert ident.digest != identity_of(spec.study_uid, [row], "single", hospital).digest


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_journal_keeps_the_first_identity_of_each_delivery(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}" if db == "sqlite" else request.getfixturevalue("pg_journal")
    journal = Journal(url)
    job = journal.start("move", "CLOUD", "", "DEST", "")  # type: ignore[arg-type]
    journal.record_identities(job, "DEST", [VIEW])
    later = Identity(**{**VIEW.__dict__, "patient_id": "H999"})
    journal.record_identities(job, "DEST", [later])  # a retry: the first record stays
    journal.engine.dispose()
    journal = Journal(url)  # a restart
    assert journal.identities_of(job) == {STUDY: VIEW}
    job2 = journal.start("push", "DICOMPROXY", "", "DEST", "")  # type: ignore[arg-type]
    journal.record_identities(job2, "DEST", [later])
    assert journal.deliveries_of(STUDY) == [(job, "DEST", VIEW), (job2, "DEST", later)]
    journal.engine.dispose()


def test_a_retry_of_a_corrected_copies_job_sends_the_copies_again(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    """A job that sent corrected copies (IOCM) is journalled as such when planned: its retry (a
    resume after a restart, ``jobs retry``) gives every instance the copy's UID again — never the
    rejected original's — and a plain job's retry keeps the PACS's UIDs."""
    from dicomproxy.identity.copies import CorrectedCopies
    from dicomproxy.identity.corrections import corrected_uid
    from dicomproxy.relay.identities import retry_coercer

    config = make_config()
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    plain, copies = (journal.start("push", "DICOMPROXY", "", "DEST", "") for _ in range(2))  # type: ignore[arg-type]
    for job in (plain, copies):
        journal.record_identities(job, "DEST", [VIEW])
    journal.record_copies(copies, "f1")
    journal.record_copies(copies, "f2")  # planned again: the first record stays
    assert journal.copies_of([plain, copies]) == {copies: "f1"} and journal.copies_of([]) == {}
    again = retry_coercer(config, journal, copies, "DEST")
    assert isinstance(again, CorrectedCopies) and again.fingerprint == "f1"
    assert again.identities == {STUDY: VIEW}
    spec = StudySpec("CT", series=1, images_per_series=1, seed=7)
    src = tmp_path / "in.dcm"
    make_instance(spec, 0, 0).save_as(src, enforce_file_format=True)
    sent = dcmread(again.rewrite(src, tmp_path / "spare.dcm"))
    assert sent.SOPInstanceUID == corrected_uid(spec.sop_uid(0, 0), "f1")
    assert type(retry_coercer(config, journal, plain, "DEST")) is Coercer
    journal.engine.dispose()


@pytest.mark.parametrize(
    ("hospital", "key", "problem"),
    [
        ({"issuers": {"74580626.HIS": "1.02.3"}}, "hospital.issuers.74580626.HIS", "is not an OID"),
        ({"issuers": {"X": {"id": "a", "type": "FOO"}}}, "hospital.issuers.X", "type must be one of"),
        ({"issuers": ["1.2"]}, "hospital.issuers", "must be a table"),
        ({"accession_issuer": 5}, "hospital.accession_issuer", "must be an OID string"),
    ],
)
def test_issuer_table_errors_name_key_and_file(
    tmp_path: Path, hospital: dict[str, Any], key: str, problem: str
) -> None:
    from tests.conftest import base_config_dict

    doc = base_config_dict(tmp_path, "sqlite://", hospital={"id": "74580626", **hospital})
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "/etc/dicomproxy.toml")
    assert f"/etc/dicomproxy.toml: {key}: " in str(err.value) and problem in str(err.value)
    doc = base_config_dict(tmp_path, "sqlite://")
    doc["peers"][0]["coerce"] = "yes"
    with pytest.raises(ConfigError, match=r"peers\[0\]\.coerce: must be true or false"):
        parse_config(doc, "/etc/dicomproxy.toml")
    doc["peers"][0]["coerce"] = False
    assert parse_config(doc, "/etc/dicomproxy.toml").peers[0].coerce is False
    assert parse_config(base_config_dict(tmp_path, "sqlite://"), "x").peers[0].coerce is True


def test_file_meta_only_file_without_pixel_data(tmp_path: Path) -> None:
    """A data set without Pixel Data (an SR, a KOS): the header is the whole file."""
    ds = _dataset({"PatientID": "P1", "PatientName": "ANON"})
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    src = tmp_path / "sr.dcm"
    ds.save_as(src, enforce_file_format=True)
    result, _, patch = coerce_file(src, tmp_path / "o.dcm", {STUDY: VIEW}, system="X")
    assert result is Result.COERCED and patch is not None
    assert dcmread(tmp_path / "o.dcm").PatientID == "H000123"

"""A C-MOVE/C-GET request at the boundary (``dicomproxy.relay.request``), against the real ExamView on
SQLite: every Query/Retrieve level names only visible studies, malformed identifiers are
refused, and a peer without the service is refused before its identifier is read (issue 18).

The same through real associations and archives: tests/test_relay_real.py
(``test_invisible_study_at_series_and_image_level``); this file is the fast guard that the
mutation runs (scripts/mutation.sh) lean on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy.engine import Engine

from dicomproxy.config import Config
from dicomproxy.errors import InvalidIdentifier, NotAuthorized
from dicomproxy.pacs.client import RetrieveKey
from dicomproxy.pacs.routing import StudyRef
from dicomproxy.relay.request import parse_keys, retrieve_request
from dicomproxy.view.repository import ExamView
from testkit.samples import Patient, StudySpec, demo_specs, exam_row
from testkit.viewdb import insert_rows

CT, MR, US, MF = demo_specs()
OTHER = StudySpec("CT", Patient(patient_id="P0099", name="赵敏"), "X0001", seed=11)
PRIVATE = StudySpec("CT", Patient(patient_id="P0099", name="赵敏"), "X0002", seed=12)
UNLISTED = StudySpec("CT", Patient(patient_id="P0098", name="钱多"), "X0003", seed=13)
HIDDEN = [OTHER.study_uid, PRIVATE.study_uid, UNLISTED.study_uid]
SERIES = ["1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"]
SOPS = ["1.2.826.0.1.3680043.8.498.1.1", "1.2.826.0.1.3680043.8.498.1.2"]


@pytest.fixture
def view(sqlite_view: Engine, make_config: Callable[..., Config]) -> Iterator[ExamView]:
    insert_rows(sqlite_view, [exam_row(OTHER, hospital_id="99999999"), exam_row(PRIVATE, Privacy=1)])
    view = ExamView(make_config())
    yield view
    view.close()


def ident(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():  # deliberately odd values ("study ")
        warnings.simplefilter("ignore")
        ds.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def uids(found: list[tuple[RetrieveKey, StudyRef]]) -> list[str]:
    return [key.study_uid for key, _ in found]


def test_patient_level(view: ExamView) -> None:
    level, found = parse_keys(ident("PATIENT", PatientID="P0001"), view)
    assert level == "PATIENT"
    assert found == [
        (RetrieveKey(CT.study_uid), StudyRef(CT.study_uid, "RIS", "CT")),
        (RetrieveKey(MR.study_uid), StudyRef(MR.study_uid, "RIS", "MR")),
    ]
    assert parse_keys(ident("PATIENT", PatientID="P0099"), view) == ("PATIENT", [])
    for bad in (
        ident("PATIENT"),
        ident("PATIENT", PatientID=["P0001", "P0002"]),
        ident("PATIENT", PatientID=""),
    ):
        with pytest.raises(InvalidIdentifier, match="PATIENT level needs one Patient ID"):
            parse_keys(bad, view)


def test_study_level_by_uid_keeps_order_and_hides(view: ExamView) -> None:
    level, found = parse_keys(ident("STUDY", StudyInstanceUID=[MR.study_uid, *HIDDEN, CT.study_uid]), view)
    assert level == "STUDY"
    assert uids(found) == [MR.study_uid, CT.study_uid]
    assert all(key.level == "STUDY" for key, _ in found)
    assert parse_keys(ident("study ", StudyInstanceUID=f" {US.study_uid} "), view)[1] == [
        (RetrieveKey(US.study_uid), StudyRef(US.study_uid, "UIS", "US"))
    ]
    for uid in HIDDEN:
        assert parse_keys(ident("STUDY", StudyInstanceUID=uid), view) == ("STUDY", [])


def test_study_level_by_accession_and_patient(view: ExamView) -> None:
    assert uids(parse_keys(ident("STUDY", AccessionNumber="A0002"), view)[1]) == [MR.study_uid]
    assert uids(parse_keys(ident("STUDY", AccessionNumber="A0002", PatientID="P0001"), view)[1]) == [
        MR.study_uid
    ]
    assert parse_keys(ident("STUDY", AccessionNumber="A0002", PatientID="P0002"), view)[1] == []
    assert uids(parse_keys(ident("STUDY", PatientID="P0002"), view)[1]) == [US.study_uid, MF.study_uid]
    # a Study Instance UID wins over the other keys
    assert uids(
        parse_keys(ident("STUDY", StudyInstanceUID=CT.study_uid, AccessionNumber="A0002"), view)[1]
    ) == [CT.study_uid]
    for hidden in (OTHER, PRIVATE):
        assert parse_keys(ident("STUDY", AccessionNumber=hidden.accession), view)[1] == []
    assert parse_keys(ident("STUDY", PatientID="P0099"), view)[1] == []
    for bad in (
        ident("STUDY"),
        ident("STUDY", StudyInstanceUID="", AccessionNumber="", PatientID=""),
        ident("STUDY", AccessionNumber=["A0001", "A0002"]),
    ):
        with pytest.raises(InvalidIdentifier, match="STUDY level needs"):
            parse_keys(bad, view)
    # Patient ID is single-valued: a list is malformed, also beside an Accession Number (it used to
    # take the first silently)
    for bad in (
        ident("STUDY", PatientID=["P0001", "P0002"]),
        ident("STUDY", AccessionNumber="A0002", PatientID=["P0002", "P0001"]),
    ):
        with pytest.raises(InvalidIdentifier, match="one Patient ID"):
            parse_keys(bad, view)


def test_series_level(view: ExamView) -> None:
    level, found = parse_keys(ident("SERIES", StudyInstanceUID=CT.study_uid, SeriesInstanceUID=SERIES), view)
    assert level == "SERIES"
    assert found == [(RetrieveKey(CT.study_uid, tuple(SERIES)), StudyRef(CT.study_uid, "RIS", "CT"))]
    assert found[0][0].level == "SERIES"
    # SOP Instance UIDs are not a SERIES-level key
    level, found = parse_keys(
        ident("SERIES", StudyInstanceUID=CT.study_uid, SeriesInstanceUID=SERIES[0], SOPInstanceUID=SOPS[0]),
        view,
    )
    assert [key for key, _ in found] == [RetrieveKey(CT.study_uid, (SERIES[0],))]
    for uid in HIDDEN:
        assert parse_keys(ident("SERIES", StudyInstanceUID=uid, SeriesInstanceUID=SERIES), view) == (
            "SERIES",
            [],
        )
    for bad in (
        ident("SERIES", SeriesInstanceUID=SERIES[0]),
        ident("SERIES", StudyInstanceUID=CT.study_uid),
        ident("SERIES", StudyInstanceUID=[CT.study_uid, MR.study_uid], SeriesInstanceUID=SERIES[0]),
    ):
        with pytest.raises(InvalidIdentifier, match="SERIES level needs the unique keys of the levels above"):
            parse_keys(bad, view)


def test_image_level(view: ExamView) -> None:
    query = ident("IMAGE", StudyInstanceUID=MR.study_uid, SeriesInstanceUID=SERIES[0], SOPInstanceUID=SOPS)
    level, found = parse_keys(query, view)
    assert level == "IMAGE"
    assert found == [
        (RetrieveKey(MR.study_uid, (SERIES[0],), tuple(SOPS)), StudyRef(MR.study_uid, "RIS", "MR"))
    ]
    assert found[0][0].level == "IMAGE"
    for uid in HIDDEN:
        hidden = ident("IMAGE", StudyInstanceUID=uid, SeriesInstanceUID=SERIES[0], SOPInstanceUID=SOPS[0])
        assert parse_keys(hidden, view) == ("IMAGE", [])
    for bad in (
        ident("IMAGE", StudyInstanceUID=MR.study_uid, SeriesInstanceUID=SERIES[0]),
        ident("IMAGE", StudyInstanceUID=MR.study_uid, SeriesInstanceUID=SERIES, SOPInstanceUID=SOPS[0]),
        ident("IMAGE", StudyInstanceUID=MR.study_uid, SOPInstanceUID=SOPS[0]),
        ident("IMAGE", SeriesInstanceUID=SERIES[0], SOPInstanceUID=SOPS[0]),
    ):
        with pytest.raises(InvalidIdentifier, match="IMAGE level needs the unique keys of the levels above"):
            parse_keys(bad, view)


@pytest.mark.parametrize("level", ["", "FRAME", "PATIENTS"])
def test_unknown_level(view: ExamView, level: str) -> None:
    with pytest.raises(InvalidIdentifier, match="Query/Retrieve Level must be"):
        parse_keys(ident(level, StudyInstanceUID=CT.study_uid), view)
    with pytest.raises(InvalidIdentifier, match="Query/Retrieve Level must be"):
        parse_keys(Dataset(), view)


class UidsOnly:
    """A resolver that knows UIDs only (no ``resolve_studies``): empty routing fields."""

    def __init__(self, visible: set[str]) -> None:
        self.visible = visible
        self.asked: list[dict[str, Any]] = []

    def resolve_study_uids(
        self, *, study_uids: Sequence[str] = (), accession: str | None = None, patient_id: str | None = None
    ) -> list[str]:
        self.asked.append({"study_uids": list(study_uids), "accession": accession, "patient_id": patient_id})
        return [u for u in study_uids if u in self.visible]


def test_resolver_without_routing_fields() -> None:
    resolver = UidsOnly({"1.2.3"})
    level, found = parse_keys(ident("STUDY", StudyInstanceUID=["1.2.3", "1.2.4"]), resolver)
    assert (level, found) == ("STUDY", [(RetrieveKey("1.2.3"), StudyRef("1.2.3", "", ""))])
    assert resolver.asked == [{"study_uids": ["1.2.3", "1.2.4"], "accession": None, "patient_id": None}]


class Event:
    """The parts of a pynetdicom C-MOVE/C-GET event that ``retrieve_request`` reads."""

    def __init__(
        self, calling: str, identifier: Any, dest: Any = b"DEST ", message_id: int | None = 7
    ) -> None:
        self.assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title=f"{calling}  ", address="127.0.0.5"))
        self.move_destination = dest
        self.request = SimpleNamespace(MessageID=message_id)
        self._identifier = identifier
        self.decoded = False

    @property
    def identifier(self) -> Dataset:
        self.decoded = True
        if isinstance(self._identifier, Exception):
            raise self._identifier
        return self._identifier


def test_retrieve_request(make_config: Callable[..., Config]) -> None:
    config = make_config(
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1},
            {"ae_title": "FINDONLY", "host": "127.0.0.1", "port": 1, "services": ["echo", "find"]},
            {"ae_title": "GETONLY", "host": "127.0.0.1", "port": 1, "services": ["get"]},
        ]
    )
    query = ident("STUDY", StudyInstanceUID="1.2.3")
    moved = retrieve_request(Event("jobserver", query), "move", config)
    assert moved == type(moved)("move", query, "jobserver", "127.0.0.5", "DEST", 7)
    got = retrieve_request(Event("GETONLY", query, dest="IGNORED", message_id=None), "get", config)
    assert (got.kind, got.calling_ae, got.move_destination, got.message_id) == ("get", "GETONLY", "", 0)
    assert retrieve_request(Event("X", query, dest="DEST2"), "move").move_destination == "DEST2"  # no config
    for calling, kind in (
        ("FINDONLY", "move"),
        ("FINDONLY", "get"),
        ("GETONLY", "move"),
        ("STRANGER", "get"),
    ):
        refused = Event(calling, query)
        with pytest.raises(NotAuthorized, match=f"C-{kind.upper()} not permitted for {calling}"):
            retrieve_request(refused, kind, config)
        assert not refused.decoded  # refused before the identifier is read
    with pytest.raises(InvalidIdentifier, match="cannot decode the identifier: truncated"):
        retrieve_request(Event("jobserver", ValueError("truncated")), "move", config)

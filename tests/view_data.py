"""The exam-view rows the C-FIND suites run against, and small client helpers."""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import create_engine

from dicomproxy.transport.net import NODELAY_HANDLERS, guard_requestor
from testkit.samples import StudySpec, demo_specs, exam_row, uid_from
from testkit.viewdb import create_view_table, insert_rows

CALLING = "jobserver"
UID = {
    name: uid_from("test", name) for name in ("m1", "m2", "m3", "merged", "oh", "priv", "null", "dr", "reg")
}
DEMO = demo_specs()
CT, MR, US, MF = DEMO


def _row(examine_id: str, patient_id: str, name: str, uid: str | None, **kw: Any) -> dict[str, Any]:
    base = exam_row(
        StudySpec("CT"),
        ExamineID=examine_id,
        PatientID=patient_id,
        PatientName=name,
        AccessionNumber=examine_id,
        StudyInstanceUID=uid,
        PerformTime=dt.datetime(2023, 12, 1, 8, 0, 0),
        RegTime=dt.datetime(2023, 12, 1, 7, 0, 0),
    )
    base.update(kw)
    return base


def fill_view(url: str) -> None:
    """Create the exam view at ``url`` with :func:`view_rows` in it."""
    engine = create_engine(url)
    create_view_table(engine)
    insert_rows(engine, view_rows())
    engine.dispose()


def view_rows() -> list[dict[str, Any]]:
    """Demo rows plus one row per rule the suites check."""
    rows = [exam_row(spec) for spec in DEMO]
    rows += [
        # one cell, three valid UIDs (mixed separators) and one invalid part
        _row("EMULTI", "P0003", "张三", f"{UID['m1']},{UID['m2']}; {UID['m3']} 1.02.x", ExamineType="CT"),
        # two rows, one study: merged into one answer with ModalitiesInStudy CT\MR
        _row("EMERGE1", "P0004", "欧阳娜娜", UID["merged"], ExamineType="CT"),
        _row("EMERGE2", "P0004", "欧阳娜娜", UID["merged"], ExamineType="MR"),
        # invisible: other hospital, privacy too high, no UID yet, only invalid UIDs
        _row("EOTHERHOSP", "P0005", "赵敏", UID["oh"], HospitalID="99999999"),
        _row("EPRIVATE", "P0005", "赵敏", UID["priv"], Privacy=2),
        _row("ENOUID", "P0005", "赵敏", None),
        _row("EBADUID", "P0005", "赵敏", "1.2.3.abc,,"),
        # visible: Privacy NULL counts as 0
        _row("ENULLPRIV", "P0006", "孙立", UID["null"], Privacy=None),
        # DR is answered (and found) as DX
        _row("EDR", "P0006", "孙立", UID["dr"], ExamineType="DR"),
        # no PerformTime: RegTime gives StudyDate/StudyTime
        _row(
            "EREG",
            "P0007",
            "周杰",
            UID["reg"],
            PerformTime=None,
            RegTime=dt.datetime(2024, 6, 1, 23, 30, 0),
            PatientBirthday="1990/07/08",
            PatientAge="6",
            PatientAgeUnit="月",
            PatientSex="女",
        ),
    ]
    # LIKE metacharacters in values: must be matched literally
    for acc in ("AX_1", "AXY1", "AP%1", "APZ1", "AB\\1"):
        rows.append(_row(f"E{acc}", "P0008", "吴用", uid_from("lit", acc), AccessionNumber=acc))
    return rows


#: UIDs nobody may ever find.
INVISIBLE_UIDS = (UID["oh"], UID["priv"])
INVISIBLE_ACCESSIONS = ("EOTHERHOSP", "EPRIVATE", "ENOUID", "EBADUID")


def all_visible_uids() -> set[str]:
    lit = {uid_from("lit", a) for a in ("AX_1", "AXY1", "AP%1", "APZ1", "AB\\1")}
    return (
        {s.study_uid for s in DEMO}
        | {UID[k] for k in ("m1", "m2", "m3", "merged", "null", "dr", "reg")}
        | lit
    )


@dataclass
class FindResult:
    status: int
    comment: str | None
    answers: list[Dataset]
    #: The answers as received, elements not yet decoded (``get_item(tag).value`` is bytes).
    raw: list[Dataset] = field(default_factory=list)

    @property
    def uids(self) -> set[str]:
        return {str(ds.StudyInstanceUID) for ds in self.answers}


class FindClient:
    """pynetdicom C-FIND SCU on one association (both Q/R models), reused across queries."""

    def __init__(
        self, port: int, calling: str = CALLING, *, also: tuple[str, ...] = (), max_pdu: int | None = None
    ) -> None:
        """``also``: more abstract syntaxes to propose (a C-MOVE model makes the proxy serve the
        association with pynetdicom instead of its raw query acceptor); ``max_pdu``: our Maximum
        Length Received (PS3.8 D.1)."""
        self.ae = AE(calling)
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self.ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
        for sop in also:
            self.ae.add_requested_context(sop)
        #: Every received identifier as encoded on the wire (for byte-level charset checks).
        self.raw: list[Dataset] = []
        #: The same, as bytes.
        self.wire: list[bytes] = []
        handlers = [*NODELAY_HANDLERS, (evt.EVT_DIMSE_RECV, self._on_recv)]
        kwargs: dict[str, Any] = {} if max_pdu is None else {"max_pdu": max_pdu}
        self.assoc = self.ae.associate(
            "127.0.0.1", port, ae_title="DICOMPROXY", evt_handlers=handlers, **kwargs
        )
        assert self.assoc.is_established
        # pynetdicom 3.0.4's reactor-pause race (pynetdicom#875) lets the reactor take a response
        # meant for send_c_find ("Received unexpected C-FIND service message"): the answer is lost
        guard_requestor(self.assoc)

    def _on_recv(self, event: Any) -> None:
        data = getattr(event.message, "data_set", None)
        if data is not None and data.getvalue():
            self.wire.append(data.getvalue())
            syntax = self.assoc.accepted_contexts[0].transfer_syntax[0]
            implicit = syntax == "1.2.840.10008.1.2"
            self.raw.append(read_dataset(BytesIO(data.getvalue()), implicit, True))

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()

    def __enter__(self) -> FindClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def find(
        self, keys: dict[str, Any], *, level: str = "STUDY", model: str = "STUDY", charset: Any = None
    ) -> FindResult:
        sop = (
            StudyRootQueryRetrieveInformationModelFind
            if model == "STUDY"
            else PatientRootQueryRetrieveInformationModelFind
        )
        query = Dataset()
        if charset is None and not all(str(v).isascii() for v in keys.values()):
            charset = "ISO_IR 192"
        if charset is not None:
            query.SpecificCharacterSet = charset
        query.QueryRetrieveLevel = level
        with warnings.catch_warnings():  # deliberately invalid values in bad-identifier tests
            warnings.simplefilter("ignore")
            for key, value in keys.items():
                setattr(query, key, value)
        answers: list[Dataset] = []
        final: Dataset | None = None
        self.raw.clear()
        self.wire.clear()
        for status, ds in self.assoc.send_c_find(query, sop):
            assert status is not None and "Status" in status, "no C-FIND response"
            if status.Status in (0xFF00, 0xFF01):
                answers.append(ds)
            else:
                final = status
        assert final is not None
        return FindResult(int(final.Status), final.get("ErrorComment"), answers, list(self.raw))

    def uids(self, **keys: Any) -> set[str]:
        """StudyInstanceUIDs found by a STUDY-level query with these keys (must succeed)."""
        result = self.find({"StudyInstanceUID": "", **keys})
        assert result.status == 0x0000, result.comment
        return result.uids


def c_find(port: int, keys: dict[str, Any], **kwargs: Any) -> FindResult:
    """One C-FIND on a new association."""
    with FindClient(port) as client:
        return client.find(keys, **kwargs)


def study_uids(rows: Iterable[Dataset]) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in rows}

"""Chinese text in C-FIND: request decoding, answer encoding (byte-level), name styles and
pinyin matching — with pynetdicom and with DCMTK findscu as clients, on every database.

PS3.3 C.12.1.1.2 / PS3.5 6.1: answers use the request's set when it is ISO_IR 192, GB18030
or GBK, else ``[view].default_charset``; ``\\ISO 2022 IR 58`` needs ``ESC $ ) A`` per value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from dicomproxy.charsets import install_pydicom_workarounds
from dicomproxy.config import Config
from dicomproxy.server import Server
from testkit.dcmtk import run_tool
from tests.conftest import ConfigFactory
from tests.view_data import CT, MF, MR, US, FindClient

IR58 = ["", "ISO 2022 IR 58"]
ESC_IR58 = b"\x1b$)A"

#: (request (0008,0005), answer (0008,0005), Python codec of the answer)
CHARSETS: list[tuple[Any, str, str]] = [
    ("ISO_IR 192", "ISO_IR 192", "utf-8"),
    ("GB18030", "GB18030", "gb18030"),
    ("GBK", "GBK", "gbk"),
    (IR58, "ISO_IR 192", "utf-8"),  # not a stand-alone set: answered in the default
]


def encode_pn(value: str, charset: Any) -> bytes:
    return PersonName(value).encode(convert_encodings(charset if isinstance(charset, list) else [charset]))


def raw(ds: Dataset, tag: int) -> bytes:
    """The element's bytes as they came over the wire (not yet decoded by pydicom)."""
    value = ds.get_item(tag).value
    assert isinstance(value, bytes), f"{tag:08X} was already decoded"
    return value


@pytest.fixture
def client_factory(find_port: int) -> Iterator[Callable[[str], FindClient]]:
    clients: list[FindClient] = []

    def make(calling: str = "jobserver") -> FindClient:
        clients.append(FindClient(find_port, calling))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def test_answers_in_the_request_charset_byte_level(client_factory: Callable[[str], FindClient]) -> None:
    install_pydicom_workarounds()  # the client side needs it too for IR 58
    assert ESC_IR58 in encode_pn("=王*", IR58)
    client = client_factory("jobserver")
    for request_cs, answer_cs, codec in CHARSETS:
        for name in ("=王*", "王小东", "=王^小东"):
            result = client.find(
                {"PatientName": name, "StudyInstanceUID": "", "StudyDescription": ""}, charset=request_cs
            )
            assert result.status == 0, (request_cs, name)
            assert sorted(result.uids) == sorted({CT.study_uid, MR.study_uid}), (request_cs, name)
            assert len(result.raw) == 2
            for ds in result.raw:
                assert raw(ds, 0x00080005).strip() == answer_cs.encode()
                assert raw(ds, 0x00100010).rstrip(b" ") == "=王小东".encode(codec)
                assert raw(ds, 0x00081030).rstrip(b" ") in {
                    "胸部CT平扫".encode(codec),
                    "头颅MR平扫".encode(codec),
                }


def test_name_styles_per_peer(client_factory: Callable[[str], FindClient]) -> None:
    expected = {
        "jobserver": "=王小东",  # [view].name_style default: ideographic group
        "SINGLE": "王小东",
        "PINYIN": "Wang^Xiaodong=王小东",
    }
    for calling, name in expected.items():
        result = client_factory(calling).find({"AccessionNumber": "A0001", "PatientName": ""})
        assert [str(ds.PatientName) for ds in result.answers] == [name], calling
        result = client_factory(calling).find(
            {"PatientID": "P0002", "PatientName": ""}, level="PATIENT", model="PATIENT"
        )
        assert len(result.answers) == 1


def test_alphabetic_group_matches_pinyin(client_factory: Callable[[str], FindClient]) -> None:
    client = client_factory("jobserver")
    wang = {CT.study_uid, MR.study_uid}
    li = {US.study_uid, MF.study_uid}
    for value, expected in [
        ("Wang^Xiaodong", wang),
        ("WANG^XIAODONG", wang),
        ("wang*", wang),
        ("WangXiaodong", wang),
        ("Li^Xiuying", li),
        ("Li^X*", li),
        ("Wang^Xiuying", set()),
        ("Wang^Xiaodong=王小东", wang),
        ("Li^Xiuying=王小东", wang),  # the ideographic group decides when both are given
        ("Zhao*", set()),  # invisible patient
    ]:
        assert client.uids(PatientName=value) == expected, value


# --- DCMTK findscu ------------------------------------------------------------------------------


def _arg(data: bytes) -> str:
    """Raw bytes for argv (findscu passes -k values through unchanged)."""
    return os.fsdecode(data)


def findscu(
    port: int, workdir: Path, keys: list[tuple[str, bytes]], calling: str = "jobserver", root: str = "-S"
) -> list[Path]:
    out = workdir / f"rsp-{len(list(workdir.glob('rsp-*')))}"
    out.mkdir(parents=True)
    args = [root, "-aet", calling, "-aec", "DICOMPROXY", "-X", "-od", str(out)]
    for key, value in keys:
        args += ["-k", _arg(key.encode() + b"=" + value)]
    proc = run_tool("findscu", *args, "127.0.0.1", str(port), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return sorted(out.glob("rsp*.dcm"))


@pytest.mark.dcmtk
def test_findscu_charsets_byte_level(dcmtk: None, find_port: int, tmp_path: Path) -> None:
    install_pydicom_workarounds()
    for request_cs, answer_cs, codec in CHARSETS:
        cs_value = "\\".join(request_cs) if isinstance(request_cs, list) else request_cs
        name = encode_pn("=王*", request_cs)
        files = findscu(
            find_port,
            tmp_path,
            [
                ("0008,0005", cs_value.encode()),
                ("0008,0052", b"STUDY"),
                ("0010,0010", name),
                ("0020,000D", b""),
                ("0008,0020", b"20240101-20241231"),
            ],
        )
        assert len(files) == 2, request_cs
        for path in files:
            ds = pydicom.dcmread(path)  # reading decodes (0008,0005) itself; PN stays raw
            assert ds.SpecificCharacterSet == answer_cs
            assert raw(ds, 0x00100010).rstrip(b" ") == "=王小东".encode(codec)
        assert {str(pydicom.dcmread(p).StudyInstanceUID) for p in files} == {CT.study_uid, MR.study_uid}


@pytest.mark.dcmtk
def test_findscu_matching_and_failure_status(dcmtk: None, find_port: int, tmp_path: Path) -> None:
    files = findscu(
        find_port,
        tmp_path,
        [("0008,0052", b"STUDY"), ("0008,0050", b"A000?"), ("0008,0061", b"CT\\US"), ("0020,000D", b"")],
    )
    assert {str(pydicom.dcmread(p).StudyInstanceUID) for p in files} == {CT.study_uid, US.study_uid}
    proc = run_tool(
        "findscu", "-v", "-S", "-aet", "jobserver", "-aec", "DICOMPROXY", "-k", "0008,0052=STUDY",
        "-k", "0008,0020=2024-01-01", "127.0.0.1", str(find_port), timeout=60,
    )  # fmt: skip
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in proc.stdout + proc.stderr


def test_ir58_request_with_gb18030_default(
    make_config: ConfigFactory, run_proxy: Callable[[Config], Server], sqlite_view: Any
) -> None:
    """A ``\\ISO 2022 IR 58`` request is answered in ``[view].default_charset`` (here GB18030)."""
    install_pydicom_workarounds()
    config = make_config(view={"default_charset": "GB18030"})
    with FindClient(run_proxy(config).port) as client:
        result = client.find({"PatientName": "=李秀英", "StudyInstanceUID": ""}, charset=IR58)
        assert len(result.answers) == 2
        assert len(result.raw) == 2
        for ds in result.raw:
            assert raw(ds, 0x00080005).strip() == b"GB18030"
            assert raw(ds, 0x00100010).rstrip(b" ") == "=李秀英".encode("gb18030")
        ascii_only = client.find({"PatientID": "P0002", "StudyInstanceUID": ""}, charset="ISO_IR 100")
        assert ascii_only.raw and all(raw(ds, 0x00080005).strip() == b"GB18030" for ds in ascii_only.raw)


@pytest.mark.dcmtk
def test_findscu_matching_types(dcmtk: None, find_port: int, tmp_path: Path) -> None:
    """The matching types once more with DCMTK findscu as the client (Study Root, STUDY level)."""
    from testkit.samples import uid_from
    from tests.view_data import UID

    cases: list[tuple[list[tuple[str, bytes]], set[str]]] = [
        ([("0010,0020", b"P0001")], {CT.study_uid, MR.study_uid}),  # single value
        ([("0008,0050", b"AX_*")], {uid_from("lit", "AX_1")}),  # wildcard, literal "_"
        ([("0008,0020", b"20240301-20240410")], {MR.study_uid, US.study_uid}),  # date range
        ([("0008,0020", b"20240411-")], {MF.study_uid, UID["reg"]}),  # open-ended range
        ([("0020,000D", f"{UID['m1']}\\{UID['oh']}\\{CT.study_uid}".encode())], {UID["m1"], CT.study_uid}),
        ([("0008,0061", b"US\\OT")], {US.study_uid, MF.study_uid}),  # multi-valued: OR
        ([("0008,0050", b"EPRIVATE")], set()),  # invisible
    ]
    for keys, expected in cases:
        merged = dict([("0008,0052", b"STUDY"), ("0020,000D", b""), *keys])  # the case's keys win
        files = findscu(find_port, tmp_path, list(merged.items()))
        found = {str(pydicom.dcmread(p).StudyInstanceUID) for p in files}
        assert found == expected, keys
    patients = findscu(
        find_port,
        tmp_path,
        [("0008,0052", b"PATIENT"), ("0010,0020", b"P000?"), ("0010,0010", b"")],
        root="-P",
    )
    assert sorted(str(pydicom.dcmread(p).PatientID) for p in patients) == [
        "P0001", "P0002", "P0003", "P0004", "P0006", "P0007", "P0008",
    ]  # fmt: skip

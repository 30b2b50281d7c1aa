"""Chinese names in varchar columns under a GBK collation, on a real server.

A hospital's SQL Server view is typically varchar under Chinese_PRC_CI_AS (code page 936,
GBK); the client asks for UTF-8 (FreeTDS ``ClientCharset=UTF-8``, docs/view.md) and the
driver converts. SQL Server cannot run here; MariaDB can store the same thing — columns in
``gbk`` with the case-insensitive ``gbk_chinese_ci`` collation, a client connection in
utf8mb4, the server converting both ways — so the whole C-FIND path runs against it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from dicomproxy.config import Config
from dicomproxy.server import Server
from testkit.viewdb import create_view_table, drop_view_table, insert_rows
from tests.conftest import FIND_PEERS, MARIADB_URL, ConfigFactory, need_server
from tests.view_data import CT, DEMO, UID, FindClient, view_rows


@pytest.fixture
def gbk_view() -> Iterator[tuple[Engine, str]]:
    need_server("mariadb", MARIADB_URL)
    engine = create_engine(MARIADB_URL)
    name = f"v_gbk_{uuid.uuid4().hex[:8]}"
    create_view_table(engine, name)
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {name} CONVERT TO CHARACTER SET gbk COLLATE gbk_chinese_ci"))
    insert_rows(engine, view_rows(), name)
    try:
        yield engine, name
    finally:
        drop_view_table(engine, name)
        engine.dispose()


def test_chinese_names_survive_a_gbk_column(
    gbk_view: tuple[Engine, str], make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    engine, name = gbk_view
    with engine.connect() as conn:  # stored as GBK bytes, not UTF-8
        stored = conn.execute(
            text(f"SELECT HEX(patientname) FROM {name} WHERE examineid = 'EA0001'")
        ).scalar()
        charset = conn.execute(
            text(
                "SELECT character_set_name FROM information_schema.columns "
                "WHERE table_name = :t AND column_name = 'patientname'"
            ),
            {"t": name},
        ).scalar()
    assert charset == "gbk" and stored == "王小东".encode("gbk").hex().upper()

    config = make_config(view={"url": MARIADB_URL, "name": name}, peers=FIND_PEERS)
    port = run_proxy(config).port
    with FindClient(port) as client:
        result = client.find({"PatientName": "=王*", "PatientID": "", "StudyInstanceUID": ""})
        assert result.status == 0x0000
        assert {str(ds.PatientName) for ds in result.answers} == {"=王小东"}
        wang = {s.study_uid for s in DEMO if s.patient.name == "王小东"}
        assert wang and {str(ds.StudyInstanceUID) for ds in result.answers} == wang
        # answered in GB18030 when asked, the name's bytes as GB18030
        gb = client.find({"PatientName": "=王小东", "StudyInstanceUID": CT.study_uid}, charset="GB18030")
        assert len(gb.answers) == 1
        assert gb.raw[0].get_item("PatientName").value.rstrip(b" ") == "=王小东".encode("gb18030")
        # the UID side table on a GBK view, and a multi-UID cell
        assert client.uids(StudyInstanceUID=UID["m2"]) == {UID["m2"]}
        # Chinese PatientSex values (男/女) matched in SQL against the GBK column
        female = client.find({"PatientSex": "F", "PatientName": "", "StudyInstanceUID": ""})
        assert female.answers and all(str(ds.PatientSex) == "F" for ds in female.answers)

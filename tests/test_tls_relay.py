"""Outbound DICOM TLS through the relay (issue 6 item 1), against real TLS peers.

- the destination leg: a C-MOVE through the proxy to DCMTK ``storescp +tls`` (TLS only, mutual:
  it requires our client certificate); a destination whose certificate our ``ca`` does not
  trust ends the C-MOVE with 0xC003 and the proxy keeps serving;
- the PACS leg: Orthanc with ``DicomTlsEnabled`` as ``[pacs]`` with a ``tls`` table, by C-GET
  (one association, ours) and by C-MOVE (Orthanc calls back with TLS: the proxy listens with
  inbound TLS, and the cloud's C-MOVE comes over TLS too).

Why Orthanc and not dcmqrscp on the PACS leg: the Debian dcmqrscp 3.6.7 is built without
OpenSSL (``dcmqrscp --version`` lists only ZLIB; ``--help`` has no ``+tls``), while its
storescp/storescu/movescu have TLS.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine

from dicomproxy.app import build_context
from dicomproxy.config import Config, TlsConfig
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote, c_echo
from dicomproxy.transport.raw import sender as fastsender
from dicomproxy.transport.raw.requestor import RawAssociation
from dicomproxy.transport.tls import client_tls_args
from testkit import free_port
from testkit.dcmtk import DcmQrSCP, StoreSCP
from testkit.orthanc import Orthanc
from testkit.samples import demo_specs, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import running_orthanc

CT, MR, _, _ = demo_specs()
CLOUD = "CLOUD"
DEST = "DEST"
PROXY_AE = "DICOMPROXY"


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("tls-studies")
    return {spec.accession: write_study(spec, root / spec.accession) for spec in (CT, MR)}


def content_by_uid(paths: list[Path]) -> dict[str, tuple[str, str, str, bytes]]:
    """SOP Instance UID → (SOP class, study, series, pixel data bytes)."""
    out = {}
    for p in paths:
        ds = dcmread(p)
        out[str(ds.SOPInstanceUID)] = (
            str(ds.SOPClassUID),
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            bytes(ds.PixelData),
        )
    return out


def client_args(pki: dict[str, Path]) -> Any:
    """What a client holding our trusted client certificate passes to pynetdicom."""
    return client_tls_args(TlsConfig(cert=str(pki["client"]), ca=str(pki["ca"])), "127.0.0.1")


def tls_storescp(workdir: Path, key: Path, crt: Path, extra: list[str], probe: Any) -> StoreSCP:
    """DCMTK storescp speaking DICOM TLS only, with certificate ``crt``; ``probe``: the
    ``tls_args`` of the readiness C-ECHO."""
    _need("storescp")
    return StoreSCP(workdir, DEST, extra=["+tls", str(key), str(crt), *extra], tls_args=probe)


def _view(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(spec) for spec in (CT, MR)])
    engine.dispose()


# --- the destination leg ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def qr(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, list[Path]], proxy_port: int
) -> Iterator[DcmQrSCP]:
    """dcmqrscp (plain TCP) as the PACS: C-MOVE to the proxy, whose fast path receives."""
    _need("dcmqrscp")
    server = DcmQrSCP(
        tmp_path_factory.mktemp("tls-dcmqrscp"), peers={"proxy": Remote(PROXY_AE, "127.0.0.1", proxy_port)}
    ).start()
    server.load([p for paths in files.values() for p in paths])
    yield server
    server.stop()


def test_move_to_tls_destination_delivers_everything(
    make_config: Callable[..., Config],
    sqlite_url: str,
    proxy_port: int,
    qr: DcmQrSCP,
    files: dict[str, list[Path]],
    pki: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """storescp +tls (requires our client certificate, verifies it against the CA): every
    instance of both studies arrives, identical; the name check of the certificate is on.
    The onward C-STOREs go through pynetdicom, not the raw-socket sender (an SSLSocket must not
    be written by our thread while the reactor reads it)."""
    raw_sends: list[Path] = []
    real_send_file = fastsender.send_file
    monkeypatch.setattr(
        fastsender,
        "send_file",
        lambda a, path, *r, **k: raw_sends.append(path) or real_send_file(a, path, *r, **k),
    )
    real_store_file = RawAssociation.store_file
    monkeypatch.setattr(
        RawAssociation,
        "store_file",
        lambda self, path, *r, **k: raw_sends.append(path) or real_store_file(self, path, *r, **k),
    )
    dest = tls_storescp(
        tmp_path / "dest", pki["server_key"], pki["server_crt"], ["+cf", str(pki["ca"])], client_args(pki)
    ).start()
    # the destination really speaks TLS only: a plain C-ECHO gets nowhere
    assert not c_echo("PROBE", dest.remote, timeout=5).ok
    _view(sqlite_url)
    config = make_config(
        proxy={"port": proxy_port},
        pacs={"ae_title": qr.remote.ae_title, "host": "127.0.0.1", "port": qr.remote.port},
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {
                "ae_title": DEST,
                "host": "127.0.0.1",
                "port": dest.port,
                "tls": {"ca": str(pki["ca"]), "cert": str(pki["client"]), "check_hostname": True},
            },
        ],
    )
    ctx = build_context(config)
    server = Server(config, ctx)
    server.start()
    try:
        proxy = Remote(PROXY_AE, "127.0.0.1", server.port)
        result = scu.move(
            proxy, DEST, scu.identifier(study_uids=[CT.study_uid, MR.study_uid]), calling_ae=CLOUD
        )
        assert (result.status, result.completed, result.failed) == (0x0000, 14, 0), result.line()
        assert content_by_uid(dest.received()) == content_by_uid(files[CT.accession] + files[MR.accession])
        job = ctx.journal.recent(1)[0]
        assert (job["outcome"], job["completed"], job["failed"]) == ("success", 14, 0)
        assert raw_sends == []
    finally:
        server.stop(drain_timeout=2.0)
        dest.stop()


def test_move_to_untrusted_tls_destination_fails_with_c003(
    make_config: Callable[..., Config],
    sqlite_url: str,
    proxy_port: int,
    qr: DcmQrSCP,
    files: dict[str, list[Path]],
    pki: dict[str, Path],
    tmp_path: Path,
) -> None:
    """The destination's certificate comes from another CA than the proxy's ``ca``: the onward
    association never opens, the C-MOVE ends with 0xC003 (Unable to process: destination
    unavailable, every announced instance failed); the proxy keeps serving."""
    # -ic: the destination would take any client, so only the proxy's verification can fail
    # positive control: a client trusting the rogue CA does reach it (the readiness C-ECHO)
    rogue_ok = client_tls_args(TlsConfig(ca=str(pki["rogue_ca"])), "127.0.0.1")
    dest = tls_storescp(
        tmp_path / "dest", pki["rogue_server_key"], pki["rogue_server_crt"], ["-ic"], rogue_ok
    ).start()
    _view(sqlite_url)
    config = make_config(
        proxy={"port": proxy_port},
        pacs={"ae_title": qr.remote.ae_title, "host": "127.0.0.1", "port": qr.remote.port},
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {
                "ae_title": DEST,
                "host": "127.0.0.1",
                "port": dest.port,
                "tls": {"ca": str(pki["ca"]), "cert": str(pki["client"])},
            },
        ],
    )
    ctx = build_context(config)
    server = Server(config, ctx)
    server.start()
    try:
        proxy = Remote(PROXY_AE, "127.0.0.1", server.port)
        result = scu.move(
            proxy, DEST, scu.identifier(study_uids=[CT.study_uid]), calling_ae=CLOUD, timeout=60
        )
        assert (result.status, result.completed, result.failed) == (0xC003, 0, 10), result.line()
        assert "DEST" in result.comment or "destination" in result.comment.lower(), result.line()
        assert dest.received() == []
        job = ctx.journal.recent(1)[0]
        assert (job["outcome"], job["status"]) == ("failed", 0xC003)
        assert c_echo(CLOUD, proxy).ok  # still serving
    finally:
        server.stop(drain_timeout=2.0)
        dest.stop()


# --- the PACS leg -------------------------------------------------------------------------------


ORTHANC_AE = "ORTHTLS"


@pytest.fixture(scope="module")
def tls_orthanc(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, list[Path]], pki: dict[str, Path]
) -> Iterator[Orthanc]:
    """Orthanc whose DICOM port speaks TLS only and requires a client certificate of our CA."""
    settings = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki["server_crt"]),
        "DicomTlsPrivateKey": str(pki["server_key"]),
        "DicomTlsTrustedCertificates": str(pki["ca"]),
        "DicomTlsRemoteCertificateRequired": True,
    }
    with running_orthanc(
        tmp_path_factory.mktemp("tls-pacs"),
        files=[p for paths in files.values() for p in paths],
        ae_title=ORTHANC_AE,
        settings=settings,
        tls_args=client_args(pki),
    ) as server:
        yield server


def test_orthanc_tls_port_refuses_plain_tcp(tls_orthanc: Orthanc, pki: dict[str, Path]) -> None:
    """The PACS of the next tests really is TLS-only (else they would prove nothing)."""
    assert not c_echo("PROBE", tls_orthanc.remote, timeout=5).ok
    assert c_echo("PROBE", tls_orthanc.remote, tls_args=client_args(pki)).ok


def test_pacs_over_tls_by_c_get(
    make_config: Callable[..., Config],
    sqlite_url: str,
    tls_orthanc: Orthanc,
    files: dict[str, list[Path]],
    pki: dict[str, Path],
    storescp: Callable[..., StoreSCP],
) -> None:
    """``[pacs] retrieve = "c-get"`` with ``[pacs.tls]``: C-FIND and C-GET to Orthanc over TLS,
    onward to a plain storescp: everything arrives, identical."""
    dest = storescp(DEST)
    _view(sqlite_url)
    config = make_config(
        pacs={
            "ae_title": ORTHANC_AE,
            "host": "127.0.0.1",
            "port": tls_orthanc.dicom_port,
            "retrieve": "c-get",
            "tls": {"ca": str(pki["ca"]), "cert": str(pki["client"]), "check_hostname": True},
        },
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": DEST, "host": "127.0.0.1", "port": dest.port},
        ],
    )
    ctx = build_context(config)
    server = Server(config, ctx)
    server.start()
    try:
        proxy = Remote(PROXY_AE, "127.0.0.1", server.port)
        result = scu.move(
            proxy, DEST, scu.identifier(study_uids=[CT.study_uid, MR.study_uid]), calling_ae=CLOUD
        )
        assert (result.status, result.completed, result.failed) == (0x0000, 14, 0), result.line()
        assert content_by_uid(dest.received()) == content_by_uid(files[CT.accession] + files[MR.accession])
    finally:
        server.stop(drain_timeout=2.0)


def test_pacs_over_tls_without_its_ca_fails_with_c002(
    make_config: Callable[..., Config],
    sqlite_url: str,
    tls_orthanc: Orthanc,
    pki: dict[str, Path],
    storescp: Callable[..., StoreSCP],
) -> None:
    """``[pacs.tls] ca`` that does not sign the PACS's certificate: the C-FIND is not even sent,
    the C-MOVE ends with 0xC002 (PACS unavailable); the proxy keeps serving."""
    dest = storescp(DEST)
    _view(sqlite_url)
    config = make_config(
        pacs={
            "ae_title": ORTHANC_AE,
            "host": "127.0.0.1",
            "port": tls_orthanc.dicom_port,
            "retrieve": "c-get",
            "tls": {"ca": str(pki["rogue_ca"]), "cert": str(pki["client"])},
        },
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": DEST, "host": "127.0.0.1", "port": dest.port},
        ],
    )
    ctx = build_context(config)
    server = Server(config, ctx)
    server.start()
    try:
        proxy = Remote(PROXY_AE, "127.0.0.1", server.port)
        result = scu.move(
            proxy, DEST, scu.identifier(study_uids=[CT.study_uid]), calling_ae=CLOUD, timeout=60
        )
        assert result.status == 0xC002, result.line()
        assert dest.received() == []
        assert c_echo(CLOUD, proxy).ok
    finally:
        server.stop(drain_timeout=2.0)


def test_pacs_over_tls_by_c_move_with_inbound_tls(
    make_config: Callable[..., Config],
    sqlite_url: str,
    tls_orthanc: Orthanc,
    files: dict[str, list[Path]],
    pki: dict[str, Path],
    storescp: Callable[..., StoreSCP],
) -> None:
    """``retrieve = "c-move"`` over TLS: Orthanc's C-STOREs come back to our listening port with
    TLS (``UseDicomTls``, its own certificate as client certificate), so the proxy listens with
    inbound TLS requiring a client certificate of the CA — and the cloud's C-MOVE comes over
    TLS too (pynetdicom: the Debian movescu 3.6.7 has no ``+tls``). The raw store acceptor stays
    out of TLS associations."""
    dest = storescp(DEST)
    _view(sqlite_url)
    config = make_config(
        proxy={
            "tls": {"cert": str(pki["server"]), "ca": str(pki["ca"]), "require_client_cert": True},
        },
        pacs={
            "ae_title": ORTHANC_AE,
            "host": "127.0.0.1",
            "port": tls_orthanc.dicom_port,
            "retrieve": "c-move",
            "tls": {"ca": str(pki["ca"]), "cert": str(pki["client"])},
        },
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": DEST, "host": "127.0.0.1", "port": dest.port},
        ],
    )
    ctx = build_context(config)
    server = Server(config, ctx)
    server.start()
    try:
        assert server.store_acceptor is None
        tls_orthanc.add_modality("proxy", Remote(PROXY_AE, "127.0.0.1", server.port), tls=True)
        proxy = Remote(PROXY_AE, "127.0.0.1", server.port)
        assert not c_echo(CLOUD, proxy, timeout=5).ok  # inbound is TLS only
        query = scu.identifier(study_uids=[CT.study_uid])
        result = scu.move(proxy, DEST, query, calling_ae=CLOUD, tls_args=client_args(pki))
        assert (result.status, result.completed, result.failed) == (0x0000, 10, 0), result.line()
        assert content_by_uid(dest.received()) == content_by_uid(files[CT.accession])
        job = ctx.journal.recent(1)[0]
        assert (job["outcome"], job["completed"], job["failed"]) == ("success", 10, 0)
    finally:
        server.stop(drain_timeout=2.0)


def test_find_forwarded_to_pacs_over_tls(
    make_config: Callable[..., Config],
    run_proxy: Callable[[Config], Server],
    sqlite_url: str,
    tls_orthanc: Orthanc,
    pki: dict[str, Path],
) -> None:
    """C-FIND's PACS leg (SERIES/IMAGE forwarding, study counts: dicomproxy.pacs.find) honours
    ``[pacs.tls]`` too — it is the same outbound connection to the PACS as the relay's."""
    from tests.view_data import FindClient

    _view(sqlite_url)
    config = make_config(
        pacs={
            "ae_title": ORTHANC_AE,
            "host": "127.0.0.1",
            "port": tls_orthanc.dicom_port,
            "tls": {"ca": str(pki["ca"]), "cert": str(pki["client"])},
        },
    )
    server = run_proxy(config)
    with FindClient(server.port) as client:
        series = client.find({"StudyInstanceUID": CT.study_uid, "SeriesInstanceUID": ""}, level="SERIES")
        assert series.status == 0
        assert {str(ds.SeriesInstanceUID) for ds in series.answers} == {CT.series_uid(0), CT.series_uid(1)}
        counts = {"NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": ""}
        (study,) = client.find({"AccessionNumber": CT.accession, "StudyInstanceUID": "", **counts}).answers
        assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (2, 10)

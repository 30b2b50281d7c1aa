"""The transport seam (dicomproxy.transport.link): both implementations against the same real peers.

Every operation the relay uses — C-FIND, C-MOVE, C-GET (serving the archive's C-STOREs), C-STORE,
release — is run on the raw-socket link and on the pynetdicom one, against a real Orthanc and a
real DCMTK storescp, and must give the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomproxy.pacs.client import RECEIVE_SYNTAXES, _scp_roles
from dicomproxy.status import Status
from dicomproxy.transport.link import IncomingStore, Link, NoAssociation, open_link
from dicomproxy.transport.net import Remote
from dicomproxy.transport.pynetdicom_link import PynetdicomLink
from dicomproxy.transport.raw.link import RawLink
from testkit import free_port
from testkit.dcmtk import StoreSCP
from testkit.orthanc import Orthanc

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]

KINDS = {"raw": (True, RawLink), "pynetdicom": (False, PynetdicomLink)}
FIND = str(StudyRootQueryRetrieveInformationModelFind)
MOVE = str(StudyRootQueryRetrieveInformationModelMove)
GET = str(StudyRootQueryRetrieveInformationModelGet)


def _open(kind: str, remote: Remote, contexts: list, tmp_path: Path, **kwargs: object) -> Link:
    fast, cls = KINDS[kind]
    link = open_link("PROXY", remote, contexts, fast_path=fast, store_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
    assert isinstance(link, cls) and link.is_established
    return link


def _ct(demo_files: dict[str, list[Path]]) -> tuple[str, list[Path]]:
    paths = demo_files["A0001"]
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths


def _image_query(study_uid: str) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = ""
    q.SOPInstanceUID = ""
    return q


def _sop_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


@pytest.mark.parametrize("kind", KINDS)
def test_find(kind: str, orthanc: Orthanc, demo_files: dict[str, list[Path]], tmp_path: Path) -> None:
    study, paths = _ct(demo_files)
    link = _open(kind, orthanc.remote, [build_context(FIND)], tmp_path)
    try:
        answers = list(link.find(FIND, _image_query(study), 5))
    finally:
        link.close()
    assert not link.is_established
    assert [code for code, _ in answers[:-1]] == [Status.PENDING] * len(paths)
    assert answers[-1] == (Status.SUCCESS, None)
    assert {str(ds.SOPInstanceUID) for _, ds in answers[:-1] if ds is not None} == _sop_uids(paths)


@pytest.mark.parametrize("kind", KINDS)
def test_get_serves_the_archives_stores(
    kind: str, orthanc: Orthanc, demo_files: dict[str, list[Path]], tmp_path: Path
) -> None:
    study, paths = _ct(demo_files)
    classes = sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths})
    contexts = [build_context(GET), *(build_context(uid, list(RECEIVE_SYNTAXES)) for uid in classes)]
    got: list[tuple[IncomingStore, bytes]] = []

    def on_store(request: IncomingStore, path: Path) -> int:
        got.append((request, path.read_bytes()))
        return Status.SUCCESS

    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study
    link = _open(kind, orthanc.remote, contexts, tmp_path, roles=_scp_roles(classes))
    try:
        status = link.get(GET, q, 9, on_store)
    finally:
        link.close()
    assert status == Status.SUCCESS
    assert {r.sop_instance_uid for r, _ in got} == _sop_uids(paths)
    assert {r.calling_ae for r, _ in got} == {orthanc.ae_title}
    assert all(r.sop_class_uid in classes and r.transfer_syntax for r, _ in got)
    assert all(data[128:132] == b"DICM" for _, data in got)  # a whole DICOM file per instance


@pytest.mark.parametrize("kind", KINDS)
def test_move_and_store(
    kind: str,
    orthanc: Orthanc,
    demo_files: dict[str, list[Path]],
    storescp: Callable[..., StoreSCP],
    tmp_path: Path,
) -> None:
    """C-MOVE to a destination Orthanc knows; to one it does not (Orthanc answers 0xC000 there, not
    0xA801: carried unchanged); C-STORE of files as they are."""
    study, paths = _ct(demo_files)
    dest = storescp(ae_title=f"LINK{kind[:3].upper()}")
    orthanc.add_modality(dest.ae_title, dest.remote)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study
    link = _open(kind, orthanc.remote, [build_context(MOVE)], tmp_path)
    try:
        assert link.move(MOVE, dest.ae_title, q, 11) == Status.SUCCESS
        assert link.move(MOVE, "NOBODY", q, 12) == Status.UNABLE_TO_PROCESS
    finally:
        link.close()
    assert _sop_uids(dest.received()) == _sop_uids(paths)

    direct = storescp(ae_title=f"STORE{kind[:3].upper()}")
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    link = _open(
        kind, direct.remote, [build_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)], tmp_path
    )
    try:
        codes = [link.store(p, i + 1, ("CLOUD", 7)) for i, p in enumerate(paths)]
    finally:
        link.close()
    assert codes == [Status.SUCCESS] * len(paths)
    assert _sop_uids(direct.received()) == _sop_uids(paths)


@pytest.mark.parametrize("kind", KINDS)
def test_nobody_listening_is_no_association(kind: str, tmp_path: Path) -> None:
    fast, _ = KINDS[kind]
    with pytest.raises(NoAssociation) as err:
        open_link("PROXY", Remote("GONE", "127.0.0.1", free_port()), [build_context(FIND)], fast_path=fast)
    assert not err.value.rejected


def test_tls_is_never_raw(pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice is made in one place: TLS goes to pynetdicom even with ``fast_path`` (the raw link
    is plain TCP only). Unit test: which opener is called is all that is checked here; TLS relays
    end to end are tests/test_tls_relay.py."""
    from dicomproxy.config import TlsConfig
    from dicomproxy.transport import link as link_module

    def no_raw(*args: object, **kwargs: object) -> None:
        raise AssertionError("the raw link was chosen for TLS")

    opened: list[object] = []

    def spy(calling_ae: str, remote: Remote, **kwargs: object) -> None:
        opened.append(kwargs["tls_args"])
        raise NoAssociation(remote, "spy")

    monkeypatch.setattr(RawLink, "open", no_raw)
    monkeypatch.setattr(link_module, "open_association", spy)
    tls = TlsConfig(ca=str(pki["ca"]))
    with pytest.raises(NoAssociation):
        open_link("PROXY", Remote("TLS", "127.0.0.1", 1), [build_context(FIND)], tls=tls, fast_path=True)
    assert len(opened) == 1 and opened[0] is not None

"""STOW-RS delivery to a real cloud: Orthanc with its DICOMweb plugin (Debian ``orthanc-dicomweb``).

The cloud asks for a study by C-MOVE with Move Destination = the AE title of a ``[[peers]] kind =
"dicomweb"`` entry; the proxy fetches it from the PACS (the pynetdicom fake PACS) and stores it at
Orthanc's ``/dicom-web/studies`` in batches. Every instance must then be in Orthanc with the
transfer syntax the compression mode chose, and the journal and the C-MOVE's counts must say so.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from dicomproxy.checks import dicomweb_checks
from dicomproxy.config import LOSSLESS_TARGETS, LOSSY_TARGETS, Config
from dicomproxy.relay.journal import Journal
from dicomproxy.server import Server
from testkit.moverig import MoveProxies, move_study
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, write_study
from tests.conftest import running_orthanc

pytestmark = pytest.mark.orthanc

CLOUD, WEB = "CLOUD", "WEBCLOUD"
N = 7  # more than one batch of 3, the last one short


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = StudySpec("CT", accession="STOW01", series=1, images_per_series=N, seed=41)
    return write_study(spec, tmp_path_factory.mktemp("stow-study"))


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("stow-cloud"), dicomweb=True) as server:
        yield server


def web_peer(url: str, **extra: Any) -> dict[str, Any]:
    # Orthanc's DICOMweb plugin 1.7 refuses a part that names its transfer syntax (HTTP 415)
    return {
        "ae_title": WEB,
        "kind": "dicomweb",
        "url": url,
        "max_batch": 3,
        "transfer_syntax_param": False,
        **extra,
    }


@pytest.fixture
def proxy(move_proxies: MoveProxies, study_files: list[Path]) -> Callable[[dict[str, Any]], Server]:
    def make(peer: dict[str, Any]) -> Server:
        peers = [{"ae_title": CLOUD, "host": "127.0.0.1", "port": 1}, peer]
        return move_proxies.start(study_files, peers, proxy={"retries": 2, "retry_delay": 0.05})[1]

    return make


def stored_syntaxes(cloud: Orthanc) -> dict[str, str]:
    """SOP Instance UID → the transfer syntax Orthanc holds it in."""
    out = {}
    for iid in cloud.request("GET", "/instances"):
        header = cloud.request("GET", f"/instances/{iid}/header?simplify")
        out[header["MediaStorageSOPInstanceUID"]] = header["TransferSyntaxUID"]
    return out


@pytest.mark.parametrize("mode", ["none", "lossless", "lossy"])
def test_c_move_to_a_dicomweb_peer_stores_every_instance_in_orthanc(
    mode: str, proxy: Callable[[dict[str, Any]], Server], cloud: Orthanc, study_files: list[Path]
) -> None:
    cloud.clear()
    server = proxy(web_peer(cloud.stow_url, compression=mode))
    result = move_study(server, WEB, study_files, CLOUD)
    assert (result.status, result.completed, result.failed, result.warning) == (0x0000, N, 0, 0), (
        result.line()
    )

    originals = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in study_files)}
    held = stored_syntaxes(cloud)
    assert set(held) == set(originals)  # every instance, under its own UID (uid_policy keep)
    wanted = {
        "none": {ExplicitVRLittleEndian},
        "lossless": set(LOSSLESS_TARGETS),
        "lossy": set(LOSSY_TARGETS),
    }
    assert set(held.values()) <= wanted[mode], held
    if mode == "lossless":  # decoded by Orthanc's copy: the same pixels
        for uid, original in originals.items():
            iid = cloud.request("POST", "/tools/lookup", uid.encode())[0]["ID"]
            raw = cloud.raw(f"/instances/{iid}/file")
            got = dcmread(io.BytesIO(raw))
            assert np.array_equal(got.pixel_array, original.pixel_array)

    journal = Journal.for_config("", server.config.data_path)
    try:
        job = journal.recent(1)[0]
        assert (job["outcome"], job["completed"], job["failed"]) == ("success", N, 0)
        view = journal.get(job["id"], all_instances=True)
        assert view is not None
        rows = view.instances
        assert sorted(r["sop_instance_uid"] for r in rows) == sorted(originals)
        assert {r["state"] for r in rows} == {"sent"}
        assert {r["sop_instance_uid"]: r["transfer_syntax"] for r in rows} == held
        assert job["bytes_out"] == sum(r["bytes"] for r in rows) > 0
    finally:
        journal.close()


def test_check_config_finds_orthancs_dicomweb_endpoint(
    make_config: Callable[..., Config], cloud: Orthanc
) -> None:
    config = make_config(peers=[web_peer(cloud.stow_url)])
    (result,) = dicomweb_checks(config, timeout=5)
    assert result.ok and "HTTP 200" in result.detail, result  # QIDO-RS answered the GET

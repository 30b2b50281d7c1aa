"""Negotiation against a real DCMTK storescp: propose with proposed_syntaxes (one context per syntax),
choose per instance with choose_target among what was accepted, transcode, C-STORE the file, and check
what arrived. The relay does the same; this proves the pieces fit a real SCP."""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.uid import (
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
)
from pynetdicom import AE

from dicomproxy.transcode import Policy, choose_target, proposed_syntaxes, read_info, transcode_file
from dicomproxy.transcode.syntaxes import DEFAULT_LOSSLESS
from testkit.dcmtk import StoreSCP
from testkit.samples import StudySpec, make_instance

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
POLICY = Policy.default("lossless")

pytestmark = pytest.mark.dcmtk


@pytest.fixture
def instances(tmp_path: Path) -> list[Path]:
    paths = []
    for kind in ("CT", "US"):
        ds = make_instance(StudySpec(kind, images_per_series=1), 0, 0)
        paths.append(tmp_path / f"{kind}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    for name in ("MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "test-SR.dcm"):
        paths.append(tmp_path / name)
        shutil.copyfile(TEST_FILES / name, paths[-1])
    return paths


def relay(policy: Policy, files: list[Path], scp: StoreSCP, work: Path) -> dict[str, str]:
    """Send ``files`` the way the relay will; returns SOP Instance UID → transfer syntax chosen."""
    infos = [read_info(p) for p in files]
    held: dict[str, list[str]] = defaultdict(list)
    for info in infos:
        held[info.sop_class_uid].append(info.transfer_syntax)
    ae = AE(ae_title="DICOMPROXY")
    for sop_class, syntaxes in held.items():
        for ts in proposed_syntaxes(policy, sop_class, syntaxes):
            ae.add_requested_context(sop_class, ts)
    assert len(ae.requested_contexts) <= 128
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
    assert assoc.is_established
    accepted: dict[str, list[str]] = defaultdict(list)
    for cx in assoc.accepted_contexts:
        accepted[cx.abstract_syntax].append(cx.transfer_syntax[0])
    chosen = {}
    try:
        for i, (path, info) in enumerate(zip(files, infos, strict=True)):
            target = choose_target(policy, info, accepted[info.sop_class_uid])
            result = transcode_file(path, work / f"out{i}.dcm", target, policy)
            status = assoc.send_c_store(result.path)
            assert status.Status == 0x0000, hex(status.Status)
            chosen[result.sop_instance_uid] = target
    finally:
        assoc.release()
    return chosen


def received(scp: StoreSCP) -> dict[str, str]:
    out = {}
    for path in scp.received():
        meta = pydicom.filereader.read_file_meta_info(path)
        out[str(meta.MediaStorageSOPInstanceUID)] = str(meta.TransferSyntaxUID)
    return out


def test_uncompressed_only_destination_gets_everything_decompressed(
    storescp: Callable[..., StoreSCP], instances: list[Path], tmp_path: Path
) -> None:
    scp = storescp("IMPLICIT", syntaxes="implicit")
    for mode in ("lossless", "lossy"):
        chosen = relay(replace(POLICY, mode=mode), instances, scp, tmp_path)  # type: ignore[arg-type]
        assert set(chosen.values()) == {ImplicitVRLittleEndian}
    got = received(scp)
    assert len(got) == len(instances) and set(got.values()) == {ImplicitVRLittleEndian}
    # what arrived decodes to the same pixels as the source
    ct = next(p for p in scp.received() if dcmread(p, stop_before_pixels=True).Modality == "CT")
    assert (dcmread(ct).pixel_array == dcmread(instances[0]).pixel_array).all()


def test_accept_all_destination(
    storescp: Callable[..., StoreSCP], instances: list[Path], tmp_path: Path
) -> None:
    scp = storescp("ALL", syntaxes="all")
    chosen = relay(POLICY, instances, scp, tmp_path)
    infos = {read_info(p).sop_instance_uid: read_info(p) for p in instances}
    got = received(scp)
    assert got == chosen  # what arrived is what we chose, per instance
    ct = next(uid for uid, info in infos.items() if info.modality == "CT")
    # DCMTK 3.6.7 does not know HTJ2K (.4.201): it rejects that context and JPEG-LS is next in order
    assert chosen[ct] in (DEFAULT_LOSSLESS[0], JPEGLSLossless)
    sr = next(uid for uid, info in infos.items() if not info.has_pixel_data)
    assert chosen[sr] == infos[sr].transfer_syntax  # non-image: as held
    jpeg = next(uid for uid, info in infos.items() if info.transfer_syntax == JPEGBaseline8Bit)
    assert chosen[jpeg] == JPEGBaseline8Bit  # already lossy: as held, not re-encoded

    lossy = storescp("LOSSY", syntaxes="all")
    chosen = relay(replace(POLICY, mode="lossy"), instances, lossy, tmp_path)
    assert chosen[ct] == JPEGLSNearLossless  # 16-bit: JPEG Baseline does not apply
    us = next(uid for uid, info in infos.items() if info.modality == "US")
    assert chosen[us] == JPEGBaseline8Bit
    assert chosen[jpeg] == JPEGBaseline8Bit and chosen[sr] == infos[sr].transfer_syntax
    assert received(lossy) == chosen

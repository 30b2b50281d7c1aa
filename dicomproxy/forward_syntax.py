"""SHIM until branch ``transcode`` lands: transfer-syntax choice for ``none`` mode only.

Same names and signatures as ``dicomproxy.transcode`` (Policy, policy_for, InstanceInfo,
read_info, proposed_syntaxes, choose_target, transcode_file, TranscodeResult), so the
lead switches the relay over by changing the one import in :mod:`dicomproxy.forward`.

``none`` mode (issue 5): propose the source syntax plus Explicit and Implicit VR Little
Endian, each as its own presentation context; send the file untouched when its syntax was
accepted; otherwise decode and write it in an accepted uncompressed syntax (UIDs kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomproxy.config import CompressionMode, Config, PeerConfig

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Policy:
    mode: CompressionMode = "none"


def policy_for(config: Config, peer: PeerConfig | None) -> Policy:
    mode = peer.compression if peer is not None and peer.compression else config.compression.mode
    return Policy(mode=mode)


@dataclass(frozen=True)
class InstanceInfo:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def read_info(path: Path) -> InstanceInfo:
    """File Meta Information only (PS3.10 7.1): never reads the data set."""
    meta = read_file_meta_info(path)
    return InstanceInfo(
        str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID)
    )


def proposed_syntaxes(policy: Policy, sop_class_uid: str, source_syntaxes: list[str]) -> list[str]:
    """Transfer syntaxes to propose for one SOP class, best first; each gets its own context."""
    out: list[str] = []
    for ts in [*source_syntaxes, *UNCOMPRESSED]:
        if ts not in out:
            out.append(ts)
    return out


def choose_target(policy: Policy, info: InstanceInfo, accepted: list[str]) -> str:
    """The source syntax if accepted (pass-through), else the cheapest uncompressed one; '' if none."""
    if info.transfer_syntax in accepted:
        return info.transfer_syntax
    for ts in (*UNCOMPRESSED, DeflatedExplicitVRLittleEndian):
        if ts in accepted:
            return str(ts)
    return ""


@dataclass(frozen=True)
class TranscodeResult:
    path: Path
    transfer_syntax: str
    lossy: bool = False


def transcode_file(src: Path, dst: Path, target: str, policy: Policy) -> TranscodeResult:
    """Decode ``src`` and write it to ``dst`` in uncompressed ``target`` (same SOP Instance UID)."""
    ds = dcmread(src)
    uid = UID(target)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(
        dst, implicit_vr=uid.is_implicit_VR, little_endian=uid.is_little_endian, enforce_file_format=True
    )
    return TranscodeResult(dst, target)

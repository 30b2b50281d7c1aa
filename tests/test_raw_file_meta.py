"""wire.read_file_meta (issue 29): the onward sender's reading of a file's meta group gives what
pydicom's reader (pynetdicom's ``split_dataset``) gives, and declines what it cannot read alone."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dsutils import encode, split_dataset

from dicomproxy.transport.raw import wire
from dicomproxy.transport.raw.requestor import file_meta

uids = st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,7}", fullmatch=True).filter(lambda u: len(u) <= 64)
syntaxes = st.sampled_from(
    ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.201"]
)


def write(path: Path, meta: FileMetaDataset, body: Dataset | None, *, group_length: bool) -> Path:
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=group_length)  # type: ignore[arg-type]
    if body is not None:
        out.write(encode(body, False, True) or b"")
    path.write_bytes(out.getvalue())
    return path


def expected(path: Path) -> wire.FileMeta:
    meta, offset = split_dataset(path)
    return wire.FileMeta(
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
        offset,
    )


@settings(max_examples=150, deadline=None)
@given(
    sop_class=uids,
    sop_instance=uids,
    syntax=syntaxes,
    version=st.one_of(st.none(), st.from_regex(r"[A-Z0-9_]{1,16}", fullmatch=True)),
    source_ae=st.one_of(st.none(), st.from_regex(r"[A-Z][A-Z0-9]{0,15}", fullmatch=True)),
    private=st.one_of(st.none(), st.binary(max_size=600)),
    group_length=st.booleans(),
    with_body=st.booleans(),
)
def test_matches_pydicom(
    tmp_path_factory: pytest.TempPathFactory,
    sop_class: str,
    sop_instance: str,
    syntax: str,
    version: str | None,
    source_ae: str | None,
    private: bytes | None,
    group_length: bool,
    with_body: bool,
) -> None:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.3811.3.0.4"
    if version is not None:
        meta.ImplementationVersionName = version
    if source_ae is not None:
        meta.SourceApplicationEntityTitle = source_ae
    if private is not None:
        meta.PrivateInformationCreatorUID = "1.2.3"
        meta.PrivateInformation = private
    body = None
    if with_body:
        body = Dataset()
        body.SOPClassUID = sop_class
        body.PatientName = "Wang^XiaoDong"
    path = write(tmp_path_factory.mktemp("meta") / "x.dcm", meta, body, group_length=group_length)
    assert wire.read_file_meta(path) == expected(path)


def test_our_own_meta(tmp_path: Path) -> None:
    """The group the store acceptor writes in front of each received data set."""
    path = tmp_path / "x.dcm"
    path.write_bytes(
        wire.file_preamble_and_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.1")
        + b"\x08\x00\x16\x00UI\x02\x001\x00"
    )
    got = wire.read_file_meta(path)
    assert got == expected(path)
    assert (got.sop_class_uid, got.sop_instance_uid, got.transfer_syntax) == (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3.45",
        "1.2.840.10008.1.2.1",
    )


def _meta(**extra: object) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    for k, v in extra.items():
        setattr(meta, k, v)
    return meta


def test_declines_what_it_cannot_read_alone(tmp_path: Path) -> None:
    """No preamble, a UID missing, a meta group longer than the bytes read: ValueError, and the
    sender's :func:`file_meta` then gives pydicom's answer."""
    body = Dataset()
    body.PatientID = "X"
    long_meta = write(
        tmp_path / "long.dcm",
        _meta(PrivateInformationCreatorUID="1.2", PrivateInformation=b"\x01" * 9000),
        body,
        group_length=True,
    )
    no_instance = _meta()
    del no_instance.MediaStorageSOPInstanceUID
    cases = {
        "not within": long_meta,
        "without \\(0002,0003\\)": write(tmp_path / "noinst.dcm", no_instance, body, group_length=False),
    }
    for message, path in cases.items():
        with pytest.raises(ValueError, match=message):
            wire.read_file_meta(path)
    assert file_meta(long_meta) == expected(long_meta)
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(b"\x08\x00\x16\x00" + b"\x00" * 200)
    with pytest.raises(ValueError, match="no DICOM preamble"):
        wire.read_file_meta(bare)

"""wire.identifier_uids (issue 29): the IMAGE-level listing's reading of a C-FIND response gives
what pydicom gives for the UIDs it asks for, and declines (None) what it cannot read alone."""

from __future__ import annotations

from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from dicomproxy.pacs.client import LISTED
from dicomproxy.transport.raw import wire

TAGS = {int(tag_for_keyword(k) or 0): k for k in LISTED}
uids = st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,7}", fullmatch=True).filter(lambda u: len(u) <= 64)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20).map(
    lambda t: t.replace("\\", "").replace("^", "").strip()
)


def pydicom_reading(raw: bytes, implicit: bool) -> dict[str, str]:
    ds = decode(BytesIO(raw), implicit, True)
    return {k: str(ds.get(k, "") or "") for k in LISTED}


@settings(max_examples=200, deadline=None)
@given(
    implicit=st.booleans(),
    sop=st.one_of(st.none(), uids),
    series=st.one_of(st.none(), uids),
    sop_class=st.one_of(st.none(), uids, st.just("")),
    name=st.one_of(st.none(), text),
    aet=st.one_of(st.none(), st.from_regex(r"[A-Z][A-Z0-9]{0,15}", fullmatch=True)),
    frames=st.one_of(st.none(), st.integers(1, 9999)),
    private=st.one_of(st.none(), st.binary(max_size=300)),
)
def test_matches_pydicom(
    implicit: bool,
    sop: str | None,
    series: str | None,
    sop_class: str | None,
    name: str | None,
    aet: str | None,
    frames: int | None,
    private: bytes | None,
) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = "1.2.3"
    for keyword, value in (
        ("SOPInstanceUID", sop),
        ("SeriesInstanceUID", series),
        ("SOPClassUID", sop_class),
    ):
        if value is not None:
            setattr(ds, keyword, value)
    if name is not None:
        ds.PatientName = name
    if aet is not None:
        ds.RetrieveAETitle = aet
    if frames is not None:
        ds.NumberOfFrames = frames
    if private is not None:
        ds.add_new(0x00091010, "OB", private)
    raw = encode(ds, implicit, True)
    assert raw is not None
    assert wire.identifier_uids(raw, implicit, TAGS) == pydicom_reading(raw, implicit)


def _with(**elements: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = "1.2.3.4"
    for k, v in elements.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize("implicit", [True, False])
def test_declines_what_is_not_simple(implicit: bool) -> None:
    """A sequence of undefined length, a multi-valued UID, a truncated identifier: None, so the
    link asks pydicom. A sequence of defined length (pynetdicom's encoding) is stepped over."""
    item = Dataset()
    item.CodeValue = "1"
    nested = encode(_with(ReferencedSOPSequence=[item]), implicit, True)
    multi = encode(_with(SOPClassUID=["1.2", "1.3"]), implicit, True)
    plain = encode(_with(SOPClassUID="1.2.840.10008.5.1.4.1.1.2"), implicit, True)
    assert nested is not None and multi is not None and plain is not None
    # (0008,1199) Referenced SOP Sequence, undefined length, empty: sequence delimitation item
    undefined = (
        plain
        + b"\x08\x00\x99\x11"
        + (b"" if implicit else b"SQ\x00\x00")
        + b"\xff\xff\xff\xff\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    assert "ReferencedSOPSequence" in decode(BytesIO(undefined), implicit, True)
    assert wire.identifier_uids(undefined, implicit, TAGS) is None
    assert wire.identifier_uids(multi, implicit, TAGS) is None
    assert wire.identifier_uids(plain[:-3], implicit, TAGS) is None
    assert wire.identifier_uids(nested, implicit, TAGS) == pydicom_reading(nested, implicit)
    assert wire.identifier_uids(plain, implicit, TAGS) == {
        "SOPInstanceUID": "1.2.3.4",
        "SeriesInstanceUID": "",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
    }

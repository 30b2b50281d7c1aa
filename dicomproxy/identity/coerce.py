"""Which attributes of an instance the view's identity changes, and the change itself (pure).

Rules (docs/identity.md):

- an attribute is changed only when the view has a value and it differs from the instance's (an
  empty view cell never erases what the modality wrote);
- an Issuer of Patient ID the view does not replace is removed when the Patient ID changes (it
  named the PACS's ID domain), and so is an issuer's qualifiers sequence whose issuer changed and
  whose new issuer the ``[hospital] issuers`` table does not name (likewise for the accession);
- every value replaced or removed goes, as it was, into one new item of Original Attributes
  Sequence (0400,0561) with Reason for the Attribute Modification (0400,0565) ``COERCE``
  (PS3.3 C.12.1.1.9); attributes that were absent and are added have no previous value to keep;
- a new value that the instance's Specific Character Set (0008,0005) cannot carry switches it to
  ``ISO_IR 192`` (PS3.3 C.12.1.1.2); pydicom's writer decodes the data set's texts in the set they
  were read in and encodes them in the new one.

SOP Instance UID, pixel data and everything else stay as they are.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pydicom.charset
from pydicom.dataset import Dataset

from dicomproxy.config import UniversalId
from dicomproxy.identity.model import Identity

#: (0400,0565) Reason for the Attribute Modification, defined term (PS3.3 C.12.1.1.9.2).
COERCE_REASON = "COERCE"
#: The stand-alone set a switched data set gets (UTF-8 carries every name the view holds).
UTF8 = "ISO_IR 192"
PATIENT_QUALIFIERS = "IssuerOfPatientIDQualifiersSequence"  # (0010,0024)
ACCESSION_ISSUER = "IssuerOfAccessionNumberSequence"  # (0008,0051)


@dataclass(frozen=True)
class Change:
    """One attribute to set (a text, or a Universal Entity ID for an issuer sequence) or remove (None)."""

    keyword: str
    value: str | UniversalId | None


def current(ds: Dataset, keyword: str) -> str | None:
    """The instance's value as text (a PN as its full ``family^given=…`` string); None = absent."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    return "" if value is None else str(value)


def entity_of(ds: Dataset, keyword: str) -> UniversalId | None:
    """The Universal Entity ID (0040,0032) and type (0040,0033) of an issuer sequence's first item."""
    seq = ds.get(keyword)
    if not seq:
        return None
    item = seq[0]
    return UniversalId(
        str(item.get("UniversalEntityID", "") or ""), str(item.get("UniversalEntityIDType", "") or "")
    )


def plan_changes(ds: Dataset, identity: Identity) -> list[Change]:
    """The changes that give ``ds`` the view's ``identity`` (empty: it carries it already)."""
    changes = [
        Change(keyword, new)
        for keyword, new in identity.values().items()
        if new and current(ds, keyword) != new
    ]
    changed = {c.keyword for c in changes}
    if not identity.issuer and "PatientID" in changed and current(ds, "IssuerOfPatientID"):
        changes.append(Change("IssuerOfPatientID", None))  # the PACS's ID domain, not the new ID's
        changed.add("IssuerOfPatientID")
    changes += _issuer_sequence(
        ds, PATIENT_QUALIFIERS, identity.issuer_uid, bool(changed & {"PatientID", "IssuerOfPatientID"})
    )
    changes += _issuer_sequence(ds, ACCESSION_ISSUER, identity.accession_issuer, "AccessionNumber" in changed)
    return changes


def _issuer_sequence(
    ds: Dataset, keyword: str, wanted: UniversalId | None, owner_changed: bool
) -> list[Change]:
    if wanted is not None:
        return [] if entity_of(ds, keyword) == wanted else [Change(keyword, wanted)]
    if owner_changed and keyword in ds:
        return [Change(keyword, None)]  # it qualified the value that was replaced
    return []


def charset_for(declared: Sequence[str], texts: Iterable[str]) -> str | None:
    """The Specific Character Set to switch to so that ``texts`` can be written; None = keep ``declared``.

    Kept when every text is ASCII, or when ``declared`` is one set without code extensions that
    encodes them all (GB18030, GBK, ISO_IR 192, …); otherwise ISO_IR 192."""
    texts = [t for t in texts if not t.isascii()]
    if not texts:
        return None
    if len(declared) == 1 and not declared[0].startswith("ISO 2022"):
        encoding = pydicom.charset.python_encoding.get(declared[0])
        if encoding is not None:
            try:
                for text in texts:
                    text.encode(encoding)
                return None
            except UnicodeEncodeError:
                pass
    return UTF8


def declared_of(ds: Dataset) -> list[str]:
    value = ds.get("SpecificCharacterSet")
    if value is None or value == "":
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def entity_item(uid: UniversalId) -> Dataset:
    """One item of an issuer sequence (HL7v2 Hierarchic Designator Macro, PS3.3 Table 10-17)."""
    item = Dataset()
    item.UniversalEntityID = uid.id  # (0040,0032) UT
    item.UniversalEntityIDType = uid.type  # (0040,0033) CS
    return item


def apply_changes(
    ds: Dataset, changes: Sequence[Change], *, system: str, source: str, when: dt.datetime | None = None
) -> bool:
    """Make ``changes`` in ``ds`` and record what they replaced (PS3.3 C.12.1.1.9); False if none."""
    if not changes:
        return False
    switch = charset_for(declared_of(ds), (c.value for c in changes if isinstance(c.value, str)))
    if switch is not None:  # pydicom decodes the old set's texts when it writes the new one
        ds.SpecificCharacterSet = switch
    originals = Dataset()
    for change in changes:
        if change.keyword in ds:
            originals.add(copy.deepcopy(ds[change.keyword]))
        if change.value is None:
            del ds[change.keyword]
        elif isinstance(change.value, UniversalId):
            setattr(ds, change.keyword, [entity_item(change.value)])
        else:
            setattr(ds, change.keyword, change.value)
    if len(originals):
        record_originals(ds, originals, system=system, source=source, when=when)
    return True


def record_originals(
    ds: Dataset,
    originals: Dataset,
    *,
    system: str,
    source: str,
    when: dt.datetime | None = None,
    reason: str = COERCE_REASON,
) -> None:
    """Append one Original Attributes Sequence item holding ``originals`` (PS3.3 Table C.12-1)."""
    when = when or dt.datetime.now().astimezone()
    item = Dataset()
    item.AttributeModificationDateTime = when.strftime("%Y%m%d%H%M%S.%f%z")  # (0400,0562) DT
    item.ModifyingSystem = system  # (0400,0563) LO: our AE title
    item.SourceOfPreviousValues = source  # (0400,0564) LO, Type 2: the archive's AE title, or empty
    item.ReasonForTheAttributeModification = reason  # (0400,0565) CS: COERCE | CORRECT
    item.ModifiedAttributesSequence = [originals]  # (0400,0550): the previous values, one item
    if "OriginalAttributesSequence" in ds:
        ds.OriginalAttributesSequence.append(item)
    else:
        ds.OriginalAttributesSequence = [item]

"""The exam view's identity on every outgoing instance (issue 26 item 1; docs/identity.md).

:mod:`~dicomproxy.identity.model` builds an :class:`Identity` from a view row (the values C-FIND
answers with, :mod:`dicomproxy.mapping`); :mod:`~dicomproxy.identity.coerce` decides and applies
the changes to a data set (PS3.3 C.12.1.1.9, Original Attributes Sequence); :mod:`~dicomproxy.
identity.files` rewrites a DICOM file's header only and copies its pixel data unread, for the
relay's send path (:class:`Coercer`, one per job and destination).
"""

from dicomproxy.identity.coerce import COERCE_REASON, Change, apply_changes, plan_changes
from dicomproxy.identity.files import Coerced, Coercer, Result, coerce
from dicomproxy.identity.model import Identity, identity_of

__all__ = [
    "COERCE_REASON",
    "Change",
    "Coerced",
    "Coercer",
    "Identity",
    "Result",
    "apply_changes",
    "coerce",
    "identity_of",
    "plan_changes",
]

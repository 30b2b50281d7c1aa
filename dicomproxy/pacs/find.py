"""C-FIND against the PACS (PS3.4 C.4.1): SERIES/IMAGE forwarding and study counts.

Study-level counts — Number of Study Related Series (0020,1206) / Instances (0020,1208) and
SOPClassesInStudy (0008,0062) — exist only in the PACS. :class:`PacsFinder` asks it once
per study, on one association per C-FIND request, and caches the answer for
``cache_seconds``. If the PACS fails, the caller gets ``None`` and answers those keys
empty (one warning per request).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicomproxy.config import Config, PacsConfig
from dicomproxy.errors import PacsUnavailable
from dicomproxy.status import Status, is_pending
from dicomproxy.transport.net import NoAssociation, Remote, open_association
from dicomproxy.transport.tls import client_tls_args

LOG = logging.getLogger("dicomproxy.pacsfind")

Counts = dict[str, Any]

#: SOP Class UID of each information model, by model name.
MODELS = {
    "PATIENT": PatientRootQueryRetrieveInformationModelFind,
    "STUDY": StudyRootQueryRetrieveInformationModelFind,
}


class PacsFinder:
    """C-FIND SCU to one archive (``[pacs]`` unless ``archive`` is given); thread-safe; the count
    cache is shared by all requests."""

    def __init__(
        self, config: Config, cache_seconds: float = 60.0, archive: PacsConfig | None = None
    ) -> None:
        self.config = config
        self.archive = archive if archive is not None else config.pacs
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Counts]] = {}
        self._lock = threading.Lock()

    def _associate(self, model: str) -> tuple[Any, Association]:
        pacs = self.archive
        try:
            assoc = open_association(
                self.config.proxy.ae_title,
                Remote(pacs.ae_title, pacs.host, pacs.port),
                add_contexts=lambda ae: ae.add_requested_context(MODELS[model]),
                acse_timeout=pacs.acse_timeout,
                dimse_timeout=pacs.dimse_timeout,
                connect_timeout=pacs.connect_timeout,
                max_pdu=pacs.max_pdu,
                tls_args=client_tls_args(
                    pacs.tls, pacs.host
                ),  # [pacs.tls] / [[archives]] tls, as the relay's
            )
        except NoAssociation as exc:
            raise PacsUnavailable(
                f"no association with PACS {pacs.ae_title}@{pacs.host}:{pacs.port}"
            ) from exc
        return assoc.ae, assoc

    def find(
        self, identifier: Dataset, model: str, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[Dataset]:
        """Forward one C-FIND; yield the PACS's pending identifiers. Raises PacsUnavailable."""
        ae, assoc = self._associate(model)
        try:
            responses = assoc.send_c_find(identifier, MODELS[model])
            for status, ds in responses:
                if status is None or "Status" not in status:
                    raise PacsUnavailable("PACS C-FIND: no response (timeout or abort)")
                code = int(status.Status)
                if is_pending(code):
                    if ds is not None:
                        yield ds
                    if cancelled():
                        assoc.send_c_cancel(1, query_model=MODELS[model])
                elif code in (Status.SUCCESS, Status.CANCEL):
                    return
                else:
                    raise PacsUnavailable(f"PACS C-FIND failed with status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def counts_session(self) -> CountsSession:
        return CountsSession(self)

    def _cached(self, uid: str) -> Counts | None:
        with self._lock:
            hit = self._cache.get(uid)
            if hit and time.monotonic() - hit[0] < self.cache_seconds:
                return hit[1]
            return None

    def _store(self, uid: str, counts: Counts) -> None:
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[uid] = (time.monotonic(), counts)


class CountsSession:
    """Study counts for one C-FIND request: one association, opened on first need."""

    def __init__(self, finder: PacsFinder) -> None:
        self.finder = finder
        self._ae: Any = None
        self._assoc: Association | None = None
        self.failed = False

    def __enter__(self) -> CountsSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        if self._ae is not None:
            self._ae.shutdown()
        self._assoc = self._ae = None

    def counts(self, uid: str) -> Counts | None:
        """{"NumberOfStudyRelatedSeries": "2", ...} or None when the PACS fails."""
        cached = self.finder._cached(uid)
        if cached is not None:
            return cached
        if self.failed:
            return None
        try:
            if self._assoc is None:
                self._ae, self._assoc = self.finder._associate("STUDY")
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = uid
            query.NumberOfStudyRelatedSeries = None
            query.NumberOfStudyRelatedInstances = None
            query.SOPClassesInStudy = None
            counts: Counts = {}
            for status, ds in self._assoc.send_c_find(query, MODELS["STUDY"]):
                if status is None or "Status" not in status:
                    raise PacsUnavailable("PACS C-FIND: no response (timeout or abort)")
                if is_pending(int(status.Status)) and ds is not None:
                    counts = {
                        "NumberOfStudyRelatedSeries": _text(ds.get("NumberOfStudyRelatedSeries")),
                        "NumberOfStudyRelatedInstances": _text(ds.get("NumberOfStudyRelatedInstances")),
                        "SOPClassesInStudy": list(_values(ds.get("SOPClassesInStudy"))),
                    }
                elif int(status.Status) != Status.SUCCESS and not is_pending(int(status.Status)):
                    raise PacsUnavailable(f"PACS C-FIND failed with status 0x{int(status.Status):04X}")
        except PacsUnavailable as exc:
            LOG.warning("study counts unavailable, answered empty: %s", exc)
            self.failed = True
            self.close()
            return None
        self.finder._store(uid, counts)
        return counts


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _values(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]

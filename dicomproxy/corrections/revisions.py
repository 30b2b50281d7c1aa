"""Revised order/report files, found for every route (IOCM "report revised"; docs/identity.md).

Push finds a revision when it sends the new object (:mod:`dicomproxy.push.files`). An object a
C-MOVE/C-GET delivered (``[reports] in_retrieve``) has no push item to notice it: when its study's
row changed, the files of the row are made again (fetched and encoded, as every route makes them:
the object's SOP Instance UID follows from the file's bytes, :mod:`dicomproxy.reports.study`), and
an object of the same role that a destination holds under another UID is superseded (toward a
destination push delivers to, push finds it, after it sent the new object) — a
``report-revised`` correction (113001), whose sender then delivers the new object too
(:mod:`dicomproxy.corrections.sending`). Only the studies of changed rows are looked at (the
sweep does not fetch every file of every delivered study).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from dicomproxy.config import Config
from dicomproxy.corrections.record import pushed_to, record_correction
from dicomproxy.corrections.store import CorrectionStore
from dicomproxy.identity.corrections import corrected_uid, revised
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.reports.study import study_files
from dicomproxy.view.service import name_style_for

LOG = logging.getLogger("dicomproxy.corrections")


def current_objects(config: Config, study_uid: str, rows: Sequence[Any], destination: str) -> dict[str, Any]:
    """Role → the order/report object the view's files make now for ``destination`` (a file that
    cannot be fetched is left out: it is not a revision)."""
    style = name_style_for(config, destination)
    out: dict[str, Any] = {}
    for file in study_files(study_uid, list(rows)):
        try:
            out[file.role] = file.make(config.reports, style)
        except ReportUnavailable as exc:
            LOG.info("corrections: %s file of study %s not available: %s", file.role, study_uid, exc)
    return out


def revisions(config: Config, view: Any, store: CorrectionStore, study_uids: Sequence[str]) -> int:
    """Journal a ``report-revised`` correction for each object a destination holds of a role whose
    file now makes another object; the corrections recorded by this call. The corrected copy of
    the current object (an identity correction's, under its derived UID) is not a revision."""
    held = store.held_objects(study_uids)
    if not held:
        return 0
    rows = view.study_rows(sorted({study for _, study in held}))
    found = 0
    for (destination, study), roles in sorted(held.items()):
        if study not in rows or pushed_to(config, destination):
            continue  # no visible row: a withdrawal (the detector's); push's: found when it sends
        now = current_objects(config, study, rows[study], destination)
        fingerprints = store.copied(destination, [study]).get(study, [])
        for role, uids in sorted(roles.items()):
            obj = now.get(role)
            if obj is None:
                continue
            current = {obj.sop_instance_uid, *(corrected_uid(obj.sop_instance_uid, f) for f in fingerprints)}
            for old in sorted(uids - current):
                correction = revised(study, role, old, obj.sop_instance_uid)
                if correction is not None and record_correction(
                    config, store, destination, correction, None, None, old
                ):
                    found += 1
    return found

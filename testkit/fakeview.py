"""A stand-in exam view for relay mechanics tests (visibility itself is tested with the real ExamView)."""

from __future__ import annotations

from collections.abc import Sequence


class AllVisible:
    """Resolves every requested Study Instance UID as visible; accession/patient keys find nothing."""

    def resolve_study_uids(
        self, *, study_uids: Sequence[str] = (), accession: str | None = None, patient_id: str | None = None
    ) -> list[str]:
        return list(study_uids)

"""The exam view's identity on a job's deliveries (issue 26; docs/identity.md).

:func:`job_coercer` is called when a job is planned (C-MOVE, C-GET, push): the identity of each of
its studies from the view rows, in the destination's ``name_style``, journalled
(``job_identities``) before anything is sent, and the :class:`~dicomproxy.identity.Coercer` the
destination's sender applies to every instance. :func:`retry_coercer` gives a retry the identities
its job was planned with (and a corrected copies job its copies' UIDs again). A destination with
``coerce = false`` gets None: the PACS's bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dicomproxy.config import Config
from dicomproxy.identity import Coercer, identity_of
from dicomproxy.identity.copies import CorrectedCopies
from dicomproxy.relay.journal import Journal
from dicomproxy.view.service import name_style_for


def coerces(config: Config, destination: str) -> bool:
    """``[[peers]] coerce`` of the destination (on for a requester that is not a peer)."""
    peer = config.peer(destination)
    return peer.coerce if peer is not None else True


def job_coercer(
    config: Config,
    journal: Journal,
    job_id: int,
    destination: str,
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    sources: Mapping[str, str],
) -> Coercer | None:
    """The coercion of job ``job_id``'s instances toward ``destination`` (``rows``: the view rows
    of each study; ``sources``: the archive each study comes from), journalled; None when off."""
    if not coerces(config, destination):
        return None
    style = name_style_for(config, destination)
    identities = {uid: identity_of(uid, r, style, config.hospital) for uid, r in rows.items() if r}
    journal.record_identities(job_id, destination, list(identities.values()))
    # the exam each study came from: a re-link is told from a withdrawal by it (docs/identity.md)
    journal.record_exams({uid: [str(x.get("ExamineID") or "") for x in r] for uid, r in rows.items() if r})
    return Coercer(identities, config.proxy.ae_title, f"job {job_id}", sources)


def retry_coercer(config: Config, journal: Journal, job_id: int, destination: str) -> Coercer | None:
    """A retry of ``job_id`` sends the identities the job was planned with (``job_identities``);
    a job that sent corrected copies (``job_copies``) sends the same copies again, never the
    rejected originals."""
    if not coerces(config, destination):
        return None
    coercer = Coercer(journal.identities_of(job_id), config.proxy.ae_title, f"job {job_id}")
    fingerprint = journal.copies_of([job_id]).get(job_id)
    return coercer if fingerprint is None else CorrectedCopies(coercer, fingerprint)

"""Several proxies on one journal: a start-up marks only its own node's running jobs interrupted.

A node that starts while another node serves a C-MOVE must not call that job interrupted (its
automatic resume would then send the study a second time beside the node still sending it).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import insert

from dicomproxy.relay.journal import Journal, jobs
from dicomproxy.status import JobKind, JobOutcome


def test_start_up_marks_only_its_own_nodes_jobs(journal_url: str, tmp_path: Path) -> None:
    a = Journal(journal_url, "host-a:/var/lib/dicomproxy")
    b = Journal(journal_url, "host-b:/var/lib/dicomproxy")
    try:
        ja = a.start(JobKind.MOVE, "jobserver", "10.0.0.1", "jobserver", "pacs")
        jb = b.start(JobKind.MOVE, "jobserver", "10.0.0.1", "jobserver", "pacs")
        with a.engine.begin() as conn:  # a job of a journal from before job_nodes existed
            legacy = int(
                conn.execute(
                    insert(jobs).values(kind="move", calling_ae="jobserver", started=dt.datetime(2026, 1, 1))
                ).inserted_primary_key[0]  # type: ignore[index]
            )
        assert a.mark_interrupted() == sorted([ja, legacy])  # its own and the ownerless one
        assert b.get(jb).row["outcome"] == JobOutcome.RUNNING  # type: ignore[union-attr]
        assert b.mark_interrupted() == [jb]
        # A retry claimed by node A is A's from then on: B's next start leaves it alone.
        assert b.request_retry(jb) and a.claim_retry() == jb
        assert b.mark_interrupted() == []
        assert a.mark_interrupted() == [jb]
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_for_config_names_host_and_data_dir(tmp_path: Path) -> None:
    j = Journal.for_config("", tmp_path / "var")
    try:
        assert j.node.endswith(f":{(tmp_path / 'var').resolve()}")
    finally:
        j.engine.dispose()

"""The one status vocabulary (dicomproxy.status) and the pure rules built on it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from dicomproxy.relay.journal import Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.status import (
    RETRYABLE_OUTCOMES,
    JobKind,
    JobOutcome,
    Status,
    carries_error_comment,
    is_out_of_resources,
    is_pending,
)

PACKAGE = Path(__file__).resolve().parents[1] / "dicomproxy"


@pytest.mark.parametrize(
    ("unconfirmed", "confirmed", "status", "outcome"),
    [(0, 5, Status.SUCCESS, JobOutcome.SUCCESS), (0, 0, Status.SUCCESS, JobOutcome.SUCCESS),
     (2, 3, Status.SUBOPS_WARNING, JobOutcome.PARTIAL),
     (5, 0, Status.OUT_OF_RESOURCES_SUBOPS, JobOutcome.FAILED)],
)  # fmt: skip
def test_final_status_from_counts(
    unconfirmed: int, confirmed: int, status: Status, outcome: JobOutcome
) -> None:
    """PS3.4 C.4.2.1.5: Success; Warning when some sub-operations failed; 0xA702 when all did —
    decided by the one outcome module for a retried job too (its earlier confirmed instances
    counted as completed, what is still unconfirmed as failed)."""
    state = JobState(1, completed=confirmed, failed=unconfirmed)
    final, decided, _ = state.final(None, "", nothing_sent=False)
    assert (final.status, decided) == (status, outcome)


def test_codes_are_the_standard_ones() -> None:
    assert (Status.PENDING, Status.PENDING_WARNING, Status.CANCEL) == (0xFF00, 0xFF01, 0xFE00)
    assert (Status.MOVE_DESTINATION_UNKNOWN, Status.IDENTIFIER_MISMATCH) == (0xA801, 0xA900)
    assert (Status.SUBOPS_WARNING, Status.OUT_OF_RESOURCES_SUBOPS) == (0xB000, 0xA702)
    assert (
        is_pending(0xFF01) and is_pending(Status.PENDING) and not is_pending(0x0000) and not is_pending(None)
    )
    assert is_out_of_resources(0xA7FF) and is_out_of_resources(0xA700) and not is_out_of_resources(0xA900)
    assert carries_error_comment(Status.PACS_UNAVAILABLE) and not carries_error_comment(Status.SUBOPS_WARNING)


def test_outcomes_are_stored_as_text(tmp_path: Path) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    try:
        job = journal.start(JobKind.MOVE, "CLOUD", "127.0.0.1", "DEST", "")
        journal.finish(job, status=Status.SUBOPS_WARNING, outcome=JobOutcome.PARTIAL)
        row = journal.get(job).row  # type: ignore[union-attr]
        assert (row["kind"], row["outcome"], row["status"]) == ("move", "partial", 0xB000)
        assert type(row["outcome"]) is str and row["outcome"] == JobOutcome.PARTIAL
        assert journal.request_retry(job) and not journal.request_retry(job)  # once
        assert journal.claim_retry() == job and journal.claim_retry() is None  # one winner
        assert JobOutcome.PARTIAL in RETRYABLE_OUTCOMES and f"{JobOutcome.RETRYING}" == "retrying"
    finally:
        journal.close()


_HEX_STATUS = re.compile(r"\b0x[0-9A-Fa-f]{4}\b")
#: Every module but the vocabulary itself: statuses are sent and read by name everywhere.
STATUS_MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "status.py")


def _looks_like_status(value: int) -> bool:
    """A value in a DIMSE status range (PS3.7 C): Pending, Cancel, Refused/Error/Warning/Failure
    0xAxxx-0xCxxx, general 0x01xx-0x02xx. Tags (0x7FE0) and command fields (0x8021) are not."""
    return value in (0xFF00, 0xFF01, 0xFE00) or 0xA000 <= value <= 0xCFFF or 0x0100 <= value <= 0x02FF


@pytest.mark.parametrize("module", STATUS_MODULES)
def test_no_bare_status_codes_in_logic(module: str) -> None:
    """Statuses are compared and returned by name (dicomproxy.status); hex may appear in
    docstrings, comments and log formats only."""
    tree = ast.parse((PACKAGE / module).read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    named = {  # module-level NAME = 0x.... : a named constant, as status.py has them
        id(c)
        for node in tree.body
        if isinstance(node, ast.Assign) and all(isinstance(x, (ast.Name, ast.Tuple)) for x in node.targets)
        for c in ast.walk(node.value)
    }
    bare = [
        f"{module}:{node.lineno}: 0x{node.value:04X}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, int)
        and not isinstance(node.value, bool)
        and id(node) not in docstrings
        and id(node) not in named
        and _looks_like_status(node.value)
        and _HEX_STATUS.search(ast.get_source_segment((PACKAGE / module).read_text(), node) or "")
    ]
    assert bare == []


def test_runtime_never_imports_the_test_kit() -> None:
    """Sample generators, peer launchers and fake peers live in ``testkit``; the serving code
    (everything under ``dicomproxy``) imports none of it."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(PACKAGE)}: {n}" for n in names if n.split(".")[0] in ("testkit", "tests")
            ]
    assert offenders == []

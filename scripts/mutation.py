"""Mutation testing of the boundary modules with cosmic-ray (run by scripts/mutation.sh).

For each target (a module, the functions in it that decide who sees and receives what and how
a job is counted, and the focused tests that guard them):

1. a fresh copy of the working tree is made in ``mutants/<target>/tree`` (tracked and untracked,
   not ignored, files), so that mutants never touch the tree you work in;
2. the focused tests are run once on the unmutated copy (the baseline; it must pass, and its
   time sets the per-mutant timeout);
3. ``cosmic-ray init`` lists the mutations of the module; the ones outside the target's
   functions, or made by operators not in :data:`OPERATORS`, are marked skipped;
4. ``cosmic-ray exec`` applies each mutation in the copy and runs the focused tests
   (``pytest -x``, with the copy first on ``PYTHONPATH``): a failing test kills the mutant;
5. the results go to ``mutants/<target>/result.json`` and, for every target run so far, to
   ``mutants/report.md`` (counts, kill rate, each survivor with its diff).

Usage: ``scripts/mutation.sh [TARGET ...]`` (default: every target), ``--list``, ``--report``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("MUTATION_OUT", ROOT / "mutants"))
PYTHON = sys.executable
COSMIC_RAY = str(Path(PYTHON).parent / "cosmic-ray")


@dataclass(frozen=True)
class Target:
    #: A module, or a package folder (every module in it; then ``functions`` must be empty).
    module: str
    #: Functions to mutate (``name``, ``Class.method``); ``name@text`` starts at the first line
    #: holding ``text`` inside that function. Empty: the whole module.
    functions: tuple[str, ...]
    #: pytest arguments: test files / node ids, and options such as ``-k EXPR`` to keep a run short.
    tests: tuple[str, ...]
    why: str


TARGETS: dict[str, Target] = {
    "view": Target(
        "dicomproxy/view/repository.py",
        (
            "ExamView.visible",
            "ExamView.is_visible",
            "row_visible",
            "_privacy",
            "ExamView.resolve_study_uids",
            "ExamView.resolve_studies",
            "_text",
        ),
        (
            "tests/test_boundary_view.py",
            "tests/test_find_view.py::test_resolve_study_uids_visibility",
            "tests/test_routing.py",
            "tests/test_view_uidindex.py",
        ),
        "visibility: HospitalID, Privacy, valid UIDs; the relay's resolution",
    ),
    "raw-queries": Target(
        "dicomproxy/transport/raw/queries.py",
        (
            "claims",
            "_QuerySession._serve",
            "_QuerySession._find",
            "_CancelWatch.look",
            "_code_and_comment",
        ),
        ("tests/test_raw_queries.py", "tests/test_find_pacs.py::test_c_cancel_over_a_real_association"),
        "C-FIND/C-ECHO on the raw socket (issue 29): which associations, answers, statuses, C-CANCEL",
    ),
    "queryproc": Target(
        "dicomproxy/queryproc/parent.py",
        ("wanted", "QueryProcess.serve", "QueryProcess._take", "QueryProcess._lost", "QueryRoute.serve"),
        ("tests/test_query_process.py", "tests/test_raw_queries.py", "-k", "query"),
        "the query process, parent's side (issue 29): hand-over, fallback, what comes back from the child",
    ),
    "queryproc-child": Target(
        "dicomproxy/queryproc/child.py",
        ("LogForwarder.emit", "QueryWorker.run", "QueryWorker._drain"),
        ("tests/test_query_process.py", "tests/test_raw_queries.py", "-k", "query"),
        "the query process, child's side (issue 29): its loop, reload, drain, log records",
    ),
    "request": Target(
        "dicomproxy/relay/request.py",
        (),
        ("tests/test_boundary_request.py", "tests/test_access.py"),
        "a C-MOVE/C-GET request: who asks, which visible studies it names, at every level",
    ),
    "access": Target(
        "dicomproxy/access.py",
        (),
        ("tests/test_access.py", "tests/test_routing.py::test_archive_stores_are_accepted_from_their_host"),
        "who may associate, per-service permission, rejection log",
    ),
    "tls": Target(
        "dicomproxy/transport/tls.py",
        (),
        ("tests/test_tls.py", "tests/test_tls_relay.py"),
        "DICOM TLS contexts, inbound client certificates, outbound verification",
    ),
    "outcome": Target(
        "dicomproxy/relay/outcome.py",
        (),
        ("tests/test_outcome.py", "tests/test_reports_plan.py", "tests/test_relay_faults.py"),
        "the relay's outcome and final status, sub-operation counts (JobState)",
    ),
    "relay": Target(
        "dicomproxy/relay/engine.py",
        ("Engine.merge_found", "Engine.close"),
        (
            "tests/test_relay_faults.py",
            "tests/test_reports_retrieve.py::test_files_are_part_of_the_study_in_find_move_and_get",
        ),
        "an early-started job's instance list merged into its counts; how a job's end is journalled",
    ),
    "pump": Target(
        "dicomproxy/relay/pump.py",
        ("Pump._finish", "Pump._send_reports", "Pump._record"),
        (
            "tests/test_pump_reports.py",  # the pump's end on stand-ins (fast), then real peers
            "tests/test_relay_faults.py",
            "tests/test_destination_reconnect.py",
            "tests/test_reports_retrieve.py",
        ),
        "the end of a job's pump (order/report objects, missing instances) and each sub-operation's record",
    ),
    "pumpstep": Target(
        "dicomproxy/relay/pumpstep.py",
        (),
        ("tests/test_pump_step.py",),
        "the pump's decisions: stop, reconnect, Pending responses, hand out, finish",
    ),
    "recorder": Target(
        "dicomproxy/relay/recorder.py",
        (),
        ("tests/test_relay_faults.py", "tests/test_recovery.py"),
        "each sent instance counted, journalled, its spool file dropped once confirmed",
    ),
    "recovery": Target(
        "dicomproxy/relay/recovery.py",
        (
            "reconcile",
            "_spooled",
            "check_retryable",
            "retry_job",
            "job_archives",
            "_clients_for",
            "_wanted",
            "_fetch_list",
            "_run",
        ),
        ("tests/test_recovery.py",),
        "start-up reconciliation, `jobs retry` on the engine (what is left out, what is listed again)",
    ),
    "resolve-again": Target(
        "dicomproxy/relay/recovery.py",
        ("_resolve_again",),
        ("tests/test_recovery.py", "-k", "resolved or resolve"),
        "a C-MOVE killed while its request was resolved: its Identifier resolved and routed again",
    ),
    "policy": Target(
        "dicomproxy/transcode/policy.py",
        (),
        ("tests/test_transcode_policy.py", "tests/test_transcode_negotiation.py"),
        "which transfer syntax an instance may go in (lossy only where allowed)",
    ),
    "syntaxes": Target(
        "dicomproxy/config/compression.py",
        ("compression@for key, given, allowed in",),
        ("tests/test_transcode_policy.py",),
        "which syntaxes a [compression] list may name (was part of the policy target until issue 23)",
    ),
    "coerce": Target(
        "dicomproxy/identity/coerce.py",
        (),
        ("tests/test_identity_coerce.py",),
        "the view's identity on outgoing instances: what changes, what is kept (issue 26)",
    ),
    "scan": Target(
        "dicomproxy/identity/scan.py",
        (),
        ("tests/test_identity_scan.py",),
        "the header scan: element positions without decoding, checked against pydicom (issue 26 cost)",
    ),
    "spool-room": Target(
        "dicomproxy/relay/spool.py",
        ("DiskRoom.low", "Spool.wait_for_room", "Spool.settled", "Spool.accept", "Spool.close"),
        ("tests/test_spool_room.py",),
        "the spool's back-pressure on the archive when the data disk runs low",
    ),
    "corrections": Target(
        "dicomproxy/identity/corrections.py",
        (),
        ("tests/test_identity_corrections.py",),
        "corrections after delivery (IOCM): the decision, its title, derived UIDs (issue 26 item 2)",
    ),
    "lossy": Target(
        "dicomproxy/transcode/codec.py",
        ("_values", "_mark_lossy", "_derive", "_note_source_lossy", "_lossy_insert_at", "_text_element"),
        ("tests/test_transcode_codec.py",),
        "lossy marking (0028,2110/2112/2114), derived instances",
    ),
    # --- wave 2's bookkeeping (issue 24) ---------------------------------------------------------
    "push-queue": Target(
        "dicomproxy/push/queue.py",
        (
            "PushQueue._claimable",
            "PushQueue.claim",
            "PushQueue.renew",
            "ItemLedger.job_ids",
            "ItemLedger.confirmed",
            "ItemLedger.confirmed_images",
            "PushQueue.finish",
            "PushQueue.release",
            "OperatorActions.retry",
            "OperatorActions._due_afresh",
            "OperatorActions.requeue",
        ),
        (
            "tests/test_push_takeover.py",
            "tests/test_push_recheck.py",
            "tests/test_push.py::test_instances_the_destination_refused_are_sent_on_the_next_attempt",
            "-k",
            "not postgresql and not mariadb",  # the queue's SQL on SQLite; the claim race has its own test
        ),
        "the push queue: who claims an item (leases, takeovers), what counts as confirmed, retries",
    ),
    "push-service": Target(  # deliver only applies push/decide.py's decisions since the split
        "dicomproxy/push/service.py",
        (
            "PushService._lease_loop",
            "PushService.deliver",
            "PushService._run_job",
            "PushService._deliver_files",
            "PushService._retry_later",
        ),
        (  # the unit tests first (a killed mutant stops early), then end to end
            "tests/test_push_decide.py",
            "tests/test_push_takeover.py::test_leases_are_renewed_every_third_of_the_lease_and_a_lost_one_is_logged",
            "tests/test_push_recheck.py::test_a_recheck_delivery_that_fails_is_retried_and_the_schedule_goes_on",
            "tests/test_push.py",
            "tests/test_push_nodes.py::test_a_delivery_longer_than_its_lease_keeps_it_and_is_not_taken_over",
        ),
        "lease renewal during a delivery; a delivery's outcome applied to its item (counts, state, delay)",
    ),
    "push-decide": Target(
        "dicomproxy/push/decide.py",
        (),
        (
            "tests/test_push_decide.py",
            "tests/test_push_recheck.py::test_recheck_schedule_doubles_and_ends",
            "tests/test_push_recheck.py::test_a_recheck_delivery_that_fails_is_retried_and_the_schedule_goes_on",
        ),
        "what a push item becomes after a run: release, drop, hold, retry, files; backoff, re-checks",
    ),
    "audit-trail": Target(
        "dicomproxy/audit/trail.py",
        (
            "_naive_utc",
            "_ids",
            "_row",
            "row_hash",
            "AuditTrail.append",
            "AuditTrail.append_many",
            "AuditTrail._chain_in",
            "AuditTrail.rows",
            "AuditTrail.verify",
        ),
        (
            "tests/test_audit.py::test_chain_intact_and_filters",
            "tests/test_audit.py::test_verify_finds_tampering",
            "tests/test_audit.py::test_verify_finds_an_edit_of_every_column",
            "tests/test_audit.py::test_verify_compares_the_chain_head",
            "tests/test_audit.py::test_verify_names_rows_added_after_the_chain_head",
            "tests/test_audit.py::test_audit_verify_command_names_the_edited_row",
            "tests/test_audit.py::test_row_hash_is_a_stable_format",
            "tests/test_audit.py::test_rows_are_stored_canonical_and_cut_to_their_columns",
            "tests/test_audit.py::test_row_filters_by_time_and_literal_identifiers",
        ),
        "the audit trail's hash chain: what it covers, what verify finds",
    ),
    "atna": Target(
        "dicomproxy/audit/atna.py",
        (  # build and its per-event builders (one function before the split of issue 23)
            "MessageBuilder.build",
            "MessageBuilder._application_activity",
            "MessageBuilder._login",
            "MessageBuilder._security_alert",
            "MessageBuilder._query",
            "MessageBuilder._begin_transferring",
            "MessageBuilder._interrupted",
            "MessageBuilder._transferred",
            "MessageBuilder._transfer",
        ),
        ("tests/test_atna.py",),
        "DICOM audit messages: which event, which outcome (PS3.15 A.5.1 EventOutcomeIndicator)",
    ),
    "health": Target(
        "dicomproxy/console/health.py",
        (),
        (  # the checks one by one first (a killed mutant stops early), then the console end to end
            "tests/test_console.py::test_a_failing_check_is_not_ready_and_says_why",
            "tests/test_console.py::test_a_hung_check_does_not_hold_up_the_next",
            "tests/test_console.py::test_disk_check_threshold_detail_and_missing_folder",
            "tests/test_console.py::test_echo_rounds_are_counted",
            "tests/test_console.py::test_echo_timeouts_and_the_freshness_boundary",
            "tests/test_console.py::test_stop_waits_for_an_echo_in_progress",
            "tests/test_console.py::test_hung_checks_keep_two_threads_and_close_does_not_wait",
            "tests/test_console.py::test_journal_check_waits_ten_seconds",
            "tests/test_console.py",
        ),
        "/healthz and /readyz: what makes the node ready",
    ),
    "lanes": Target(
        "dicomproxy/relay/lanes.py",
        (),
        ("tests/test_onward_lanes.py",),
        "several onward associations per job: every instance once, late results counted",
    ),
    "stamp": Target(
        "dicomproxy/view/stamp.py",
        (),
        ("tests/test_view_rowstamp.py", "tests/test_view_uidindex.py", "tests/test_push_watcher.py"),
        "RowTimestamp: marks, ordering, the late-commit guard",
    ),
    "uidindex": Target(
        "dicomproxy/view/uidindex.py",
        (),
        (  # its unit tests first (SQLite, a fake clock: a killed mutant stops early), then both files
            *(
                f"tests/test_view_uidindex.py::{name}"
                for name in (
                    "test_lazy_syncs_are_max_age_apart_and_a_forced_one_is_not_held_back",
                    "test_a_hit_is_answered_without_a_view_read_a_miss_with_one",
                    "test_lookups_of_many_uids_are_chunked_without_losing_or_doubling_any",
                    "test_the_view_is_streamed_in_batches",
                    "test_pinyin_patterns_by_prefix_and_wildcards",
                    "test_rows_without_a_patient_id_or_name_are_not_in_the_name_table",
                    "test_a_study_uid_taken_off_a_row_leaves_the_side_table",
                    "test_the_mark_never_moves_back",
                    "test_a_failed_background_build_is_logged_and_lookups_go_on",
                    "test_is_built_only_for_its_own_view_and_once_a_mark_is_stored",
                    "test_an_empty_view_is_not_built_until_it_has_a_stamp",
                    "test_the_kind_is_detected_once_per_process_and_again_by_rebuild",
                    "test_a_mark_of_another_kind_is_dropped_with_a_warning_unless_the_view_is_empty",
                )
            ),
            "tests/test_view_uidindex.py",
            "tests/test_view_rowstamp.py",
        ),
        "the UID side table: sync by RowTimestamp, its mark bound to the view",
    ),
    "reports": Target(
        "dicomproxy/reports",
        (),
        (  # unit tests first (a killed mutant stops early), the Orthanc end-to-end file last;
            # test_push_units.py's push-only tests (window, pacing, config, CLI) left out
            "tests/test_reports_plan.py",
            *(
                f"tests/test_push_units.py::{name}"
                for name in (
                    "test_jpeg_frame_header_is_found_past_segments_fill_bytes_and_standalone_markers",
                    "test_jpeg_frame_transfer_syntax",
                    "test_jpeg_frames_dicom_does_not_carry_are_refused",
                    "test_a_jpeg_cut_short_is_refused_with_a_reason",
                    "test_secondary_capture_describes_the_bitstream",
                    "test_secondary_capture_refuses_other_component_counts",
                    "test_encapsulated_pdf_pads_to_even_and_states_the_true_length",
                    "test_optional_study_attributes_are_copied_only_when_the_view_has_them",
                    "test_other_files_are_refused_with_a_reason",
                    "test_fetch_local_unc_and_limits",
                    "test_fetch_takes_a_file_of_exactly_max_mb_and_refuses_one_byte_more",
                    "test_fetch_reasons_name_no_path_and_urls_and_shares_are_mapped",
                    "test_report_objects_are_valid_iods",
                    "test_fetch_over_ftp",
                )
            ),
            "tests/test_reports_retrieve.py",
        ),
        "order/report files: fetch, encode, a study's files and their C-FIND answers",
    ),
    "commitments": Target(
        "dicomproxy/relay/commitments.py",
        (),
        (  # the ledger's unit tests first (a killed mutant stops early), then the peers
            "tests/test_commitment.py::test_parse_report",
            "tests/test_commitment.py::test_which_jobs_are_asked_to_commit",
            "tests/test_commitment.py::test_a_report_names_its_counts_and_unnamed_references_fail_with_0110",
            "tests/test_commitment.py::test_the_summary_counts_the_last_day_per_destination",
            "tests/test_commitment.py::test_open_transactions_and_pending_are_per_job_and_destination",
            "tests/test_commitment.py::test_transactions_hold_at_most_500_references_and_are_due_at_once",
            "tests/test_commitment.py::test_giving_up_ends_that_transaction_only",
            "tests/test_commitment.py::test_the_summary_covers_a_day_by_default",
            "tests/test_commitment.py::test_the_committer_backs_off_doubling_and_numbers_its_attempts",
            "tests/test_reconcile.py::test_uncommitted_by_study_is_what_storage_commitment_has_not_confirmed",
            "tests/test_commitment.py",
            "-k",
            "not serve_killed and not orthanc",
        ),
        "the Storage Commitment ledger: transactions, claims, reports, resends (issue 25)",
    ),
    "committer": Target(
        "dicomproxy/relay/committer.py",
        (),
        (
            "tests/test_commitment.py::test_parse_report",
            "tests/test_commitment.py::test_which_jobs_are_asked_to_commit",
            "tests/test_commitment.py::test_a_report_names_its_counts_and_unnamed_references_fail_with_0110",
            "tests/test_commitment.py::test_the_summary_counts_the_last_day_per_destination",
            "tests/test_commitment.py::test_open_transactions_and_pending_are_per_job_and_destination",
            "tests/test_commitment.py::test_transactions_hold_at_most_500_references_and_are_due_at_once",
            "tests/test_commitment.py::test_giving_up_ends_that_transaction_only",
            "tests/test_commitment.py::test_the_summary_covers_a_day_by_default",
            "tests/test_commitment.py::test_the_committer_backs_off_doubling_and_numbers_its_attempts",
            "tests/test_commitment.py::test_a_transaction_whose_peer_no_longer_commits_is_given_up_not_sent",
            "tests/test_commitment.py::test_a_request_the_peer_refuses_is_not_counted_and_asked_again_later",
            "tests/test_commitment.py::test_stop_waits_for_the_round_in_progress",
            "tests/test_commitment.py::test_a_journal_error_costs_one_round_not_the_thread",
            "tests/test_commitment.py",
            "-k",
            "not serve_killed and not orthanc",
        ),
        "the Storage Commitment sender: back-off, attempts, give-up",
    ),
    "commitment-queries": Target(
        "dicomproxy/relay/commitment_queries.py",
        (),
        (
            "tests/test_commitment.py::test_the_summary_counts_the_last_day_per_destination",
            "tests/test_commitment.py::test_open_transactions_and_pending_are_per_job_and_destination",
            "tests/test_commitment.py::test_the_summary_covers_a_day_by_default",
            "tests/test_commitment.py::test_which_jobs_are_asked_to_commit",
            "tests/test_push_decide.py",
            "tests/test_commitment.py",
            "-k",
            "not serve_killed and not orthanc",
        ),
        "what the commitment ledger holds: pending, the day's summary, each instance's newest state",
    ),
    "push-commit": Target(
        "dicomproxy/push/committing.py",
        (),
        (
            "tests/test_push_decide.py",
            "tests/test_push_commitment.py",
        ),
        "a push item to a destination that commits: committing until every instance is, resend, fail",
    ),
}

#: cosmic-ray operators used. Left out: the binary operators other than + ↔ − (``a * b`` →
#: ``a ** b``, ``a << b``... ten per site, nearly all trivially killed or meaningless here),
#: comparison swaps other than negation and off-by-one, ``RemoveDecorator`` (removing
#: ``@dataclass`` or ``@property`` only crashes), ``VariableInserter``/``VariableReplacer``
#: (random names), unary operators (none at these sites).
OPERATORS = re.compile(
    r"core/(?:"
    r"ReplaceComparisonOperator_(?:Eq_NotEq|NotEq_Eq|Lt_LtE|Lt_GtE|LtE_Lt|LtE_Gt|Gt_GtE|Gt_LtE|GtE_Gt|GtE_Lt"
    r"|Is_IsNot|IsNot_Is)"
    r"|ReplaceBinaryOperator_(?:Add_Sub|Sub_Add)"
    r"|AddNot|ReplaceAndWithOr|ReplaceOrWithAnd|ReplaceTrueWithFalse|ReplaceFalseWithTrue"
    r"|NumberReplacer|ZeroIterationForLoop|ReplaceBreakWithContinue|ReplaceContinueWithBreak"
    r"|ExceptionReplacer"
    r")$"
)


#: Survivors shown to be equivalent (no test can tell them apart from the original), by target:
#: (a fragment of the original line, a fragment of the mutated line, why), matched on the lines
#: with all whitespace removed so that they survive line moves. docs/mutation.md explains each.
EQUIVALENT: dict[str, list[tuple[str, str, str]]] = {
    "queryproc-child": [
        (
            "except(ChannelClosed,OSError):",
            "CosmicRayTestingException",
            "a log record sent after the parent is gone: ChannelClosed is caught (the killed-parent test"
            " finds no 'Logging error'); a bare OSError other than those Channel.send turns into"
            " ChannelClosed (EBADF after close) is not produced by any reachable path",
        ),
        ("exceptException:", "CosmicRayTestingException", "logging must never raise: unreachable (pragma)"),
        ("continue", "break", "a 'serve' message without a descriptor: the parent never sends one"),
        ("eliffdisnotNone:", "eliffdisNone:", "a descriptor with another message: never sent"),
        ("self._drain(0.0)", "self._drain(", "the parent is gone: how long to wait before the abort"),
        (
            "returnFalse",
            "returnTrue",
            "the exit status of a child whose parent is gone: init reaps it, nobody reads it",
        ),
        ("time.monotonic()<deadline", "time.monotonic()<=deadline", "the same instant"),
        (
            "forthreadinthreads:",
            "forthreadin[]:",
            "after abort_all the association threads end by themselves; the join only orders their last"
            " lines before the events' flush",
        ),
        ("thread.join(2.0)", "thread.join(", "as above: how long to wait for an aborted thread"),
    ],
    "queryproc": [
        (
            "ifnotself.readyorself._stopping:",
            "ifnotself.readyandself._stopping:",
            "differs only for a connection accepted before the listener's shutdown and routed after the"
            " child's stop began (a window of the intake's peek); no test can place one there",
        ),
        (
            "except(ChannelClosed,OSError)asexc:",
            "CosmicRayTestingException",
            "the hand-over failing: the child dying between the ready check and the send; the reader"
            " sees the closed channel first in every test (a race no test can win on purpose)",
        ),
        (
            "returnFalse",
            "returnTrue",
            "QueryProcess.serve after a failed hand-over (the race above), or QueryRoute.serve after"
            " serving in process: the caller then only closes, instead of shutting down and closing, a"
            " socket whose association has ended",
        ),
    ],
    "raw-queries": [
        (
            'message_id=int(msg.command.get("MessageID",0))',
            "",
            "the default of a mandatory element (PS3.7 Table 9.1-2): only a malformed C-FIND-RQ lacks it",
        ),
        (
            "transfer_syntax[0]",
            "transfer_syntax[-1]",
            "an accepted presentation context has exactly one transfer syntax (PS3.8 9.3.3.2)",
        ),
        (
            "cork(self.sock,True)",
            "cork(self.sock,False)",
            "TCP_CORK: when segments leave, not what they carry",
        ),
        ("cork(self.sock,False)", "cork(self.sock,True)", "TCP_CORK: the kernel sends within 200 ms anyway"),
        (
            "ifcloseisnotNone:",
            "",
            "closing the answers' generator: CPython closes it anyway when the last reference goes",
        ),
        (
            'get("MessageIDBeingRespondedTo",-1)',
            "",
            "the default of a mandatory element of C-CANCEL-RQ (PS3.7 Table 9.3-3); message IDs are 0-65535",
        ),
    ],
    "access": [
        (
            "REJECT_NO_REASON=(0x01,0x01,0x01)",
            "",
            "only the default rjd of an accepting Decision: never sent (every rejection names its own)",
        ),
        ("@lru_cache(maxsize=256)", "", "size of the host-name cache: not behaviour"),
        ("@dataclass(frozen=True)", "frozen=False", "Decision is never mutated"),
        ("(-1e18,0)", "(-1e+18,0)", "1e18 ± 1 is the same float"),
    ],
    "request": [
        ("message_id:int=0", "", "the default is never used: retrieve_request always passes the Message ID"),
        ("@dataclass(frozen=True)", "frozen=False", "RetrieveRequest is never mutated"),
        ("accession=accession[0]", "accession=accession[-1]", "reached only with exactly one value"),
        ("_resolve(resolver,patient_id=patient[0])", "patient[-1]", "reached only with exactly one value"),
    ],
    "recovery": [
        ("uuid.uuid4().hex[:6]", "", "length of a random folder-name suffix"),
        (
            "quarantine.mkdir(parents=True",
            "parents=False",
            "its parent, data_dir, holds the spool: it exists",
        ),
        ("work_dir.mkdir(parents=True", "parents=False", "its parent, the spool root, exists when items do"),
        ("stop_before_pixels=True", "stop_before_pixels=False", "specific_tags reads two tags either way"),
        ("spool.get(timeout=0)", "", "after Spool.finish() the End marker is queued: get returns at once"),
        (
            'returnstate.final(None,"",nothing_sent=False)',
            "nothing_sent=True",
            "nothing_sent matters only beside a PACS error, and there is none here",
        ),
    ],
    "policy": [
        ("jpeg_quality:int=90", "", "dataclass default never used: both constructors pass the value"),
        ("workers:int=0", "", "dataclass default never used: both constructors pass the value"),
        ("@dataclass(frozen=True)", "frozen=False", "Policy is never mutated"),
        ("info.rowsor0", "info.rowsor1", "rows unknown: 0 or 1, both below 64"),
        ("info.rowsor0", "info.rowsor-1", "rows unknown: 0 or -1, both below 64"),
        ("info.columnsor0", "info.columnsor1", "columns unknown: 0 or 1, both below 64"),
        ("info.columnsor0", "info.columnsor-1", "columns unknown: 0 or -1, both below 64"),
    ],
    "outcome": [
        (
            "announced:int=0",
            "announced:int=-1",
            "the default is read only beside no finder (counted) or an empty list (remaining and "
            "count_missing give the same for 0 and -1); an early start sets the PACS's count",
        ),
        (
            "returnmax(0,len(self.expected)-len(self.processed&self.expected.keys()))+self.extras",
            "max(-1,",
            "processed ∩ expected never outnumbers expected: the difference is never negative",
        ),
        (
            "ifnotself.expectedandself.announced>pacs_done:",
            "self.announced>=pacs_done:",
            "when equal nothing is missing: adding 0 and returning is what the fall-through does",
        ),
    ],
    "pumpstep": [
        ("@dataclass(frozen=True)", "frozen=False", "PumpView is made afresh for each step, never mutated"),
    ],
    "push-queue": [
        (
            "push_queue.c.attempts>0,push_queue.c.attempts-1",
            "push_queue.c.attempts>-1,",
            "release: a running item has attempts >= 1 (its claim counted one); 0 never reaches the case",
        ),
        (
            "push_queue.c.attempts>0,push_queue.c.attempts-1",
            "push_queue.c.attempts>=0,",
            "release: a running item has attempts >= 1 (its claim counted one); 0 never reaches the case",
        ),
        (
            "push_queue.c.attempts>0,push_queue.c.attempts-1",
            "push_queue.c.attempts>1,",
            "release: at attempts 1 both branches give 0",
        ),
        (
            "push_queue.c.attempts-1),else_=0)",
            "else_=1)",
            "release: the else branch is for attempts 0, which a running item never has",
        ),
        (
            "push_queue.c.attempts-1),else_=0)",
            "else_=-1)",
            "release: the else branch is for attempts 0, which a running item never has",
        ),
        ("str(r[0])forrinconn.execute(q)", "r[-1]", "a one-column row: [0] and [-1] are the same column"),
        (
            "str(r[0])forrinconn.execute(listed)",
            "r[-1]",
            "a one-column row: [0] and [-1] are the same column",
        ),
    ],
    "health": [
        ("@dataclass(frozen=True)", "frozen=False", "Check is never mutated"),
        (
            'Column("node",String(64)',
            "String(63)",
            "the probe row's node is an AE title (at most 16 characters)",
        ),
        (
            'Column("node",String(64)',
            "String(65)",
            "the probe row's node is an AE title (at most 16 characters)",
        ),
        ('Column("node",String(64),nullable=False)', "nullable=True", "the probe always writes its node"),
        (
            "ifTYPE_CHECKING:",
            "ifnotTYPE_CHECKING:",
            "imports for type names only: importing them at run time changes nothing",
        ),
    ],
    "commitments": [
        ("@dataclass(frozen=True)", "frozen=False", "Transaction is never mutated"),
    ],
    "committer": [
        (
            "break",
            "continue",
            "stopped: every remaining transaction is skipped either way (break leaves the loop, continue "
            "skips each one; nothing is sent or claimed)",
        ),
        (
            "SAME_ASSOCIATION_GRACE=0.5",
            "SAME_ASSOCIATION_GRACE=",
            "a tuning constant: how long the association waits for a report on it; only a timed test of a "
            "peer answering between the two values could tell (docs/mutation.md)",
        ),
        (
            "defstop(self,timeout:float=10.0)",
            "timeout:float=",
            "the join's upper bound: only a round lasting between the two values could tell",
        ),
    ],
    "push-commit": [
        (
            "attempts=peer.commit_attemptsifpeerisnotNoneelse1",
            "else0",
            "a newest state 'failed' means at least one failed reference: failures ≥ 1 ≥ 0 alike",
        ),
    ],
    "push-decide": [
        ("@dataclass(frozen=True)", "frozen=False", "JobResult, AfterJob, AfterFiles are never mutated"),
        (
            "failures.get(u,0)>=attempts",
            "failures.get(u,-1)",
            "commit_attempts ≥ 1 (the config refuses less): an absent count, 0 or -1, is never spent",
        ),
        (
            "bytes:int=0",
            "",
            "JobResult's default never used: _run_job passes every field (and after_job reads neither)",
        ),
        (
            "confirmed:int=0",
            "",
            "JobResult's default never used: _run_job passes every field (and after_job reads neither)",
        ),
        (
            "push.rechecks<=0:",
            "push.rechecks<=-1:",
            "rechecks 0: the count left is 0 and the next test returns (0, 0.0) too; the config refuses < 0",
        ),
        (
            "push.rechecks<=0:",
            "push.rechecks<0:",
            "rechecks 0: the count left is 0 and the next test returns (0, 0.0) too; the config refuses < 0",
        ),
    ],
    "push-service": [
        (
            "attempts=max(0,item.attempts-1)",
            "attempts=max(-1,",
            "a claimed item has attempts >= 1 (its claim counted one): attempts - 1 is never negative",
        ),
        (
            "[:2000]",
            "[:2001]",
            "the error is jobs.error, cut to 2000 characters by every journal writer, or a short fixed text",
        ),
    ],
    "stamp": [
        ("@dataclass(frozen=True)", "frozen=False", "Mark and StampPolicy are never mutated"),
        (
            "overlap:dt.timedelta=dt.timedelta(seconds=60)",
            "",
            "StampPolicy's default never used: policy_for always passes [view] stamp_overlap",
        ),
        ("returnbifb>aelsea", "returnbifb>=aelsea", "equal stamps: a and b are the same value"),
        (
            "where(column.is_not(None)).limit(1)",
            ".limit(2)",
            "detect_kind: scalar() takes the first row either way",
        ),
    ],
    "lanes": [
        (
            "late=self.take(0)",
            "late=self.take(-1)",
            "take(): any timeout <= 0 is the non-blocking get_nowait, as with 0",
        ),
    ],
    "uidindex": [
        *(
            (
                f"String({n})",
                f"String({n + d})",
                "the side tables are SQLite: it does not enforce VARCHAR lengths",
            )
            for n in (64, 200, 32, 512)
            for d in (-1, 1)
        ),
        *(
            (
                "OVERLAP=dt.timedelta(seconds=60)",
                f"seconds={n}",
                "the default is never used: ExamView passes stamp_overlap",
            )
            for n in (59, 61)
        ),
        *(
            ("BATCH=5000", f"BATCH={n}", "rows are read and written per batch: the same rows, the same mark")
            for n in (4999, 5001)
        ),
        (
            'Column("examine_id",String(64),primary_key=True)',
            "primary_key=False",
            "the name table's key (the UID table's, same text, is killed): a sync deletes an exam's row "
            "before it inserts it, and one batch holds an exam once",
        ),
        ("str(r[0])forrinconn.execute(stmt)", "r[-1]", "a one-column row: [0] and [-1] are the same column"),
        (
            'Column("name",String(32),primary_key=True)',
            "primary_key=False",
            "the state table: _set_state deletes a name before inserting it, one row per name either way",
        ),
        (
            "column<prefix[:-1]+chr(ord(prefix[-1])+1)",
            "column<=prefix[:-1]",
            "the prefix range's upper bound let in: the range narrows the scan, LIKE decides the match",
        ),
        (
            "chr(ord(prefix[-1])+1)",
            "chr(ord(prefix[-1])+2)",
            "a wider upper bound of the prefix range: the range narrows the scan, LIKE decides the match",
        ),
    ],
    "reports": [
        (
            "@dataclass(frozen=True)",
            "frozen=False",
            "ReportObject is never mutated (StudyFile's is killed: hashing)",
        ),
        ("i=2", "i=1", "data[1] is 0xD8 (kind_of checked FF D8 FF): not 0xFF, so the scan steps on to 2"),
        ("if0xC2<=marker<=0xCF", "193<=marker", "0xC1 (SOF1) is taken as a frame header just above"),
        ("if0xC2<=marker<=0xCF", "marker<=208", "0xD0 (RST0) is passed over as a standalone marker above"),
        ("0xD0<=marker<=0xD7", "marker<=216", "0xD8 (SOI) is a standalone marker already: the same branch"),
        (
            "i+=1ifmarker==0xFFelse2",
            "else1",
            "after a standalone marker one step lands on its code byte (never 0xFF): the scan steps over it",
        ),
        (
            'fragment=data+b"\\x00"iflen(data)%2elsedata',
            "len(data)%1",
            "never padded here: pydicom's encapsulate pads an odd frame to even itself (the same bytes)",
        ),
        ("8ifprecision<=8else16", "precision<=9", "a DCT JPEG's precision is 8 or 12 (ISO 10918-1 B.2.2)"),
        (
            "rest=unc[len(norm)+1:]",
            "len(norm)+0",
            "the path then starts with a separator: joinpath drops the empty part",
        ),
        ("rsp.read(limit+1)", "limit+2", "one byte more of a file over the limit, refused either way"),
        ("f.read(limit+1)", "limit+2", "one byte more of a file over the limit, refused either way"),
    ],
    "lossy": [
        (
            "tag&0xFFFF",
            "tag&65534",
            "the three tags written, (0028,2110/2112/2114), have even element numbers",
        ),
        (
            "iftag<=_LOSSY_TAGS[-1]",
            "_LOSSY_TAGS[-2]",
            "none of the lossy tags is present here (checked above)",
        ),
        (
            "iftag<=_LOSSY_TAGS[-1]",
            "_LOSSY_TAGS[-0]",
            "none of the lossy tags is present here (checked above)",
        ),
        (
            "iftag<=_LOSSY_TAGS[-1]",
            "iftag<_LOSSY_TAGS[-1]",
            "(0028,2114) is not present here (checked above)",
        ),
    ],
}


def equivalent_reason(target: str, diff: str) -> str:
    lines = diff.splitlines()
    old = "".join("".join(ln[1:].split()) for ln in lines if ln.startswith("-"))
    new = "".join("".join(ln[1:].split()) for ln in lines if ln.startswith("+"))
    for before, after, why in EQUIVALENT.get(target, []):
        if before in old and after in new:
            return why
    return ""


def function_lines(source: str, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """Line ranges (1-based, inclusive) of the named functions; ``name@text`` from ``text`` on."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found[prefix + child.name] = (first, child.end_lineno or child.lineno)

    visit(tree, "")
    ranges = []
    for spec in names:
        name, _, text = spec.partition("@")
        if name not in found:
            raise SystemExit(f"mutation: no function {name} in the module")
        start, end = found[name]
        if text:
            hits = [i for i in range(start, end + 1) if text in lines[i - 1]]
            if not hits:
                raise SystemExit(f"mutation: {text!r} not found in {name}")
            start = hits[0]
        ranges.append((start, end))
    return ranges


def copy_tree(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file() or rel.startswith(("mutants/", "benchmarks/")):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def test_command(target: Target, name: str) -> list[str]:
    """pytest on the target's tests, stopping at the first failure, with a temporary folder of the
    target's own (mutation runs of several targets at once never prune each other's)."""
    basetemp = Path(tempfile.gettempdir()) / f"mutation-{name}-pytest"
    return [
        PYTHON,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={basetemp}",
        *target.tests,
    ]


def run_target(name: str, target: Target, plan_only: bool = False) -> dict[str, object]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    # --plan works in a folder of its own: a target's real run may be going on in OUT / name
    work = OUT / ("plan-" + name if plan_only else name)
    tree = work / "tree"
    work.mkdir(parents=True, exist_ok=True)
    copy_tree(tree)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}

    print(f"mutation: {name}: baseline {' '.join(target.tests)}", flush=True)
    began = time.monotonic()
    base = subprocess.run(
        ["true"] if plan_only else test_command(target, name),
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    baseline = time.monotonic() - began
    if base.returncode != 0:
        print(base.stdout[-3000:], base.stderr[-2000:], sep="\n")
        raise SystemExit(f"mutation: {name}: the tests fail without any mutant; fix that first")
    timeout = max(60.0, 3 * baseline + 30)

    config = work / "cosmic-ray.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{target.module}"\n'
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(shlex.join(test_command(target, name)))}\n"
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    session = work / "session.sqlite"
    session.unlink(missing_ok=True)
    subprocess.run([COSMIC_RAY, "init", str(config), str(session)], cwd=tree, check=True)

    ranges = (
        function_lines((tree / target.module).read_text(), target.functions) if target.functions else None
    )
    with use_db(str(session), WorkDB.Mode.open) as db:
        skip = []
        for item in db.pending_work_items:
            keep = all(
                OPERATORS.match(m.operator_name)
                and (
                    ranges is None
                    or any(m.start_pos[0] <= end and start <= m.end_pos[0] for start, end in ranges)
                )
                for m in item.mutations
            )
            if not keep:
                skip.append(item.job_id)
        if skip:
            db.set_multiple_results(
                skip,
                WorkResult(output="outside the boundary functions", worker_outcome=WorkerOutcome.SKIPPED),
            )
        planned = db.num_work_items - len(skip)
    print(f"mutation: {name}: {planned} mutants (timeout {timeout:.0f} s each)", flush=True)
    if plan_only:
        shutil.rmtree(work)
        return {"target": name, "mutants": planned}

    began = time.monotonic()
    subprocess.run([COSMIC_RAY, "exec", str(config), str(session)], cwd=tree, env=env, check=True)
    elapsed = time.monotonic() - began
    result = summarise(name, target, session, baseline, elapsed)
    (work / "result.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(tree)
    return result


def recheck_target(name: str, target: Target) -> dict[str, object]:
    """Run the survivors of the last run of ``name`` again, against the tests as they are now (a
    fresh copy of the tree). Killed mutants stay killed: tests are only ever added between runs.
    Survivors explained in :data:`EQUIVALENT` are not run again (no test can kill them)."""
    from cosmic_ray.work_db import WorkDB, use_db

    work = OUT / name
    session = work / "session.sqlite"
    previous = json.loads((work / "result.json").read_text())
    tree = work / "tree"
    copy_tree(tree)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    with use_db(str(session), WorkDB.Mode.open) as db:
        again = [s["job"] for s in previous["survivors"] if not equivalent_reason(name, str(s["diff"]))]
        with db._session_maker.begin() as dbs:  # cosmic-ray has no public "forget this result"
            from cosmic_ray.work_db import WorkResultStorage

            dbs.query(WorkResultStorage).filter(WorkResultStorage.job_id.in_(again)).delete()
    config = work / "cosmic-ray.toml"
    config.write_text(
        re.sub(
            r"(?m)^test-command = .*$",
            lambda _: f"test-command = {json.dumps(shlex.join(test_command(target, name)))}",
            config.read_text(),
        )
    )
    print(f"mutation: {name}: re-running {len(again)} survivor(s)", flush=True)
    began = time.monotonic()
    subprocess.run(
        [COSMIC_RAY, "exec", str(work / "cosmic-ray.toml"), str(session)], cwd=tree, env=env, check=True
    )
    result = summarise(name, target, session, float(previous["baseline_s"]), float(previous["run_s"]))
    result["recheck_s"] = round(time.monotonic() - began, 1)
    (work / "result.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(tree)
    return result


def summarise(name: str, target: Target, session: Path, baseline: float, elapsed: float) -> dict[str, object]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed = timeouts = incompetent = 0
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = {item.job_id: item for item in db.work_items}
        for job_id, res in db.results:
            if res.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if res.test_outcome == TestOutcome.SURVIVED:
                m = items[job_id].mutations[0]
                survivors.append(
                    {
                        "job": job_id,
                        "file": Path(m.module_path).as_posix(),
                        "line": m.start_pos[0],
                        "operator": m.operator_name,
                        "occurrence": m.occurrence,
                        "diff": "\n".join(
                            ln
                            for ln in (res.diff or "").splitlines()
                            if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))
                        ),
                    }
                )
            elif res.test_outcome == TestOutcome.INCOMPETENT:
                incompetent += 1
            elif (res.output or "") == "timeout":
                timeouts += 1
            else:
                killed += 1
    for survivor in survivors:
        survivor["equivalent"] = equivalent_reason(name, str(survivor["diff"]))
    equivalent = sum(1 for x in survivors if x["equivalent"])
    total = killed + timeouts + incompetent + len(survivors)
    return {
        "target": name,
        "module": target.module,
        "functions": list(target.functions) or ["(whole module)"],
        "tests": list(target.tests),
        "mutants": total,
        "killed": killed,
        "timeouts": timeouts,
        "incompetent": incompetent,
        "survived": len(survivors),
        "equivalent": equivalent,
        "kill_rate": round(100.0 * (killed + timeouts) / total, 1) if total else None,
        "score": round(100.0 * (killed + timeouts) / (total - equivalent), 1) if total > equivalent else None,
        "baseline_s": round(baseline, 1),
        "run_s": round(elapsed, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "survivors": sorted(survivors, key=lambda s: (s["file"], s["line"], s["operator"])),
    }


def report() -> Path:
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*/result.json"))]
    order = list(TARGETS)
    results.sort(key=lambda r: order.index(r["target"]) if r["target"] in order else len(order))
    lines = [
        "| target | mutants | killed | timeouts | survived | of which equivalent | kill rate | "
        "kill rate without equivalents | first run | date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    totals = dict.fromkeys(("mutants", "killed", "timeouts", "survived", "equivalent"), 0)
    for r in results:
        for s in r["survivors"]:  # reasons may have been added since the run
            s["equivalent"] = equivalent_reason(r["target"], s["diff"])
        r["equivalent"] = sum(1 for s in r["survivors"] if s["equivalent"])
        total, done = int(r["mutants"]), int(r["killed"]) + int(r["timeouts"])
        lines.append(
            f"| {r['target']} | {total} | {r['killed']} | {r['timeouts']} | {r['survived']} | "
            f"{r['equivalent']} | {100.0 * done / total:.1f} % | "
            f"{100.0 * done / (total - r['equivalent']):.1f} % | {r['run_s'] / 60:.1f} min | {r['date']} |"
        )
        for key in totals:
            totals[key] += int(r[key])
    if totals["mutants"]:
        done, t = totals["killed"] + totals["timeouts"], totals
        lines.append(
            f"| **all** | {t['mutants']} | {t['killed']} | {t['timeouts']} | {t['survived']} | "
            f"{totals['equivalent']} | **{100.0 * done / totals['mutants']:.1f} %** | "
            f"**{100.0 * done / (totals['mutants'] - totals['equivalent']):.1f} %** | | |"
        )
    lines.append("")
    for r in results:
        for s in r["survivors"]:
            why = f" — equivalent: {s['equivalent']}" if s["equivalent"] else " — NOT EXPLAINED"
            where = s.get("file") or r["module"]
            lines.append(f"- {r['target']} `{where}:{s['line']}` {s['operator']}{why}")
            lines.extend(f"      {d}" for d in s["diff"].splitlines())
    out = OUT / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"some of: {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--report", action="store_true", help="only rewrite mutants/report.md")
    parser.add_argument("--plan", action="store_true", help="only count the mutants of each target")
    parser.add_argument(
        "--recheck", action="store_true", help="re-run only the survivors of each target's last run"
    )
    args = parser.parse_args()
    if args.list:
        for name, t in TARGETS.items():
            print(f"{name:12} {t.module:32} {t.why}\n{'':12} tests: {' '.join(t.tests)}")
        return
    if not args.report:
        unknown = [t for t in args.targets if t not in TARGETS]
        if unknown:
            raise SystemExit(f"mutation: unknown target(s) {', '.join(unknown)}; --list shows them")
        if args.plan:
            for name in args.targets or list(TARGETS):
                run_target(name, TARGETS[name], plan_only=True)
            return
        for name in args.targets or list(TARGETS):
            r = (recheck_target if args.recheck else run_target)(name, TARGETS[name])
            print(
                f"mutation: {name}: {r['mutants']} mutants, {r['killed']} killed, {r['timeouts']} timeouts, "
                f"{r['survived']} survived ({r['kill_rate']} %), {r['run_s']} s",
                flush=True,
            )
    print(report().read_text())


if __name__ == "__main__":
    main()

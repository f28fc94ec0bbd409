"""A run's life decided on plain data (hpcops.lifecycle, and hpcops.settling for sacct's records):
markers, squeue rows, sacct records and sbatch errors in, outcomes out. No Slurm, no files, no
database."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from lifecycle_data import NOW, TOKEN, a_record, a_run

from hpcops import lifecycle, settling
from hpcops.errors import SlurmRejected, SlurmUnreachable
from hpcops.lifecycle import LIMIT_RETRY_S, MarkerTexts
from hpcops.rundir import StartMarker
from hpcops.settling import ACCOUNTING_PATIENCE_S, OOM_TEXT, VANISHED_PATIENCE_S, Settle
from hpcops.slurm.backend import SlurmLimited
from hpcops.slurm.parse import FinishedJob, QueueEntry
from hpcops.states import RunState
from hpcops.store import Run


def an_entry(state: RunState, **fields: Any) -> QueueEntry:
    values: dict[str, Any] = {
        "job_id": "42",
        "state": state,
        "slurm_state": state.value,
        "reason": "None",
        "user": "hpcops",
        "account": "lab",
        "partition": "debug",
        "cpus": 1,
        "gpus": 0,
        "submitted_at": NOW - 60,
        "started_at": NOW - 30 if state is RunState.RUNNING else None,
        "comment": f"hpcops:{TOKEN}",
        "name": "r-000007",
    }
    values.update(fields)
    return QueueEntry(**values)


# --- markers -----------------------------------------------------------------------------------


def test_the_start_marker_of_the_runs_own_job_makes_it_running() -> None:
    [outcome] = lifecycle.on_markers(
        a_run(marker_exit_code=0), MarkerTexts(started="1800000000.5 node1 42\n"), NOW
    )
    assert outcome.to is RunState.RUNNING
    assert outcome.expect == (RunState.PENDING, RunState.STAGING)
    assert outcome.fields == {"started_at": 1800000000.5}
    assert outcome.note == "started on node1"
    assert outcome.replan


def test_a_start_marker_of_another_job_or_half_written_says_nothing() -> None:
    run = a_run(marker_exit_code=0)
    assert lifecycle.on_markers(run, MarkerTexts(started="1800000000 node1 41\n"), NOW) == []
    assert lifecycle.on_markers(run, MarkerTexts(started="1800000000 node1"), NOW) == []
    running = a_run(RunState.RUNNING, marker_exit_code=0)
    assert lifecycle.on_markers(running, MarkerTexts(started="1 node1 42"), NOW) == []


def test_the_exit_marker_records_its_code_and_asks_sacct_now() -> None:
    [outcome] = lifecycle.on_markers(
        a_run(RunState.RUNNING), MarkerTexts(exit="143 1800000000\n"), NOW
    )
    assert outcome.to is None
    assert outcome.fields == {"end_seen_at": NOW, "marker_exit_code": 143}
    assert outcome.ask_sacct_now and not outcome.forget


def test_the_exit_marker_keeps_an_end_the_poll_saw_first() -> None:
    run = a_run(RunState.RUNNING, end_seen_at=NOW - 5)
    [outcome] = lifecycle.on_markers(run, MarkerTexts(exit="0 1800000000"), NOW)
    assert outcome.fields["end_seen_at"] == NOW - 5


def test_only_this_attempts_stager_moves_a_staging_run_on() -> None:
    run = a_run(RunState.STAGING, staging_job_id="41", marker_exit_code=0)
    [staged] = lifecycle.on_markers(run, MarkerTexts(staged=f"0 1800000000 {TOKEN}"), NOW)
    assert staged.to is RunState.PENDING and staged.expect == (RunState.STAGING,)
    assert staged.note == "data staged (job 41)"
    stray = MarkerTexts(staged="0 1800000000 ffffffffffffffff")
    assert lifecycle.on_markers(run, stray, NOW) == []
    failed = MarkerTexts(staged=f"1 1800000000 {TOKEN}")
    assert lifecycle.on_markers(run, failed, NOW) == [], "a failed staging is for sacct to end"


def test_staged_started_and_ended_in_one_read_come_in_order() -> None:
    run = a_run(RunState.STAGING, staging_job_id="41")
    texts = MarkerTexts(staged=f"0 1 {TOKEN}", started="1800000000 node1 42", exit="0 1800000100")
    outcomes = lifecycle.on_markers(run, texts, NOW)
    assert [o.to for o in outcomes] == [RunState.PENDING, RunState.RUNNING, None]


# --- squeue ------------------------------------------------------------------------------------


def test_a_job_gone_from_squeue_without_a_marker_is_asked_of_sacct() -> None:
    outcome = lifecycle.on_queue_row(a_run(RunState.RUNNING), None, NOW)
    assert outcome is not None and outcome.to is None
    assert outcome.fields == {"end_seen_at": NOW} and outcome.ask_sacct_now
    seen = a_run(RunState.RUNNING, end_seen_at=NOW - 1)
    assert lifecycle.on_queue_row(seen, None, NOW) is None


def test_squeue_says_running_before_the_marker_does() -> None:
    outcome = lifecycle.on_queue_row(a_run(), an_entry(RunState.RUNNING), NOW)
    assert outcome is not None and outcome.to is RunState.RUNNING
    assert outcome.fields == {"started_at": NOW - 30}
    assert outcome.note == "running (squeue)"


def test_squeue_reason_is_recorded_once_and_never_as_none() -> None:
    waiting = an_entry(RunState.PENDING, reason="Resources")
    outcome = lifecycle.on_queue_row(a_run(), waiting, NOW)
    assert outcome is not None and outcome.to is None and outcome.reason == "Resources"
    assert lifecycle.on_queue_row(a_run(reason="Resources"), waiting, NOW) is None
    assert lifecycle.on_queue_row(a_run(), an_entry(RunState.PENDING), NOW) is None


# --- adoption after a crash --------------------------------------------------------------------


def test_adopting_a_live_job_found_by_token() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None)
    outcome = lifecycle.adopt(run, "42", RunState.RUNNING, NOW - 60, NOW)
    assert outcome.to is RunState.RUNNING and outcome.expect == (RunState.SUBMITTING,)
    assert outcome.fields == {
        "slurm_job_id": "42",
        "submitted_at": NOW - 60,
        "staging_job_id": None,
    }
    assert outcome.note == f"adopted Slurm job 42 by token {TOKEN}"


def test_adopting_a_job_with_a_staging_job_waits_for_its_data() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None)
    outcome = lifecycle.adopt(run, "42", RunState.PENDING, None, NOW, staging_job="41")
    assert outcome.to is RunState.STAGING
    assert outcome.fields["submitted_at"] == NOW and outcome.fields["staging_job_id"] == "41"


def test_adopting_a_job_that_already_ended_leaves_its_end_to_sacct() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None)
    outcome = lifecycle.adopt(run, "42", RunState.COMPLETED, None, NOW)
    assert outcome.to is RunState.PENDING and outcome.fields["end_seen_at"] == NOW


def orphan(run: Run, **given: Any) -> lifecycle.Outcome | None:
    inputs: dict[str, Any] = {
        "finished": None,
        "started": None,
        "stager_id": None,
        "live_stager_id": None,
        "now": NOW,
        "grace_s": 60.0,
    }
    inputs.update(given)
    return lifecycle.settle_orphan(run, **inputs)


def test_an_orphan_sacct_knows_by_token_is_adopted() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None, claimed_at=NOW - 5)
    job = FinishedJob("42", RunState.FAILED, "FAILED", f"hpcops:{TOKEN}", "r-000007")
    outcome = orphan(run, finished=job, stager_id="41")
    # Its end is for sacct to settle; its staging job's marker or `finish` moves it on.
    assert outcome is not None and outcome.to is RunState.STAGING
    assert outcome.fields["slurm_job_id"] == "42" and outcome.fields["staging_job_id"] == "41"
    assert outcome.fields["end_seen_at"] == NOW


def test_an_orphan_that_wrote_its_start_marker_is_adopted_never_submitted_twice() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None, claimed_at=NOW - 3600)
    outcome = orphan(run, started=StartMarker(NOW - 100, "node1", "42"))
    assert outcome is not None and outcome.to is RunState.RUNNING
    assert outcome.fields["slurm_job_id"] == "42"


def test_an_orphan_within_the_grace_may_still_have_an_sbatch_in_flight() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None, claimed_at=NOW - 59)
    assert orphan(run) is None


def test_an_orphan_past_the_grace_is_queued_again_and_its_stager_dropped() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None, claimed_at=NOW - 61)
    outcome = orphan(run, live_stager_id="41", stager_id="41")
    assert outcome is not None and outcome.to is RunState.QUEUED
    assert outcome.fields == {"token": None}
    assert outcome.drop_staging_job == "41"
    assert "the submission never reached Slurm" in outcome.note


def test_an_orphan_past_the_grace_that_was_cancelled_is_cancelled() -> None:
    run = a_run(
        RunState.SUBMITTING, slurm_job_id=None, claimed_at=NOW - 61, cancel_requested_by="ada"
    )
    outcome = orphan(run)
    assert outcome is not None and outcome.to is RunState.CANCELLED
    assert outcome.fields == {"ended_at": NOW} and outcome.changed
    assert outcome.note.startswith("cancelled after the check by token (")
    assert outcome.note.endswith("as ada asked")


# --- sacct: settling a job that ended ----------------------------------------------------------


def test_the_first_second_placeholder_is_not_a_final_record() -> None:
    placeholder = a_record(RunState.COMPLETED, name="allocation", comment="")
    run = a_run(RunState.RUNNING, end_seen_at=NOW - 1, marker_exit_code=0)
    assert settling.settle(run, placeholder, NOW, gone=False) is Settle.WAIT
    late = a_run(RunState.RUNNING, end_seen_at=NOW - ACCOUNTING_PATIENCE_S - 1, marker_exit_code=0)
    assert settling.settle(late, placeholder, NOW, gone=False) is Settle.FROM_MARKER


def test_a_final_record_finishes_the_run() -> None:
    run = a_run(RunState.RUNNING, end_seen_at=NOW - 1)
    assert settling.settle(run, a_record(RunState.COMPLETED), NOW, gone=False) is Settle.FINISH
    assert settling.settle(run, a_record(RunState.RUNNING), NOW, gone=False) is Settle.WAIT
    assert settling.settle(run, None, NOW, gone=False) is Settle.WAIT


def test_a_running_run_whose_record_is_pending_again_was_requeued() -> None:
    run = a_run(RunState.RUNNING, end_seen_at=NOW - 1, marker_exit_code=0)
    record = a_record(RunState.PENDING, "PENDING", reason="BeginTime")
    assert settling.settle(run, record, NOW, gone=False) is Settle.REQUEUED
    outcome = lifecycle.back_to_pending(run, record.slurm_state, record.reason)
    assert outcome.to is RunState.PENDING and outcome.expect == (RunState.RUNNING,)
    assert outcome.fields == {
        "reason": "BeginTime",
        "end_seen_at": None,
        "marker_exit_code": None,
        "restarts": 1,  # a restart within the attempt, not a new attempt
    }
    assert outcome.clear_markers and outcome.forget
    assert lifecycle.back_to_pending(run, "PREEMPTED", "None").reason == "requeued"


@pytest.mark.parametrize("state", [RunState.PREEMPTED, RunState.NODE_FAIL])
def test_preemption_or_node_failure_is_checked_against_squeue(state: RunState) -> None:
    record = a_record(state, exit_code=0, signal=0)
    assert settling.may_be_requeued(record)
    assert not settling.may_be_requeued(a_record(RunState.FAILED))
    live = an_entry(RunState.PENDING, reason="BeginTime")
    assert lifecycle.live_entry([an_entry(RunState.RUNNING, job_id="9"), live], "42") == live
    assert lifecycle.live_entry([an_entry(RunState.COMPLETED)], "42") is None
    # Not requeued: it ends in that state, with Slurm's words.
    outcome = settling.finish(a_run(RunState.RUNNING), record, NOW, log_tail="")
    assert outcome.to is state and outcome.reason == f"{state.value}, exit 0:0"


def test_a_runaway_record_is_judged_as_if_absent() -> None:
    ended = NOW - ACCOUNTING_PATIENCE_S - 1
    run = a_run(RunState.RUNNING, end_seen_at=ended, marker_exit_code=3)
    runaway = a_record(RunState.RUNNING, "RUNNING")
    assert settling.settle(run, runaway, NOW, gone=True) is Settle.FROM_MARKER
    assert settling.settle(run, runaway, NOW, gone=False) is Settle.WAIT
    assert settling.gone_from_squeue(run, NOW, [], NOW - 1)
    assert not settling.gone_from_squeue(run, NOW, [an_entry(RunState.RUNNING)], NOW - 1)
    assert not settling.gone_from_squeue(run, NOW, [], ended - 1), "no poll since its end"
    recent = a_run(RunState.RUNNING, end_seen_at=NOW - 1)
    assert not settling.gone_from_squeue(recent, NOW, [], NOW)


def test_a_job_that_vanished_without_marker_or_record_is_unknown() -> None:
    run = a_run(RunState.RUNNING, end_seen_at=NOW - VANISHED_PATIENCE_S - 1)
    assert settling.settle(run, None, NOW, gone=True) is Settle.VANISHED
    soon = a_run(RunState.RUNNING, end_seen_at=NOW - VANISHED_PATIENCE_S + 1)
    assert settling.settle(soon, None, NOW, gone=True) is Settle.WAIT
    outcome = settling.vanished(run, NOW)
    assert outcome.to is RunState.UNKNOWN and outcome.expect == (RunState.RUNNING,)
    assert outcome.reason == "vanished: no exit marker and no accounting record"
    assert outcome.fields["ended_at"] == NOW and outcome.forget


def test_sacct_is_asked_again_backing_off() -> None:
    delays = [settling.sacct_retry_s(n) for n in range(1, 10)]
    assert delays[0] == 1.0 and delays == sorted(delays) and delays[-1] == 30.0


def test_the_marker_state_when_sacct_never_answers() -> None:
    run = a_run(RunState.RUNNING, end_seen_at=NOW - 200, marker_exit_code=0)
    ok = settling.finish_from_marker(run, None)
    assert ok.to is RunState.COMPLETED and ok.fields["exit_code"] == 0
    assert ok.fields["ended_at"] == NOW - 200 and ok.fields["stderr_tail"] is None
    run = a_run(RunState.RUNNING, end_seen_at=NOW - 200, marker_exit_code=2)
    failed = settling.finish_from_marker(run, "boom")
    assert failed.to is RunState.FAILED and failed.fields["stderr_tail"] == "boom"
    assert failed.reason == "state from the job's exit marker (no sacct record)"


# --- sacct: the final state --------------------------------------------------------------------


def test_the_marker_has_the_exit_code_sacct_reduced() -> None:
    run = a_run(RunState.RUNNING, marker_exit_code=143)
    record = a_record(RunState.FAILED, "FAILED", exit_code=15)
    outcome = settling.finish(run, record, NOW, log_tail="")
    assert outcome.to is RunState.FAILED and outcome.fields["exit_code"] == 143
    assert outcome.reason == "FAILED, exit 15:0"
    disagree = a_run(RunState.RUNNING, marker_exit_code=7)
    assert settling.finish(disagree, record, NOW, log_tail="").fields["exit_code"] == 15
    signalled = a_record(RunState.FAILED, exit_code=0, signal=9)
    assert settling.finish(run, signalled, NOW, log_tail="").fields["exit_code"] == 0


def test_a_completed_run_records_accounting_and_no_reason() -> None:
    outcome = settling.finish(a_run(RunState.RUNNING), a_record(RunState.COMPLETED), NOW)
    assert outcome.to is RunState.COMPLETED and outcome.expect == (RunState.RUNNING,)
    assert outcome.reason is None and "reason" in outcome.fields, "clears a pending reason"
    fields = outcome.fields
    assert fields["elapsed_s"] == 490 and fields["max_rss_bytes"] == 1 << 20
    assert fields["alloc_cpus"] == 2 and fields["alloc_gpus"] == 1
    assert "stderr_tail" not in fields and outcome.forget
    assert settling.finish_log(a_record(RunState.COMPLETED), None) is None


def test_out_of_memory_is_read_from_stderr() -> None:
    record = a_record(RunState.FAILED, "FAILED", exit_code=0, signal=9)
    assert settling.finish_log(record, None) == "stderr"
    tail = f"slurmstepd: error: {OOM_TEXT}\n"
    oom = settling.finish(a_run(RunState.RUNNING), record, NOW, log_tail=tail)
    assert oom.to is RunState.OUT_OF_MEMORY and oom.fields["stderr_tail"] == tail
    plain = settling.finish(a_run(RunState.RUNNING), record, NOW, log_tail="Traceback")
    assert plain.to is RunState.FAILED
    timeout = settling.finish(
        a_run(RunState.RUNNING), a_record(RunState.TIMEOUT), NOW, log_tail=tail
    )
    assert timeout.to is RunState.TIMEOUT, "only a FAILED job is taken for out of memory"


def test_an_unknown_slurm_state_ends_the_run_unknown() -> None:
    record = a_record(RunState.UNKNOWN, "BOOT_FAIL_NEW", exit_code=1)
    run = a_run(RunState.RUNNING, end_seen_at=NOW - 1)
    assert settling.settle(run, record, NOW, gone=False) is Settle.FINISH
    outcome = settling.finish(run, record, NOW, log_tail="")
    assert outcome.to is RunState.UNKNOWN and outcome.reason == "BOOT_FAIL_NEW, exit 1:0"


def test_a_failed_staging_fails_the_run_with_the_stagers_words() -> None:
    run = a_run(RunState.STAGING, staging_job_id="41")
    cancelled = a_record(RunState.CANCELLED, "CANCELLED", reason="DependencyNeverSatisfied")
    assert settling.staging_may_have_failed(run, cancelled)
    assert not settling.staging_may_have_failed(
        a_run(RunState.STAGING, staging_job_id="41", cancel_requested_by="ada"), cancelled
    )
    assert not settling.staging_may_have_failed(a_run(), cancelled)
    progress = json.dumps({"token": TOKEN, "error": "dvc: md5 mismatch"})
    error = settling.staging_failure(run, progress)
    assert error == "dvc: md5 mismatch"
    assert settling.finish_log(cancelled, error) == "staging"
    outcome = settling.finish(run, cancelled, NOW, staging_error=error, log_tail="stager log")
    assert outcome.to is RunState.FAILED
    assert outcome.reason == "data staging failed: dvc: md5 mismatch"
    assert outcome.fields["stderr_tail"] == "stager log"


def test_what_the_stagers_progress_says() -> None:
    run = a_run(RunState.STAGING, staging_job_id="41")
    never = "the staging job ended before it staged the data (hpcops logs --staging)"
    assert settling.staging_failure(run, None) == never
    assert settling.staging_failure(run, "{not json") == never
    assert settling.staging_failure(run, json.dumps({"token": "other"})) == never
    done = {"token": TOKEN, "targets": {"a": {"phase": "done"}, "b": {"phase": "done"}}}
    assert settling.staging_failure(run, json.dumps(done)) is None
    half = {"token": TOKEN, "targets": {"a": {"phase": "done"}, "b": {"phase": "fetching"}}}
    assert settling.staging_failure(run, json.dumps(half)) == (
        "the staging job ended before it staged the data"
    )


# --- sbatch ------------------------------------------------------------------------------------


def test_a_full_limit_means_wait_backing_off_per_run() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None)
    refused = SlurmLimited("sbatch refused", stderr="QOSMaxSubmitJobPerUserLimit\n")
    first = lifecycle.sbatch_failed(run, refused, NOW, refusals=1, staging_job="41")
    assert first is not None and first.to is RunState.QUEUED
    assert first.expect == (RunState.SUBMITTING,)
    assert first.fields == {"token": None, "reason": "Slurm limit: QOSMaxSubmitJobPerUserLimit"}
    assert first.note == "waiting: QOSMaxSubmitJobPerUserLimit"
    assert first.retry_in_s == LIMIT_RETRY_S and first.drop_staging_job == "41"
    again = lifecycle.sbatch_failed(run, refused, NOW, refusals=3, staging_job=None)
    assert again is not None and again.retry_in_s == 4 * LIMIT_RETRY_S
    many = lifecycle.sbatch_failed(run, refused, NOW, refusals=30, staging_job=None)
    assert many is not None and many.retry_in_s == lifecycle.LIMIT_RETRY_MAX_S


def test_a_limit_refusal_of_a_run_cancelled_meanwhile_cancels_it() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None, cancel_requested_by="ada")
    refused = SlurmLimited("sbatch refused", stderr="AssocMaxJobsLimit")
    outcome = lifecycle.sbatch_failed(run, refused, NOW, refusals=1, staging_job="41")
    assert outcome is not None and outcome.to is RunState.CANCELLED
    assert outcome.retry_in_s is None and outcome.drop_staging_job == "41"
    assert outcome.note == "cancelled after Slurm refused it, as ada asked"


def test_a_rejection_fails_the_run_with_slurms_words() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None)
    rejected = SlurmRejected("sbatch failed", stderr="Invalid account or account/partition\n")
    outcome = lifecycle.sbatch_failed(run, rejected, NOW, refusals=1, staging_job=None)
    assert outcome is not None and outcome.to is RunState.FAILED
    assert outcome.reason == "Slurm refused the job: Invalid account or account/partition"
    assert outcome.fields["ended_at"] == NOW and outcome.retry_in_s is None


def test_slurm_unreachable_leaves_the_run_submitting() -> None:
    run = a_run(RunState.SUBMITTING, slurm_job_id=None)
    down = SlurmUnreachable("sbatch timed out")
    assert lifecycle.sbatch_failed(run, down, NOW, refusals=1, staging_job="41") is None


def test_a_submitted_job_and_its_staging_job() -> None:
    plain = lifecycle.submitted("42", None, NOW)
    assert plain.to is RunState.PENDING and plain.note == "Slurm job 42"
    staged = lifecycle.submitted("42", "41", NOW)
    assert staged.to is RunState.STAGING and staged.note == "Slurm job 42 after staging job 41"
    assert staged.fields == {"slurm_job_id": "42", "staging_job_id": "41", "submitted_at": NOW}


def test_a_run_that_no_longer_renders_fails_before_its_claim() -> None:
    outcome = lifecycle.unsubmittable("no partition 'gpu' on this cluster", NOW)
    assert outcome.to is RunState.FAILED and outcome.expect == (RunState.QUEUED,)
    assert outcome.reason == outcome.note == "no partition 'gpu' on this cluster"


def test_outcomes_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        lifecycle.submitted("42", None, NOW).to = None  # type: ignore[misc]

"""Retries decided on plain data (hpcops.retries.retry_or_end): an ended attempt, the run's
retry rules and its last ended attempt in; the run's end or its next attempt out."""

from __future__ import annotations

from typing import Any

import lifecycle_data
import pytest
from lifecycle_data import NOW

from hpcops import lifecycle, retries, settling
from hpcops.retries import RetryRules, retry_or_end
from hpcops.slurm.parse import AccountingRecord
from hpcops.spec import parse_spec
from hpcops.states import RunState
from hpcops.store import Attempt, Run

TIMEOUT_ON = RetryRules(
    max_attempts=4, on=frozenset({RunState.TIMEOUT, RunState.NODE_FAIL}), backoff_s=0
)


def a_run(**fields: Any) -> Run:
    """A run whose job 42 has been running for an hour."""
    times = {
        "created_at": NOW - 7200,
        "updated_at": NOW - 7200,
        "submitted_at": NOW - 3700,
        "started_at": NOW - 3600,
    }
    return lifecycle_data.a_run(RunState.RUNNING, **{**times, **fields})


def a_record(state: RunState, *, ran_s: float = 3600, slurm: str | None = None) -> AccountingRecord:
    """sacct's record of the run's job ending in `state` after `ran_s` seconds."""
    return lifecycle_data.a_record(
        state,
        slurm,
        submitted_at=NOW - ran_s - 100,
        started_at=NOW - ran_s,
        ended_at=NOW,
        elapsed_s=int(ran_s),
        total_cpu_s=10.0,
        alloc_tres="cpu=2,mem=1G,node=1,billing=2",
    )


def ended(run: Run, state: RunState, *, ran_s: float = 3600, slurm: str | None = None) -> Any:
    """`finish`'s outcome for the run's job ending in `state` after `ran_s` seconds."""
    return settling.finish(run, a_record(state, ran_s=ran_s, slurm=slurm), NOW)


def earlier(state: RunState, *, ran_s: float, number: int = 1) -> Attempt:
    return Attempt(
        run_id=7,
        number=number,
        slurm_job_id="41",
        state=state,
        started_at=NOW - 9000,
        ended_at=NOW - 9000 + ran_s,
    )


def test_an_attempt_in_retry_on_with_attempts_left_queues_the_next() -> None:
    run = a_run(attempts_ended=2, restarts=1)
    end = ended(run, RunState.TIMEOUT)
    out = retry_or_end(run, end, TIMEOUT_ON, earlier(RunState.TIMEOUT, ran_s=3600), now=NOW,
                       time_limit_s=3600)  # fmt: skip
    assert out.to is RunState.QUEUED and out.expect == (RunState.RUNNING,)
    assert out.reason == "attempt 3 of 4 ended TIMEOUT; attempt 4 queued"
    assert out.forget and out.clear_markers
    # The ended attempt is kept whole; the run starts its next attempt clean.
    assert out.ended is not None
    assert out.ended["state"] is RunState.TIMEOUT
    assert out.ended["started_at"] == NOW - 3600 and out.ended["ended_at"] == NOW
    assert out.ended["reason"] == "TIMEOUT, exit 0:0"
    f = out.fields
    assert f["slurm_job_id"] is None and f["token"] is None and f["array_task"] is None
    assert f["started_at"] is None and f["end_seen_at"] is None and f["restarts"] == 0
    assert f["queued_at"] == NOW and f["retry_not_before"] is None


def test_the_back_off_sets_a_not_before_and_says_when() -> None:
    rules = RetryRules(max_attempts=4, on=frozenset({RunState.TIMEOUT}), backoff_s=90)
    run = a_run()
    out = retry_or_end(run, ended(run, RunState.TIMEOUT), rules, None, now=NOW, time_limit_s=None)
    assert out.fields["retry_not_before"] == NOW + 90
    assert out.reason == (
        f"attempt 1 of 4 ended TIMEOUT; attempt 2 queued, not before {retries.clock_time(NOW + 90)}"
    )


def test_keep_place_leaves_the_queue_order_alone() -> None:
    run = a_run()
    out = retry_or_end(
        run, ended(run, RunState.TIMEOUT), TIMEOUT_ON, None, now=NOW, time_limit_s=None,
        keep_place=True,
    )  # fmt: skip
    assert out.to is RunState.QUEUED and "queued_at" not in out.fields


def test_out_of_attempts_the_run_ends_with_the_last_state_and_says_how_many() -> None:
    run = a_run(attempts_ended=3)
    out = retry_or_end(run, ended(run, RunState.TIMEOUT), TIMEOUT_ON,
                       earlier(RunState.TIMEOUT, ran_s=3600, number=3), now=NOW,
                       time_limit_s=3600)  # fmt: skip
    assert out.to is RunState.TIMEOUT
    assert out.reason == "ended TIMEOUT after 4 attempts (retry.max_attempts); TIMEOUT, exit 0:0"
    assert out.ended is not None and out.ended["state"] is RunState.TIMEOUT
    assert out.forget


@pytest.mark.parametrize(
    ("state", "rules"),
    [
        (RunState.COMPLETED, TIMEOUT_ON),
        (RunState.FAILED, TIMEOUT_ON),  # FAILED only when listed
        (RunState.CANCELLED, TIMEOUT_ON),
        (RunState.TIMEOUT, RetryRules()),  # no retry: block
    ],
)
def test_an_end_not_retried_is_the_run_s_end_unchanged(state: RunState, rules: RetryRules) -> None:
    run = a_run()
    end = ended(run, state, slurm="CANCELLED by 0" if state is RunState.CANCELLED else None)
    out = retry_or_end(run, end, rules, None, now=NOW, time_limit_s=None)
    assert out.to is state and out.fields == end.fields and out.note == end.note
    assert out.ended is not None and out.ended["state"] is state


def test_a_run_someone_asked_to_cancel_is_never_retried() -> None:
    run = a_run(cancel_requested_by="ada")
    out = retry_or_end(run, ended(run, RunState.TIMEOUT), TIMEOUT_ON, None, now=NOW,
                       time_limit_s=None)  # fmt: skip
    assert out.to is RunState.TIMEOUT


def test_two_attempts_in_a_row_failing_the_same_way_at_once_stop_the_retries() -> None:
    rules = RetryRules(max_attempts=10, on=frozenset({RunState.FAILED}))
    run = a_run(attempts_ended=1)
    end = ended(run, RunState.FAILED, ran_s=12)
    out = retry_or_end(run, end, rules, earlier(RunState.FAILED, ran_s=5), now=NOW,
                       time_limit_s=3600)  # fmt: skip
    assert out.to is RunState.FAILED
    assert out.reason is not None
    assert out.reason.startswith(
        "stopped after 2 attempts: each ended FAILED within 12 s of starting"
    )


@pytest.mark.parametrize("state", [RunState.OUT_OF_MEMORY, RunState.FAILED])
def test_the_job_s_own_quick_endings_in_a_row_stop_the_retries(state: RunState) -> None:
    rules = RetryRules(max_attempts=10, on=frozenset({state}))
    run = a_run(attempts_ended=1)
    out = retry_or_end(run, ended(run, state, ran_s=12), rules, earlier(state, ran_s=5),
                       now=NOW, time_limit_s=3600)  # fmt: skip
    assert out.to is state


@pytest.mark.parametrize("state", [RunState.PREEMPTED, RunState.NODE_FAIL])
def test_the_cluster_taking_the_job_twice_at_once_is_retried_all_the_same(
    state: RunState,
) -> None:
    # Preemption and node loss are not the job failing: two within a minute of starting still
    # leave the run its attempts (max_attempts 4: attempt 3 queued).
    rules = RetryRules(max_attempts=4, on=frozenset({state}))
    run = a_run(attempts_ended=1)
    out = retry_or_end(run, ended(run, state, ran_s=12), rules, earlier(state, ran_s=5),
                       now=NOW, time_limit_s=3600)  # fmt: skip
    assert out.to is RunState.QUEUED
    assert out.reason == f"attempt 2 of 4 ended {state}; attempt 3 queued"


@pytest.mark.parametrize(
    ("previous", "ran_s", "limit_s"),
    [
        (None, 5, 3600),  # the first attempt: nothing to compare with
        (earlier(RunState.TIMEOUT, ran_s=5), 5, 3600),  # the other ended another way
        (earlier(RunState.FAILED, ran_s=5), 61, 3600),  # this one ran past a minute
        (earlier(RunState.FAILED, ran_s=61), 5, 3600),  # the earlier one did
        (earlier(RunState.FAILED, ran_s=40), 40, 60),  # over half a 1-minute limit
    ],
)
def test_not_a_fast_fail(previous: Attempt | None, ran_s: float, limit_s: float) -> None:
    rules = RetryRules(max_attempts=10, on=frozenset({RunState.FAILED}))
    run = a_run(attempts_ended=0 if previous is None else 1)
    out = retry_or_end(run, ended(run, RunState.FAILED, ran_s=ran_s), rules, previous, now=NOW,
                       time_limit_s=limit_s)  # fmt: skip
    assert out.to is RunState.QUEUED


def test_the_fast_fail_window_is_half_a_short_time_limit() -> None:
    assert retries.fast_fail_s(None) == 60
    assert retries.fast_fail_s(3600) == 60
    assert retries.fast_fail_s(60) == 30


def test_a_slurm_requeue_is_a_restart_of_the_attempt_not_a_new_attempt() -> None:
    run = a_run(restarts=2)
    out = lifecycle.back_to_pending(run, "PREEMPTED", "BeginTime")
    assert out.to is RunState.PENDING and out.fields["restarts"] == 3
    assert out.ended is None


def test_retry_rules_are_read_from_the_spec_s_retry_block_in_one_place() -> None:
    base = "name: t\nexperiment: e\ncommand: python train.py\n"
    assert RetryRules.of(parse_spec(base, "t.yaml")) == RetryRules()
    spec = parse_spec(
        base + "retry: {max_attempts: 3, on: [TIMEOUT, PREEMPTED], backoff_s: 60}\n", "t.yaml"
    )
    assert RetryRules.of(spec) == RetryRules(
        max_attempts=3, on=frozenset({RunState.TIMEOUT, RunState.PREEMPTED}), backoff_s=60.0
    )
    default_on = parse_spec(base + "retry: {max_attempts: 2}\n", "t.yaml")
    assert RetryRules.of(default_on).on == frozenset({RunState.NODE_FAIL, RunState.PREEMPTED})


def test_attempt_end_takes_the_outcome_s_figures_over_the_run_s() -> None:
    run = a_run(slurm_state=None, alloc_cpus=None)
    out = settling.vanished(run, NOW)
    end = retries.attempt_end(run, out)
    assert end["state"] is RunState.UNKNOWN
    assert end["ended_at"] == NOW and end["started_at"] == run.started_at
    assert end["reason"] == "vanished: no exit marker and no accounting record"


def test_the_requeues_the_daemon_saw_are_the_attempt_s_restarts() -> None:
    # sacct 22.05 has no Restarts field (docs/notes-slurm.md): the count is the daemon's own.
    run = a_run(restarts=2)
    out = ended(run, RunState.TIMEOUT)
    assert "restarts" not in out.fields
    assert retries.attempt_end(run, out)["restarts"] == 2

"""Retries through the engine over the fake Slurm: an attempt that ends in a state the spec retries
on queues the run's next attempt (a new Slurm job, the same run, run directory and checkpoint
directory), up to retry.max_attempts, after retry.backoff_s, unless it keeps failing the same way
at once; a Slurm requeue is a restart within one attempt; `hpcops retry` queues an ended run's
next attempt by hand; a crash at each fault point between an attempt's end and the next sbatch
loses nothing and starts no attempt twice.

The `retry_rules` fixture gives every spec of a test the same rules (it stands in for
`RetryRules.of`, so a test says its rules once); `test_a_spec_s_retry_block_drives_the_retries`
goes through a real `retry:` block.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from hpcops import lifecycle
from hpcops.engine import follow, release
from hpcops.errors import InvalidInput
from hpcops.retries import RetryRules, clock_time
from hpcops.rundir import RunDir
from hpcops.states import RunState

from .engine_harness import BOB, EngineFactory, EngineHarness
from .fakeslurm import DaemonCrash

GiveRules = Callable[..., RetryRules]


@pytest.fixture
def retry_rules(monkeypatch: pytest.MonkeyPatch) -> GiveRules:
    """retry_rules(max_attempts=4, on=("TIMEOUT",), backoff_s=0): every spec's retry rules."""

    def give(
        max_attempts: int = 4, on: Sequence[str] = ("TIMEOUT",), backoff_s: float = 0.0
    ) -> RetryRules:
        rules = RetryRules(max_attempts, frozenset(RunState(s) for s in on), backoff_s)
        monkeypatch.setattr(RetryRules, "of", classmethod(lambda cls, spec: rules))
        return rules

    return give


def _attempt(h: EngineHarness, run_id: int, end: str, *, ran_s: float = 120.0) -> str:
    """Release the run's next attempt, run its job for `ran_s` and end it as `end` says
    (COMPLETED, FAILED: the script's exit; else Slurm ends it); tick until that is settled."""
    job = h.start_next(run_id)
    h.clock.advance(ran_s)
    if end in ("COMPLETED", "FAILED"):
        h.slurm.finish(job, 0 if end == "COMPLETED" else 1)
    else:
        h.slurm.die(job, end)  # killed by Slurm: no exit marker, the poll notices
    h.run_for(31)
    return job


def _checkpoint(h: EngineHarness, run_id: int) -> PurePosixPath:
    return PurePosixPath(h.run(run_id).run_dir) / "checkpoint" / "state"


def test_timeout_twice_then_completed_is_one_run_in_three_attempts(
    make_engine: EngineFactory, retry_rules: GiveRules
) -> None:
    retry_rules(max_attempts=4, on=("TIMEOUT",))
    h = make_engine()
    run_id = h.submit("long")
    first = _attempt(h, run_id, "TIMEOUT")
    run_dir = h.run(run_id).run_dir
    h.slurm.write(_checkpoint(h, run_id), "step=100\n")  # what the job saved on the signal
    assert h.state(run_id) in ("QUEUED", "PENDING")
    assert "attempt 1 of 4 ended TIMEOUT; attempt 2 queued" in h.notes(run_id)[-3]
    second = _attempt(h, run_id, "TIMEOUT")
    third = _attempt(h, run_id, "COMPLETED")

    run = h.run(run_id)
    assert run.state == "COMPLETED" and run.slurm_job_id == third
    assert len({first, second, third}) == 3, "a new Slurm job for each attempt"
    assert h.attempts(run_id) == [
        (1, first, "TIMEOUT"),
        (2, second, "TIMEOUT"),
        (3, third, "COMPLETED"),
    ]
    assert h.slurm.calls["sbatch"] == 3
    # The same run directory, and what the job saved there, across the attempts.
    assert run.run_dir == run_dir
    assert h.slurm.file(_checkpoint(h, run_id)) == "step=100\n"
    assert h.states(run_id) == [
        "QUEUED",
        *["SUBMITTING", "PENDING", "RUNNING", "QUEUED"] * 2,
        *["SUBMITTING", "PENDING", "RUNNING", "COMPLETED"],
    ]
    assert "attempt 3, claim 3" in h.notes(run_id)
    [a1, _, a3] = h.store.attempts(run_id)
    assert a1.elapsed_s is not None and a1.elapsed_s >= 120
    assert a1.reason == "TIMEOUT, exit 0:0" and a3.exit_code == 0


def test_when_the_attempts_run_out_the_run_ends_with_the_last_state_and_says_so(
    make_engine: EngineFactory, retry_rules: GiveRules
) -> None:
    retry_rules(max_attempts=2, on=("TIMEOUT", "NODE_FAIL"))
    h = make_engine()
    run_id = h.submit("unlucky")
    _attempt(h, run_id, "NODE_FAIL")
    _attempt(h, run_id, "TIMEOUT")
    run = h.run(run_id)
    assert run.state == "TIMEOUT"
    assert run.reason == "ended TIMEOUT after 2 attempts (retry.max_attempts); TIMEOUT, exit 0:0"
    assert [a[2] for a in h.attempts(run_id)] == ["NODE_FAIL", "TIMEOUT"]
    h.run_for(60)
    assert h.slurm.calls["sbatch"] == 2


def test_a_run_that_keeps_failing_at_once_stops_early(
    make_engine: EngineFactory, retry_rules: GiveRules
) -> None:
    retry_rules(max_attempts=10, on=("FAILED",))
    h = make_engine()
    run_id = h.submit("broken")
    _attempt(h, run_id, "FAILED", ran_s=5)
    assert h.state(run_id) in ("QUEUED", "PENDING"), "one quick failure is not a pattern"
    _attempt(h, run_id, "FAILED", ran_s=11)
    run = h.run(run_id)
    assert run.state == "FAILED"
    assert run.reason is not None
    assert run.reason.startswith("stopped after 2 attempts: each ended FAILED within 11 s")
    assert len(h.attempts(run_id)) == 2 and h.slurm.calls["sbatch"] == 2


def test_the_next_attempt_waits_out_the_back_off(
    make_engine: EngineFactory, retry_rules: GiveRules, monkeypatch: pytest.MonkeyPatch
) -> None:
    retry_rules(max_attempts=3, on=("TIMEOUT",), backoff_s=95)
    h = make_engine()
    run_id = h.submit("patient")
    plans: list[float] = []
    real_plan = release.plan

    def counted(p: Any, s: Any) -> Any:
        plans.append(h.clock())
        return real_plan(p, s)

    monkeypatch.setattr(release, "plan", counted)
    _attempt(h, run_id, "TIMEOUT")
    run = h.run(run_id)
    assert run.state == "QUEUED" and run.retry_not_before is not None
    not_before = run.retry_not_before
    assert run.reason == (
        f"attempt 1 of 3 ended TIMEOUT; attempt 2 queued, not before {clock_time(not_before)}"
    )
    assert "retry.backoff_s" in h.why(run_id)
    while h.clock() + 1 < not_before:
        h.run_for(1)
        assert h.slurm.calls["sbatch"] == 1, "released before its back-off ended"
    waiting = [t for t in plans if t > not_before - 95]
    # Not a plan a tick: only when the poll saw Slurm (every 30 s) or the queue changed.
    assert len(waiting) <= 6, f"{len(waiting)} plans in 95 s of 1 s ticks"
    h.run_for(2)
    assert h.slurm.calls["sbatch"] == 2, "released when the back-off ended, not at a later replan"
    assert h.state(run_id) == "PENDING"


@pytest.mark.parametrize("keep_place", [False, True])
def test_a_next_attempt_queues_at_the_back_unless_the_lab_keeps_its_place(
    make_engine: EngineFactory, retry_rules: GiveRules, keep_place: bool
) -> None:
    retry_rules(max_attempts=3, on=("PREEMPTED",))
    h = make_engine({"max_active": 1, "retry": {"keep_place": keep_place}})
    first = h.submit("first")
    h.tick()
    job = h.job_of(first)
    h.slurm.start(job)
    h.clock.advance(120)
    later = h.submit("later")  # queued after `first`, before its next attempt
    h.tick()
    assert h.state(later) == "QUEUED", "max_active: 1"
    h.slurm.die(job, "PREEMPTED")  # PreemptMode=CANCEL: the job ends, no Slurm requeue
    h.run_for(31)
    assert [a[2] for a in h.attempts(first)] == ["PREEMPTED"]
    went, waits = (first, later) if keep_place else (later, first)
    assert h.run(went).slurm_job_id is not None and h.state(went) == "PENDING"
    assert h.state(waits) == "QUEUED"


def test_a_slurm_requeue_is_a_restart_within_the_attempt(
    make_engine: EngineFactory, retry_rules: GiveRules
) -> None:
    retry_rules(max_attempts=3, on=("PREEMPTED", "NODE_FAIL"))
    h = make_engine()
    run_id = h.submit("preempted")
    job = h.start_next(run_id)
    h.clock.advance(30)
    h.slurm.preempt(job)  # PreemptMode=REQUEUE: the same job id pends again
    h.tick()
    assert h.state(run_id) == "PENDING" and h.run(run_id).restarts == 1
    h.clock.advance(60)
    h.slurm.start(job)
    h.tick()
    h.clock.advance(60)
    h.slurm.finish(job, 0)
    h.tick()
    assert h.state(run_id) == "COMPLETED"
    [attempt] = h.store.attempts(run_id)
    assert (attempt.number, attempt.slurm_job_id, attempt.restarts) == (1, job, 1)
    assert h.slurm.calls["sbatch"] == 1


def test_fair_share_counts_every_attempt_for_the_owner(
    make_engine: EngineFactory, retry_rules: GiveRules
) -> None:
    retry_rules(max_attempts=2, on=("TIMEOUT",))
    h = make_engine({"fair_share": {"refresh_s": 10, "cpu_hour_weight": 1.0}})
    run_id = h.submit("long", caller=BOB)
    first = _attempt(h, run_id, "TIMEOUT", ran_s=3600)
    second = _attempt(h, run_id, "COMPLETED", ran_s=3600)
    assert {first, second} <= set(h.slurm.jobs)
    h.run_for(11)
    usage = h.engine.status().usage
    assert set(usage) == {"bob"}, "both attempts' jobs are bob's, neither the daemon's user's"
    assert usage["bob"] == pytest.approx(2.0, abs=0.1), "two hours of one CPU"


def test_retry_by_hand_queues_an_ended_run_s_next_attempt(make_engine: EngineFactory) -> None:
    h = make_engine()  # no retry: block, a member retries by hand
    run_id = h.submit("crashed")
    first = _attempt(h, run_id, "FAILED")
    assert h.state(run_id) == "FAILED"
    run = h.retry(run_id)
    assert run.state == "QUEUED" and run.slurm_job_id is None and run.exit_code is None
    assert "retried by alice: attempt 2 queued" in h.notes(run_id)
    assert h.slurm.file(RunDir(Path(run.run_dir)).exit_marker) is None, "markers cleared"
    second = _attempt(h, run_id, "COMPLETED")
    assert h.state(run_id) == "COMPLETED"
    assert h.attempts(run_id) == [(1, first, "FAILED"), (2, second, "COMPLETED")]
    refusal = f"run {run_id} completed; `hpcops rerun {run_id}` runs it again as a new run"
    with pytest.raises(InvalidInput, match=re.escape(refusal)):
        h.retry(run_id)


def _job_attempt(h: EngineHarness, run_id: int) -> str:
    """The HPCOPS_ATTEMPT the run's job script gives its job."""
    script = h.slurm.file(RunDir(Path(h.run(run_id).run_dir)).script) or ""
    found = re.search(r"HPCOPS_ATTEMPT=(\S+)", script)
    assert found, "the script sets HPCOPS_ATTEMPT"
    return found[1].strip("'\"")


def test_retry_by_hand_of_a_run_sbatch_refused_is_its_attempt_1(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    run_id = h.submit("refused")
    h.slurm.refuse_sbatch("partition", name="refused")
    h.tick()
    assert h.state(run_id) == "FAILED" and h.run(run_id).slurm_job_id is None
    h.retry(run_id)
    assert "retried by alice: attempt 1 queued" in h.notes(run_id), "no job: no attempt ended"
    h.tick()
    assert h.state(run_id) == "PENDING" and _job_attempt(h, run_id) == "1"


def test_retry_by_hand_records_the_job_of_a_run_that_ended_before_attempts_were(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    run_id = h.submit("old")
    first = h.start_next(run_id)
    # Ended as before attempts were recorded: its job, no Attempt row, attempts_ended 0.
    h.store.transition(run_id, RunState.FAILED, actor="hpcops", slurm_job_id=first)
    h.slurm.finish(first, 1)
    assert h.run(run_id).attempts_ended == 0 and h.attempts(run_id) == []
    h.retry(run_id)
    assert "retried by alice: attempt 2 queued" in h.notes(run_id)
    assert h.attempts(run_id) == [(1, first, "FAILED")], "its job kept as attempt 1"
    assert first in h.store.owners_by_job([first]), "fair share still counts it"
    h.tick()
    assert _job_attempt(h, run_id) == "2"


def test_retry_by_hand_refuses_a_run_that_has_not_ended(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit("busy")
    h.tick()
    with pytest.raises(InvalidInput, match="is PENDING; only an ended run can be retried"):
        h.retry(run_id)
    assert h.state(run_id) == "PENDING"


def test_a_point_s_next_attempt_is_a_plain_single_job(
    make_engine: EngineFactory, retry_rules: GiveRules
) -> None:
    retry_rules(max_attempts=2, on=("TIMEOUT",))
    h = make_engine({"pending_window": 10, "max_active": 10})
    _, points = h.submit_sweep("lr", sweep={"grid": {"lr": [0.1, 0.01]}})
    h.tick()
    array_id = h.job_of(points[0]).split("_")[0]
    tasks = h.slurm.start_tasks(array_id)
    h.tick()
    h.clock.advance(120)
    h.slurm.die(tasks[0].job_id, "TIMEOUT")
    h.slurm.finish(tasks[1].job_id, 0)
    h.run_for(31)
    retried = h.run(points[0])
    assert retried.state == "PENDING" and retried.array_task is None
    job = h.slurm.job(retried.slurm_job_id or "")
    assert job.array_job_id is None, "a plain job, not a one-task array"
    assert [a[2] for a in h.attempts(points[0])] == ["TIMEOUT"]
    h.slurm.start(job.job_id)
    h.clock.advance(120)
    h.slurm.finish(job.job_id, 0)
    h.run_for(2)
    assert h.state(points[0]) == "COMPLETED" and h.state(points[1]) == "COMPLETED"


@pytest.mark.parametrize("fault", ["after_attempt_ended", "before_sbatch", "after_sbatch"])
def test_a_crash_between_an_attempt_s_end_and_the_next_sbatch_loses_nothing(
    make_engine: EngineFactory, retry_rules: GiveRules, fault: str
) -> None:
    retry_rules(max_attempts=3, on=("NODE_FAIL",))
    h = make_engine()
    run_id = h.submit("crashy")
    first = h.start_next(run_id)
    h.clock.advance(300)
    h.slurm.node_fail(first, requeue=False)
    h.restart(fault=fault)  # the next daemon dies at `fault` on the way to attempt 2
    for _ in range(40):
        try:
            h.tick()
        except DaemonCrash:
            break
        h.clock.advance(1)
    else:
        pytest.fail(f"never reached fault point {fault}")
    assert h.attempts(run_id) == [(1, first, "NODE_FAIL")]

    h.restart()
    h.run_for(45, every_s=5)  # the grace for a claim whose sbatch may not have landed
    run = h.run(run_id)
    assert run.state == "PENDING" and run.slurm_job_id not in (None, first)
    second = run.slurm_job_id or ""
    h.slurm.start(second)
    h.clock.advance(120)
    h.slurm.finish(second, 0)
    h.run_for(5)
    assert h.state(run_id) == "COMPLETED"
    assert h.attempts(run_id) == [(1, first, "NODE_FAIL"), (2, second, "COMPLETED")]
    assert h.slurm.calls["sbatch"] == 2, "no attempt started twice"


def test_an_attempt_end_that_finds_the_run_moved_queues_nothing_and_says_nothing(
    make_engine: EngineFactory, retry_rules: GiveRules, caplog: pytest.LogCaptureFixture
) -> None:
    retry_rules(max_attempts=3, on=("NODE_FAIL",))
    h = make_engine(fault="after_attempt_ended")
    run_id = h.submit("moved")
    job = h.start_next(run_id)
    seen = h.run(run_id)  # as the poll read it, RUNNING
    h.store.transition(run_id, RunState.FAILED, actor="test", note="moved meanwhile")
    end = lifecycle.Outcome(RunState.NODE_FAIL, expect=(RunState.RUNNING,), note="node lost")
    engine: Any = h.engine
    with caplog.at_level(logging.INFO, logger="hpcops.engine.follow"):
        # No DaemonCrash: the fault point after a next attempt is queued is not reached.
        out = follow.end_attempt(engine._parts, engine._state, seen, end)
    assert out.to is RunState.QUEUED, "the decision, as it was"
    assert h.state(run_id) == "FAILED" and h.run(run_id).slurm_job_id == job
    assert "queued" not in caplog.text


def test_a_cancel_that_lands_as_the_next_attempt_is_decided_cancels_the_run_at_once(
    make_engine: EngineFactory, retry_rules: GiveRules
) -> None:
    retry_rules(max_attempts=3, on=("NODE_FAIL",), backoff_s=3600)
    h = make_engine()
    run_id = h.submit("cancelled")
    job = h.start_next(run_id)
    seen = h.run(run_id)  # as the poll read it: RUNNING, no cancel asked
    h.cancel(run_id)  # lands before the decision is recorded
    end = lifecycle.Outcome(RunState.NODE_FAIL, expect=(RunState.RUNNING,), note="node lost")
    engine: Any = h.engine
    follow.end_attempt(engine._parts, engine._state, seen, end)
    assert h.state(run_id) == "CANCELLED", "not QUEUED for an hour with a cancel on it"
    assert h.attempts(run_id) == [(1, job, "NODE_FAIL")]
    assert "cancelled before its next attempt, as alice asked" in h.notes(run_id)


def test_a_cancel_that_reads_the_job_just_before_its_next_attempt_is_queued_cancels_the_run(
    make_engine: EngineFactory, retry_rules: GiveRules, monkeypatch: pytest.MonkeyPatch
) -> None:
    retry_rules(max_attempts=3, on=("NODE_FAIL",), backoff_s=3600)
    h = make_engine()
    run_id = h.submit("cancelled")
    h.start_next(run_id)
    read = h.store.get

    def read_then_requeue(wanted: int) -> Any:
        # The cancel reads the run RUNNING; the daemon queues its next attempt right after.
        run = read(wanted)
        monkeypatch.setattr(h.store, "get", read)
        h.store.transition(wanted, RunState.QUEUED, actor="hpcops", slurm_job_id=None)
        return run

    monkeypatch.setattr(h.store, "get", read_then_requeue)
    assert h.cancel(run_id) == f"run {run_id} cancelled"
    assert h.state(run_id) == "CANCELLED"


def test_a_spec_s_retry_block_drives_the_retries(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit("from-spec", retry={"max_attempts": 2, "on": ["TIMEOUT"], "backoff_s": 0})
    assert h.run(run_id).max_attempts == 2, "kept with the run for ls and show"
    first = _attempt(h, run_id, "TIMEOUT")
    second = _attempt(h, run_id, "TIMEOUT")
    assert h.attempts(run_id) == [(1, first, "TIMEOUT"), (2, second, "TIMEOUT")]
    assert h.run(run_id).reason == (
        "ended TIMEOUT after 2 attempts (retry.max_attempts); TIMEOUT, exit 0:0"
    )

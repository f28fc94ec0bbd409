"""A crash at each fault point (HPCOPS_FAULT) and the next daemon's repair: nothing lost, nothing
submitted twice (docs/design.md, decision 3)."""

from __future__ import annotations

from pathlib import Path

from hpcops.rundir import RunDir

from .engine_harness import EngineFactory


def test_crash_after_sbatch_before_the_job_id_is_recorded_adopts_the_job(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(fault="after_sbatch")
    run_id = h.submit("crash")
    h.crash_tick()
    run = h.run(run_id)
    assert run.state == "SUBMITTING" and run.slurm_job_id is None
    [job] = h.slurm.jobs.values()
    assert job.comment == f"hpcops:{run.token}"

    h.restart()
    h.tick()  # start-up reconciliation: squeue finds the job by its token
    run = h.run(run_id)
    assert run.state == "PENDING"
    assert run.slurm_job_id == job.job_id
    assert run.attempt == 1
    assert f"adopted Slurm job {job.job_id} by token {run.token}" in h.notes(run_id)

    h.slurm.start(job.job_id)
    h.slurm.finish(job.job_id, 0)
    h.clock.advance(1)
    h.tick()
    assert h.state(run_id) == "COMPLETED"
    assert h.slurm.calls["sbatch"] == 1, "submitted once"
    assert h.states(run_id) == ["QUEUED", "SUBMITTING", "PENDING", "RUNNING", "COMPLETED"]


def test_crash_after_sbatch_adopts_a_job_that_already_ended(make_engine: EngineFactory) -> None:
    # The daemon stayed down while the job ran and ended: squeue no longer lists it; the finished
    # jobs' sacct (with their comments) names it by token.
    h = make_engine(fault="after_sbatch")
    run_id = h.submit("crash")
    h.crash_tick()
    [job] = h.slurm.jobs.values()
    h.clock.advance(30)
    h.slurm.start(job.job_id)
    h.clock.advance(30)
    h.slurm.finish(job.job_id, 3)

    h.restart()
    h.tick()
    run = h.run(run_id)
    assert run.state == "FAILED"
    assert run.slurm_job_id == job.job_id
    assert run.exit_code == 3
    assert any(n.startswith(f"adopted Slurm job {job.job_id}") for n in h.notes(run_id))
    assert h.slurm.calls["sacct_finished"] == 1
    assert h.slurm.calls["sbatch"] == 1


def test_crash_after_sbatch_adopts_by_the_start_marker_when_slurm_cannot_name_it(
    make_engine: EngineFactory,
) -> None:
    # Gone from squeue and not yet in slurmdbd: the start marker, with its job id, still says the
    # job ran; it is adopted, never submitted twice.
    h = make_engine(fault="after_sbatch")
    run_id = h.submit("crash")
    h.crash_tick()
    [job] = h.slurm.jobs.values()
    h.slurm.start(job.job_id)
    h.slurm.finish(job.job_id, 0, sacct="none")
    h.clock.advance(60)

    h.restart()
    h.tick()
    run = h.run(run_id)
    assert run.slurm_job_id == job.job_id
    assert run.state in ("RUNNING", "COMPLETED")
    h.slurm.job(job.job_id).sacct = "record"
    h.run_for(5)
    assert h.state(run_id) == "COMPLETED"
    assert h.slurm.calls["sbatch"] == 1


def test_crash_between_claim_and_sbatch_submits_once_after_the_grace(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(fault="before_sbatch")
    run_id = h.submit("early")
    h.crash_tick()
    first = h.run(run_id)
    assert first.state == "SUBMITTING"
    assert h.slurm.calls["sbatch"] == 0 and not h.slurm.jobs
    assert h.slurm.file(RunDir(Path(first.run_dir)).script), "the script was written"

    h.restart()
    h.tick()
    assert h.state(run_id) == "SUBMITTING", "an orphaned sbatch may still land: wait the grace"
    h.run_for(25, every_s=5)
    assert h.state(run_id) == "SUBMITTING"
    assert h.slurm.calls["sbatch"] == 0
    h.run_for(10, every_s=5)
    run = h.run(run_id)
    assert run.state == "PENDING"
    assert run.attempt == 2
    assert run.token != first.token, "a new attempt, a new token"
    assert h.slurm.calls["sbatch"] == 1
    [job] = h.slurm.jobs.values()
    assert job.comment == f"hpcops:{run.token}"
    assert any("the submission never reached Slurm" in n for n in h.notes(run_id))
    assert h.states(run_id) == ["QUEUED", "SUBMITTING", "QUEUED", "SUBMITTING", "PENDING"]


def test_the_grace_waits_for_an_sbatch_that_lands_late(make_engine: EngineFactory) -> None:
    # The crashed daemon's sbatch reached slurmctld only after the restart's first poll.
    h = make_engine(fault="after_sbatch")
    run_id = h.submit("late")
    h.crash_tick()
    [job] = h.slurm.jobs.values()
    job.state = "GONE"  # not visible yet
    h.restart()
    h.tick()
    assert h.state(run_id) == "SUBMITTING"
    job.state = "PENDING"
    h.run_for(10)
    run = h.run(run_id)
    assert run.state == "PENDING" and run.slurm_job_id == job.job_id
    assert h.slurm.calls["sbatch"] == 1


def test_a_cancel_during_submitting_after_a_crash_never_reaches_slurm(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(fault="before_sbatch")
    run_id = h.submit("early")
    h.crash_tick()
    h.restart()
    message = h.cancel(run_id)
    assert "cancel sent" in message
    assert h.run(run_id).cancel_requested_by == "alice"
    h.run_for(40, every_s=5)
    run = h.run(run_id)
    assert run.state == "CANCELLED"
    assert h.slurm.calls["sbatch"] == 0 and h.slurm.calls["scancel"] == 0
    assert any(n.startswith("cancelled after the check by token") for n in h.notes(run_id))


def test_a_cancel_during_submitting_after_a_crash_cancels_the_adopted_job(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(fault="after_sbatch")
    run_id = h.submit("crash")
    h.crash_tick()
    h.restart()
    h.cancel(run_id)  # the API answers before the loop's first tick
    h.tick()
    job_id = h.job_of(run_id)
    assert h.slurm.calls["scancel"] == 1
    h.run_for(2)
    run = h.run(run_id)
    assert run.state == "CANCELLED"
    assert run.slurm_state == "CANCELLED by 1000"
    assert h.slurm.job(job_id).state == "CANCELLED by 1000"


def test_a_cancel_while_the_engine_is_between_claim_and_sbatch(make_engine: EngineFactory) -> None:
    # The API thread cancels while the loop is inside sbatch: the job gets in, and is cancelled
    # at the next tick.
    h = make_engine()
    run_id = h.submit("racy")
    h.slurm.before_next_sbatch(lambda: h.cancel(run_id))
    h.tick()
    run = h.run(run_id)
    assert run.state == "PENDING" and run.cancel_requested_by == "alice"
    h.tick()
    assert h.slurm.calls["scancel"] == 1
    h.run_for(2)
    assert h.state(run_id) == "CANCELLED"
    assert h.slurm.calls["sbatch"] == 1


def test_a_cancel_during_submitting_that_slurm_then_refuses_for_a_limit(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    run_id = h.submit("racy")
    h.slurm.refuse_sbatch("limit")
    h.slurm.before_next_sbatch(lambda: h.cancel(run_id))
    h.tick()
    run = h.run(run_id)
    assert run.state == "CANCELLED"
    assert "cancelled after Slurm refused it, as alice asked" in h.notes(run_id)
    assert h.slurm.calls["scancel"] == 0


def test_an_sbatch_whose_answer_was_lost_is_adopted_not_resubmitted(
    make_engine: EngineFactory,
) -> None:
    # "Socket timed out": the request reached slurmctld, the answer did not come back. The run
    # stays SUBMITTING and the poll finds the job by token.
    h = make_engine()
    h.slurm.lose_sbatch_reply = 1
    run_id = h.submit("lost")
    h.tick()
    run = h.run(run_id)
    assert run.state == "SUBMITTING"
    [job] = h.slurm.jobs.values()
    h.run_for(10)
    run = h.run(run_id)
    assert run.state == "PENDING"
    assert run.slurm_job_id == job.job_id
    assert h.slurm.calls["sbatch"] == 1


def test_a_members_job_carrying_a_runs_token_is_never_adopted(make_engine: EngineFactory) -> None:
    # Issue 12, item 10: the daemon died between its claim and sbatch; a member who learnt the
    # token submits a job of their own with it, live and then finished. Neither is adopted: the
    # run is submitted by the daemon itself once the grace is over.
    h = make_engine(fault="before_sbatch")
    run_id = h.submit("victim")
    h.crash_tick()
    token = h.run(run_id).token
    assert token is not None and h.slurm.calls["sbatch"] == 0
    live = h.slurm.submit_by_hand("imposter", user="mallory", comment=f"hpcops:{token}")

    h.restart()
    h.tick()
    assert h.run(run_id).slurm_job_id != live.job_id
    h.slurm.start(live.job_id)
    h.slurm.finish(live.job_id, 0)
    h.run_for(120, every_s=5.0)
    run = h.run(run_id)
    assert run.slurm_job_id is not None and run.slurm_job_id != live.job_id
    assert h.slurm.job(run.slurm_job_id).user != "mallory"
    assert not any(n and "adopted" in n for n in h.notes(run_id))


def test_history_never_shows_a_live_token(make_engine: EngineFactory) -> None:
    # Every member may read any run's history; the token is how the daemon recognises its job
    # while the run is SUBMITTING, so no note of that time may carry it.
    h = make_engine(fault="before_sbatch")
    run_id = h.submit()
    h.crash_tick()
    token = h.run(run_id).token
    assert token is not None
    assert not any(token in (n or "") for n in h.notes(run_id))

"""Slurm takes a job back and queues it again under the same id (preemption with
PreemptMode=REQUEUE, node failure with requeue), and sacct records that do not speak for the run:
a runaway record, a record of another job."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcops.rundir import RunDir

from .engine_harness import EngineFactory, EngineHarness


def _running(h: EngineHarness, name: str = "train") -> tuple[int, str]:
    run_id = h.submit(name)
    return run_id, h.start_next(run_id)


def _markers(h: EngineHarness, run_id: int) -> list[str | None]:
    rundir = RunDir(Path(h.run(run_id).run_dir))
    return [h.slurm.file(p) for p in rundir.markers]


@pytest.mark.parametrize("sacct_shows", ["PREEMPTED", "PENDING"])
def test_a_preempted_job_is_followed_back_to_pending_and_to_its_end(
    make_engine: EngineFactory, sacct_shows: str
) -> None:
    # sacct shows the attempt Slurm took back (PREEMPTED), or already the new one (PENDING).
    h = make_engine()
    run_id, job_id = _running(h)
    h.clock.advance(20)
    h.slurm.preempt(job_id, sacct_shows=sacct_shows)
    h.tick()
    run = h.run(run_id)
    assert run.state == "PENDING"
    assert run.slurm_job_id == job_id, "the same job id"
    assert run.marker_exit_code is None and run.end_seen_at is None
    assert run.reason == "BeginTime"
    assert _markers(h, run_id) == [None, None], "the taken-back attempt's markers are cleared"
    assert f"Slurm requeued job {job_id} ({sacct_shows})" in h.notes(run_id)

    h.clock.advance(121)
    h.slurm.start(job_id)
    h.tick()
    assert h.state(run_id) == "RUNNING"
    h.clock.advance(30)
    h.slurm.finish(job_id, 0)
    h.tick()
    run = h.run(run_id)
    assert run.state == "COMPLETED"
    assert run.slurm_job_id == job_id
    assert h.states(run_id) == [
        "QUEUED",
        "SUBMITTING",
        "PENDING",
        "RUNNING",
        "PENDING",
        "RUNNING",
        "COMPLETED",
    ]
    assert h.slurm.calls["sbatch"] == 1


def test_a_node_failure_the_script_saw_is_followed_back_to_pending(
    make_engine: EngineFactory,
) -> None:
    # `scontrol update nodename=... state=down` (docs/notes-slurm.md): the job is killed with TERM,
    # its trap writes 143, and Slurm requeues it; sacct shows NODE_FAIL for the attempt.
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.node_fail(job_id, requeue=True, sacct_shows="NODE_FAIL")
    h.slurm.write(RunDir(Path(h.run(run_id).run_dir)).exit_marker, "143 1795400100\n")
    h.tick()
    run = h.run(run_id)
    assert run.state == "PENDING"
    assert run.slurm_job_id == job_id
    assert _markers(h, run_id) == [None, None]
    assert f"Slurm requeued job {job_id} (NODE_FAIL)" in h.notes(run_id)
    h.slurm.start(job_id)
    h.slurm.finish(job_id, 0)
    h.clock.advance(1)
    h.tick()
    assert h.state(run_id) == "COMPLETED"


def test_a_lost_node_requeue_without_marker_goes_back_to_pending(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.node_fail(job_id, requeue=True, sacct_shows="PENDING")
    h.run_for(30, every_s=10)
    assert h.state(run_id) == "PENDING"


def test_a_lost_node_requeue_without_marker_still_ends_right(make_engine: EngineFactory) -> None:
    # Back to PENDING, then followed to its real end under the same job id.
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.node_fail(job_id, requeue=True, sacct_shows="PENDING")
    h.run_for(30, every_s=10)
    h.slurm.start(job_id)
    h.slurm.finish(job_id, 0)
    h.tick()
    run = h.run(run_id)
    assert run.state == "COMPLETED" and run.slurm_job_id == job_id
    assert h.slurm.calls["sbatch"] == 1


def test_a_node_failure_without_requeue_ends_node_fail(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.node_fail(job_id, requeue=False)
    h.run_for(30, every_s=10)
    run = h.run(run_id)
    assert run.state == "NODE_FAIL"
    assert run.reason == "NODE_FAIL, exit 0:0"
    assert h.slurm.calls["squeue"] == 3, "the poll, and one more to see whether it was requeued"


def test_a_runaway_record_is_judged_as_absent_once_squeue_agrees(
    make_engine: EngineFactory,
) -> None:
    # The job ended (its exit marker says 0) but slurmdbd lost the end: sacct says RUNNING for
    # ever. Once squeue has not listed it for the accounting patience, the marker decides.
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.finish(job_id, 0)
    h.slurm.job(job_id).sacct_state = "RUNNING"
    h.slurm.job(job_id).ended_at = None
    h.tick()
    assert h.state(run_id) == "RUNNING"
    h.run_for(110, every_s=5)
    assert h.state(run_id) == "RUNNING", "sacct may still catch up"
    h.run_for(40, every_s=5)
    run = h.run(run_id)
    assert run.state == "COMPLETED"
    assert run.exit_code == 0
    assert run.reason == "state from the job's exit marker (no sacct record)"
    assert h.slurm.calls["sacct"] <= 12, "asked with a back-off, not every tick"


def test_a_runaway_record_without_marker_is_unknown_after_patience(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    run_id, job_id = _running(h)
    job = h.slurm.die(job_id, "NODE_FAIL")
    job.sacct_state, job.ended_at = "RUNNING", None  # slurmdbd never heard of the end
    h.run_for(600, every_s=10)
    assert h.state(run_id) == "RUNNING"
    h.run_for(70, every_s=10)  # sacct is asked at most every 30 s by then
    run = h.run(run_id)
    assert run.state == "UNKNOWN"
    assert run.reason == "vanished: no exit marker and no accounting record"


def test_a_record_of_another_job_under_the_same_id_does_not_end_the_run(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.finish(job_id, 0)
    job = h.slurm.job(job_id)
    job.state, job.exit_code, job.sacct_comment = "FAILED", 1, "hpcops:0123456789abcdef"
    h.tick()
    run = h.run(run_id)
    assert run.state == "RUNNING" or run.exit_code == 0

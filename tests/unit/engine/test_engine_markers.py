"""What the engine reads from the run directory and from the poll while a job waits or runs:
markers it can trust, markers it must not, and Slurm's pending reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcops.errors import InvalidInput
from hpcops.rundir import RunDir

from .engine_harness import EngineFactory


def test_a_half_written_start_marker_waits_for_the_next_tick(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit()
    h.tick()
    rundir = RunDir(Path(h.run(run_id).run_dir))
    h.slurm.write(rundir.started_marker, "1795400001")  # the job is writing it right now
    h.tick()
    assert h.state(run_id) == "PENDING"
    h.slurm.write(rundir.started_marker, f"1795400001 vm {h.job_of(run_id)}\n")
    h.tick()
    run = h.run(run_id)
    assert run.state == "RUNNING"
    assert run.started_at == 1795400001


def test_a_start_marker_of_another_job_does_not_start_the_run(make_engine: EngineFactory) -> None:
    # A stray job of an earlier attempt writing into the directory speaks for itself only.
    h = make_engine()
    run_id = h.submit()
    h.tick()
    rundir = RunDir(Path(h.run(run_id).run_dir))
    h.slurm.write(rundir.started_marker, "1795400001 vm 99\n")
    h.tick()
    assert h.state(run_id) == "PENDING"


def test_the_script_removes_markers_of_an_earlier_attempt_before_sbatch(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(fault="before_sbatch")
    run_id = h.submit()
    h.crash_tick()
    rundir = RunDir(Path(h.run(run_id).run_dir))
    # Left by something that ran in this directory before: not this attempt's.
    h.slurm.write(rundir.exit_marker, "1 1795400000\n")
    h.restart()
    h.run_for(40, every_s=5)
    run = h.run(run_id)
    assert run.state == "PENDING" and run.attempt == 2
    assert h.slurm.file(rundir.exit_marker) is None, "cleared before the new sbatch"
    assert run.marker_exit_code is None


def test_the_pending_reason_follows_the_poll(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit()
    h.tick()
    assert h.why(run_id) == "Slurm: pending"
    h.slurm.set_pending_reason(h.job_of(run_id), "Resources")
    h.run_for(30, every_s=10)
    assert h.run(run_id).reason == "Resources"
    assert h.why(run_id) == "Slurm: Resources"
    assert h.states(run_id) == ["QUEUED", "SUBMITTING", "PENDING"], "a field update only"


def test_the_poll_starts_a_run_whose_marker_is_late(make_engine: EngineFactory) -> None:
    # The start marker is on shared storage that lags (NFS attribute caching): squeue says first.
    h = make_engine()
    run_id = h.submit()
    h.tick()
    job = h.slurm.start(h.job_of(run_id), marker=False)
    h.run_for(30, every_s=10)
    run = h.run(run_id)
    assert run.state == "RUNNING"
    assert run.started_at == job.started_at
    assert "running (squeue)" in h.notes(run_id)


def test_only_a_queued_run_can_be_held(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit()
    h.tick()
    with pytest.raises(InvalidInput, match="only a run still in hpcops' queue can be held"):
        h.hold(run_id)
    assert h.state(run_id) == "PENDING"


def test_a_tick_a_request_woke_releases_and_leaves_the_markers_to_their_interval(
    make_engine: EngineFactory,
) -> None:
    # Over SSH the markers' read is a command of its own: a burst of submits waking the loop
    # every 0.2 s must not repeat it, and a laptop's submit must not wait for it.
    h = make_engine()
    first = h.submit()
    h.tick()
    rundir = RunDir(Path(h.run(first).run_dir))
    h.slurm.write(rundir.started_marker, f"1795400001 vm {h.job_of(first)}\n")
    second = h.submit()
    h.engine.tick(woken=True)  # the last read was 0 s ago
    assert h.state(second) == "PENDING"  # released all the same
    assert h.state(first) == "PENDING"  # its marker waits for the next read
    h.clock.advance(h.config.daemon.tick_interval_s)
    h.engine.tick(woken=True)  # a tick_interval_s later: read
    assert h.state(first) == "RUNNING"
    third = h.submit()
    marker = f"1795400002 vm {h.job_of(second)}\n"
    h.slurm.write(RunDir(Path(h.run(second).run_dir)).started_marker, marker)
    h.tick()  # a tick the interval started reads them whenever it runs
    assert h.state(second) == "RUNNING" and h.state(third) == "PENDING"

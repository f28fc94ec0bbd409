"""A job writes its own markers: a garbled one costs that run alone (issue 12, item 2).

Each attack is a marker the job could write before `kill -9 $PPID` (so its EXIT trap cannot
rewrite it); another member's run must start, end and be finalized on the same ticks."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcops.rundir import RunDir

from .engine_harness import EngineFactory


@pytest.mark.parametrize(
    ("marker", "text"),
    [
        ("exit", "99999999999999999999 1\n"),  # once raised on every tick, outside the guard
        ("exit", "0 1e300\n"),
        ("exit", "-1 1795400000\n"),
        ("start", "1e300 node 777\n"),  # once made `ls` and `show` fail for everyone
        ("start", "1795400000 node --user=svc\n"),  # once became an argument of scancel
    ],
)
def test_a_garbled_marker_is_that_runs_reason_and_the_lab_goes_on(
    make_engine: EngineFactory, marker: str, text: str
) -> None:
    h = make_engine()
    hostile = h.submit("hostile")
    innocent = h.submit("innocent")
    h.tick()
    bad_job, good_job = h.job_of(hostile), h.job_of(innocent)
    h.slurm.start(bad_job)
    rundir = RunDir(Path(h.run(hostile).run_dir))
    path = rundir.exit_marker if marker == "exit" else rundir.started_marker
    h.slurm.write(path, text)
    h.slurm.start(good_job)
    h.run_for(3)
    h.slurm.finish(good_job, 0)
    h.run_for(5)
    assert h.state(innocent) == "COMPLETED"
    run = h.run(hostile)
    assert run.reason is not None and f"ignored its {marker} marker" in run.reason
    assert run.marker_exit_code is None
    assert run.started_at is None or 946_684_800 <= run.started_at <= 4_102_444_800
    # The job itself is still followed through Slurm: it ends as Slurm says.
    h.slurm.die(bad_job, "FAILED", signal=9)
    h.run_for(40, every_s=1.0)
    assert h.state(hostile) == "FAILED"


def test_a_garbled_marker_is_noted_once_not_every_tick(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit()
    h.tick()
    h.slurm.start(h.job_of(run_id))
    h.slurm.write(RunDir(Path(h.run(run_id).run_dir)).exit_marker, "256 1795400000\n")
    h.run_for(10)
    reasons = [n for n in h.notes(run_id) if n and "ignored its exit marker" in n]
    assert len(reasons) <= 1
    assert "ignored its exit marker: exit code 256 is not 0..255" in (h.run(run_id).reason or "")

"""A run's whole life without Slurm: the happy path, final states, marker versus sacct."""

from __future__ import annotations

from pathlib import Path

from hpcops.rundir import RunDir

from .engine_harness import EngineFactory, EngineHarness


def test_happy_path_from_queue_to_completed(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit("mnist")
    assert h.state(run_id) == "QUEUED"

    h.tick()  # the first tick is the start-up poll, then the release
    run = h.run(run_id)
    assert run.state == "PENDING"
    assert run.attempt == 1 and run.token is not None
    job = h.slurm.job(h.job_of(run_id))
    assert job.comment == f"hpcops:{run.token}", "the token rides in --comment"
    assert job.name == "mnist"
    assert h.slurm.file(RunDir(Path(run.run_dir)).spec) == run.spec_yaml
    assert h.slurm.file(RunDir(Path(run.run_dir)).script) is not None

    h.clock.advance(5)
    h.slurm.start(job.job_id, host="node7")
    h.tick()
    run = h.run(run_id)
    assert run.state == "RUNNING"
    assert run.started_at == int(h.clock())

    h.clock.advance(60)
    h.slurm.finish(job.job_id, 0)
    h.tick()
    run = h.run(run_id)
    assert run.state == "COMPLETED"
    assert run.exit_code == 0 and run.marker_exit_code == 0
    assert run.slurm_state == "COMPLETED"
    assert run.max_rss_bytes == 218304 * 1024, "MaxRSS from the .batch step"
    assert run.elapsed_s == 60
    assert run.alloc_cpus == 1
    assert run.reason is None
    assert h.states(run_id) == ["QUEUED", "SUBMITTING", "PENDING", "RUNNING", "COMPLETED"]
    assert h.notes(run_id)[3] == "started on node7"
    assert h.slurm.calls["sbatch"] == 1
    assert h.slurm.calls["sacct"] == 1, "one sacct, once the job ended"


def _running(h: EngineHarness, name: str = "train") -> tuple[int, str]:
    """A run whose job is running: (run id, job id)."""
    run_id = h.submit(name)
    h.tick()
    job_id = h.job_of(run_id)
    h.slurm.start(job_id)
    h.clock.advance(1)
    h.tick()
    assert h.state(run_id) == "RUNNING"
    return run_id, job_id


def test_a_failing_script_ends_failed_with_its_exit_code_and_stderr(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.write(RunDir(Path(h.run(run_id).run_dir)).stderr, "Traceback ...\nValueError: nan\n")
    h.clock.advance(10)
    h.slurm.finish(job_id, 3)
    h.tick()
    run = h.run(run_id)
    assert run.state == "FAILED"
    assert (run.exit_code, run.signal) == (3, 0)
    assert run.reason == "FAILED, exit 3:0"
    assert run.stderr_tail == "Traceback ...\nValueError: nan"


def test_marker_exit_code_beats_sacct_modulo_128(make_engine: EngineFactory) -> None:
    # sacct shows `exit 200` as 72:0 (tests/fixtures/slurm/README.md); the marker has 200.
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.finish(job_id, 200)
    assert h.slurm.job(job_id).exit_code == 72
    h.tick()
    run = h.run(run_id)
    assert run.state == "FAILED"
    assert run.exit_code == 200 and run.marker_exit_code == 200


def test_when_marker_and_sacct_disagree_sacct_decides(make_engine: EngineFactory) -> None:
    # The script wrote 0, yet Slurm recorded the job FAILED 1:0 (an epilogue, a step that
    # failed after the command): the codes do not agree modulo 128, so Slurm's word stands and
    # the marker's is kept beside it.
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.finish(job_id, 0)
    job = h.slurm.job(job_id)
    job.state, job.exit_code = "FAILED", 1
    h.tick()
    run = h.run(run_id)
    assert run.state == "FAILED"
    assert run.exit_code == 1
    assert run.marker_exit_code == 0


def test_a_memory_kill_is_out_of_memory_with_the_signal(make_engine: EngineFactory) -> None:
    # Without cgroups OverMemoryKill ends the job FAILED 0:9 with this line in stderr (22.05).
    h = make_engine()
    run_id, job_id = _running(h)
    stderr = RunDir(Path(h.run(run_id).run_dir)).stderr
    h.slurm.write(stderr, "slurmstepd-vm: error: Exceeded job memory limit\n")
    h.slurm.die(job_id, "FAILED", signal=9, exit_marker=137)
    h.tick()
    run = h.run(run_id)
    assert run.state == "OUT_OF_MEMORY"
    assert (run.exit_code, run.signal) == (0, 9), "a signal: sacct's code, not the marker's"
    assert run.marker_exit_code == 137


def test_a_timeout_without_marker_is_found_by_the_poll(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id, job_id = _running(h)
    h.clock.advance(5)
    h.slurm.die(job_id, "TIMEOUT")  # killed after KillWait: no marker
    h.tick()
    assert h.state(run_id) == "RUNNING", "no marker, and the poll is not due yet"
    h.run_for(25)
    run = h.run(run_id)
    assert run.state == "TIMEOUT"
    assert run.reason == "TIMEOUT, exit 0:0"
    assert run.marker_exit_code is None


def test_sacct_lag_waits_for_the_record(make_engine: EngineFactory) -> None:
    # slurmdbd records a job about a second after its end: no row at first, then the
    # placeholder `allocation` row (sacct_first_second.txt), then the record.
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.finish(job_id, 0, sacct="none")
    h.tick()
    assert h.state(run_id) == "RUNNING"
    assert h.run(run_id).marker_exit_code == 0
    h.slurm.job(job_id).sacct = "placeholder"
    h.run_for(2)
    assert h.state(run_id) == "RUNNING", "a placeholder row is not the job's final record"
    h.slurm.job(job_id).sacct = "record"
    h.run_for(4)
    run = h.run(run_id)
    assert run.state == "COMPLETED"
    assert run.max_rss_bytes is not None, "the state came from sacct"
    assert h.slurm.calls["sacct"] <= 4, "sacct is asked again with a back-off, not every tick"


def test_no_accounting_record_ever_trusts_the_marker_after_patience(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.finish(job_id, 0, sacct="none")
    h.tick()
    h.run_for(115, every_s=5)
    assert h.state(run_id) == "RUNNING", "sacct may still answer"
    h.run_for(40, every_s=5)  # within one back-off (at most 30 s) after the patience
    run = h.run(run_id)
    assert run.state == "COMPLETED"
    assert run.exit_code == 0
    assert run.reason == "state from the job's exit marker (no sacct record)"
    assert 5 <= h.slurm.calls["sacct"] <= 12, "asked with a back-off meanwhile"


def test_an_unmapped_final_state_is_unknown_not_a_crash(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id, job_id = _running(h)
    other = h.submit("other")
    h.slurm.die(job_id, "WARPED", exit_marker=0)  # a state word no table maps
    h.tick()
    run = h.run(run_id)
    assert run.state == "UNKNOWN"
    assert run.slurm_state == "WARPED"
    assert run.reason == "WARPED, exit 0:0"
    assert h.state(other) == "PENDING", "the tick went on"


def test_an_unmapped_live_state_leaves_the_run_followed(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit()
    h.tick()
    job = h.slurm.job(h.job_of(run_id))
    job.state = "FROZEN"  # squeue lists a state word no table maps
    h.run_for(30, every_s=10)
    assert h.state(run_id) == "PENDING", "unknown while live: followed, not ended"
    h.slurm.start(job.job_id)
    h.slurm.finish(job.job_id, 0)
    h.tick()
    assert h.state(run_id) == "COMPLETED"


def test_a_vanished_job_is_unknown_after_patience(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id, job_id = _running(h)
    h.slurm.vanish(job_id)  # out of squeue, no marker, no accounting record
    h.run_for(30, every_s=5)
    run = h.run(run_id)
    assert run.state == "RUNNING"
    assert run.end_seen_at is not None, "the poll noticed it left squeue"
    h.run_for(590, every_s=10)
    assert h.state(run_id) == "RUNNING", "patience: sacct may still record it"
    h.run_for(40, every_s=5)
    run = h.run(run_id)
    assert run.state == "UNKNOWN"
    assert run.reason == "vanished: no exit marker and no accounting record"
    assert h.slurm.calls["sacct"] < 40, "sacct asked with a back-off, not every second"


def test_restart_while_jobs_run_follows_them_without_new_jobs(make_engine: EngineFactory) -> None:
    h = make_engine()
    a, job_a = _running(h, "a")
    b = h.submit("b")
    h.tick()
    job_b = h.job_of(b)
    h.restart()
    h.slurm.finish(job_a, 0)
    h.slurm.start(job_b)
    h.tick()
    assert h.state(a) == "COMPLETED"
    assert h.state(b) == "RUNNING"
    assert h.slurm.calls["sbatch"] == 2, "nothing submitted twice"

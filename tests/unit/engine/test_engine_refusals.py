"""Slurm says no: a full limit means wait (with a back-off per run) while other runs go; a hard
refusal fails the run; an unreachable Slurm means back off and retry, never fail a run."""

from __future__ import annotations

from .engine_harness import EngineFactory, EngineHarness
from .fakeslurm import LIMIT_STDERR, fixture


def test_a_limit_refusal_waits_with_a_doubling_delay_while_others_go(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    big = h.submit("big", priority=10)
    small = h.submit("small")
    other = h.submit("other")
    h.slurm.refuse_sbatch("limit", name="big", times=None)

    h.tick()
    run = h.run(big)
    assert run.state == "QUEUED", "a limit means wait, not fail"
    assert run.token is None
    assert run.reason == f"Slurm limit: {LIMIT_STDERR.strip()}"
    assert h.slurm.calls["sbatch"] == 1, "releasing stops for this tick"
    assert h.state(small) == "QUEUED"
    assert "trying again in 30 s" in h.why(big)

    h.tick()  # the others go; the refused run waits out its delay
    assert h.state(small) == "PENDING" and h.state(other) == "PENDING"
    assert h.slurm.calls["sbatch"] == 3

    def sbatch_calls_after(seconds: float) -> int:
        h.run_for(seconds, every_s=2)
        return h.slurm.calls["sbatch"]

    # Retried 30 s after the first refusal, then 60 s, then 120 s after each next one.
    assert sbatch_calls_after(28) == 3
    assert sbatch_calls_after(2) == 4
    assert sbatch_calls_after(58) == 4
    assert sbatch_calls_after(2) == 5
    assert sbatch_calls_after(118) == 5
    assert sbatch_calls_after(2) == 6
    assert h.state(big) == "QUEUED"
    waits = [n for n in h.notes(big) if n.startswith("waiting: ")]
    assert len(waits) == 4
    assert h.states(big).count("SUBMITTING") == 4

    h.slurm.accept_sbatch()
    h.run_for(240, every_s=10)
    run = h.run(big)
    assert run.state == "PENDING"
    assert run.attempt == 5
    assert "FAILED" not in h.states(big)


def test_a_job_that_ends_lets_a_limited_run_try_again_at_once(make_engine: EngineFactory) -> None:
    h = make_engine()
    first = h.submit("first", priority=10)
    h.tick()
    limited = h.submit("limited")
    h.slurm.refuse_sbatch("limit", name="limited")
    h.tick()
    assert h.state(limited) == "QUEUED"
    assert h.slurm.calls["sbatch"] == 2
    h.clock.advance(1)
    job = h.job_of(first)
    h.slurm.start(job)
    h.slurm.finish(job, 0)
    h.tick()  # a job ended: the limit may have room again
    assert h.state(first) == "COMPLETED"
    h.tick()
    assert h.state(limited) == "PENDING"
    assert h.slurm.calls["sbatch"] == 3


def test_a_hard_refusal_fails_the_run_and_the_others_still_go(make_engine: EngineFactory) -> None:
    h = make_engine()
    bad = h.submit("bad", priority=10)
    good = h.submit("good")
    h.slurm.refuse_sbatch("partition", name="bad")
    h.tick()
    run = h.run(bad)
    assert run.state == "FAILED"
    stderr = fixture("sbatch_rejected_partition.stderr").strip()
    assert run.reason == f"Slurm refused the job: {stderr}"
    assert run.ended_at == h.clock()
    assert h.state(good) == "PENDING", "in the same tick"
    assert h.slurm.calls["sbatch"] == 2


def _outage(h: EngineHarness) -> tuple[int, int, str]:
    """A running run and a queued one, then slurmctld stops: (running, queued, its job)."""
    running = h.submit("running")
    h.tick()
    job = h.job_of(running)
    h.slurm.start(job)
    h.clock.advance(1)
    h.tick()
    queued = h.submit("queued")
    h.slurm.ctld_down = True
    return running, queued, job


def test_slurmctld_down_fails_nothing_and_catches_up(make_engine: EngineFactory) -> None:
    h = make_engine()
    running, queued, job = _outage(h)
    h.run_for(31)  # the poll is due: it fails
    assert h.engine.status().health.failures >= 1 or not h.engine.status().health.reachable
    h.run_for(120, every_s=5)
    assert not {h.state(running), h.state(queued)} & {"FAILED", "UNKNOWN"}
    assert h.state(running) == "RUNNING"

    # The job ended during the outage; its markers are read without Slurm.
    h.slurm.finish(job, 0)
    h.slurm.ctld_down = False
    h.run_for(70, every_s=5)
    assert h.engine.status().health.reachable is True
    assert h.state(running) == "COMPLETED"
    assert h.state(queued) == "PENDING"
    assert len(h.slurm.jobs) == 2, "nothing submitted twice"


def test_slurmctld_down_backs_off(make_engine: EngineFactory) -> None:
    h = make_engine()
    _outage(h)
    before = h.slurm.calls["squeue"] + h.slurm.calls["sbatch"]
    h.run_for(151, every_s=5)
    tries = h.slurm.calls["squeue"] + h.slurm.calls["sbatch"] - before
    # back-off 2, 4, 8, 16, 32, 60, 60 s: about 8 tries in 150 s
    assert tries <= 10, f"{tries} calls to a slurmctld that does not answer"
    status = h.engine.status()
    assert status.health.reachable is False
    assert "slurmctld did not answer" in status.health.last_error


def test_an_sbatch_during_an_outage_leaves_the_run_submitting_then_settles_it(
    make_engine: EngineFactory,
) -> None:
    # sbatch failed with "Unable to contact slurm controller": the request may have reached
    # slurmctld, so the run is not failed nor resubmitted blindly; the token settles it.
    h = make_engine()
    run_id = h.submit("during")
    # slurmctld goes down between the tick's poll (answered) and its sbatch.
    h.slurm.before_next_sbatch(lambda: setattr(h.slurm, "ctld_down", True))
    h.tick()
    run = h.run(run_id)
    assert run.state == "SUBMITTING"
    assert not h.slurm.jobs
    h.slurm.ctld_down = False
    h.run_for(60, every_s=5)
    run = h.run(run_id)
    assert run.state == "PENDING"
    assert run.attempt == 2
    assert len(h.slurm.jobs) == 1
    assert any("never reached Slurm" in n for n in h.notes(run_id))


def test_the_cluster_out_of_reach_backs_off_and_fails_nothing(make_engine: EngineFactory) -> None:
    # Off the cluster (SSH) the markers come over the same connection: nothing is reached.
    h = make_engine()
    run_id = h.submit()
    h.tick()
    h.slurm.transport_down = True
    h.run_for(150, every_s=5)
    assert h.engine.status().health.reachable is False
    assert h.state(run_id) == "PENDING"
    # The marker read is tried every tick (a local failure: SshTransport throttles reconnects);
    # Slurm's commands wait out the back-off.
    assert h.slurm.calls["unreached"] == 30, "one try per tick"
    assert h.slurm.calls["unreached_commands"] <= 10
    h.slurm.transport_down = False
    job = h.job_of(run_id)
    h.slurm.start(job)
    h.slurm.finish(job, 0)
    h.run_for(61, every_s=5)
    assert h.engine.status().health.reachable is True
    assert h.state(run_id) == "COMPLETED"


def test_an_idle_queue_is_planned_once(make_engine: EngineFactory) -> None:
    h = make_engine({"max_active": 1})
    h.submit("first")
    h.submit("waits")
    h.tick()
    h.tick()
    decision = h.engine.status().decision
    h.run_for(20)
    assert h.engine.status().decision is decision, "nothing changed: no new plan"


def test_a_run_waiting_out_a_limit_does_not_replan_every_tick(make_engine: EngineFactory) -> None:
    h = make_engine()
    h.submit("big", priority=10)
    h.submit("small")
    h.slurm.refuse_sbatch("limit", name="big", times=None)
    h.tick()
    h.tick()
    decisions = []
    for _ in range(10):
        h.clock.advance(1)
        h.tick()
        decisions.append(h.engine.status().decision)
    assert all(d is decisions[0] for d in decisions)


def test_a_slurmdbd_outage_stops_neither_release_nor_cancellations(
    make_engine: EngineFactory,
) -> None:
    # sacct goes to slurmdbd; while it is down, runs are still released and cancelled through
    # slurmctld, Slurm stays "reachable", and the runs that ended are settled once it is back.
    h = make_engine()
    first = h.submit("first")
    h.tick()
    job = h.job_of(first)
    h.slurm.start(job)
    h.slurm.finish(job, 0)
    h.slurm.dbd_down = True
    second = h.submit("second")
    h.run_for(20, every_s=1)
    assert h.state(second) in ("PENDING", "RUNNING")
    h.cancel(second)
    h.run_for(5, every_s=1)
    assert h.slurm.job(h.job_of(second)).state.startswith("CANCELLED")
    assert h.engine.status().health.reachable is True
    assert h.slurm.calls["sacct_unanswered"] <= 8, "sacct backs off while slurmdbd is down"
    h.slurm.dbd_down = False
    h.run_for(70, every_s=1)
    assert h.state(first) == "COMPLETED"
    assert h.state(second) == "CANCELLED"

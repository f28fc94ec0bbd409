"""What goes into Slurm, in which order, and at what cost to slurmctld: priority, max_active and the
pending window; hold, top and cancel before release; one squeue per poll for the whole lab."""

from __future__ import annotations

from .engine_harness import BOB, EngineFactory, EngineHarness


def _submitted_names(h: EngineHarness) -> list[str]:
    """The jobs in the order sbatch received them."""
    return [job.name for job in sorted(h.slurm.jobs.values(), key=lambda j: int(j.job_id))]


def test_release_follows_priority_within_max_active(make_engine: EngineFactory) -> None:
    h = make_engine({"max_active": 2, "pending_window": 2})
    low = h.submit("low", priority=0)
    mid = h.submit("mid", priority=5)
    high = h.submit("high", priority=10)
    mid2 = h.submit("mid2", priority=5)
    h.tick()
    assert _submitted_names(h) == ["high", "mid"], "priority first, then queued time"
    assert h.state(low) == "QUEUED" and h.state(mid2) == "QUEUED"
    assert h.why(mid2) == (
        "run limit full: 2/2 hpcops runs in Slurm (max_active); next in the lab's queue"
    )

    h.run_for(60, every_s=10)
    assert h.slurm.calls["sbatch"] == 2, "max_active holds while both are in Slurm"

    # Running jobs still count against max_active; an ended one makes room for the next.
    for run_id in (high, mid):
        h.slurm.start(h.job_of(run_id))
    h.run_for(5)
    assert h.slurm.calls["sbatch"] == 2
    h.slurm.finish(h.job_of(high), 0)
    h.run_for(2)
    assert h.state(high) == "COMPLETED"
    assert _submitted_names(h) == ["high", "mid", "mid2"]
    assert h.state(low) == "QUEUED"


def test_the_pending_window_limits_runs_pending_in_slurm(make_engine: EngineFactory) -> None:
    h = make_engine({"max_active": 8, "pending_window": 2})
    runs = h.submit_many([{"name": f"r{i}"} for i in range(5)])
    h.tick()
    assert h.slurm.calls["sbatch"] == 2
    h.slurm.start(h.job_of(runs[0]))
    h.run_for(2)
    assert h.state(runs[0]) == "RUNNING"
    assert h.slurm.calls["sbatch"] == 3, "one started: room for one more pending"


def test_priority_changes_hold_and_top_change_the_order(make_engine: EngineFactory) -> None:
    h = make_engine({"max_active": 1, "pending_window": 1})
    h.submit("a", priority=3)
    b = h.submit("b", priority=2)
    c = h.submit("c", priority=1)
    d = h.submit("d", priority=0)
    h.hold(b)
    h.set_priority(d, 2)
    h.top(c)
    assert h.run(c).priority == 4, "strictly above every queued run"
    h.tick()
    assert _submitted_names(h) == ["c"]
    assert h.state(b) == "HELD" and h.why(b) == "held by alice"

    def finish_current() -> None:
        [job] = [j for j in h.slurm.jobs.values() if j.in_squeue]
        h.slurm.start(job.job_id)
        h.slurm.finish(job.job_id, 0)
        h.run_for(2)

    finish_current()
    assert _submitted_names(h) == ["c", "a"]
    finish_current()
    assert _submitted_names(h) == ["c", "a", "d"], "b is held"
    h.release_hold(b)
    finish_current()
    assert _submitted_names(h) == ["c", "a", "d", "b"]
    assert h.states(b) == ["QUEUED", "HELD", "QUEUED", "SUBMITTING", "PENDING"]


def test_a_cancel_before_release_never_reaches_slurm(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit()
    assert h.cancel(run_id) == f"run {run_id} cancelled"
    h.run_for(5)
    run = h.run(run_id)
    assert run.state == "CANCELLED" and run.cancel_requested_by == "alice"
    assert h.slurm.calls["sbatch"] == 0 and h.slurm.calls["scancel"] == 0
    assert h.states(run_id) == ["QUEUED", "CANCELLED"]


def test_a_cancel_of_a_running_job_is_one_scancel(make_engine: EngineFactory) -> None:
    h = make_engine()
    run_id = h.submit()
    h.tick()
    job = h.job_of(run_id)
    h.slurm.start(job)
    h.run_for(2)
    h.cancel(run_id)
    h.run_for(3)
    run = h.run(run_id)
    assert run.state == "CANCELLED"
    assert run.slurm_state == "CANCELLED by 1000"
    assert run.exit_code == 0, "sacct's 0:0; the TERM trap's 143 is the marker's"
    assert run.marker_exit_code == 143
    assert h.slurm.calls["scancel"] == 1
    assert ("scancel", job) in h.slurm.commands


def test_one_squeue_per_poll_for_the_whole_lab(make_engine: EngineFactory) -> None:
    h = make_engine()
    runs = h.submit_many([{"name": f"r{i}"} for i in range(5)])
    runs += h.submit_many([{"name": f"b{i}"} for i in range(3)], caller=BOB)
    h.tick()
    assert h.slurm.calls["sbatch"] == 4, "the pending window (4)"
    assert h.slurm.calls["squeue"] == 1
    for run_id in runs[:4]:
        h.slurm.start(h.job_of(run_id))
    h.run_for(120, every_s=5)
    # polls at 0, 30, 60, 90, 120 s; the start markers, not squeue, said the jobs started
    assert h.slurm.calls["squeue"] == 5
    squeues = [argv for argv in h.slurm.commands if argv[0] == "squeue"]
    assert not any(a.startswith(("-j", "--jobs")) for argv in squeues for a in argv), (
        "no growing -j list"
    )
    assert h.slurm.calls["sbatch"] == 8
    assert h.slurm.calls["sinfo"] <= 1, "partition limits are cached"

    # Jobs that end together: one sacct for all of them.
    sacct_before = h.slurm.calls["sacct"]
    for run_id in runs[:4]:
        h.slurm.finish(h.job_of(run_id), 0)
    h.tick()
    assert {h.state(r) for r in runs[:4]} == {"COMPLETED"}
    assert h.slurm.calls["sacct"] - sacct_before == 1
    [argv] = [a for a in h.slurm.commands if a[0] == "sacct" and "--jobs=" in " ".join(a)][-1:]
    assert len(next(a for a in argv if a.startswith("--jobs=")).split(",")) == 4


def test_an_idle_daemon_asks_slurm_almost_nothing(make_engine: EngineFactory) -> None:
    h = make_engine()
    h.run_for(600, every_s=10)
    # 20 polls in 10 minutes, fair-share usage twice; nothing else
    assert h.slurm.calls["squeue"] == 20
    assert h.slurm.calls["sacct_usage"] == 2
    assert set(h.slurm.calls) == {"squeue", "sacct_usage"}


def test_a_job_submitted_by_hand_counts_against_the_lab_quota(make_engine: EngineFactory) -> None:
    h = make_engine({"quotas": {"lab": {"gpus": 4}}})
    h.slurm.submit_by_hand("by-hand", user="bob", gpus=4)
    run_id = h.submit("gpu", resources={"gpus": 1, "partition": "gpu"})
    h.tick()
    assert h.state(run_id) == "QUEUED"
    assert h.why(run_id) == "lab GPU quota full: 4/4 in use by bob (4)"
    assert h.slurm.calls["sbatch"] == 0

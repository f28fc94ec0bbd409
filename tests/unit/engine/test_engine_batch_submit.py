"""A release step of many single runs (issue 16, part 3): every run claimed with its own token
before its sbatch (a chunk of runs per claim), the sbatch calls side by side, the job ids
recorded a chunk at a time;
a crash at either fault point repaired run by run, and a refusal or an outage costing only the
run it hit (the runs not tried go back to the queue as they were)."""

from __future__ import annotations

from hpcops.engine.submit import CLAIM_CHUNK

from .engine_harness import EngineFactory, EngineHarness
from .fakeslurm import LIMIT_STDERR

NAMES = ["a", "b", "c", "d", "e", "f"]
WIDE = {"max_active": 10, "pending_window": 10}


def _submit_all(h: EngineHarness) -> list[int]:
    # Priorities in NAMES' order: the release order is known.
    return [h.submit(name, priority=100 - i) for i, name in enumerate(NAMES)]


def _pending_each_with_its_job(h: EngineHarness, ids: list[int], *, attempt: int) -> list[str]:
    """Each run PENDING on this attempt, in a job of its own that carries its token; the
    tokens."""
    tokens = []
    for run_id in ids:
        run = h.run(run_id)
        assert run.state == "PENDING" and run.attempt == attempt
        assert run.token is not None
        assert h.slurm.job(h.job_of(run_id)).comment == f"hpcops:{run.token}"
        tokens.append(run.token)
    assert len({h.job_of(i) for i in ids}) == len(ids)
    return tokens


def test_every_run_of_a_step_is_claimed_with_its_own_token_before_the_first_sbatch(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE)
    ids = _submit_all(h)
    seen: list[tuple[str, str | None]] = []
    h.slurm.before_next_sbatch(lambda: seen.extend((h.state(i), h.run(i).token) for i in ids))
    h.tick()
    assert [state for state, _ in seen] == ["SUBMITTING"] * len(ids)
    tokens = [token for _, token in seen]
    assert None not in tokens and len(set(tokens)) == len(ids), "one token per run"
    assert h.slurm.calls["sbatch"] == len(ids), "all in one tick"
    assert _pending_each_with_its_job(h, ids, attempt=1) == tokens


def test_a_crash_before_the_steps_sbatch_submits_each_run_once_after_the_grace(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE, fault="before_sbatch")
    ids = _submit_all(h)
    h.crash_tick()
    first = {i: h.run(i) for i in ids}
    assert {r.state for r in first.values()} == {"SUBMITTING"}
    assert not h.slurm.jobs and h.slurm.calls["sbatch"] == 0

    h.restart()
    h.run_for(25, every_s=5)
    assert {h.state(i) for i in ids} == {"SUBMITTING"}, "an orphaned sbatch may still land"
    h.run_for(10, every_s=5)
    assert h.slurm.calls["sbatch"] == len(ids), "each run submitted once"
    tokens = _pending_each_with_its_job(h, ids, attempt=2)
    assert not set(tokens) & {r.token for r in first.values()}, "a new attempt, a new token"


def test_a_crash_after_the_steps_sbatch_adopts_each_job_by_its_token(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE, fault="after_sbatch")
    ids = _submit_all(h)
    h.crash_tick()
    assert {h.state(i) for i in ids} == {"SUBMITTING"}
    assert all(h.run(i).slurm_job_id is None for i in ids)
    assert len(h.slurm.jobs) == len(ids)
    by_token = {job.comment: job.job_id for job in h.slurm.jobs.values()}

    h.restart()
    h.tick()  # start-up reconciliation: one squeue finds every job by its token
    for run_id in ids:
        run = h.run(run_id)
        assert run.state == "PENDING"
        assert run.slurm_job_id == by_token[f"hpcops:{run.token}"]
    assert h.slurm.calls["sbatch"] == len(ids), "nothing submitted twice"


def test_a_limit_refusal_in_a_step_sends_the_runs_not_tried_back_to_the_queue(
    make_engine: EngineFactory,
) -> None:
    # One sbatch at a time: which runs were tried is then known.
    h = make_engine({**WIDE, "slurm": {"sbatch_workers": 1}})
    a, b, c, d, e, f = _submit_all(h)
    h.slurm.refuse_sbatch("limit", name="c")
    h.tick()
    assert h.state(a) == "PENDING" and h.state(b) == "PENDING"
    run = h.run(c)
    assert run.state == "QUEUED" and run.token is None
    assert run.reason == f"Slurm limit: {LIMIT_STDERR.strip()}"
    assert h.slurm.calls["sbatch"] == 3, "releasing stops at the refusal"
    for untried in (d, e, f):
        run = h.run(untried)
        assert run.state == "QUEUED" and run.token is None
        assert run.attempt == 0, "a claim that never reached sbatch is not counted"
        assert h.notes(untried)[-1].startswith("not submitted this tick")

    h.tick()  # the others go; the refused run waits out its back-off
    assert [h.state(i) for i in (c, d, e, f)] == ["QUEUED", "PENDING", "PENDING", "PENDING"]
    assert h.run(d).attempt == 1
    assert h.slurm.calls["sbatch"] == 6


def test_a_hard_refusal_in_a_step_fails_only_that_run(make_engine: EngineFactory) -> None:
    h = make_engine(WIDE)
    ids = _submit_all(h)
    h.slurm.refuse_sbatch("partition", name="d")
    h.tick()
    states = {name: h.state(i) for name, i in zip(NAMES, ids, strict=True)}
    assert states == {n: "FAILED" if n == "d" else "PENDING" for n in NAMES}
    assert h.slurm.calls["sbatch"] == len(ids)


def test_slurmctld_lost_in_a_step_leaves_that_run_submitting_and_requeues_the_rest(
    make_engine: EngineFactory,
) -> None:
    h = make_engine({**WIDE, "slurm": {"sbatch_workers": 1}})
    a, b, c, d, e, f = _submit_all(h)
    # slurmctld goes away after the step's first sbatch, before its second.
    h.slurm.before_next_sbatch(
        lambda: h.slurm.before_next_sbatch(lambda: setattr(h.slurm, "ctld_down", True))
    )
    h.tick()
    assert h.state(a) == "PENDING"
    assert h.state(b) == "SUBMITTING", "the request may have reached slurmctld"
    assert [h.state(i) for i in (c, d, e, f)] == ["QUEUED"] * 4
    assert h.slurm.calls["sbatch"] == 2
    h.slurm.ctld_down = False
    h.run_for(90, every_s=5)
    assert {h.state(i) for i in (a, b, c, d, e, f)} == {"PENDING"}
    assert len(h.slurm.jobs) == 6, "nothing submitted twice"


def _many(h: EngineHarness, n: int) -> list[int]:
    return [h.submit(f"r{i}") for i in range(n)]  # one priority: released in submission order


def test_a_big_step_claims_a_chunk_at_a_time_each_before_its_sbatch(
    make_engine: EngineFactory,
) -> None:
    # The next chunk is rendered and claimed while the last one's sbatch calls run; each run is
    # still SUBMITTING with its own token before its own sbatch starts.
    n = 2 * CLAIM_CHUNK + 5
    h = make_engine({"max_active": n, "pending_window": n})
    ids = _many(h, n)
    at_first: list[str] = []
    h.slurm.before_next_sbatch(lambda: at_first.extend(h.state(i) for i in ids))
    h.tick()
    assert at_first == ["SUBMITTING"] * CLAIM_CHUNK + ["QUEUED"] * (n - CLAIM_CHUNK)
    assert h.slurm.calls["sbatch"] == n, "all in one tick"
    tokens = _pending_each_with_its_job(h, ids, attempt=1)
    assert len(set(tokens)) == n


def test_a_limit_at_a_big_steps_first_sbatch_claims_no_later_chunk(
    make_engine: EngineFactory,
) -> None:
    n = CLAIM_CHUNK + 3
    h = make_engine({"max_active": n, "pending_window": n})
    ids = _many(h, n)
    h.slurm.refuse_sbatch("limit", name="r0")
    h.tick()
    assert h.slurm.calls["sbatch"] == 1, "the first sbatch goes alone"
    for run_id in ids[1:]:
        run = h.run(run_id)
        assert (run.state, run.token, run.attempt) == ("QUEUED", None, 0)
    # The first chunk's other runs were claimed, then sent back; the later chunk never left.
    assert h.notes(ids[1])[-1].startswith("not submitted this tick")
    assert not any(note.startswith("not submitted") for note in h.notes(ids[-1]))
    h.tick()  # r0 waits out its back-off; every other run goes
    assert [h.state(i) for i in ids].count("PENDING") == n - 1

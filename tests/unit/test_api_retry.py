"""Retries in the API: `retry` on a run and on a sweep (who may, which states, the audit), and a
run's attempts in `show` and `ls`. A real store, its attempts written as the engine writes them
(Store.transition with `ended`); the engine is faked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from api_fakes import FakeEngine, error, make_api, ok

from hpcops.access import Caller
from hpcops.api.attempts import attempts_view
from hpcops.api.server import Api
from hpcops.errors import InvalidInput
from hpcops.states import RunState
from hpcops.store import Attempt, AttemptEnd, Run, Store, Sweep

ANA = Caller(uid=5001, name="ana")  # a member
BOB = Caller(uid=5003, name="bob")  # another member
LEO = Caller(uid=5004, name="leo")  # a lead
NOW = 1_800_000_000.0

RETRY_SPEC = "name: long\nretry:\n  max_attempts: 4\n  on: [TIMEOUT]\n"


# An ended attempt's figures, as the engine records them (the state and job id come per attempt).
FIGURES: AttemptEnd = {
    "submitted_at": NOW,
    "started_at": NOW + 10,
    "ended_at": NOW + 130,
    "elapsed_s": 120,
    "exit_code": 0,
    "total_cpu_s": 100.0,
    "alloc_cpus": 1,
    "alloc_gpus": 0,
    "max_rss_bytes": 1024,
}


def _attempts_ended(store: Store, run_id: int, *ended: tuple[str, AttemptEnd]) -> None:
    """The run's attempts, each with its Slurm job, ended and followed by the next one (the
    run is QUEUED for it after the last), as Store.transition records them for the engine."""
    for job_id, how in ended:
        for state in _ENDED:
            store.transition(run_id, state, actor="svc", slurm_job_id=job_id)
        store.transition(
            run_id, RunState.QUEUED, actor="svc", ended={**FIGURES, **how}, slurm_job_id=None
        )


class RetryEngine(FakeEngine):
    """Retries an ended run on the store, as the engine does, and records who asked."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.retried: list[tuple[int, str]] = []

    def retry(self, run_id: int, caller: Caller) -> Run:
        run = self.store.get(run_id)
        if not RunState(run.state).is_terminal or run.state == RunState.COMPLETED:
            raise InvalidInput(f"engine: run {run_id} is {run.state}")
        self.retried.append((run_id, caller.name))
        # As the engine: a job without its attempt row (ended before rows were kept) gets it.
        unrecorded = run.slurm_job_id is not None and run.attempts_ended == 0
        again = self.store.transition(
            run_id,
            RunState.QUEUED,
            actor=caller.name,
            ended={"state": RunState(run.state)} if unrecorded else None,
            slurm_job_id=None,
        )
        assert again is not None
        return again


def _run(owner: Caller, *, name: str = "long", spec: str = RETRY_SPEC, **fields: Any) -> Run:
    """A run of `spec`, its max_attempts as the engine's intake sets it (RETRY_SPEC: 4)."""
    fields.setdefault("max_attempts", 4 if spec == RETRY_SPEC else 1)
    return Run(
        name=name,
        experiment="e",
        owner=owner.name,
        owner_uid=owner.uid,
        state=RunState.QUEUED.value,
        spec_yaml=spec,
        spec_hash=hashlib.sha256(spec.encode()).hexdigest()[:16],
        created_at=NOW,
        updated_at=NOW,
        **fields,
    )


def _add(store: Store, owner: Caller, *states: RunState, **fields: Any) -> Run:
    [run] = store.add_runs([_run(owner)], actor=owner.name)
    assert run.id is not None
    for state in states:
        moved = store.transition(run.id, state, actor="svc", **fields)
        assert moved is not None
        run = moved
    return run


_ENDED = (RunState.SUBMITTING, RunState.PENDING, RunState.RUNNING)


@pytest.fixture
def api(tmp_path: Path) -> tuple[Api, RetryEngine, Store]:
    store = Store(tmp_path / "hpcops.db")
    engine = RetryEngine(store)
    return make_api(tmp_path, engine, store), engine, store


# --- retry a run -----------------------------------------------------------------------------


def test_a_member_retries_their_own_ended_run_and_it_is_audited(
    api: tuple[Api, RetryEngine, Store],
) -> None:
    server, engine, store = api
    run = _add(store, ANA)
    assert run.id is not None
    for state in _ENDED:
        store.transition(run.id, state, actor="svc", slurm_job_id="4242")
    ended: AttemptEnd = {"state": RunState.TIMEOUT, "reason": "cut at the time limit"}
    store.transition(run.id, RunState.TIMEOUT, actor="svc", ended={**FIGURES, **ended})
    answer = ok(server, ANA, "retry", run=run.id)
    assert answer == {
        "id": run.id,
        "name": "long",
        "state": "QUEUED",
        "attempt_number": 2,
        "max_attempts": 4,
        "previous_state": "TIMEOUT",
        "message": f"run {run.id}: attempt 2 of 4 queued (after TIMEOUT; same run directory "
        "and checkpoint directory)",
    }
    assert engine.retried == [(run.id, "ana")]
    [entry] = store.audit_log()
    assert (entry.actor, entry.action, entry.target, entry.allowed) == (
        "ana",
        "retry",
        f"run {run.id}",
        True,
    )
    assert (entry.before, entry.after, entry.detail) == ("TIMEOUT", "QUEUED", "attempt 2")


def test_a_member_may_not_retry_anothers_run_and_a_lead_may(
    api: tuple[Api, RetryEngine, Store],
) -> None:
    server, engine, store = api
    # Ended before attempts were recorded: its job, no attempt row; the retry is attempt 2.
    run = _add(store, ANA, *_ENDED, RunState.FAILED, slurm_job_id="4242")
    refused = error(server, BOB, "retry", run=run.id)
    assert refused == {
        "kind": "permission_denied",
        "message": "bob may retry only their own runs; this run belongs to ana. "
        "It needs the lead role.",
    }
    assert [(a.actor, a.action, a.allowed) for a in store.audit_log()] == [("bob", "retry", False)]
    outsider = error(server, Caller(uid=9, name="eve"), "retry", run=run.id)
    assert "not a member of this lab" in outsider["message"]
    assert engine.retried == []
    assert ok(server, LEO, "retry", run=run.id)["attempt_number"] == 2
    assert engine.retried == [(run.id, "leo")]


def test_retry_of_a_run_that_never_got_a_job_is_its_attempt_1(
    api: tuple[Api, RetryEngine, Store],
) -> None:
    server, _, store = api
    run = _add(store, ANA, RunState.SUBMITTING, RunState.FAILED)  # sbatch refused it
    answer = ok(server, ANA, "retry", run=run.id)
    # The number its job gets as HPCOPS_ATTEMPT (retries.attempt_number), not one more.
    assert answer["attempt_number"] == 1
    assert answer["message"].startswith(f"run {run.id}: attempt 1 of 4 queued")
    [entry] = store.audit_log()
    assert entry.detail == "attempt 1"


@pytest.mark.parametrize(
    ("states", "message"),
    [
        ((), "run {id} is QUEUED; only an ended run can be retried"),
        (_ENDED, "run {id} is RUNNING; only an ended run can be retried"),
        (
            (*_ENDED, RunState.COMPLETED),
            "run {id} completed; `hpcops rerun {id}` runs it again as a new run",
        ),
    ],
)
def test_only_an_ended_run_that_did_not_complete_is_retried(
    api: tuple[Api, RetryEngine, Store], states: tuple[RunState, ...], message: str
) -> None:
    server, engine, store = api
    run = _add(store, ANA, *states)
    refusal = error(server, ANA, "retry", run=run.id)
    assert refusal == {"kind": "invalid_input", "message": message.format(id=run.id)}
    assert engine.retried == [] and store.audit_log() == []


def test_a_missing_run_and_a_bad_id_are_named(api: tuple[Api, RetryEngine, Store]) -> None:
    server, _, _ = api
    assert error(server, ANA, "retry", run=99)["kind"] == "not_found"
    assert error(server, ANA, "retry", run="s99")["kind"] == "not_found"
    assert error(server, ANA, "retry", run="x")["kind"] == "invalid_input"
    assert error(server, ANA, "retry")["kind"] == "invalid_input"


# --- retry a sweep ---------------------------------------------------------------------------


def _sweep(store: Store, owner: Caller, n: int) -> tuple[Sweep, list[Run]]:
    sweep = Sweep(
        name="lr",
        experiment="e",
        owner=owner.name,
        owner_uid=owner.uid,
        spec_yaml="name: lr\n",
        kind="list",
        n_points=n,
        points_json=json.dumps([{"lr": i} for i in range(n)]),
        created_at=NOW,
        updated_at=NOW,
    )
    runs = [_run(owner, name=f"lr[{i}]", sweep_index=i) for i in range(n)]
    return store.add_sweep(sweep, runs, actor=owner.name)


def test_retry_of_a_sweep_queues_each_point_that_ended_without_completing(
    api: tuple[Api, RetryEngine, Store],
) -> None:
    server, engine, store = api
    sweep, runs = _sweep(store, ANA, 4)
    ids = [r.id or 0 for r in runs]
    for run_id, end in zip(
        ids, (RunState.COMPLETED, RunState.FAILED, RunState.TIMEOUT), strict=False
    ):
        for state in (*_ENDED, end):
            store.transition(run_id, state, actor="svc")
    # point 1 was rerun by hand meanwhile: its latest run is the one that counts
    [again] = store.add_runs(
        [_run(ANA, name="lr[1]", sweep_index=1, sweep_id=sweep.id)], actor="ana"
    )
    for state in (*_ENDED, RunState.COMPLETED):
        store.transition(again.id or 0, state, actor="svc")
    ref = f"s{sweep.id}"
    refused = error(server, BOB, "retry", run=ref)
    assert refused["kind"] == "permission_denied"
    assert "retry only their own sweeps; this sweep belongs to ana" in refused["message"]
    answer = ok(server, ANA, "retry", run=ref)
    assert answer == {
        "id": ref,
        "sweep_id": sweep.id,
        "affected": [ids[2]],
        "skipped": [],
        "message": f"sweep {ref}: 1 point queued again (3 completed or not ended)",
    }
    assert engine.retried == [(ids[2], "ana")]
    audit = [(a.action, a.target, a.detail, a.allowed) for a in store.audit_log()]
    assert ("retry", f"run {ids[2]}", f"sweep {ref}", True) in audit


# --- attempts in show and ls -----------------------------------------------------------------


def test_show_lists_ended_attempts_and_the_one_the_run_is_on(
    api: tuple[Api, RetryEngine, Store],
) -> None:
    server, _, store = api
    run = _add(store, ANA)
    assert run.id is not None
    _attempts_ended(
        store,
        run.id,
        ("501", {"state": RunState.TIMEOUT, "reason": "cut at the time limit", "restarts": 1}),
        ("502", {"state": RunState.PREEMPTED, "reason": "preempted"}),
    )
    for state in _ENDED:
        store.transition(run.id, state, actor="svc", slurm_job_id="503", started_at=NOW + 500)
    shown = ok(server, ANA, "show", run=run.id)
    assert (shown["attempt_number"], shown["max_attempts"]) == (3, 4)
    assert [
        (a["number"], a["slurm_job_id"], a["state"], a["current"]) for a in shown["attempts"]
    ] == [
        (1, "501", "TIMEOUT", False),
        (2, "502", "PREEMPTED", False),
        (3, "503", "RUNNING", True),
    ]
    first, current = shown["attempts"][0], shown["attempts"][2]
    assert first["restarts"] == 1 and first["reason"] == "cut at the time limit"
    assert first["elapsed_s"] == 120 and first["ended_at"] == "2027-01-15T08:02:10Z"
    assert current["started_at"] == "2027-01-15T08:08:20Z" and current["ended_at"] is None
    assert set(first) == set(current)
    listed = {r["id"]: r for r in ok(server, BOB, "list")}
    assert (listed[run.id]["attempt_number"], listed[run.id]["max_attempts"]) == (3, 4)


def test_an_ended_run_shows_its_last_attempt_once_and_an_old_one_from_the_run(
    api: tuple[Api, RetryEngine, Store],
) -> None:
    server, _, store = api
    ended = _add(store, ANA)
    assert ended.id is not None
    _attempts_ended(store, ended.id, ("600", {"state": RunState.NODE_FAIL}))
    for state in _ENDED:
        store.transition(ended.id, state, actor="svc", slurm_job_id="601")
    last: AttemptEnd = {"state": RunState.FAILED, "exit_code": 3}
    store.transition(ended.id, RunState.FAILED, actor="svc", exit_code=3, ended=last)
    shown = ok(server, ANA, "show", run=ended.id)
    assert [a["number"] for a in shown["attempts"]] == [1, 2]
    assert shown["attempt_number"] == 2
    old = _add(store, BOB, *_ENDED, RunState.FAILED, slurm_job_id="77", exit_code=1)
    [only] = ok(server, ANA, "show", run=old.id)["attempts"]
    assert (only["number"], only["slurm_job_id"], only["state"], only["exit_code"]) == (
        1,
        "77",
        "FAILED",
        1,
    )
    assert only["current"] is False


def test_a_run_queued_again_shows_its_new_attempt_without_the_old_jobs_figures() -> None:
    run = _run(ANA, slurm_job_id="700", started_at=NOW, elapsed_s=60)
    run.id = 5
    rows = [Attempt(run_id=5, number=1, slurm_job_id="700", state=RunState.TIMEOUT)]
    views = attempts_view(run, rows)
    assert [(v["number"], v["state"], v["current"]) for v in views] == [
        (1, "TIMEOUT", False),
        (2, "QUEUED", True),
    ]
    assert views[1]["slurm_job_id"] is None and views[1]["started_at"] is None
    assert views[1]["elapsed_s"] is None


def test_show_of_a_sweep_says_which_attempt_each_point_is_on(
    api: tuple[Api, RetryEngine, Store],
) -> None:
    server, _, store = api
    sweep, runs = _sweep(store, ANA, 2)
    point = runs[1].id or 0
    _attempts_ended(store, point, ("801", {"state": RunState.PREEMPTED}))
    for state in _ENDED:
        store.transition(point, state, actor="svc", slurm_job_id="802")
    shown = ok(server, ANA, "show", run=f"s{sweep.id}")
    assert [(p["index"], p["attempt_number"], p["max_attempts"]) for p in shown["points"]] == [
        (0, 1, 4),
        (1, 2, 4),
    ]

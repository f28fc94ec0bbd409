"""The store on a real SQLite file: atomic transitions checked against TRANSITIONS, the
append-only event log, typed updates, and databases made by older releases."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hpcops.errors import IllegalTransition, NotFound, StoreError
from hpcops.states import TRANSITIONS, RunState
from hpcops.store import Run, Store, Sweep


def _run(name: str = "r", priority: int = 0) -> Run:
    return Run(
        name=name,
        experiment="e",
        owner="alice",
        owner_uid=1000,
        priority=priority,
        state=RunState.QUEUED.value,
        spec_yaml="name: r\n",
        spec_hash="h",
        created_at=0.0,
        updated_at=0.0,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "hpcops.db")


def test_add_and_get_writes_a_submitted_event(store: Store) -> None:
    run = store.add_run(_run(), actor="alice")
    assert run.id is not None
    assert store.get(run.id).name == "r"
    events = store.events(run.id)
    assert [(e.actor, e.from_state, e.to_state) for e in events] == [("alice", None, "QUEUED")]


def test_unknown_run_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="no run 99"):
        store.get(99)


def test_transition_with_expect_is_a_compare_and_set(store: Store) -> None:
    run = store.add_run(_run(), actor="alice")
    assert run.id is not None
    moved = store.transition(
        run.id,
        RunState.SUBMITTING,
        actor="daemon",
        note="claim",
        expect=(RunState.QUEUED,),
        token="abc",
    )
    assert moved is not None and moved.token == "abc"
    again = store.transition(run.id, RunState.SUBMITTING, actor="daemon", expect=(RunState.QUEUED,))
    assert again is None, "a second claim of the same run must fail"
    assert [e.to_state for e in store.events(run.id)] == ["QUEUED", "SUBMITTING"]


def test_field_update_without_note_writes_no_event(store: Store) -> None:
    run = store.add_run(_run(), actor="alice")
    assert run.id is not None
    store.transition(run.id, None, actor="daemon", reason="Priority")
    assert store.get(run.id).reason == "Priority"
    assert len(store.events(run.id)) == 1


def test_concurrent_claims_give_each_run_to_exactly_one_claimer(store: Store) -> None:
    ids = [r.id for r in store.add_runs([_run(f"r{i}") for i in range(50)], actor="alice")]
    won: list[int] = []
    lock = threading.Lock()

    def claimer() -> None:
        for run_id in ids:
            assert run_id is not None
            if (
                store.transition(
                    run_id, RunState.SUBMITTING, actor="daemon", expect=(RunState.QUEUED,)
                )
                is not None
            ):
                with lock:
                    won.append(run_id)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == sorted(i for i in ids if i is not None)


def test_counts_and_in_slurm(store: Store) -> None:
    runs = store.add_runs([_run("a"), _run("b")], actor="alice")
    assert runs[0].id is not None
    store.transition(runs[0].id, RunState.SUBMITTING, actor="daemon")
    store.transition(runs[0].id, RunState.PENDING, actor="daemon")
    assert store.count_in_slurm() == 1
    assert [r.name for r in store.in_slurm()] == ["a"]
    assert store.counts_by_state() == {"PENDING": 1, "QUEUED": 1}


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "hpcops.db"
    first = Store(path)
    run = first.add_run(_run(), actor="alice")
    first.close()
    assert run.id is not None
    assert Store(path).get(run.id).owner == "alice"


def test_an_older_database_gains_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the run table as the first release made it
        db.execute(
            "CREATE TABLE run (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
            "experiment VARCHAR NOT NULL, owner VARCHAR NOT NULL, owner_uid INTEGER NOT NULL, "
            "priority INTEGER NOT NULL, state VARCHAR NOT NULL, spec_yaml VARCHAR NOT NULL, "
            "spec_hash VARCHAR NOT NULL, created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL)"
        )
        db.execute(
            "INSERT INTO run (name, experiment, owner, owner_uid, priority, state, spec_yaml, "
            "spec_hash, created_at, updated_at) VALUES ('old', 'e', 'bob', 1, 0, 'COMPLETED', "
            "'', '', 0, 0)"
        )
    store = Store(path)
    run = store.get(1)
    assert run.name == "old" and run.held_by is None and run.token is None
    assert (run.gpus, run.cpus, run.attempt) == (0, 1, 0), "new columns get their defaults"
    assert (run.attempts_ended, run.restarts, run.queued_at) == (0, 0, None)
    assert store.attempts(1) == [], "and the attempt table is made"
    assert store.add_run(_run("new"), actor="alice").id == 2
    assert store.get(1).state is RunState.COMPLETED, "an old text state reads as a RunState"


def test_state_reads_back_as_a_run_state_stored_as_its_name(store: Store) -> None:
    run = store.add_run(_run(), actor="alice")
    assert run.id is not None and run.state is RunState.QUEUED
    store.transition(run.id, RunState.SUBMITTING, actor="daemon")
    got = store.get(run.id)
    assert got.state is RunState.SUBMITTING and got.state == "SUBMITTING"
    with store.engine.connect() as conn:
        [(text, kind)] = conn.exec_driver_sql("SELECT state, typeof(state) FROM run").all()
    assert (text, kind) == ("SUBMITTING", "text")
    assert [r.id for r in store.list_runs([RunState.SUBMITTING])] == [run.id]


def _walk_to(store: Store, state: RunState) -> int:
    """A new run brought to `state` along legal changes."""
    path = {
        RunState.QUEUED: [],
        RunState.HELD: [RunState.HELD],
        RunState.SUBMITTING: [RunState.SUBMITTING],
        RunState.STAGING: [RunState.SUBMITTING, RunState.STAGING],
        RunState.PENDING: [RunState.SUBMITTING, RunState.PENDING],
        RunState.RUNNING: [RunState.SUBMITTING, RunState.RUNNING],
    }.get(state, [RunState.SUBMITTING, RunState.RUNNING, state])
    run = store.add_run(_run(), actor="alice")
    assert run.id is not None
    for step in path:
        store.transition(run.id, step, actor="daemon")
    assert store.get(run.id).state is state
    return run.id


def test_every_legal_change_is_accepted_and_recorded(store: Store) -> None:
    for from_state, targets in TRANSITIONS.items():
        for to_state in targets:
            run_id = _walk_to(store, from_state)
            moved = store.transition(run_id, to_state, actor="daemon", expect=(from_state,))
            assert moved is not None and moved.state is to_state, (from_state, to_state)
            assert store.events(run_id)[-1].from_state == from_state


@pytest.mark.parametrize(
    ("from_state", "to_state"),
    [
        (RunState.QUEUED, RunState.RUNNING),
        (RunState.QUEUED, RunState.PENDING),
        (RunState.QUEUED, RunState.COMPLETED),
        (RunState.HELD, RunState.SUBMITTING),
        (RunState.SUBMITTING, RunState.HELD),
        (RunState.SUBMITTING, RunState.COMPLETED),
        (RunState.PENDING, RunState.HELD),
        (RunState.RUNNING, RunState.STAGING),
        (RunState.COMPLETED, RunState.QUEUED),
        (RunState.CANCELLED, RunState.RUNNING),
        (RunState.UNKNOWN, RunState.COMPLETED),
    ],
)
def test_an_illegal_change_is_refused_and_writes_nothing(
    store: Store, from_state: RunState, to_state: RunState
) -> None:
    run_id = _walk_to(store, from_state)
    events = len(store.events(run_id))
    with pytest.raises(IllegalTransition, match=f"{from_state} -> {to_state}"):
        store.transition(run_id, to_state, actor="daemon", note="x", reason="should not stick")
    after = store.get(run_id)
    assert after.state is from_state and after.reason is None
    assert len(store.events(run_id)) == events


def test_staying_in_a_state_is_not_a_change(store: Store) -> None:
    run_id = _walk_to(store, RunState.PENDING)
    moved = store.transition(run_id, RunState.PENDING, actor="daemon", note="requeued")
    assert moved is not None and moved.state is RunState.PENDING


def test_a_run_is_created_queued_only(store: Store) -> None:
    running = _run()
    running.state = RunState.RUNNING
    with pytest.raises(IllegalTransition, match="cannot start RUNNING"):
        store.add_run(running, actor="alice")
    assert store.list_runs() == []


def test_an_unknown_field_is_refused_at_run_time(store: Store) -> None:
    run = store.add_run(_run(), actor="alice")
    assert run.id is not None
    fields: dict[str, object] = {"reasn": "typo"}
    with pytest.raises(StoreError, match="no field 'reasn'"):
        store.transition(run.id, None, actor="daemon", **fields)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="no field 'state'"):
        store.set_tracking_fields(run.id, **{"state": "RUNNING"})  # type: ignore[typeddict-item]


def test_none_clears_a_field_and_a_left_out_one_stays(store: Store) -> None:
    run = store.add_run(_run(), actor="alice")
    assert run.id is not None
    store.transition(run.id, RunState.HELD, actor="bob", held_by="bob", reason="r")
    store.transition(run.id, RunState.QUEUED, actor="bob", held_by=None)
    got = store.get(run.id)
    assert got.held_by is None and got.reason == "r"


def test_data_versions_are_plain_rows(store: Store) -> None:
    with_data = _run("d")
    with_data.data_json, with_data.created_at = "[]", 5.0
    store.add_runs([with_data, _run("none")], actor="alice")
    assert store.data_versions() == [(1, RunState.QUEUED, "[]", 5.0)]


def test_typed_updates_name_only_real_columns() -> None:
    from hpcops.store import RunUpdate, Schedule, ScheduleUpdate, TrackingFields

    columns = set(Run.model_fields)
    assert set(RunUpdate.__optional_keys__) <= columns - {"id", "state", "updated_at"}
    assert set(TrackingFields.__optional_keys__) <= set(RunUpdate.__optional_keys__)
    assert set(ScheduleUpdate.__optional_keys__) <= set(Schedule.model_fields) - {"id"}


def _sweep(n: int) -> Sweep:
    return Sweep(
        name="lr",
        experiment="e",
        owner="alice",
        owner_uid=1000,
        spec_yaml="name: lr\n",
        kind="grid",
        n_points=n,
        points_json="[]",
        created_at=0.0,
        updated_at=0.0,
    )


def test_a_sweep_and_its_points_are_queued_together(store: Store) -> None:
    points = [_run(f"lr[{i}]") for i in range(3)]
    for i, run in enumerate(points):
        run.sweep_index = i
    sweep, runs = store.add_sweep(_sweep(3), points, actor="alice")
    assert sweep.id is not None
    assert [r.sweep_id for r in runs] == [sweep.id] * 3
    assert [r.name for r in store.sweep_runs(sweep.id)] == ["lr[0]", "lr[1]", "lr[2]"]
    assert store.get_sweep(sweep.id).n_points == 3
    assert [s.id for s in store.list_sweeps()] == [sweep.id]
    assert {r[7] for r in store.queued_summaries()} == {sweep.id}


def test_a_sweep_whose_point_cannot_be_queued_leaves_nothing(store: Store) -> None:
    bad = _run("lr[1]")
    bad.state = RunState.RUNNING
    with pytest.raises(IllegalTransition):
        store.add_sweep(_sweep(2), [_run("lr[0]"), bad], actor="alice")
    assert store.list_sweeps() == [] and store.list_runs() == []


def test_sweep_counts_count_each_point_once_as_its_latest_run(store: Store) -> None:
    points = [_run(f"lr[{i}]") for i in range(2)]
    for i, run in enumerate(points):
        run.sweep_index = i
    sweep, runs = store.add_sweep(_sweep(2), points, actor="alice")
    assert sweep.id is not None and runs[0].id is not None
    store.transition(runs[0].id, RunState.CANCELLED, actor="alice")
    assert store.sweep_counts([sweep.id]) == {sweep.id: {"CANCELLED": 1, "QUEUED": 1}}
    again = _run("lr[0]")
    again.sweep_id, again.sweep_index = sweep.id, 0
    store.add_runs([again], actor="alice")
    assert store.sweep_counts([sweep.id]) == {sweep.id: {"QUEUED": 2}}


def test_transition_many_claims_in_one_transaction(store: Store) -> None:
    runs = store.add_runs([_run("a"), _run("b"), _run("c")], actor="alice")
    ids = [r.id for r in runs if r.id is not None]
    store.transition(ids[1], RunState.CANCELLED, actor="alice")
    claimed = store.transition_many(
        [(i, "claim", {"token": "t", "array_task": n}) for n, i in enumerate(ids)],
        RunState.SUBMITTING,
        actor="daemon",
        expect=(RunState.QUEUED,),
    )
    assert [(r.id, r.array_task) for r in claimed] == [(ids[0], 0), (ids[2], 2)]
    assert store.get(ids[1]).state == RunState.CANCELLED


def test_update_sweep_takes_only_its_changing_fields(store: Store) -> None:
    sweep, _ = store.add_sweep(_sweep(1), [_run()], actor="alice")
    assert sweep.id is not None
    assert store.update_sweep(sweep.id, best_value=0.9, best_run_id=1).best_value == 0.9
    with pytest.raises(StoreError):
        store.update_sweep(sweep.id, **{"name": "x"})  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.get_sweep(99)


# --- attempts (retries) ---------------------------------------------------------------------


def _running_job(store: Store, job_id: str) -> int:
    run_id = _walk_to(store, RunState.RUNNING)
    store.transition(run_id, None, actor="daemon", slurm_job_id=job_id, restarts=1)
    return run_id


def test_an_ended_attempt_is_written_with_the_run_s_change(store: Store) -> None:
    run_id = _running_job(store, "41")
    store.transition(
        run_id,
        RunState.QUEUED,
        actor="daemon",
        note="attempt 1 of 3 ended TIMEOUT; attempt 2 queued",
        ended={"state": RunState.TIMEOUT, "started_at": 10.0, "ended_at": 70.0, "reason": "t"},
        slurm_job_id=None,
        restarts=0,
        queued_at=80.0,
    )
    [first] = store.attempts(run_id)
    assert (first.number, first.slurm_job_id, first.state, first.restarts) == (
        1,
        "41",
        RunState.TIMEOUT,
        1,
    )
    assert (first.started_at, first.ended_at, first.reason) == (10.0, 70.0, "t")
    run = store.get(run_id)
    assert run.attempts_ended == 1 and run.slurm_job_id is None and run.state is RunState.QUEUED

    for step in (RunState.SUBMITTING, RunState.RUNNING):
        store.transition(run_id, step, actor="daemon")
    store.transition(run_id, None, actor="daemon", slurm_job_id="57")
    store.transition(
        run_id, RunState.COMPLETED, actor="daemon", ended={"state": RunState.COMPLETED}
    )
    assert [(a.number, a.slurm_job_id, a.state) for a in store.attempts(run_id)] == [
        (1, "41", RunState.TIMEOUT),
        (2, "57", RunState.COMPLETED),
    ]


def test_an_attempt_end_refused_by_transitions_writes_no_attempt(store: Store) -> None:
    run_id = _running_job(store, "41")
    store.transition(
        run_id, RunState.COMPLETED, actor="daemon", ended={"state": RunState.COMPLETED}
    )
    with pytest.raises(IllegalTransition):
        store.transition(
            run_id, RunState.QUEUED, actor="daemon", ended={"state": RunState.COMPLETED}
        )
    assert len(store.attempts(run_id)) == 1 and store.get(run_id).attempts_ended == 1


def test_an_attempt_end_that_lost_the_race_writes_nothing(store: Store) -> None:
    run_id = _running_job(store, "41")
    gone = store.transition(
        run_id,
        RunState.QUEUED,
        actor="daemon",
        expect=(RunState.PENDING,),
        ended={"state": RunState.TIMEOUT},
    )
    assert gone is None and store.attempts(run_id) == []


def test_a_run_without_a_job_has_no_attempt_to_record(store: Store) -> None:
    run = store.add_run(_run(), actor="alice")
    assert run.id is not None
    store.transition(run.id, RunState.CANCELLED, actor="alice", ended={"state": RunState.CANCELLED})
    assert store.attempts(run.id) == []


def test_fair_share_owners_know_every_attempt_s_job(store: Store) -> None:
    run_id = _running_job(store, "41")
    store.transition(
        run_id, RunState.QUEUED, actor="daemon", ended={"state": RunState.PREEMPTED},
        slurm_job_id=None,
    )  # fmt: skip
    for step in (RunState.SUBMITTING, RunState.PENDING):
        store.transition(run_id, step, actor="daemon")
    store.transition(run_id, None, actor="daemon", slurm_job_id="57")
    assert store.owners_by_job(["41", "57", "99"]) == {"41": "alice", "57": "alice"}


def test_release_order_is_when_a_run_was_last_queued_with_its_back_off(store: Store) -> None:
    a, b = (r.id for r in store.add_runs([_run("a"), _run("b")], actor="alice"))
    assert a is not None and b is not None
    store.transition(a, None, actor="daemon", queued_at=500.0, retry_not_before=560.0)
    rows = {r[0]: r for r in store.queued_summaries()}
    assert (rows[a][3], rows[a][8]) == (500.0, 560.0)
    assert (rows[b][3], rows[b][8]) == (store.get(b).created_at, None)


def test_the_outbox_says_which_attempt_an_operation_is_about(tmp_path: Path) -> None:
    store = Store(tmp_path / "track.db", track=True)
    run_id = _walk_to(store, RunState.RUNNING)
    store.transition(run_id, None, actor="daemon", slurm_job_id="41")
    store.transition(
        run_id, RunState.QUEUED, actor="daemon", ended={"state": RunState.TIMEOUT},
        slurm_job_id=None,
    )  # fmt: skip
    store.transition(run_id, RunState.SUBMITTING, actor="daemon")
    store.transition(run_id, RunState.PENDING, actor="daemon", slurm_job_id="57")
    store.transition(run_id, RunState.FAILED, actor="daemon", ended={"state": RunState.FAILED})
    store.transition(run_id, RunState.QUEUED, actor="alice", note="retried by alice")
    ops = [(op.kind, op.attempt) for op in store.tracking_ops(run_id)]
    assert ops == [
        ("create", None),
        ("submitted", 1),  # _walk_to: SUBMITTING -> RUNNING
        ("attempt", 1),
        ("submitted", 2),
        ("close", 2),
        ("reopen", 3),
    ]

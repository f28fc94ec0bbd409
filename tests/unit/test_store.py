"""The store on a real SQLite file: atomic transitions and the append-only event log."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hpcops.errors import NotFound
from hpcops.states import RunState
from hpcops.store import Run, Store


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
    assert store.add_run(_run("new"), actor="alice").id == 2

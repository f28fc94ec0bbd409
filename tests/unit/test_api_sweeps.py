"""Sweeps in the API: the summary state and progress derived from the points (pure), the views,
and the handlers on a real store with a fake engine (the engine's per-run methods, done on the
store as the engine would, and `rerun_sweep`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from api_fakes import StoreEngine, error, make_api, ok, queued_run

from hpcops.access import Caller
from hpcops.api.params import PriorityParams, RerunParams, SweepId, TargetParams
from hpcops.api.server import Api
from hpcops.api.sweeps import (
    BUCKETS,
    Scored,
    best,
    progress,
    progress_text,
    ranked,
    summary_state,
)
from hpcops.api.views import sweep_view
from hpcops.code.mirror import Shipment
from hpcops.describe import id_ranges
from hpcops.errors import InvalidInput
from hpcops.spec import Spec
from hpcops.states import RunState
from hpcops.store import Run, Store, Sweep

ANA = Caller(uid=5001, name="ana")  # a member, who owns the sweep
BOB = Caller(uid=5003, name="bob")  # another member
LEO = Caller(uid=5004, name="leo")  # a lead

# --- the summary: a pure function of the counts ---------------------------------------------


@pytest.mark.parametrize(
    ("counts", "state"),
    [
        ({"QUEUED": 9}, RunState.QUEUED),
        ({"QUEUED": 2, "RUNNING": 3, "COMPLETED": 3, "FAILED": 1}, RunState.RUNNING),
        ({"QUEUED": 6, "PENDING": 1, "COMPLETED": 2}, RunState.PENDING),
        ({"STAGING": 1, "HELD": 3}, RunState.PENDING),
        ({"QUEUED": 1, "HELD": 8}, RunState.QUEUED),
        ({"HELD": 8, "COMPLETED": 1}, RunState.HELD),
        ({"COMPLETED": 9}, RunState.COMPLETED),
        ({"COMPLETED": 8, "FAILED": 1}, RunState.FAILED),
        ({"COMPLETED": 8, "TIMEOUT": 1}, RunState.FAILED),
        ({"CANCELLED": 5, "OUT_OF_MEMORY": 1}, RunState.FAILED),
        ({"COMPLETED": 4, "CANCELLED": 5}, RunState.CANCELLED),
        ({"CANCELLED": 9}, RunState.CANCELLED),
        ({"COMPLETED": 3, "SOMETHING_NEW": 1}, RunState.FAILED),
        ({"RUNNING": 0, "COMPLETED": 2}, RunState.COMPLETED),
        ({}, RunState.UNKNOWN),
    ],
)
def test_the_summary_state_is_derived_from_the_counts(
    counts: dict[str, int], state: RunState
) -> None:
    assert summary_state(counts) is state


def test_every_run_state_falls_in_a_bucket_and_the_text_leaves_out_empty_ones() -> None:
    buckets = progress({s.value: 1 for s in RunState})
    assert list(buckets) == list(BUCKETS)
    assert sum(buckets.values()) == len(RunState)
    counts = {"QUEUED": 2, "RUNNING": 3, "COMPLETED": 3, "FAILED": 1}
    assert progress_text(9, progress(counts)) == "9 pts: 2 queued 3 running 3 done 1 failed"
    assert progress_text(4, progress({})) == "4 pts"


def test_points_rank_by_the_objective_best_first_and_unknown_last() -> None:
    points = [Scored(10, 0, 0.5), Scored(11, 1, None), Scored(12, 2, 0.9), Scored(13, 3, 0.5)]
    assert [p.index for p in ranked(points, "max")] == [2, 0, 3, 1]
    assert [p.index for p in ranked(points, "min")] == [0, 3, 2, 1]
    assert [p.index for p in ranked(points, None)] == [0, 1, 2, 3]
    assert best(points, "max") == Scored(12, 2, 0.9)
    nan = [Scored(1, 0, float("nan")), Scored(2, 1, 0.1)]
    assert [p.index for p in ranked(nan, "max")] == [1, 0], "NaN is no value"
    assert best([Scored(1, 0, None)], "max") is None
    assert best(points, None) is None


def test_id_ranges() -> None:
    assert id_ranges([12, 13, 14, 20, 22, 21]) == "12-14,20-22"
    assert id_ranges([5]) == "5"
    assert id_ranges([]) == ""


# --- params: s<N> --------------------------------------------------------------------------


def test_a_sweep_id_is_s_and_a_number_and_anything_else_is_named() -> None:
    assert TargetParams.parse({"run": "s7"}).run == SweepId(7)
    assert TargetParams.parse({"run": "S7"}).run == SweepId(7)
    assert TargetParams.parse({"run": 7}).run == 7
    assert PriorityParams.parse({"run": "s3", "priority": 1}).run == SweepId(3)
    assert RerunParams.parse({"run": "s3"}).run == SweepId(3)
    assert RerunParams.parse({"run": "a" * 32}).run == "a" * 32
    for bad in ("s0", "s", "s-1", "7", "sweep7", "s7x", f"s{2**63}", True, 1.5, None):
        with pytest.raises(InvalidInput) as caught:
            TargetParams.parse({"run": bad})
        assert "a sweep id (s and a positive integer, e.g. s7)" in caught.value.message or (
            "a run id" in caught.value.message
        ), bad
    with pytest.raises(InvalidInput, match="a sweep id is s and a positive integer"):
        RerunParams.parse({"run": "s0"})
    assert str(SweepId(12)) == "s12"


# --- a store with a sweep, and a fake engine ---------------------------------------------


class SweepEngine(StoreEngine):
    """The engine's per-run methods done on the store as the engine does them."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.reruns: list[int] = []

    def enqueue(
        self,
        specs: Sequence[tuple[Spec, str]],
        caller: Caller,
        shipments: Sequence[Shipment | None] | None = None,
    ) -> list[Run]:
        # every spec becomes a 3-point sweep: what the engine returns for a sweep spec
        runs: list[Run] = []
        for spec, _source in specs:
            runs += _add_sweep(self.store, caller, 3, name=spec.name)[1]
        return runs

    def rerun_sweep(self, sweep_id: int, caller: Caller) -> tuple[Sweep, list[Run]]:
        self.reruns.append(sweep_id)
        old = self.store.get_sweep(sweep_id)
        sweep, runs = _add_sweep(self.store, caller, old.n_points, name=old.name)
        assert sweep.id is not None
        return self.store.update_sweep(sweep.id), runs


POINTS = [{"lr": 0.1, "seed": 1}, {"lr": 0.01, "seed": 1}, {"lr": 0.1, "seed": 2}]


def _add_sweep(
    store: Store,
    caller: Caller,
    n: int,
    *,
    name: str = "lr",
    objective: bool = True,
    priority: int = 5,
) -> tuple[Sweep, list[Run]]:
    now = time.time()
    sweep = Sweep(
        name=name,
        experiment="e",
        owner=caller.name,
        owner_uid=caller.uid,
        spec_yaml=f"name: {name}\npriority: {priority}\n"
        f"sweep: {{random: {{samples: {n}, seed: 4}}}}\n",
        kind="random",
        n_points=n,
        points_json=json.dumps((POINTS * n)[:n]),
        objective_metric="val_accuracy" if objective else None,
        objective_mode="max" if objective else None,
        max_parallel=2,
        created_at=now,
        updated_at=now,
    )
    runs = [queued_run(f"{name}[{i}]", caller, priority, i) for i in range(n)]
    return store.add_sweep(sweep, runs, actor=caller.name)


def _move(store: Store, run: Run, *states: RunState, **fields: Any) -> None:
    assert run.id is not None
    for state in states:
        store.transition(run.id, state, actor="svc", **fields)


_TO_RUNNING = (RunState.SUBMITTING, RunState.PENDING, RunState.RUNNING)


@pytest.fixture
def api(tmp_path: Path) -> tuple[Api, SweepEngine, Store]:
    store = Store(tmp_path / "hpcops.db")
    engine = SweepEngine(store)
    return make_api(tmp_path, engine, store), engine, store


# --- views -----------------------------------------------------------------------------------


def test_show_lists_the_points_best_first_with_their_own_values(
    api: tuple[Api, SweepEngine, Store],
) -> None:
    server, _, store = api
    sweep, runs = _add_sweep(store, ANA, 3)
    _move(store, runs[0], *_TO_RUNNING, RunState.COMPLETED, objective=0.5)
    _move(store, runs[2], *_TO_RUNNING, RunState.COMPLETED, objective=0.9)
    _move(store, runs[1], *_TO_RUNNING)
    shown = ok(server, ANA, "show", run=f"s{sweep.id}")
    assert shown["type"] == "sweep" and shown["id"] == f"s{sweep.id}"
    assert shown["state"] == "RUNNING"
    assert shown["progress"]["done"] == 2 and shown["progress"]["running"] == 1
    assert (shown["kind"], shown["n_points"], shown["seed"], shown["max_parallel"]) == (
        "random",
        3,
        4,
        2,
    )
    assert shown["objective"] == {"metric": "val_accuracy", "mode": "max"}
    assert [(p["index"], p["objective"], p["params"]) for p in shown["points"]] == [
        (2, 0.9, POINTS[2]),
        (0, 0.5, POINTS[0]),
        (1, None, POINTS[1]),
    ]
    # no best recorded by tracking yet: the best point of the points
    assert shown["best"] == {"run_id": runs[2].id, "value": 0.9, "index": 2, "params": POINTS[2]}


def test_a_sweep_without_an_objective_lists_its_points_by_index_and_a_rerun_point_once(
    api: tuple[Api, SweepEngine, Store],
) -> None:
    _, _, store = api
    sweep, runs = _add_sweep(store, ANA, 3, objective=False)
    assert sweep.id is not None
    _move(store, runs[1], RunState.CANCELLED)
    again = Run(**{**runs[1].model_dump(), "id": None, "state": "QUEUED"})
    store.add_runs([again], actor="ana")
    view = sweep_view(
        store.get_sweep(sweep.id),
        store.sweep_counts([sweep.id])[sweep.id],
        points=store.sweep_runs(sweep.id),
    )
    assert [(p["index"], p["run_id"]) for p in view["points"]] == [
        (0, runs[0].id),
        (1, again.id),
        (2, runs[2].id),
    ]
    assert view["points"][1]["earlier_runs"] == [runs[1].id]
    assert view["state"] == "QUEUED" and view["counts"] == {"QUEUED": 3}
    assert view["best"] is None and view["objective"] is None and view["seed"] == 4


# --- ls --------------------------------------------------------------------------------------


def test_ls_shows_a_sweep_as_one_row_and_its_points_on_request(
    api: tuple[Api, SweepEngine, Store],
) -> None:
    server, _, store = api
    [single] = store.add_runs(
        [
            Run(
                name="single",
                experiment="e",
                owner="bob",
                owner_uid=BOB.uid,
                priority=0,
                state="QUEUED",
                spec_yaml="x",
                spec_hash="0" * 16,
                created_at=time.time(),
                updated_at=time.time(),
            )
        ],
        actor="bob",
    )
    sweep, runs = _add_sweep(store, ANA, 3)
    _move(store, runs[0], *_TO_RUNNING)
    store.update_sweep(sweep.id or 0, best_run_id=runs[0].id, best_value=0.93)
    rows = ok(server, BOB, "list", sweeps=True)
    assert [(r["type"], r["id"]) for r in rows] == [("sweep", f"s{sweep.id}"), ("run", single.id)]
    row = rows[0]
    assert row["state"] == "RUNNING"
    assert row["counts"] == {"QUEUED": 2, "RUNNING": 1}
    assert row["best"] == {"run_id": runs[0].id, "value": 0.93}
    assert row["wait_reason"] in {f"point {i}: waiting for the test" for i in (1, 2)}
    assert "points" not in row, "ls does not read every point"
    flat = ok(server, BOB, "list")
    assert len(flat) == 4 and {r["sweep"] for r in flat} == {None, f"s{sweep.id}"}
    assert ok(server, BOB, "list", states=["COMPLETED"], sweeps=True) == []


def test_ls_limit_counts_rows_a_sweep_being_one(api: tuple[Api, SweepEngine, Store]) -> None:
    server, _, store = api
    older, _ = _add_sweep(store, BOB, 1, name="old")
    sweep, _ = _add_sweep(store, ANA, 5)
    rows = ok(server, ANA, "list", limit=2, sweeps=True)
    assert [r["id"] for r in rows] == [f"s{sweep.id}", f"s{older.id}"]
    assert [r["id"] for r in ok(server, ANA, "list", limit=1, sweeps=True)] == [f"s{sweep.id}"]
    assert len(ok(server, ANA, "list", limit=2)) == 2, "without sweeps, limit counts runs"


# --- requests on a whole sweep ---------------------------------------------------------------


def test_hold_release_and_cancel_a_sweep_touch_only_the_points_they_make_sense_for(
    api: tuple[Api, SweepEngine, Store],
) -> None:
    server, _, store = api
    sweep, runs = _add_sweep(store, ANA, 3)
    ref = f"s{sweep.id}"
    _move(store, runs[0], *_TO_RUNNING)
    held = ok(server, ANA, "hold", run=ref)
    assert held["affected"] == [runs[1].id, runs[2].id]
    assert held["message"] == f"sweep {ref}: 2 points held (1 not QUEUED)"
    assert ok(server, ANA, "show", run=ref)["state"] == "RUNNING"
    released = ok(server, ANA, "release", run=ref)
    assert released["affected"] == [runs[1].id, runs[2].id] and released["skipped"] == []
    cancelled = ok(server, ANA, "cancel", run=ref)
    assert cancelled["message"] == f"sweep {ref}: 2 points cancelled, 1 being cancelled in Slurm"
    assert store.get(runs[0].id or 0).cancel_requested_by == "ana"
    audit = [(a.action, a.target, a.detail) for a in store.audit_log()]
    assert ("cancel", f"run {runs[2].id}", f"sweep {ref}") in audit
    assert len([a for a in audit if a[0] == "hold"]) == 2, "one audit row per point"
    again = ok(server, ANA, "cancel", run=ref)  # the running point is asked again, as a run is
    assert again["affected"] == [runs[0].id] and again["message"].endswith("(2 had ended)")


def test_a_member_acts_on_their_own_sweep_only_and_a_lead_on_any(
    api: tuple[Api, SweepEngine, Store],
) -> None:
    server, _, store = api
    sweep, runs = _add_sweep(store, ANA, 3)
    ref = f"s{sweep.id}"
    refused = error(server, BOB, "hold", run=ref)
    assert refused["kind"] == "permission_denied"
    assert "only their own sweeps; this sweep belongs to ana" in refused["message"]
    assert [(a.actor, a.target, a.allowed) for a in store.audit_log()] == [
        ("bob", f"sweep {ref}", False)
    ]
    assert ok(server, LEO, "hold", run=ref)["affected"] == [r.id for r in runs]
    # a lead's hold: ana may not release it, point by point
    answer = ok(server, ANA, "release", run=ref)
    assert answer["affected"] == [] and len(answer["skipped"]) == 3
    assert "was held by leo; only a group lead may release it" in answer["message"]
    assert store.get(runs[0].id or 0).state == "HELD"
    assert error(server, ANA, "top", run=ref)["kind"] == "permission_denied"


def test_priority_and_top_on_a_sweep_keep_its_points_in_their_order(
    api: tuple[Api, SweepEngine, Store],
) -> None:
    server, _, store = api
    sweep, runs = _add_sweep(store, ANA, 3, priority=5)
    other, _ = _add_sweep(store, BOB, 1, priority=40)
    ref = f"s{sweep.id}"
    assert ok(server, ANA, "priority", run=ref, priority=10)["affected"] == [r.id for r in runs]
    assert {store.get(r.id or 0).priority for r in runs} == {10}
    topped = ok(server, LEO, "top", run=ref)
    assert topped["message"] == f"sweep {ref}: 3 points moved to the top (priority 41)"
    assert [store.get(r.id or 0).priority for r in runs] == [41, 41, 41]
    member = error(server, ANA, "priority", run=ref, priority=500)
    assert member["kind"] == "permission_denied", "the member range holds for a sweep too"
    assert other.id is not None


def test_one_point_is_acted_on_as_any_run(api: tuple[Api, SweepEngine, Store]) -> None:
    server, _, store = api
    _sweep, runs = _add_sweep(store, ANA, 3)
    answer = ok(server, ANA, "hold", run=runs[1].id)
    assert answer == {"id": runs[1].id, "state": "HELD", "message": f"run {runs[1].id} held"}
    shown = ok(server, ANA, "show", run=runs[1].id)
    assert (shown["type"], shown["sweep"], shown["sweep_index"]) == ("run", f"s{_sweep.id}", 1)


def test_a_missing_sweep_is_not_found(api: tuple[Api, SweepEngine, Store]) -> None:
    server, _, _ = api
    for method in ("show", "cancel", "hold", "release", "top"):
        refusal = error(server, LEO, method, run="s99")
        assert refusal == {
            "kind": "not_found",
            "message": "no sweep s99; `hpcops ls` lists the sweeps",
        }, method


# --- submit and rerun ------------------------------------------------------------------------


SPEC = "name: grid\nexperiment: e\ncommand: 'true'\npriority: 5\n"


def test_submit_names_the_sweep_and_its_runs_and_audits_it_once(
    api: tuple[Api, SweepEngine, Store],
) -> None:
    server, _, store = api
    result = ok(server, ANA, "submit", specs=[{"yaml": SPEC, "source": "g.yaml"}])
    [sweep] = result["sweeps"]
    ids = [r["id"] for r in result["runs"]]
    assert sweep == {
        "id": f"s{sweep['sweep_id']}",
        "sweep_id": sweep["sweep_id"],
        "name": "grid",
        "n_points": 3,
        "runs": ids,
    }
    assert [r["sweep_index"] for r in result["runs"]] == [0, 1, 2]
    [entry] = store.audit_log()
    assert (entry.action, entry.target) == ("submit", f"sweep {sweep['id']}")
    assert entry.after == f"3 points QUEUED priority 5 (runs {ids[0]}-{ids[2]})"


def test_rerun_of_a_sweep_queues_a_new_sweep_through_the_engine(
    api: tuple[Api, SweepEngine, Store],
) -> None:
    server, engine, store = api
    old, _ = _add_sweep(store, BOB, 3)
    result = ok(server, ANA, "rerun", run=f"s{old.id}")
    assert engine.reruns == [old.id]
    assert result["rerun_of"] == f"s{old.id}" and result["n_points"] == 3
    assert result["id"] == f"s{result['sweep_id']}" and result["state"] == "QUEUED"
    refused = error(server, ANA, "rerun", run=f"s{old.id}", set={"params.lr": "1"})
    assert refused["kind"] == "invalid_input" and "--set" in refused["message"]
    lead_sweep, _ = _add_sweep(store, LEO, 2, priority=500)
    high = error(server, ANA, "rerun", run=f"s{lead_sweep.id}")
    assert "outside the member range" in high["message"]
    assert engine.reruns == [old.id]

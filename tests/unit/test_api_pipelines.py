"""Pipelines in the API: `submit_pipeline` (the wire form checked again, nothing queued on a bad
one), a pipeline as one row in `ls` and as its steps in `show p3`, the requests on a whole
pipeline authorized and audited per run, `rerun_step` for the owner or a lead, and `p<N>` where a
run id goes. A real store under a fake engine that queues a pipeline's rows as the engine's
build_pipeline lays them out (no pinning, no cluster)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from api_fakes import StoreEngine, error, make_api, ok, queued_run

from hpcops.access import Caller
from hpcops.api.params import PipelineId, PriorityParams, RerunParams, SweepId, TargetParams
from hpcops.api.server import Api
from hpcops.code.mirror import Shipment
from hpcops.errors import InvalidInput
from hpcops.pipeline import Pipeline as LoadedPipeline
from hpcops.pipeline import load_pipeline_file, pipeline_to_wire
from hpcops.spec import Spec
from hpcops.states import RunState
from hpcops.store import Pipeline, PipelineStep, Run, Store, Sweep

ANA = Caller(uid=5001, name="ana")  # a member, who owns the pipeline
BOB = Caller(uid=5003, name="bob")  # another member
LEO = Caller(uid=5004, name="leo")  # a lead

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "examples" / "pipeline"


def _sweep(spec: Spec, caller: Caller) -> Sweep:
    assert spec.sweep is not None
    objective = spec.sweep.objective
    now = time.time()
    return Sweep(
        name=spec.name,
        experiment=spec.experiment,
        owner=caller.name,
        owner_uid=caller.uid,
        spec_yaml=spec.name,
        kind="grid",
        n_points=spec.sweep.n_points,
        points_json=json.dumps([{"i": i} for i in range(spec.sweep.n_points)]),
        objective_metric=objective.metric if objective else None,
        objective_mode=objective.mode if objective else None,
        created_at=now,
        updated_at=now,
    )


class PipelineEngine(StoreEngine):
    """Queues a pipeline's rows as engine/pipelines.py lays them out; records reruns."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.queued: list[tuple[LoadedPipeline, dict[str, Shipment | None]]] = []
        self.reruns: list[tuple[int, str, bool, str]] = []

    def enqueue_pipeline(
        self,
        loaded: LoadedPipeline,
        caller: Caller,
        shipments: Mapping[str, Shipment | None] | None = None,
    ) -> tuple[Pipeline, list[Run]]:
        self.queued.append((loaded, dict(shipments or {})))
        steps: list[PipelineStep] = []
        runs: dict[str, tuple[Sweep | None, list[Run]]] = {}
        for position, name in enumerate(loaded.steps):
            spec = loaded.specs.get(name)
            kind = "register" if spec is None else ("sweep" if spec.sweep else "run")
            steps.append(
                PipelineStep(pipeline_id=0, name=name, position=position, kind=kind, updated_at=0)
            )
            if spec is not None and spec.sweep is not None:
                points = [
                    queued_run(f"{spec.name}[{i}]", caller, spec.priority, i)
                    for i in range(spec.sweep.n_points)
                ]
                runs[name] = (_sweep(spec, caller), points)
            elif spec is not None:
                runs[name] = (None, [queued_run(spec.name, caller, spec.priority)])
        row = Pipeline(
            name=loaded.name,
            experiment="e",
            owner=caller.name,
            owner_uid=caller.uid,
            source=loaded.source,
            definition_json=loaded.definition.model_dump_json(by_alias=True),
            specs_json="{}",
            created_at=time.time(),
            updated_at=time.time(),
        )
        return self.store.add_pipeline(row, steps, runs, actor=caller.name)

    def rerun_step(
        self, pipeline_id: int, step: str, downstream: bool, caller: Caller
    ) -> list[Run]:
        self.reruns.append((pipeline_id, step, downstream, caller.name))
        fresh: dict[str, tuple[Sweep | None, list[Run]]] = {
            step: (None, [queued_run(step, caller, 0)])
        }
        return self.store.restart_steps(pipeline_id, fresh, caller.name, "rerun")


@pytest.fixture
def api(tmp_path: Path) -> tuple[Api, PipelineEngine, Store]:
    store = Store(tmp_path / "hpcops.db")
    engine = PipelineEngine(store)
    return make_api(tmp_path, engine, store), engine, store


def _wire(**changes: Any) -> dict[str, Any]:
    wire = pipeline_to_wire(load_pipeline_file(EXAMPLE / "pipeline.yaml"))
    wire.update(changes)
    return wire


def _submit(server: Api, caller: Caller = ANA) -> dict[str, Any]:
    result: dict[str, Any] = ok(server, caller, "submit_pipeline", pipeline=_wire())
    return result


def _steps(store: Store, number: int) -> dict[str, PipelineStep]:
    return {s.name: s for s in store.pipeline_steps([number])[number]}


def _prepared(server: Api, store: Store) -> tuple[int, dict[str, PipelineStep]]:
    """A pipeline of ana's whose first step, prepare, COMPLETED."""
    number: int = _submit(server)["pipeline_id"]
    steps = _steps(store, number)
    _move(store, steps["prepare"].run_id, *_TO_RUNNING, RunState.COMPLETED)
    return number, steps


def _move(store: Store, run_id: int | None, *states: RunState) -> None:
    assert run_id is not None
    for state in states:
        store.transition(run_id, state, actor="svc")


_TO_RUNNING = (RunState.SUBMITTING, RunState.PENDING, RunState.RUNNING)


# --- ids -----------------------------------------------------------------------------------


def test_a_pipeline_id_is_p_and_a_number_where_a_run_or_sweep_id_goes() -> None:
    assert TargetParams.parse({"run": "p3"}).run == PipelineId(3)
    assert TargetParams.parse({"run": "P3"}).run == PipelineId(3)
    assert TargetParams.parse({"run": "s3"}).run == SweepId(3)
    assert PriorityParams.parse({"run": "p3", "priority": 1}).run == PipelineId(3)
    assert str(PipelineId(12)) == "p12"
    for bad in ("p0", "p", "p-1", "pipeline3", "p3x", "p3.train", f"p{2**63}"):
        with pytest.raises(InvalidInput) as caught:
            TargetParams.parse({"run": bad})
        assert "or a pipeline id (p and a positive integer, e.g. p3)" in caught.value.message
    with pytest.raises(InvalidInput, match=r"hpcops rerun p3\.STEP"):
        RerunParams.parse({"run": "p3"})


# --- submit --------------------------------------------------------------------------------


def test_submit_queues_the_pipeline_with_each_steps_runs_and_audits_it_once(
    api: tuple[Api, PipelineEngine, Store],
) -> None:
    server, engine, store = api
    code = {"train": {"checkout": "ab" * 20, "dirty": False}}
    result = ok(server, ANA, "submit_pipeline", pipeline=_wire(), code=code)
    [(loaded, shipments)] = engine.queued
    assert loaded.name == "digits-retrain" and set(loaded.specs) == {"prepare", "train", "evaluate"}
    assert shipments == {"train": Shipment(checkout="ab" * 20, dirty=False)}
    number = result["pipeline_id"]
    assert (result["type"], result["id"], result["state"]) == ("pipeline", f"p{number}", "QUEUED")
    steps = {s["name"]: s for s in result["steps"]}
    assert list(steps) == ["prepare", "train", "evaluate", "promote"]
    assert [s["kind"] for s in steps.values()] == ["run", "sweep", "run", "register"]
    assert steps["prepare"]["runs"] == [steps["prepare"]["run_id"]]
    assert len(steps["train"]["runs"]) == 4 and steps["train"]["sweep"].startswith("s")
    assert steps["promote"] == {
        "name": "promote",
        "kind": "register",
        "run_id": None,
        "sweep": None,
        "runs": [],
    }
    [entry] = store.audit_log()
    assert (entry.action, entry.target) == ("submit", f"pipeline p{number}")
    assert entry.after is not None and entry.after.startswith("4 steps QUEUED (runs ")


@pytest.mark.parametrize(
    ("change", "kind", "message"),
    [
        (
            {"definition": {"name": "x", "steps": {"a": {"spec": "a.yaml", "after": ["a"]}}}},
            "invalid_spec",
            "steps.a.after[0]: a cannot wait for itself",
        ),
        ({"specs": "nope"}, "invalid_spec", "specs: must map step names to spec YAML"),
        (
            {"specs": {"prepare": "name: p\n"}},
            "invalid_spec",
            "steps.train.spec: its spec was not sent",
        ),
    ],
)
def test_a_bad_pipeline_is_invalid_input_and_nothing_is_queued(
    api: tuple[Api, PipelineEngine, Store], change: dict[str, Any], kind: str, message: str
) -> None:
    server, engine, store = api
    refused = error(server, ANA, "submit_pipeline", pipeline=_wire(**change))
    assert refused["kind"] == kind and message in refused["message"], refused
    assert engine.queued == [] and store.list_pipelines() == []


def test_submit_refuses_code_for_no_step_a_priority_out_of_range_and_an_outsider(
    api: tuple[Api, PipelineEngine, Store],
) -> None:
    server, engine, store = api
    unknown = error(server, ANA, "submit_pipeline", pipeline=_wire(), code={"promote": {}})
    assert unknown["kind"] == "invalid_input" and "promote: no spec step" in unknown["message"]
    wire = _wire()
    wire["specs"]["prepare"] = wire["specs"]["prepare"].replace("priority: 0", "priority: 900")
    high = error(server, ANA, "submit_pipeline", pipeline=wire)
    assert high["kind"] == "permission_denied" and "outside the member range" in high["message"]
    eve = Caller(uid=6000, name="eve")
    assert error(server, eve, "submit_pipeline", pipeline=_wire())["kind"] == "permission_denied"
    shape = error(server, ANA, "submit_pipeline", pipeline="pipeline.yaml")
    assert shape["message"] == "params.pipeline must be an object with source, definition, specs"
    assert engine.queued == [] and store.list_pipelines() == []


# --- ls and show ---------------------------------------------------------------------------


def test_ls_shows_a_pipeline_as_one_row_with_its_steps_states(
    api: tuple[Api, PipelineEngine, Store],
) -> None:
    server, _, store = api
    number, steps = _prepared(server, store)
    assert store.open_step(steps["train"].id or 0, "{}", "daemon") is not None
    points = store.sweep_runs(steps["train"].sweep_id or 0)
    _move(store, points[0].id, *_TO_RUNNING)
    [single] = store.add_runs([queued_run("single", BOB, 0)], actor="bob")
    rows = ok(server, BOB, "list", sweeps=True)
    assert [(r["type"], r["id"]) for r in rows] == [("pipeline", f"p{number}"), ("run", single.id)]
    row = rows[0]
    assert (row["name"], row["owner"], row["state"], row["n_steps"]) == (
        "digits-retrain",
        "ana",
        "RUNNING",
        4,
    )
    assert [(s["name"], s["state"]) for s in row["steps"]] == [
        ("prepare", "COMPLETED"),
        ("train", "RUNNING"),
        ("evaluate", "QUEUED"),
        ("promote", "QUEUED"),
    ]
    assert row["wait_reason"].startswith("train: ")
    assert "after" not in row["steps"][0], "ls reads no step's details"
    flat = ok(server, BOB, "list")
    assert len(flat) == 1 + 1 + 4 + 1, "without folding, every run is a row"
    assert {r["pipeline"] for r in flat} == {None, f"p{number}"}
    limited = ok(server, BOB, "list", limit=2, sweeps=True)
    assert {r["id"] for r in limited} == {f"p{number}", single.id}, "limit counts rows"


def test_show_a_pipeline_draws_its_steps_with_why_they_wait_or_ended(
    api: tuple[Api, PipelineEngine, Store],
) -> None:
    server, _, store = api
    number, steps = _prepared(server, store)
    shown = ok(server, ANA, "show", run=f"p{number}")
    by_name = {s["name"]: s for s in shown["steps"]}
    assert list(by_name) == ["prepare", "train", "evaluate", "promote"]
    assert shown["source"].endswith("pipeline.yaml") and shown["state"] == "RUNNING"
    assert by_name["evaluate"]["after"] == ["train"]
    assert by_name["evaluate"]["inputs"] == {"candidate": "train.best"}
    assert by_name["evaluate"]["wait_reason"] == "waits for train"
    assert by_name["train"]["n_points"] == 4 and by_name["train"]["progress"]["queued"] == 4
    assert by_name["promote"]["register"]["if_better"] == {"metric": "test_accuracy", "mode": "max"}
    assert by_name["prepare"]["wait_reason"] is None and by_name["prepare"]["reason"] is None
    # train fails: the daemon's tick ends evaluate as doomed; promotion's result is recorded
    for point in store.sweep_runs(steps["train"].sweep_id or 0):
        _move(store, point.id, RunState.CANCELLED)
    doomed = "waits for train, which CANCELLED"
    store.end_step(steps["evaluate"].id or 0, RunState.CANCELLED, doomed, "daemon")
    promotion = {"model_name": "digits-classifier", "version": "3", "moved": False, "margin": -0.01}
    store.end_step(
        steps["promote"].id or 0, RunState.FAILED, "no better", "svc", json.dumps(promotion)
    )
    shown = ok(server, ANA, "show", run=f"p{number}")
    by_name = {s["name"]: s for s in shown["steps"]}
    assert (by_name["evaluate"]["state"], by_name["evaluate"]["reason"]) == ("CANCELLED", doomed)
    assert by_name["promote"]["result"] == promotion and by_name["promote"]["reason"] == "no better"
    assert shown["state"] == "CANCELLED"
    assert error(server, ANA, "show", run="p99") == {
        "kind": "not_found",
        "message": "no pipeline p99; `hpcops ls` lists the pipelines",
    }


# --- requests on a whole pipeline ----------------------------------------------------------


def test_hold_release_and_cancel_a_pipeline_act_on_each_run_and_end_its_register_steps(
    api: tuple[Api, PipelineEngine, Store],
) -> None:
    server, _, store = api
    number = _submit(server)["pipeline_id"]
    ref = f"p{number}"
    steps = _steps(store, number)
    _move(store, steps["prepare"].run_id, *_TO_RUNNING)
    held = ok(server, ANA, "hold", run=ref)
    assert held["pipeline_id"] == number and len(held["affected"]) == 5
    assert held["message"] == f"pipeline {ref}: 5 runs held (1 not QUEUED)"
    released = ok(server, ANA, "release", run=ref)
    assert len(released["affected"]) == 5 and released["skipped"] == []
    cancelled = ok(server, ANA, "cancel", run=ref)
    assert cancelled["steps_cancelled"] == ["promote"]
    assert cancelled["message"] == (
        f"pipeline {ref}: 5 runs cancelled, 1 being cancelled in Slurm; register step promote "
        "cancelled"
    )
    assert _steps(store, number)["promote"].state is RunState.CANCELLED
    audit = [(a.action, a.target, a.detail) for a in store.audit_log()]
    assert ("cancel", f"pipeline {ref} step promote", f"pipeline {ref}") in audit
    assert len([a for a in audit if a[0] == "cancel"]) == 6 + 1, "one row per run and step"


def test_a_member_acts_on_their_own_pipeline_only_and_a_lead_on_any(
    api: tuple[Api, PipelineEngine, Store],
) -> None:
    server, _, store = api
    number = _submit(server)["pipeline_id"]
    ref = f"p{number}"
    refused = error(server, BOB, "cancel", run=ref)
    assert refused["kind"] == "permission_denied"
    assert "only their own pipelines; this pipeline belongs to ana" in refused["message"]
    assert [(a.actor, a.target, a.allowed) for a in store.audit_log()[:1]] == [
        ("bob", f"pipeline {ref}", False)
    ]
    assert len(ok(server, LEO, "hold", run=ref)["affected"]) == 6
    assert ok(server, ANA, "release", run=ref)["affected"] == [], "a lead's hold stays"
    topped = ok(server, LEO, "top", run=ref)
    assert topped["message"].startswith(f"pipeline {ref}: 0 runs moved to the top")
    assert len(ok(server, ANA, "priority", run=ref, priority=7)["affected"]) == 6, "held too"
    member = error(server, ANA, "priority", run=ref, priority=500)
    assert member["kind"] == "permission_denied"
    retried = error(server, ANA, "retry", run=ref)
    assert retried["kind"] == "invalid_input" and f"hpcops rerun {ref}.STEP" in retried["message"]


# --- rerun a step --------------------------------------------------------------------------


def test_rerun_step_is_the_owners_or_a_leads_and_names_the_steps_run_again(
    api: tuple[Api, PipelineEngine, Store],
) -> None:
    server, engine, store = api
    number = _submit(server)["pipeline_id"]
    ref = f"p{number}"
    prepare = _steps(store, number)["prepare"]
    _move(store, prepare.run_id, *_TO_RUNNING, RunState.FAILED)
    refused = error(server, BOB, "rerun_step", pipeline=ref, step="prepare")
    assert refused["kind"] == "permission_denied"
    assert "may rerun steps of only their own pipelines" in refused["message"]
    answer = ok(server, ANA, "rerun_step", pipeline=ref, step="prepare", downstream=True)
    assert engine.reruns == [(number, "prepare", True, "ana")]
    assert answer["steps"] == ["prepare", "train", "evaluate", "promote"]
    assert answer["message"].startswith(f"pipeline {ref}: prepare, train, evaluate, promote ")
    assert _steps(store, number)["prepare"].run_id == answer["runs"][0] != prepare.run_id
    entry = store.audit_log()[0]
    assert (entry.action, entry.target) == ("rerun_step", f"pipeline {ref} step prepare")
    _move(store, answer["runs"][0], RunState.CANCELLED)  # a step is rerun once it has ended
    ok(server, LEO, "rerun_step", pipeline=ref, step="prepare")
    assert engine.reruns[-1] == (number, "prepare", False, "leo")
    bad = error(server, ANA, "rerun_step", pipeline="s3", step="prepare")
    assert bad["message"] == "params.pipeline must be a pipeline id (p and a positive integer, " + (
        "e.g. p3), not 's3'"
    )
    assert error(server, ANA, "rerun_step", pipeline="p99", step="x")["kind"] == "not_found"

"""A pipeline's MLflow parent run, its steps' records nested under it, its end, and its register
steps' promotions; against MLflow's own sqlite store (it holds the Model Registry too; no
server), with the harness's wrapper that refuses or "crashes" where a test needs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tracking_harness import Clock, Faulty, Lab, sqlite_mlflow

from hpcops.errors import TrackingUnreachable
from hpcops.pipeline import PipelineDef
from hpcops.states import RunState
from hpcops.store import Pipeline, PipelineStep, Run, StepRuns
from hpcops.tracking import pipelines, records, registry
from hpcops.tracking.parents import PARENT_CURSOR
from hpcops.tracking.registry import Promotion

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return sqlite_mlflow(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def lab(tmp_path: Path, mlflow_uri: str) -> Iterator[Lab]:
    yield Lab(tmp_path, mlflow_uri, Clock())
    Faulty.refuse = Faulty.fail = Faulty.crash_after_create = Faulty.crash_after_child = False
    Faulty.creates = []


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow model on disk (as evaluate_digits.py saves one), logged into a run's artifacts."""
    pytest.importorskip("sklearn")
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    path = tmp_path_factory.mktemp("model") / "saved"
    mlflow.sklearn.save_model(model, str(path), pip_requirements=["scikit-learn"])
    return path


# --- queueing a pipeline as the engine does ------------------------------------------------------


def _run(lab: Lab, name: str) -> Run:
    return lab.run_row(name, {"a": 1})


def queue(lab: Lab, steps: dict[str, dict[str, Any]], *, sweeps: tuple[str, ...] = ()) -> int:
    """A pipeline of these steps (`sweeps`: which spec steps are sweeps of 2 points), stored as
    Store.add_pipeline stores the engine's; its id."""
    definition = PipelineDef.model_validate({"name": "nightly", "steps": steps}, strict=False)
    rows: list[PipelineStep] = []
    runs: dict[str, StepRuns] = {}
    for position, (name, step) in enumerate(definition.steps.items()):
        kind = "register" if step.promotion else "sweep" if name in sweeps else "run"
        if kind == "sweep":
            runs[name] = (lab.sweep_row(n=2), [lab.point(0), lab.point(1)])
        elif kind == "run":
            runs[name] = (None, [_run(lab, f"nightly-{name}")])
        rows.append(
            PipelineStep(pipeline_id=0, name=name, position=position, kind=kind, updated_at=0)
        )
    row = Pipeline(
        name="nightly",
        experiment=lab.experiment,
        owner="ana",
        owner_uid=1000,
        source="pipeline.yaml",
        definition_json=definition.model_dump_json(by_alias=True),
        specs_json="{}",
        created_at=time.time(),
        updated_at=time.time(),
    )
    pipeline, _ = lab.store.add_pipeline(row, rows, runs, actor="ana")
    assert pipeline.id is not None
    return pipeline.id


def settle(lab: Lab) -> None:
    """The outbox drained, then the passes that follow it (a parent ends after its steps)."""
    lab.drain()
    lab.tracker.step()
    lab.tracker.step()


def step_of(lab: Lab, pipeline_id: int, name: str) -> PipelineStep:
    return next(s for s in lab.store.pipeline_steps([pipeline_id])[pipeline_id] if s.name == name)


def run_of(lab: Lab, pipeline_id: int, name: str) -> Run:
    run_id = step_of(lab, pipeline_id, name).run_id
    assert run_id is not None
    return lab.store.get(run_id)


def parents_of(lab: Lab, pipeline_id: int) -> list[Any]:
    exp = lab.client().get_experiment_by_name(lab.experiment)
    return list(
        lab.client().search_runs(
            [exp.experiment_id],
            f"tags.`hpcops.kind` = 'pipeline' and tags.`hpcops.pipeline_id` = '{pipeline_id}'",
        )
    )


def parent_id(lab: Lab, pipeline_id: int) -> str:
    found = lab.store.get_pipeline(pipeline_id).mlflow_run_id
    assert found is not None
    return found


def tags_of(lab: Lab, mlflow_run_id: str | None) -> dict[str, str]:
    assert mlflow_run_id is not None
    return dict(lab.client().get_run(mlflow_run_id).data.tags)


THREE = {
    "prepare": {"spec": "prepare.yaml"},
    "train": {"spec": "sweep.yaml", "after": ["prepare"]},
    "evaluate": {"spec": "evaluate.yaml", "after": ["train"], "inputs": {"c": "train.best"}},
}


# --- the parent and its steps --------------------------------------------------------------------


def test_one_parent_with_every_step_nested_under_it(lab: Lab) -> None:
    pid = queue(lab, THREE, sweeps=("train",))
    settle(lab)
    parent = lab.client().get_run(parent_id(lab, pid))
    assert [p.info.run_id for p in parents_of(lab, pid)] == [parent.info.run_id]
    tags = parent.data.tags
    assert tags["hpcops.kind"] == "pipeline" and tags["hpcops.pipeline_id"] == str(pid)
    assert tags["hpcops.pipeline.steps"] == "prepare, train, evaluate"
    assert tags["mlflow.runName"] == "nightly" and tags["hpcops.owner"] == "ana"
    assert parent.info.status == "RUNNING"
    shown = lab.tracker.pipeline_view(lab.store.get_pipeline(pid))
    assert shown["mlflow_run_id"] == parent.info.run_id
    assert shown["mlflow_experiment_id"] == parent.info.experiment_id
    local = lab.client().download_artifacts(
        parent.info.run_id, "hpcops/pipeline.json", str(lab.home)
    )
    stored = json.loads(Path(local).read_text())
    assert stored == json.loads(lab.store.get_pipeline(pid).definition_json)
    assert list(stored["steps"]) == ["prepare", "train", "evaluate"]

    for name in ("prepare", "evaluate"):
        run = run_of(lab, pid, name)
        child = tags_of(lab, run.mlflow_run_id)
        assert child["mlflow.parentRunId"] == parent.info.run_id
        assert (child["hpcops.pipeline_id"], child["hpcops.pipeline_step"]) == (str(pid), name)
    sweep_id = step_of(lab, pid, "train").sweep_id
    assert sweep_id is not None
    sweep = lab.sweep(sweep_id)
    sweep_tags = tags_of(lab, sweep.mlflow_run_id)
    assert sweep_tags["mlflow.parentRunId"] == parent.info.run_id
    assert sweep_tags["hpcops.pipeline_step"] == "train"
    for point in lab.store.sweep_runs(sweep_id):  # the points stay under their sweep
        assert tags_of(lab, point.mlflow_run_id)["mlflow.parentRunId"] == sweep.mlflow_run_id


def test_a_crash_between_creation_and_the_stored_id_finds_the_parent_again(lab: Lab) -> None:
    pid = queue(lab, {"evaluate": {"spec": "evaluate.yaml"}})
    Faulty.crash_after_create = True
    with pytest.raises(KeyboardInterrupt):
        lab.tracker.step()
    assert lab.store.get_pipeline(pid).mlflow_run_id is None
    Faulty.crash_after_create = False
    lab.restart()
    settle(lab)
    [parent] = parents_of(lab, pid)
    assert parent_id(lab, pid) == parent.info.run_id
    assert tags_of(lab, run_of(lab, pid, "evaluate").mlflow_run_id)["mlflow.parentRunId"] == (
        parent.info.run_id
    )


@pytest.mark.parametrize("fault", ["refuse", "fail"])
def test_a_record_made_before_its_parent_is_nested_later(lab: Lab, fault: str) -> None:
    pid = queue(lab, {"evaluate": {"spec": "evaluate.yaml"}})
    setattr(Faulty, fault, True)  # the parent is refused or unanswered: the step's record goes on
    lab.drain()
    assert lab.tracker.health.reachable
    run = run_of(lab, pid, "evaluate")
    assert run.mlflow_run_id is not None and lab.store.get_pipeline(pid).mlflow_run_id is None
    assert "mlflow.parentRunId" not in tags_of(lab, run.mlflow_run_id)
    lab.tracker.step()  # backing off: the refused parent is not asked again at once
    assert [t for t in Faulty.creates if t.get("hpcops.kind") == "pipeline"] == []
    setattr(Faulty, fault, False)
    lab.clock.offset += 700
    settle(lab)
    assert tags_of(lab, run.mlflow_run_id)["mlflow.parentRunId"] == parent_id(lab, pid)
    assert lab.store.relay_cursors(run.id or 0)[PARENT_CURSOR] == parent_id(lab, pid)


def test_the_parent_ends_with_the_pipeline_and_runs_again_on_a_rerun(lab: Lab) -> None:
    pid = queue(lab, {"evaluate": {"spec": "evaluate.yaml"}})
    settle(lab)
    parent = parent_id(lab, pid)
    run = run_of(lab, pid, "evaluate")
    assert run.id is not None
    lab.end(run.id, RunState.COMPLETED)
    ended = time.time()
    lab.store.update_pipeline(pid, ended_at=ended, outcome="COMPLETED")
    lab.tracker.step()  # its step's record is closed first
    assert lab.client().get_run(parent).info.status == "RUNNING"
    settle(lab)
    record = lab.client().get_run(parent)
    assert record.info.status == "FINISHED"
    assert record.info.end_time == int(ended * 1000)
    assert record.data.tags["hpcops.pipeline.outcome"] == "COMPLETED"
    assert lab.store.get_pipeline(pid).closed_at is not None
    settle(lab)  # ended once
    assert lab.store.pipelines_to_track() == []

    again = _run(lab, "nightly-evaluate")
    lab.store.restart_steps(pid, {"evaluate": (None, [again])}, "ana", "rerun of p1 step evaluate")
    settle(lab)
    assert lab.client().get_run(parent).info.status == "RUNNING"
    assert lab.store.get_pipeline(pid).closed_at is None
    rerun = run_of(lab, pid, "evaluate")
    assert rerun.id != run.id
    assert tags_of(lab, rerun.mlflow_run_id)["mlflow.parentRunId"] == parent
    assert rerun.id is not None
    lab.end(rerun.id, RunState.FAILED)
    lab.store.update_pipeline(pid, ended_at=time.time(), outcome="FAILED")
    settle(lab)
    assert lab.client().get_run(parent).info.status == "FAILED"
    assert tags_of(lab, parent)["hpcops.pipeline.outcome"] == "FAILED"


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("COMPLETED", "FINISHED"),
        ("FAILED", "FAILED"),
        ("TIMEOUT", "FAILED"),
        ("CANCELLED", "KILLED"),
        ("RUNNING", "FAILED"),
        (None, "FAILED"),
        ("nonsense", "FAILED"),
    ],
)
def test_parent_status(outcome: str | None, status: str) -> None:
    assert pipelines.parent_status(outcome) == status


def test_no_pipeline_costs_one_query_and_no_request(lab: Lab) -> None:
    calls: list[str] = []
    lab.tracker.step()
    server = lab.tracker._server
    assert server is not None
    original = server.find_run

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append("find_run")
        return original(*args, **kwargs)

    server.find_run = counted  # type: ignore[method-assign]
    lab.tracker.pipelines.sync(server)
    assert calls == [] and lab.store.pipelines_to_track() == []


# --- promotion ----------------------------------------------------------------------------------


def promoting(name: str, if_better: bool = True) -> dict[str, dict[str, Any]]:
    register: dict[str, Any] = {"model": "evaluate", "name": name}
    if if_better:
        register["if_better"] = {"metric": "test_accuracy", "mode": "max"}
    return {
        "evaluate": {"spec": "evaluate.yaml"},
        "promote": {"after": ["evaluate"], "register": register},
    }


def evaluated(lab: Lab, name: str, value: float | None, saved: Path | None) -> tuple[int, int]:
    """A pipeline whose evaluate run logged `value` and (unless None) the model, ended
    COMPLETED; its promote step opened as the engine opens it. (pipeline id, its run id)"""
    pid = queue(lab, promoting(name))
    lab.drain()
    run = run_of(lab, pid, "evaluate")
    assert run.id is not None and run.mlflow_run_id is not None
    if value is not None:
        lab.client().log_metric(run.mlflow_run_id, "test_accuracy", value)
    if saved is not None:
        lab.client().log_artifacts(run.mlflow_run_id, str(saved), "model")
    lab.end(run.id, RunState.COMPLETED)
    step = step_of(lab, pid, "promote")
    assert step.id is not None
    lab.store.open_step(step.id, None, "daemon", model_run_id=run.id)
    return pid, run.id


def holder(lab: Lab, name: str) -> Any:
    from mlflow.tracking import MlflowClient

    return (
        MlflowClient(lab.uri, registry_uri=lab.uri)
        .get_registered_model(name)
        .aliases.get("champion")
    )


def test_promotion_moves_the_alias_then_a_worse_model_keeps_out(
    lab: Lab, saved_model: Path
) -> None:
    name = f"digits-{lab.home.parent.name}"
    first, _ = evaluated(lab, name, 0.9, saved_model)
    settle(lab)
    step = step_of(lab, first, "promote")
    assert step.state == RunState.COMPLETED
    first_reason = registry.decide(0.9, None, "max", metric="test_accuracy").reason
    assert step.reason == f"registered {name} v1; champion set to v1 ({first_reason})"
    assert json.loads(step.result_json or "")["version"] == "1"
    assert holder(lab, name) == 1
    parent = tags_of(lab, parent_id(lab, first))
    assert parent["hpcops.promotion.version"] == "1"
    assert parent["hpcops.promotion.decision"] == "moved"
    assert parent["hpcops.promotion.model"] == name

    worse, _ = evaluated(lab, name, 0.8, saved_model)
    settle(lab)
    step = step_of(lab, worse, "promote")
    assert step.state == RunState.COMPLETED
    assert (
        step.reason == f"registered {name} v2; champion kept on v1 (test_accuracy 0.8 < 0.9, -0.1)"
    )
    result = json.loads(step.result_json or "")
    assert (result["version"], result["moved"], result["holder_version"]) == ("2", False, "1")
    assert holder(lab, name) == 1
    assert tags_of(lab, parent_id(lab, worse))["hpcops.promotion.decision"] == "kept"

    better, _ = evaluated(lab, name, 0.95, saved_model)
    settle(lab)
    reason = step_of(lab, better, "promote").reason
    assert (
        reason == f"registered {name} v3; champion moved from v1 (test_accuracy 0.95 > 0.9, +0.05)"
    )
    assert holder(lab, name) == 3


def test_a_refused_parent_does_not_hold_up_the_promotion(lab: Lab, saved_model: Path) -> None:
    name = f"digits-{lab.home.parent.name}"
    Faulty.refuse = True
    pid, _ = evaluated(lab, name, 0.9, saved_model)
    settle(lab)
    assert lab.store.get_pipeline(pid).mlflow_run_id is None
    assert step_of(lab, pid, "promote").state == RunState.COMPLETED
    assert holder(lab, name) == 1


def test_a_run_without_a_model_fails_the_step_with_the_reason(lab: Lab) -> None:
    pid, run_id = evaluated(lab, f"digits-{lab.home.parent.name}", 0.9, None)
    settle(lab)
    step = step_of(lab, pid, "promote")
    assert step.state == RunState.FAILED
    assert step.reason is not None
    assert step.reason.startswith(f"cannot register run {run_id}'s model as digits-")
    assert "has no model at 'model'" in step.reason
    assert "mlflow.sklearn.save_model" in step.reason


def test_promotion_waits_for_the_model_runs_record_to_close(lab: Lab, saved_model: Path) -> None:
    name = f"digits-{lab.home.parent.name}"
    pid, run_id = evaluated(lab, name, 0.9, saved_model)
    [close] = [op for op in lab.store.tracking_ops(run_id) if op.kind == "close"]
    assert close.id is not None and close.done_at is None
    lab.store.tracking_retry(close.id, not_before=time.time() + 3600, error="held for the test")
    lab.tracker.step()
    lab.tracker.step()
    assert step_of(lab, pid, "promote").state == RunState.RUNNING
    lab.clock.offset += 3601
    settle(lab)
    assert step_of(lab, pid, "promote").state == RunState.COMPLETED


def test_an_unreachable_registry_is_retried_with_back_off(lab: Lab, saved_model: Path) -> None:
    name = f"digits-{lab.home.parent.name}"
    pid, _ = evaluated(lab, name, 0.9, saved_model)
    calls: list[str] = []

    def down(*args: Any) -> Promotion:
        calls.append(args[1])
        raise TrackingUnreachable("register: 503 for the test")

    lab.tracker.pipelines.promote = down
    settle(lab)
    assert len(calls) == 1  # not again before its back-off
    assert step_of(lab, pid, "promote").state == RunState.RUNNING
    lab.clock.offset += 1.5
    lab.tracker.step()
    assert len(calls) == 2
    lab.tracker.step()
    assert len(calls) == 2  # the second wait is longer
    lab.tracker.pipelines.promote = registry.promote
    lab.clock.offset += 120
    lab.tracker.step()
    step = step_of(lab, pid, "promote")
    assert step.state == RunState.COMPLETED and holder(lab, name) == 1


def test_a_model_run_without_a_record_fails_the_step(lab: Lab) -> None:
    pid = queue(lab, promoting(f"digits-{lab.home.parent.name}"))
    run = run_of(lab, pid, "evaluate")
    assert run.id is not None
    [create] = lab.store.tracking_ops(run.id)
    assert create.id is not None
    lab.store.tracking_done(create.id, error="refused: RESOURCE_DOES_NOT_EXIST", failed=True)
    lab.end(run.id, RunState.COMPLETED)
    step = step_of(lab, pid, "promote")
    assert step.id is not None
    lab.store.open_step(step.id, None, "daemon", model_run_id=run.id)
    lab.tracker.step()
    ended = step_of(lab, pid, "promote")
    assert ended.state == RunState.FAILED
    assert ended.reason == (
        f"run {run.id} of evaluate has no MLflow record (its creation failed: refused: "
        "RESOURCE_DOES_NOT_EXIST)"
    )


@pytest.mark.parametrize(
    ("model_run", "says"), [(None, "evaluate left no run"), (99999, "run 99999 of evaluate no")]
)
def test_a_register_step_without_its_model_run_fails(
    lab: Lab, model_run: int | None, says: str
) -> None:
    pid = queue(lab, promoting("digits-none"))
    step = step_of(lab, pid, "promote")
    assert step.id is not None
    lab.store.open_step(step.id, None, "daemon", model_run_id=model_run)
    lab.tracker.step()
    ended = step_of(lab, pid, "promote")
    assert ended.state == RunState.FAILED and says in (ended.reason or "")


def test_the_example_evaluation_logs_a_model_the_register_step_promotes(lab: Lab) -> None:
    """configs/examples/evaluate_digits.py, run as the evaluate step's job on a node without
    network is (relay mode), with the sweep's best point in its environment: its model reaches
    the server with the relay's last copy, and the register step promotes it."""
    pytest.importorskip("sklearn")
    script = Path(__file__).resolve().parents[2] / "configs" / "examples" / "evaluate_digits.py"
    name = f"digits-{lab.home.parent.name}"
    pid = queue(lab, promoting(name))
    lab.drain()
    run = run_of(lab, pid, "evaluate")
    assert run.id is not None and run.mlflow_run_id is not None
    run_dir = lab.home.parent / "runs" / f"run-{run.id:06d}"
    run_dir.mkdir(parents=True)
    job = lab.tracker.job_tracking(run, run_dir)
    assert job.mode == "relay"
    lab.store.transition(run.id, RunState.SUBMITTING, actor="daemon", **job.fields)
    lab.store.transition(run.id, RunState.RUNNING, actor="daemon", slurm_job_id="77")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        **dict(job.env),
        "HPCOPS_PARAM_EPOCHS": "3",
        "HPCOPS_PARAM_LR": "0.5",  # the candidate's wins
        "HPCOPS_INPUT_CANDIDATE_PARAMS": json.dumps({"lr": 0.03, "seed": 2, "epochs": 50}),
    }
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lr 0.03, seed 2, alpha 0.0001, 3 epochs" in done.stdout
    lab.store.transition(run.id, RunState.COMPLETED, actor="daemon", ended_at=time.time())
    step = step_of(lab, pid, "promote")
    assert step.id is not None
    lab.store.open_step(step.id, None, "daemon", model_run_id=run.id)
    settle(lab)
    step = step_of(lab, pid, "promote")
    assert step.state == RunState.COMPLETED, step.reason
    record = lab.client().get_run(run.mlflow_run_id)
    assert {"accuracy", "test_accuracy"} <= record.data.metrics.keys()
    assert json.loads(step.result_json or "")["candidate_value"] == pytest.approx(
        record.data.metrics["test_accuracy"]
    )
    assert holder(lab, name) == 1


# --- the reason, on plain data -------------------------------------------------------------------


def _promotion(**kw: Any) -> Promotion:
    base: dict[str, Any] = {
        "model_name": "digits",
        "version": "3",
        "alias": "champion",
        "moved": True,
        "reason": "r",
        "candidate_value": 0.95,
        "holder_version": "2",
        "holder_value": 0.93,
        "margin": 0.95 - 0.93,
        "registered": True,
    }
    base.update(kw)
    return Promotion(**base)


@pytest.mark.parametrize(
    ("kw", "metric", "line"),
    [
        (
            {},
            "accuracy",
            "registered digits v3; champion moved from v2 (accuracy 0.95 > 0.93, +0.02)",
        ),
        (
            {"moved": False, "candidate_value": 0.9, "margin": 0.9 - 0.93},
            "accuracy",
            "registered digits v3; champion kept on v2 (accuracy 0.9 < 0.93, -0.03)",
        ),
        (
            {"moved": False, "candidate_value": 0.93, "margin": 0.0, "reason": "ties"},
            "accuracy",
            "registered digits v3; champion kept on v2 (accuracy 0.93 = 0.93, +0)",
        ),
        (
            {"candidate_value": 0.25, "holder_value": 0.3, "margin": 0.05},
            "loss",
            "registered digits v3; champion moved from v2 (loss 0.25 < 0.3, +0.05)",
        ),
        (
            {"holder_version": None, "holder_value": None, "margin": None, "reason": "first"},
            "accuracy",
            "registered digits v3; champion set to v3 (first)",
        ),
        (
            {"holder_version": "3", "reason": "v3 holds it already"},
            None,
            "registered digits v3; champion already on v3 (v3 holds it already)",
        ),
        (
            {"candidate_value": None, "holder_value": None, "margin": None, "reason": "every"},
            None,
            "registered digits v3; champion moved from v2 (every)",
        ),
        (
            {"moved": False, "candidate_value": None, "margin": None, "reason": "no value"},
            "accuracy",
            "registered digits v3; champion kept on v2 (no value)",
        ),
    ],
)
def test_promotion_reason(kw: dict[str, Any], metric: str | None, line: str) -> None:
    assert pipelines.promotion_reason(_promotion(**kw), metric) == line


def test_promotion_json_has_no_infinity() -> None:
    data = json.loads(pipelines.promotion_json(_promotion(margin=float("inf"))))
    assert data["margin"] is None and data["version"] == "3"


def test_a_pipeline_steps_record_names_it_on_plain_data(lab: Lab) -> None:
    run = _run(lab, "x")
    run.id, run.pipeline_id, run.pipeline_step = 5, 2, "evaluate"
    from hpcops.spec import parse_spec

    tags = records.creation_tags(
        run, parse_spec(run.spec_yaml, "t"), key="k", version="v", parent_run_id="f" * 32
    )
    assert tags["hpcops.pipeline_id"] == "2" and tags["hpcops.pipeline_step"] == "evaluate"
    assert tags["mlflow.parentRunId"] == "f" * 32

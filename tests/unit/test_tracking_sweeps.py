"""A sweep's MLflow parent and its nested points: the outbox's sweep lane, the parent made once,
the best point, the parent's end; against a real MLflow store (sqlite, no server), with a wrapper
that refuses, fails or "crashes" where a test needs it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tracking_harness import POINTS, Clock, Faulty, Lab, sqlite_mlflow

from hpcops.states import RunState
from hpcops.store import Run, Sweep
from hpcops.store.tracking import SWEEP_OP, BestPoint, tracking_ops_for
from hpcops.tracking import parents, records

# MLflow's own sqlite store, on the SQLAlchemy it pins (not hpcops' concern).
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return sqlite_mlflow(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def faults() -> Iterator[type[Faulty]]:
    yield Faulty
    Faulty.refuse = Faulty.fail = Faulty.crash_after_create = Faulty.crash_after_child = False
    Faulty.creates = []


@pytest.fixture
def lab(tmp_path: Path, mlflow_uri: str, faults: type[Faulty]) -> Lab:
    return Lab(tmp_path, mlflow_uri, Clock())


def _ids(runs: list[Run]) -> list[int]:
    return [r.id for r in runs if r.id is not None]


# --- the outbox --------------------------------------------------------------------------------


def test_a_point_owes_its_parent_before_its_creation_and_after_its_close() -> None:
    assert tracking_ops_for(None, "QUEUED", point=True) == [SWEEP_OP, "create"]
    assert tracking_ops_for("RUNNING", "FAILED", point=True) == ["close", SWEEP_OP]
    assert tracking_ops_for("SUBMITTING", "PENDING", point=True) == ["submitted"]
    assert tracking_ops_for(None, "QUEUED") == ["create"]


def test_the_parent_lane_never_holds_up_the_points_own_record(tmp_path: Path) -> None:
    lab = Lab(tmp_path, "sqlite:////nonexistent/x.db", Clock())
    _, runs = lab.add_sweep(n=1)
    [run_id] = _ids(runs)
    before, create = lab.store.tracking_ops(run_id)
    assert (before.kind, create.kind) == (SWEEP_OP, "create")
    assert [op.kind for op in lab.store.tracking_due(now=1.0)] == [SWEEP_OP, "create"]
    assert before.id is not None and create.id is not None
    lab.store.tracking_retry(before.id, not_before=100.0, error="parent refused")
    assert [op.kind for op in lab.store.tracking_due(now=1.0)] == ["create"]
    lab.store.tracking_done(create.id)
    lab.store.transition(run_id, RunState.FAILED, actor="daemon", note="refused by the cluster")
    # The close goes; the parent's operation after it waits for it (the objective is read
    # at close), and the one still backing off waits for its own time.
    assert [op.kind for op in lab.store.tracking_due(now=1.0)] == ["close"]
    close = lab.store.tracking_due(now=1.0)[0]
    assert close.id is not None
    lab.store.tracking_done(close.id)
    assert lab.store.tracking_due(now=1.0) == []
    assert [op.kind for op in lab.store.tracking_due(now=100.0)] == [SWEEP_OP]
    assert lab.store.sweep_closes_owed(runs[0].sweep_id or 0) is False


# --- the parent and its children ----------------------------------------------------------------


def test_one_parent_and_its_points_nested_under_it(lab: Lab) -> None:
    sweep, runs = lab.add_sweep()
    assert sweep.id is not None
    lab.drain()
    stored = lab.sweep(sweep.id)
    assert stored.mlflow_run_id and stored.mlflow_experiment_id
    client = lab.client()
    parent = client.get_run(stored.mlflow_run_id)
    assert parent.info.run_name == "resnet-lr"
    assert parent.info.status == "RUNNING"
    assert parent.data.params == {
        "epochs": "3",
        "lr": "0.5",
        "sweep.kind": "random",
        "sweep.points": "3",
        "sweep.seed": "11",
        "sweep.objective": "val_accuracy max",
        "sweep.max_parallel": "2",
    }
    tags = parent.data.tags
    assert tags["hpcops.kind"] == "sweep" and tags["hpcops.sweep_id"] == str(sweep.id)
    assert tags["hpcops.owner"] == tags["mlflow.user"] == "ana"
    assert tags["paper"] == "neurips"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "hpcops")} == {
        "hpcops/sweep.yaml",
        "hpcops/points.json",
    }
    points = client.download_artifacts(parent.info.run_id, "hpcops/points.json", str(lab.home))
    assert json.loads(Path(points).read_text()) == POINTS
    for run in runs:
        child = client.get_run(lab.store.get(run.id or 0).mlflow_run_id)
        assert child.data.tags["mlflow.parentRunId"] == stored.mlflow_run_id
        assert child.info.run_name == f"resnet-lr[{run.sweep_index}]"
        assert child.data.tags["hpcops.sweep_id"] == str(sweep.id)
        assert child.data.tags["hpcops.sweep_index"] == str(run.sweep_index)
        assert child.data.tags["hpcops.run_id"] == str(run.id)
        assert child.data.params["lr"] == str(POINTS[run.sweep_index or 0]["lr"])
        assert child.info.status == "SCHEDULED"
    assert len(lab.parents_of(sweep.id)) == 1


def test_best_point_ranked_as_points_end_and_the_parent_ends(lab: Lab) -> None:
    sweep, runs = lab.add_sweep()
    assert sweep.id is not None
    a, b, c = _ids(runs)
    lab.drain()
    lab.log(a, [0.5, 0.9])  # latest value: 0.9
    lab.log(b, [0.95, 0.7])  # its best epoch is not its latest value: 0.7
    lab.end(a, RunState.COMPLETED)
    lab.drain()
    stored = lab.sweep(sweep.id)
    assert lab.store.get(a).objective == 0.9
    assert (stored.best_run_id, stored.best_value, stored.closed_at) == (a, 0.9, None)
    lab.end(b, RunState.COMPLETED)
    lab.end(c, RunState.FAILED)  # logged nothing: not ranked
    lab.drain()
    assert lab.store.get(b).objective == 0.7
    assert lab.store.get(c).objective is None
    stored = lab.sweep(sweep.id)
    assert (stored.best_run_id, stored.best_value) == (a, 0.9)
    assert stored.closed_at is not None
    client = lab.client()
    assert stored.mlflow_run_id is not None
    parent = client.get_run(stored.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["hpcops.best_run"] == str(a)
    assert json.loads(parent.data.tags["hpcops.best_point"]) == POINTS[0]
    assert parent.data.tags["hpcops.best_mlflow_run"] == lab.store.get(a).mlflow_run_id
    history = client.get_metric_history(stored.mlflow_run_id, "best_val_accuracy")
    # b ended 2nd and was ranked after c ended: its best goes in at step 2 and at step 3 (now).
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.9), (3, 0.9), (3, 0.9)]
    # Each child closed as a single run is, the failed one FAILED.
    assert client.get_run(lab.store.get(c).mlflow_run_id).info.status == "FAILED"
    assert lab.store.tracking_backlog() == 0


def test_min_mode_and_a_sweep_without_objective(lab: Lab) -> None:
    sweep, runs = lab.add_sweep(mode="min", n=2)
    a, b = _ids(runs)
    lab.drain()
    lab.log(a, [0.4])
    lab.log(b, [0.2])
    lab.end(a, RunState.COMPLETED)
    lab.end(b, RunState.COMPLETED)
    lab.drain()
    assert sweep.id is not None
    assert (lab.sweep(sweep.id).best_run_id, lab.sweep(sweep.id).best_value) == (b, 0.2)

    plain, runs = lab.add_sweep(n=2, metric=None)
    assert plain.id is not None
    lab.drain()
    for run_id in _ids(runs):
        lab.end(run_id, RunState.CANCELLED)
    lab.drain()
    stored = lab.sweep(plain.id)
    assert stored.best_run_id is None and stored.closed_at is not None
    assert stored.mlflow_run_id is not None
    parent = lab.client().get_run(stored.mlflow_run_id)
    assert parent.info.status == "KILLED"  # every point was cancelled
    assert "sweep.objective" not in parent.data.params
    assert "best_val_accuracy" not in parent.data.metrics


def test_a_point_rerun_reopens_the_parent_until_it_ends(lab: Lab) -> None:
    sweep, runs = lab.add_sweep(n=2)
    assert sweep.id is not None
    a, b = _ids(runs)
    lab.drain()
    lab.log(a, [0.6])
    lab.end(a, RunState.COMPLETED)
    lab.end(b, RunState.FAILED)
    lab.drain()
    parent_id = lab.sweep(sweep.id).mlflow_run_id
    assert parent_id is not None
    assert lab.client().get_run(parent_id).info.status == "FINISHED"

    rerun = lab.store.add_run(lab.point(1, sweep_id=sweep.id), actor="ana")
    assert rerun.id is not None
    lab.drain()
    assert lab.sweep(sweep.id).closed_at is None
    assert lab.client().get_run(parent_id).info.status == "RUNNING"
    child = lab.client().get_run(lab.store.get(rerun.id).mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.tags["hpcops.sweep_index"] == "1"

    lab.log(rerun.id, [0.8])
    lab.end(rerun.id, RunState.COMPLETED)
    lab.drain()
    stored = lab.sweep(sweep.id)
    assert (stored.best_run_id, stored.best_value) == (rerun.id, 0.8)
    assert stored.closed_at is not None
    assert lab.client().get_run(parent_id).info.status == "FINISHED"
    assert len(lab.parents_of(sweep.id)) == 1


# --- failures cost the parent only --------------------------------------------------------------


def test_a_crash_after_the_parent_was_made_does_not_make_a_second(
    lab: Lab, faults: type[Faulty]
) -> None:
    sweep, runs = lab.add_sweep(n=2)
    assert sweep.id is not None
    faults.crash_after_create = True
    with pytest.raises(KeyboardInterrupt):
        lab.drain()
    assert lab.sweep(sweep.id).mlflow_run_id is None  # made on the server, not stored
    assert len(lab.parents_of(sweep.id)) == 1
    faults.crash_after_create = False
    lab.restart()
    lab.drain()
    [parent] = lab.parents_of(sweep.id)
    assert lab.sweep(sweep.id).mlflow_run_id == parent.info.run_id
    assert [t[parents.KIND_TAG] for t in faults.creates if parents.KIND_TAG in t] == ["sweep"]
    assert parent.data.params["sweep.points"] == "2"  # completed by the retry
    for run in runs:
        child = lab.client().get_run(lab.store.get(run.id or 0).mlflow_run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_a_point_found_after_a_crash_is_nested_once(lab: Lab, faults: type[Faulty]) -> None:
    sweep, runs = lab.add_sweep(n=1)
    [run_id] = _ids(runs)
    faults.crash_after_child = True
    with pytest.raises(KeyboardInterrupt):
        lab.drain()  # the parent, then the point's record made on the server, its id not stored
    assert sweep.id is not None and lab.sweep(sweep.id).mlflow_run_id is not None
    assert lab.store.get(run_id).mlflow_run_id is None
    faults.crash_after_child = False
    lab.restart()
    lab.drain()
    exp = lab.client().get_experiment_by_name(lab.experiment)
    [child] = lab.client().search_runs([exp.experiment_id], f"tags.`hpcops.run_id` = '{run_id}'")
    assert child.info.run_id == lab.store.get(run_id).mlflow_run_id
    assert sweep.id is not None
    assert child.data.tags["mlflow.parentRunId"] == lab.sweep(sweep.id).mlflow_run_id


@pytest.mark.parametrize("fault", ["refuse", "fail"])
def test_a_parent_the_server_refuses_costs_only_the_parent(
    lab: Lab, faults: type[Faulty], fault: str
) -> None:
    sweep, runs = lab.add_sweep(n=2)
    assert sweep.id is not None
    single = lab.store.add_run(lab.point(0), actor="bob")  # another member's plain run
    setattr(faults, fault, True)
    lab.drain()
    # Every record but the parent was made, in the same pass; the tracker is not backing off.
    assert lab.tracker.health.reachable
    assert lab.sweep(sweep.id).mlflow_run_id is None
    for run_id in [*_ids(runs), single.id or 0]:
        assert lab.store.get(run_id).mlflow_run_id, run_id
    a, b = _ids(runs)
    shown = lab.tracker.view(lab.store.get(a))
    assert shown["tracking_pending"] == [SWEEP_OP] and shown["tracking_error"]
    lab.log(a, [0.7])
    lab.end(a, RunState.COMPLETED)
    lab.end(single.id or 0, RunState.COMPLETED)
    lab.drain()
    assert lab.store.get(a).objective == 0.7  # the point's own close went on
    assert lab.client().get_run(lab.store.get(a).mlflow_run_id).info.status == "FINISHED"
    assert not lab.tracker.view(lab.store.get(single.id or 0))["tracking_pending"]

    setattr(faults, fault, False)
    lab.clock.offset += 3600  # past the parent's back-off
    lab.drain()
    stored = lab.sweep(sweep.id)
    assert stored.mlflow_run_id is not None
    for run_id in (a, b):  # made before their parent: nested now
        child = lab.client().get_run(lab.store.get(run_id).mlflow_run_id)
        assert child.data.tags["mlflow.parentRunId"] == stored.mlflow_run_id
    assert (stored.best_run_id, stored.best_value) == (a, 0.7)
    assert not lab.tracker.view(lab.store.get(a))["tracking_pending"]
    assert len(lab.parents_of(sweep.id)) == 1


def test_relay_mode_reads_the_objective_after_the_last_copy(lab: Lab) -> None:
    from mlflow.tracking import MlflowClient

    sweep, runs = lab.add_sweep(n=1)
    [run_id] = _ids(runs)
    lab.drain()
    run_dir = lab.home.parent / "runs" / f"run-{run_id:06d}"
    run_dir.mkdir(parents=True)
    job = lab.tracker.job_tracking(lab.store.get(run_id), run_dir)
    assert job.mode == "relay"
    lab.store.transition(run_id, RunState.SUBMITTING, actor="daemon", **job.fields)
    lab.store.transition(run_id, RunState.RUNNING, actor="daemon", slurm_job_id="77")
    env = dict(job.env)
    relay_client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    relay_client.log_metric(env["MLFLOW_RUN_ID"], "val_accuracy", 0.3, step=1)
    relay_client.log_metric(env["MLFLOW_RUN_ID"], "val_accuracy", 0.65, step=2)
    relay_client.set_tag(env["MLFLOW_RUN_ID"], "mlflow.parentRunId", "f" * 32)  # not copied
    lab.store.transition(run_id, RunState.COMPLETED, actor="daemon", ended_at=time.time())
    lab.drain()
    assert lab.store.get(run_id).objective == 0.65
    assert sweep.id is not None
    stored = lab.sweep(sweep.id)
    assert (stored.best_run_id, stored.best_value) == (run_id, 0.65)
    child = lab.client().get_run(lab.store.get(run_id).mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == stored.mlflow_run_id


# --- what the parent holds (pure) ---------------------------------------------------------------


def _standing_lab(tmp_path: Path, n: int) -> tuple[Lab, int, list[int]]:
    lab = Lab(tmp_path, "sqlite:////nonexistent/x.db", Clock())
    sweep, runs = lab.add_sweep(n=n)
    assert sweep.id is not None
    return lab, sweep.id, _ids(runs)


def _ended(lab: Lab, run_id: int, state: str, objective: float | None, at: float) -> None:
    lab.store.transition(run_id, RunState.SUBMITTING, actor="daemon")
    lab.store.transition(run_id, RunState.RUNNING, actor="daemon")
    lab.store.transition(run_id, RunState(state), actor="daemon", ended_at=at, objective=objective)


def test_best_point_rules(tmp_path: Path) -> None:
    lab, sweep_id, ids = _standing_lab(tmp_path, 3)
    assert lab.store.sweep_standing(sweep_id, ids[0], "max").best is None
    _ended(lab, ids[0], "COMPLETED", 0.5, at=10.0)
    _ended(lab, ids[1], "FAILED", 0.99, at=11.0)  # did not complete: not ranked
    _ended(lab, ids[2], "COMPLETED", 0.5, at=12.0)  # a tie goes to the earlier point
    high = lab.store.sweep_standing(sweep_id, ids[2], "max")
    assert high.best is not None and (high.best.run_id, high.best.index) == (ids[0], 0)
    assert (high.points, high.ended, high.ended_before, high.last_end) == (3, 3, 3, 12.0)
    assert lab.store.sweep_standing(sweep_id, ids[1], "max").ended_before == 2
    # A rerun of point 0 replaces it: while it waits, point 0 is neither ranked nor ended.
    again = lab.store.add_run(lab.point(0, sweep_id=sweep_id), actor="ana")
    assert again.id is not None
    low = lab.store.sweep_standing(sweep_id, again.id, "min")
    assert low.best is not None and low.best.run_id == ids[2]
    assert (low.points, low.ended, low.ended_before) == (3, 2, 0)
    _ended(lab, again.id, "COMPLETED", None, at=20.0)  # no objective: not ranked
    after = lab.store.sweep_standing(sweep_id, again.id, "max")
    assert after.best is not None and after.best.run_id == ids[2]
    assert after.states == {"COMPLETED": 2, "FAILED": 1}


@pytest.mark.parametrize(
    ("states", "status"),
    [
        (["COMPLETED", "FAILED", "CANCELLED"], "FINISHED"),
        (["TIMEOUT", "CANCELLED"], "FAILED"),
        (["OUT_OF_MEMORY"], "FAILED"),
        (["CANCELLED", "PREEMPTED"], "KILLED"),
    ],
)
def test_parent_status(states: list[str], status: str) -> None:
    assert parents.parent_status(states) == status


def test_a_parents_key_is_never_a_runs(tmp_path: Path) -> None:
    assert parents.sweep_key("lab", tmp_path, 3) != records.instance_key("lab", tmp_path, 3)
    assert parents.sweep_key("lab", tmp_path, 3) != parents.sweep_key("lab", tmp_path / "b", 3)


def test_parent_params_without_a_seed_or_limit() -> None:
    sweep = Sweep(
        id=1, name="g", experiment="e", owner="ana", owner_uid=1, kind="grid", n_points=4,
        spec_yaml="name: g\nparams: {a: 1.0e-3, ok: true}\nsweep: {grid: {a: [1, 2]}}\n",
        points_json="[]", created_at=1.0, updated_at=1.0,
    )  # fmt: skip
    assert parents.parent_params(sweep) == {
        "a": "0.001",
        "ok": "true",
        "sweep.kind": "grid",
        "sweep.points": "4",
    }


def test_a_best_read_late_is_also_the_parents_latest_value() -> None:
    # The best point ended 8th, but its objective was read after the 9th point (worse) had
    # logged the best-so-far at step 9: the late best goes in at step 8 and at step 9, so
    # MLflow's latest value (the highest step's) is the best, not the worse point's.
    sweep = Sweep(id=1, name="grid", points_json=json.dumps(POINTS), objective_metric="score")
    best = BestPoint(run_id=8, index=0, objective=4.0, mlflow_run_id="m8")
    late = parents.best_batch(sweep, best, ended_before=8, ended_now=9, now_ms=5)
    assert [(m.step, m.value) for m in late.metrics] == [(8, 4.0), (9, 4.0)]
    on_time = parents.best_batch(sweep, best, ended_before=9, ended_now=9, now_ms=5)
    assert [(m.step, m.value) for m in on_time.metrics] == [(9, 4.0)]
    assert on_time.tags[parents.BEST_RUN_TAG] == "8"

"""MLflow records on plain data: the outbox rule, what a record holds, the relay's reading of a
real MLflow file store, rerun's overrides, the job's MLflow environment in the script."""

from __future__ import annotations

import operator
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import pytest

from hpcops.config import parse_config
from hpcops.errors import ConfigError, InvalidInput
from hpcops.render import JobContext, render_script
from hpcops.spec import parse_spec
from hpcops.states import RunState
from hpcops.store import Run, Store
from hpcops.store.tracking import tracking_ops_for
from hpcops.tracking import records, relay
from hpcops.tracking.records import Batch, MetricPoint
from hpcops.tracking.rerun import apply_overrides, parse_assignments, typed_value
from hpcops.tracking.server import TrackingServer, split_batch

ContextFactory = Callable[..., JobContext]

SPEC = """
name: digits
experiment: digits
command: python train.py
params: {lr: 0.01, epochs: 3, fast: true, opt: adam}
tags: {paper: neurips}
"""


def _run(**fields: object) -> Run:
    base: dict[str, object] = {
        "id": 12,
        "name": "digits",
        "experiment": "digits",
        "owner": "ana",
        "owner_uid": 1000,
        "priority": 5,
        "state": "COMPLETED",
        "spec_yaml": SPEC,
        "spec_hash": "abcd",
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    base.update(fields)
    return Run(**base)  # type: ignore[arg-type]


# --- the outbox -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "owed"),
    [
        (None, "QUEUED", ["create"]),
        ("QUEUED", "HELD", []),
        ("QUEUED", "SUBMITTING", []),
        ("SUBMITTING", "PENDING", ["submitted"]),
        ("SUBMITTING", "RUNNING", ["submitted"]),  # adopted by token after a crash
        ("SUBMITTING", "QUEUED", []),  # never reached Slurm
        ("PENDING", "RUNNING", []),
        ("RUNNING", "PENDING", []),  # requeued under the same job id
        ("RUNNING", "COMPLETED", ["close"]),
        ("QUEUED", "CANCELLED", ["close"]),  # cancelled before release: the record ends too
        ("SUBMITTING", "FAILED", ["close"]),  # Slurm refused it
        ("RUNNING", "RUNNING", []),
    ],
)
def test_outbox_rule(before: str | None, after: str, owed: list[str]) -> None:
    assert tracking_ops_for(before, after) == owed


def test_outbox_rows_are_written_with_the_state_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite", track=True)
    [run] = store.add_runs([_run(id=None, state="QUEUED")], actor="ana")
    assert run.id is not None
    store.transition(run.id, RunState.SUBMITTING, actor="daemon")
    store.transition(run.id, RunState.PENDING, actor="daemon", slurm_job_id="7")
    store.transition(run.id, RunState.COMPLETED, actor="daemon")
    assert [op.kind for op in store.tracking_ops(run.id)] == ["create", "submitted", "close"]
    # One run's operations go in order: only the oldest undone one is due.
    [due] = store.tracking_due(now=10.0)
    assert due.kind == "create"
    assert due.id is not None
    store.tracking_retry(due.id, not_before=20.0, error="server down")
    assert store.tracking_due(now=10.0) == []
    assert [op.kind for op in store.tracking_due(now=20.0)] == ["create"]
    store.tracking_done(due.id)
    assert [op.kind for op in store.tracking_due(now=20.0)] == ["submitted"]
    assert store.tracking_backlog() == 2


def test_no_outbox_without_tracking(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    [run] = store.add_runs([_run(id=None, state="QUEUED")], actor="ana")
    assert run.id is not None and store.tracking_ops(run.id) == []


def test_relay_cursors_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    [run] = store.add_runs([_run(id=None, state="QUEUED")], actor="ana")
    assert run.id is not None
    store.save_relay_cursors(run.id, {"metric:loss": "10", "param:lr": "0.1"})
    store.save_relay_cursors(run.id, {"metric:loss": "25"})
    assert store.relay_cursors(run.id) == {"metric:loss": "25", "param:lr": "0.1"}


# --- what a record holds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (RunState.COMPLETED, "FINISHED"),
        (RunState.FAILED, "FAILED"),
        (RunState.OUT_OF_MEMORY, "FAILED"),
        (RunState.TIMEOUT, "FAILED"),
        (RunState.NODE_FAIL, "FAILED"),
        (RunState.UNKNOWN, "FAILED"),
        (RunState.CANCELLED, "KILLED"),
        (RunState.PREEMPTED, "KILLED"),
    ],
)
def test_status_of_an_ended_run(state: RunState, status: str) -> None:
    assert records.mlflow_status(state) == status


def test_no_status_for_a_live_run() -> None:
    with pytest.raises(ValueError, match="has not ended"):
        records.mlflow_status(RunState.RUNNING)


def test_params_keep_the_jobs_spelling() -> None:
    spec = parse_spec(SPEC, "s")
    assert records.params_of(spec) == {"lr": "0.01", "epochs": "3", "fast": "true", "opt": "adam"}


def test_creation_tags() -> None:
    spec = parse_spec(SPEC, "s")
    run = _run(code_repo="git@host:lab/x.git", code_commit="f" * 40, code_dirty=True)
    tags = records.creation_tags(
        run, spec, key="lab:h:12", version="0.1", data_versions={"mnist": "md5"}
    )
    assert tags["hpcops.run_id"] == "12"
    assert tags["hpcops.key"] == "lab:h:12"
    assert tags["mlflow.user"] == tags["hpcops.owner"] == "ana"
    assert tags["hpcops.priority"] == "5"
    assert tags["hpcops.git.commit"] == tags["mlflow.source.git.commit"] == "f" * 40
    assert tags["hpcops.git.dirty"] == "true"
    assert tags["hpcops.data.mnist"] == "md5"
    assert tags["paper"] == "neurips"
    assert "hpcops.rerun_of" not in tags


def test_every_key_the_daemon_records_is_its_own() -> None:
    """A relayed job's key of one of these names is not copied (relay.collect): the set is
    records.daemon_owned, and nothing the daemon logs on a run's record may fall outside it."""
    from hpcops.store import Attempt

    spec = parse_spec(SPEC, "s")
    run = _run(
        code_repo="git@host:lab/x.git", code_commit="f" * 40, code_dirty=True,
        code_checkout="snap", rerun_of_mlflow="a" * 32, rerun_of_run=3, sweep_id=1,
        sweep_index=0, pipeline_id=2, pipeline_step="train", slurm_job_id="99",
        partition="gpu", exit_code=3, signal=0, elapsed_s=42, total_cpu_s=40.5,
        max_rss_bytes=1, alloc_cpus=2, alloc_gpus=1, slurm_state="FAILED", reason="x",
    )  # fmt: skip
    attempt = Attempt(
        run_id=12, number=1, slurm_job_id="98", state=RunState.TIMEOUT, started_at=1.0,
        ended_at=2.0, exit_code=0, elapsed_s=1, reason="TIMEOUT",
    )  # fmt: skip
    created = records.creation_tags(
        run, spec, key="k", version="0.1", data_versions={"mnist": "md5"}, parent_run_id="p"
    )
    closing, attempted = records.closing_batch(run, end_ms=1), records.attempt_batch(attempt)
    keys = {k for k in created if k not in spec.tags}
    keys |= set(records.submission_tags(run, cluster="hpc", mode="relay"))
    keys |= {m.key for m in closing.metrics + attempted.metrics}
    keys |= set(closing.tags) | set(attempted.tags)
    assert {"slurm.exit_code", "slurm.state", "mlflow.source.git.commit"} <= keys
    assert [k for k in sorted(keys) if not records.daemon_owned(k)] == []
    mine = ("loss", "note", "mlflow.note.content", "mlflow.source.name", "mlflow.source.type")
    assert not any(records.daemon_owned(k) for k in mine)


def test_instance_key_differs_per_home(tmp_path: Path) -> None:
    a = records.instance_key("lab", tmp_path / "a", 1)
    assert a == records.instance_key("lab", tmp_path / "a", 1)
    assert a != records.instance_key("lab", tmp_path / "b", 1)
    assert a.endswith(":1")


def test_closing_batch_is_one_batch_of_slurm_figures() -> None:
    run = _run(
        state="FAILED",
        exit_code=3,
        signal=0,
        elapsed_s=42,
        total_cpu_s=40.5,
        max_rss_bytes=1 << 20,
        alloc_cpus=2,
        alloc_gpus=0,
        slurm_state="FAILED",
        slurm_job_id="99",
        reason="FAILED, exit 3:0",
    )
    batch = records.closing_batch(run, end_ms=5000)
    assert {m.key: m.value for m in batch.metrics} == {
        "slurm.elapsed_s": 42.0,
        "slurm.cpu_time_s": 40.5,
        "slurm.max_rss_bytes": float(1 << 20),
        "slurm.exit_code": 3.0,
        "slurm.alloc_cpus": 2.0,
        "slurm.alloc_gpus": 0.0,
    }
    assert all(m.timestamp_ms == 5000 for m in batch.metrics)
    assert batch.tags["slurm.exit_code"] == "3:0"
    assert batch.tags["hpcops.state"] == "FAILED"
    assert len(split_batch(batch)) == 1


def test_figures_slurm_did_not_report_are_left_out() -> None:
    batch = records.closing_batch(_run(state="CANCELLED"), end_ms=1)
    assert batch.metrics == []
    assert batch.tags["slurm.state"] == "CANCELLED"


def test_batches_are_cut_to_mlflows_limits() -> None:
    metrics = [MetricPoint("m", float(i), i, i) for i in range(2500)]
    params = {f"p{i}": "v" for i in range(150)}
    parts = split_batch(Batch(metrics=metrics, params=params))
    assert all(len(m) + len(p) + len(t) <= 1000 and len(p) <= 100 for m, p, t in parts)
    assert sum(len(m) for m, _, _ in parts) == 2500
    assert sum(len(p) for _, p, _ in parts) == 150
    assert split_batch(Batch()) == []


def test_a_million_points_are_cut_in_order() -> None:
    """A relay pass may hold many points: each batch is sliced out, not the rest copied."""
    metrics = [MetricPoint("m", 0.0, i, i) for i in range(997)] * 1003  # 1M, cheap to make
    parts = split_batch(Batch(metrics=metrics, params={f"p{i}": "v" for i in range(150)}))
    assert [len(m) + len(p) for m, p, _ in parts[:3]] == [1000, 1000, 1000]
    sent = [point for m, _, _ in parts for point in m]
    assert len(sent) == len(metrics) and all(map(operator.is_, sent, metrics))


def test_ui_url_only_for_a_server() -> None:
    assert (
        records.ui_url("http://mlflow:5000/", "3", "ab")
        == "http://mlflow:5000/#/experiments/3/runs/ab"
    )
    assert records.ui_url("sqlite:////home/x/mlflow.db", "3", "ab") is None
    assert records.ui_url("http://mlflow:5000", None, None) is None


def test_cluster_name_from_slurm_conf() -> None:
    text = "# ClusterName=commented\nSlurmctldHost=ctl\nclustername = hpc-1\n"
    assert records.cluster_name(text) == "hpc-1"
    assert records.cluster_name("SlurmctldHost=ctl\n") is None


# --- relay --------------------------------------------------------------------------------------


def test_metric_lines_only_whole_ones() -> None:
    data = b"1000 0.5 0\n1001 nan 1\ngarbage\n1002 0.75 2 ds digest\n1003 0.8"
    points, used = relay.parse_metric_lines(data)
    assert [(ts, step) for ts, _, step in points] == [(1000, 0), (1001, 1), (1002, 2)]
    assert points[0][1] == 0.5 and points[2][1] == 0.75
    assert used == data.rfind(b"\n") + 1


def test_a_pass_takes_at_most_its_points_and_the_next_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`0 0` lines are 4 bytes each: a pass bounded only in bytes held millions of points."""
    monkeypatch.setattr(relay, "_PASS_MAX_POINTS", 1000)
    run_dir = PurePath("0/abc")
    (tmp_path / run_dir / "metrics").mkdir(parents=True)
    (tmp_path / run_dir / "metrics" / "a").write_bytes(b"0 0\n" * 700)
    (tmp_path / run_dir / "metrics" / "b").write_bytes(b"0 1\n" * 700)
    first = relay.collect(tmp_path, run_dir, {}, final=False)
    assert len(first.batch.metrics) == 1000
    second = relay.collect(tmp_path, run_dir, first.cursors, final=False)
    assert len(second.batch.metrics) == 400
    assert (
        sorted(m.value for m in first.batch.metrics + second.batch.metrics)
        == [0.0] * 700 + [1.0] * 700
    )


def test_relay_reads_what_a_real_job_logs_into_a_file_store(tmp_path: Path) -> None:
    """The job's side is MLflow's own client, configured by the environment hpcops gives."""
    import mlflow
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    store = relay.prepare(tmp_path / "relay", run_name="digits", user="ana")
    assert relay.prepare(tmp_path / "relay", run_name="digits", user="ana") == store
    env = dict(relay.job_env(store))
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "relay").as_uri()

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    client.log_param(env["MLFLOW_RUN_ID"], "lr", "0.1")
    client.log_metric(env["MLFLOW_RUN_ID"], "loss", 0.5, timestamp=1000, step=1)
    client.log_metric(env["MLFLOW_RUN_ID"], "eval/acc", 0.9, timestamp=1001, step=1)
    client.set_tag(env["MLFLOW_RUN_ID"], "note", "first")
    client.set_tag(env["MLFLOW_RUN_ID"], "hpcops.owner", "mallory")  # hpcops' own: not copied
    artifact = tmp_path / "model.txt"
    artifact.write_text("weights")
    client.log_artifact(env["MLFLOW_RUN_ID"], str(artifact), "model")
    assert mlflow.get_tracking_uri()  # the module is the user's, unchanged

    root = tmp_path / "relay"
    run_dir = store.run_dir.relative_to(root)
    first = relay.collect(root, run_dir, {}, final=False)
    assert {(m.key, m.value, m.step, m.timestamp_ms) for m in first.batch.metrics} == {
        ("loss", 0.5, 1, 1000),
        ("eval/acc", 0.9, 1, 1001),
    }
    assert first.batch.params == {"lr": "0.1"}
    assert first.batch.tags == {"note": "first"}
    assert [(a.path.name, a.directory) for a in first.artifacts] == [("model.txt", "model")]

    client.log_metric(env["MLFLOW_RUN_ID"], "loss", 0.25, timestamp=2000, step=2)
    uploaded = {a.cursor: a.signature for a in first.artifacts}  # kept once the server took it
    second = relay.collect(root, run_dir, {**first.cursors, **uploaded}, final=False)
    assert [(m.key, m.value, m.step) for m in second.batch.metrics] == [("loss", 0.25, 2)]
    assert not second.batch.params and not second.batch.tags and not second.artifacts


# --- rerun ------------------------------------------------------------------------------------


def test_rerun_overrides_keep_everything_else() -> None:
    data = apply_overrides(
        SPEC, parse_assignments(["params.lr=1", "params.epochs=5", "resources.mem=2G"])
    )
    assert data["params"] == {"lr": 1.0, "epochs": 5, "fast": True, "opt": "adam"}
    assert data["resources"] == {"mem": "2G"}
    assert data["command"] == "python train.py"


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.01", 0.01), ("3", 3), ("true", True), ("adam", "adam"), ("1e-3", 0.001), ("", "")],
)
def test_set_values_read_like_yaml(text: str, value: object) -> None:
    assert typed_value(text) == value


@pytest.mark.parametrize(
    "item", ["command=rm -rf /", "workdir=/tmp", "params.lr", "params.=1", "template=x"]
)
def test_rerun_refuses_what_it_may_not_change(item: str) -> None:
    with pytest.raises(InvalidInput, match=r"KEY=VALUE|a rerun may set"):
        parse_assignments([item])


# --- config and script ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("tracking: {tracking_uri: 'http://u:pw@mlflow:5000'}", "must not carry credentials"),
        ("tracking: {tracking_uri: 'ftp://x'}", "http:// or https://"),
        ("tracking: {tracking_uri: 'http://x/$(id)'}", "must not hold"),
        ("tracking: {mode: direct}", "tracking.mode direct needs"),
        ("tracking: {relay_root: scratch/relay}", "absolute"),
        ("tracking: {mod: relay}", "did you mean 'mode'"),
    ],
)
def test_bad_tracking_config_names_the_setting(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("$", r"\$")):
        parse_config(text, "cfg.yaml")


def test_tracking_modes() -> None:
    home = Path("/home/lab/.hpcops")
    default = parse_config("", "c").tracking
    assert default.uri_in(home) == "sqlite:////home/lab/.hpcops/mlflow.db"
    assert default.mode_for(home) == "relay"
    server = parse_config("tracking: {tracking_uri: 'http://mlflow:5000/'}", "c").tracking
    assert server.tracking_uri == "http://mlflow:5000"
    assert server.mode_for(home) == "direct"


def test_script_exports_the_mlflow_run_and_drops_inherited_settings(
    make_context: ContextFactory, tmp_path: Path
) -> None:
    spec = parse_spec(SPEC, "s")
    env = (("MLFLOW_TRACKING_URI", "http://mlflow:5000"), ("MLFLOW_RUN_ID", "ab" * 16))
    script = render_script(spec, make_context(tmp_path, mlflow_env=env))
    unset = script.index("compgen -e MLFLOW_")
    assert unset < script.index("export MLFLOW_TRACKING_URI=http://mlflow:5000")
    assert f"export MLFLOW_RUN_ID={'ab' * 16}" in script
    untracked = render_script(spec, make_context(tmp_path))
    assert "MLFLOW" not in untracked


def test_only_mlflow_variables_reach_the_job_context(make_context: ContextFactory) -> None:
    with pytest.raises(ValueError, match="not an MLFLOW_ variable"):
        make_context(Path("/x"), mlflow_env=(("PATH", "/evil"),))


def test_clients_are_built_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow imports its store modules while a client and its store are first built: two
    threads doing it at once (the tracking thread, the API thread's rerun) could see a module
    half initialised ("partially initialized module")."""
    import mlflow.tracking

    building: list[int] = [0]
    most: list[int] = [0]

    def build() -> None:
        building[0] += 1
        most[0] = max(most[0], building[0])
        time.sleep(0.05)  # where MLflow's imports run
        building[0] -= 1

    class Client:
        def __init__(self, tracking_uri: str) -> None:
            build()
            self._tracking_client = self

        @property
        def store(self) -> Any:
            build()
            return object()

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", Client)
    threads = [
        threading.Thread(target=TrackingServer, args=(f"http://mlflow-{i}:5000",)) for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1

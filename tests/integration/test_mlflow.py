"""Every run recorded in MLflow: a real `mlflow server` on loopback, real Slurm jobs, the real
example training (scikit-learn) logging through the plain MLflow API."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Daemon, running_daemon
from mlflow_server import MlflowServer

EXAMPLES = REPO / "configs" / "examples"
PYTHON = sys.executable  # the repo's .venv: scikit-learn and an MLflow client


def _client(server: MlflowServer) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(server.uri)


def _daemon(cluster: None, server: MlflowServer, **tracking: Any) -> Iterator[Daemon]:
    # A daemon started with MLflow settings of its own in its environment: the jobs must not
    # inherit them through sbatch.
    yield from running_daemon(
        env={"MLFLOW_TRACKING_TOKEN": "daemon-secret", "MLFLOW_TRACKING_URI": "http://wrong:1"},
        tracking={"tracking_uri": server.uri, "relay_interval_s": 1.0, **tracking},
    )


_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "UNKNOWN"}


@pytest.fixture
def direct(cluster: None, server: MlflowServer) -> Iterator[Daemon]:
    yield from _daemon(cluster, server)


@pytest.fixture
def relayed(cluster: None, server: MlflowServer) -> Iterator[Daemon]:
    yield from _daemon(cluster, server, mode="relay")


def training_spec(directory: Path, *, epochs: int = 4, seed: int = 7, after: str = "") -> Path:
    """The example training, with its MLflow environment printed first (for the env checks)."""
    name = f"digits-{uuid.uuid4().hex[:8]}"
    spec = {
        "name": name,
        "experiment": "hpcops-integration",
        "command": f"env | grep '^MLFLOW_' | sort\n{PYTHON} {EXAMPLES / 'train_digits.py'}{after}",
        "workdir": str(directory),
        "params": {"lr": 0.01, "epochs": epochs, "seed": seed, "alpha": 0.0001},
        "resources": {"mem": "1G", "time": "00:10:00"},
        "tags": {"purpose": "test"},
    }
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def plain_spec(directory: Path, command: str) -> Path:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    path = directory / f"{name}.yaml"
    path.write_text(
        json.dumps({"name": name, "experiment": "hpcops-integration", "command": command})
    )
    return path


def wait_recorded(daemon: Daemon, run: int, timeout: float = 90) -> dict[str, Any]:
    """show --json once nothing is owed to the MLflow record any more."""
    deadline = time.monotonic() + timeout
    while True:
        data = daemon.show(run)
        if data["mlflow_run_id"] and not data["tracking_pending"]:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(
                f"run {run}'s record still owes {data['tracking_pending']}: {data}"
            )
        time.sleep(0.5)


def artifacts(client: Any, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_training_run_is_recorded_with_everything(
    direct: Daemon, server: MlflowServer, tmp_path: Path
) -> None:
    run = direct.submit(training_spec(tmp_path))
    ended = direct.wait_ended(run, timeout=180)
    assert ended["state"] == "COMPLETED", ended
    data = wait_recorded(direct, run)
    mlflow_id = data["mlflow_run_id"]
    assert data["mlflow_url"] == (
        f"{server.uri}/#/experiments/{data['mlflow_experiment_id']}/runs/{mlflow_id}"
    )
    assert mlflow_id in direct.cli("show", str(run), check=True).stdout

    client = _client(server)
    record = client.get_run(mlflow_id)
    assert record.info.status == "FINISHED"
    assert record.data.params == {"lr": "0.01", "epochs": "4", "seed": "7", "alpha": "0.0001"}
    tags = record.data.tags
    assert tags["hpcops.run_id"] == str(run)
    assert tags["hpcops.owner"] == tags["mlflow.user"] == ended["owner"]
    assert tags["hpcops.slurm_job_id"] == ended["slurm_job_id"]
    assert tags["hpcops.partition"] == "cpu"
    assert tags["hpcops.spec_hash"] == data["spec_hash"]
    assert tags["hpcops.tracking_mode"] == "direct"
    assert tags["hpcops.cluster"]
    assert tags["hpcops.version"]
    assert tags["purpose"] == "test"  # the spec's own tags
    assert tags["slurm.state"] == "COMPLETED" and tags["slurm.exit_code"] == "0:0"
    # The user's own metrics, every epoch, as the script logged them.
    accuracy = history(client, mlflow_id, "accuracy")
    assert [step for step, _ in accuracy] == [1, 2, 3, 4]
    assert 0.5 < accuracy[-1][1] <= 1.0
    # Slurm's accounting, as metrics.
    metrics = record.data.metrics
    assert metrics["slurm.elapsed_s"] == ended["elapsed_s"]
    assert metrics["slurm.max_rss_bytes"] == ended["max_rss_bytes"] > 0
    assert metrics["slurm.exit_code"] == 0 and metrics["slurm.alloc_cpus"] >= 1
    assert "slurm.alloc_gpus" in metrics and "slurm.cpu_time_s" in metrics
    files = artifacts(client, mlflow_id)
    assert {
        "hpcops/spec.yaml",
        "hpcops/job.sbatch",
        "hpcops/stdout.log",
        "hpcops/stderr.log",
        "model/model.pkl",
    } <= files
    script = Path(client.download_artifacts(mlflow_id, "hpcops/job.sbatch", str(tmp_path)))
    assert f"export MLFLOW_RUN_ID={mlflow_id}" in script.read_text()
    stdout = Path(client.download_artifacts(mlflow_id, "hpcops/stdout.log", str(tmp_path)))
    text = stdout.read_text()
    # The job saw the run hpcops made, and none of the daemon's own MLflow settings.
    assert f"MLFLOW_RUN_ID={mlflow_id}" in text
    assert f"MLFLOW_TRACKING_URI={server.uri}" in text
    assert "daemon-secret" not in text and "MLFLOW_HTTP_REQUEST" not in text
    assert "daemon-secret" not in script.read_text()
    assert "test accuracy" in text


def test_failing_job_ends_failed_with_stderr_and_cancelled_one_killed(
    direct: Daemon, server: MlflowServer, tmp_path: Path
) -> None:
    failing = direct.submit(plain_spec(tmp_path, "echo 'ValueError: bad shard 7' >&2; exit 3"))
    sleeping = direct.submit(plain_spec(tmp_path, "sleep 300"))
    direct.wait_state(sleeping, {"RUNNING"})
    direct.cli("cancel", str(sleeping), check=True)
    assert direct.wait_ended(failing)["state"] == "FAILED"
    assert direct.wait_ended(sleeping)["state"] == "CANCELLED"
    client = _client(server)

    failed = client.get_run(wait_recorded(direct, failing)["mlflow_run_id"])
    assert failed.info.status == "FAILED"
    assert failed.data.tags["slurm.exit_code"] == "3:0"
    assert failed.data.metrics["slurm.exit_code"] == 3
    stderr = client.download_artifacts(failed.info.run_id, "hpcops/stderr.log", str(tmp_path))
    assert "ValueError: bad shard 7" in Path(stderr).read_text()

    killed = client.get_run(wait_recorded(direct, sleeping)["mlflow_run_id"])
    assert killed.info.status == "KILLED"
    assert killed.data.tags["hpcops.state"] == "CANCELLED"
    assert killed.data.tags["slurm.state"].startswith("CANCELLED")


def test_relay_record_matches_direct_logging(
    direct: Daemon, relayed: Daemon, server: MlflowServer, tmp_path: Path
) -> None:
    direct_run = direct.submit(training_spec(tmp_path, epochs=5))
    relay_run = relayed.submit(training_spec(tmp_path, epochs=5))
    assert relayed.wait_ended(relay_run, timeout=180)["state"] == "COMPLETED"
    assert direct.wait_ended(direct_run, timeout=180)["state"] == "COMPLETED"
    relay_data = wait_recorded(relayed, relay_run)
    direct_data = wait_recorded(direct, direct_run)
    client = _client(server)
    got = client.get_run(relay_data["mlflow_run_id"])
    want = client.get_run(direct_data["mlflow_run_id"])

    # The job's environment named only the file store on scratch, never the server.
    stdout = (Path(relay_data["run_dir"]) / "stdout.log").read_text()
    env_lines = [line for line in stdout.splitlines() if line.startswith("MLFLOW_")]
    uri = next(line for line in env_lines if line.startswith("MLFLOW_TRACKING_URI="))
    assert uri == f"MLFLOW_TRACKING_URI=file://{relay_data['mlflow_relay_dir']}"
    assert not any(server.uri in line or "wrong" in line for line in env_lines), env_lines
    assert relay_data["mlflow_relay_dir"].startswith(relay_data["run_dir"])

    assert got.info.status == want.info.status == "FINISHED"
    assert got.data.params == want.data.params
    user_keys = {k for k in want.data.metrics if not k.startswith("slurm.")}
    assert user_keys == {"accuracy", "train_accuracy"}
    assert set(got.data.metrics) == set(want.data.metrics)
    for key in sorted(user_keys):
        assert history(client, got.info.run_id, key) == history(client, want.info.run_id, key)
    assert got.data.tags["hpcops.tracking_mode"] == "relay"
    assert "model/model.pkl" in artifacts(client, got.info.run_id)
    assert {"hpcops/stdout.log", "hpcops/job.sbatch"} <= artifacts(client, got.info.run_id)


def test_record_completed_when_the_server_is_back(
    direct: Daemon, server: MlflowServer, tmp_path: Path
) -> None:
    # The job logs while the server is up, then outlives it.
    run = direct.submit(training_spec(tmp_path, epochs=3, after="\nsleep 8"))
    deadline = time.monotonic() + 120
    client = _client(server)
    mlflow_id = None
    while time.monotonic() < deadline:
        mlflow_id = direct.show(run)["mlflow_run_id"]
        # Its last request is the model's upload, after the third epoch: stop the server only
        # then, or the job's own MLflow client retries for minutes (a busy machine lost it).
        if (
            mlflow_id
            and len(history(client, mlflow_id, "accuracy")) == 3
            and "model/model.pkl" in artifacts(client, mlflow_id)
        ):
            break
        time.sleep(0.5)
    assert mlflow_id is not None
    server.stop()
    try:
        ended = direct.wait_ended(run, timeout=120)
        assert ended["state"] == "COMPLETED"
        time.sleep(3)  # the tracking thread tries, fails and backs off
        owed = direct.show(run)
        assert owed["tracking_pending"] == ["close"], owed
        assert owed["tracking_error"], owed
        status = direct.json("daemon", "status")
        assert status["slurm"]["reachable"]  # a tracking outage is not a Slurm outage
    finally:
        server.start()
    data = wait_recorded(direct, run, timeout=120)
    record = _client(server).get_run(data["mlflow_run_id"])
    assert record.info.status == "FINISHED"
    assert record.data.metrics["slurm.elapsed_s"] == ended["elapsed_s"]
    assert [s for s, _ in history(_client(server), mlflow_id, "accuracy")] == [1, 2, 3]
    assert "hpcops/stdout.log" in artifacts(_client(server), mlflow_id)


def test_rerun_reproduces_the_metric_and_links_both_runs(
    direct: Daemon, server: MlflowServer, tmp_path: Path
) -> None:
    first = direct.submit(training_spec(tmp_path, epochs=3, seed=11))
    assert direct.wait_ended(first, timeout=180)["state"] == "COMPLETED"
    original = wait_recorded(direct, first)["mlflow_run_id"]

    again = direct.json("rerun", str(first))
    by_mlflow_id = direct.json("rerun", original, "--set", "params.seed=12")
    assert again["rerun_of_mlflow"] == by_mlflow_id["rerun_of_mlflow"] == original
    for run in (again["id"], by_mlflow_id["id"]):
        assert direct.wait_ended(run, timeout=180)["state"] == "COMPLETED"
    client = _client(server)
    same = client.get_run(wait_recorded(direct, again["id"])["mlflow_run_id"])
    other = client.get_run(wait_recorded(direct, by_mlflow_id["id"])["mlflow_run_id"])
    first_record = client.get_run(original)

    assert same.data.params == first_record.data.params
    assert same.data.metrics["accuracy"] == first_record.data.metrics["accuracy"]
    assert history(client, same.info.run_id, "accuracy") == history(client, original, "accuracy")
    assert other.data.params == {**first_record.data.params, "seed": "12"}
    # Linked both ways.
    assert same.data.tags["hpcops.rerun_of"] == original
    assert same.data.tags["hpcops.rerun_of_run"] == str(first)
    assert first_record.data.tags[f"hpcops.rerun_by.{same.info.run_id}"] == str(again["id"])
    assert first_record.data.tags[f"hpcops.rerun_by.{other.info.run_id}"] == str(by_mlflow_id["id"])


def test_rerun_refuses_bad_input_and_changes_nothing(direct: Daemon, tmp_path: Path) -> None:
    run = direct.submit(plain_spec(tmp_path, "true"))
    before = [r["id"] for r in direct.json("ls", "--all")]
    for args, needle in (
        (("rerun", str(run), "--set", "command=rm -rf /"), "a rerun may set"),
        (("rerun", str(run), "--set", "params.lr"), "KEY=VALUE"),
        (("rerun", str(run), "--set", "resources.cpus_per_task=0"), "resources.cpus_per_task"),
        (("rerun", "not-a-run"), "neither an hpcops run id"),
    ):
        proc = direct.cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr, (args, proc.stderr)
    assert direct.cli("rerun", "999999").returncode == 4
    assert [r["id"] for r in direct.json("ls", "--all")] == before


def test_sweep_parent_with_nested_points_and_the_best_point(
    server: MlflowServer, tmp_path: Path
) -> None:
    """A sweep's records on a real server: the Sweep and its point runs built through the
    Store (the engine's part is tested elsewhere), the daemon's tracker run in-process, the
    jobs' metrics logged with the plain MLflow client as a direct-mode job does. A crash right
    after the parent is made on the server must not make a second one."""
    from hpcops.config import parse_config
    from hpcops.states import RunState
    from hpcops.store import Run, Store, Sweep
    from hpcops.tracking.server import TrackingServer
    from hpcops.tracking.worker import Tracker

    experiment = f"sweep-{uuid.uuid4().hex[:8]}"
    points = [{"lr": lr, "seed": 1} for lr in (0.1, 0.03, 0.01)]
    home = tmp_path / "home"
    home.mkdir()
    store = Store(home / "hpcops.db", track=True)
    config = parse_config(
        f"lab: t\nrun_root: {tmp_path / 'runs'}\ntracking: {{tracking_uri: '{server.uri}'}}\n",
        "c.yaml",
    )
    now = time.time()
    spec = (
        f"name: resnet-lr\nexperiment: {experiment}\ncommand: python train.py\n"
        "params: {epochs: 3}\nsweep:\n  list: " + json.dumps(points) + "\n"
        "  objective: {metric: val_accuracy, mode: max}\n"
    )
    row = Sweep(
        name="resnet-lr",
        experiment=experiment,
        owner="ana",
        owner_uid=1000,
        spec_yaml=spec,
        kind="list",
        n_points=3,
        points_json=json.dumps(points),
        objective_metric="val_accuracy",
        objective_mode="max",
        created_at=now,
        updated_at=now,
    )
    point_runs = [
        Run(
            name=f"resnet-lr[{i}]",
            experiment=experiment,
            owner="ana",
            owner_uid=1000,
            state=RunState.QUEUED,
            created_at=now,
            updated_at=now,
            spec_hash="h",
            sweep_index=i,
            spec_yaml=f"name: resnet-lr\nexperiment: {experiment}\ncommand: python train.py\n"
            f"params: {json.dumps({'epochs': 3, **p})}\n",
        )
        for i, p in enumerate(points)
    ]
    sweep, runs = store.add_sweep(row, point_runs, actor="ana")
    assert sweep.id is not None

    class Killed(BaseException):
        pass

    class CrashAfterParent(TrackingServer):
        def create_run(self, *args: Any, **kwargs: Any) -> Any:
            created = super().create_run(*args, **kwargs)
            if kwargs["tags"].get("hpcops.kind") == "sweep":
                raise Killed  # kill -9 after the server made it, before the daemon stored it
            return created

    def drain(tracker: Tracker) -> None:
        for _ in range(20):
            tracker.step()
            if not store.tracking_due(time.time()):
                return
        raise AssertionError(store.tracking_due(time.time()))

    crashing = Tracker(store, config, home, server_factory=lambda uri, _: CrashAfterParent(uri))
    with pytest.raises(Killed):
        crashing.step()
    assert store.get_sweep(sweep.id).mlflow_run_id is None
    tracker = Tracker(store, config, home)  # the daemon again
    before = len(server.requests())
    drain(tracker)
    created = server.requests()[before:]
    parent_id = store.get_sweep(sweep.id).mlflow_run_id
    assert parent_id is not None

    client = _client(server)
    ids = [r.id for r in runs if r.id is not None]
    for run_id, values in zip(ids, ([0.5, 0.8], [0.9, 0.85], [0.99]), strict=True):
        mlflow_id = store.get(run_id).mlflow_run_id
        for step, value in enumerate(values, start=1):  # the job's own logging
            client.log_metric(mlflow_id, "val_accuracy", value, step=step)
    for run_id, state in zip(ids, ("COMPLETED", "COMPLETED", "FAILED"), strict=True):
        for step in (RunState.SUBMITTING, RunState.PENDING, RunState.RUNNING):
            store.transition(run_id, step, actor="daemon", slurm_job_id=f"{run_id}00")
        store.transition(run_id, RunState(state), actor="daemon", ended_at=time.time())
    before = len(server.requests())
    drain(tracker)
    closed = server.requests()[before:]

    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`hpcops.kind` = 'sweep'")
    assert [p.info.run_id for p in parents] == [parent_id]  # one parent, crash or not
    parent = parents[0]
    assert parent.info.run_name == "resnet-lr" and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.points"] == "3"
    assert parent.data.params["sweep.objective"] == "val_accuracy max"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sorted(c.info.run_name for c in children) == [f"resnet-lr[{i}]" for i in range(3)]
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED", "FINISHED"]
    # The latest val_accuracy of each: 0.85 beats 0.8; the failed point's 0.99 is not ranked.
    best = ids[1]
    assert parent.data.tags["hpcops.best_run"] == str(best)
    assert json.loads(parent.data.tags["hpcops.best_point"]) == points[1]
    assert parent.data.tags["hpcops.best_mlflow_run"] == store.get(best).mlflow_run_id
    assert parent.data.metrics["best_val_accuracy"] == 0.85
    assert [store.get(i).objective for i in ids] == [0.8, 0.85, 0.99]
    stored = store.get_sweep(sweep.id)
    assert (stored.best_run_id, stored.best_value) == (best, 0.85)
    assert stored.closed_at is not None
    assert {"hpcops/sweep.yaml", "hpcops/points.json"} <= artifacts(client, parent_id)

    # What the sweep costs the server: the parent found again (search, params, sweep.yaml,
    # points.json) and 3 points' records (create_run, params, status, spec.yaml); then per
    # point its job id (submitted), its close (figures, status, the objective read back) and
    # the best point on the parent; and the parent's end.
    def verbs(lines: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in lines:
            method, path = line.split()[:2]
            verb = f"{method} {path.split('/artifacts/')[-1] if 'artifacts' in path else path}"
            counts[verb.split("?")[0]] = counts.get(verb.split("?")[0], 0) + 1
        return counts

    print(f"\nsweep requests, creation: {len(created)} {verbs(created)}")
    print(f"sweep requests, following and closing: {len(closed)} {verbs(closed)}")
    assert verbs(closed)["GET /api/2.0/mlflow/runs/get"] == 3  # one objective read per point

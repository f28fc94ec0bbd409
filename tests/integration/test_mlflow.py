"""Every run recorded in MLflow: a real `mlflow server` on loopback, real Slurm jobs, the real
example training (scikit-learn) logging through the plain MLflow API."""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Daemon, running_daemon
from mlflow_server import MlflowServer, free_port

EXAMPLES = REPO / "configs" / "examples"
PYTHON = sys.executable  # the repo's .venv: scikit-learn and an MLflow client


@pytest.fixture(scope="module")
def server() -> Iterator[MlflowServer]:
    srv = MlflowServer(Path("/tmp") / f"hpcops-mlflow-{uuid.uuid4().hex[:8]}", free_port())
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.state_dir, ignore_errors=True)


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

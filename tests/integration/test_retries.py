"""Runs that survive the cluster (issue 14): a time limit, a preemption, a lost node and a
crashed daemon each leave one hpcops run, its attempts told apart, and one MLflow record.

Everything goes through the CLI as a user would; Slurm is checked with its own commands (sacct:
one job id per attempt, `sacct --duplicates` for Slurm's own requeues, since 22.05's sacct has no
Restarts column) and MLflow with its client against a real server.

Slurm timing on the dev cluster (measured with `sbatch --time=1 --signal=B:USR1@N` jobs that
print when USR1 and TERM arrive, and `sacct -o ElapsedRaw`): slurmctld looks at time limits on a
30 s timer. A 1-minute job gets TERM at the first look after 60 s (elapsed 68, 77, 84, 85 s
seen), KILL KillWait=5 s later (OverTimeLimit=0); the warning signal comes at the first look
where at most before_s + 30 s are left (with before_s=10: 24, 38, 47 s after the start; in the
test 10 and 30 s before the limit), so at least before_s before it, and up to 30 s earlier than
asked.

The tests are ordered: the lost node first, because taking the node down ends every job on it;
then the long TIMEOUT run is started (a module fixture) so that its three walltimes overlap the
short tests, and checked last.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, running_daemon, sacct_rows_named, slurm, wait_for, write_spec
from mlflow_server import MlflowServer

PYTHON = sys.executable  # the repo's .venv: the MLflow client
JOB = Path(__file__).with_name("retry_job.py")

# The checkpointed training: 5 steps fit in each 1-minute walltime, 15 are needed.
CHUNK = 5
TARGET = 3 * CHUNK
BEFORE_S = 10


# --- harness -------------------------------------------------------------------------------


def _retrying(server: MlflowServer, **config: Any) -> Iterator[Daemon]:
    yield from running_daemon(
        "hpcops-retry", tracking={"tracking_uri": server.uri, "relay_interval_s": 1.0}, **config
    )


@pytest.fixture
def daemon(cluster: None, server: MlflowServer) -> Iterator[Daemon]:
    yield from _retrying(server)


def client(server: MlflowServer) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(server.uri)


def spec(directory: Path, name: str, command: str, **extra: Any) -> Path:
    """A spec with a name and an MLflow experiment of its own (a record is counted in it)."""
    return write_spec(
        directory, name, command, experiment=f"retries-{uuid.uuid4().hex[:8]}", **extra
    )


def training(events: Path, target: int, mode: str) -> str:
    """The command running retry_job.py: exec, so the forwarded signal reaches Python itself."""
    args = [PYTHON, str(JOB), str(events), str(target), mode, "--chunk", str(CHUNK)]
    return "exec " + shlex.join(args)


def events(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r["event"] == kind]


def steps(path: Path) -> list[int]:
    return [int(e["i"]) for e in events(path, "step")]


def attempts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """show --json's attempts (number, slurm_job_id, state, ..., restarts, reason)."""
    rows: list[dict[str, Any]] = data["attempts"]
    return rows


def sacct_allocations(name: str, at_least: int, timeout: float = 30) -> list[dict[str, str]]:
    """Every job Slurm's accounting holds under this job name, oldest first, once at least
    `at_least` have their final state (slurmdbd lags a second or two behind the job's end);
    then one more look, to catch a late duplicate."""

    def look() -> list[dict[str, str]]:
        rows = sacct_rows_named(name)
        return sorted(rows, key=lambda r: int(r["job_id"].split("_")[0]))

    def settled() -> list[dict[str, str]] | None:
        rows = look()
        ended = [r for r in rows if r["state"].split()[0] not in {"PENDING", "RUNNING"}]
        return rows if len(ended) >= at_least else None

    wait_for(settled, timeout, f"{at_least} ended jobs named {name} in sacct")
    time.sleep(2)
    return look()


def incarnations(job_id: str) -> list[str]:
    """The states of each time Slurm ran this job id (`--duplicates`: a requeue is a new row
    under the same id; 22.05's sacct has no Restarts column)."""
    out = slurm(
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        "--duplicates",
        f"--jobs={job_id}",
        "--format=JobID,State",
    )
    return [line.split("|")[1].split()[0] for line in out.splitlines()]


def node_down(node: str) -> bool:
    state = slurm("sinfo", "--noheader", f"--nodes={node}", "--format=%T")
    return any(word in state for word in ("down", "drain", "fail"))


def state_word(row: dict[str, str]) -> str:
    return row["state"].split()[0]


def epoch(sacct_time: str) -> float:
    return time.mktime(time.strptime(sacct_time, "%Y-%m-%dT%H:%M:%S"))


def wait_recorded(d: Daemon, run: int, timeout: float = 90) -> dict[str, Any]:
    """show --json once nothing is owed to the MLflow record any more."""

    seen: list[dict[str, Any]] = []

    def recorded() -> dict[str, Any] | None:
        seen[:] = [d.show(run)]
        data = seen[0]
        return data if data["mlflow_run_id"] and not data["tracking_pending"] else None

    try:
        result: dict[str, Any] = wait_for(recorded, timeout, f"run {run}'s MLflow record")
    except AssertionError as e:
        owed = {k: seen[0].get(k) for k in ("tracking_pending", "tracking_error")} if seen else {}
        raise AssertionError(f"{e}; still owed: {owed}") from None
    return result


def one_record(server: MlflowServer, d: Daemon, run: int) -> Any:
    """The run's MLflow record, asserted to be the only one in its experiment."""
    data = wait_recorded(d, run)
    mlflow = client(server)
    experiment = mlflow.get_experiment_by_name(data["experiment"])
    records = mlflow.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in records] == [data["mlflow_run_id"]], (
        "one MLflow record across the attempts",
        [(r.info.run_id, r.info.status, r.data.tags.get("hpcops.run_id")) for r in records],
    )
    return mlflow.get_run(data["mlflow_run_id"])


def metric_steps(server: MlflowServer, mlflow_run_id: str, key: str = "count") -> list[int]:
    return sorted(m.step for m in client(server).get_metric_history(mlflow_run_id, key))


def assert_attempts_match_sacct(
    data: dict[str, Any], jobs: list[dict[str, str]], states: list[str]
) -> None:
    shown = attempts(data)
    assert [a["number"] for a in shown] == list(range(1, len(states) + 1)), shown
    assert [a["state"] for a in shown] == states, shown
    assert [a["slurm_job_id"] for a in shown] == [j["job_id"] for j in jobs], (shown, jobs)
    assert [state_word(j) for j in jobs] == states, jobs
    assert data["slurm_job_id"] == jobs[-1]["job_id"]


# --- a lost node -------------------------------------------------------------------------


@pytest.mark.exclusive
def test_a_lost_node_starts_a_new_attempt_that_completes(
    daemon: Daemon, server: MlflowServer, tmp_path: Path
) -> None:
    # --no-requeue: Slurm does not take the job back itself, so the lost node ends the attempt
    # NODE_FAIL and hpcops starts the next one (with requeue it would be a restart: see the
    # preemption test). This ends every job on the node, not only ours: the cluster has one.
    log = tmp_path / "events.jsonl"
    run = daemon.submit(
        spec(
            tmp_path,
            "lostnode",
            training(log, 12, "steady"),
            resources={"time": "00:05:00", "mem": "1G"},
            extra_directives=["--no-requeue"],
            retry={"max_attempts": 2, "on": ["NODE_FAIL"]},
        )
    )
    wait_for(lambda: max(steps(log), default=-1) >= 2, 120, "the job's third step")
    job = daemon.show(run)["slurm_job_id"]
    node = slurm("squeue", "--noheader", f"--jobs={job}", "--format=%N").strip()
    assert node, f"job {job} is on no node"
    slurm("scontrol", "update", f"nodename={node}", "state=down", "reason=hpcops-test_retries")
    try:
        wait_for(lambda: incarnations(job) == ["NODE_FAIL"], 60, f"job {job} ended NODE_FAIL")
    finally:
        # ReturnToService=2 brings the node back by itself once slurmd answers (seen within a
        # second here); resume it if it is still down, and see it usable either way.
        if node_down(node):
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
        wait_for(lambda: not node_down(node), 60, f"node {node} back up")
    data = daemon.wait_ended(run, timeout=180)
    assert data["state"] == "COMPLETED", data
    jobs = sacct_allocations(data["name"], at_least=2)
    assert_attempts_match_sacct(data, jobs, ["NODE_FAIL", "COMPLETED"])
    assert attempts(data)[0]["restarts"] == 0
    starts = events(log, "start")
    assert [s["attempt"] for s in starts] == ["1", "2"], starts
    assert starts[1]["resume_at"] >= 2, "the second attempt resumed from the checkpoint"
    assert starts[0]["checkpoint_dir"] == starts[1]["checkpoint_dir"]
    assert sorted(set(steps(log))) == list(range(12))
    record = one_record(server, daemon, run)
    assert record.info.status == "FINISHED"
    assert {s["mlflow_run_id"] for s in starts} == {record.info.run_id}
    assert metric_steps(server, record.info.run_id)[-1] == 11


# --- the long one, started here to overlap the short tests; checked last -----------------


@dataclass
class Checkpointed:
    daemon: Daemon
    log: Path
    run: int | None
    error: str | None


@pytest.fixture(scope="module")
def checkpointed(
    cluster: None, server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Checkpointed]:
    directory = tmp_path_factory.mktemp("checkpointed")
    log = directory / "events.jsonl"
    for d in _retrying(server):
        started = Checkpointed(d, log, None, None)
        proc = d.cli(
            "submit",
            str(
                spec(
                    directory,
                    "checkpointed",
                    training(log, TARGET, "chunk"),
                    resources={"time": "1", "mem": "1G"},
                    checkpoint={"signal": "USR1", "before_s": BEFORE_S},
                    retry={"max_attempts": 4, "on": ["TIMEOUT"]},
                )
            ),
            "--json",
        )
        if proc.returncode == 0:
            started.run = int(json.loads(proc.stdout)["id"])
        else:
            started.error = f"submit exited {proc.returncode}: {proc.stderr}"
        yield started


# --- attempts that run out, and a retry by hand ---------------------------------------------


@pytest.mark.usefixtures("checkpointed")
def test_attempts_run_out_then_a_retry_by_hand_completes_in_the_same_record(
    daemon: Daemon, server: MlflowServer, tmp_path: Path
) -> None:
    command = 'test -e "$HPCOPS_CHECKPOINT_DIR/fixed" || { echo not yet >&2; exit 3; }; echo fixed'
    run = daemon.submit(
        spec(tmp_path, "runsout", command, retry={"max_attempts": 2, "on": ["FAILED"]})
    )
    data = daemon.wait_ended(run, timeout=120)
    assert data["state"] == "FAILED" and data["exit_code"] == 3, data
    assert re.search(r"\b2 attempts\b", data["reason"] or ""), data["reason"]
    jobs = sacct_allocations(data["name"], at_least=2)
    assert_attempts_match_sacct(data, jobs, ["FAILED", "FAILED"])
    assert [j["exit_code"] for j in jobs] == ["3:0", "3:0"]
    mlflow_run_id = data["mlflow_run_id"]

    # The user fixes what failed, in the checkpoint directory every attempt shares, and tries
    # once more by hand: a third attempt of the same run, in the same record.
    checkpoint = Path(data["run_dir"]) / "checkpoint"
    assert checkpoint.is_dir(), checkpoint
    (checkpoint / "fixed").touch()
    retried = daemon.json("retry", str(run))
    assert retried["id"] == run
    data = daemon.wait_ended(run, timeout=120)
    assert data["state"] == "COMPLETED", data
    jobs = sacct_allocations(data["name"], at_least=3)
    assert_attempts_match_sacct(data, jobs, ["FAILED", "FAILED", "COMPLETED"])
    assert "fixed" in daemon.cli("logs", str(run), check=True).stdout
    # The record closed FAILED went back to RUNNING for the third attempt, and is FINISHED.
    record = one_record(server, daemon, run)
    assert record.info.run_id == mlflow_run_id
    assert record.info.status == "FINISHED"


@pytest.mark.usefixtures("checkpointed")
def test_a_run_failing_at_once_stops_before_its_attempts_run_out(
    daemon: Daemon, tmp_path: Path
) -> None:
    # Two attempts in a row end FAILED within a minute of their start: the third is not made.
    run = daemon.submit(
        spec(tmp_path, "fastfail", "exit 3", retry={"max_attempts": 4, "on": ["FAILED"]})
    )
    data = daemon.wait_ended(run, timeout=120)
    assert data["state"] == "FAILED", data
    assert re.search(r"\b2 attempts\b", data["reason"] or ""), data["reason"]
    jobs = sacct_allocations(data["name"], at_least=2)
    assert_attempts_match_sacct(data, jobs, ["FAILED", "FAILED"])


# --- kill -9 of the daemon between two attempts ---------------------------------------------


@pytest.fixture
def crashable(cluster: None, server: MlflowServer) -> Iterator[Daemon]:
    # A claim whose sbatch never ran is submitted again after submit_grace_s (before_sbatch).
    yield from _retrying(server, slurm={"submit_grace_s": 5})


@pytest.mark.usefixtures("checkpointed")
@pytest.mark.parametrize("crash", ["before_sbatch", "after_sbatch", "down_across_the_end"])
def test_kill9_between_attempts_starts_each_attempt_once(
    crashable: Daemon, tmp_path: Path, crash: str
) -> None:
    daemon = crashable
    # Attempt 1 fails once the test opens its gate; attempt 2 succeeds. The daemon dies with
    # SIGKILL just before or just after attempt 2's sbatch (HPCOPS_FAULT), or is killed while
    # attempt 1 runs and stays down until it ended.
    gate = tmp_path / "gate"
    command = (
        'echo "attempt=$HPCOPS_ATTEMPT"\n'
        'if [ "$HPCOPS_ATTEMPT" = 1 ]; then\n'
        f"  for i in $(seq 600); do [ -e {shlex.quote(str(gate))} ] && break; sleep 0.1; done\n"
        "  exit 3\n"
        "fi\n"
        "echo ok\n"
    )
    run = daemon.submit(
        spec(tmp_path, "crash", command, retry={"max_attempts": 2, "on": ["FAILED"]})
    )
    first = daemon.wait_state(run, {"RUNNING"})["slurm_job_id"]
    if crash == "down_across_the_end":
        daemon.kill9()
        (daemon.home / "daemon.pid").unlink()
        gate.touch()
        wait_for(lambda: incarnations(first) == ["FAILED"], 60, f"job {first} ended")
    else:
        daemon.stop()
        daemon.start(HPCOPS_FAULT=crash)
        pid = daemon.pid()
        gate.touch()
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 90, f"fault point {crash}")
        (daemon.home / "daemon.pid").unlink()
    daemon.start()  # no fault this time
    data = daemon.wait_ended(run, timeout=150)
    assert data["state"] == "COMPLETED", data
    jobs = sacct_allocations(data["name"], at_least=2)
    assert_attempts_match_sacct(data, jobs, ["FAILED", "COMPLETED"])
    assert jobs[0]["job_id"] == first
    assert "attempt=2" in daemon.cli("logs", str(run), check=True).stdout


# --- preemption ----------------------------------------------------------------------------


@pytest.mark.usefixtures("checkpointed")
@pytest.mark.exclusive
def test_a_preempted_run_is_requeued_and_completes_in_one_record(
    daemon: Daemon, server: MlflowServer, tmp_path: Path
) -> None:
    # PreemptMode=REQUEUE: Slurm takes the job back and queues the same job id again, which is
    # a restart of the attempt, not a new one. The run holds all 4 GPUs and the preemptor asks
    # for them, so that only our job has to go (a CPU preemptor would take other tests' jobs).
    log = tmp_path / "events.jsonl"
    run = daemon.submit(
        spec(
            tmp_path,
            "preempted",
            training(log, 12, "steady"),
            resources={"partition": "gpu", "gpus": 4, "qos": "low", "time": "00:05:00"},
            retry={"max_attempts": 2, "on": ["PREEMPTED"]},
        )
    )
    wait_for(lambda: max(steps(log), default=-1) >= 2, 120, "the job's third step")
    job = daemon.show(run)["slurm_job_id"]
    preemptor = slurm(
        "sbatch",
        "--parsable",
        "--account=lab",
        "--partition=gpu",
        "--qos=high",
        "--gres=gpu:4",
        "--cpus-per-task=1",
        "--mem=100M",
        "--time=1",
        f"--job-name=preemptor-{uuid.uuid4().hex[:6]}",
        "--output=/dev/null",
        "--wrap=sleep 2",
    ).strip()
    try:

        def requeued() -> bool:
            out = slurm("squeue", "--noheader", f"--jobs={job}", "--format=%T %r")
            return out.split() == ["PENDING", "BeginTime"]

        wait_for(requeued, 60, f"job {job} preempted and queued again")
        # A requeued job is eligible again only after about 121 s (docs/notes-slurm.md).
        slurm("scontrol", "update", f"jobid={job}", "starttime=now")
        data = daemon.wait_ended(run, timeout=180)
    finally:
        subprocess.run(["scancel", preemptor], check=False)
    assert data["state"] == "COMPLETED", data
    jobs = sacct_allocations(data["name"], at_least=1)
    assert [j["job_id"] for j in jobs] == [job], "a requeue keeps the job id"
    assert incarnations(job) == ["PREEMPTED", "COMPLETED"]
    shown = attempts(data)
    assert len(shown) == 1 and shown[0]["slurm_job_id"] == job, shown
    assert shown[0]["restarts"] == 1 and shown[0]["state"] == "COMPLETED", shown
    starts = events(log, "start")
    assert [s["restart"] for s in starts] == [0, 1], starts
    assert starts[1]["resume_at"] >= 2, "the requeued job resumed from the checkpoint"
    assert sorted(set(steps(log))) == list(range(12))
    record = one_record(server, daemon, run)
    assert record.info.status == "FINISHED"
    assert sorted(set(metric_steps(server, record.info.run_id))) == list(range(12))


# --- training past the walltime limit (started by the fixture above) --------------------------


# Exclusive: each attempt must work its chunk (the MLflow import, 5 logged steps) before the
# earliest the signal can come; on a machine loaded by parallel tests that can take longer.
@pytest.mark.exclusive
def test_timeout_with_checkpoint_completes_on_the_third_attempt(
    checkpointed: Checkpointed, server: MlflowServer
) -> None:
    assert checkpointed.run is not None, checkpointed.error
    d, run, log = checkpointed.daemon, checkpointed.run, checkpointed.log
    # Fail fast: the first attempt must have saved its chunk on the signal.
    wait_for(lambda: events(log, "checkpoint"), 150, "the first checkpoint (USR1)")
    data = d.wait_ended(run, timeout=420)
    assert data["state"] == "COMPLETED", data
    jobs = sacct_allocations(data["name"], at_least=3)
    assert_attempts_match_sacct(data, jobs, ["TIMEOUT", "TIMEOUT", "COMPLETED"])
    assert all(a["restarts"] == 0 for a in attempts(data))

    starts = events(log, "start")
    assert [(s["attempt"], s["resume_at"]) for s in starts] == [
        ("1", 0),
        ("2", CHUNK),
        ("3", 2 * CHUNK),
    ], starts
    assert [s["job"] for s in starts] == [j["job_id"] for j in jobs]
    assert len({s["checkpoint_dir"] for s in starts}) == 1
    # Each TIMEOUT attempt got USR1 at least before_s before its limit, and saved on it.
    checkpoints = events(log, "checkpoint")
    assert [c["counter"] for c in checkpoints] == [CHUNK, 2 * CHUNK], checkpoints
    for saved, job in zip(checkpoints, jobs[:2], strict=True):
        left = epoch(job["start"]) + 60 - saved["signal_at"]
        print(f"job {job['job_id']}: USR1 {left:.0f} s before the limit, ran {job['elapsed']} s")
        assert left >= BEFORE_S - 2, (saved, job)  # sacct's Start is to the second
    assert steps(log) == list(range(TARGET)), "each step once, in order, over the attempts"

    record = one_record(server, d, run)
    assert record.info.status == "FINISHED"
    assert {s["mlflow_run_id"] for s in starts} == {record.info.run_id}
    history = client(server).get_metric_history(record.info.run_id, "count")
    assert sorted((m.step, m.value) for m in history) == [(i, float(i)) for i in range(TARGET)]

"""Pipelines on the real cluster (issue 15), with a real `mlflow server` and its Model Registry:
steps start in order, a sweep step's best point reaches the step after it, a model is promoted
only when it is better, a failed step ends the steps after it without leaving anything pending,
a parent whose Slurm job was purged long ago still holds its child back, and a kill -9 between a
parent's end and its child's release releases the child once.

Pipelines are submitted through the CLI; what happened is read from Slurm's accounting (sacct),
the daemon's database, and MLflow's client.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ACTIVE, Daemon, running_daemon, sacct_jobs_named, slurm, wait_for
from mlflow_server import MlflowServer
from scratch import scratch_dir

from hpcops.store import Store

JOB = Path(__file__).with_name("pipeline_job.py")
MODEL = "digits-classifier"


def _cmd(mode: str) -> str:
    return f"{sys.executable} {JOB} {mode}"


def _spec(name: str, mode: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "experiment": "pipelines",
        "command": _cmd(mode),
        "workdir": "/tmp",
        "resources": {"time": "00:05:00", "mem": "1G"},
        **extra,
    }


def _write_pipeline(
    steps: dict[str, dict[str, Any]], specs: dict[str, dict[str, Any]], name: str = "chain"
) -> tuple[Path, dict[str, str]]:
    """A pipeline file and its specs in a fresh folder; each spec's job name is unique (sacct
    is searched by name). Returns the file and each step's job name."""
    folder = scratch_dir("hpcops-pipe", mode=0o755)
    names: dict[str, str] = {}
    for step, spec in specs.items():
        names[step] = f"{spec['name']}-{uuid.uuid4().hex[:6]}"
        (folder / f"{step}.yaml").write_text(json.dumps({**spec, "name": names[step]}))
    definition = {
        "name": name,
        "steps": {k: ({"spec": f"{k}.yaml"} if k in specs else {}) | v for k, v in steps.items()},
    }
    path = folder / "pipeline.yaml"
    path.write_text(json.dumps(definition))
    return path, names


def _store(daemon: Daemon) -> Store:
    return Store(daemon.home / "hpcops.db")


def _submit(daemon: Daemon, path: Path) -> int:
    """Submit through the CLI; the new pipeline's id (the newest in the database)."""
    before = {p.id for p in _store(daemon).list_pipelines()}
    daemon.cli("submit", str(path), check=True)
    [new] = [p.id for p in _store(daemon).list_pipelines() if p.id not in before]
    assert new is not None
    return new


def _wait_ended(daemon: Daemon, pipeline_id: int, timeout: float = 240) -> str:
    def ended() -> str | None:
        return _store(daemon).get_pipeline(pipeline_id).outcome

    outcome: str = wait_for(ended, timeout, f"pipeline p{pipeline_id} to end")
    return outcome


def _runs(daemon: Daemon, pipeline_id: int) -> dict[str, list[Any]]:
    by_step: dict[str, list[Any]] = {}
    for run in _store(daemon).pipeline_runs(pipeline_id):
        by_step.setdefault(run.pipeline_step or "", []).append(run)
    return by_step


def _times(name: str, n: int = 1) -> list[tuple[datetime, datetime]]:
    rows = sacct_jobs_named(name, at_least=n)
    assert len(rows) == n, f"{name}: {len(rows)} jobs in Slurm's accounting, expected {n}"
    return [(datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"])) for r in rows]


@pytest.fixture
def tracked(cluster: None, server: MlflowServer) -> Iterator[Daemon]:
    yield from running_daemon(
        "hpcops-pipe",
        max_active=20,
        pending_window=20,
        tracking={"tracking_uri": server.uri, "mode": "direct"},
    )


@pytest.fixture
def untracked(cluster: None) -> Iterator[Daemon]:
    yield from running_daemon("hpcops-pipe", tracking={"enabled": False})


def _retrain(quality: float) -> tuple[Path, dict[str, str]]:
    grid = {
        "grid": {"lr": [0.1, 0.01], "seed": [1, 2]},
        "objective": {"metric": "accuracy", "mode": "max"},
    }
    return _write_pipeline(
        {
            "prepare": {},
            "train": {"after": ["prepare"]},
            "evaluate": {"after": ["train"], "inputs": {"candidate": "train.best"}},
            "promote": {
                "after": ["evaluate"],
                "register": {
                    "model": "evaluate",
                    "name": MODEL,
                    "if_better": {"metric": "test_accuracy", "mode": "max"},
                },
            },
        },
        {
            "prepare": _spec("prepare", "prepare"),
            "train": _spec("train", "train", sweep=grid),
            "evaluate": _spec("evaluate", "evaluate", params={"quality": quality}),
        },
        name="nightly-retrain",
    )


def test_prepare_then_a_sweep_then_evaluate_then_promote_only_when_better(
    tracked: Daemon, server: MlflowServer
) -> None:
    from mlflow.tracking import MlflowClient

    path, names = _retrain(quality=0.9)
    first = _submit(tracked, path)
    assert _wait_ended(tracked, first) == "COMPLETED"

    # The steps started in order: each after every job of the step before it ended.
    [(_, prepare_end)] = _times(names["prepare"])
    points = _times(names["train"], 4)
    [(evaluate_start, _)] = _times(names["evaluate"])
    assert all(start >= prepare_end for start, _ in points)
    assert evaluate_start >= max(end for _, end in points)

    # evaluate was given the sweep's best point (lr=0.1, seed=1 logs the best accuracy).
    runs = _runs(tracked, first)
    [evaluate] = runs["evaluate"]
    candidate = json.loads((Path(evaluate.run_dir) / "candidate.json").read_text())
    assert (candidate["lr"], candidate["seed"]) == (0.1, 1)

    client = MlflowClient(server.uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == evaluate.mlflow_run_id
    steps = {s.name: s for s in _store(tracked).pipeline_steps([first])[first]}
    assert steps["promote"].state == "COMPLETED", steps["promote"].reason

    # The pipeline is an MLflow parent run; each step's record (the sweep's parent) under it.
    pipeline = _store(tracked).get_pipeline(first)
    assert pipeline.mlflow_run_id
    nested = client.get_run(evaluate.mlflow_run_id).data.tags.get("mlflow.parentRunId")
    assert nested == pipeline.mlflow_run_id

    # A second firing with a worse model: a new version is registered, the alias stays.
    path2, _ = _retrain(quality=0.4)
    second = _submit(tracked, path2)
    assert _wait_ended(tracked, second) == "COMPLETED"
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert len(versions) == 2
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version
    steps2 = {s.name: s for s in _store(tracked).pipeline_steps([second])[second]}
    assert "kept" in (steps2["promote"].reason or ""), steps2["promote"].reason


def test_a_failed_step_cancels_the_steps_after_it_and_nothing_stays_pending(
    untracked: Daemon,
) -> None:
    path, names = _write_pipeline(
        {"prepare": {}, "train": {"after": ["prepare"]}, "report": {"after": ["train"]}},
        {
            "prepare": _spec("prepare", "fail"),
            "train": _spec("train", "prepare"),
            "report": _spec("report", "prepare"),
        },
    )
    pipeline_id = _submit(untracked, path)
    assert _wait_ended(untracked, pipeline_id, 120) == "FAILED"
    runs = _runs(untracked, pipeline_id)
    assert runs["prepare"][0].state == "FAILED"
    assert runs["train"][0].state == "CANCELLED"
    assert runs["train"][0].reason == "waits for prepare, which FAILED"
    assert runs["report"][0].reason == "waits for prepare (through train), which FAILED"
    # Never submitted, so nothing of theirs is pending in Slurm or in its accounting.
    for step in ("train", "report"):
        assert sacct_jobs_named(names[step]) == []
        assert slurm("squeue", "--noheader", f"--name={names[step]}").strip() == ""
    shown = untracked.cli("show", str(runs["train"][0].id), check=True).stdout
    assert "waits for prepare, which FAILED" in shown


@contextlib.contextmanager
def _min_job_age(seconds: int) -> Iterator[None]:
    """slurmctld forgets finished jobs after `seconds` (MinJobAge) for the block; the cluster's
    config is put back afterwards, whatever happens."""
    conf = Path(
        next(
            line.split("=", 1)[1].strip()
            for line in slurm("scontrol", "show", "config").splitlines()
            if line.startswith("SLURM_CONF")
        )
    )
    original = conf.read_text()
    conf.write_text(f"{original}\nMinJobAge={seconds}\n")
    try:
        slurm("scontrol", "reconfigure")
        yield
    finally:
        conf.write_text(original)
        slurm("scontrol", "reconfigure")


def _purged(job_id: str) -> bool:
    probe = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    return probe.returncode != 0


@pytest.mark.exclusive
def test_a_parent_purged_from_slurm_still_holds_its_child_until_it_completed(
    untracked: Daemon,
) -> None:
    path, names = _write_pipeline(
        {
            "good": {},
            "bad": {},
            "after-good": {"after": ["good"]},
            "after-bad": {"after": ["bad"]},
        },
        {
            "good": _spec("good", "prepare", command="sleep 4"),
            "bad": _spec("bad", "fail", command="sleep 4; exit 3"),
            "after-good": _spec("after-good", "prepare"),
            "after-bad": _spec("after-bad", "prepare"),
        },
    )
    with _min_job_age(2):
        pipeline_id = _submit(untracked, path)

        def parents_running() -> bool:
            runs = _runs(untracked, pipeline_id)
            return all(runs[s][0].state == "RUNNING" for s in ("good", "bad"))

        wait_for(parents_running, 60, "both parents running")
        runs = _runs(untracked, pipeline_id)
        jobs = [runs[s][0].slurm_job_id for s in ("good", "bad")]
        untracked.kill9()  # the daemon is away while the parents end and Slurm forgets them
        wait_for(lambda: all(_purged(j) for j in jobs), 120, "slurmctld to purge the parents")
        # What Slurm's own dependency would have done: an afterok on a purged job is dropped,
        # and the dependent job runs at once, after a parent that FAILED.
        baseline = slurm(
            "sbatch",
            "--parsable",
            "-A",
            "lab",
            "-p",
            "cpu",
            "-o",
            "/dev/null",
            f"--job-name={names['after-bad']}-afterok",
            f"--dependency=afterok:{jobs[1]}",
            "--wrap",
            "true",
        ).strip()
        wait_for(
            lambda: "COMPLETED" in slurm("sacct", "-n", "-X", "-j", baseline, "-o", "State"),
            60,
            "the afterok baseline to run",
        )
        (untracked.home / "daemon.pid").unlink(missing_ok=True)
        untracked.start()
        assert _wait_ended(untracked, pipeline_id, 120) == "FAILED"
    runs = _runs(untracked, pipeline_id)
    assert runs["after-good"][0].state == "COMPLETED"
    assert runs["after-bad"][0].state == "CANCELLED"
    assert runs["after-bad"][0].reason == "waits for bad, which FAILED"
    [(_, good_end)] = _times(names["good"])
    [(child_start, _)] = _times(names["after-good"])
    assert child_start >= good_end
    assert sacct_jobs_named(names["after-bad"]) == [], "the daemon never submitted it"


def test_kill_9_between_a_parents_end_and_its_childs_release_releases_it_once(
    untracked: Daemon,
) -> None:
    # The parent ends once the test opens its gate, after the daemon that is to die has started
    # (a fixed sleep could end before a loaded machine's test saw it running: CI saw that).
    gate = scratch_dir("hpcops-gate", mode=0o755) / "open"
    wait_for_gate = (
        f"for i in $(seq 1200); do [ -e {shlex.quote(str(gate))} ] && break; sleep 0.1; done"
    )
    path, names = _write_pipeline(
        {"parent": {}, "child": {"after": ["parent"]}},
        {
            "parent": _spec("parent", "prepare", command=wait_for_gate),
            "child": _spec("child", "prepare"),
        },
    )
    pipeline_id = _submit(untracked, path)
    wait_for(
        lambda: _runs(untracked, pipeline_id)["parent"][0].state == "RUNNING",
        60,
        "the parent running",
    )
    # The next daemon dies right after it opens a step: the child, once the parent has ended.
    untracked.stop()
    untracked.start(HPCOPS_FAULT="after_step_opened")
    pid = untracked.pid()
    gate.touch()
    # The parent's end is read from sacct (slurmdbd), which lags on a busy cluster.
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 150, "the daemon to die at the fault")
    runs = _runs(untracked, pipeline_id)
    assert runs["parent"][0].state == "COMPLETED"
    assert runs["child"][0].state == "QUEUED" and not runs["child"][0].slurm_job_id
    (untracked.home / "daemon.pid").unlink(missing_ok=True)
    untracked.start()
    assert _wait_ended(untracked, pipeline_id, 120) == "COMPLETED"
    assert len(sacct_jobs_named(names["child"], at_least=1)) == 1, "submitted exactly once"
    assert all(r.state not in ACTIVE for rs in _runs(untracked, pipeline_id).values() for r in rs)


def test_a_scheduled_pipeline_fires_the_whole_chain_once_per_firing(untracked: Daemon) -> None:
    path, names = _write_pipeline(
        {"prepare": {}, "train": {"after": ["prepare"]}},
        {"prepare": _spec("prepare", "prepare"), "train": _spec("train", "prepare")},
        name="weekly",
    )
    untracked.cli("schedule", "add", str(path), "--cron", "0 3 * * 1", check=True)
    fired = untracked.cli("schedule", "run-now", "weekly", check=True).stdout.strip()
    assert fired.startswith("p"), fired
    pipeline_id = int(fired[1:])
    # A second firing while the first pipeline is open is skipped (no overlap by default).
    again = untracked.cli("schedule", "run-now", "weekly")
    assert again.returncode == 1, again.stdout + again.stderr
    assert _wait_ended(untracked, pipeline_id, 120) == "COMPLETED"
    pipeline = _store(untracked).get_pipeline(pipeline_id)
    assert pipeline.schedule_id is not None and pipeline.firing_id is not None
    [(_, prepare_end)] = _times(names["prepare"])
    [(train_start, _)] = _times(names["train"])
    assert train_start >= prepare_end
    assert [p.id for p in _store(untracked).list_pipelines()] == [pipeline_id]

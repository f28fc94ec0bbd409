"""Sweeps on the real cluster (issue 13): one spec, many points, one Slurm job array, one MLflow
parent with a child per point, under the lab's queue, quotas and fair share, and safe across a
kill -9 of the daemon.

Members submit through the CLI as themselves; Slurm is checked with its own commands (sacct,
squeue) and MLflow with its client against a real server. Jobs take about a second.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from conftest import wait_for
from lab import LEAD, MEMBERS, SERVICE, Lab, new_lab
from mlflow_server import MlflowServer
from sweeplab import (
    ENDED,
    Point,
    assert_one_array,
    counts,
    daemon_pid,
    find_sweep,
    kill9,
    points,
    running_gpus,
    sacct_tasks,
    show,
    spec_name,
    squeue_ids,
    submit_sweep,
    sweep_row,
    sweep_spec,
    wait_dead,
    wait_ended,
    wait_points,
)

M1, M2 = MEMBERS
IN_SLURM = {"PENDING", "RUNNING"}
NO_TRACKING = {"tracking": {"enabled": False}}
# Every point of a small sweep released at once, so that it goes to Slurm as one array.
ONE_ARRAY = {"pending_window": 20, "max_active": 50}

MakeLab = Callable[[dict[str, Any]], Lab]


@pytest.fixture
def make_lab(cluster: None) -> Iterator[MakeLab]:
    """Lab daemons with the given config; afterwards each is stopped and whatever its specs'
    jobs left in Slurm is cancelled, by job id (never another test's jobs)."""
    made: list[Lab] = []

    def make(config: dict[str, Any]) -> Lab:
        lab = new_lab(config)
        made.append(lab)
        return lab

    yield make
    names = []
    for lab in made:
        lab.stop()
        specs = lab.home.parent / f"{lab.home.name}-specs"
        names += [path.stem for path in specs.glob("*.yaml")]
    live = squeue_ids(names)
    if live:
        subprocess.run(["scancel", *live], check=False)


def _tracked(server: MlflowServer) -> dict[str, Any]:
    # Relay: each task logs into its own point's file store, which the daemon copies.
    return {
        **ONE_ARRAY,
        "tracking": {"tracking_uri": server.uri, "mode": "relay", "relay_interval_s": 1.0},
    }


def _client(server: MlflowServer) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(server.uri)


def _children(client: Any, parent: Any) -> list[Any]:
    return list(
        client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=100,
        )
    )


def _mlflow_family(lab: Lab, ref: str, server: MlflowServer, n: int) -> tuple[Any, list[Any]]:
    """The sweep's MLflow parent and its n children, once every child has ended and the
    parent is closed."""
    client = _client(server)
    parent_id = wait_for(lambda: show(lab, M1, ref).get("mlflow_run_id"), 60, "the MLflow parent")

    def family() -> tuple[Any, list[Any]] | None:
        parent = client.get_run(parent_id)
        children = _children(client, parent)
        done = len(children) == n and all(c.info.status != "RUNNING" for c in children)
        return (parent, children) if done and parent.info.status != "RUNNING" else None

    found: tuple[Any, list[Any]] = wait_for(family, 120, f"{n} ended children and a closed parent")
    return found


# The score a point logs: distinct for every point of GRID, best (max) at lr=0.1, seed=3.
LRS, SEEDS = [0.1, 0.03, 0.01], [1, 2, 3]
GRID = {"lr": LRS, "seed": SEEDS}
BEST = {"lr": 0.1, "seed": 3}


def _score(params: dict[str, Any]) -> float:
    return float(params["lr"]) * 10 + float(params["seed"])


# The line `mlflow.log_metric("score", ...)` would append to the point's relay file store
# (MLflow's FileStore layout, hpcops/tracking/relay.py), written from the shell so that nine
# tasks do not start nine Pythons on the two-CPU dev VM.
GRID_JOB = """\
echo "point lr=$HPCOPS_PARAM_LR seed=$HPCOPS_PARAM_SEED"
score=$(awk "BEGIN { print $HPCOPS_PARAM_LR * 10 + $HPCOPS_PARAM_SEED }")
metrics="${MLFLOW_TRACKING_URI#file://}/0/$MLFLOW_RUN_ID/metrics"
mkdir -p "$metrics" && echo "$(date +%s%3N) $score 0" >> "$metrics/score"
"""


def test_a_3x3_grid_is_one_array_and_one_mlflow_parent_with_9_children(
    make_lab: MakeLab, server: MlflowServer
) -> None:
    lab = make_lab(_tracked(server))
    sweep = {"grid": GRID, "objective": {"metric": "score", "mode": "max"}}
    path = sweep_spec(lab, M1, "grid", GRID_JOB, sweep, params={"epochs": 2})
    name = spec_name(path)
    ref = submit_sweep(lab, M1, path)
    ended = wait_ended(lab, M1, ref, timeout=180)

    # Nine points, the grid's product, each COMPLETED with its own params (the spec's own
    # params kept), each run named after the spec and its index.
    assert [p.state for p in ended] == ["COMPLETED"] * 9, ended
    assert [p.index for p in ended] == list(range(9))
    # The grid's product in the keys' order, the last key varying fastest.
    assert [p.params for p in ended] == [
        {"lr": lr, "seed": seed} for lr, seed in itertools.product(LRS, SEEDS)
    ]
    for p in ended:
        run = lab.json(M1, "show", str(p.run))
        assert run["name"] == f"{name}[{p.index}]", run["name"]
        assert (run["sweep"], run["sweep_index"]) == (ref, p.index), run
        assert run["state"] == "COMPLETED" and run["exit_code"] == 0, run
        spec_params = yaml.safe_load(run["spec"])["params"]
        assert spec_params == {"epochs": 2, **p.params}, spec_params
        printed = lab.ok(M1, "logs", str(p.run)).split()
        assert printed[0] == "point", printed
        got = dict(item.split("=", 1) for item in printed[1:])
        assert float(got["lr"]) == p.params["lr"] and int(got["seed"]) == p.params["seed"], got
    assert counts(show(lab, M1, ref)) == {"COMPLETED": 9}

    # Slurm: ONE array job, tasks 0..8, each once, each the point of its index.
    tasks = assert_one_array(name, 9)
    array = tasks[0].array_id
    assert all(t.state == "COMPLETED" and t.exit_code == "0:0" for t in tasks), tasks
    assert {p.slurm_job_id for p in ended} == {f"{array}_{p.index}" for p in ended}
    assert all(p.slurm_job_id == f"{array}_{p.index}" for p in ended), ended

    # MLflow: a parent with 9 nested children, each with its point's params and score.
    best_run = next(p.run for p in ended if p.params == BEST)
    parent, children = _mlflow_family(lab, ref, server, 9)
    by_run = {c.data.tags["hpcops.run_id"]: c for c in children}
    assert set(by_run) == {str(p.run) for p in ended}
    for p in ended:
        child = by_run[str(p.run)]
        assert child.info.status == "FINISHED", child.info
        assert child.info.run_id == lab.json(M1, "show", str(p.run))["mlflow_run_id"]
        assert child.data.params["lr"] == str(p.params["lr"]), child.data.params
        assert child.data.params["seed"] == str(p.params["seed"])
        assert child.data.params["epochs"] == "2"
        assert child.data.metrics["score"] == pytest.approx(_score(p.params))
        assert child.data.tags["hpcops.slurm_job_id"] == p.slurm_job_id
    best_child = by_run[str(best_run)]
    for p in ended:
        tags = by_run[str(p.run)].data.tags
        assert (tags["hpcops.sweep_id"], tags["hpcops.sweep_index"]) == (ref[1:], str(p.index))
    # The parent: the sweep's definition, and the best point with its value.
    assert parent.info.status == "FINISHED", parent.info
    assert parent.data.tags["hpcops.kind"] == "sweep"
    assert parent.data.tags["hpcops.sweep_id"] == ref[1:]
    assert parent.data.params["sweep.kind"] == "grid" and parent.data.params["epochs"] == "2"
    assert parent.data.metrics["best_score"] == pytest.approx(_score(BEST)), parent.data.metrics
    assert parent.data.tags["hpcops.best_run"] == str(best_run), parent.data.tags
    assert parent.data.tags["hpcops.best_mlflow_run"] == best_child.info.run_id

    # Every point's objective read from its record: show sorts the points by it, best first,
    # and names the best point; ls too.
    shown = show(lab, M1, ref)
    assert shown["state"] == "COMPLETED" and shown["n_points"] == 9, shown
    assert [p["objective"] for p in shown["points"]] == pytest.approx(
        sorted((_score(p.params) for p in ended), reverse=True)
    ), shown["points"]
    assert shown["points"][0]["run_id"] == best_run, shown["points"][0]
    best = shown["best"]
    assert (best["run_id"], best["index"], best["params"]) == (best_run, 2, BEST), best
    assert best["value"] == pytest.approx(_score(BEST)), best
    row = sweep_row(lab, ref)  # ls: one row for the sweep, with its progress and best
    assert row["state"] == "COMPLETED" and counts(row) == {"COMPLETED": 9}, row
    assert row["best"]["run_id"] == best_run, row


FAILING_POINT = 4


def test_a_failing_point_ends_only_itself(make_lab: MakeLab, server: MlflowServer) -> None:
    lab = make_lab(_tracked(server))
    job = f'echo "x=$HPCOPS_PARAM_X"; [ "$HPCOPS_PARAM_X" != {FAILING_POINT} ] || exit 3'
    path = sweep_spec(lab, M1, "onefails", job, {"grid": {"x": list(range(9))}})
    ref = submit_sweep(lab, M1, path)
    ended = wait_ended(lab, M1, ref, timeout=180)

    states = {p.params["x"]: p.state for p in ended}
    assert states == {x: "FAILED" if x == FAILING_POINT else "COMPLETED" for x in range(9)}, states
    shown = show(lab, M1, ref)
    assert counts(shown) == {"COMPLETED": 8, "FAILED": 1}, shown
    assert shown["state"] == "FAILED", shown["state"]
    failed = next(p for p in ended if p.state == "FAILED")
    assert lab.json(M1, "show", str(failed.run))["exit_code"] == 3

    tasks = assert_one_array(spec_name(path), 9)
    by_task = {t.task: t for t in tasks}
    assert by_task[failed.index].state == "FAILED" and by_task[failed.index].exit_code == "3:0"
    assert all(t.state == "COMPLETED" for t in tasks if t.task != failed.index), tasks

    _, children = _mlflow_family(lab, ref, server, 9)
    status = {c.data.tags["hpcops.run_id"]: c.info.status for c in children}
    assert status == {str(p.run): "FAILED" if p.run == failed.run else "FINISHED" for p in ended}, (
        status
    )


RANDOM_SPACE = {"lr": {"loguniform": [1.0e-4, 1.0e-1]}, "depth": {"choice": [18, 34]}}


def test_a_seeded_random_search_draws_the_same_points_twice(make_lab: MakeLab) -> None:
    # Nothing is released: the points are what is under test, not Slurm.
    lab = make_lab({**NO_TRACKING, "quotas": {"lab": {"jobs": 0}}})
    seeded = {"random": {"samples": 6, "seed": 5, "space": RANDOM_SPACE}}
    drawn = [
        [p.params for p in points(show(lab, M1, submit_sweep(lab, M1, path)))]
        for path in (
            sweep_spec(lab, M1, "random-a", "true", seeded),
            sweep_spec(lab, M1, "random-b", "true", seeded),
        )
    ]
    assert drawn[0] == drawn[1], drawn
    assert len(drawn[0]) == 6
    for params in drawn[0]:
        assert 1.0e-4 <= params["lr"] <= 1.0e-1 and params["depth"] in (18, 34), params
    assert len({params["lr"] for params in drawn[0]}) == 6, "six different draws"

    # Without a seed, the sweep records the one it drew with: the same spec with that seed
    # draws the same points again.
    unseeded = {"random": {"samples": 6, "space": RANDOM_SPACE}}
    first = show(lab, M1, submit_sweep(lab, M1, sweep_spec(lab, M1, "random-c", "true", unseeded)))
    seed = first["seed"]
    assert isinstance(seed, int), first
    assert yaml.safe_load(first["spec"])["sweep"]["random"]["seed"] == seed, first["spec"]
    again = {"random": {"samples": 6, "seed": seed, "space": RANDOM_SPACE}}
    second = show(lab, M1, submit_sweep(lab, M1, sweep_spec(lab, M1, "random-d", "true", again)))
    assert [p.params for p in points(second)] == [p.params for p in points(first)]
    assert all(p.state == "QUEUED" for p in points(second))


@pytest.mark.exclusive
def test_a_gpu_sweep_never_holds_more_than_the_lab_gpu_quota(make_lab: MakeLab) -> None:
    lab = make_lab({**NO_TRACKING, **ONE_ARRAY, "quotas": {"lab": {"gpus": 2}}})
    path = sweep_spec(
        lab,
        M1,
        "gpus",
        "sleep 1",
        {"grid": {"i": list(range(10))}},
        resources={"partition": "gpu", "gpus": 1},
    )
    name = spec_name(path)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, running_gpus([name]))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ref = submit_sweep(lab, M1, path)
        ended = wait_ended(lab, M1, ref, timeout=240)
    finally:
        stop.set()
        watcher.join()
    assert [p.state for p in ended] == ["COMPLETED"] * 10, ended
    assert 1 <= peak <= 2, f"Slurm ran {peak} of the sweep's GPUs at once; the lab's quota is 2"
    assert sorted(t.task for t in sacct_tasks(name, at_least=10)) == list(range(10))


# Exclusive: a lab-wide jobs quota of 1, and every job in the lab's Slurm account counts
# against it (other tests' jobs too, as a member's job submitted by hand would).
@pytest.mark.exclusive
def test_a_sweep_and_single_runs_interleave_by_priority_then_fair_share(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(
        {
            **NO_TRACKING,
            "quotas": {"lab": {"jobs": 1}},
            # A short window: only this test's warm-up decides who used more.
            "fair_share": {"refresh_s": 10, "cpu_hour_weight": 1.0, "window_days": 0.01},
        }
    )
    warm = lab.submit(M1, "warmup", "sleep 3", resources={"cpus_per_task": 4})
    # 4 CPUs: on a cluster busy with other tests it may wait a while for them.
    lab.wait(lambda: lab.json(M1, "show", str(warm))["state"] == "COMPLETED", 180, "warm-up")

    def warmed() -> dict[str, float] | None:
        usage: dict[str, float] = lab.json(M1, "quota", "show")["fair_share_usage"]
        return usage if usage.get(M1, 0) > 0 else None

    usage = wait_for(warmed, 40, "usage of the warm-up job")
    assert usage[M1] > usage.get(M2, 0), f"{M2} must have used less than {M1}: {usage}"
    lab.ok(LEAD, "quota", "set", "lab", "jobs", "0")

    ref = submit_sweep(lab, M1, sweep_spec(lab, M1, "fair", "true", {"grid": {"i": [0, 1, 2]}}))
    ahead = lab.submit(M2, "ahead", "true")  # later, but M2 used less: before M1's points
    behind = lab.submit(M2, "behind", "true", priority=-1)  # lower priority: after them
    queued = points(show(lab, M1, ref))
    assert [p.state for p in queued] == ["QUEUED"] * 3

    lab.ok(LEAD, "quota", "set", "lab", "jobs", "1")
    wait_ended(lab, M1, ref, timeout=120)
    for run in (ahead, behind):
        lab.wait(lambda r=run: lab.json(M2, "show", str(r))["state"] in ENDED, 60, f"run {run}")
    order = [ahead, *(p.run for p in queued), behind]
    shown = {run: lab.json(SERVICE, "show", str(run)) for run in order}
    assert all(s["state"] == "COMPLETED" for s in shown.values()), shown
    # One at a time (a quota of one job): Slurm's job ids say in which order they went.
    job = {run: int(shown[run]["slurm_job_id"].split("_")[0]) for run in order}
    assert sorted(order, key=job.__getitem__) == order, job


def _in_slurm(ps: list[Point]) -> bool:
    return all(p.state in IN_SLURM for p in ps)


def test_cancel_one_point_then_the_whole_sweep(make_lab: MakeLab) -> None:
    lab = make_lab({**NO_TRACKING, **ONE_ARRAY})
    path = sweep_spec(lab, M1, "cancel", "sleep 120", {"grid": {"i": [0, 1, 2, 3]}})
    name = spec_name(path)
    ref = submit_sweep(lab, M1, path)
    started = wait_points(lab, M1, ref, _in_slurm, 60, "every point in Slurm")
    one = started[1]

    assert lab.cli(M2, "cancel", ref).returncode == 5, "another member's sweep"
    lab.ok(M1, "cancel", str(one.run))
    after = wait_points(
        lab, M1, ref, lambda ps: ps[1].state == "CANCELLED", 30, "the point cancelled"
    )
    assert [p.state in IN_SLURM for p in after] == [True, False, True, True], after
    lab.wait(lambda: one.slurm_job_id not in squeue_ids([name]), 30, "its task gone")
    left = set(squeue_ids([name]))
    assert {p.slurm_job_id for p in after if p.index != 1} <= left, left

    lab.ok(M1, "cancel", ref)
    final = wait_ended(lab, M1, ref, timeout=60)
    assert [p.state for p in final] == ["CANCELLED"] * 4, final
    assert counts(show(lab, M1, ref)) == {"CANCELLED": 4}
    lab.wait(lambda: squeue_ids([name]) == [], 30, "nothing of the sweep left in Slurm")
    # A task cancelled before it left the array's pending record has no row of its own in
    # Slurm 22.05's accounting; the others have one each, all cancelled, none run twice.
    tasks = sacct_tasks(name, at_least=3)
    assert sorted(t.task for t in tasks) in ([0, 2, 3], [0, 1, 2, 3]), tasks
    assert {t.state for t in tasks} == {"CANCELLED"}, tasks


def test_hold_a_sweep_then_release_it(make_lab: MakeLab) -> None:
    lab = make_lab({**NO_TRACKING, **ONE_ARRAY, "quotas": {"lab": {"jobs": 0}}})
    path = sweep_spec(lab, M1, "held", "true", {"grid": {"i": list(range(6))}})
    name = spec_name(path)
    ref = submit_sweep(lab, M1, path)
    queued = points(show(lab, M1, ref))
    lab.ok(M1, "hold", str(queued[0].run))  # one point, by its run id
    assert [p.state for p in points(show(lab, M1, ref))] == ["HELD"] + ["QUEUED"] * 5
    answer = lab.json(M1, "hold", ref)  # the sweep: the points still queued
    assert sorted(answer["affected"]) == [p.run for p in queued[1:]], answer
    held = points(show(lab, M1, ref))
    assert all(p.state == "HELD" for p in held), held
    assert show(lab, M1, ref)["state"] == "HELD"
    assert lab.cli(M2, "release", ref).returncode == 5, "another member's sweep"
    lab.ok(LEAD, "quota", "set", "lab", "jobs", "none")
    why = lab.json(M1, "why", str(held[0].run))["why"]
    assert "held" in why, why
    # Two squeue intervals (3 s each) with room in the quota: still nothing in Slurm.
    time.sleep(6)
    assert all(p.state == "HELD" and p.slurm_job_id is None for p in points(show(lab, M1, ref)))
    assert squeue_ids([name]) == []

    lab.ok(M1, "release", ref)
    ended = wait_ended(lab, M1, ref, timeout=90)
    assert [p.state for p in ended] == ["COMPLETED"] * 6, ended
    # Released together, by one request: one array, as when they were first queued.
    assert_one_array(name, 6)


def _crash_at(lab: Lab, fault: str, path: str) -> str:
    """Submit with a fault point armed; the sweep's s<N> once the daemon has killed itself there
    and a new one started. The daemon may die before it answers the submit."""
    lab.stop()
    lab.daemon_env = {"HPCOPS_FAULT": fault}
    lab.start()
    pid = daemon_pid(lab)
    lab.cli(M1, "submit", path)
    wait_dead(pid)
    (lab.home / "daemon.pid").unlink(missing_ok=True)
    lab.daemon_env = {}
    lab.start()
    return find_sweep(lab, spec_name(path))


def _history(lab: Lab, run: int) -> list[dict[str, Any]]:
    return lab.json(M1, "history", str(run))  # type: ignore[no-any-return]


def test_kill9_between_claim_and_sbatch_submits_the_array_once(make_lab: MakeLab) -> None:
    lab = make_lab({**NO_TRACKING, **ONE_ARRAY, "slurm": {"submit_grace_s": 5}})
    path = sweep_spec(lab, M1, "early", "echo ok", {"grid": {"i": [0, 1, 2, 3]}})
    ref = _crash_at(lab, "before_sbatch", path)
    ended = wait_ended(lab, M1, ref, timeout=120)
    assert [p.state for p in ended] == ["COMPLETED"] * 4, ended
    tasks = assert_one_array(spec_name(path), 4)
    assert {p.slurm_job_id for p in ended} == {f"{t.array_id}_{t.task}" for t in tasks}
    for p in ended:
        assert any("never reached Slurm" in e["reason"] for e in _history(lab, p.run)), p


def test_kill9_between_sbatch_and_commit_adopts_every_task(make_lab: MakeLab) -> None:
    lab = make_lab({**NO_TRACKING, **ONE_ARRAY})
    path = sweep_spec(lab, M1, "adopt", "sleep 2; echo ok", {"grid": {"i": [0, 1, 2, 3]}})
    ref = _crash_at(lab, "after_sbatch", path)
    ended = wait_ended(lab, M1, ref, timeout=120)
    assert [p.state for p in ended] == ["COMPLETED"] * 4, ended
    tasks = assert_one_array(spec_name(path), 4)
    assert all(p.slurm_job_id == f"{tasks[0].array_id}_{p.index}" for p in ended), ended
    for p in ended:
        assert any("adopted" in e["reason"] for e in _history(lab, p.run)), p
        assert lab.ok(M1, "logs", str(p.run)).strip() == "ok"


def test_kill9_while_tasks_run_follows_every_point(make_lab: MakeLab) -> None:
    lab = make_lab({**NO_TRACKING, **ONE_ARRAY})
    path = sweep_spec(lab, M1, "restart", "sleep 6; echo ok", {"grid": {"i": [0, 1, 2, 3]}})
    ref = submit_sweep(lab, M1, path)
    wait_points(lab, M1, ref, _in_slurm, 60, "every point in Slurm")
    kill9(lab)
    lab.start()
    ended = wait_ended(lab, M1, ref, timeout=120)
    assert [p.state for p in ended] == ["COMPLETED"] * 4, ended
    tasks = assert_one_array(spec_name(path), 4)
    assert {t.state for t in tasks} == {"COMPLETED"}, tasks
    for p in ended:
        assert lab.ok(M1, "logs", str(p.run)).strip() == "ok"

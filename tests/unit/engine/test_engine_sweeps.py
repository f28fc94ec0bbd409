"""Sweeps through the engine over the fake Slurm: points released together go in as ONE array,
each task runs its own point, the lab's policy applies to each point, and a crash at each fault
point loses no point and submits none twice."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from hpcops.rundir import RunDir

from .engine_harness import ALICE, BOB, EngineFactory, EngineHarness

GRID = {"grid": {"lr": [0.1, 0.03, 0.01], "seed": [1, 2, 3]}}
WIDE = {"pending_window": 50, "max_active": 50}


def _array_of(h: EngineHarness, run_ids: list[int]) -> str:
    arrays = {h.job_of(r).split("_")[0] for r in run_ids}
    assert len(arrays) == 1, f"points in several arrays: {arrays}"
    return arrays.pop()


def _finish_all(h: EngineHarness, array_id: str, exit_codes: dict[int, int] | None = None) -> None:
    for task in h.slurm.start_tasks(array_id):
        index = task.array_task or 0
        h.slurm.finish(task.job_id, (exit_codes or {}).get(index, 0))
    h.clock.advance(1)
    h.tick()


def test_a_grid_goes_to_slurm_as_one_array_and_each_task_runs_its_point(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE)
    sweep_id, points = h.submit_sweep("lr", params={"epochs": 30}, sweep=GRID)
    assert len(points) == 9
    assert [h.run(r).name for r in points] == [f"lr[{i}]" for i in range(9)]
    h.tick()
    assert h.slurm.calls["sbatch"] == 1, "one sbatch for the nine points"
    [sbatch] = [argv for argv in h.slurm.commands if argv[0] == "sbatch"]
    assert "--array=0-8" in sbatch
    array_id = _array_of(h, points)
    assert [h.job_of(r) for r in points] == [f"{array_id}_{i}" for i in range(9)]
    # Each point's own script, in its own run directory, with its own values.
    script = h.slurm.file(RunDir(Path(h.run(points[5]).run_dir)).script) or ""
    assert "export HPCOPS_PARAM_LR=0.03" in script and "export HPCOPS_PARAM_SEED=3" in script
    assert "export HPCOPS_PARAM_EPOCHS=30" in script
    _finish_all(h, array_id)
    assert {h.state(r) for r in points} == {"COMPLETED"}
    assert h.slurm.calls["sbatch"] == 1
    assert h.store.sweep_counts([sweep_id]) == {sweep_id: {"COMPLETED": 9}}


def test_a_failed_point_ends_only_that_point(make_engine: EngineFactory) -> None:
    h = make_engine(WIDE)
    _, points = h.submit_sweep("lr", sweep=GRID)
    h.tick()
    _finish_all(h, _array_of(h, points), exit_codes={4: 3})
    states = [h.state(r) for r in points]
    assert states[4] == "FAILED" and h.run(points[4]).exit_code == 3
    assert states[:4] + states[5:] == ["COMPLETED"] * 8


def test_the_pending_window_releases_a_sweep_in_arrays_of_what_fits(
    make_engine: EngineFactory,
) -> None:
    h = make_engine({"pending_window": 4, "max_active": 50})
    _, points = h.submit_sweep("lr", sweep=GRID)
    h.tick()
    first = [r for r in points if h.run(r).slurm_job_id]
    assert len(first) == 4 and h.slurm.calls["sbatch"] == 1
    h.slurm.start_tasks(_array_of(h, first))
    h.clock.advance(1)
    h.tick()  # the start markers: four running, the window has room for four more
    assert h.slurm.calls["sbatch"] == 2
    second = [r for r in points if h.run(r).slurm_job_id and r not in first]
    assert len(second) == 4 and _array_of(h, second) != _array_of(h, first)


def test_points_released_in_one_batch_go_in_as_one_array_while_a_tick_races(
    make_engine: EngineFactory,
) -> None:
    # `hpcops release s7` frees the points one by one, each waking the loop: the batch keeps
    # release from seeing only the first few (which went in as an array of their own).
    h = make_engine(WIDE)
    _, points = h.submit_sweep("lr", sweep=GRID)
    for run_id in points:
        h.hold(run_id)
    racing = threading.Thread(target=h.tick)
    with h.engine.batch():
        h.release_hold(points[0])
        racing.start()
        racing.join(0.3)
        assert racing.is_alive(), "the tick's release waits for the batch"
        for run_id in points[1:]:
            h.release_hold(run_id)
    racing.join(10)
    assert not racing.is_alive()
    assert h.slurm.calls["sbatch"] == 1
    _array_of(h, points)


def test_max_parallel_caps_the_sweep_and_throttles_the_array(make_engine: EngineFactory) -> None:
    h = make_engine(WIDE)
    _, points = h.submit_sweep("lr", sweep={**GRID, "max_parallel": 2})
    h.tick()
    [sbatch] = [argv for argv in h.slurm.commands if argv[0] == "sbatch"]
    assert "--array=0-1%2" in sbatch
    waiting = h.why(points[2])
    assert "max_parallel 2" in waiting, waiting


def test_a_lab_gpu_quota_throttles_the_array_in_slurm_itself(make_engine: EngineFactory) -> None:
    h = make_engine({**WIDE, "quotas": {"lab": {"gpus": 2}}})
    _, points = h.submit_sweep(
        "gpu", resources={"gpus": 1}, sweep={"list": [{"x": i} for i in range(6)]}
    )
    h.tick()
    [sbatch] = [argv for argv in h.slurm.commands if argv[0] == "sbatch"]
    option = next(a for a in sbatch if a.startswith("--array="))
    # Two released (the quota counts pending jobs too), and Slurm is told at most two at once.
    assert option == "--array=0-1%2"
    assert sum(1 for r in points if h.run(r).slurm_job_id) == 2


def test_points_with_other_resources_go_in_arrays_of_their_own(make_engine: EngineFactory) -> None:
    h = make_engine(WIDE)
    _, points = h.submit_sweep("mem", sweep={"grid": {"resources.mem": ["1G", "2G"], "x": [1, 2]}})
    h.tick()
    assert h.slurm.calls["sbatch"] == 2
    arrays = {h.job_of(r).split("_")[0] for r in points}
    assert len(arrays) == 2


def test_a_sweep_above_max_array_size_is_split_with_every_index_below_it(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE)
    h.slurm.max_array_size = 4
    _, points = h.submit_sweep("big", sweep={"list": [{"x": i} for i in range(10)]})
    h.tick()
    options = [
        a for argv in h.slurm.commands if argv[0] == "sbatch" for a in argv if "--array" in a
    ]
    assert options == ["--array=0-3", "--array=0-3", "--array=0-1"]
    assert h.slurm.calls["scontrol"] == 1, "MaxArraySize read once"
    assert len({h.job_of(r) for r in points}) == 10


def test_cancel_of_a_pending_point_and_then_of_the_rest(make_engine: EngineFactory) -> None:
    h = make_engine(WIDE)
    _, points = h.submit_sweep("lr", sweep=GRID)
    h.tick()
    h.cancel(points[3])
    h.run_for(10)
    # Slurm keeps no record of an array task cancelled while it pended: squeue alone says.
    assert h.state(points[3]) == "CANCELLED"
    assert [h.state(r) for r in points if r != points[3]] == ["PENDING"] * 8
    for r in points:
        if r != points[3]:
            h.cancel(r)
    h.run_for(10)
    assert {h.state(r) for r in points} == {"CANCELLED"}


def _crash_and_restart(h: EngineHarness, points: list[int]) -> None:
    h.crash_tick()
    assert {h.state(r) for r in points} == {"SUBMITTING"}
    assert len({h.run(r).token for r in points}) == 1, "one token for the array"
    h.restart()


def test_a_crash_after_sbatch_adopts_every_point_by_token_and_task(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE, fault="after_sbatch")
    _, points = h.submit_sweep("lr", sweep=GRID)
    _crash_and_restart(h, points)
    h.tick()
    array_id = _array_of(h, points)
    assert [h.job_of(r) for r in points] == [f"{array_id}_{i}" for i in range(9)]
    assert {h.state(r) for r in points} == {"PENDING"}
    _finish_all(h, array_id)
    assert {h.state(r) for r in points} == {"COMPLETED"}
    assert h.slurm.calls["sbatch"] == 1, "none submitted twice"


def test_a_crash_after_sbatch_adopts_points_that_ended_meanwhile(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE, fault="after_sbatch")
    _, points = h.submit_sweep("lr", sweep=GRID)
    h.crash_tick()
    [array_id] = {j.array_job_id for j in h.slurm.jobs.values() if j.array_job_id}
    for task in h.slurm.start_tasks(array_id, 3):
        h.slurm.finish(task.job_id, 0)
    h.clock.advance(30)
    h.restart()
    h.tick()
    assert [h.state(r) for r in points[:3]] == ["COMPLETED"] * 3
    assert [h.state(r) for r in points[3:]] == ["PENDING"] * 6
    assert h.slurm.calls["sbatch"] == 1


def test_a_crash_before_sbatch_queues_the_points_again_and_submits_them_once(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE, fault="before_sbatch")
    _, points = h.submit_sweep("lr", sweep=GRID)
    _crash_and_restart(h, points)
    assert h.slurm.calls["sbatch"] == 0
    h.run_for(200, every_s=5)  # past submit_grace_s: no job carries the token
    assert h.slurm.calls["sbatch"] == 1
    assert {h.state(r) for r in points} == {"PENDING"}
    assert all(h.run(r).attempt == 2 for r in points)


def test_a_random_search_records_its_seed_and_a_rerun_draws_the_same_points(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE)
    space: dict[str, Any] = {"lr": {"loguniform": [1.0e-4, 1.0e-1]}, "depth": {"choice": [18, 34]}}
    sweep_id, points = h.submit_sweep("rnd", sweep={"random": {"samples": 5, "space": space}})
    sweep = h.store.get_sweep(sweep_id)
    assert re.search(r"seed: \d+", sweep.spec_yaml), "the drawn seed is recorded"
    again, again_points = h.engine.rerun_sweep(sweep_id, ALICE)  # type: ignore[attr-defined]
    assert again.rerun_of_sweep == sweep_id
    assert again.points_json == sweep.points_json
    assert [r.spec_yaml for r in again_points] == [h.run(r).spec_yaml for r in points]


def test_a_rerun_point_is_a_new_run_of_the_same_point_of_the_same_sweep(
    make_engine: EngineFactory,
) -> None:
    h = make_engine(WIDE)
    sweep_id, points = h.submit_sweep("lr", sweep=GRID)
    h.tick()
    _finish_all(h, _array_of(h, points), exit_codes={2: 1})
    again = h.engine.rerun(points[2], {}, BOB)  # type: ignore[attr-defined]
    assert (again.sweep_id, again.sweep_index, again.name) == (sweep_id, 2, "lr[2]")
    assert again.owner == "bob" and again.rerun_of_run == points[2]
    h.tick()
    assert h.slurm.calls["sbatch"] == 2
    assert h.job_of(again.id).endswith("_2"), "the point keeps its task id"
    assert h.store.sweep_counts([sweep_id])[sweep_id] == {"COMPLETED": 8, "PENDING": 1}

"""Pipelines through the engine over the fake Slurm: a step is released only once every step it
waits for COMPLETED, its job finds what they left in its environment, a step that can never run
ends CANCELLED with the reason, and a crash between a parent's end and its child's release
releases the child once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpcops.errors import SpecError
from hpcops.rundir import RunDir

from .engine_harness import ALICE, EngineFactory, EngineHarness

CHAIN = {"prepare": {}, "train": {"after": ["prepare"]}, "evaluate": {"after": ["train"]}}
SPECS: dict[str, dict[str, Any]] = {"prepare": {}, "train": {}, "evaluate": {}}


def _finish(h: EngineHarness, run_id: int, exit_code: int = 0) -> None:
    """Release the run if it is not in Slurm yet, start its job, end it, and tick it home."""
    if not h.run(run_id).slurm_job_id:
        h.tick()
    job = h.job_of(run_id)
    h.clock.advance(1)
    h.slurm.start(job)
    h.clock.advance(1)
    h.slurm.finish(job, exit_code)
    h.clock.advance(1)
    h.tick()


def _script(h: EngineHarness, run_id: int) -> str:
    return h.slurm.file(RunDir(Path(h.run(run_id).run_dir)).script) or ""


def test_each_step_waits_for_the_one_before_it(make_engine: EngineFactory) -> None:
    h = make_engine()
    pipeline_id, runs = h.submit_pipeline(CHAIN, SPECS)
    [prepare], [train], [evaluate] = runs["prepare"], runs["train"], runs["evaluate"]
    h.tick()
    assert h.run(prepare).slurm_job_id and h.state(train) == h.state(evaluate) == "QUEUED"
    assert h.slurm.calls["sbatch"] == 1, "only the first step goes to Slurm"
    assert "waits for the steps before train" in h.why(train)
    h.run_for(60)  # time alone moves nothing on
    assert not h.run(train).slurm_job_id
    _finish(h, prepare)
    h.tick()
    assert h.run(train).slurm_job_id and not h.run(evaluate).slurm_job_id
    _finish(h, train)
    h.tick()
    _finish(h, evaluate)
    h.tick()
    assert [h.state(r) for r in (prepare, train, evaluate)] == ["COMPLETED"] * 3
    assert h.store.get_pipeline(pipeline_id).outcome == "COMPLETED"
    assert h.slurm.calls["sbatch"] == 3


def test_a_steps_job_gets_its_parents_run_dirs_and_the_pipelines_names(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    pipeline_id, runs = h.submit_pipeline(
        {"prep-data": {}, "train": {"after": ["prep-data"], "inputs": {"data": "prep-data.run"}}},
        {"prep-data": {}, "train": {}},
        name="nightly",
    )
    [prep], [train] = runs["prep-data"], runs["train"]
    _finish(h, prep)
    h.tick()
    script = _script(h, train)
    prep_dir = h.run(prep).run_dir
    assert f"export HPCOPS_AFTER_PREP_DATA_RUN_DIR={prep_dir}" in script
    assert f"export HPCOPS_INPUT_DATA_RUN_DIR={prep_dir}" in script
    assert f"export HPCOPS_INPUT_DATA_RUN={prep}" in script
    assert "export HPCOPS_PIPELINE=nightly" in script
    assert f"export HPCOPS_PIPELINE_ID=p{pipeline_id}" in script
    assert "export HPCOPS_STEP=train" in script
    # The first step waited for nothing: it knows its pipeline, and no parent.
    assert "HPCOPS_AFTER_" not in _script(h, prep)


def test_a_failed_step_cancels_every_step_after_it_with_the_reason(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    steps = {**CHAIN, "report": {"after": ["prepare"]}}
    pipeline_id, runs = h.submit_pipeline(steps, {**SPECS, "report": {}})
    [prepare], [train], [evaluate], [report] = (runs[k] for k in steps)
    _finish(h, prepare)
    h.tick()
    _finish(h, train, exit_code=3)
    h.tick()
    assert h.state(train) == "FAILED"
    assert h.state(evaluate) == "CANCELLED"
    assert h.run(evaluate).reason == "waits for train, which FAILED"
    assert h.run(evaluate).slurm_job_id is None, "never submitted"
    # A branch that does not wait for the failed step goes on.
    assert h.run(report).slurm_job_id
    _finish(h, report)
    h.tick()
    pipeline = h.store.get_pipeline(pipeline_id)
    assert pipeline.ended_at is not None and pipeline.outcome == "FAILED"


def test_a_step_two_levels_down_names_the_step_it_waits_for_through(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    _, runs = h.submit_pipeline(CHAIN, SPECS)
    _finish(h, runs["prepare"][0], exit_code=1)
    h.tick()
    assert h.run(runs["train"][0]).reason == "waits for prepare, which FAILED"
    assert h.run(runs["evaluate"][0]).reason == "waits for prepare (through train), which FAILED"


def test_a_cancelled_parent_cancels_its_children(make_engine: EngineFactory) -> None:
    h = make_engine()
    _, runs = h.submit_pipeline(CHAIN, SPECS)
    h.tick()
    h.cancel(runs["prepare"][0])  # in Slurm: scancel, then its end is read back
    h.run_for(10)
    assert h.state(runs["prepare"][0]) == "CANCELLED"
    assert h.state(runs["train"][0]) == "CANCELLED"
    assert "which CANCELLED" in (h.run(runs["train"][0]).reason or "")


def test_a_sweep_step_is_one_array_released_after_its_parent(make_engine: EngineFactory) -> None:
    h = make_engine({"pending_window": 20, "max_active": 20})
    grid = {"grid": {"lr": [0.1, 0.01], "seed": [1, 2]}}
    _, runs = h.submit_pipeline(
        {"prepare": {}, "train": {"after": ["prepare"]}, "report": {"after": ["train"]}},
        {"prepare": {}, "train": {"sweep": grid}, "report": {}},
    )
    points = runs["train"]
    assert len(points) == 4
    h.tick()
    assert not any(h.run(r).slurm_job_id for r in points)
    _finish(h, runs["prepare"][0])
    h.tick()
    arrays = {h.job_of(r).split("_")[0] for r in points}
    assert len(arrays) == 1, "the sweep step goes to Slurm as one array"
    [array_id] = arrays
    for i, task in enumerate(h.slurm.start_tasks(array_id)):
        h.slurm.finish(task.job_id, 1 if i == 0 else 0)  # one point fails: the sweep still ends
    h.clock.advance(1)
    h.tick()
    h.tick()
    assert h.run(runs["report"][0]).slurm_job_id, "a sweep with completed points completed"


def test_a_crash_after_a_step_opens_releases_it_once(make_engine: EngineFactory) -> None:
    h = make_engine(fault="after_step_opened")
    _, runs = h.submit_pipeline(CHAIN, SPECS)
    h.crash_tick()  # the first step opens, and the daemon dies before releasing it
    h.restart()
    h.tick()
    job = h.job_of(runs["prepare"][0])
    h.clock.advance(1)
    h.slurm.start(job)
    h.clock.advance(1)
    h.slurm.finish(job, 0)
    h.restart(fault="after_step_opened")
    h.clock.advance(1)
    h.crash_tick()  # prepare COMPLETED, train opened: killed between the two
    h.restart()
    h.tick()
    h.tick()
    assert h.state(runs["prepare"][0]) == "COMPLETED"
    assert h.run(runs["train"][0]).slurm_job_id
    assert h.slurm.calls["sbatch"] == 2, "each step submitted exactly once"
    assert len(h.slurm.jobs_named("train")) == 1


def test_held_step_stays_held_when_its_parents_complete(make_engine: EngineFactory) -> None:
    h = make_engine()
    _, runs = h.submit_pipeline(CHAIN, SPECS)
    h.hold(runs["train"][0])
    _finish(h, runs["prepare"][0])
    h.tick()
    assert h.state(runs["train"][0]) == "HELD" and not h.run(runs["train"][0]).slurm_job_id
    h.release_hold(runs["train"][0])
    h.tick()
    assert h.run(runs["train"][0]).slurm_job_id


def test_rerun_downstream_runs_the_step_and_those_after_it_again(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()
    pipeline_id, runs = h.submit_pipeline(CHAIN, SPECS)
    _finish(h, runs["prepare"][0])
    h.tick()
    _finish(h, runs["train"][0], exit_code=2)
    h.tick()
    assert h.store.get_pipeline(pipeline_id).outcome == "FAILED"
    again = h.engine.rerun_step(pipeline_id, "train", True, ALICE)
    assert sorted(r.pipeline_step or "" for r in again) == ["evaluate", "train"]
    assert h.store.get_pipeline(pipeline_id).ended_at is None
    new_train = next(r.id for r in again if r.pipeline_step == "train")
    new_eval = next(r.id for r in again if r.pipeline_step == "evaluate")
    assert new_train is not None and new_eval is not None
    h.tick()
    assert h.run(new_train).slurm_job_id and not h.run(new_eval).slurm_job_id
    _finish(h, new_train)
    h.tick()
    _finish(h, new_eval)
    h.tick()
    assert h.store.get_pipeline(pipeline_id).outcome == "COMPLETED"


def test_a_register_step_is_refused_when_the_daemon_records_nothing(
    make_engine: EngineFactory,
) -> None:
    h = make_engine()  # tracking.enabled: false
    steps = {
        "train": {},
        "promote": {"after": ["train"], "register": {"model": "train", "name": "digits"}},
    }
    with pytest.raises(SpecError) as refused:
        h.submit_pipeline(steps, {"train": {}})
    [problem] = refused.value.problems
    assert problem.location == "steps.promote.register"
    assert "tracking.enabled" in problem.message
    assert h.store.list_pipelines() == [] and h.store.list_runs() == [], "nothing queued"

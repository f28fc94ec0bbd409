"""What a pipeline step's job finds in its environment: its pipeline and step, the run directory
and MLflow run of each step it waits for, and the `inputs:` it asked for.

    HPCOPS_PIPELINE, HPCOPS_PIPELINE_ID, HPCOPS_STEP       nightly-retrain, p3, evaluate
    HPCOPS_AFTER_<STEP>_RUN_DIR, _MLFLOW_RUN_ID, _RUN       each step it waits for (a sweep
                                                            step: _MLFLOW_RUN_ID is its parent's)
    HPCOPS_INPUT_<NAME>_RUN_DIR, _MLFLOW_RUN_ID, _RUN      an input <step>.run, or <step>.best:
    HPCOPS_INPUT_<NAME>_PARAMS, _VALUE                     then also the best point's params
                                                            (JSON) and its objective's value

<STEP> is the step's name in upper case with every other character than a letter or a digit
made '_' (`train-big` -> TRAIN_BIG); <NAME> is the input's name in upper case.

The values are computed once, when the step opens (engine/pipelines.py), and kept with its runs
(Run.inputs_json), so every attempt of the step and a repeat after a crash see the same ones.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from hpcops.render import PIPELINE_VAR_RE
from hpcops.store import Run

log = logging.getLogger(__name__)

_MAX_VALUE_CHARS = 16_384


@dataclass(frozen=True)
class StepOutput:
    """What a finished step leaves its children: a run (a run step's, or a sweep's best point's)
    and, for a sweep, its parent record and best point."""

    run_id: int | None = None
    run_dir: str | None = None
    mlflow_run_id: str | None = None
    params: Mapping[str, object] | None = None  # a best point's params
    value: float | None = None  # a best point's objective


def env_name(step: str) -> str:
    """A step's name as part of a variable's name: TRAIN_BIG for train-big."""
    return re.sub(r"[^A-Z0-9]", "_", step.upper())


def _output_env(prefix: str, out: StepOutput) -> dict[str, str]:
    env: dict[str, str] = {}
    if out.run_dir is not None:
        env[f"{prefix}_RUN_DIR"] = out.run_dir
    if out.mlflow_run_id is not None:
        env[f"{prefix}_MLFLOW_RUN_ID"] = out.mlflow_run_id
    if out.run_id is not None:
        env[f"{prefix}_RUN"] = str(out.run_id)
    if out.params is not None:
        env[f"{prefix}_PARAMS"] = json.dumps(dict(out.params), sort_keys=True)
    if out.value is not None:
        env[f"{prefix}_VALUE"] = repr(out.value)
    return env


def step_env(
    pipeline: str,
    pipeline_id: int,
    step: str,
    parents: Mapping[str, StepOutput],
    inputs: Mapping[str, StepOutput],
) -> dict[str, str]:
    """A step's variables (pure): `parents` by step name, `inputs` by input name."""
    env = {
        "HPCOPS_PIPELINE": pipeline,
        "HPCOPS_PIPELINE_ID": f"p{pipeline_id}",
        "HPCOPS_STEP": step,
    }
    for name, out in parents.items():
        env.update(_output_env(f"HPCOPS_AFTER_{env_name(name)}", out))
    for name, out in inputs.items():
        env.update(_output_env(f"HPCOPS_INPUT_{name.upper()}", out))
    return env


def job_env(run: Run) -> tuple[tuple[str, str], ...]:
    """The variables a step's run was given when its step opened; () for any other run. Read
    from the daemon's own database, and checked again all the same: a value that is not a
    string, or a name that is not a pipeline variable, is left out (and logged)."""
    if run.pipeline_id is None or not run.inputs_json:
        return ()
    try:
        data = json.loads(run.inputs_json)
    except ValueError:
        log.warning("run %s: its pipeline inputs do not read; the job gets none", run.id)
        return ()
    if not isinstance(data, dict):
        return ()
    env: list[tuple[str, str]] = []
    for name, value in data.items():
        if (
            isinstance(name, str)
            and PIPELINE_VAR_RE.fullmatch(name)
            and isinstance(value, str)
            and len(value) <= _MAX_VALUE_CHARS
        ):
            env.append((name, value))
        else:
            log.warning("run %s: pipeline variable %r left out", run.id, name)
    return tuple(env)
